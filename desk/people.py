"""The people pages: the list (search, paging in SQL), a person's page, editing, disabling, deleting."""
from __future__ import annotations

from collections import Counter
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.gallery import GalleryError, PersonNotFound
from desk.app import desk_of, form_of, render, requires

PAGE_SIZE = 50


def _page_number(text: str | None) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) < 1_000_000 else 1


@requires("viewer")
async def people_list(request: Request) -> Response:
    desk = desk_of(request)
    query = request.query_params.get("q", "").strip()[:200]
    page = _page_number(request.query_params.get("page"))

    def read():
        with desk.gallery() as gallery:
            return gallery.people_page(query or None, PAGE_SIZE, (page - 1) * PAGE_SIZE)

    people, total = await run_in_threadpool(read)
    pages = max(1, -(-total // PAGE_SIZE))
    template = "people_rows.html" if "hx-request" in request.headers else "people.html"
    return render(request, template, people=people, total=total, page=page, pages=pages, q=query)


def _person_id(request: Request) -> int:
    return int(request.path_params["person_id"])


def _read_person(desk, person_id: int):
    """The person, their templates, card and PIN, and the last grant; PersonNotFound when gone."""
    with desk.gallery() as gallery:
        person = gallery.get_person(person_id)
        templates = gallery.templates(person_id)
        credential = gallery.credentials().get(person_id)
    last = desk.events.query(kinds=["grant"], person=str(person_id), limit=1)
    return person, templates, credential, last[0] if last else None


@requires("viewer")
async def person_page(request: Request) -> Response:
    desk = desk_of(request)
    try:
        person, templates, credential, last = await run_in_threadpool(_read_person, desk, _person_id(request))
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed?)")
    models = Counter(t.model_id for t in templates)
    photos = [t for t in templates if t.photo_jpeg]
    return render(request, "person.html", person=person, templates=templates, models=sorted(models.items()),
                  photos=photos, credential=credential, last=last)


@requires("viewer")
async def person_photo(request: Request) -> Response:
    desk = desk_of(request)
    person_id, template_id = _person_id(request), request.path_params.get("template_id")

    def read() -> bytes | None:
        with desk.gallery() as gallery:
            kept = [t for t in gallery.templates(person_id) if t.photo_jpeg]
        chosen = [t for t in kept if template_id is None or t.id == template_id]
        return chosen[0].photo_jpeg if chosen else None

    try:
        jpeg = await run_in_threadpool(read)
    except PersonNotFound:
        jpeg = None
    if jpeg is None:
        return Response("no kept photo", status_code=404, media_type="text/plain")
    return Response(jpeg, media_type="image/jpeg")


def _date(text: str, what: str) -> str | None:
    """A validity bound from the form: '' is none; anything else must be an ISO date."""
    text = text.strip()
    if not text:
        return None
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date: expected YYYY-MM-DD") from None
    return text


@requires("enroller")
async def edit_page(request: Request) -> Response:
    desk = desk_of(request)
    try:
        person, *_ = await run_in_threadpool(_read_person, desk, _person_id(request))
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed?)")
    return render(request, "person_edit.html", person=person, problem=None)


@requires("enroller")
async def edit(request: Request) -> Response:
    desk = desk_of(request)
    person_id = _person_id(request)
    form = await form_of(request)

    def write():
        with desk.gallery() as gallery:
            before = gallery.get_person(person_id)
            name = str(form.get("name", ""))
            start = _date(str(form.get("valid_from", "")), "valid from")
            end = _date(str(form.get("valid_until", "")), "valid until")
            if name.strip() != before.name:
                gallery.rename(person_id, name)
            if (start, end) != (before.valid_from, before.valid_until):
                gallery.set_validity(person_id, start, end)
            return before, gallery.get_person(person_id)

    try:
        before, after = await run_in_threadpool(write)
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed?)")
    except (ValueError, GalleryError) as error:
        person, *_ = await run_in_threadpool(_read_person, desk, person_id)
        return render(request, "person_edit.html", 400, person=person, problem=str(error))
    changes = [f"name {before.name!r} to {after.name!r}"] if before.name != after.name else []
    if (before.valid_from, before.valid_until) != (after.valid_from, after.valid_until):
        changes.append(f"valid {after.valid_from or 'always'} .. {after.valid_until or 'further notice'}")
    if changes:
        desk.record(request, "edited: " + "; ".join(changes), person_id, after.name)
    return RedirectResponse(f"/people/{person_id}", status_code=303)


@requires("enroller")
async def set_active(request: Request) -> Response:
    desk = desk_of(request)
    person_id, active = _person_id(request), request.url.path.endswith("/enable")

    def write():
        with desk.gallery() as gallery:
            gallery.set_active(person_id, active)
            return gallery.get_person(person_id)

    try:
        person = await run_in_threadpool(write)
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed?)")
    desk.record(request, "enabled" if active else "disabled", person.id, person.name)
    return RedirectResponse(f"/people/{person_id}", status_code=303)


@requires("admin")
async def delete_page(request: Request) -> Response:
    desk = desk_of(request)
    try:
        person, templates, *_ = await run_in_threadpool(_read_person, desk, _person_id(request))
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed?)")
    return render(request, "person_delete.html", person=person, photos=[t for t in templates if t.photo_jpeg])


@requires("admin")
async def delete(request: Request) -> Response:
    desk = desk_of(request)
    person_id = _person_id(request)
    form = await form_of(request)
    if form.get("confirm") != "yes":
        return RedirectResponse(f"/people/{person_id}/delete", status_code=303)

    def write():
        with desk.gallery() as gallery:
            person = gallery.get_person(person_id)
            gallery.remove_person(person_id)
            return person

    try:
        person = await run_in_threadpool(write)
    except PersonNotFound:
        return render(request, "error.html", 404, message="nobody of that id is enrolled (removed already?)")
    desk.record(request, f"deleted with {person.template_count} template(s)", person.id, person.name)
    return RedirectResponse("/people", status_code=303)


routes = [
    Route("/people", people_list, methods=["GET"]),
    Route("/people/{person_id:int}", person_page, methods=["GET"]),
    Route("/people/{person_id:int}/photo", person_photo, methods=["GET"]),
    Route("/people/{person_id:int}/photo/{template_id:int}", person_photo, methods=["GET"]),
    Route("/people/{person_id:int}/edit", edit_page, methods=["GET"]),
    Route("/people/{person_id:int}/edit", edit, methods=["POST"]),
    Route("/people/{person_id:int}/disable", set_active, methods=["POST"]),
    Route("/people/{person_id:int}/enable", set_active, methods=["POST"]),
    Route("/people/{person_id:int}/delete", delete_page, methods=["GET"]),
    Route("/people/{person_id:int}/delete", delete, methods=["POST"]),
]
