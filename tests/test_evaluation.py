"""Verification and identification metrics on hand-made distances with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from engines import evaluation as ev


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
