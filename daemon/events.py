"""The event log: what happened at the door, in its own SQLite file.

Opening refuses (EventLogError, naming the file and what to do) a file that cannot be the event
log: not a SQLite database, damaged, another program's database, another schema version, a path
SQLite cannot use. The door then does not start: nothing would record who came in. Once open,
writing never raises: a full disk, a locked or broken database each cost a WARNING (logger
`facegate.events`, rate-limited) and a count (write_errors, facegate_event_write_failures_total),
and the events wait in a bounded in-memory backlog that the next successful write flushes — the
door keeps working either way. Reading (the operator's tools) raises EventLogError with a clear message.

Face snapshots are biometric data: they are kept only when asked for (keep_snapshots) and
live in their own table, deleted with their event. face_snapshot() makes one from a frame and
a face box; the door passes it with its decisions only while events.snapshots is on.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from daemon.sqlite_files import is_damage, is_path_error, path_problem

log = logging.getLogger("facegate.events")

SCHEMA_VERSION = 1
_SCHEMA = (
    # AUTOINCREMENT: ids are never reused after pruning, so "everything after id N" stays a
    # valid incremental export.
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        unix REAL NOT NULL,
        door TEXT,
        kind TEXT NOT NULL,
        person_id INTEGER,
        person_name TEXT,
        external_id TEXT,
        score REAL,
        track_id INTEGER,
        reason TEXT
    )""",
    "CREATE INDEX events_unix ON events (unix)",
    "CREATE INDEX events_kind ON events (kind, unix)",
    """CREATE TABLE snapshots (
        event_id INTEGER PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
        jpeg BLOB NOT NULL
    )""",
)
COLUMNS = ("id", "time", "unix", "door", "kind", "person_id", "person_name", "external_id", "score",
           "track_id", "reason")
_LOG_EVERY_S = 60.0  # a full disk fails every write: one log line a minute is enough


SNAPSHOT_CONTEXT = 2.0  # the face box widened to twice its size: the face and what surrounds it (a phone, a hand)
SNAPSHOT_MAX_SIDE = 320
SNAPSHOT_JPEG_QUALITY = 85


def face_jpeg(rgb: np.ndarray, box: Sequence[float], context: float, max_side: int, quality: int) -> bytes | None:
    """JPEG of a face and its surroundings: the box's larger side times context, square around its
    centre, clipped to the frame, shrunk to max_side; None when it cannot be made."""
    import cv2

    x1, y1, x2, y2 = (float(v) for v in box[:4])
    half = max(x2 - x1, y2 - y1) * context / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    height, width = rgb.shape[:2]
    crop = rgb[max(int(cy - half), 0):min(int(np.ceil(cy + half)), height),
               max(int(cx - half), 0):min(int(np.ceil(cx + half)), width)]
    if not crop.size:
        return None
    scale = max_side / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes() if ok else None


def face_snapshot(rgb: np.ndarray, box: Sequence[float]) -> bytes | None:
    """An event's snapshot of a face; None (never an exception) when it cannot be made, so an odd box
    never costs the door its event."""
    import cv2

    try:
        return face_jpeg(rgb, box, SNAPSHOT_CONTEXT, SNAPSHOT_MAX_SIDE, SNAPSHOT_JPEG_QUALITY)
    except (ValueError, TypeError, cv2.error) as error:
        log.warning("no snapshot for face box %s: %s", list(box), error)
        return None


def unknown_reason(nearest: Any, threshold: float) -> str:
    """An unknown_face event's reason: the enrolled person the face came closest to (a Match: person_id,
    name, distance), the distance and the threshold in force, so a site can audit its near misses. The
    person stays in the text, not in person_id: the face was not theirs, and a person's events are theirs."""
    if nearest is None:
        return f"no enrolled person matched (threshold in force {threshold:.4f}; the gallery gave no candidate)"
    return (f"no enrolled person matched: closest {nearest.name} (id {nearest.person_id}) at distance "
            f"{nearest.distance:.4f}, threshold in force {threshold:.4f}")


OPERATOR_KIND = "operator"  # a change made at the front desk (desk/): who, from where, what


def record_operator(log: EventLog, operator: str, client: str, action: str, *, person_id: int | None = None,
                    person_name: str | None = None) -> bool:
    """An operator event: reason is "<operator> from <client address>: <action>"; the row's time is when."""
    return log.record(OPERATOR_KIND, person_id=person_id, person_name=person_name,
                      reason=f"{operator} from {client}: {action}")


class EventLogError(RuntimeError):
    """Reading the event log failed (missing file, not an event log, newer schema), or it cannot be opened."""


def check_event_log(path: str | os.PathLike[str]) -> None:
    """Raise EventLogError naming the file and what to do when path cannot be the event log (see the
    module's docstring). Reads only: creates, changes and leaves nothing; a missing file passes."""
    path = Path(path)
    problem = path_problem(path, "event log", "events.db")
    if problem is not None:
        raise EventLogError(problem)
    if not path.exists():
        return
    aside = (f"move it aside (mv {path} {path}.damaged) to start a new, empty event log, and keep the old "
             "one for whoever audits the door")
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as error:
        raise EventLogError(f"{path}: cannot open the event log: {error}") from error
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as error:
        if is_damage(error):
            raise EventLogError(f"{path}: not a readable facegate event log ({error}): {aside}") from error
        if is_path_error(error):
            raise EventLogError(path_problem(path, "event log", "events.db") or f"{path}: {error}") from error
        raise EventLogError(f"{path}: cannot read the event log: {error}") from error
    finally:
        db.close()  # the last connection removes the -wal and -shm files it made
    if (version == 0 and tables - {"sqlite_sequence"}) or (version > 0 and not {"events", "snapshots"} <= tables):
        raise EventLogError(f"{path}: a SQLite database but not a facegate event log (schema version {version}, "
                            f"tables: {', '.join(sorted(tables)) or 'none'}): check events.path, or {aside}")
    if version > SCHEMA_VERSION:
        raise EventLogError(f"{path}: event log schema version {version} is newer than this facegate writes "
                            f"({SCHEMA_VERSION}): upgrade facegate, or {aside}")


@dataclass(frozen=True)
class Event:
    id: int
    time: str  # UTC, ISO 8601 with milliseconds and 'Z'
    unix: float
    door: str | None
    kind: str
    person_id: int | None
    person_name: str | None
    external_id: str | None
    score: float | None  # the match distance: lower is closer
    track_id: int | None
    reason: str | None
    has_snapshot: bool = False


def _timestamp(value: datetime | float | None) -> float | None:
    """Unix seconds; a naive datetime is local time, as datetime.timestamp() reads it."""
    if value is None or isinstance(value, (int, float)):
        return value
    return value.timestamp()


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventReader:
    """Read-only access for operator tools: never creates, migrates or prunes the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EventLogError(f"no event log at {self.path}")
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as error:
            raise EventLogError(f"{self.path} cannot be read as an event log: {error}") from error
        if version != SCHEMA_VERSION:
            db.close()
            raise EventLogError(f"{self.path} has schema version {version}; this facegate reads version "
                                f"{SCHEMA_VERSION}")
        self._db: sqlite3.Connection | None = db
        self._lock = threading.Lock()  # one connection, shared by the daemon's threads

    def query(self, since: datetime | float | None = None, until: datetime | float | None = None,
              kinds: Iterable[str] | None = None, person: str | None = None,
              limit: int | None = None, door: str | None = None) -> list[Event]:
        """Events from since (inclusive) to until (exclusive), oldest first; with a limit, the
        newest `limit` of them. person matches the name, the external id or the person id."""
        return list(self.iter_events(since, until, kinds, person, limit, door))

    def iter_events(self, since: datetime | float | None = None, until: datetime | float | None = None,
                    kinds: Iterable[str] | None = None, person: str | None = None,
                    limit: int | None = None, door: str | None = None) -> Iterator[Event]:
        where, args = [], []
        if door is not None:
            where.append("door = ?")
            args.append(door)
        if since is not None:
            where.append("unix >= ?")
            args.append(_timestamp(since))
        if until is not None:
            where.append("unix < ?")
            args.append(_timestamp(until))
        kinds = list(kinds or ())
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args += kinds
        if person is not None:
            where.append("(person_name = ? OR external_id = ? OR CAST(person_id AS TEXT) = ?)")
            args += [person] * 3
        select = (f"SELECT {', '.join('e.' + c for c in COLUMNS)}, s.event_id IS NOT NULL FROM events e "
                  f"LEFT JOIN snapshots s ON s.event_id = e.id"
                  f"{' WHERE ' + ' AND '.join(where) if where else ''}")
        if limit is not None:
            select = f"SELECT * FROM ({select} ORDER BY e.id DESC LIMIT ?) ORDER BY 1"
            args.append(int(limit))
        else:
            select += " ORDER BY e.id"
        # In chunks, taking the lock per chunk: a long export neither fills the memory of a
        # small box nor holds up the door's record() calls for its whole length.
        cursor = None
        while True:
            with self._lock:
                try:
                    if cursor is None:
                        cursor = self._connection().execute(select, args)
                    rows = cursor.fetchmany(500)
                except sqlite3.Error as error:
                    raise EventLogError(f"reading {self.path} failed: {error}") from error
            if not rows:
                return
            for row in rows:
                yield Event(*row[:-1], has_snapshot=bool(row[-1]))

    def after(self, event_id: int, limit: int = 100) -> list[Event]:
        """Up to limit events with ids above event_id, oldest first: what a publisher has not sent yet."""
        select = (f"SELECT {', '.join('e.' + c for c in COLUMNS)}, s.event_id IS NOT NULL FROM events e "
                  "LEFT JOIN snapshots s ON s.event_id = e.id WHERE e.id > ? ORDER BY e.id LIMIT ?")
        with self._lock:
            try:
                rows = self._connection().execute(select, (event_id, limit)).fetchall()
            except sqlite3.Error as error:
                raise EventLogError(f"reading {self.path} failed: {error}") from error
        return [Event(*row[:-1], has_snapshot=bool(row[-1])) for row in rows]

    def count_after(self, event_id: int) -> int:
        """How many events have ids above event_id."""
        with self._lock:
            try:
                return self._connection().execute("SELECT count(*) FROM events WHERE id > ?",
                                                  (event_id,)).fetchone()[0]
            except sqlite3.Error as error:
                raise EventLogError(f"reading {self.path} failed: {error}") from error

    def last_with_person(self, kind: str) -> Event | None:
        """The newest event of one kind that names a person (the last person granted), if any."""
        with self._lock:
            try:
                row = self._connection().execute(
                    f"SELECT {', '.join(COLUMNS)}, 0 FROM events WHERE kind = ? AND person_name IS NOT NULL "
                    "ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
            except sqlite3.Error as error:
                raise EventLogError(f"reading {self.path} failed: {error}") from error
        return None if row is None else Event(*row[:-1])

    def snapshot(self, event_id: int) -> bytes | None:
        """The face snapshot (JPEG) recorded with an event, if one was kept."""
        with self._lock:
            try:
                row = self._connection().execute("SELECT jpeg FROM snapshots WHERE event_id = ?",
                                                 (event_id,)).fetchone()
            except sqlite3.Error as error:
                raise EventLogError(f"reading {self.path} failed: {error}") from error
        return None if row is None else bytes(row[0])

    def export_csv(self, file: IO[str] | str | os.PathLike[str], **filters: Any) -> int:
        """Write the events query(**filters) selects as CSV with a header; returns the row count."""
        with _text_output(file) as out:
            writer = csv.writer(out)
            count = -1  # the header is not an event
            for count, row in enumerate(self.csv_rows(**filters)):
                writer.writerow(row)
        return count

    def csv_rows(self, **filters: Any) -> Iterator[list[Any]]:
        """The header, then one CSV row per event query(**filters) selects (export_csv, the desk's download)."""
        yield [*COLUMNS, "has_snapshot"]
        for event in self.iter_events(**filters):
            yield ["" if v is None else v for v in asdict(event).values()]

    def export_json(self, file: IO[str] | str | os.PathLike[str], **filters: Any) -> int:
        """Write the selected events as one JSON array of objects; returns the row count."""
        with _text_output(file) as out:
            out.write("[")
            count = 0
            for event in self.iter_events(**filters):
                out.write(("," if count else "") + "\n  " + json.dumps(asdict(event), ensure_ascii=False))
                count += 1
            out.write("\n]\n" if count else "]\n")
        return count

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise EventLogError(f"{self.path} is not open (closed, or it failed to open: see the log)")
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> EventReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _text_output:
    """A path to open (and close), or a stream the caller owns."""

    def __init__(self, file: IO[str] | str | os.PathLike[str]) -> None:
        self.file = file
        self.opened: IO[str] | None = None

    def __enter__(self) -> IO[str]:
        if isinstance(file := self.file, (str, os.PathLike)):
            self.opened = open(file, "w", encoding="utf-8", newline="")
            return self.opened
        return file

    def __exit__(self, *exc_info: object) -> None:
        if self.opened is not None:
            self.opened.close()


class EventLog(EventReader):
    """The daemon's writer. record() never raises.

    Retention: rows older than max_age_days and all but the newest max_rows are deleted at
    open and every prune_every inserts (cheap: both deletes use an index).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int | None = 1_000_000,
                 max_age_days: float | None = 365, keep_snapshots: bool = False, prune_every: int = 100,
                 backlog: int = 1000, busy_timeout: float = 1.0, reopen_every: float = 30.0) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        self.keep_snapshots = keep_snapshots
        self.prune_every = max(1, prune_every)
        self.busy_timeout = busy_timeout
        self.reopen_every = reopen_every
        self.written = 0  # events stored
        self.write_errors = 0  # failed write attempts
        self.dropped = 0  # events lost because the backlog overflowed
        self._pending: deque[tuple[tuple[Any, ...], bytes | None]] = deque()
        self._backlog = max(1, backlog)
        self._lock = threading.Lock()
        self._db = None
        self._closed = False
        self._next_open = 0.0
        self._since_prune = 0
        self._last_error_log = -_LOG_EVERY_S
        self._failing = False
        check_event_log(self.path)  # a file that can never be written is refused now, not logged for months
        with self._lock:
            self._open()

    @property
    def pending(self) -> int:
        """Events waiting in memory for the database to become writable again."""
        return len(self._pending)

    def record(self, kind: str, *, door: str | None = None, person_id: int | None = None,
               person_name: str | None = None, external_id: str | None = None, score: float | None = None,
               track_id: int | None = None, reason: str | None = None, snapshot: bytes | None = None,
               at: datetime | float | None = None) -> bool:
        """Store one event (timestamped now unless `at` is given). True when it reached the
        database; False when it waits in the backlog (or the log is closed)."""
        unix = _timestamp(at) if at is not None else time.time()
        row = (_iso(unix), unix, door, kind, person_id, person_name, external_id,
               None if score is None else float(score), track_id, reason)
        with self._lock:
            if self._closed:
                log.warning("event after close dropped: %s %s", kind, reason)
                return False
            while len(self._pending) >= self._backlog:  # oldest out: recent events matter most
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((row, snapshot if self.keep_snapshots else None))
            return self._flush()

    def prune(self) -> int:
        """Apply the retention limits now; returns the number of events deleted."""
        with self._lock:
            if self._db is None:
                return 0
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    return self._prune()
            except sqlite3.Error as error:
                self._write_failed(error)
                return 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._pending:
                self._next_open = 0.0  # the last chance for the backlog: reopen now, not at the next retry time
                self._flush()
            if self._pending:
                log.error("%d events could not be written before close and are lost", len(self._pending))
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- internals (self._lock held) ------------------------------------------------------

    def _open(self) -> None:
        self._next_open = time.monotonic() + self.reopen_every
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 before SQLite sees it (its -wal and -shm files copy the mode):
            # the log names people and, optionally, holds their faces.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False,
                                 isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: an access log that loses its last minutes on a power cut fails an audit;
            # the fsync per event is cheap at door event rates.
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            with db:
                db.execute("BEGIN")
                self._db = db
                self._prune()
        except (OSError, sqlite3.Error) as error:
            self._db = None
            if db is not None:
                db.close()
            self._write_failed(error, f"cannot open {self.path}")

    def _flush(self) -> bool:
        if self._db is None:
            if time.monotonic() < self._next_open:
                return False
            self._open()
            if self._db is None:
                return False
        try:
            with self._db:  # one transaction for the whole backlog
                self._db.execute("BEGIN IMMEDIATE")
                for row, jpeg in self._pending:
                    cursor = self._db.execute(
                        f"INSERT INTO events ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * len(row))})", row)
                    if jpeg is not None:
                        self._db.execute("INSERT INTO snapshots (event_id, jpeg) VALUES (?, ?)",
                                         (cursor.lastrowid, sqlite3.Binary(jpeg)))
                self._since_prune += len(self._pending)
                if self._since_prune >= self.prune_every:
                    self._prune()
        except sqlite3.Error as error:
            self._write_failed(error)
            return False
        self.written += len(self._pending)
        if self._failing:
            log.warning("event log %s writable again: %d events from the backlog written, %d dropped so far",
                        self.path, len(self._pending), self.dropped)
            self._failing = False
        self._pending.clear()
        return True

    def _prune(self) -> int:
        """Delete beyond the retention limits, inside the caller's transaction."""
        self._since_prune = 0
        deleted = 0
        assert self._db is not None
        if self.max_age_days is not None:
            deleted += self._db.execute("DELETE FROM events WHERE unix < ?",
                                        (time.time() - self.max_age_days * 86400,)).rowcount
        if self.max_rows is not None:
            deleted += self._db.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.max_rows,)).rowcount
        return deleted

    def _write_failed(self, error: Exception, what: str = "") -> None:
        self.write_errors += 1
        self._failing = True
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY_S:
            self._last_error_log = now
            log.warning("event log %s: %s%s (%d failed writes, %d events waiting, %d dropped; the door keeps "
                        "working)", self.path, f"{what}: " if what else "", error, self.write_errors,
                        len(self._pending), self.dropped)
