"""Owner-only files and directories (crash-safe replacement is engines.atomic_file).

Face templates are biometric data: everything the gallery writes is readable
by its owner only, whatever the process umask.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("facegate.gallery")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def ensure_private_dir(path: Path) -> None:
    """Create the directory 0700 when missing; an existing one is the operator's choice."""
    if path.is_dir():
        return
    path.mkdir(parents=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask


def create_private_file(path: Path) -> None:
    """Create an empty 0600 file unless one exists (SQLite then gives -wal/-shm the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def tighten(path: Path) -> None:
    """Take group and other permissions off an existing file, with a log line when it had any."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)
            log.warning("%s was readable by others (mode %o); made it owner-only", path, mode)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot make %s owner-only: %s", path, error)
