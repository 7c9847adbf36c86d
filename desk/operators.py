"""The front desk's operators and their sessions, in the desk's own SQLite file (desk.db).

Operators are kept apart from the gallery on purpose: the gallery is copied to doors (bundles,
the fleet's sync) and read by the door service, and neither needs the desk's password hashes.

Passwords are hashed with scrypt (hashlib, no new dependency; the parameters travel with each
hash so they can be raised later). Sessions are random tokens: the cookie carries the token and
its HMAC under the desk's secret (made once, kept here), the file only the token's SHA-256, so a
copy of desk.db opens no session. A session ends when its operator logs out, after IDLE_TIMEOUT_S
without a request, or when the operator is removed.

Lockout: LOCK_AFTER failed logins in a row lock an operator for LOCK_FOR_S, kept in the file so a
restart does not reset it. A successful login clears the count.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.gallery import checked_name
from daemon.gallery.files import create_private_file, ensure_private_dir

ROLES = ("viewer", "enroller", "admin")  # each role may do everything the ones before it may
IDLE_TIMEOUT_S = 15 * 60
LOCK_AFTER = 5
LOCK_FOR_S = 15 * 60
MIN_PASSWORD_LENGTH = 10
# scrypt at n=2**14, r=8: 16 MiB and some 50 ms per hash on a small box; the OWASP minimum.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1

_SCHEMA = (
    """CREATE TABLE operators (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'enroller', 'admin')),
        password_hash TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE sessions (
        token_sha256 TEXT PRIMARY KEY,
        operator_id INTEGER NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        client TEXT NOT NULL,
        created REAL NOT NULL,
        last_seen REAL NOT NULL
    )""",
    "CREATE TABLE secret (id INTEGER PRIMARY KEY CHECK (id = 1), key BLOB NOT NULL)",
)
SCHEMA_VERSION = 1


class OperatorError(ValueError):
    """A bad operator name, role or password, or an operator that does not exist; the message says which."""


@dataclass(frozen=True)
class Operator:
    id: int
    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this operator holds role or a higher one."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Session:
    operator: Operator
    csrf: str  # the token every state-changing request must carry
    token_sha256: str


class LoginRefused(Exception):
    """Wrong name or password, or a locked operator; the message is what the login page shows."""


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except ValueError:
        return False
    return kind == "scrypt" and hmac.compare_digest(actual, expected)


def checked_password(password: str, again: str) -> str:
    if password != again:
        raise OperatorError("the two passwords differ; nothing was changed")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"the password is {len(password)} characters long: at least {MIN_PASSWORD_LENGTH} "
                            "are needed (a passphrase of a few words is easy to remember)")
    return password


@functools.cache
def _dummy_hash() -> str:
    """A hash to check an unknown name's password against: it costs the same, so timing tells no names apart."""
    return hash_password(secrets.token_hex(8))


class OperatorStore:
    """desk.db: operators, sessions and the cookie secret. One connection; safe across threads."""

    def __init__(self, path: str | os.PathLike[str], idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.idle_timeout_s = idle_timeout_s
        ensure_private_dir(self.path.parent)
        create_private_file(self.path)  # 0600 before SQLite writes to it: it holds password hashes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO secret (id, key) VALUES (1, ?)", (os.urandom(32),))
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            self._db.close()
            raise OperatorError(f"{self.path}: desk schema version {version}, this facegate reads "
                                f"{SCHEMA_VERSION}: upgrade facegate")
        self.secret: bytes = self._db.execute("SELECT key FROM secret").fetchone()[0]

    # --- operators -----------------------------------------------------------------

    def add(self, name: str, role: str, password: str) -> Operator:
        try:
            name = checked_name(name)
        except ValueError as error:
            raise OperatorError(str(error).replace("a person's name", "an operator's name")) from None
        if role not in ROLES:
            raise OperatorError(f"role {role!r} is not allowed: expected one of {', '.join(ROLES)}")
        with self._lock:
            try:
                cursor = self._db.execute("INSERT INTO operators (name, role, password_hash, created_at) VALUES "
                                          "(?, ?, ?, ?)", (name, role, hash_password(password), time.time()))
            except sqlite3.IntegrityError:
                raise OperatorError(f"an operator named {name!r} already exists") from None
        return Operator(cursor.lastrowid, name, role)

    def exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM operators WHERE name = ?", (name.strip(),)).fetchone() is not None

    def names(self) -> list[Operator]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, role FROM operators ORDER BY name").fetchall()
        return [Operator(*row) for row in rows]

    # --- logging in ----------------------------------------------------------------

    def login(self, name: str, password: str, client: str) -> tuple[Session, str]:
        """A new session and the cookie value for it; LoginRefused otherwise (the count goes up)."""
        with self._lock:
            row = self._db.execute("SELECT id, name, role, password_hash, locked_until FROM operators WHERE name = ?",
                                   (name.strip(),)).fetchone()
        if row is None:
            password_matches(password, _dummy_hash())
            raise LoginRefused("wrong name or password")
        operator_id, name, role, stored, locked_until = row
        now = time.time()
        if locked_until > now:
            raise LoginRefused(f"this account is locked after {LOCK_AFTER} wrong passwords; try again in "
                               f"{int((locked_until - now) // 60) + 1} minute(s), or ask an administrator")
        if not password_matches(password, stored):
            with self._lock:
                self._db.execute("UPDATE operators SET failures = failures + 1, locked_until = CASE WHEN "
                                 "failures + 1 >= ? THEN ? ELSE 0 END WHERE id = ?",
                                 (LOCK_AFTER, now + LOCK_FOR_S, operator_id))
            raise LoginRefused("wrong name or password")
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        digest = _sha256(token)
        with self._lock:
            self._db.execute("UPDATE operators SET failures = 0, locked_until = 0 WHERE id = ?", (operator_id,))
            self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                             (digest, operator_id, csrf, client, now, now))
        return Session(Operator(operator_id, name, role), csrf, digest), f"{token}.{self._sign(token)}"

    def locked(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT locked_until FROM operators WHERE name = ?", (name.strip(),)).fetchone()
        return row is not None and row[0] > time.time()

    def session(self, cookie: str | None) -> Session | None:
        """The live session a cookie names (its last_seen moved to now), or None: forged, unknown or idle."""
        if not cookie or cookie.count(".") != 1:
            return None
        token, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(token)):
            return None
        digest, now = _sha256(token), time.time()
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE last_seen < ?", (now - self.idle_timeout_s,))
            row = self._db.execute("SELECT o.id, o.name, o.role, s.csrf FROM sessions s JOIN operators o ON "
                                   "o.id = s.operator_id WHERE s.token_sha256 = ?", (digest,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE sessions SET last_seen = ? WHERE token_sha256 = ?", (now, digest))
        return Session(Operator(*row[:3]), row[3], digest)

    def alive(self, token_sha256: str) -> bool:
        """Whether a session is still live, without counting this as activity (a live event stream is not)."""
        with self._lock:
            row = self._db.execute("SELECT last_seen FROM sessions WHERE token_sha256 = ?", (token_sha256,)).fetchone()
        return row is not None and row[0] >= time.time() - self.idle_timeout_s

    def logout(self, session: Session) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (session.token_sha256,))

    def sign(self, value: str) -> str:
        """value and its HMAC under the desk's secret (the login form's CSRF cookie)."""
        return f"{value}.{self._sign(value)}"

    def signed(self, cookie: str | None) -> str | None:
        """The value of a sign()ed cookie, or None when it was not signed here."""
        if not cookie or cookie.count(".") != 1:
            return None
        value, signature = cookie.split(".")
        return value if hmac.compare_digest(signature, self._sign(value)) else None

    def _sign(self, value: str) -> str:
        return _b64(hmac.new(self.secret, value.encode(), hashlib.sha256).digest())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
