"""The front desk's ASGI app: what every page shares (the desk's state, rendering, the role guard).

One module per kind of page (auth, people, enrol, events, doors) adds its routes; create_app puts
them together behind the security middleware. Everything a page changes goes through the same
code tools/enroll_local.py uses (daemon/enrolment.py, daemon/gallery, daemon/events.py), and every
change is an operator event in the event log: who, what, from where (the log's time is when).

Guarding: every route but the login page and the static files is wrapped in requires(role), which
asks for a live session (else the login page, or 401 for scripts), the role (else 403), and on a
state-changing request the session's CSRF token, as the form field `csrf` or the X-CSRF-Token
header (else 403). The session cookie is HttpOnly, SameSite=Strict, and Secure over TLS.
"""
from __future__ import annotations

import functools
import hmac
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from daemon.events import EventLog, record_operator
from daemon.gallery import Gallery, escaped
from desk.operators import OperatorStore, Session
from desk.security import BodyLimit, RateLimit, SecurityHeaders
from desk.settings import MAX_REQUEST_BYTES, DeskSettings

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "facegate_desk"
SAFE_METHODS = {"GET", "HEAD"}
Endpoint = Callable[[Request], Awaitable[Response]]


class Desk:
    """The state the pages share: settings, operators, the event log, the enroller (loaded on first use)."""

    def __init__(self, settings: DeskSettings) -> None:
        self.settings = settings
        self.operators = OperatorStore(settings.desk_db)
        self.events = EventLog(settings.events)
        self.rate_limit = RateLimit()
        self.captures: dict[str, list[Any]] = {}  # session -> camera shots so far (desk/enrol.py)
        self._enroller: Any = None
        self._enroller_lock = threading.RLock()  # the models run one image at a time

    @contextmanager
    def gallery(self) -> Iterator[Gallery]:
        """The gallery, opened for one request (a Gallery's connection is for one thread at a time)."""
        with Gallery.open(self.settings.gallery) as gallery:
            yield gallery

    @contextmanager
    def enroller(self) -> Iterator[Any]:
        """The quality gate, embedders and liveness nets (daemon.enrolment.Enroller), held by one request."""
        from daemon.enrolment import Enroller

        with self._enroller_lock:
            if self._enroller is None:
                self._enroller = Enroller.from_models(self.settings.models, card=self.settings.card)
            yield self._enroller

    def record(self, request: Request, action: str, person_id: int | None = None,
               person_name: str | None = None) -> None:
        """An operator event: the session's operator (or the name tried, at login) did action from the client."""
        session: Session | None = getattr(request.state, "session", None)
        who = session.operator.name if session else request.state.operator_name
        record_operator(self.events, escaped(who), client_of(request), action, person_id=person_id,
                        person_name=person_name)

    def close(self) -> None:
        if self._enroller is not None:
            self._enroller.close()
        self.events.close()
        self.operators.close()


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def desk_of(request: Request) -> Desk:
    return request.app.state.desk


templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                                   autoescape=True, undefined=jinja2.ChainableUndefined))


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = getattr(request.state, "session", None)
    return templates.TemplateResponse(request, name, {"session": session, **context}, status_code=status_code)


def requires(role: str) -> Callable[[Endpoint], Endpoint]:
    """The guard every page but the login page has: a live session, the role, and CSRF on a change."""
    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            desk = desk_of(request)
            session = await run_in_threadpool(desk.operators.session, request.cookies.get(SESSION_COOKIE))
            if session is None:
                if request.method in SAFE_METHODS and "hx-request" not in request.headers:
                    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
                return PlainTextResponse("not logged in, or the session timed out: log in again", status_code=401)
            request.state.session = session
            if not session.operator.may(role):
                return render(request, "error.html", 403, message=f"this needs the {role} role; you are "
                              f"{session.operator.role}: ask an administrator")
            if request.method not in SAFE_METHODS and not await csrf_ok(request, session.csrf):
                return PlainTextResponse("the form's security token is missing or stale: reload the page and try "
                                         "again", status_code=403)
            return await endpoint(request)

        guarded.role = role  # type: ignore[attr-defined]  # tests check every route has a guard
        return guarded
    return decorate


async def csrf_ok(request: Request, expected: str) -> bool:
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        given = (await form_of(request)).get("csrf")
    return isinstance(given, str) and hmac.compare_digest(given, expected)


async def form_of(request: Request) -> Any:
    """The request's form, limited (files: desk/uploads.py checks each); read once, kept on the request."""
    from desk.settings import MAX_FILES

    if not hasattr(request.state, "form"):
        request.state.form = await request.form(max_files=MAX_FILES, max_fields=50, max_part_size=64 * 1024)
    return request.state.form


def create_app(settings: DeskSettings) -> Starlette:
    from desk import auth, doors, enrol, events_page, people

    desk = Desk(settings)

    async def home(request: Request) -> Response:
        return RedirectResponse("/people", status_code=303)

    async def not_found(request: Request, error: HTTPException) -> Response:
        return PlainTextResponse(error.detail or "not found", status_code=error.status_code)

    routes = [Route("/", requires("viewer")(home)), *auth.routes, *people.routes, *enrol.routes, *events_page.routes,
              *doors.routes, Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        desk.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
    app.state.desk = desk
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)
    app.add_middleware(SecurityHeaders, tls=settings.tls)
    return app
