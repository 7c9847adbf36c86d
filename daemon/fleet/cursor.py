"""The publisher's cursor: the id of the last event-log row the broker acknowledged, kept in SQLite.

One row per broker topic prefix, so pointing a door at another prefix (another fleet) starts
that one from the beginning of the log. Written in its own small file beside the event log
(mqtt.db) rather than in the log itself: the operator's tools open the log read-only and
must not see a second writer's schema.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("facegate.mqtt")

_SCHEMA = "CREATE TABLE IF NOT EXISTS cursor (prefix TEXT PRIMARY KEY, event_id INTEGER NOT NULL)"


class CursorError(RuntimeError):
    """The cursor file cannot be opened or read."""


class Cursor:
    """Where publishing resumes: every event with a larger id is still to be delivered."""

    def __init__(self, path: str | os.PathLike[str], prefix: str) -> None:
        self.path = Path(path)
        self.prefix = prefix
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(_SCHEMA)
            row = self._db.execute("SELECT event_id FROM cursor WHERE prefix = ?", (prefix,)).fetchone()
        except sqlite3.Error as error:
            raise CursorError(f"the MQTT cursor {self.path} cannot be used: {error}; delete it to resend the "
                              "whole event log") from error
        self._saved = row[0] if row else 0
        self.event_id = self._saved

    def advance(self, event_id: int) -> None:
        """The broker acknowledged every event up to event_id (kept in memory until save())."""
        with self._lock:
            self.event_id = max(self.event_id, event_id)

    def save(self) -> bool:
        """Write the cursor if it moved; False (logged) when the disk refuses: the rows since the last
        save are sent again after a restart, none is lost."""
        with self._lock:
            event_id = self.event_id
            if event_id == self._saved:
                return True
            try:
                self._db.execute("INSERT INTO cursor (prefix, event_id) VALUES (?, ?) ON CONFLICT (prefix) "
                                 "DO UPDATE SET event_id = excluded.event_id", (self.prefix, event_id))
            except sqlite3.Error as error:
                log.error("cannot save the MQTT cursor in %s: %s (events after %d are sent again after a restart)",
                          self.path, error, self._saved)
                return False
            self._saved = event_id
            return True

    def close(self) -> None:
        self.save()
        with self._lock:
            self._db.close()
