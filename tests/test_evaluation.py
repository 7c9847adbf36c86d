"""Verification and identification metrics on hand-made distances with known answers; face selection in
tools/evaluate.py on hand-made boxes and, through the real detector, on a synthetic two-face photo."""
from __future__ import annotations

import importlib.util
import json
import sys

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from engines import evaluation as ev
from engines.face import Face
from engines.pipeline import FacePipeline
from tests.conftest import MODELS, REPO


def test_perfectly_separated_scores_give_auc_one_and_zero_eer():
    curve = ev.roc(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8, 0.9, 1.0]))
    assert ev.auc(curve) == pytest.approx(1.0)
    eer, threshold = ev.equal_error_rate(curve)
    assert eer == 0.0 and 0.3 < threshold <= 0.7
    assert ev.tar_at_far(curve, 0.0) == 1.0


def test_identical_distributions_give_auc_one_half():
    values = np.linspace(0, 1, 101)
    assert ev.auc(ev.roc(values, values)) == pytest.approx(0.5, abs=0.01)


def test_threshold_for_far_never_exceeds_the_target():
    rng = np.random.default_rng(1)
    genuine, impostor = rng.normal(0.4, 0.1, 500), rng.normal(0.8, 0.1, 5000)
    curve = ev.roc(genuine, impostor)
    for target in (1e-1, 1e-2, 1e-3):
        threshold = ev.threshold_for_far(curve, target)
        assert np.mean(impostor < threshold) <= target
        # the next larger threshold would break the target: the recommendation is the loosest allowed
        looser = curve.thresholds[np.searchsorted(curve.thresholds, threshold) + 1]
        assert np.mean(impostor < looser) > target


def test_known_overlap_gives_the_expected_rates():
    genuine = np.array([0.1, 0.2, 0.3, 0.6])  # one genuine pair looks like an impostor
    impostor = np.array([0.5, 0.7, 0.8, 0.9])  # one impostor pair looks genuine
    curve = ev.roc(genuine, impostor)
    eer, _ = ev.equal_error_rate(curve)
    assert eer == pytest.approx(0.25)
    assert ev.tar_at_far(curve, 0.0) == pytest.approx(0.75)
    assert ev.auc(curve) == pytest.approx(15 / 16)


def test_kfold_accuracy_uses_thresholds_from_the_other_folds():
    distances = np.tile([0.1, 0.2, 0.8, 0.9], 4)
    same = np.array([1, 1, 0, 0] * 3 + [0, 0, 1, 1], bool)  # the last fold is mislabelled on purpose
    folds = np.repeat(np.arange(4), 4)
    mean, _ = ev.kfold_accuracy(distances, same, folds)
    assert mean == pytest.approx(0.75)


def test_pairwise_distances_match_numpy_for_both_metrics():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    euclidean = ev.pairwise_distances(x, "euclidean")
    assert np.allclose(euclidean, np.linalg.norm(x[:, None] - x[None], axis=2), atol=1e-5)
    cosine = ev.pairwise_distances(x, "cosine")
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(cosine, 1 - unit @ unit.T, atol=1e-6)


def test_rank1_and_open_set_on_clustered_identities():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16)) * 10
    identities = np.repeat(np.array(list("abcdef")), 3)
    embeddings = centres[np.repeat(np.arange(6), 3)] + rng.normal(size=(18, 16)) * 0.1
    distances = ev.pairwise_distances(embeddings, "euclidean")
    rank1, probes = ev.rank1_identification(distances, identities)
    assert (rank1, probes) == (1.0, 18)
    result = ev.open_set(distances, identities, threshold=2.0)
    assert (result.enrolled_identities, result.unknown_identities) == (3, 3)
    assert result.detect_and_identify_rate == 1.0 and result.unknown_rejection_rate == 1.0
    loose = ev.open_set(distances, identities, threshold=1e9)
    assert loose.unknown_rejection_rate == 0.0


def test_all_pairs_splits_genuine_and_impostor():
    identities = np.array(["a", "a", "b"])
    distances = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], float)
    genuine, impostor = ev.all_pairs(distances, identities)
    assert genuine.tolist() == [1] and sorted(impostor.tolist()) == [2, 3]


def test_roc_refuses_empty_classes():
    with pytest.raises(ValueError, match="genuine and one impostor"):
        ev.roc(np.array([]), np.array([0.5]))


# --- face selection -----------------------------------------------------------------------------

def box_face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(np.array([x1, y1, x2, y2], np.float32), 0.99, np.zeros((5, 2), np.float32))


def test_select_face_central_takes_the_box_nearest_the_centre_and_largest_the_widest():
    big_corner = box_face(0, 0, 200, 220)
    small_centre = box_face(270, 190, 330, 260)  # centre (300, 225), the photo's is (300, 200)
    near_centre = box_face(240, 120, 300, 180)  # centre (270, 150): farther from it
    faces = [big_corner, near_centre, small_centre]
    shape = (400, 600, 3)  # height, width: the centre is (x 300, y 200)
    assert ev.select_face(faces, shape, "central") is small_centre
    assert ev.select_face(faces, shape, "largest") is big_corner
    assert ev.select_face(faces, shape[:2], "central") is small_centre  # gray photos too
    assert ev.select_face([near_centre], shape, "central") is near_centre
    assert ev.select_face([], shape, "central") is None and ev.select_face([], shape, "largest") is None


def test_select_face_refuses_an_unknown_rule_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="'middle'.*central, largest"):
        ev.select_face([box_face(0, 0, 10, 10)], (20, 20), "middle")


@pytest.fixture(scope="module")
def evaluate_tool():
    spec = importlib.util.spec_from_file_location("facegate_evaluate", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def pipeline():
    with FacePipeline.from_models(MODELS) as opened:
        yield opened


ASTRONAUT_HEAD = (slice(0, 300), slice(100, 350))  # rows, columns of data.astronaut() around her face


def two_face_photo() -> tuple[np.ndarray, tuple[float, float]]:
    """A 1400x1000 canvas: the astronaut's head at twice its size in the top-left corner and at its own size
    with her face centred on the canvas. Returns the photo and the small face's centre."""
    head = data.astronaut()[ASTRONAUT_HEAD]
    canvas = np.full((1000, 1400, 3), 128, np.uint8)
    big = cv2.resize(head, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    canvas[:big.shape[0], :big.shape[1]] = big
    face_in_head = (124, 117)  # centre of her face box (180, 61, 268, 174) in the head crop
    top, left = 500 - face_in_head[1], 700 - face_in_head[0]
    canvas[top:top + head.shape[0], left:left + head.shape[1]] = head
    return canvas, (700.0, 500.0)


def test_central_and_largest_pick_different_faces_of_a_two_face_photo(evaluate_tool, pipeline, tmp_path):
    photo, small_centre = two_face_photo()
    found = pipeline.process(photo)
    assert len(found) == 2, [face.box for face, _ in found]
    (small, small_embedding), (big, big_embedding) = sorted(found, key=lambda item: item[0].width)
    assert big.width > 1.6 * small.width
    assert np.linalg.norm((small.box[:2] + small.box[2:]) / 2 - small_centre) < 15
    assert ev.select_face([f for f, _ in found], photo.shape, "central") is small
    assert ev.select_face([f for f, _ in found], photo.shape, "largest") is big

    path = tmp_path / "two_faces.png"
    Image.fromarray(photo).save(path)
    central, failures = evaluate_tool.embed_all(pipeline, [path], "central")
    largest, _ = evaluate_tool.embed_all(pipeline, [path], "largest")
    assert failures == []
    np.testing.assert_allclose(central[0], small_embedding, atol=1e-5)
    np.testing.assert_allclose(largest[0], big_embedding, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory) -> dict[str, object]:
    """A pairs TSV and an identity TSV over three photos: the two-face photo, the astronaut, the cameraman."""
    folder = tmp_path_factory.mktemp("sets")
    photos = {"two.png": two_face_photo()[0], "astronaut.png": data.astronaut(), "camera.png": data.camera()}
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(folder / name)
    pairs = folder / "pairs.tsv"
    pairs.write_text("img_a\timg_b\tsame\ntwo.png\tastronaut.png\t1\ntwo.png\tcamera.png\t0\n"
                     "astronaut.png\tcamera.png\t0\n")
    identities = folder / "identities.tsv"
    identities.write_text("path\tidentity\ntwo.png\tastronaut\nastronaut.png\tastronaut\ncamera.png\tcameraman\n")
    return {"pairs": pairs, "identities": identities, "folder": folder}


def run_json(evaluate_tool, capsys, *argv) -> dict:
    assert evaluate_tool.main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("source, flag, rule", [("pairs", [], "central"), ("pairs", ["--face", "largest"], "largest"),
                                                ("identities", [], "largest"),
                                                ("identities", ["--face", "central"], "central")])
def test_json_report_says_which_face_selection_ran(evaluate_tool, tiny_sets, capsys, source, flag, rule):
    report = run_json(evaluate_tool, capsys, tiny_sets[source], *flag, "--roc", tiny_sets["folder"] / "roc.png")
    assert report["face_selection"] == rule
    for key in ("verification_accuracy", "tar_at_far_1e-3", "roc_auc"):
        assert isinstance(report[key], float), key


def test_text_report_says_which_face_selection_ran(evaluate_tool, tiny_sets, capsys):
    assert evaluate_tool.main([str(tiny_sets["pairs"]), "--roc", str(tiny_sets["folder"] / "roc.png")]) == 0
    assert "face selection: central" in capsys.readouterr().out


def test_unknown_face_rule_is_a_usage_error(evaluate_tool, tiny_sets, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_tool.main([str(tiny_sets["pairs"]), "--face", "middle"])
    assert exit_info.value.code == 2 and "invalid choice: 'middle'" in capsys.readouterr().err
