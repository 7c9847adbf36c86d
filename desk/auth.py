"""Logging in and out.

The login form has no session yet to hold a CSRF token, so it carries one of its own: a random
value in the form and, signed, in a SameSite=Strict cookie (double submit). Failed logins count
per client address (RateLimit: then 429 and a wait) and per operator (lockout, desk/operators.py);
each failure, lockout and login is an operator event.
"""
from __future__ import annotations

import hmac
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from desk.app import SESSION_COOKIE, client_of, desk_of, form_of, render, requires
from desk.operators import LOCK_AFTER, LoginRefused

LOGIN_COOKIE = "facegate_desk_login"


def _next_path(text: str | None) -> str:
    """Where to go after logging in: a path on this desk only (never //elsewhere or a URL)."""
    return text if text and text.startswith("/") and not text.startswith("//") and "\\" not in text else "/people"


def login_page(request: Request, message: str = "", status_code: int = 200) -> Response:
    desk = desk_of(request)
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", status_code, csrf=token, message=message,
                      next=_next_path(request.query_params.get("next")))
    response.set_cookie(LOGIN_COOKIE, desk.operators.sign(token), httponly=True, samesite="strict",
                        secure=desk.settings.tls, path="/login")
    return response


async def show_login(request: Request) -> Response:
    return login_page(request)


async def do_login(request: Request) -> Response:
    desk = desk_of(request)
    form = await form_of(request)
    client = client_of(request)
    expected = desk.operators.signed(request.cookies.get(LOGIN_COOKIE))
    given = form.get("csrf")
    if expected is None or not isinstance(given, str) or not hmac.compare_digest(expected, given):
        return login_page(request, "the login form was stale: please try again", 403)
    wait = desk.rate_limit.wait_s(client)
    if wait > 0:
        response = login_page(request, f"too many failed logins from {client}: wait {int(wait) + 1} s", 429)
        response.headers["retry-after"] = str(int(wait) + 1)
        return response
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    request.state.operator_name = name[:100]
    try:
        session, cookie = await run_in_threadpool(desk.operators.login, name, password, client)
    except LoginRefused as refused:
        desk.rate_limit.failed(client)
        locked = await run_in_threadpool(desk.operators.locked, name)
        desk.record(request, "login refused" + (f": account locked after {LOCK_AFTER} failures" if locked else ""))
        return login_page(request, str(refused), 401)
    request.state.session = session
    desk.record(request, f"logged in ({session.operator.role})")
    response = RedirectResponse(_next_path(str(form.get("next", ""))), status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=desk.settings.tls)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@requires("viewer")
async def logout(request: Request) -> Response:
    desk = desk_of(request)
    await run_in_threadpool(desk.operators.logout, request.state.session)
    desk.record(request, "logged out")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


routes = [Route("/login", show_login, methods=["GET"]), Route("/login", do_login, methods=["POST"]),
          Route("/logout", logout, methods=["POST"])]
