"""The gallery database: CRUD, transactions, crash safety, schema versions, permissions, erasure."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from daemon.gallery import (SCHEMA_VERSION, AmbiguousName, CorruptGallery, DuplicateExternalId, Gallery,
                            GalleryError, NewPerson, PersonNotFound, SchemaTooNew, Template, check_gallery_file,
                            checked_name, escaped, load_or_build)
from engines.model_card import load_card
from tests.conftest import MODELS, REPO, folder_state

CARD = load_card(MODELS / "dlib_resnet_v1.yaml")
DIM = 128


def templates_for(name: str) -> list[Template]:
    """The same 1 to 4 templates for a name every time, some with a photo big enough for overflow pages."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    count = 1 + int(rng.integers(4))
    return [Template(embedding=rng.standard_normal(DIM).astype(np.float32), model_id=CARD.id,
                     quality={"detection_score": round(float(rng.random()), 4), "inter_eye_px": 60 + i},
                     source="photo" if i % 2 else "camera",
                     photo_jpeg=b"\xff\xd8" + rng.bytes(6000) if i == 1 else None)
            for i in range(count)]


def assert_same_templates(gallery: Gallery, person_id: int, expected: list[Template]) -> None:
    stored = gallery.templates(person_id)
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected):
        np.testing.assert_array_equal(got.embedding, want.embedding)
        assert (got.model_id, got.quality, got.source, got.photo_jpeg) == (
            want.model_id, want.quality, want.source, want.photo_jpeg)


@pytest.fixture
def gallery(tmp_path):
    with Gallery.open(tmp_path / "gallery.db") as opened:
        yield opened


# --- CRUD -------------------------------------------------------------------------------------


def test_a_person_round_trips_with_their_templates(gallery):
    templates = templates_for("Alice") + templates_for("Alice, again")
    person_id = gallery.add_person("Alice", templates, external_id="E-1", note="front desk",
                                   valid_from="2026-01-01", valid_until="2026-12-31T18:00:00")
    person = gallery.get_person(person_id)
    assert (person.name, person.external_id, person.note, person.active) == ("Alice", "E-1", "front desk", True)
    assert (person.valid_from, person.valid_until) == ("2026-01-01", "2026-12-31T18:00:00")
    assert person.template_count == len(templates)
    assert gallery.get_person("Alice") == person
    assert_same_templates(gallery, person_id, templates)


def test_people_are_found_listed_updated_and_removed(gallery):
    alice = gallery.add_person("Alice Müller", templates_for("a"), external_id="E-1")
    bob = gallery.add_person("Bob", templates_for("b"))
    assert [p.name for p in gallery.list_people()] == ["Alice Müller", "Bob"]
    assert [p.id for p in gallery.find_people("MÜLLER")] == [alice]
    assert [p.id for p in gallery.find_people("E-1")] == [alice]

    gallery.rename(bob, "Robert")
    gallery.set_active(bob, False)
    gallery.set_validity(bob, "2026-05-01", None)
    robert = gallery.get_person(bob)
    assert (robert.name, robert.active, robert.valid_from, robert.valid_until) == (
        "Robert", False, "2026-05-01", None)
    assert [p.id for p in gallery.find_people(active=False)] == [bob]

    added = gallery.add_templates(bob, templates_for("b2"))
    assert [t.id for t in gallery.templates(bob)][-len(added):] == added

    gallery.remove_person(alice)
    with pytest.raises(PersonNotFound):
        gallery.get_person(alice)
    assert [p.id for p in gallery.list_people()] == [bob]


def test_a_missing_person_is_a_typed_error_for_every_operation(gallery):
    operations = [lambda: gallery.get_person(42), lambda: gallery.get_person("Nobody"),
                  lambda: gallery.rename(42, "X"), lambda: gallery.set_active(42, False),
                  lambda: gallery.set_validity(42, None, None), lambda: gallery.remove_person(42),
                  lambda: gallery.add_templates(42, templates_for("x")), lambda: gallery.templates(42)]
    for operation in operations:
        with pytest.raises(PersonNotFound):
            operation()


def test_duplicate_external_ids_and_ambiguous_names_are_refused(gallery):
    first = gallery.add_person("Sam", templates_for("s1"), external_id="E-7")
    with pytest.raises(DuplicateExternalId, match="E-7"):
        gallery.add_person("Other", templates_for("o"), external_id="E-7")
    second = gallery.add_person("Sam", templates_for("s2"))
    with pytest.raises(AmbiguousName, match=f"{first}, {second}"):
        gallery.get_person("Sam")
    assert len(gallery.list_people()) == 2


@pytest.mark.parametrize("bad, message", [
    (dict(templates=[]), "at least one template"),
    (dict(name="  "), "non-empty"),
    (dict(name="Bob\x1b[31m"), r"ESC \(U\+001B\) at character 4"),
    (dict(name="Bob\x00"), "NUL"),
    (dict(name="Bob\nINFO facegate.daemon: GRANT Mallory"), "LINE FEED"),
    (dict(name="\u202eecilA"), "RIGHT-TO-LEFT OVERRIDE"),
    (dict(name="x" * 201), "201 characters long: at most 200"),
    (dict(templates=[Template(np.full(DIM, np.nan), CARD.id)]), "NaN"),
    (dict(templates=[Template(np.zeros((2, 64)), CARD.id)]), "1-D"),
    (dict(templates=[Template(np.zeros(DIM), CARD.id, source="scanner")]), "source"),
    (dict(templates=[Template(np.zeros(DIM), CARD.id, photo_jpeg=b"PNG")]), "JPEG"),
    (dict(templates=[Template(np.zeros(DIM), CARD.id, quality={"sharpness": float("inf")})]), "quality"),
    (dict(templates=[Template(np.zeros(DIM), CARD.id), Template(np.zeros(64), CARD.id)]), "dimensions"),
    (dict(valid_from="2026-02-30"), "ISO 8601"),
    (dict(valid_from="2026-05-01", valid_until="2026-04-01"), "before"),
])
def test_bad_arguments_are_refused_before_anything_is_written(gallery, bad, message):
    arguments = dict(name="Alice", templates=templates_for("a")) | bad
    generation = gallery.generation()
    with pytest.raises(ValueError, match=message):
        gallery.add_person(**arguments)
    assert gallery.list_people() == [] and gallery.generation() == generation


def test_names_that_people_have_are_accepted():
    for name in ("Zoë Ångström", "فرزانه\u200cی", "क्\u200dष", "O'Brien-Smith", "x" * 200):
        assert checked_name(name) == escaped(name) == name


def test_a_printed_name_cannot_move_the_cursor_recolour_the_terminal_or_fake_a_log_line():
    assert escaped("Bob\x1b[2J\x00\nINFO GRANT \u202eecilA\\x1b") == "Bob\\x1b[2J\\x00\\nINFO GRANT \\u202eecilA\\\\x1b"


def test_several_people_are_enrolled_in_one_transaction_or_not_at_all(gallery):
    def person(name: str, external_id: str | None = None) -> NewPerson:
        return NewPerson(name, external_id, None, True, None, None, templates_for(name))

    gallery.add_person("Alice", templates_for("a"), external_id="E-1")
    generation = gallery.generation()
    with pytest.raises(DuplicateExternalId):
        gallery.add_people([person("Bob"), person("Carol", "E-1")])
    with pytest.raises(ValueError, match="person 1 .*NUL"):
        gallery.add_people([person("Bob"), person("Dan\x00")])
    assert [p.name for p in gallery.list_people()] == ["Alice"] and gallery.generation() == generation
    ids = gallery.add_people([person("Bob"), person("Carol", "E-2")])
    assert [gallery.get_person(i).name for i in ids] == ["Bob", "Carol"] and gallery.generation() == generation + 1


# --- transactions and generations ------------------------------------------------------------------


def test_a_person_whose_templates_fail_is_not_enrolled_at_all(gallery):
    gallery.add_person("Alice", templates_for("a"))
    # Same model, other dimension: only caught inside the transaction, after the person row is written.
    wrong_dim = Template(np.zeros(64, np.float32), CARD.id)
    with pytest.raises(ValueError, match="128-d, not 64-d"):
        gallery.add_person("Bob", [wrong_dim])
    assert [p.name for p in gallery.list_people()] == ["Alice"]
    assert gallery.integrity_report() == []


def test_every_write_bumps_the_generation_and_other_connections_see_it(gallery):
    with Gallery.open(gallery.path) as other:
        version = other.data_version()
        seen = [gallery.generation()]
        person = gallery.add_person("Alice", templates_for("a"))
        seen.append(gallery.generation())
        for write in (lambda: gallery.rename(person, "Alicia"), lambda: gallery.set_active(person, False),
                      lambda: gallery.set_validity(person, None, "2027-01-01"),
                      lambda: gallery.add_templates(person, templates_for("a2")),
                      lambda: gallery.remove_person(person)):
            write()
            seen.append(gallery.generation())
        assert seen == sorted(set(seen)), "every write must move the generation forward"
        assert other.data_version() != version and other.generation() == seen[-1]


def test_a_failed_write_does_not_bump_the_generation(gallery):
    gallery.add_person("Alice", templates_for("a"), external_id="E-1")
    generation = gallery.generation()
    with pytest.raises(DuplicateExternalId):
        gallery.add_person("Bob", templates_for("b"), external_id="E-1")
    with pytest.raises(PersonNotFound):
        gallery.rename(99, "X")
    assert gallery.generation() == generation


# --- crash safety ----------------------------------------------------------------------------------------


def writer_main(path: str, round_number: int) -> None:
    """Child process: enrol people (and remove every fifth) until killed."""
    gallery = Gallery.open(path)
    print("ready", flush=True)
    for i in range(10**9):
        gallery.add_person(f"r{round_number}-p{i}", templates_for(f"r{round_number}-p{i}"))
        if i % 5 == 4:
            gallery.remove_person(gallery.get_person(f"r{round_number}-p{i - 2}").id)


def test_people_are_all_or_nothing_when_the_writer_is_killed_at_random_points(tmp_path):
    path = tmp_path / "gallery.db"
    chance = random.Random(20260509)
    for round_number in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.test_gallery_store import writer_main; "
             "writer_main(sys.argv[1], int(sys.argv[2]))", str(path), str(round_number)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        if round_number:  # round 0 may die while creating the schema; later rounds while enrolling
            assert child.stdout.readline() == "ready\n"
        time.sleep(chance.uniform(0.02, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Gallery.open(path) as gallery:
            assert gallery.integrity_report() == []
            for person in gallery.list_people():
                assert_same_templates(gallery, person.id, templates_for(person.name))
    with Gallery.open(path) as gallery:
        assert len(gallery.list_people()) > 8, "the writer should have enrolled people between kills"


# --- schema versions and damaged files ------------------------------------------------------------------


def test_a_new_gallery_is_at_the_current_schema_version(gallery):
    with sqlite3.connect(gallery.path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_gallery_from_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as gallery:
        gallery.add_person("Alice", templates_for("a"))
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 1} is newer"):
        Gallery.open(path)
    assert path.read_bytes() == before


def test_a_garbage_file_is_a_corrupt_gallery_named_in_the_error(tmp_path):
    path = tmp_path / "gallery.db"
    garbage = random.Random(1).randbytes(8192)
    path.write_bytes(garbage)
    os.chmod(path, 0o644)
    before = folder_state(tmp_path)
    for opening in (Gallery.open, check_gallery_file):
        with pytest.raises(CorruptGallery, match=f"{path}: not a readable facegate gallery .* move it aside"):
            opening(path)
        assert folder_state(tmp_path) == before  # bytes, mode and no -wal or -shm left


def test_another_sqlite_database_is_not_taken_for_a_gallery_nor_written_to(tmp_path):
    path = tmp_path / "events.db"
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT)")
        raw.execute("PRAGMA user_version = 1")
    before = folder_state(tmp_path)
    for opening in (Gallery.open, check_gallery_file):
        with pytest.raises(CorruptGallery, match="a SQLite database but not a facegate gallery .*tables: events"):
            opening(path)
        assert folder_state(tmp_path) == before


def test_checking_a_sound_gallery_changes_nothing_and_a_missing_one_passes(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as gallery:
        gallery.add_person("Alice", templates_for("a"))
    before = folder_state(tmp_path)
    check_gallery_file(path)
    assert folder_state(tmp_path) == before
    check_gallery_file(tmp_path / "new" / "gallery.db")
    assert folder_state(tmp_path) == before


def test_a_folder_given_as_the_gallery_is_named_and_left_alone(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    for opening in (Gallery.open, check_gallery_file):
        with pytest.raises(GalleryError, match=f"{folder} is a folder, not the gallery file: name the file, e.g. "
                                               f"{folder / 'gallery.db'}"):
            opening(folder)
    assert mode(folder) == 0o755 and list(folder.iterdir()) == []


def test_a_file_in_place_of_the_folder_is_named(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(GalleryError, match=f"{tmp_path / 'state'} is a file, not a folder"):
        Gallery.open(tmp_path / "state" / "gallery.db")


def test_the_integrity_report_finds_damage_done_behind_the_gallery_s_back(gallery):
    person = gallery.add_person("Alice", templates_for("a"))
    gallery.add_person("Bob", templates_for("b"))
    with sqlite3.connect(gallery.path, isolation_level=None) as raw:
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("UPDATE templates SET embedding = x'00', quality = 'not json' WHERE person_id = ?", (person,))
        raw.execute("INSERT INTO people (name, created_at, updated_at) VALUES ('Nobody', '', '')")
        raw.execute("INSERT INTO templates (person_id, embedding, model_id, dim, source, created_at)"
                    " VALUES (999, zeroblob(512), 'm', 128, 'camera', '')")
    problems = "\n".join(gallery.integrity_report())
    assert "embedding is 1 bytes, expected 512" in problems
    assert "quality is not a JSON object" in problems
    assert "'Nobody'): has no templates" in problems
    assert "refers to a missing people row" in problems


def test_database_errors_after_opening_name_the_file(gallery):
    gallery.close()
    with pytest.raises(GalleryError, match=str(gallery.path)):
        gallery.list_people()


# --- files on disk -------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)



def test_database_files_are_owner_only_whatever_the_umask(tmp_path):
    old_umask = os.umask(0o002)
    try:
        path = tmp_path / "new" / "state" / "gallery.db"
        with Gallery.open(path) as gallery:
            gallery.add_person("Alice", templates_for("a"))
            files = [path, path.with_name("gallery.db-wal"), path.with_name("gallery.db-shm")]
            assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
            assert mode(path.parent) == 0o700
    finally:
        os.umask(old_umask)


def test_a_database_readable_by_others_is_named_when_opened_and_made_owner_only_by_a_write(tmp_path, caplog):
    path = tmp_path / "gallery.db"
    Gallery.open(path).close()
    os.chmod(path, 0o644)
    with Gallery.open(path) as gallery:
        gallery.list_people()
        with pytest.raises(ValueError):
            gallery.add_person("Bob\x1b", templates_for("b"))  # refused: no write, no change of mode
        assert mode(path) == 0o644
        assert f"{path} is readable by others (mode 644)" in caplog.text
        gallery.add_person("Alice", templates_for("a"))
        assert mode(path) == 0o600


def test_a_removed_person_leaves_no_trace_of_their_embedding_or_photo(tmp_path):
    path = tmp_path / "gallery.db"
    rng = np.random.default_rng(7)
    embedding = rng.standard_normal(DIM).astype("<f4")
    photo = b"\xff\xd8" + rng.bytes(30000)
    with Gallery.open(path) as gallery, Gallery.open(path) as daemon_connection:
        alice = gallery.add_person("Alice", [Template(embedding, CARD.id, source="photo", photo_jpeg=photo),
                                             Template(embedding + 1, CARD.id)])
        gallery.add_person("Bob", templates_for("b"))
        load_or_build(daemon_connection, CARD)  # the saved index holds the vector too
        needles = [embedding.tobytes(), photo[1000:1064]]

        def on_disk() -> bytes:
            return b"".join(file.read_bytes() for file in tmp_path.rglob("*") if file.is_file())

        assert all(needle in on_disk() for needle in needles), "the test must see the bytes before removal"
        gallery.remove_person(alice)
        assert not any(needle in on_disk() for needle in needles)
        assert [p.name for p in daemon_connection.list_people()] == ["Bob"]


# --- templates of several models ---------------------------------------------------------------


def test_templates_of_several_models_are_summed_up_per_model_and_people_lacking_one_are_named(gallery):
    other = "other-model"
    both = gallery.add_person("Both", [Template(np.ones(DIM), CARD.id, photo_jpeg=b"\xff\xd8photo"),
                                       Template(np.ones(64), other), Template(np.zeros(64), other)])
    legacy = gallery.add_person("Legacy", [Template(np.ones(DIM), CARD.id), Template(np.zeros(DIM), CARD.id,
                                                                                      photo_jpeg=b"\xff\xd8")])
    newcomer = gallery.add_person("Newcomer", [Template(np.ones(64), other)])
    assert [(m.model_id, m.dim, m.templates, m.people) for m in gallery.models()] == [
        (CARD.id, DIM, 3, 2), (other, 64, 3, 2)]
    assert [p.id for p in gallery.people_lacking(other)] == [legacy]
    assert [p.id for p in gallery.people_lacking(CARD.id)] == [newcomer]
    assert [p.id for p in gallery.people_lacking("not-installed")] == [both, legacy, newcomer]
    assert gallery.kept_photos() == {both: 1, legacy: 1}
    assert len(gallery.snapshot(other).template_ids) == 3 and gallery.snapshot(other).vectors.shape == (3, 64)
