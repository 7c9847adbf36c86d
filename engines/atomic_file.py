"""Crash-safe file replacement: a crash or power cut leaves the old file or the new one, never a mix.

Write to a temporary name in the same directory, fsync, rename over the target
and fsync the directory so the rename itself is durable.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

OWNER_ONLY = 0o600


@contextmanager
def atomic_file(path: str | Path, mode: int = OWNER_ONLY) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` only when the with-block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash; O_EXCL below then guarantees the mode
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes | memoryview, mode: int = OWNER_ONLY) -> None:
    with atomic_file(path, mode) as file:
        file.write(data)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in the directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
