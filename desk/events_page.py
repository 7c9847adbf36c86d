"""The event log: filters (door, kind, person, time), paging back in time, live rows (server-sent
events), snapshots where the door keeps them (events.snapshots), and the CSV download."""
from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from desk.app import desk_of, render, requires

PAGE_SIZE = 100
LIVE_POLL_S = 1.0  # how often the live list looks for new rows: a door writes a few events a minute


class FilterError(ValueError):
    pass


def filters_of(request: Request) -> dict[str, Any]:
    """EventReader.query's filters from the query string; FilterError in plain words."""
    params = request.query_params
    found: dict[str, Any] = {}
    for key in ("door", "person"):
        if value := params.get(key, "").strip():
            found[key] = value
    if kind := params.get("kind", "").strip():
        found["kinds"] = [kind]
    for key in ("since", "until"):
        if text := params.get(key, "").strip():
            try:
                found[key] = datetime.fromisoformat(text)
            except ValueError:
                raise FilterError(f"{key} {text!r} is not a time: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if (before := params.get("before", "")).replace(".", "", 1).isdigit():
        found["until"] = float(before)  # the next page: older than the oldest row shown
    return found


def row(event) -> dict[str, Any]:
    return {"id": event.id, "time": event.time, "door": event.door or "", "kind": event.kind,
            "person": event.person_name or "", "person_id": event.person_id, "score":
            "" if event.score is None else f"{event.score:.3f}", "reason": event.reason or "",
            "snapshot": event.has_snapshot}


@requires("viewer")
async def events_list(request: Request) -> Response:
    desk = desk_of(request)
    try:
        filters = filters_of(request)
    except FilterError as error:
        return render(request, "events.html", 400, events=[], problem=str(error), params=request.query_params,
                      older=None, newest=0)
    events = await run_in_threadpool(desk.events.query, limit=PAGE_SIZE, **filters)
    events.reverse()  # newest first
    older = events[-1].unix if len(events) == PAGE_SIZE else None
    newest = await run_in_threadpool(lambda: (desk.events.query(limit=1) or [None])[0])
    return render(request, "events.html", events=[row(e) for e in events], problem=None,
                  params=request.query_params, older=older, newest=newest.id if newest else 0)


@requires("viewer")
async def events_stream(request: Request) -> Response:
    """New rows as server-sent events (JSON), from after=ID on, matching the page's filters."""
    desk = desk_of(request)
    try:
        filters = filters_of(request)
    except FilterError as error:
        return Response(str(error), status_code=400, media_type="text/plain")
    after = request.query_params.get("after", "0")
    last = int(after) if after.isdigit() else 0
    token = request.state.session.token_sha256

    async def stream() -> AsyncIterator[str]:
        nonlocal last
        yield "retry: 3000\n\n"
        while not await request.is_disconnected():
            if not await run_in_threadpool(desk.operators.alive, token):
                yield "event: ended\ndata: {}\n\n"
                return
            fresh = await run_in_threadpool(desk.events.after, last, 200)
            if fresh:
                last = fresh[-1].id
                ids = {e.id for e in fresh}
                if filters:  # the same filters as the page, applied by the same query
                    kept = await run_in_threadpool(desk.events.query, **filters,
                                                   limit=len(fresh) + PAGE_SIZE)
                    fresh = [e for e in kept if e.id in ids]
                for event in fresh:
                    yield f"event: row\ndata: {json.dumps(row(event), ensure_ascii=False)}\n\n"
            await asyncio.sleep(LIVE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


@requires("viewer")
async def events_csv(request: Request) -> Response:
    desk = desk_of(request)
    try:
        filters = filters_of(request)
    except FilterError as error:
        return Response(str(error), status_code=400, media_type="text/plain")
    desk.record(request, "downloaded the event log as CSV" + (f" ({_described(filters)})" if filters else ""))

    def lines() -> Iterator[str]:  # streamed: a year of events never sits in memory at once
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for number, values in enumerate(desk.events.csv_rows(**filters)):
            writer.writerow(values)
            if number % 500 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": 'attachment; filename="facegate-events.csv"'})


def _described(filters: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value[0] if isinstance(value, list) else value}" for key, value in filters.items())


@requires("viewer")
async def snapshot(request: Request) -> Response:
    jpeg = await run_in_threadpool(desk_of(request).events.snapshot, int(request.path_params["event_id"]))
    if jpeg is None:
        return Response("no snapshot kept with this event", status_code=404, media_type="text/plain")
    return Response(jpeg, media_type="image/jpeg")


routes = [
    Route("/events", events_list, methods=["GET"]),
    Route("/events/stream", events_stream, methods=["GET"]),
    Route("/events.csv", events_csv, methods=["GET"]),
    Route("/events/{event_id:int}/snapshot", snapshot, methods=["GET"]),
]
