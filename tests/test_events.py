"""The event log: records, queries, exports, retention, write failures, and the CLI."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest

from daemon.events import SCHEMA_VERSION, EventLog, EventLogError, EventReader
from daemon.gallery import SCHEMA_VERSION as GALLERY_SCHEMA
from daemon.gallery import Gallery
from tests.conftest import REPO, folder_state

CLI_PATH = REPO / "tools" / "events.py"
_spec = importlib.util.spec_from_file_location("facegate_events_cli", CLI_PATH)
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "var" / "events.db"


@pytest.fixture
def log(db_path):
    with EventLog(db_path, max_age_days=None) as event_log:
        yield event_log


def fill(log: EventLog) -> None:
    log.record("start", door="front-door", at=T0)
    log.record("grant", door="front-door", person_id=7, person_name="Alice", external_id="E1001",
               score=0.31, track_id=3, reason="allowed by group staff", at=T0 + timedelta(minutes=1))
    log.record("deny", door="front-door", person_id=8, person_name="Bob", score=0.35, track_id=4,
               reason="outside schedule of group staff", at=T0 + timedelta(minutes=2))
    log.record("unknown_face", door="front-door", score=0.72, track_id=5, at=T0 + timedelta(minutes=3))
    log.record("alarm_forced_open", door="front-door", reason="door opened while locked",
               at=T0 + timedelta(minutes=4))


def count(path, table="events") -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# -- writing and reading ----------------------------------------------------------------------

def test_record_and_query(log):
    fill(log)
    events = log.query()
    assert [e.kind for e in events] == ["start", "grant", "deny", "unknown_face", "alarm_forced_open"]
    grant = events[1]
    assert (grant.door, grant.person_id, grant.person_name, grant.external_id, grant.score, grant.track_id,
            grant.reason) == ("front-door", 7, "Alice", "E1001", 0.31, 3, "allowed by group staff")
    assert grant.time == "2026-11-23T08:01:00.000Z"
    assert grant.unix == (T0 + timedelta(minutes=1)).timestamp()
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert log.written == 5 and log.write_errors == 0


def test_record_without_time_uses_now(log):
    before = time.time()
    assert log.record("start") is True
    event = log.query()[-1]
    assert before <= event.unix <= time.time()
    assert event.time.endswith("Z")


def test_query_filters(log):
    fill(log)
    minute = timedelta(minutes=1)
    assert [e.kind for e in log.query(since=T0 + minute, until=T0 + 3 * minute)] == ["grant", "deny"]
    assert [e.kind for e in log.query(since=(T0 + 3 * minute).timestamp())] == ["unknown_face", "alarm_forced_open"]
    assert [e.kind for e in log.query(kinds=["deny", "unknown_face"])] == ["deny", "unknown_face"]
    assert [e.kind for e in log.query(person="Alice")] == ["grant"]
    assert [e.kind for e in log.query(person="E1001")] == ["grant"]
    assert [e.kind for e in log.query(person="8")] == ["deny"]
    assert [e.kind for e in log.query(limit=2)] == ["unknown_face", "alarm_forced_open"]  # newest two, in order
    assert log.query(kinds=["grant"], person="Bob") == []


def test_file_is_private_and_versioned(log, db_path):
    log.record("start")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.exists() and stat.S_IMODE(os.stat(wal).st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_the_events(db_path):
    with EventLog(db_path) as first:
        first.record("start")
    with EventLog(db_path) as second:
        second.record("stop")
        assert [e.kind for e in second.query()] == ["start", "stop"]


def test_snapshots_are_off_by_default(log, db_path):
    log.record("unknown_face", snapshot=b"\xff\xd8 jpeg")
    event = log.query()[0]
    assert not event.has_snapshot and log.snapshot(event.id) is None
    assert count(db_path, "snapshots") == 0


def test_snapshots_when_asked_for_and_deleted_with_their_event(db_path):
    with EventLog(db_path, keep_snapshots=True, max_rows=2, prune_every=1) as log:
        for i in range(3):
            log.record("unknown_face", track_id=i, snapshot=b"\xff\xd8 jpeg %d" % i)
        events = log.query()
        assert [e.track_id for e in events] == [1, 2]
        assert all(e.has_snapshot for e in events)
        assert log.snapshot(events[0].id) == b"\xff\xd8 jpeg 1"
        assert count(db_path, "snapshots") == 2  # the pruned event's snapshot went with it (FK cascade)


# -- retention ----------------------------------------------------------------------------------

def test_max_rows_keeps_the_newest(db_path):
    with EventLog(db_path, max_rows=10, max_age_days=None, prune_every=5) as log:
        for i in range(23):
            log.record("grant", track_id=i)
        tracks = [e.track_id for e in log.query()]
        assert len(tracks) <= 10 + 5  # pruned every 5 inserts: never far above the limit
        assert tracks == list(range(23 - len(tracks), 23))
        assert log.prune() >= 0 and len(log.query()) == 10


def test_max_age_prunes_old_events(db_path):
    now = datetime.now(timezone.utc)
    with EventLog(db_path, max_rows=None, max_age_days=None) as log:
        log.record("grant", at=now - timedelta(days=40))
        log.record("grant", at=now - timedelta(days=10))
    with EventLog(db_path, max_rows=None, max_age_days=30) as log:  # pruned at open
        assert len(log.query()) == 1
        log.record("grant", at=now - timedelta(days=31))
        assert log.prune() == 1
        assert len(log.query()) == 1


# -- failures never reach the caller --------------------------------------------------------------

def test_full_disk_is_logged_counted_and_retried(log, caplog):
    log.record("start")
    # A full disk, simulated: cap this connection's database at its current size.
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.WARNING, logger="facegate.events"):
        for i in range(20):
            assert log.record("deny", reason="x" * 5000, track_id=i) is False  # no exception
    assert log.write_errors == 20 and log.pending == 20
    assert "database or disk is full" in caplog.text and "the door keeps working" in caplog.text
    assert [r.levelname for r in caplog.records if r.name == "facegate.events"] == ["WARNING"]  # rate-limited
    log._db.execute("PRAGMA max_page_count = 1000000")  # space again
    assert log.record("grant") is True
    assert [e.kind for e in log.query()] == ["start"] + ["deny"] * 20 + ["grant"]
    assert log.pending == 0 and log.dropped == 0


def test_locked_database_does_not_block_or_raise(db_path):
    with EventLog(db_path, busy_timeout=0.05) as log:
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            assert log.record("grant") is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert log.record("stop") is True
        assert [e.kind for e in log.query()] == ["grant", "stop"]


def test_a_log_locked_at_open_starts_and_writes_its_backlog_by_close_at_the_latest(db_path, caplog):
    EventLog(db_path).close()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # a transient trouble at open: the door starts, the events wait
    with caplog.at_level(logging.WARNING, logger="facegate.events"):
        log = EventLog(db_path, busy_timeout=0.05, reopen_every=3600)
        assert log.record("start") is False and log.write_errors >= 1
        other.execute("ROLLBACK")
        other.close()
        log.close()  # long before the next reopen: close tries once more
    assert [e.kind for e in EventReader(db_path).query()] == ["start"]
    assert "could not be written" not in caplog.text


def test_backlog_is_bounded(db_path):
    with EventLog(db_path, backlog=3) as log:
        log._db.execute("PRAGMA query_only = ON")  # every write now fails
        for i in range(6):
            assert log.record("grant", track_id=i) is False
        assert log.pending == 3 and log.dropped == 3
        log._db.execute("PRAGMA query_only = OFF")
        assert log.record("grant", track_id=6) is True
        assert [e.track_id for e in log.query()] == [4, 5, 6]  # the oldest were dropped


def test_a_log_that_cannot_reopen_at_run_time_does_not_raise(db_path, caplog):
    log = EventLog(db_path, max_age_days=None, reopen_every=0)
    log._db.close()
    log._db = None  # the connection lost, as after a failed reopen
    db_path.parent.rename(db_path.parent.with_name("gone"))
    db_path.parent.write_text("")  # and its folder is now a file
    with caplog.at_level(logging.WARNING, logger="facegate.events"):
        assert log.record("start") is False
    assert log.write_errors >= 1 and "cannot open" in caplog.text
    with pytest.raises(EventLogError):
        log.query()
    log.close()
    assert log.record("after close") is False



def gallery_file(path) -> None:
    Gallery.open(path).close()


def garbage_file(path) -> None:
    path.write_bytes(os.urandom(3000))


def newer_log(path) -> None:
    EventLog(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def truncated_log(path) -> None:
    """A real event log cut short, as a full disk or a pulled SD card leaves one."""
    with EventLog(path, max_age_days=None) as log:
        for number in range(300):
            log.record("deny", reason="x" * 400, track_id=number)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("make, message", [
    (garbage_file, "not a readable facegate event log \\(file is not a database\\): move it aside \\(mv {path} "
                   "{path}.damaged\\) to start a new, empty event log"),
    (truncated_log, "not a readable facegate event log \\(database disk image is malformed\\): move it aside"),
    (gallery_file, f"a SQLite database but not a facegate event log \\(schema version {GALLERY_SCHEMA}, tables: "
                   ".*gallery_state, people, .*check events.path, or move it aside"),
    (newer_log, f"event log schema version {SCHEMA_VERSION + 1} is newer than this facegate writes "
                f"\\({SCHEMA_VERSION}\\): upgrade facegate, or move it aside"),
])
def test_a_file_that_cannot_be_the_event_log_is_refused_at_open_and_left_as_it_was(tmp_path, make, message):
    path = tmp_path / "events.db"
    make(path)
    os.chmod(path, 0o644)
    before = folder_state(tmp_path)
    with pytest.raises(EventLogError, match=f"^{path}: " + message.format(path=path)):
        EventLog(path)
    assert folder_state(tmp_path) == before


def test_a_folder_given_as_the_event_log_is_named(tmp_path):
    with pytest.raises(EventLogError, match=f"{tmp_path} is a folder, not the event log file: name the file, e.g. "
                                            f"{tmp_path / 'events.db'}"):
        EventLog(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_newer_schema_is_refused_by_the_reader(db_path):
    with EventLog(db_path) as log:
        log.record("start")
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(EventLogError, match="schema version"):
        EventReader(db_path)


def test_reader_is_read_only(log, db_path):
    fill(log)
    with EventReader(db_path) as reader:
        assert len(reader.query()) == 5
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._db.execute("DELETE FROM events")
    with pytest.raises(EventLogError, match="no event log"):
        EventReader(db_path.with_name("missing.db"))


# -- exports ----------------------------------------------------------------------------------------

def test_export_csv(log, tmp_path):
    fill(log)
    buffer = io.StringIO()
    assert log.export_csv(buffer, kinds=["grant", "deny"]) == 2
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["person_name"] for r in rows] == ["Alice", "Bob"]
    assert rows[0]["score"] == "0.31" and rows[0]["external_id"] == "E1001" and rows[1]["external_id"] == ""
    path = tmp_path / "out.csv"
    assert log.export_csv(path) == 5
    assert path.read_text().splitlines()[0].startswith("id,time,unix,door,kind")


def test_export_json(log, tmp_path):
    fill(log)
    path = tmp_path / "out.json"
    assert log.export_json(path, person="Alice") == 1
    [event] = json.loads(path.read_text())
    assert event["kind"] == "grant" and event["score"] == 0.31 and event["has_snapshot"] is False
    empty = io.StringIO()
    assert log.export_json(empty, kinds=["nothing"]) == 0
    assert json.loads(empty.getvalue()) == []


# -- the CLI -------------------------------------------------------------------------------------------

def test_cli_lists_a_table(log, db_path, capsys):
    fill(log)
    assert cli.main(["list", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "time", "door", "kind", "person", "score", "track", "reason"]
    assert len(out) == 6
    assert "Alice" in out[2] and "0.310" in out[2] and "allowed by group staff" in out[2]


def test_cli_prints_names_and_reasons_escaped(log, db_path, capsys):
    log.record("grant", person_name="Eve\x1b[2J\u202e", reason="allowed\nINFO forged line", at=T0)
    assert cli.main(["--db", str(db_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "Eve\\x1b[2J\\u202e" in out and "allowed INFO forged line" in out
    assert "\x1b" not in out and "\u202e" not in out


def test_cli_filters_and_json_lines(log, db_path, capsys):
    fill(log)
    assert cli.main(["list", "--db", str(db_path), "--kind", "grant,deny", "--kind", "unknown_face",
                     "--since", "2026-11-23T08:01:00Z", "--limit", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in lines] == ["deny", "unknown_face"]
    assert cli.main(["list", "--db", str(db_path), "--person", "E1001", "--json"]) == 0
    assert [json.loads(line)["person_name"] for line in capsys.readouterr().out.splitlines()] == ["Alice"]


def test_cli_options_go_before_or_after_the_command(log, db_path, capsys):
    fill(log)
    assert cli.main(["--db", str(db_path), "--kind", "grant", "list", "--kind", "deny", "--json"]) == 0
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == ["grant", "deny"]
    assert cli.main(["--db", str(db_path), "--limit", "1", "list", "--json"]) == 0
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == ["alarm_forced_open"]
    # Given in both places, the one after the command wins.
    assert cli.main(["--db", str(db_path.parent / "missing.db"), "list", "--db", str(db_path)]) == 0
    assert cli.main(["--db", str(db_path), "list", "--db", str(db_path.parent / "missing.db")]) == 1


def test_cli_relative_since(log, db_path, capsys):
    log.record("grant", at=datetime.now(timezone.utc) - timedelta(hours=3))
    log.record("deny")
    assert cli.main(["list", "--db", str(db_path), "--since", "1h", "--json"]) == 0
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == ["deny"]


def test_cli_exports(log, db_path, tmp_path, capsys):
    fill(log)
    out = tmp_path / "events.csv"
    assert cli.main(["export", "--db", str(db_path), "--format", "csv", "-o", str(out), "--kind", "deny"]) == 0
    assert [r["kind"] for r in csv.DictReader(out.open())] == ["deny"]
    assert "1 events exported" in capsys.readouterr().err
    assert cli.main(["export", "--db", str(db_path), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_cli_exit_codes(tmp_path, capsys):
    assert cli.main(["list", "--db", str(tmp_path / "missing.db")]) == 1
    assert "no event log" in capsys.readouterr().err
    for bad in (["list", "--since", "yesterday"], ["list", "--limit", "0"], ["export", "--format", "xml"], []):
        with pytest.raises(SystemExit) as info:
            cli.main(bad)
        assert info.value.code == 2


def test_cli_runs_as_a_script_with_examples_in_help():
    result = subprocess.run([sys.executable, str(CLI_PATH), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "tools/events.py export" in result.stdout
