"""The database schema as a list of forward migrations; PRAGMA user_version counts those applied.

Migration n (1-based) takes a database from version n-1 to n. A released
migration is never edited: a change to the schema is a new entry at the end.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import CorruptGallery, SchemaTooNew

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # AUTOINCREMENT: a removed person's id is never handed to someone else,
        # so event records that name a person id stay unambiguous.
        """CREATE TABLE people (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL CHECK (length(trim(name)) > 0),
            external_id TEXT UNIQUE,
            note TEXT,
            active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
            valid_from TEXT,
            valid_until TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX people_name ON people (name)",
        """CREATE TABLE templates (
            id INTEGER PRIMARY KEY,
            person_id INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            model_id TEXT NOT NULL CHECK (length(model_id) > 0),
            dim INTEGER NOT NULL CHECK (dim > 0),
            quality TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL CHECK (source IN ('camera', 'photo')),
            photo BLOB,
            created_at TEXT NOT NULL,
            CHECK (length(embedding) = 4 * dim)
        )""",
        "CREATE INDEX templates_person ON templates (person_id)",
        "CREATE INDEX templates_model ON templates (model_id)",
        # One row: bumped by every write transaction so readers (and saved
        # indexes) can tell whether what they hold is current.
        """CREATE TABLE gallery_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        )""",
        "INSERT INTO gallery_state (id, generation) VALUES (1, 0)",
    ),
    (
        # One row, on a door that mirrors the front desk's signed bundles: the version it
        # runs, so an older or replayed bundle is refused (daemon/fleet/sync.py).
        """CREATE TABLE synced_bundle (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            sender TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )""",
    ),
    (
        # A person's card and PIN for the building's panel (daemon/panel): one card per person, and
        # no card held by two people (the panel could not tell them apart). The PIN only as a hash.
        """CREATE TABLE credentials (
            person_id INTEGER PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
            card_format TEXT CHECK (card_format IS NULL OR length(card_format) > 0),
            facility INTEGER CHECK (facility >= 0),
            card_number INTEGER CHECK (card_number >= 0),
            pin_hash TEXT,
            updated_at TEXT NOT NULL,
            CHECK ((card_format IS NULL) = (card_number IS NULL) AND (card_format IS NULL) = (facility IS NULL)),
            UNIQUE (card_format, facility, card_number)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]


def refuse_newer(connection: sqlite3.Connection, path: Path) -> None:
    """Raise SchemaTooNew before anything has been written to a newer database."""
    version = schema_version(connection)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path}: gallery schema version {version} is newer than this facegate supports "
            f"({SCHEMA_VERSION}); upgrade facegate, the file was left untouched")


# The tables of every released schema: a database at version 1 or later without them is something else.
GALLERY_TABLES = {"people", "templates", "gallery_state"}


def refuse_foreign(connection: sqlite3.Connection, path: Path) -> None:
    """Raise CorruptGallery, before anything is written, for a SQLite database that is not a gallery
    (another program's, or the event log given as the gallery): migrating it would write into it."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = schema_version(connection)
    missing = GALLERY_TABLES - tables
    if (version == 0 and tables - {"sqlite_sequence"}) or (version > 0 and missing):
        found = ", ".join(sorted(tables)) or "none"
        raise CorruptGallery(f"{path}: a SQLite database but not a facegate gallery (schema version {version}, "
                             f"tables: {found}); check the path, or move the file aside to start an empty gallery")


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations, one transaction each, re-checking the version under the write lock."""
    while schema_version(connection) < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(connection)  # another process may have migrated meanwhile
            if version > SCHEMA_VERSION:
                refuse_newer(connection, path)
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
