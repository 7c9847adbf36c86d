"""IoU tracking and the K-of-N decision."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from daemon.decision import Decider, DecisionConfig
from daemon.tracker import Tracker, iou


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
