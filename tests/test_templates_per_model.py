"""Templates per embedder: enrolment stores a template for every embedder card installed, so the door's
embedder.card can be switched without enrolling anyone again.

The models folder here is built in a temporary directory, whatever engines/models holds: the
shipped MTCNN cards and dlib card, and a second embedder card of the same network (its file a
link to the same ONNX) that differs where cards differ: another id, the cosine metric with
normalised embeddings, its own threshold and its own alignment template (the face 10% smaller
in the chip), so its templates are not a rescaling of dlib's. Real faces: skimage's astronaut.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from PIL import Image
from skimage import data

from daemon import config as config_module
from daemon.bundles import Bundle, BundleError, BundlePerson, import_bundle, read_bundle
from daemon.demo import demo_config
from daemon.enrolment import Enroller, EnrolmentError, PersonDetails, embedder_cards, enrol, judge_files
from daemon.events import EventReader
from daemon.gallery import Gallery, GalleryIndex, GalleryReader, Template
from daemon.service import DoorService
from engines.align import align
from engines.embedder import Embedder, distance
from engines.model_card import find_card, load_card
from tests.conftest import MODELS, REPO

TOOL = REPO / "tools" / "enroll_local.py"
SECOND = "dlib-cosine-test"


def models_folder(folder: Path, second: bool = True) -> Path:
    """MTCNN and dlib from engines/models (linked), plus the second embedder card unless second is False."""
    folder.mkdir(parents=True)
    for role in ("pnet", "rnet", "onet"):
        shutil.copy(MODELS / f"mtcnn_{role}.yaml", folder)
        os.symlink(MODELS / f"mtcnn_{role}.onnx", folder / f"mtcnn_{role}.onnx")
    shutil.copy(MODELS / "dlib_resnet_v1.yaml", folder)
    os.symlink(MODELS / "dlib_resnet_v1.onnx", folder / "dlib_resnet_v1.onnx")
    if second:
        raw = yaml.safe_load((MODELS / "dlib_resnet_v1.yaml").read_text())
        raw["id"] = SECOND
        raw["embedding"].update(metric="cosine", normalize=True, threshold=0.08,
                                threshold_source="tests: astronaut copies 0.005-0.01, cameraman 0.19")
        template = np.array(raw["alignment"]["template"])
        centre = np.array(raw["alignment"]["chip_size"]) / 2
        raw["alignment"]["template"] = ((template - centre) * 0.9 + centre).round(2).tolist()
        (folder / "dlib_cosine_test.yaml").write_text(yaml.safe_dump(raw))
        (folder / "DEFAULTS").write_text("embedder  dlib-resnet-v1\n")
    return folder


@pytest.fixture(scope="module")
def two_cards(tmp_path_factory) -> Path:
    return models_folder(tmp_path_factory.mktemp("models") / "models")


@pytest.fixture(scope="module")
def dlib_only(tmp_path_factory) -> Path:
    return models_folder(tmp_path_factory.mktemp("models") / "models", second=False)


@pytest.fixture(scope="module")
def enroller(two_cards) -> Enroller:
    with Enroller.from_models(two_cards) as opened:
        yield opened


@pytest.fixture(scope="module")
def legacy(enroller) -> Enroller:
    """An enroller of dlib alone, as before templates per model (closed with enroller)."""
    return Enroller(enroller.pipeline, enroller.limits)


def brightened(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * 1.25 + 10, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    images = {"astronaut": astronaut, "mirrored": astronaut[:, ::-1], "brightened": brightened(astronaut)}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(image)).save(paths[name])
    return paths


def run(*args: object, db: Path, models: Path, card: str | Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOL), *map(str, args), "--db", str(db), "--models", str(models)]
    command += ["--card", str(card)] if card else []
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)


def models_of(db: Path) -> dict[str, list[str]]:
    """Person name -> the model ids of their templates, in order."""
    with Gallery.open(db) as gallery:
        return {p.name: [t.model_id for t in gallery.templates(p.id)] for p in gallery.list_people()}


def door_config(state: Path, models: Path, card: Path, db: Path, camera: Path | None = None):
    raw = demo_config(state, fast=True)
    if camera is not None:
        raw["camera"] = {"type": "file", "path": str(camera), "pace": "fast"}
    raw["gallery"]["path"] = str(db)
    raw["detector"] = {"models_dir": str(models)}
    raw["embedder"] = {"card": str(card)}
    return config_module.parse(raw)


# --- enrolment -------------------------------------------------------------------------------------


def test_enrolment_writes_one_template_per_installed_card_each_from_its_own_chip(enroller, two_cards, tmp_path):
    dlib, second = find_card(two_cards, "embedder"), load_card(two_cards / "dlib_cosine_test.yaml")
    assert [card.id for card in enroller.cards] == [dlib.id, SECOND]
    rgb = data.astronaut()
    shot = enroller.judge(rgb, "astronaut", keep_photo=True)
    assert [t.model_id for t in shot.templates] == [dlib.id, SECOND]
    [face] = enroller.pipeline.detector.detect(rgb)
    for template, card in zip(shot.templates, (dlib, second)):
        with Embedder(card) as embedder:
            expected = embedder.embed([align(rgb, face.landmarks, card.alignment)[0]])[0]
        np.testing.assert_allclose(template.embedding, expected, rtol=1e-5, atol=1e-6)
        assert template.quality == shot.template.quality  # judged once, on the configured card's chip
    first, other = shot.templates
    assert np.linalg.norm(other.embedding) == pytest.approx(1, abs=1e-5)
    assert distance(first.embedding, other.embedding, "cosine") > 1e-3, "the second card aligns with its own template"
    assert first.photo_jpeg is not None and other.photo_jpeg is None, "a kept photo is stored once"

    with Gallery.open(tmp_path / "gallery.db") as gallery:
        person = enrol(gallery, enroller.card, "Astronaut", [shot, enroller.judge(rgb[:, ::-1], "mirrored")])
        stored = gallery.templates(person)
    assert [t.model_id for t in stored] == [dlib.id, SECOND, dlib.id, SECOND]
    assert [t.quality["label"] for t in stored] == ["astronaut", "astronaut", "mirrored", "mirrored"]


def test_the_command_line_enrols_with_every_installed_card_and_rebuilds_an_index_per_model(two_cards, photos,
                                                                                             tmp_path):
    db = tmp_path / "gallery.db"
    added = run("add", "Astronaut", "--photo", photos["astronaut"], photos["mirrored"], "--keep-photo",
                db=db, models=two_cards)
    assert added.returncode == 0, added.stderr
    assert f"with 2 template(s) of each model (dlib-resnet-v1, {SECOND})" in added.stdout
    assert models_of(db) == {"Astronaut": ["dlib-resnet-v1", SECOND] * 2}
    more = run("add-template", "Astronaut", "--photo", photos["brightened"], db=db, models=two_cards)
    assert more.returncode == 0 and "1 photo(s)" in more.stdout and "2 template(s)" in more.stdout, more.stderr
    rebuilt = run("rebuild-index", db=db, models=two_cards)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 3 templates of 1 people with dlib-resnet-v1" in rebuilt.stdout
    assert f"indexed 3 templates of 1 people with {SECOND}" in rebuilt.stdout
    assert len(list(Path(f"{db}.index").glob("*.flat.faiss"))) == 2
    checked = run("check", db=db, models=two_cards, card=SECOND)
    assert checked.returncode == 0 and "ok: 1 people, 6 templates" in checked.stdout, checked.stdout


# --- switching the configured card ---------------------------------------------------------------------


def test_switching_the_configured_card_needs_no_re_enrolment(enroller, two_cards, photos, tmp_path, caplog):
    db = tmp_path / "state" / "gallery.db"
    added = run("add", "Astronaut", "--photo", photos["astronaut"], db=db, models=two_cards)  # dlib configured
    assert added.returncode == 0, added.stderr
    second = load_card(two_cards / "dlib_cosine_test.yaml")
    probe = enroller.judge(brightened(data.astronaut()), "probe").templates[1].embedding
    with GalleryReader.open(db, second) as reader:
        [match] = reader.search(probe[None])
        assert reader.index.model_id == SECOND and reader.lacking() == []
    assert match.name == "Astronaut" and match.distance < second.threshold

    # The door itself, configured with the second card, grants her from a few camera frames.
    frames = tmp_path / "frames"
    frames.mkdir()
    for number in range(6):
        shutil.copy(photos["brightened"], frames / f"{number:02d}.png")
    caplog.set_level(logging.WARNING, logger="facegate")
    config = door_config(tmp_path / "state", two_cards, two_cards / "dlib_cosine_test.yaml", db, frames)
    service = DoorService(config, pin_factory=MockFactory())
    assert service.gallery.index.model_id == SECOND and service.gallery.index.people == 1
    assert service.run() == 0
    assert not [r for r in caplog.records if "cannot be recognised" in r.getMessage()]
    grants = EventReader(config.events.path).query(kinds=["grant"])
    assert [g.person_name for g in grants] == ["Astronaut"] and grants[0].score < second.threshold


# --- galleries enrolled before templates per model ---------------------------------------------------


@pytest.fixture
def legacy_db(tmp_path, legacy, photos) -> Path:
    """dlib templates only: the astronaut with her photos kept, her twin (enrolled with --force) without."""
    path = tmp_path / "state" / "gallery.db"
    with Gallery.open(path) as gallery:
        shots, _ = judge_files(legacy, [photos["astronaut"], photos["mirrored"]], keep_photo=True)
        enrol(gallery, legacy.card, "Astronaut", shots, PersonDetails("E1"))
        enrol(gallery, legacy.card, "Twin", judge_files(legacy, [photos["brightened"]])[0], force=True)
    return path


def test_check_names_the_people_lacking_the_configured_model_and_reembed_fills_them_in(legacy_db, two_cards, photos):
    db = legacy_db
    as_before = run("check", db=db, models=two_cards)  # dlib configured: the door still recognises everyone
    assert as_before.returncode == 0, as_before.stdout + as_before.stderr
    assert f"2 people have no template of '{SECOND}' (installed, not configured)" in as_before.stdout

    switched = run("check", db=db, models=two_cards, card=SECOND)
    assert switched.returncode == 1
    assert (f"2 of 2 people have no template of '{SECOND}', the model the door is configured with, and cannot be "
            "recognised: #1 'Astronaut', #2 'Twin'") in switched.stdout
    assert "1 of them have kept photos: `enroll_local.py reembed`" in switched.stdout
    assert "1 have none and need new photos: enroll_local.py add-template" in switched.stdout
    by_file = run("check", "--json", db=db, models=two_cards, card=two_cards / "dlib_cosine_test.yaml")
    report = json.loads(by_file.stdout)
    assert not report["ok"] and report["model"] == SECOND
    assert report["lacking"] == {"dlib-resnet-v1": [], SECOND: [{"id": 1, "name": "Astronaut", "kept_photos": 2},
                                                               {"id": 2, "name": "Twin", "kept_photos": 0}]}

    reembedded = run("reembed", db=db, models=two_cards)
    assert reembedded.returncode == 1, reembedded.stderr  # the twin has no kept photo
    assert "'Astronaut' (#1): 2 template(s) added from 2 kept photo(s)" in reembedded.stdout
    assert f"'Twin' (#2): 0 template(s) added from 0 kept photo(s); still no template of {SECOND}" in reembedded.stdout
    assert models_of(db) == {"Astronaut": ["dlib-resnet-v1"] * 2 + [SECOND] * 2, "Twin": ["dlib-resnet-v1"]}
    with Gallery.open(db) as gallery:
        new = [t for t in gallery.templates(1) if t.model_id == SECOND]
    assert [t.quality["label"] for t in new] == [str(photos["astronaut"]), str(photos["mirrored"])]
    assert all(t.photo_jpeg is None for t in new), "the photo stays where it was, once"

    still = run("check", db=db, models=two_cards, card=SECOND)
    assert still.returncode == 1 and "1 of 2 people" in still.stdout and "#2 'Twin'" in still.stdout
    added = run("add-template", "Twin", "--photo", photos["brightened"], db=db, models=two_cards, card=SECOND)
    assert added.returncode == 0, added.stderr
    assert run("check", db=db, models=two_cards, card=SECOND).returncode == 0
    assert run("reembed", db=db, models=two_cards).returncode == 0


def test_the_door_names_at_start_the_people_it_cannot_recognise_with_its_card(legacy_db, two_cards, caplog):
    caplog.set_level(logging.WARNING, logger="facegate")
    config = door_config(legacy_db.parent, two_cards, two_cards / "dlib_cosine_test.yaml", legacy_db)
    service = DoorService(config, pin_factory=MockFactory())
    service.close()
    [line] = [r for r in caplog.records if "cannot be recognised" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert (f"2 of 2 enrolled people have no template of embedder '{SECOND}' and cannot be recognised at this door: "
            "#1 'Astronaut', #2 'Twin'") in line.getMessage()
    assert "reembed" in line.getMessage()
    caplog.clear()
    service = DoorService(door_config(legacy_db.parent, two_cards, two_cards / "dlib_resnet_v1.yaml", legacy_db),
                          pin_factory=MockFactory())
    service.close()
    assert not [r for r in caplog.records if "cannot be recognised" in r.getMessage()]


# --- bundles ------------------------------------------------------------------------------------------


def search_all(db: Path, cards, probes: dict[str, np.ndarray]) -> dict[str, list[tuple[str, float]]]:
    with Gallery.open(db) as gallery:
        return {card.id: [(m.name, round(m.distance, 6)) for m in
                          GalleryIndex.build(gallery.snapshot(card.id), card).search(probes[card.id])]
                for card in cards}


def test_a_bundle_carries_the_templates_of_every_model(enroller, two_cards, dlib_only, photos, tmp_path):
    db = tmp_path / "gallery.db"
    for name, photo in (("Astronaut", "astronaut"), ("Twin", "brightened")):
        result = run("add", name, "--photo", photos[photo], "--keep-photo", "--force", db=db, models=two_cards)
        assert result.returncode == 0, result.stderr
    bundle = tmp_path / "crew.fgb"
    exported = run("export", bundle, db=db, models=two_cards)
    assert exported.returncode == 0, exported.stderr
    assert "(4 templates, 2 photos)" in exported.stdout and f"by model: {SECOND} 2, dlib-resnet-v1 2" in exported.stdout
    assert {t.model_id for p in read_bundle(bundle).people for t in p.templates} == {"dlib-resnet-v1", SECOND}

    fresh = tmp_path / "fresh.db"
    imported = run("import", bundle, db=fresh, models=two_cards)
    assert imported.returncode == 0, imported.stderr
    assert "2 added" in imported.stdout and "4 templates written" in imported.stdout
    with Gallery.open(db) as before, Gallery.open(fresh) as after:
        for old, new in zip(before.list_people(), after.list_people(), strict=True):
            for a, b in zip(before.templates(old.id), after.templates(new.id), strict=True):
                np.testing.assert_array_equal(a.embedding, b.embedding)
                assert (a.model_id, a.quality, a.source, a.photo_jpeg) == (
                    b.model_id, b.quality, b.source, b.photo_jpeg)
    cards = enroller.cards
    shot = enroller.judge(data.astronaut()[:, ::-1], "probe")
    probes = {t.model_id: t.embedding[None] for t in shot.templates}
    assert search_all(db, cards, probes) == search_all(fresh, cards, probes)
    assert [name for name, _ in search_all(fresh, cards, probes)[SECOND]] == ["Astronaut"]

    # A device without the second card keeps its templates as they are, for when it is installed.
    other_device = tmp_path / "dlib_only.db"
    imported = run("import", bundle, db=other_device, models=dlib_only)
    assert imported.returncode == 0, imported.stderr
    assert models_of(other_device) == {"Astronaut": ["dlib-resnet-v1", SECOND], "Twin": ["dlib-resnet-v1", SECOND]}


def test_a_legacy_bundle_imported_with_reembed_gets_templates_of_every_installed_model(legacy_db, two_cards,
                                                                                        tmp_path):
    bundle = tmp_path / "legacy.fgb"
    assert run("export", bundle, db=legacy_db, models=two_cards).returncode == 0
    fresh = tmp_path / "fresh.db"
    plain = run("import", bundle, db=fresh, models=two_cards, card=SECOND)  # a door configured with the new card
    assert plain.returncode == 1 and "2 people have no template" in plain.stderr and "--reembed" in plain.stderr
    # The twin has no kept photo: only the astronaut can be embedded again.
    only_astronaut = tmp_path / "astronaut.fgb"
    with Gallery.open(legacy_db) as gallery:
        gallery.remove_person(2)
    assert run("export", only_astronaut, db=legacy_db, models=two_cards).returncode == 0
    result = run("import", only_astronaut, "--reembed", db=fresh, models=two_cards, card=SECOND)
    assert result.returncode == 0, result.stderr
    assert models_of(fresh) == {"Astronaut": ["dlib-resnet-v1"] * 2 + [SECOND] * 2}
    assert run("check", db=fresh, models=two_cards, card=SECOND).returncode == 0


def test_a_bundle_whose_templates_have_the_wrong_dimension_is_refused_before_any_write(two_cards, tmp_path):
    dlib, second = find_card(two_cards, "embedder"), load_card(two_cards / "dlib_cosine_test.yaml")

    def bundle(*templates: Template) -> Bundle:
        return Bundle(tmp_path / "made.fgb", 1, 1, "2026-01-01T00:00:00+00:00", dlib.id,
                      [BundlePerson("Somebody", None, None, True, None, None, list(templates))])

    with Gallery.open(tmp_path / "gallery.db") as gallery:
        gallery.add_person("Held", [Template(np.ones(128), dlib.id), Template(np.ones(32), "held-model")])
        before = gallery.generation()
        for templates, message in (
                ([Template(np.ones(128), dlib.id), Template(np.ones(64), SECOND)], f"'{SECOND}' are 64-d, not 128-d"),
                ([Template(np.ones(128), dlib.id), Template(np.ones(16), "held-model")], "16-d, not 32-d"),
                ([Template(np.ones(128), dlib.id), Template(np.ones(8), "new-model"),
                  Template(np.ones(9), "new-model")], "8/9-d, not of one dimension"),
                ([Template(np.ones(128), "new-model")], f"1 people have no template of '{dlib.id}'")):
            with pytest.raises(BundleError, match=message):
                import_bundle(gallery, dlib, bundle(*templates), installed=[second])
        assert gallery.generation() == before
        made = bundle(Template(np.ones(128), dlib.id), Template(np.ones(128), SECOND),
                      Template(np.ones(32), "held-model"))
        report = import_bundle(gallery, dlib, made, installed=[second], force=True)
        assert report.added == 1 and report.templates == 3


def test_two_embedder_cards_of_one_id_are_refused(two_cards, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(two_cards, folder, symlinks=True)
    shutil.copy(folder / "dlib_resnet_v1.yaml", folder / "dlib_copy.yaml")
    with pytest.raises(EnrolmentError, match="several embedder cards have the id 'dlib-resnet-v1'"):
        embedder_cards(folder)
    assert [card.id for card in embedder_cards(two_cards, load_card(two_cards / "dlib_cosine_test.yaml"))] == [
        SECOND, "dlib-resnet-v1"]
