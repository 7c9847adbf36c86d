"""The gallery database: people and their face templates in one SQLite file, the source of truth.

Every write is one transaction that also bumps a generation counter, so a
process killed at any point leaves each person fully enrolled or absent, and
readers in other processes can tell cheaply (PRAGMA data_version, then the
generation) that their index is out of date. The FAISS index is derived from
this file and can always be rebuilt (index.py).

A Gallery holds one connection; use it from one thread at a time.
Bad arguments raise ValueError; database trouble raises a GalleryError that
names the file.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AmbiguousName, CorruptGallery, DuplicateExternalId, GalleryError, PersonNotFound
from daemon.sqlite_files import is_damage, is_path_error, path_problem
from engines.atomic_file import fsync_dir

from .files import create_private_file, ensure_private_dir, tighten
from .names import checked_name
from .records import SOURCES, ModelTemplates, NewPerson, Person, Snapshot, StoredTemplate, SyncedBundle, Template
from .schema import migrate, refuse_foreign, refuse_newer
from daemon.panel.credentials import Credential
from daemon.panel.formats import Card

log = logging.getLogger("facegate.gallery")

BLOB_DTYPE = np.dtype("<f4")  # fixed byte order: a gallery copied between devices stays readable
JPEG_MAGIC = b"\xff\xd8"
PERSON_COLUMNS = """p.id, p.name, p.external_id, p.note, p.active, p.valid_from, p.valid_until,
    p.created_at, p.updated_at, (SELECT count(*) FROM templates t WHERE t.person_id = p.id)"""


class Gallery:
    """People and face templates in one SQLite database (WAL, foreign keys, secure delete)."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection = connection
        self._private = False  # the files made owner-only, which the first committed write does

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_s: float = 10.0) -> Gallery:
        """Open (creating and migrating when needed) the gallery database at path.

        A missing folder is created (0700). An existing file readable by others is only named in a
        warning here: its mode changes with the first write that succeeds, never on a failed command.
        """
        path = Path(path)
        _refuse_unusable_path(path)
        try:
            ensure_private_dir(path.parent)
            create_private_file(path)  # before SQLite does, so the file and its -wal/-shm are 0600
        except OSError as error:
            raise GalleryError(path_problem(path, "gallery", "gallery.db")
                               or f"{path}: cannot create it: {error.strerror}") from None
        _warn_if_shared(path)
        with _translated(path):
            connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
        try:
            with _translated(path):
                _configure(connection, path, busy_timeout_s)
        except BaseException:
            connection.close()
            raise
        return cls(path, connection)

    @property
    def index_dir(self) -> Path:
        """Where the derived FAISS index files of this gallery live."""
        return self.path.with_name(self.path.name + ".index")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- change detection -------------------------------------------------

    def generation(self) -> int:
        """A counter bumped by every committed write."""
        with _translated(self.path):
            return self._connection.execute("SELECT generation FROM gallery_state").fetchone()[0]

    def data_version(self) -> int:
        """Changes when another connection commits; reading it touches no table."""
        with _translated(self.path):
            return self._connection.execute("PRAGMA data_version").fetchone()[0]

    # --- people -----------------------------------------------------------

    def add_person(self, name: str, templates: Sequence[Template], external_id: str | None = None,
                   note: str | None = None, valid_from: str | date | None = None,
                   valid_until: str | date | None = None) -> int:
        """Enrol a person with at least one template, all in one transaction; returns the person id."""
        name = checked_name(name)
        rows = _checked_templates(templates)
        validity = _checked_validity(valid_from, valid_until)
        now = _now()
        with self._transaction() as connection:
            person_id = _insert_person(connection, name, external_id, note, True, validity, now)
            _insert_templates(connection, person_id, rows, now)
        return person_id

    def add_people(self, people: Sequence[NewPerson]) -> list[int]:
        """Enrol several people in one transaction, all or none; returns their ids in order."""
        checked = [_checked_person(number, person) for number, person in enumerate(people)]
        now = _now()
        ids = []
        with self._transaction() as connection:
            for person, validity, rows in checked:
                ids.append(_insert_person(connection, person.name, person.external_id, person.note, person.active,
                                          validity, now))
                _insert_templates(connection, ids[-1], rows, now)
        return ids

    def add_templates(self, person_id: int, templates: Sequence[Template]) -> list[int]:
        """Add templates to an enrolled person in one transaction; returns the template ids."""
        rows = _checked_templates(templates)
        now = _now()
        with self._transaction() as connection:
            _require_person(connection, person_id)
            ids = _insert_templates(connection, person_id, rows, now)
            connection.execute("UPDATE people SET updated_at = ? WHERE id = ?", (now, person_id))
        return ids

    def get_person(self, id_or_name: int | str) -> Person:
        """A person by id (int) or by exact name (str); several people of that name is an error."""
        if isinstance(id_or_name, int):
            found = self._people("WHERE p.id = ?", (id_or_name,))
        else:
            found = self._people("WHERE p.name = ?", (id_or_name,))
        if not found:
            raise PersonNotFound(f"{self.path}: no person {id_or_name!r}")
        if len(found) > 1:
            ids = ", ".join(str(person.id) for person in found)
            raise AmbiguousName(f"{self.path}: {len(found)} people are called {id_or_name!r} "
                                f"(ids {ids}); ask by id")
        return found[0]

    def find_people(self, query: str | None = None, *, active: bool | None = None) -> list[Person]:
        """People whose name contains query (any case) or whose external id equals it."""
        people = self.list_people()
        if query is not None:
            folded = query.casefold()
            people = [p for p in people if folded in p.name.casefold() or p.external_id == query]
        if active is not None:
            people = [p for p in people if p.active == active]
        return people

    def people_page(self, query: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Person], int]:
        """One page of the people find_people(query) finds (by name, then id) and how many it finds in all;
        the paging is SQL's, so a page costs the same in a gallery of ten or ten thousand."""
        where, args = "", ()
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where, args = "WHERE p.name LIKE ? ESCAPE '\\' OR p.external_id = ?", (pattern, query)
        with self._read_transaction() as connection:
            total = connection.execute(f"SELECT count(*) FROM people p {where}", args).fetchone()[0]
        return self._people(f"{where} ORDER BY p.name, p.id LIMIT ? OFFSET ?", (*args, limit, offset)), total

    def list_people(self) -> list[Person]:
        return self._people("ORDER BY p.name, p.id", ())

    def rename(self, person_id: int, name: str) -> None:
        self._update_person(person_id, name=checked_name(name))

    def set_active(self, person_id: int, active: bool) -> None:
        self._update_person(person_id, active=int(bool(active)))

    def set_validity(self, person_id: int, valid_from: str | date | None,
                     valid_until: str | date | None) -> None:
        """Replace both bounds (None: unbounded); the access policy interprets them."""
        start, end = _checked_validity(valid_from, valid_until)
        self._update_person(person_id, valid_from=start, valid_until=end)

    def remove_person(self, person_id: int) -> None:
        """Erase a person, their templates and photos for good (see _erase_traces)."""
        with self._transaction() as connection:
            if connection.execute("DELETE FROM people WHERE id = ?", (person_id,)).rowcount == 0:
                raise PersonNotFound(f"{self.path}: no person {person_id}")
        self._erase_traces()

    # --- credentials for the building's panel (daemon/panel) ---------------

    def set_credential(self, person_id: int, credential: Credential) -> None:
        """Replace a person's card and PIN hash (both None: remove them); a card another person
        holds is refused, since the panel could not tell the two apart. The caller has checked that
        the card fits its format (daemon.panel.credentials.checked_card)."""
        card = credential.card
        with self._transaction() as connection:
            _require_person(connection, person_id)
            if card is not None:
                holder = connection.execute(
                    "SELECT p.id, p.name FROM credentials c JOIN people p ON p.id = c.person_id WHERE "
                    "c.card_format = ? AND c.facility = ? AND c.card_number = ? AND c.person_id != ?",
                    (card.format, card.facility, card.number, person_id)).fetchone()
                if holder is not None:
                    raise GalleryError(f"{self.path}: card {card.format} {card.facility}:{card.number} already "
                                       f"belongs to #{holder[0]} {holder[1]!r}; remove it there first")
            connection.execute("DELETE FROM credentials WHERE person_id = ?", (person_id,))
            if card is not None or credential.pin_hash is not None:
                connection.execute(
                    "INSERT INTO credentials (person_id, card_format, facility, card_number, pin_hash, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (person_id, card and card.format, card and card.facility, card and card.number,
                     credential.pin_hash, _now()))

    def credentials(self) -> dict[int, Credential]:
        """Every person's credential, by person id (people without one are absent)."""
        with _translated(self.path):
            rows = self._connection.execute("SELECT person_id, card_format, facility, card_number, pin_hash "
                                            "FROM credentials").fetchall()
        return {row[0]: Credential(None if row[1] is None else Card(row[1], row[2], row[3]), row[4])
                for row in rows}

    # --- mirroring the front desk's gallery ----------------------------------

    def synced_bundle(self) -> SyncedBundle | None:
        """The bundle this gallery last mirrored (replace_everyone), or None when it never did."""
        with _translated(self.path):
            row = self._connection.execute("SELECT version, sender, sha256, applied_at FROM synced_bundle").fetchone()
        return None if row is None else SyncedBundle(*row)

    def replace_everyone(self, people: Sequence[NewPerson], synced: SyncedBundle) -> None:
        """Make the gallery hold exactly these people and record synced, in one transaction: all or nothing.

        Everyone enrolled before is erased with their templates and photos (see _erase_traces),
        also those enrolled again: they get new ids, as AUTOINCREMENT never hands an id out twice.
        """
        checked = [_checked_person(number, person) for number, person in enumerate(people)]
        now = _now()
        with self._transaction() as connection:
            connection.execute("DELETE FROM people")  # their templates go with them (ON DELETE CASCADE)
            for person, validity, rows in checked:
                person_id = _insert_person(connection, person.name, person.external_id, person.note,
                                           person.active, validity, now)
                _insert_templates(connection, person_id, rows, now)
            connection.execute(
                "INSERT INTO synced_bundle (id, version, sender, sha256, applied_at) VALUES (1, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version, sender = excluded.sender,"
                " sha256 = excluded.sha256, applied_at = excluded.applied_at",
                (synced.version, synced.sender, synced.sha256, synced.applied_at))
        self._erase_traces()

    # --- templates ----------------------------------------------------------

    def templates(self, person_id: int) -> list[StoredTemplate]:
        """A person's templates, oldest first."""
        with self._read_transaction() as connection:
            _require_person(connection, person_id)
            rows = connection.execute(
                "SELECT id, person_id, embedding, model_id, quality, source, photo, created_at"
                " FROM templates WHERE person_id = ? ORDER BY id", (person_id,)).fetchall()
        return [StoredTemplate(id=row[0], person_id=row[1], embedding=_vector(row[2]), model_id=row[3],
                               quality=json.loads(row[4]), source=row[5], photo_jpeg=row[6],
                               created_at=row[7]) for row in rows]

    def snapshot(self, model_id: str, with_vectors: bool = True) -> Snapshot:
        """The templates of one embedding model, consistent with one generation."""
        columns = "id, person_id, dim" + (", embedding" if with_vectors else "")
        with self._read_transaction() as connection:
            generation = connection.execute("SELECT generation FROM gallery_state").fetchone()[0]
            names = dict(connection.execute("SELECT id, name FROM people").fetchall())
            rows = connection.execute(f"SELECT {columns} FROM templates WHERE model_id = ? ORDER BY id",
                                      (model_id,)).fetchall()
        dims = {row[2] for row in rows}
        if len(dims) > 1:
            raise GalleryError(f"{self.path}: templates of model {model_id!r} have mixed dimensions "
                               f"{sorted(dims)}; run the integrity report")
        vectors = None
        if with_vectors:
            dim = dims.pop() if dims else 0
            blob = b"".join(row[3] for row in rows)
            vectors = np.frombuffer(blob, dtype=BLOB_DTYPE).astype(np.float32).reshape(len(rows), dim)
        return Snapshot(generation=generation, model_id=model_id,
                        template_ids=np.array([row[0] for row in rows], dtype=np.int64),
                        person_ids=np.array([row[1] for row in rows], dtype=np.int64),
                        names=names, vectors=vectors)

    def models(self) -> list[ModelTemplates]:
        """Each embedding model the gallery holds templates of: its dimension, templates and people."""
        with _translated(self.path):
            rows = self._connection.execute(
                "SELECT model_id, min(dim), count(*), count(DISTINCT person_id) FROM templates"
                " GROUP BY model_id ORDER BY model_id").fetchall()
        return [ModelTemplates(*row) for row in rows]

    def people_lacking(self, model_id: str) -> list[Person]:
        """People without a template of one embedding model: a search with that model cannot find them."""
        return self._people("WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.person_id = p.id"
                            " AND t.model_id = ?) ORDER BY p.name, p.id", (model_id,))

    def kept_photos(self) -> dict[int, int]:
        """Person id -> how many of their templates keep a face photo (people without one are left out)."""
        with _translated(self.path):
            return dict(self._connection.execute(
                "SELECT person_id, count(*) FROM templates WHERE photo IS NOT NULL GROUP BY person_id").fetchall())

    # --- checks ---------------------------------------------------------------

    def integrity_report(self) -> list[str]:
        """Every problem found, one line each; an empty list means the gallery is sound."""
        problems: list[str] = []
        try:
            with self._read_transaction() as connection:
                for check in (_sqlite_problems, _template_problems, _people_problems):
                    problems += check(connection)
        except CorruptGallery as error:
            problems.append(str(error))
        return problems

    # --- internals ----------------------------------------------------------------

    def _people(self, where: str, parameters: tuple[Any, ...]) -> list[Person]:
        with _translated(self.path):
            rows = self._connection.execute(f"SELECT {PERSON_COLUMNS} FROM people p {where}",
                                            parameters).fetchall()
        return [Person(id=r[0], name=r[1], external_id=r[2], note=r[3], active=bool(r[4]),
                       valid_from=r[5], valid_until=r[6], created_at=r[7], updated_at=r[8],
                       template_count=r[9]) for r in rows]

    def _update_person(self, person_id: int, **columns: Any) -> None:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with self._transaction() as connection:
            cursor = connection.execute(f"UPDATE people SET {assignments}, updated_at = ? WHERE id = ?",
                                        (*columns.values(), _now(), person_id))
            if cursor.rowcount == 0:
                raise PersonNotFound(f"{self.path}: no person {person_id}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the generation; IMMEDIATE so checks and writes see one state."""
        with _translated(self.path):
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
                self._connection.execute("UPDATE gallery_state SET generation = generation + 1")
                self._connection.execute("COMMIT")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
        if not self._private:
            for file in (self.path, _sidecar(self.path, "-wal"), _sidecar(self.path, "-shm")):
                tighten(file)
            self._private = True

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Several reads from one snapshot of the database."""
        with _translated(self.path):
            self._connection.execute("BEGIN")
            try:
                yield self._connection
            finally:
                self._connection.execute("COMMIT")

    def _erase_traces(self) -> None:
        """Leave no copy of removed rows on disk.

        secure_delete has zeroed the freed content in the database pages, but the
        WAL still holds earlier versions of those pages until a checkpoint copies
        the zeroed pages back and TRUNCATE empties it. Saved indexes hold the
        vectors too: delete them (the daemon rebuilds on its next refresh).
        """
        with _translated(self.path):
            busy, _, _ = self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("%s: a reader kept the write-ahead log busy; removed data stays in %s "
                        "until the next checkpoint", self.path, _sidecar(self.path, "-wal"))
        if self.index_dir.is_dir():
            for file in self.index_dir.iterdir():
                file.unlink(missing_ok=True)
            fsync_dir(self.index_dir)


# --- opening -----------------------------------------------------------------------


def _configure(connection: sqlite3.Connection, path: Path, busy_timeout_s: float) -> None:
    """Connection settings, then the version check before anything is written, then migrations."""
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA secure_delete = ON")
    refuse_newer(connection, path)
    refuse_foreign(connection, path)
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise GalleryError(f"{path}: cannot use write-ahead logging (journal mode stays {mode!r})")
    # FULL: an edge box loses power; a confirmed enrolment must survive that, not only a crash.
    connection.execute("PRAGMA synchronous = FULL")
    migrate(connection, path)


def check_gallery_file(path: str | Path) -> None:
    """Raise a GalleryError naming the file when Gallery.open would refuse it: an unusable path, a file
    that is not a gallery or is damaged, a newer schema. Reads only: creates, changes and leaves nothing
    (a missing file passes: Gallery.open creates it)."""
    path = Path(path)
    _refuse_unusable_path(path)
    if not path.exists():
        return
    with _translated(path):
        connection = sqlite3.connect(path, isolation_level=None)
    try:
        with _translated(path):
            refuse_newer(connection, path)
            refuse_foreign(connection, path)
    finally:
        connection.close()  # the last connection removes the -wal and -shm files it made


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """sqlite3 errors as GalleryErrors naming the file; damage (SQLITE_CORRUPT, NOTADB) as CorruptGallery."""
    try:
        yield
    except sqlite3.Error as error:
        if is_damage(error):
            raise CorruptGallery(f"{path}: not a readable facegate gallery ({error}); restore it "
                                 "from a backup or move it aside to start an empty one") from error
        if is_path_error(error):
            raise GalleryError(path_problem(path, "gallery", "gallery.db") or f"{path}: {error}") from error
        raise GalleryError(f"{path}: {error}") from error


def _refuse_unusable_path(path: Path) -> None:
    """Refuse, before anything is created, a path SQLite could not use."""
    problem = path_problem(path, "gallery", "gallery.db")
    if problem is not None:
        raise GalleryError(problem)


def _warn_if_shared(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o): face templates are biometric data; the next change to "
                    "the gallery makes it owner-only (or: chmod 600 %s)", path, mode, path)


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


# --- argument checks ----------------------------------------------------------------------


def _checked_templates(templates: Sequence[Template]) -> list[tuple[Any, ...]]:
    """Rows (embedding blob, model id, dim, quality JSON, source, photo), checked before any write."""
    if not templates:
        raise ValueError("a person needs at least one template to be recognised")
    rows = [_checked_template(index, template) for index, template in enumerate(templates)]
    dims: dict[str, int] = {}
    for _, model_id, dim, *_ in rows:
        if dims.setdefault(model_id, dim) != dim:
            raise ValueError(f"templates of model {model_id!r} have different dimensions "
                             f"({dims[model_id]} and {dim})")
    return rows


def _checked_person(number: int, person: NewPerson) -> tuple[NewPerson, tuple[str | None, str | None],
                                                              list[tuple[Any, ...]]]:
    """A person of replace_everyone checked like add_person's arguments, before any write."""
    try:
        named = replace(person, name=checked_name(person.name))
        return named, _checked_validity(person.valid_from, person.valid_until), _checked_templates(person.templates)
    except ValueError as error:
        raise ValueError(f"person {number} ({person.name!r}): {error}") from None


def _checked_template(index: int, template: Template) -> tuple[Any, ...]:
    where = f"template {index}"
    vector = np.asarray(template.embedding, dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{where}: embedding must be a non-empty 1-D vector, got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"{where}: embedding has NaN or infinite values")
    if not isinstance(template.model_id, str) or not template.model_id:
        raise ValueError(f"{where}: model_id must be the embedding model card's id, got {template.model_id!r}")
    if template.source not in SOURCES:
        raise ValueError(f"{where}: source {template.source!r} is not one of {list(SOURCES)}")
    if template.photo_jpeg is not None and not (
            isinstance(template.photo_jpeg, bytes) and template.photo_jpeg.startswith(JPEG_MAGIC)):
        raise ValueError(f"{where}: photo_jpeg must be JPEG bytes or None")
    try:
        quality = json.dumps(dict(template.quality), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: quality must be a JSON-serialisable mapping of finite numbers "
                         f"and strings: {error}") from error
    blob = vector.astype(BLOB_DTYPE).tobytes()
    return (blob, template.model_id, vector.size, quality, template.source, template.photo_jpeg)


def _checked_validity(valid_from: str | date | None, valid_until: str | date | None
                      ) -> tuple[str | None, str | None]:
    start, end = _iso(valid_from, "valid_from"), _iso(valid_until, "valid_until")
    if start is not None and end is not None:
        try:
            backwards = datetime.fromisoformat(end) < datetime.fromisoformat(start)
        except TypeError as error:
            raise ValueError(f"valid_from {start!r} and valid_until {end!r} mix times with and "
                             "without a UTC offset") from error
        if backwards:
            raise ValueError(f"valid_until {end!r} is before valid_from {start!r}")
    return start, end


def _iso(value: str | date | None, key: str) -> str | None:
    """An ISO 8601 date or datetime as text (datetime is a subclass of date)."""
    if value is None or isinstance(value, date):
        return None if value is None else value.isoformat()
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key} = {value!r} is not an ISO 8601 date or datetime "
                         "(e.g. 2026-05-01 or 2026-05-01T08:00:00+02:00)") from error
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --- statements inside a transaction ----------------------------------------------------------


def _require_person(connection: sqlite3.Connection, person_id: int) -> None:
    if connection.execute("SELECT 1 FROM people WHERE id = ?", (person_id,)).fetchone() is None:
        raise PersonNotFound(f"no person {person_id}")


def _insert_person(connection: sqlite3.Connection, name: str, external_id: str | None, note: str | None,
                   active: bool, validity: tuple[str | None, str | None], now: str) -> int:
    if external_id is not None:
        _refuse_duplicate_external_id(connection, external_id)
    return connection.execute(
        "INSERT INTO people (name, external_id, note, active, valid_from, valid_until, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (name, external_id, note, int(bool(active)), *validity, now, now)).lastrowid


def _refuse_duplicate_external_id(connection: sqlite3.Connection, external_id: str) -> None:
    row = connection.execute("SELECT id, name FROM people WHERE external_id = ?", (external_id,)).fetchone()
    if row is not None:
        raise DuplicateExternalId(f"external id {external_id!r} already belongs to {row[1]!r} (id {row[0]})")


def _insert_templates(connection: sqlite3.Connection, person_id: int, rows: list[tuple[Any, ...]],
                      now: str) -> list[int]:
    for model_id, dim in {(row[1], row[2]) for row in rows}:
        stored = connection.execute("SELECT dim FROM templates WHERE model_id = ? LIMIT 1", (model_id,)).fetchone()
        if stored is not None and stored[0] != dim:
            raise ValueError(f"model {model_id!r} templates in the gallery are {stored[0]}-d, not {dim}-d")
    return [connection.execute(
        "INSERT INTO templates (person_id, embedding, model_id, dim, quality, source, photo, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (person_id, *row, now)).lastrowid for row in rows]


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=BLOB_DTYPE).astype(np.float32)


# --- integrity checks (each returns problem lines) --------------------------------------------------


def _sqlite_problems(connection: sqlite3.Connection) -> list[str]:
    problems = [f"integrity_check: {message}" for (message,) in connection.execute("PRAGMA integrity_check")
                if message != "ok"]
    problems += [f"{table} row {rowid}: refers to a missing {parent} row"
                 for table, rowid, parent, _ in connection.execute("PRAGMA foreign_key_check")]
    states = connection.execute("SELECT count(*) FROM gallery_state").fetchone()[0]
    if states != 1:
        problems.append(f"gallery_state has {states} rows, expected 1")
    return problems


def _template_problems(connection: sqlite3.Connection) -> list[str]:
    problems = [f"template {tid}: embedding is {size} bytes, expected {4 * dim} for dim {dim}"
                for tid, size, dim in connection.execute(
                    "SELECT id, length(embedding), dim FROM templates"
                    " WHERE typeof(embedding) != 'blob' OR length(embedding) != 4 * dim")]
    problems += [f"model {model_id!r}: templates of {count} different dimensions"
                 for model_id, count in connection.execute(
                     "SELECT model_id, count(DISTINCT dim) FROM templates GROUP BY model_id"
                     " HAVING count(DISTINCT dim) > 1")]
    problems += [f"template {tid}: photo is not JPEG data" for (tid,) in connection.execute(
        "SELECT id FROM templates WHERE photo IS NOT NULL AND substr(photo, 1, 2) != ?", (JPEG_MAGIC,))]
    for tid, blob, quality in connection.execute("SELECT id, embedding, quality FROM templates"):
        if isinstance(blob, bytes) and len(blob) % 4 == 0 and not np.isfinite(_vector(blob)).all():
            problems.append(f"template {tid}: embedding has NaN or infinite values")
        if not _is_json_object(quality):
            problems.append(f"template {tid}: quality is not a JSON object")
    return problems


def _people_problems(connection: sqlite3.Connection) -> list[str]:
    return [f"person {pid} ({name!r}): has no templates" for pid, name in connection.execute(
        "SELECT id, name FROM people p WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.person_id = p.id)")]


def _is_json_object(text: Any) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (TypeError, ValueError):
        return False
