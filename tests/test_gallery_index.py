"""The FAISS index and the daemon's reader: distances, runner-ups, rebuilds, live updates."""
from __future__ import annotations

import dataclasses
import json
import logging
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from daemon.gallery import Gallery, GalleryIndex, GalleryReader, Template, load_or_build
from daemon.gallery.index import index_paths
from engines.model_card import load_card
from tests.conftest import MODELS, REPO

EUCLIDEAN = load_card(MODELS / "dlib_resnet_v1.yaml")
COSINE = dataclasses.replace(EUCLIDEAN, id="test-cosine", metric="cosine", normalize=True)
DIM = EUCLIDEAN.embedding_dim


def enrol_random(gallery: Gallery, card, people: int, seed: int) -> dict[int, np.ndarray]:
    """people with 1 to 4 random templates each; returns person id -> their vectors."""
    rng = np.random.default_rng(seed)
    enrolled = {}
    for i in range(people):
        vectors = rng.standard_normal((1 + int(rng.integers(4)), DIM)).astype(np.float32) * 0.3
        enrolled[gallery.add_person(f"person {i}", [Template(v, card.id) for v in vectors])] = vectors
    return enrolled


def brute_force(enrolled: dict[int, np.ndarray], probe: np.ndarray, metric: str) -> tuple[int, float, float]:
    """(best person, distance, runner-up distance) by numpy, in float64."""
    def distance(vectors: np.ndarray) -> float:
        if metric == "euclidean":
            return float(np.linalg.norm(vectors - probe, axis=1).min())
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return float((1 - unit @ (probe / np.linalg.norm(probe))).min())
    ranked = sorted((distance(v.astype(np.float64)), person) for person, v in enrolled.items())
    return ranked[0][1], ranked[0][0], ranked[1][0]


@pytest.fixture
def gallery(tmp_path):
    with Gallery.open(tmp_path / "gallery.db") as opened:
        yield opened


def results(index: GalleryIndex, probes: np.ndarray) -> list[tuple[int, float, float]]:
    return [(m.person_id, round(m.distance, 5), round(m.runner_up_distance, 5)) for m in index.search(probes)]


# --- distances and runner-ups -------------------------------------------------------------------


@pytest.mark.parametrize("card", [EUCLIDEAN, COSINE], ids=["euclidean", "cosine"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_agrees_with_numpy_brute_force(gallery, card, kind):
    enrolled = enrol_random(gallery, card, people=40, seed=1)
    index = load_or_build(gallery, card, kind)
    rng = np.random.default_rng(2)
    owners = rng.choice(list(enrolled), size=25)
    probes = np.stack([enrolled[o][0] + rng.normal(0, 0.1, DIM) for o in owners]).astype(np.float32)
    for match, probe in zip(index.search(probes), probes):
        person, distance, runner_up = brute_force(enrolled, probe.astype(np.float64), card.metric)
        assert match.person_id == person
        assert match.name == gallery.get_person(person).name
        assert match.distance == pytest.approx(distance, rel=1e-4, abs=1e-5)
        assert match.runner_up_distance == pytest.approx(runner_up, rel=1e-4, abs=1e-5)


def test_a_person_with_many_close_templates_is_not_their_own_runner_up(gallery):
    probe = np.zeros(DIM, np.float32)
    near = [Template(probe + 0.01 * (i + 1), EUCLIDEAN.id) for i in range(6)]
    alice = gallery.add_person("Alice", near)
    far = np.zeros(DIM, np.float32)
    far[0] = 3.0
    gallery.add_person("Bob", [Template(far, EUCLIDEAN.id)])
    for i in range(5):  # more people than Alice has templates, all farther than Bob
        gallery.add_person(f"far {i}", [Template(far * (2 + i), EUCLIDEAN.id)])
    [match] = load_or_build(gallery, EUCLIDEAN).search(probe[None, :])
    assert match.person_id == alice
    assert match.distance == pytest.approx(0.01 * np.sqrt(DIM), rel=1e-5)
    assert match.runner_up_distance == pytest.approx(3.0, rel=1e-5)


def test_a_single_person_has_no_runner_up_and_an_empty_gallery_no_match(gallery):
    probes = np.random.default_rng(0).standard_normal((3, DIM)).astype(np.float32)
    assert load_or_build(gallery, EUCLIDEAN).search(probes) == [None, None, None]
    gallery.add_person("Alice", [Template(probes[0], EUCLIDEAN.id), Template(probes[1], EUCLIDEAN.id)])
    matches = load_or_build(gallery, EUCLIDEAN).search(probes)
    assert [m.runner_up_distance for m in matches] == [np.inf] * 3
    assert matches[0].distance == pytest.approx(0, abs=1e-3)


def test_bad_probes_give_no_match_or_a_clear_error(gallery):
    enrol_random(gallery, EUCLIDEAN, people=3, seed=3)
    index = load_or_build(gallery, EUCLIDEAN)
    probes = np.zeros((2, DIM), np.float32)
    probes[1, 5] = np.nan
    first, second = index.search(probes)
    assert first is not None and second is None
    with pytest.raises(ValueError, match="N x 128"):
        index.search(np.zeros(DIM))


# --- saved index: missing, corrupt, stale --------------------------------------------------------


def rebuild_lines(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "facegate.gallery" and "rebuilding" in r.getMessage()]
    caplog.clear()
    return lines


@pytest.fixture
def saved(gallery, caplog):
    """A gallery whose index has been saved, the index path and the results of some probes."""
    caplog.set_level(logging.INFO, logger="facegate.gallery")
    enrolled = enrol_random(gallery, EUCLIDEAN, people=30, seed=4)
    probes = np.stack([v[0] + 0.05 for v in enrolled.values()]).astype(np.float32)
    expected = results(load_or_build(gallery, EUCLIDEAN), probes)
    index_path, sidecar_path = index_paths(gallery.index_dir, EUCLIDEAN.id, "flat")
    assert index_path.is_file() and sidecar_path.is_file()
    rebuild_lines(caplog)
    return index_path, sidecar_path, probes, expected


def test_a_current_saved_index_is_loaded_without_a_rebuild(gallery, saved, caplog):
    index_path, _, probes, expected = saved
    assert results(load_or_build(gallery, EUCLIDEAN), probes) == expected
    assert rebuild_lines(caplog) == []


@pytest.mark.parametrize("damage, reason", [
    (lambda index, sidecar: index.write_bytes(np.random.default_rng(0).bytes(5000)), "checksum"),
    (lambda index, sidecar: index.write_bytes(index.read_bytes()[:-100]), "checksum"),
    (lambda index, sidecar: index.unlink(), "missing"),
    (lambda index, sidecar: sidecar.unlink(), "missing"),
    (lambda index, sidecar: sidecar.write_text("{not json"), "unreadable sidecar"),
    (lambda index, sidecar: sidecar.write_text(
        json.dumps(json.loads(sidecar.read_text()) | {"model_id": "other-model"})), "model_id"),
])
def test_a_damaged_or_missing_index_is_rebuilt_with_one_log_line(gallery, saved, caplog, damage, reason):
    index_path, sidecar_path, probes, expected = saved
    damage(index_path, sidecar_path)
    assert results(load_or_build(gallery, EUCLIDEAN), probes) == expected
    [line] = rebuild_lines(caplog)
    assert reason in line and str(index_path) in line
    assert results(load_or_build(gallery, EUCLIDEAN), probes) == expected
    assert rebuild_lines(caplog) == [], "the rebuilt index must have been saved"


def test_a_stale_index_is_rebuilt_with_the_new_person(gallery, saved, caplog):
    _, _, probes, _ = saved
    newcomer = np.full(DIM, 5.0, np.float32)
    person = gallery.add_person("Newcomer", [Template(newcomer, EUCLIDEAN.id)])
    [match] = load_or_build(gallery, EUCLIDEAN).search(newcomer[None, :])
    assert match.person_id == person
    [line] = rebuild_lines(caplog)
    assert "stale" in line and "generation" in line


def test_index_files_are_owner_only(gallery, saved):
    index_path, sidecar_path, _, _ = saved
    assert stat.S_IMODE(gallery.index_dir.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in (index_path, sidecar_path)] == [0o600, 0o600]


def test_a_saved_hnsw_index_round_trips(gallery, caplog):
    caplog.set_level(logging.INFO, logger="facegate.gallery")
    enrolled = enrol_random(gallery, COSINE, people=50, seed=5)
    probes = np.stack([v[0] for v in enrolled.values()])
    built = results(load_or_build(gallery, COSINE, "hnsw"), probes)
    rebuild_lines(caplog)
    assert results(load_or_build(gallery, COSINE, "hnsw"), probes) == built
    assert rebuild_lines(caplog) == []
    assert [person for person, _, _ in built] == list(enrolled)


# --- the daemon's reader ----------------------------------------------------------------------------


def enrol_main(path: str) -> None:
    """Child process: enrol one person, then print when the commit returned."""
    with Gallery.open(path) as gallery:
        gallery.add_person("Newcomer", [Template(np.full(DIM, 2.0, np.float32), EUCLIDEAN.id)])
        print(time.time(), flush=True)


def test_the_reader_sees_an_enrolment_by_another_process_within_one_second(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as gallery:
        enrol_random(gallery, EUCLIDEAN, people=5, seed=6)
    probe = np.full((1, DIM), 2.0, np.float32)
    with GalleryReader.open(path, EUCLIDEAN) as reader:
        assert reader.search(probe)[0].name != "Newcomer"
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.test_gallery_index import enrol_main; "
             "enrol_main(sys.argv[1])", str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60  # interpreter start-up is not part of the requirement
        while time.monotonic() < deadline:
            if reader.changed():
                reader.refresh()
            if reader.search(probe)[0].name == "Newcomer":
                seen_at = time.time()
                break
            time.sleep(0.01)
        else:
            pytest.fail("the reader never saw the new person")
        committed_at = float(child.communicate(timeout=60)[0])
    assert seen_at - committed_at < 1.0


def test_changed_is_false_until_another_connection_writes(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as writer, GalleryReader.open(path, EUCLIDEAN) as reader:
        assert not reader.changed()
        writer.add_person("Alice", [Template(np.ones(DIM), EUCLIDEAN.id)])
        assert reader.changed() and reader.changed(), "asking must not consume the change"
        reader.refresh()
        assert not reader.changed()
        writer.rename(1, "Alicia")
        assert reader.changed()
        reader.refresh()
        assert reader.search(np.ones((1, DIM)))[0].name == "Alicia"


def test_searches_continue_on_other_threads_while_the_index_is_swapped(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as writer, GalleryReader.open(path, EUCLIDEAN) as reader:
        enrolled = enrol_random(writer, EUCLIDEAN, people=20, seed=7)
        reader.refresh()
        first = next(iter(enrolled))
        probe = enrolled[first][:1]
        errors, stop = [], threading.Event()

        def search_forever() -> None:
            try:
                while not stop.is_set():
                    assert reader.search(probe)[0].person_id == first
            except Exception as error:  # reported to the main thread below
                errors.append(error)

        threads = [threading.Thread(target=search_forever) for _ in range(2)]
        for thread in threads:
            thread.start()
        for i in range(15):
            writer.add_person(f"extra {i}", [Template(np.full(DIM, 10.0 + i, np.float32), EUCLIDEAN.id)])
            reader.refresh()
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        assert reader.index.people == 35


def test_inactive_and_expired_people_are_still_found_for_the_policy_to_deny(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as writer, GalleryReader.open(path, EUCLIDEAN) as reader:
        person = writer.add_person("Former", [Template(np.ones(DIM), EUCLIDEAN.id)], valid_until="2020-01-01")
        writer.set_active(person, False)
        reader.refresh()
        [match] = reader.search(np.ones((1, DIM)))
        assert match.person_id == person
        found = reader.person(person)
        assert (found.active, found.valid_until) == (False, "2020-01-01")


# --- one index per model ----------------------------------------------------------------------------


def enrol_two_models(gallery: Gallery, people: int, seed: int) -> dict[int, dict[str, np.ndarray]]:
    """Each person with templates of both cards (as enrolment writes them): person id -> card id -> vectors."""
    rng = np.random.default_rng(seed)
    enrolled = {}
    for i in range(people):
        vectors = {card.id: rng.standard_normal((2, DIM)).astype(np.float32) for card in (EUCLIDEAN, COSINE)}
        templates = [Template(v, model) for model, rows in vectors.items() for v in rows]
        enrolled[gallery.add_person(f"person {i}", templates)] = vectors
    return enrolled


def test_each_model_has_its_own_index_files_built_from_its_own_templates(gallery, caplog):
    caplog.set_level(logging.INFO, logger="facegate.gallery")
    enrolled = enrol_two_models(gallery, people=12, seed=8)
    indexes = {card.id: load_or_build(gallery, card) for card in (EUCLIDEAN, COSINE)}
    paths = {model: index_paths(gallery.index_dir, model, "flat") for model in indexes}
    assert len({path for pair in paths.values() for path in pair}) == 4
    assert all(path.is_file() for pair in paths.values() for path in pair)
    assert sorted(p.name for p in gallery.index_dir.iterdir()) == sorted(
        path.name for pair in paths.values() for path in pair)
    for card in (EUCLIDEAN, COSINE):
        index = indexes[card.id]
        assert (index.model_id, index.metric, index.count, index.people) == (card.id, card.metric, 24, 12)
        probes = np.stack([vectors[card.id][1] for vectors in enrolled.values()])
        assert [m.person_id for m in index.search(probes)] == list(enrolled)
        assert all(m.distance == pytest.approx(0, abs=1e-4) for m in index.search(probes))
    rebuild_lines(caplog)

    # Each rebuilt independently: damage one model's index and only that one is rebuilt.
    paths[COSINE.id][0].write_bytes(b"damaged")
    load_or_build(gallery, EUCLIDEAN)
    assert rebuild_lines(caplog) == []
    load_or_build(gallery, COSINE)
    [line] = rebuild_lines(caplog)
    assert str(paths[COSINE.id][0]) in line and "checksum" in line
    load_or_build(gallery, COSINE)
    assert rebuild_lines(caplog) == []


def test_a_reader_searches_its_own_model_and_names_the_people_it_cannot_find(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery.open(path) as writer:
        enrolled = enrol_two_models(writer, people=3, seed=9)
        legacy_vector = np.full(DIM, 3.0, np.float32)
        legacy = writer.add_person("Legacy", [Template(legacy_vector, EUCLIDEAN.id)])
    with GalleryReader.open(path, EUCLIDEAN) as euclidean, GalleryReader.open(path, COSINE) as cosine:
        assert (euclidean.index.count, euclidean.index.people, euclidean.lacking()) == (7, 4, [])
        assert (cosine.index.count, cosine.index.people) == (6, 3)
        assert [p.id for p in cosine.lacking()] == [legacy] and cosine.card is COSINE
        assert euclidean.search(legacy_vector[None])[0].person_id == legacy
        assert cosine.search(legacy_vector[None])[0].person_id != legacy
        first = next(iter(enrolled))
        assert cosine.search(enrolled[first][COSINE.id][:1])[0].person_id == first
