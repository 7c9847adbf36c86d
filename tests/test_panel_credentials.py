"""Credentials per person: the gallery's migration, one card per person and no card twice, the PIN
only as a hash, and enroll_local.py's credential sub-command and list."""
from __future__ import annotations

import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from daemon.gallery import SCHEMA_VERSION, Gallery, GalleryError, Template
from daemon.panel.credentials import Credential, checked_card, hash_pin, pin_matches
from daemon.panel.formats import Card, CredentialError
from tools import enroll_local


def _template(seed: int) -> Template:
    vector = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return Template(vector / np.linalg.norm(vector), "test-model", {}, "photo")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as gallery:
        gallery.add_person("Hiker", [_template(1)], external_id="E1")
        gallery.add_person("Other", [_template(2)], external_id="E2")
    return path


def test_a_card_is_kept_and_refused_for_a_second_person(db: Path) -> None:
    card = checked_card("H10301", 42, 31337)
    with Gallery.open(db) as gallery:
        hiker, other = (gallery.get_person(name).id for name in ("Hiker", "Other"))
        gallery.set_credential(hiker, Credential(card, None))
        with pytest.raises(GalleryError, match=r"already belongs to #\d+ 'Hiker'"):
            gallery.set_credential(other, Credential(card, None))
        assert gallery.credentials() == {hiker: Credential(Card("H10301", 42, 31337), None)}
        gallery.set_credential(hiker, Credential(None, None))
        assert gallery.credentials() == {}
        gallery.set_credential(other, Credential(card, None))  # free again
        gallery.remove_person(other)
        assert gallery.credentials() == {}  # gone with the person


def test_migration_3_keeps_a_schema_2_gallery(db: Path) -> None:
    with closing(sqlite3.connect(db)) as raw:
        raw.execute("DROP TABLE credentials")
        raw.execute("PRAGMA user_version = 2")
        raw.commit()
    with Gallery.open(db) as gallery:
        assert [p.name for p in gallery.list_people()] == ["Hiker", "Other"]
        assert gallery.credentials() == {}
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_pins_are_hashed_salted_and_checked() -> None:
    first, second = hash_pin("1234"), hash_pin("1234")
    assert first != second and "1234" not in first
    assert pin_matches("1234", first) and not pin_matches("1235", first) and not pin_matches("1234", "junk")
    for bad in ("12", "12a4", "1234567890123"):
        with pytest.raises(CredentialError, match="4 to 12 digits"):
            hash_pin(bad)


def _run(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
         stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = enroll_local.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_credential_and_list(db: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = _run(["--db", str(db), "credential", "Hiker", "--card-number", "31337", "--facility", "42",
                         "--pin"], capsys, monkeypatch, stdin="2468\n")
    assert code == 0 and "card H10301 42:31337 and a PIN" in out
    code, out, _ = _run(["--db", str(db), "list", "--json"], capsys, monkeypatch)
    listed = {p["name"]: p for p in json.loads(out)}
    assert listed["Hiker"]["card"] == {"format": "H10301", "facility": 42, "number": 31337}
    assert listed["Hiker"]["pin"] is True and listed["Other"]["card"] is None
    code, out, _ = _run(["--db", str(db), "list"], capsys, monkeypatch)
    assert "H10301 42:31337" in out
    code, out, _ = _run(["--db", str(db), "credential", "Hiker", "--no-pin"], capsys, monkeypatch)
    assert code == 0 and "a PIN" not in out and "42:31337" in out


@pytest.mark.parametrize("args, message, code", [
    (["credential", "Other", "--card-number", "31337", "--facility", "42"], "already belongs to", 1),
    (["credential", "Other", "--card-number", "70000", "--facility", "1"], "does not fit format H10301", 1),
    (["credential", "Other", "--card-number", "5", "--facility", "1", "--card-format", "H9"], "not known", 1),
    (["credential", "Other", "--card-number", "5"], "go together", 2),
    (["credential", "Other"], "give --card-number", 2),
])
def test_bad_credentials_are_refused_and_change_nothing(db: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                        message: str, code: int) -> None:
    with Gallery.open(db) as gallery:
        gallery.set_credential(gallery.get_person("Hiker").id, Credential(checked_card("H10301", 42, 31337), None))
        before = gallery.credentials()
    got, out, err = _run(["--db", str(db), *args], capsys, monkeypatch)
    assert got == code and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with Gallery.open(db) as gallery:
        assert gallery.credentials() == before
