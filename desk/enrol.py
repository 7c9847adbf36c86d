"""Enrolling: from uploaded photos (several at once) or from the desk's webcam.

Both go through daemon/enrolment.py as enroll_local.py add does: the quality gate, the duplicate
and name guards, one gallery transaction, nothing written on a refusal. Photos are kept with
the templates (the CLI's --keep-photo), so a person's page shows their face, the duplicate guard
can show whom a face matches, and reembed works after a model change.

The webcam: the page (static/camera.js) sends one frame at a time as JPEG; each is judged as a
camera frame (source "camera": the quality gate and the liveness nets, as at the door) and the
answer is the advice for the person in front of the camera. The good frames are kept per session,
the best SHOTS by rank are shown, and only the operator's save writes them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from daemon.enrolment import (CANDIDATES_PER_SHOT, DuplicateFace, EnrolmentError, NameTaken, PersonDetails, Refusal,
                              Shot, enrol, nearest_person)
from daemon.gallery import GalleryError, checked_name
from desk import uploads
from desk.app import desk_of, form_of, render, requires
from desk.people import _date
from engines.errors import ImageError
from engines.images import load_image

SHOTS = 3  # camera shots kept for a person, the best by rank, as enroll_local.py add --camera


def _details(form) -> tuple[str, PersonDetails]:
    """The name and details from the enrol form; ValueError in plain words."""
    name = checked_name(str(form.get("name", "")))
    external = str(form.get("external_id", "")).strip() or None
    note = str(form.get("note", "")).strip()[:1000] or None
    return name, PersonDetails(external, note, _date(str(form.get("valid_from", "")), "valid from"),
                               _date(str(form.get("valid_until", "")), "valid until"))


def _write(desk, name: str, details: PersonDetails, shots: list[Shot], force: bool) -> int:
    """The enrolment itself; a DuplicateFace carries the matching person's id for the page to show."""
    with desk.gallery() as gallery:
        try:
            return enrol(gallery, desk_card(desk), name, shots, details, force=force)
        except DuplicateFace as error:
            near = nearest_person(gallery, desk_card(desk), [shot.template.embedding for shot in shots])
            error.person_id = near.person_id if near else None  # type: ignore[attr-defined]
            raise


def desk_card(desk):
    with desk.enroller() as enroller:
        return enroller.card


@requires("enroller")
async def enrol_page(request: Request) -> Response:
    return render(request, "enrol.html", refusals=[], problem=None, match=None, form={})


@requires("enroller")
async def enrol_photos(request: Request) -> Response:
    desk = desk_of(request)
    form = await form_of(request)
    files = [f for f in form.getlist("photos") if isinstance(f, UploadFile) and f.filename]
    force = form.get("force") == "yes" and request.state.session.operator.may("admin")

    def page(status: int, refusals=(), problem=None, match=None) -> Response:
        return render(request, "enrol.html", status, refusals=list(refusals), problem=problem, match=match,
                      form={k: str(form.get(k, "")) for k in ("name", "external_id", "note", "valid_from",
                                                              "valid_until")})

    try:
        name, details = _details(form)
    except ValueError as error:
        return page(400, problem=str(error))
    if not files:
        return page(400, problem="choose at least one photo of the person")
    received = [uploads.Upload(f.filename or f"photo {n}", await f.read()) for n, f in enumerate(files, 1)]
    refused = [Refusal(u.label, [why], "") for u in received if (why := uploads.problem(u))]
    if refused:
        return page(400, refused)

    def judge_and_write():
        shots, refusals = [], []
        with tempfile.TemporaryDirectory(prefix="facegate-desk-") as folder, desk.enroller() as enroller:
            for number, upload in enumerate(received):
                path = uploads.save(upload, Path(folder), number)
                try:
                    rgb = load_image(path)
                except ImageError as error:
                    refusals.append(Refusal(upload.label, [str(error).removeprefix(f"{path}: ")], ""))
                    continue
                verdict = enroller.judge(rgb, upload.label, keep_photo=True)
                (shots if isinstance(verdict, Shot) else refusals).append(verdict)
        if refusals:
            return None, refusals
        return _write(desk, name, details, shots, force), []

    try:
        person_id, refusals = await run_in_threadpool(judge_and_write)
    except DuplicateFace as error:
        return page(409, problem=str(error), match=getattr(error, "person_id", None))
    except (NameTaken, EnrolmentError, GalleryError, ValueError) as error:
        return page(409, problem=str(error))
    if refusals:
        return page(400, refusals, problem=f"{len(refusals)} photo(s) refused; nobody was enrolled")
    desk.record(request, f"enrolled from {len(received)} photo(s)" + (" (forced)" if force else ""), person_id, name)
    return RedirectResponse(f"/people/{person_id}", status_code=303)


# --- the webcam ------------------------------------------------------------------------------------------


def _session_key(request: Request) -> str:
    return request.state.session.token_sha256


def _best(shots: list[Shot]) -> list[Shot]:
    return sorted(shots, key=lambda shot: shot.rank, reverse=True)[:SHOTS]


@requires("enroller")
async def camera_page(request: Request) -> Response:
    desk_of(request).captures.pop(_session_key(request), None)
    return render(request, "camera.html", problem=None, match=None, shots=SHOTS)


@requires("enroller")
async def camera_frame(request: Request) -> Response:
    """One webcam frame (the body, JPEG): judged as a camera frame; the advice and the shots so far."""
    desk = desk_of(request)
    body = await request.body()
    frame = uploads.Upload("webcam frame", body)
    if why := uploads.problem(frame):
        return JSONResponse({"advice": why, "good": 0, "ready": False}, status_code=400)
    key = _session_key(request)

    def judge():
        with tempfile.TemporaryDirectory(prefix="facegate-desk-") as folder:
            rgb = load_image(uploads.save(frame, Path(folder), 0))
        with desk.enroller() as enroller:
            return enroller.judge(rgb, "webcam", source="camera", keep_photo=True)

    try:
        verdict = await run_in_threadpool(judge)
    except ImageError:
        return JSONResponse({"advice": "the browser sent a frame that does not decode", "good": 0, "ready": False},
                            status_code=400)
    except EnrolmentError as error:  # no liveness models: camera enrolment cannot be offered
        return JSONResponse({"advice": str(error), "good": 0, "ready": False}, status_code=409)
    shots = desk.captures.setdefault(key, [])
    if isinstance(verdict, Shot) and len(shots) < SHOTS * CANDIDATES_PER_SHOT:
        shots.append(verdict)
    advice = "good, hold it" if isinstance(verdict, Shot) else verdict.hint
    reasons = [] if isinstance(verdict, Shot) else verdict.reasons
    return JSONResponse({"advice": advice, "reasons": reasons, "good": len(shots), "ready": len(shots) >= SHOTS,
                         "shots": len(_best(shots))})


@requires("enroller")
async def camera_shot(request: Request) -> Response:
    shots = _best(desk_of(request).captures.get(_session_key(request), []))
    number = int(request.path_params["number"])
    if number >= len(shots) or shots[number].template.photo_jpeg is None:
        return Response("no such shot", status_code=404, media_type="text/plain")
    return Response(shots[number].template.photo_jpeg, media_type="image/jpeg")


@requires("enroller")
async def camera_reset(request: Request) -> Response:
    desk_of(request).captures.pop(_session_key(request), None)
    return JSONResponse({"good": 0})


@requires("enroller")
async def camera_save(request: Request) -> Response:
    desk = desk_of(request)
    form = await form_of(request)
    key = _session_key(request)
    shots = _best(desk.captures.get(key, []))
    force = form.get("force") == "yes" and request.state.session.operator.may("admin")

    def page(status: int, problem: str, match=None) -> Response:
        return render(request, "camera.html", status, problem=problem, match=match, shots=SHOTS)

    try:
        name, details = _details(form)
    except ValueError as error:
        return page(400, str(error))
    if len(shots) < SHOTS:
        return page(400, f"only {len(shots)} good shot(s) of the {SHOTS} needed: keep the person in front of the "
                         "camera until the shots appear")
    try:
        person_id = await run_in_threadpool(_write, desk, name, details, shots, force)
    except DuplicateFace as error:
        return page(409, str(error), getattr(error, "person_id", None))
    except (EnrolmentError, GalleryError, ValueError) as error:
        return page(409, str(error))
    desk.captures.pop(key, None)
    desk.record(request, f"enrolled from the webcam ({len(shots)} shots)" + (" (forced)" if force else ""),
                person_id, name)
    return RedirectResponse(f"/people/{person_id}", status_code=303)


routes = [
    Route("/enrol", enrol_page, methods=["GET"]),
    Route("/enrol", enrol_photos, methods=["POST"]),
    Route("/enrol/camera", camera_page, methods=["GET"]),
    Route("/enrol/camera/frame", camera_frame, methods=["POST"]),
    Route("/enrol/camera/shot/{number:int}", camera_shot, methods=["GET"]),
    Route("/enrol/camera/reset", camera_reset, methods=["POST"]),
    Route("/enrol/camera/save", camera_save, methods=["POST"]),
]
