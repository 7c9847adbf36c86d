"""Enrolment (daemon/enrolment.py) and the front-desk tool (tools/enroll_local.py) on real faces.

The faces ship with the test dependencies: skimage's astronaut (one frontal face; mirrored
and brightened copies are more photos of her), two astronauts side by side, and the
cameraman (another person, whose small three-quarter face fails the enrolment gate: tests
that need him enrolled relax the limits). Behaviour that belongs to the process (exit
status, messages, file modes, being killed) is tested through subprocesses.

Every face is stored as a template of each embedder card in engines/models (CARDS of them);
the counts below hold for any number of installed cards. tests/test_templates_per_model.py
tests the templates per model themselves, on a models folder of its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from daemon.enrolment import (ATTACK_HINT, CameraError, DuplicateFace, Enroller, EnrolmentError, NotTheSamePerson,
                              PersonDetails, Refusal, Shot, add_shots, capture, enrol, find_person, judge_files)
from daemon.gallery import SCHEMA_VERSION, AmbiguousName, Gallery, GalleryIndex, PersonNotFound
from daemon.sources import FileSource
from engines.embedder import distance
from engines.model_card import cards_of, find_card
from engines.quality import QualityLimits
from tests.conftest import MODELS, REPO, folder_state

TOOL = REPO / "tools" / "enroll_local.py"
CARDS = len(cards_of(MODELS, "embedder"))  # templates per accepted face
CONFIGURED = find_card(MODELS, "embedder").id  # the model judged and guarded with; its templates keep the photos
CAMERAMAN_LIMITS = QualityLimits(min_eye_distance=15, max_yaw=0.7)  # his face is small and turned


# --- fixtures ---------------------------------------------------------------------------------------


def brightened(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * 1.25 + 10, 0, 255).astype(np.uint8)


def turned(rgb: np.ndarray, degrees: float, scale: float = 1.0) -> np.ndarray:
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, scale)
    return cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    images = {
        "astronaut.jpg": astronaut,
        "mirrored.jpg": astronaut[:, ::-1],
        "brightened.png": brightened(astronaut),
        "two_faces.jpg": np.concatenate([astronaut, astronaut[:, ::-1]], axis=1),
        "cameraman.png": data.camera(),
        "blurred.jpg": cv2.GaussianBlur(astronaut, (0, 0), 6),
        "downscaled.jpg": cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA),
        "no_face.jpg": data.coffee(),
    }
    paths = {Path(name).stem: save(folder / name, image) for name, image in images.items()}
    paths["not_an_image"] = folder / "notes.jpg"
    paths["not_an_image"].write_text("minutes of the meeting, not a photo")
    paths["missing"] = folder / "missing.jpg"
    return paths


@pytest.fixture(scope="module")
def enroller() -> Enroller:
    with Enroller.from_models(MODELS) as opened:
        yield opened


@pytest.fixture(scope="module")
def lenient(enroller) -> Enroller:
    """The same models with limits the cameraman passes; closed with enroller."""
    return Enroller(enroller.pipeline, CAMERAMAN_LIMITS, enroller.others)


@pytest.fixture(scope="module")
def crew_db(tmp_path_factory, enroller, lenient, photos) -> Path:
    """A gallery with the astronaut (two photos kept, details set) and the cameraman (disabled)."""
    path = tmp_path_factory.mktemp("crew") / "gallery.db"
    with Gallery.open(path) as gallery:
        shots, refusals = judge_files(enroller, [photos["astronaut"], photos["mirrored"]], keep_photo=True)
        assert not refusals
        enrol(gallery, enroller.card, "Astronaut", shots,
              PersonDetails("E1", "crew", "2026-01-01", "2026-12-31T18:00:00"))
        cameraman = lenient.judge_file(photos["cameraman"], keep_photo=True)
        gallery.set_active(enrol(gallery, enroller.card, "Cameraman", [cameraman]), False)
    assert not path.with_name(path.name + "-wal").exists(), "closing should have checkpointed the log"
    return path


@pytest.fixture
def db(tmp_path, crew_db) -> Path:
    """A private copy of the crew gallery."""
    return Path(shutil.copy2(crew_db, tmp_path / "gallery.db"))


def run(*args: object, db: Path | None = None, prefix: list[str] = [], **options) -> subprocess.CompletedProcess:
    """The tool in a child process; prefix runs it under another command (read_only_for_the_tool)."""
    command = prefix + [sys.executable, str(TOOL), *map(str, args)] + (["--db", str(db)] if db else [])
    options.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, **options)


def dump(db: Path) -> list[str]:
    """Every row and the schema, as SQL: equal dumps mean an unchanged gallery (generation included)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return list(connection.iterdump())


def people(db: Path) -> dict[str, dict]:
    with Gallery.open(db) as gallery:
        return {p.name: {"person": p, "templates": gallery.templates(p.id)} for p in gallery.list_people()}


# --- the quality gate --------------------------------------------------------------------------------


def test_one_clear_frontal_face_passes_with_its_quality_figures(enroller, photos):
    shot = enroller.judge_file(photos["astronaut"], keep_photo=True)
    assert isinstance(shot, Shot)
    template = shot.template
    assert template.model_id == enroller.card.id and template.source == "photo"
    assert template.embedding.shape == (enroller.card.embedding_dim,)
    assert template.quality["eye_distance"] >= QualityLimits().min_eye_distance
    assert abs(template.quality["yaw"]) < 0.1 and template.quality["sharpness"] > 100
    assert 0 < shot.rank <= 1
    kept = cv2.imdecode(np.frombuffer(template.photo_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert len(enroller.pipeline.detector.detect(cv2.cvtColor(kept, cv2.COLOR_BGR2RGB))) == 1


@pytest.mark.parametrize("photo, expected", [
    ("blurred", ["too blurred", "sharper photo"]),
    ("downscaled", ["too small", "move closer"]),
    ("two_faces", ["2 faces", "--largest"]),
    ("cameraman", ["too small", "turned", "look straight"]),
    ("no_face", ["no face found"]),
    ("not_an_image", ["not a readable image"]),
    ("missing", ["no such file"]),
])
def test_a_refused_photo_says_why_and_what_to_do(enroller, photos, photo, expected):
    verdict = enroller.judge_file(photos[photo])
    assert isinstance(verdict, Refusal)
    assert verdict.label == str(photos[photo])
    for fragment in expected:
        assert fragment in " ".join(verdict.reasons)


def test_largest_takes_one_face_of_a_group_photo(enroller, photos):
    shot = enroller.judge_file(photos["two_faces"], largest=True)
    assert isinstance(shot, Shot) and shot.template.quality["faces"] == 2


def test_copies_of_the_astronaut_match_her_and_the_cameraman_does_not(enroller, lenient, photos):
    """What the guard tests below rely on, measured rather than assumed."""
    embedding = {name: lenient.judge_file(photos[name]).template.embedding
                 for name in ("astronaut", "mirrored", "brightened", "cameraman")}
    threshold, metric = enroller.card.threshold, enroller.card.metric
    assert distance(embedding["astronaut"], embedding["mirrored"], metric) < threshold
    assert distance(embedding["astronaut"], embedding["brightened"], metric) < threshold
    assert distance(embedding["astronaut"], embedding["cameraman"], metric) > threshold


# --- guards and lookups (in process) --------------------------------------------------------------------


def test_a_known_face_is_refused_naming_the_match_unless_forced(db, enroller, photos):
    shots, _ = judge_files(enroller, [photos["brightened"]])
    with Gallery.open(db) as gallery:
        with pytest.raises(DuplicateFace, match=r"looks like 'Astronaut' \(id 1\).*distance 0\.\d+ is below"):
            enrol(gallery, enroller.card, "Twin", shots)
        twin = enrol(gallery, enroller.card, "Twin", shots, force=True)
        assert gallery.get_person(twin).template_count == CARDS


def test_photos_added_to_a_person_must_look_like_them_unless_forced(db, enroller, lenient, photos):
    with Gallery.open(db) as gallery:
        astronaut = gallery.get_person("Astronaut")
        with pytest.raises(NotTheSamePerson, match="cameraman.png"):
            add_shots(gallery, enroller.card, astronaut, [lenient.judge_file(photos["cameraman"])])
        assert len(add_shots(gallery, enroller.card, astronaut, [enroller.judge_file(photos["brightened"])])) == CARDS
        add_shots(gallery, enroller.card, astronaut, [lenient.judge_file(photos["cameraman"])], force=True)
        assert gallery.get_person(astronaut.id).template_count == 4 * CARDS


def test_a_person_is_found_by_id_external_id_or_name_and_ambiguity_is_explained(db, enroller, photos):
    with Gallery.open(db) as gallery:
        assert find_person(gallery, "E1").name == "Astronaut"
        assert find_person(gallery, "2").name == "Cameraman"
        assert find_person(gallery, "#1").name == "Astronaut"
        enrol(gallery, enroller.card, "Cameraman", [enroller.judge_file(photos["astronaut"])], force=True)
        with pytest.raises(AmbiguousName, match="#2 'Cameraman'; #3 'Cameraman'"):
            find_person(gallery, "Cameraman")
        with pytest.raises(PersonNotFound):
            find_person(gallery, "Nobody")


# --- live capture ---------------------------------------------------------------------------------------


@pytest.fixture
def frames(tmp_path) -> Path:
    """Stand-in camera frames: the astronaut stepping in (blurred, far), then good frames, one with a bystander."""
    astronaut = data.astronaut()
    sequence = [cv2.GaussianBlur(astronaut, (0, 0), 6), cv2.resize(astronaut, (200, 200)), astronaut,
                np.concatenate([astronaut, astronaut[:, ::-1]], axis=1), brightened(astronaut),
                turned(astronaut, 6), turned(astronaut, 0, 0.85)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, frame in enumerate(sequence):
        save(folder / f"{number:02d}.png", frame)
    return folder


class FakeLiveness:
    """The liveness checker's interface with one score for every face, and the real cards' threshold."""

    def __init__(self, score: float, threshold: float) -> None:
        self.value, self.threshold = score, threshold
        self.scored = 0

    def score(self, rgb, faces):
        self.scored += len(faces)
        return np.full(len(faces), self.value, np.float32)

    def close(self) -> None:
        pass


def with_liveness(enroller: Enroller, score: float) -> Enroller:
    """The same models (closed with enroller) with fake live scores against the cards' threshold."""
    return Enroller(enroller.pipeline, enroller.limits, enroller.others,
                    FakeLiveness(score, enroller.liveness.threshold))


@pytest.fixture
def trusting(enroller) -> Enroller:
    """Every face judged live: the guidance tests below are about the quality gate, not the liveness nets."""
    return with_liveness(enroller, 1.0)


def test_capture_guides_the_person_and_keeps_the_best_frames(trusting, frames):
    seen: list[Shot | Refusal] = []
    with FileSource(frames, pace="fast") as source:
        best = capture(source, trusting, 2, on_frame=lambda verdict, good: seen.append(verdict))
    hints = [v.hint for v in seen if isinstance(v, Refusal)]
    assert hints == ["hold still", "move closer", "only the person enrolling in view, please"]
    accepted = sorted((v.rank for v in seen if isinstance(v, Shot)), reverse=True)
    assert len(accepted) == 4 and [shot.rank for shot in best] == accepted[:2]
    assert all(shot.template.source == "camera" for shot in best)


def test_capture_with_too_few_good_frames_or_no_picture_is_a_clear_error(trusting, frames, tmp_path):
    with FileSource(frames, pace="fast") as source, pytest.raises(CameraError, match="only 4 good frame"):
        capture(source, trusting, 5)
    (tmp_path / "dark").mkdir()
    with FileSource(tmp_path / "dark", pace="fast") as source, pytest.raises(CameraError, match="no picture within"):
        capture(source, trusting, 1, first_frame_s=0.1)


def test_camera_enrolment_refuses_a_face_judged_an_attack_and_keeps_nothing_of_it(enroller, frames):
    assert enroller.liveness is not None, "the models folder's liveness cards judge camera frames"
    threshold = enroller.liveness.threshold
    spoof = with_liveness(enroller, 0.0)
    seen: list[Shot | Refusal] = []
    with FileSource(frames, pace="fast") as source, \
            pytest.raises(CameraError, match=r"only 0 good frame.*most frames: a photo or a screen is not enrolled"):
        capture(source, spoof, 1, on_frame=lambda verdict, good: seen.append(verdict))
    assert not any(isinstance(v, Shot) for v in seen), "a frame judged an attack is not kept"
    hints = [v.hint for v in seen]
    # The quality gate speaks first; the four frames that pass it are each refused as an attack.
    assert hints == ["hold still", "move closer", ATTACK_HINT, "only the person enrolling in view, please"] + \
        [ATTACK_HINT] * 3
    assert spoof.liveness.scored == 4, "liveness is judged only for faces that passed the gate"
    [reason] = seen[2].reasons
    assert reason.startswith(f"judged a presentation attack (live score 0.00, below the liveness threshold "
                             f"{threshold:.2f})") and "stand in front of it themselves" in reason


def test_photo_enrolment_skips_the_liveness_check(enroller, photos, tmp_path):
    """An ID photo is a photo: enrolment from files is never judged by the liveness nets."""
    spoof = with_liveness(enroller, 0.0)
    shots, refusals = judge_files(spoof, [photos["astronaut"], photos["mirrored"]])
    assert len(shots) == 2 and not refusals and spoof.liveness.scored == 0
    with Gallery.open(tmp_path / "gallery.db") as gallery:
        assert enrol(gallery, spoof.card, "Astronaut", shots)


def test_camera_enrolment_without_liveness_models_is_refused(enroller, frames):
    blind = Enroller(enroller.pipeline, enroller.limits, enroller.others)  # no liveness checker
    with FileSource(frames, pace="fast") as source, pytest.raises(EnrolmentError, match="needs the liveness models"):
        capture(source, blind, 1)


def test_the_help_says_photo_files_skip_the_liveness_check():
    top = run("--help")
    assert top.returncode == 0 and "an ID photo is a photo" in " ".join(top.stdout.split())
    add = run("add", "--help")
    assert add.returncode == 0
    text = " ".join(add.stdout.split())
    assert "no liveness check: an ID photo is a photo" in text and "judged a presentation attack" in text


def test_camera_enrolment_from_the_command_line_prints_guidance(tmp_path, frames):
    db = tmp_path / "gallery.db"
    result = run("add", "Astronaut", "--camera", frames, "--shots", "2", db=db)
    assert result.returncode == 0, result.stderr
    assert "hold still" in result.stderr and "move closer" in result.stderr
    assert [t.source for t in people(db)["Astronaut"]["templates"]] == ["camera", "camera"] * CARDS


# --- the command line -------------------------------------------------------------------------------------


def test_people_are_added_listed_shown_changed_and_removed_from_the_command_line(tmp_path, photos):
    db = tmp_path / "gallery.db"
    added = run("add", "Astronaut", "--photo", photos["astronaut"], photos["mirrored"], "--external-id", "E1",
                "--note", "crew", "--valid-from", "2026-01-01", "--keep-photo", db=db)
    assert added.returncode == 0, added.stderr
    assert "enrolled 'Astronaut' as #1 with 2 template(s)" in added.stdout

    listed = json.loads(run("list", "--json", db=db).stdout)
    assert [(p["name"], p["external_id"], p["note"], p["valid_from"], p["template_count"]) for p in listed] == [
        ("Astronaut", "E1", "crew", "2026-01-01", 2 * CARDS)]
    shown = json.loads(run("show", "E1", "--json", db=db).stdout)
    configured = [t for t in shown["templates"] if t["model_id"] == CONFIGURED]
    assert [t["quality"]["label"] for t in configured] == [str(photos["astronaut"]), str(photos["mirrored"])]
    assert all(t["photo_bytes"] > 0 and t["quality"]["eye_distance"] > 30 for t in configured)
    assert "sharpness" in run("show", "Astronaut", db=db).stdout

    for command in (["rename", "E1", "Astronaut Two"], ["disable", "#1"],
                    ["set-validity", "E1", "--until", "2027-06-30"], ["add-template", "E1", "--photo", photos["brightened"]]):
        result = run(*command, db=db)
        assert result.returncode == 0, (command, result.stderr)
    person = people(db)["Astronaut Two"]["person"]
    assert (person.active, person.valid_from, person.valid_until, person.template_count) == (
        False, "2026-01-01", "2027-06-30", 3 * CARDS)
    assert run("enable", "Astronaut Two", db=db).returncode == 0
    assert run("set-validity", "1", "--from", "none", db=db).returncode == 0
    person = people(db)["Astronaut Two"]["person"]
    assert (person.active, person.valid_from, person.valid_until) == (True, None, "2027-06-30")

    rebuilt = run("rebuild-index", db=db)
    assert rebuilt.returncode == 0 and "indexed 3 templates of 1 people" in rebuilt.stdout
    removed = run("remove", "E1", "--yes", db=db)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(run("list", "--json", db=db).stdout) == []
    assert run("check", db=db).returncode == 0


BAD_INPUT = [
    (["add", "Newcomer", "--photo", "{brightened}", "{not_an_image}"], 1, "not a readable image"),
    (["add", "Newcomer", "--photo", "{missing}"], 1, "no such file"),
    (["add", "Newcomer", "--photo", "{no_face}"], 1, "no face found"),
    (["add", "Newcomer", "--photo", "{two_faces}"], 1, "2 faces found"),
    (["add", "Newcomer", "--photo", "{downscaled}"], 1, "face too small"),
    (["add", "Newcomer", "--photo", "{blurred}"], 1, "face too blurred"),
    (["add", "Twin", "--photo", "{brightened}"], 1, "looks like 'Astronaut'"),
    (["add", "Astronaut", "--photo", "{mirrored}"], 1, "already enrolled"),
    (["add", "Newcomer", "--photo", "{astronaut}", "--force", "--valid-from", "2027-01-01",
      "--valid-until", "2026-01-01"], 1, "before valid_from"),
    (["add", "Newcomer", "--camera", "/dev/video99"], 1, "does not exist"),
    (["add-template", "Astronaut", "--photo", "{mirrored}", "{blurred}"], 1, "face too blurred"),
    (["remove", "Nobody", "--yes"], 1, "no person"),
    (["remove", "Astronaut"], 2, "--yes"),
    (["rename", "Astronaut", " "], 1, "non-empty"),
    (["rename", "Astronaut", "Mallory\x1b[8m"], 1, "the name 'Mallory\\x1b[8m' holds ESC (U+001B) at character 8"),
    (["add", "Eve\nINFO facegate.daemon: GRANT Alice", "--photo", "{astronaut}"], 1, "holds LINE FEED (U+000A)"),
    (["add", "A" * 201, "--photo", "{astronaut}"], 1, "is 201 characters long: at most 200 are allowed"),
    (["set-validity", "Astronaut"], 2, "--from"),
    (["set-validity", "Astronaut", "--until", "next week"], 2, "not a date"),
    (["add", "Newcomer", "--photo", "{astronaut}", "--shots", "2"], 2, "--camera"),
    (["import", "{not_an_image}"], 1, "not a facegate bundle"),
]


@pytest.mark.parametrize("args, status, message", BAD_INPUT, ids=[" ".join(case[0][:2]) + f" {i}"
                                                                   for i, case in enumerate(BAD_INPUT)])
def test_bad_input_is_refused_with_a_message_and_changes_nothing(db, photos, args, status, message):
    os.chmod(db, 0o644)  # a mode the tool would make owner-only: only a write that succeeds may
    before = dump(db), folder_state(db.parent)
    result = run(*[arg.format(**photos) for arg in args], db=db)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert (dump(db), folder_state(db.parent)) == before



def test_a_name_that_cannot_be_shown_as_it_is_is_refused_before_the_models_load(tmp_path, photos):
    db = tmp_path / "gallery.db"
    result = run("add", "Bob\x07", "--photo", photos["astronaut"], db=db)  # argv cannot carry a NUL: bundles can
    assert result.returncode == 1
    assert result.stderr == ("enroll_local add: the name 'Bob\\x07' holds BEL (U+0007) at character 4: a name may "
                             "not hold control or invisible formatting characters\n")
    assert list(tmp_path.iterdir()) == []


def test_names_stored_before_the_rule_are_printed_escaped(db):
    with closing(sqlite3.connect(db)) as raw:  # written behind the gallery's back, as by an older facegate
        raw.execute("UPDATE people SET name = ?, note = ? WHERE name = 'Cameraman'",
                    ("Cam\x1b[2J\u202eeman", "line one\nline two"))
        raw.commit()
    listing, shown = run("list", db=db), run("show", "#2", db=db)
    for result in (listing, shown):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
        assert "Cam\\x1b[2J\\u202eeman" in result.stdout
    assert "line one\\nline two" in shown.stdout


def test_a_bundle_holding_a_name_with_a_control_character_is_refused_whole(tmp_path, db, bundle):
    def rename(manifest: dict) -> None:
        manifest["people"][1]["name"] = "Camera\x00\x1b]0;pwned\x07man"

    altered = rewrite_bundle(bundle, tmp_path / "altered.fgb", rename)
    fresh = tmp_path / "fresh.db"
    Gallery.open(fresh).close()
    before = dump(fresh)
    result = run("import", altered, db=fresh)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "people[1].name = 'Camera\\x00\\x1b]0;pwned\\x07man' is not allowed: expected a person's name" in result.stderr
    assert "holds NUL (U+0000) at character 7" in result.stderr
    assert dump(fresh) == before


def read_only_for_the_tool(folder: Path) -> list[str]:
    """A command prefix under which folder is read-only for the tool, whoever runs the tests.

    Root writes into a folder of mode 0555, so as root the tool runs in a mount namespace of its own
    where the folder is a read-only bind mount: read-only for root too, and for nobody else."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("root without mount namespaces (unshare -m): root may write into any folder, so none can be "
                    "made read-only for the tool here")
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"',
            str(folder)]


def test_a_db_that_is_a_folder_in_a_missing_folder_or_in_a_read_only_folder_is_named_as_such(tmp_path, db, photos):
    os.chmod(tmp_path, 0o755)
    cases = []
    for command in (["list"], ["add", "Newcomer", "--photo", photos["cameraman"]]):
        cases += [(command, tmp_path, [], f"{tmp_path} is a folder, not the gallery file: name the file, e.g. "
                                         f"{tmp_path / 'gallery.db'}")]
    missing = tmp_path / "missing" / "gallery.db"
    cases.append((["list"], missing, [], f"no gallery at {missing} (the folder {missing.parent} does not exist)"))
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy2(db, locked / "gallery.db")
    prefix = read_only_for_the_tool(locked)
    read_only = f"the folder {locked} is read-only for user "
    cases += [(["list"], locked / "gallery.db", prefix, read_only),
              (["add", "Newcomer", "--photo", photos["cameraman"]], locked / "new.db", prefix, read_only)]
    before = folder_state(tmp_path)
    for command, path, under, message in cases:
        result = run(*command, db=path, prefix=under)
        assert result.returncode == 1, (command, path, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, (command, result.stderr)
        assert folder_state(tmp_path) == before, (command, path)


def test_a_refused_command_on_a_new_path_creates_no_gallery(tmp_path, photos):
    db = tmp_path / "gallery.db"
    assert run("add", "Newcomer", "--photo", photos["blurred"], db=db).returncode == 1
    assert run("list", db=db).returncode == 1
    assert not db.exists()


def test_remove_asks_on_a_terminal_and_only_yes_removes(db):
    before = dump(db)
    for answer, status in (("n", 1), ("", 1), ("y", 0)):
        leader, follower = pty.openpty()
        try:
            os.write(leader, f"{answer}\n".encode())
            result = run("remove", "Cameraman", db=db, stdin=follower)
        finally:
            os.close(leader)
            os.close(follower)
        assert result.returncode == status, result.stderr
        assert f"erase their {CARDS} template(s) and photos for good? [y/N]" in result.stdout
        assert (dump(db) == before) == (answer != "y")
    assert list(people(db)) == ["Astronaut"]


def test_the_gallery_and_bundles_are_owner_only_whatever_the_umask(tmp_path, photos, db):
    fresh = tmp_path / "new" / "gallery.db"
    assert run("add", "Astronaut", "--photo", photos["astronaut"], db=fresh, umask=0).returncode == 0
    bundle = tmp_path / "crew.fgb"
    assert run("export", bundle, db=db, umask=0).returncode == 0
    for path in (fresh, bundle):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_db_and_models_go_before_or_after_the_command(db):
    after = run("list", "--json", db=db)
    before = run("--db", db, "--models", MODELS, "list", "--json")
    assert after.returncode == before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout) != []
    missing = run("--db", db.parent / "missing.db", "list")
    assert missing.returncode == 1 and "missing.db" in missing.stderr


def test_check_exits_1_and_lists_the_problems_of_a_damaged_gallery(db):
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("PRAGMA ignore_check_constraints = ON")
        raw.execute("UPDATE templates SET embedding = x'0000' WHERE id = 1")
    result = run("check", "--json", db=db)
    assert result.returncode == 1
    assert any("template 1" in problem for problem in json.loads(result.stdout)["problems"])


# --- bundles --------------------------------------------------------------------------------------------


def rewrite_bundle(source: Path, target: Path, edit: Callable[[dict], None], *, fix_checksums: bool = True) -> Path:
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    if fix_checksums:
        members["SHA256SUMS"] = "".join(f"{hashlib.sha256(content).hexdigest()}  {name}\n"
                                        for name, content in sorted(members.items()) if name != "SHA256SUMS").encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


@pytest.fixture
def bundle(tmp_path, db) -> Path:
    path = tmp_path / "crew.fgb"
    result = run("export", path, db=db)
    assert result.returncode == 0, result.stderr
    assert f"exported 2 people ({3 * CARDS} templates, 3 photos)" in result.stdout
    return path


def probes(lenient: Enroller, photos: dict[str, Path]) -> np.ndarray:
    """Faces seen at the door: three of the astronaut, one of the cameraman."""
    shots = [lenient.judge_file(photos[name]) for name in ("brightened", "mirrored", "cameraman")]
    shots.append(lenient.judge(turned(data.astronaut(), 6), "turned"))
    return np.stack([shot.template.embedding for shot in shots])


def search(db: Path, card, probe: np.ndarray) -> list[tuple[str, float, float]]:
    with Gallery.open(db) as gallery:
        matches = GalleryIndex.build(gallery.snapshot(card.id), card).search(probe)
    return [(m.name, m.distance, m.runner_up_distance) for m in matches]


def test_export_then_import_into_a_fresh_gallery_searches_the_same(tmp_path, db, bundle, lenient, photos):
    fresh = tmp_path / "fresh.db"
    result = run("import", bundle, db=fresh)
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stdout
    before, after = people(db), people(fresh)
    assert sorted(before) == sorted(after)
    for name in before:
        old, new = before[name]["person"], after[name]["person"]
        assert (old.external_id, old.note, old.active, old.valid_from, old.valid_until) == (
            new.external_id, new.note, new.active, new.valid_from, new.valid_until)
        for a, b in zip(before[name]["templates"], after[name]["templates"], strict=True):
            np.testing.assert_array_equal(a.embedding, b.embedding)
            assert (a.model_id, a.quality, a.source, a.photo_jpeg) == (b.model_id, b.quality, b.source, b.photo_jpeg)
    probe = probes(lenient, photos)
    assert search(db, lenient.card, probe) == search(fresh, lenient.card, probe)
    assert [name for name, _, _ in search(fresh, lenient.card, probe)] == [
        "Astronaut", "Astronaut", "Cameraman", "Astronaut"]


def test_a_bundle_with_a_bad_checksum_is_refused_and_changes_nothing(tmp_path, db, bundle):
    edited = rewrite_bundle(bundle, tmp_path / "edited.fgb", lambda m: m["people"][0].update(name="Mallory"),
                            fix_checksums=False)
    damaged = tmp_path / "damaged.fgb"
    content = bytearray(bundle.read_bytes())
    content[len(content) // 3] ^= 0xFF
    damaged.write_bytes(content)
    before = dump(db)
    for bad in (edited, damaged):
        result = run("import", bad, "--replace", db=db)
        assert result.returncode == 1 and "nothing was imported" in result.stderr, result.stderr
        assert dump(db) == before
    fresh = tmp_path / "fresh.db"
    result = run("import", edited, db=fresh)
    assert result.returncode == 1 and "manifest.json does not match its SHA-256 checksum" in result.stderr
    assert not fresh.exists(), "a refused import must not leave an empty gallery behind"


@pytest.mark.parametrize("key, version", [("format_version", 2), ("schema_version", SCHEMA_VERSION + 1)])
def test_a_bundle_from_a_newer_facegate_is_refused_and_changes_nothing(tmp_path, db, bundle, key, version):
    newer = rewrite_bundle(bundle, tmp_path / "newer.fgb", lambda m: m.update({key: version}))
    before = dump(db)
    result = run("import", newer, "--merge", db=db)
    assert result.returncode == 1
    assert "newer" in result.stderr and "upgrade facegate" in result.stderr
    assert dump(db) == before


def test_a_bundle_of_another_model_is_refused_unless_its_photos_are_reembedded(tmp_path, bundle, enroller):
    def other_model(manifest: dict) -> None:
        for person in manifest["people"]:
            for template in person["templates"]:
                template["model_id"] = "other-embedder-v2"

    foreign = rewrite_bundle(bundle, tmp_path / "foreign.fgb", other_model)
    fresh = tmp_path / "fresh.db"
    refused = run("import", foreign, db=fresh)
    assert refused.returncode == 1 and "--reembed" in refused.stderr and "other-embedder-v2" in refused.stderr
    assert json.loads(run("list", "--json", db=fresh).stdout) == []
    # The cameraman's kept photo fails the enrolment gate when embedded again; the whole import is refused.
    assert "too small" in run("import", foreign, "--reembed", db=fresh).stderr
    astronaut_only = rewrite_bundle(foreign, tmp_path / "astronaut.fgb", lambda m: m.update(people=m["people"][:1]))
    result = run("import", astronaut_only, "--reembed", db=fresh)
    assert result.returncode == 0, result.stderr
    # Each kept photo embedded again by every installed model; the bundle's own templates are kept as they are.
    templates = people(fresh)["Astronaut"]["templates"]
    assert Counter(t.model_id for t in templates) == {"other-embedder-v2": 2 * CARDS,
                                                      **{card.id: 2 for card in enroller.cards}}
    assert sum(1 for t in templates if t.photo_jpeg) == 2


def test_an_enrolled_name_is_refused_unless_merged_or_replaced(db, bundle):
    before = dump(db)
    refused = run("import", bundle, db=db)
    assert refused.returncode == 1 and "--merge" in refused.stderr and dump(db) == before

    merged = run("import", bundle, "--merge", db=db)
    assert merged.returncode == 0 and f"{3 * CARDS} identical ones skipped" in merged.stdout, merged.stderr
    assert {name: p["person"].template_count for name, p in people(db).items()} == {"Astronaut": 2 * CARDS,
                                                                                  "Cameraman": CARDS}

    old_ids = {name: p["person"].id for name, p in people(db).items()}
    replaced = run("import", bundle, "--replace", db=db)
    assert replaced.returncode == 0 and "2 replaced" in replaced.stdout, replaced.stderr
    new = people(db)
    assert all(new[name]["person"].id > old_ids[name] for name in old_ids)
    assert new["Astronaut"]["person"].external_id == "E1" and not new["Cameraman"]["person"].active


# --- folders ----------------------------------------------------------------------------------------------


def staff_folder(root: Path, photos: dict[str, Path], folders: dict[str, list[str]]) -> Path:
    for name, photo_keys in folders.items():
        (root / name).mkdir(parents=True)
        for key in photo_keys:
            shutil.copy(photos[key], root / name / photos[key].name)
    return root


def test_add_folder_with_one_bad_photo_or_person_enrols_nobody_and_says_which(tmp_path, photos, db):
    root = staff_folder(tmp_path / "staff", photos, {
        "Newcomer": ["cameraman"], "Astronaut": ["mirrored"], "Twin": ["brightened"],
        "Paperwork": ["not_an_image"], "Blurry": ["two_faces", "blurred"]})
    (root / "Esc\x1b[1mape").mkdir()
    shutil.copy(photos["mirrored"], root / "Esc\x1b[1mape" / "mirrored.jpg")
    os.chmod(db, 0o644)
    before = dump(db), folder_state(db.parent)
    result = run("add-folder", root, db=db)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "enrolling 6 people (7 photos)" in result.stderr
    assert "[1/6] Astronaut: 0/7 photos done" in result.stderr and "ETA" in result.stderr
    assert "done: 7 photos" in result.stderr
    summary = result.stdout
    assert summary.startswith("nobody was enrolled, the gallery is unchanged: 4 photo(s) refused and 5 people who "
                              "cannot be enrolled; fix or remove them and run again (a folder is enrolled all or "
                              "nothing)")
    assert f"{root / 'Blurry' / 'blurred.jpg'}: face too blurred" in summary
    assert f"{root / 'Blurry' / 'two_faces.jpg'}: 2 faces found" in summary
    assert "notes.jpg: not a readable image" in summary
    assert "Newcomer: no photo passed the quality gate" in summary  # his face is small and turned
    assert "Twin: 'Twin' looks like 'Astronaut' (id 1), who is already enrolled" in summary
    assert "Esc\\x1b[1mape: the folder's name is not a person's name: the name 'Esc\\x1b[1mape' holds ESC" in summary
    assert "\x1b" not in summary + result.stderr
    assert (dump(db), folder_state(db.parent)) == before  # Astronaut was enrolled already: left alone either way

    fresh = tmp_path / "new" / "gallery.db"
    assert run("add-folder", root, db=fresh).returncode == 1
    assert not fresh.parent.exists(), "a refused batch leaves no empty gallery behind"


def test_add_folder_enrols_everyone_in_one_transaction_and_again_changes_nothing(tmp_path, photos):
    root = staff_folder(tmp_path / "staff", photos, {"Astronaut": ["astronaut", "mirrored"],
                                                     "Twin": ["brightened"]})
    db = tmp_path / "gallery.db"
    refused = run("add-folder", root, db=db)
    assert refused.returncode == 1 and "Twin: 'Twin' looks like 'Astronaut' of this folder: distance" in refused.stdout
    assert not db.exists()
    result = run("add-folder", root, "--force", db=db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "enrolled 2 people (3 photos); 0 already enrolled, left alone"
    assert {name: p["person"].template_count for name, p in people(db).items()} == {"Astronaut": 2 * CARDS,
                                                                                   "Twin": CARDS}
    with Gallery.open(db) as gallery:
        assert gallery.generation() == 1, "one transaction for the whole folder"
    before = dump(db)
    again = run("add-folder", root, "--json", db=db)
    outcomes = {o["name"]: o for o in json.loads(again.stdout)}
    assert again.returncode == 0 and outcomes["Astronaut"]["already"] and outcomes["Twin"]["already"]
    assert dump(db) == before


def test_add_folder_enrols_real_people_apart(tmp_path, shared_data):
    """Five Johns from dlib's examples; their 150 px chips are padded so MTCNN sees the whole face, in black as
    align fills outside an image: a replicated border smears alike streaks into every person's SFace chip."""
    johns = shared_data / "sets" / "dlib_examples" / "johns"
    root = tmp_path / "johns"
    for person in sorted(johns.iterdir()):
        (root / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg")):
            chip = cv2.imread(str(photo))
            cv2.imwrite(str(root / person.name / photo.name), cv2.copyMakeBorder(chip, 75, 75, 75, 75,
                                                                                 cv2.BORDER_CONSTANT))
    db = tmp_path / "gallery.db"
    result = run("add-folder", root, db=db)
    assert result.returncode == 0, result.stdout + result.stderr
    enrolled = {name: p["person"].template_count for name, p in people(db).items()}
    assert sorted(enrolled) == sorted(p.name for p in johns.iterdir())
    assert all(count >= 4 * CARDS for count in enrolled.values()), enrolled  # blurred chips are refused, not all


def batch_folder(root: Path) -> Path:
    """Six people of five astronaut photos each: enrolled with --force."""
    astronaut = data.astronaut()
    variants = [astronaut, astronaut[:, ::-1], brightened(astronaut), turned(astronaut, 6), turned(astronaut, -6),
                turned(astronaut, 0, 1.2), (astronaut * 0.7).astype(np.uint8), turned(astronaut, 0, 0.85)]
    chance = random.Random(7)
    for person in range(6):
        folder = root / f"Person {person}"
        folder.mkdir(parents=True)
        for number, variant in enumerate(chance.sample(variants, 5)):
            save(folder / f"{number}.jpg", variant)
    return root


def enrolled_labels(db: Path) -> dict[str, list[str]]:
    return {name: sorted(t.quality["label"] for t in p["templates"]) for name, p in people(db).items()}


def test_a_batch_killed_at_random_moments_leaves_everyone_or_nobody_enrolled(tmp_path):
    root = batch_folder(tmp_path / "staff")
    reference = tmp_path / "reference.db"
    batch_seconds = timed_batch(root, reference)  # to spread the kills over the batch, not asserted
    expected = enrolled_labels(reference)
    assert len(expected) == 6 and all(len(labels) == 5 * CARDS for labels in expected.values())
    chance = random.Random(20261123)
    for round_number in range(6):
        db = tmp_path / f"round{round_number}.db"
        child = start_batch(root, db)
        time.sleep(chance.uniform(0, batch_seconds))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        if db.exists():  # the gallery is made only to write the batch to
            checked = run("check", db=db)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert enrolled_labels(db) in ({}, expected)
    finished = run("add-folder", root, "--force", db=db)  # the last round's gallery, finished by running again
    assert finished.returncode == 0, finished.stderr
    assert enrolled_labels(db) == expected


def start_batch(root: Path, db: Path) -> subprocess.Popen:
    """add-folder in a child, returned once it has opened the gallery and loaded the models."""
    child = subprocess.Popen([sys.executable, str(TOOL), "add-folder", str(root), "--force", "--db", str(db)],
                             cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    assert child.stderr.readline().startswith("enrolling 6 people"), "the batch should start"
    return child


def timed_batch(root: Path, db: Path) -> float:
    child = start_batch(root, db)
    started = time.monotonic()
    child.stderr.read()
    assert child.wait() == 0
    child.stderr.close()
    return time.monotonic() - started
