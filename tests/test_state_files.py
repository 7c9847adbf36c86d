"""The door's state files: a gallery or event log it cannot use keeps it from starting, with one clear line
and nothing on disk changed; an event log that stops taking writes while the door runs costs counted,
rate-limited warnings, and the door keeps working."""
from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip
from daemon.events import EventLog, EventReader
from daemon.gallery import Gallery, Template
from tests.conftest import REPO, folder_state
from daemon.service import DoorService
from tests.test_service import RELAY, RelayWatch, make_config, short_clip  # noqa: F401 (short_clip: a fixture)



def daemon(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def door(tmp_path) -> tuple[Path, Path]:
    """A config file and its state folder, whose gallery holds one person."""
    state = tmp_path / "state"
    state.mkdir()
    with Gallery.open(state / "gallery.db") as gallery:
        gallery.add_person("Alice", [Template(np.ones(128, np.float32), "some-model")])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(demo_config(state, fast=True)))
    return config, state


def damage(path: Path) -> None:
    """Not a SQLite file any more, readable by others: neither its bytes nor its mode may change."""
    path.write_bytes(np.random.default_rng(3).bytes(6000))
    os.chmod(path, 0o644)


@pytest.mark.parametrize("file, expected", [
    ("gallery.db", "{path}: not a readable facegate gallery (file is not a database); restore it from a backup or "
                   "move it aside to start an empty one"),
    ("events.db", "{path}: not a readable facegate event log (file is not a database): move it aside (mv {path} "
                  "{path}.damaged) to start a new, empty event log, and keep the old one for whoever audits the door"),
])
def test_a_damaged_state_file_keeps_the_door_from_starting_with_one_line_and_changes_nothing(door, file, expected):
    config, state = door
    damage(state / file)
    expected = expected.format(path=state / file)
    before = folder_state(state)

    checked = daemon("check-config", config)
    assert checked.returncode == 1
    assert checked.stderr == f"{config}: valid, but cannot run on this machine: {expected}\n"
    assert folder_state(state) == before

    started = daemon("run", "--config", config)
    assert started.returncode == 1 and "Traceback" not in started.stderr
    errors = [line for line in started.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR facegate: refusing to start: {expected}"]
    assert "facegate ready" not in started.stderr
    assert folder_state(state) == before  # no events.db or index made beside a damaged gallery, no mode changed


def test_a_folder_named_as_the_gallery_keeps_the_door_from_starting(door):
    config, state = door
    raw = yaml.safe_load(config.read_text())
    raw["gallery"]["path"] = str(state)
    config.write_text(yaml.safe_dump(raw))
    before = folder_state(state)
    checked = daemon("check-config", config)
    assert checked.returncode == 1
    assert f"{state} is a folder, not the gallery file: name the file, e.g. {state / 'gallery.db'}" in checked.stderr
    assert folder_state(state) == before


def test_an_event_log_that_stops_taking_writes_is_counted_and_warned_of_and_the_door_works_on(
        tmp_path, short_clip, caplog):  # noqa: F811 (the fixture)
    config = make_config(tmp_path, short_clip, door={"relay": {"pin": RELAY, "unlock_seconds": 0.5}})
    person = enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    released = []

    def release_once_the_door_has_opened_and_closed(frame, observed, unlocked) -> None:
        watch(frame, observed, unlocked)
        if watch.high_at and not unlocked and not released:
            holder.execute("ROLLBACK")
            released.append(frame.video_time)

    factory = MockFactory()
    watch = RelayWatch(factory)
    with caplog.at_level(logging.WARNING, logger="facegate.events"):
        service = DoorService(config, pin_factory=factory, on_frame=release_once_the_door_has_opened_and_closed)
        failures_at_start = service.metrics.registry.get_sample_value("facegate_event_write_failures_total")
        # Another process takes the event log's write lock (a backup, a VACUUM) before the first event and
        # keeps it until the hiker has been let in and the door has locked again: every write until then
        # fails after the busy timeout.
        holder = sqlite3.connect(config.events.path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        code = service.run()
    holder.close()
    assert code == 0 and released, "the lock should have been let go during the clip"
    assert min(watch.high_at) < released[0], "the door must open while the log takes no writes"
    assert factory.pin(RELAY).state == 0
    failures = service.metrics.registry.get_sample_value("facegate_event_write_failures_total")
    assert failures_at_start == 0 and failures >= 2  # the start event and the grant, at least
    assert service.metrics.registry.get_sample_value("facegate_events_dropped_total") == 0
    warnings = [r for r in caplog.records if r.name == "facegate.events"]
    assert all(r.levelname == "WARNING" for r in warnings)
    failing = [r.getMessage() for r in warnings if "failed writes" in r.getMessage()]
    assert len(failing) == 1 and "database is locked" in failing[0] and "the door keeps working" in failing[0]
    assert any("writable again" in r.getMessage() for r in warnings)
    kinds = [(e.kind, e.person_id) for e in EventReader(config.events.path).query()]
    assert kinds[0] == ("start", None) and ("grant", person) in kinds and kinds[-1] == ("stop", None)
