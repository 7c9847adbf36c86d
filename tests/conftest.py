"""Shared fixtures: paths to the repository and to the optional ../shared data."""
from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.broker"]  # the Mosquitto fixtures: mosquitto, broker_factory

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = REPO / "engines" / "models"
DEMO_CLIP = REPO / "daemon" / "demo" / "video_02_hikers_walking_towards_camera.mp4"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip: development photos never ship with the project."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: development data is only on development machines")
    return path


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll until predicate() holds; bounded so a broken timer or source fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def folder_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder below folder: its mode and (for files) its bytes. Equal states: nothing on disk
    changed, no file made or removed, no mode changed (a refused command must leave all three alone)."""
    return {str(p.relative_to(folder)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}
