"""The open-set threshold model: a generalized Pareto tail of impostor distances, and the threshold that holds
FPIR for a gallery's size (engines/open_set.py)."""
from __future__ import annotations

import numpy as np
import pytest

from engines import open_set
from engines.model_card import ModelCardError, find_card, load_card
from tests.conftest import MODELS


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_fit_recovers_the_parameters_of_a_pareto_tail():
    rng = np.random.default_rng(1)
    shape, scale, start = -0.2, 0.05, 0.7
    # 1% of the sample lies below `start`, distributed as start minus a generalized Pareto variable.
    tail = start - scale / shape * ((1 - rng.random(20_000)) ** -shape - 1)
    bulk = start + rng.random(1_980_000)
    fitted = open_set.fit_tail(np.concatenate([tail, bulk]), tail_fraction=0.01)
    assert fitted.tail_fraction == pytest.approx(0.01, rel=1e-3)
    assert fitted.tail_start == pytest.approx(start, abs=1e-3)
    assert fitted.shape == pytest.approx(shape, abs=0.05) and fitted.scale == pytest.approx(scale, rel=0.08)


def test_far_and_threshold_are_inverse_and_a_bigger_gallery_gets_a_stricter_threshold():
    tail = open_set.ImpostorTail(0.7, 0.01, -0.15, 0.06, 1_000_000)
    for far in (1e-3, 1e-5, 1e-8):
        assert tail.far(tail.threshold_for_far(far)) == pytest.approx(far, rel=1e-9)
    thresholds = [open_set.identification_threshold(tail, 1e-3, n) for n in (1, 10, 100, 1_000, 10_000)]
    assert all(a > b for a, b in zip(thresholds, thresholds[1:]))
    # One comparison (a claimed identity, 1:1) at FAR 1e-3 is the loosest of them.
    assert open_set.verification_threshold(tail, 1e-3) == thresholds[0]
    assert open_set.expected_fpir(tail, thresholds[3], 1_000) == pytest.approx(1e-3, rel=1e-6)


def test_a_gallery_too_small_for_the_tail_gets_its_start_and_the_model_refuses_beyond_it():
    tail = open_set.ImpostorTail(0.7, 0.01, -0.15, 0.06, 1_000_000)
    assert open_set.identification_threshold(tail, 0.5, 1) == 0.7
    with pytest.raises(ValueError, match="above the impostor tail"):
        tail.far(0.75)
    with pytest.raises(ValueError, match="max_fpir"):
        open_set.comparison_far(1.5, 10)


@pytest.mark.parametrize("max_fpir", [1e-2, 1e-3])
def test_measured_fpir_stays_near_the_target_as_the_gallery_grows(max_fpir):
    """Synthetic faces: random directions in 128 dimensions (every pair an impostor pair). The tail is fitted on
    one set's pairs; galleries of other vectors of growing size are then searched by 40,000 strangers, each
    falsely identified when its nearest template lies under the threshold for that gallery's size."""
    rng = np.random.default_rng(7)
    dim = 128
    fit_set = unit(rng.standard_normal((2_000, dim)))
    pairs = 1 - fit_set @ fit_set.T
    tail = open_set.fit_tail(pairs[np.triu_indices(len(fit_set), k=1)])
    strangers = unit(rng.standard_normal((40_000, dim))).astype(np.float32)
    measured = {}
    for size in (30, 300, 3_000):
        gallery = unit(rng.standard_normal((size, dim))).astype(np.float32)
        nearest = 1 - np.max(strangers @ gallery.T, axis=1)
        threshold = open_set.identification_threshold(tail, max_fpir, size)
        measured[size] = float(np.mean(nearest < threshold))
    # 40,000 probes: at 1e-3, 40 expected false identifications (Poisson: 30-50 within 1.6 sd).
    for size, fpir in measured.items():
        assert max_fpir / 2 < fpir < max_fpir * 2, f"gallery {size}: measured FPIR {fpir:g}, target {max_fpir:g}"
    # The same fixed threshold (the smallest gallery's) lets far more strangers in at the largest gallery.
    fixed = open_set.identification_threshold(tail, max_fpir, 30)
    gallery = unit(rng.standard_normal((3_000, dim))).astype(np.float32)
    assert np.mean(1 - np.max(strangers @ gallery.T, axis=1) < fixed) > 10 * max_fpir


def test_the_shipped_embedder_cards_record_an_impostor_tail():
    for card in (find_card(MODELS, "embedder"), load_card(MODELS / "dlib_resnet_v1.yaml")):
        tail = card.impostor_tail
        assert tail is not None, card.path
        assert "tools/evaluate.py impostors" in tail.source and tail.comparisons > 1_000_000
        # At one comparison the model's FAR-1e-3 distance lies near the card's own 1:1 threshold (measured on
        # other photos, dev_identities.tsv: SFace 0.597 against 0.64, dlib 0.578 against 0.48).
        assert abs(open_set.verification_threshold(tail, 1e-3) - card.threshold) < 0.12


def test_a_bad_impostor_tail_names_the_card_and_the_key(tmp_path):
    text = (MODELS / "sface_2021dec.yaml").read_text().replace("tail_fraction:", "tail_fraktion:", 1)
    card = tmp_path / "sface.yaml"
    card.write_text(text)
    with pytest.raises(ModelCardError, match=r"sface.yaml: embedding.impostor_tail = .* exactly the keys"):
        load_card(card)
    card.write_text((MODELS / "sface_2021dec.yaml").read_text().replace("comparisons: ", "comparisons: -", 1))
    with pytest.raises(ModelCardError, match="comparisons"):
        load_card(card)
