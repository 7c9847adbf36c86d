"""The door's SQLite files (gallery, event log): a path SQLite cannot use, and a damaged file, told apart.

SQLite says "unable to open database file" whether the path is a folder, its folder is missing
or read-only, or the file is read-only; these say which, so the message can say what to do.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

SQLITE_READONLY = 8
SQLITE_CANTOPEN = 14


def is_damage(error: sqlite3.Error) -> bool:
    """A file that is not a SQLite database or is damaged (SQLITE_NOTADB, SQLITE_CORRUPT): plain
    DatabaseError, whose subclasses are locks, I/O, constraints and misuse."""
    return type(error) is sqlite3.DatabaseError


def is_path_error(error: sqlite3.Error) -> bool:
    """SQLite could not open or write the file for a reason path_problem may name."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF in (SQLITE_READONLY, SQLITE_CANTOPEN)


def path_problem(path: Path, what: str, file_name: str) -> str | None:
    """What about path keeps SQLite from using it read-write, when that is the reason; None otherwise
    (also for a missing folder, which the caller creates or refuses itself). what names the file
    ("gallery"), file_name its usual name ("gallery.db").

    os.access answers for this process's user, root included: a folder mounted read-only is
    read-only for root too, while root may write into a folder of mode 0555.
    """
    folder = path.parent
    if path.is_dir():
        return f"{path} is a folder, not the {what} file: name the file, e.g. {path / file_name}"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{path}: {folder} is a file, not a folder"
    user = _user()
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"{path}: the folder {folder} is read-only for {user}, and SQLite keeps the {what}'s -wal and "
                f"-shm files beside it: make the folder writable for {user}, or run as the user that owns it")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is read-only for {user}: make it readable and writable for {user} (chmod 600, chown)"
    return None


def _user() -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except (ImportError, KeyError):
        return f"user id {os.geteuid()}"


def check_state_files(gallery: Path, events: Path) -> None:
    """The door's gallery and event log checked as the door opens them, reading only: raises the
    gallery's GalleryError or the event log's EventLogError, each naming the file and what to do.
    Files not there yet pass: the door creates them."""
    from daemon.events import check_event_log  # both modules use this one: imported when called
    from daemon.gallery import check_gallery_file

    check_gallery_file(gallery)
    check_event_log(events)
