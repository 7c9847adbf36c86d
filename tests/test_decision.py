"""IoU tracking and the K-of-N decision."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from daemon.decision import Decider, DecisionConfig, claimed_threshold, threshold_in_force
from daemon.tracker import Tracker, iou
from engines.model_card import find_card
from tests.conftest import MODELS


@dataclass
class M:
    person_id: int
    name: str
    distance: float
    runner_up_distance: float = 1.0


def box(x, y, size=50):
    return np.array([x, y, x + size, y + size], np.float32)


def test_iou_known_values():
    assert iou(box(0, 0, 10), box(0, 0, 10))[0, 0] == pytest.approx(1.0)
    assert iou(box(0, 0, 10), box(5, 0, 10))[0, 0] == pytest.approx(50 / 150)
    assert iou(box(0, 0, 10), box(20, 20, 10))[0, 0] == 0.0


def test_a_moving_face_keeps_its_track_and_a_new_face_gets_another():
    tracker = Tracker(iou_threshold=0.3, max_age=1.0)
    [a] = tracker.update([box(100, 100)], now=0.0)
    a2, b = tracker.update([box(105, 102), box(400, 100)], now=0.1)
    assert a2 is a and b is not a
    assert a.frames == 2 and b.frames == 1


def test_two_faces_never_share_one_track():
    tracker = Tracker()
    [a] = tracker.update([box(100, 100)], now=0.0)
    first, second = tracker.update([box(102, 100), box(98, 100)], now=0.1)
    assert first is not second and a in (first, second)


def test_an_unseen_track_expires():
    tracker = Tracker(max_age=0.5)
    [a] = tracker.update([box(100, 100)], now=0.0)
    [b] = tracker.update([box(100, 100)], now=0.6)
    assert b is not a and tracker.tracks == [b]


def feed(decider, track, matches):
    return [d for d in (decider.observe(track, m) for m in matches) if d is not None]


def new_track():
    return Tracker().update([box(0, 0)], now=0.0)[0]


def test_k_of_n_agreeing_frames_decide_once():
    decider = Decider(DecisionConfig(threshold=0.5, margin=0.05, k=3, n=5))
    track = new_track()
    decisions = feed(decider, track, [M(7, "ann", 0.40), None, M(7, "ann", 0.30), M(7, "ann", 0.35), M(7, "ann", 0.2)])
    assert len(decisions) == 1
    [decision] = decisions
    assert (decision.person_id, decision.name, decision.distance) == (7, "ann", 0.30)


def test_matches_above_threshold_or_without_margin_do_not_count():
    decider = Decider(DecisionConfig(threshold=0.5, margin=0.1, k=2, n=3))
    track = new_track()
    weak = [M(7, "ann", 0.55), M(7, "ann", 0.30, runner_up_distance=0.35), M(7, "ann", 0.52)]
    assert feed(decider, track, weak)[0].person_id is None  # reported as unknown, never as ann


def test_split_votes_between_two_people_do_not_grant_either():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=4))
    track = new_track()
    decisions = feed(decider, track, [M(1, "a", 0.3), M(2, "b", 0.3), M(1, "a", 0.3), M(2, "b", 0.3)])
    assert all(d.person_id is None for d in decisions)


def test_unknown_is_reported_once_and_a_later_match_still_decides():
    decider = Decider(DecisionConfig(threshold=0.5, k=2, n=3))
    track = new_track()
    decisions = feed(decider, track, [None] * 6 + [M(4, "bob", 0.3)] * 2)
    assert [d.person_id for d in decisions] == [None, 4]


def test_votes_outside_the_window_are_forgotten():
    decider = Decider(DecisionConfig(threshold=0.5, k=2, n=2))
    track = new_track()
    decisions = feed(decider, track, [M(1, "a", 0.3), None, M(1, "a", 0.3)])
    assert all(d.person_id is None for d in decisions)


def test_bad_k_and_n_are_refused():
    with pytest.raises(ValueError, match="decision.k = 6"):
        DecisionConfig(threshold=0.5, k=6, n=5)


# --- liveness over the voting frames ------------------------------------------------------------------

LIVE = 0.5  # a fake threshold: these tests feed fake live scores, the nets are tested in test_liveness.py


def feed_live(decider, track, frames):
    """frames: (match, live score) pairs."""
    return [d for d in (decider.observe(track, m, live) for m, live in frames) if d is not None]


def test_a_live_person_is_granted_with_the_median_live_score_of_the_voting_frames():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    track = new_track()
    [decision] = feed_live(decider, track, [(M(7, "ann", 0.3), 0.9), (M(7, "ann", 0.3), 0.7), (M(7, "ann", 0.3), 0.95)])
    assert decision.person_id == 7 and not decision.attack
    assert decision.live_score == pytest.approx(0.9)
    assert track.decided


def test_a_spoof_is_denied_once_as_an_attack_and_the_track_is_decided():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    track = new_track()
    decisions = feed_live(decider, track, [(M(7, "ann", 0.3), 0.1)] * 12)
    assert len(decisions) == 1, "an attack is decided once, not judged again every frame"
    [decision] = decisions
    assert decision.attack and decision.person_id == 7 and decision.name == "ann"
    assert decision.live_score == pytest.approx(0.1)
    assert track.decided


def test_a_median_below_the_threshold_is_an_attack_though_some_frames_are_above():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    track = new_track()
    [decision] = feed_live(decider, track, [(M(7, "ann", 0.3), 0.95), (M(7, "ann", 0.3), 0.2), (M(7, "ann", 0.3), 0.3)])
    assert decision.attack and decision.live_score == pytest.approx(0.3)


def test_one_odd_frame_neither_denies_a_live_face_nor_grants_a_photo():
    """Why the median: one bad frame of a real face, or one lucky frame of a photo, does not decide."""
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    live, photo = new_track(), Tracker().update([box(300, 300)], now=0.0)[0]
    [granted] = feed_live(decider, live, [(M(7, "ann", 0.3), 0.9), (M(7, "ann", 0.3), 0.05), (M(7, "ann", 0.3), 0.8)])
    [denied] = feed_live(decider, photo, [(M(7, "ann", 0.3), 0.1), (M(7, "ann", 0.3), 0.99), (M(7, "ann", 0.3), 0.2)])
    assert not granted.attack and denied.attack


def test_only_the_frames_that_voted_for_the_person_count():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    track = new_track()
    frames = [(M(7, "ann", 0.3), 0.9), (M(7, "ann", 0.9), 0.0), (None, 0.0), (M(7, "ann", 0.3), 0.8),
              (M(7, "ann", 0.3), 0.7)]
    [decision] = feed_live(decider, track, frames)
    assert not decision.attack and decision.live_score == pytest.approx(0.8)


def test_with_liveness_off_identity_alone_decides():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5))  # no live threshold: liveness disabled
    track = new_track()
    [decision] = feed_live(decider, track, [(M(7, "ann", 0.3), None)] * 3)
    assert decision.person_id == 7 and not decision.attack and decision.live_score is None
    low = new_track()
    [decision] = feed_live(decider, low, [(M(7, "ann", 0.3), 0.01)] * 3)  # scores, if any, are not judged
    assert not decision.attack


def test_liveness_switched_on_mid_track_waits_for_k_scored_voting_frames():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5))  # liveness off: frames are not scored
    track = new_track()
    assert feed_live(decider, track, [(M(7, "ann", 0.3), None)] * 2) == []  # two votes, one short of k
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)  # SIGHUP: liveness on
    assert feed_live(decider, track, [(M(7, "ann", 0.3), 0.9)] * 2) == []
    [decision] = feed_live(decider, track, [(M(7, "ann", 0.3), 0.9)])
    assert not decision.attack and decision.live_score == pytest.approx(0.9)


def test_an_unknown_face_carries_the_median_live_score_of_its_window():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5), live_threshold=LIVE)
    track = new_track()
    [decision] = feed_live(decider, track, [(None, s) for s in (0.2, 0.9, 0.8, 0.7, 0.1)])
    assert decision.person_id is None and not decision.attack and decision.live_score == pytest.approx(0.7)


# --- the threshold in force: held at decision.max_fpir for the gallery's size -------------------------------

def test_an_unknown_face_names_the_closest_person_its_frames_came_to():
    decider = Decider(DecisionConfig(threshold=0.5, k=3, n=5))
    track = new_track()
    decisions = feed(decider, track, [M(3, "bob", 0.62), M(4, "cy", 0.55), None, M(3, "bob", 0.7), M(4, "cy", 0.58)])
    [unknown] = decisions
    assert unknown.person_id is None and unknown.distance is None
    assert (unknown.nearest.person_id, unknown.nearest.name, unknown.nearest.distance) == (4, "cy", 0.55)


def test_the_decider_votes_at_the_threshold_it_is_given_and_follows_a_new_one():
    decider = Decider(DecisionConfig(), threshold=0.45)
    assert decider.vote(M(7, "ann", 0.44)) == 7 and decider.vote(M(7, "ann", 0.46)) is None
    decider.threshold = 0.40  # the gallery grew: the service sets the stricter threshold
    assert decider.vote(M(7, "ann", 0.44)) is None
    with pytest.raises(ValueError, match="needs a threshold"):
        Decider(DecisionConfig())


def test_a_bigger_gallery_gets_a_stricter_threshold_from_the_cards_impostor_tail():
    card = find_card(MODELS, "embedder")
    config = DecisionConfig()  # max_fpir 1e-3, no explicit threshold
    values = [threshold_in_force(config, card, n).value for n in (1, 100, 1_000, 10_000)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    at_1000 = threshold_in_force(config, card, 1_000)
    assert at_1000.expected_fpir == pytest.approx(1e-3, rel=1e-6) and "max_fpir 0.001" in at_1000.source
    # A stricter target is a stricter threshold; a claimed identity (1:1) the loosest of all.
    assert threshold_in_force(DecisionConfig(max_fpir=1e-4), card, 1_000).value < at_1000.value
    assert claimed_threshold(config, card).value == values[0]


def test_an_explicit_threshold_overrides_the_model_and_a_card_without_a_tail_keeps_its_own():
    card = find_card(MODELS, "embedder")
    fixed = threshold_in_force(DecisionConfig(threshold=0.5), card, 5_000)
    assert fixed.value == 0.5 and fixed.source == "decision.threshold in the config"
    assert fixed.expected_fpir > threshold_in_force(DecisionConfig(threshold=0.5), card, 50).expected_fpir
    untailed = replace(card, impostor_tail=None)
    kept = threshold_in_force(DecisionConfig(), untailed, 5_000)
    assert kept.value == card.threshold and "no embedding.impostor_tail" in kept.source
    assert kept.expected_fpir is None


def test_max_fpir_is_checked():
    for bad in (0, 1, 2):
        with pytest.raises(ValueError, match=f"decision.max_fpir = {bad} is not allowed"):
            DecisionConfig(max_fpir=bad)
