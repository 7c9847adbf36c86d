"""A track's liveness (engines/liveness_temporal.py) and the track measures of tools/evaluate_liveness.py --sequences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from types import SimpleNamespace

from daemon.decision import Decider, DecisionConfig
from daemon.tracker import Track
from engines.liveness_temporal import TRACK_STATISTIC, judge_track, track_is_live, track_live_score
from engines.planar_motion import MIN_PAIRS, homography_residual, planar_evidence, similarity_residual
from tools import evaluate_liveness as tool

# A frontal face's 5 landmarks (left eye, right eye, nose, mouth corners), pixels.
FACE = np.array([[100.0, 100.0], [140.0, 100.0], [120.0, 122.0], [104.0, 140.0], [136.0, 140.0]])


def test_the_track_score_is_the_median_of_its_frames():
    assert TRACK_STATISTIC == "median"
    assert track_live_score([0.9, 0.1, 0.8]) == 0.8  # one bad frame does not sink a live track
    assert track_live_score([0.05, 0.95, 0.1, 0.02]) == pytest.approx(0.075)  # one good frame does not lift an attack
    assert track_live_score([0.7, math.nan, 0.9]) == pytest.approx(0.8)  # NaNs are ignored
    assert track_live_score(np.array([1.5, 1.2], np.float32)) == 1.0  # kept in [0, 1]


def test_a_track_without_scores_is_not_live():
    with pytest.raises(ValueError, match="no finite live score"):
        track_live_score([])
    assert track_is_live([], 0.5) is False and track_is_live([math.nan], 0.0) is False
    assert track_is_live([0.5, 0.5], 0.5) is True and track_is_live([0.49, 0.6, 0.3], 0.5) is False


def homography(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    moved = np.hstack([points, np.ones((len(points), 1))]) @ matrix.T
    return moved[:, :2] / moved[:, 2:]


def picture_track(rng: np.random.Generator, frames: int = 8) -> list[np.ndarray]:
    """A flat picture's landmarks under strong random perspective, with 0.1 px of detector noise."""
    track = []
    for _ in range(frames):
        matrix = np.eye(3) + np.array([[0.15, 0.1, 0], [0.1, 0.15, 0], [0.002, 0.002, 0]]) * rng.normal(0, 1, (3, 3))
        track.append(homography(FACE, matrix) + rng.normal(0, 0.1, (5, 2)))
    return track


def head_track(frames: int = 8) -> list[np.ndarray]:
    """A head turning: the nose swings against the eyes and mouth, the far side foreshortens."""
    track = []
    for yaw in np.linspace(-0.3, 0.3, frames):
        moved = FACE.copy()
        moved[2, 0] += 40 * yaw
        moved[[0, 3], 0] += 6 * max(yaw, 0)
        moved[[1, 4], 0] += 6 * min(yaw, 0)
        track.append(moved)
    return track


def test_a_picture_moved_by_homographies_is_flat_a_turning_head_is_not_and_stillness_says_nothing():
    assert homography_residual(FACE, homography(FACE, np.array([[1, 0.2, 3], [0.1, 0.9, 2], [1e-3, 0, 1]]))) < 1e-6
    assert similarity_residual(FACE, 2 * FACE + 7) < 1e-9
    picture = planar_evidence(picture_track(np.random.default_rng(3)))
    assert picture.flat and picture.pairs >= MIN_PAIRS and picture.ratio < 0.1
    head = planar_evidence(head_track())
    assert head.pairs >= MIN_PAIRS and not head.flat and head.ratio > 0.5
    still = planar_evidence([FACE + np.random.default_rng(i).normal(0, 0.2, (5, 2)) for i in range(8)])
    assert still.pairs == 0 and still.ratio is None and not still.flat  # no evidence either way


def test_the_door_rule_denies_a_flat_track_whatever_its_scores_and_keeps_a_live_one():
    rng = np.random.default_rng(5)
    flat = judge_track([0.95] * 8, picture_track(rng), 0.5)
    assert not flat.live and "flat picture" in flat.reason and flat.score == pytest.approx(0.95)
    head = judge_track([0.95] * 8, head_track(), 0.5)
    assert head.live and head.reason is None
    low = judge_track([0.2, 0.3, 0.9], head_track(3), 0.5)
    assert not low.live and low.reason == "live score 0.300 below the liveness threshold 0.500"
    assert not judge_track([], [], 0.5).live


def test_the_decider_keeps_a_tracks_landmarks_and_denies_a_flat_one_as_an_attack():
    match = SimpleNamespace(person_id=7, name="Ada", distance=0.2, runner_up_distance=0.9)
    decider = Decider(DecisionConfig(threshold=0.5, k=8, n=8), live_threshold=0.5)
    flat, head = Track(1, np.zeros(4), 0.0, 0.0), Track(2, np.zeros(4), 0.0, 0.0)
    for points in picture_track(np.random.default_rng(8)):
        flat_decision = decider.observe(flat, match, 0.97, points)
    for points in head_track():
        head_decision = decider.observe(head, match, 0.97, points)
    assert flat_decision.attack and "flat picture" in flat_decision.attack_reason
    assert not head_decision.attack and head_decision.attack_reason is None
    assert len(flat.landmarks) == 8


def test_numbered_frames_of_one_recording_form_a_track_and_a_lone_photo_does_not():
    assert tool.sequence_key("images/nuaa/db__ClientRaw__0001__0001_00_00_01_185.jpg") == (
        "images/nuaa/db__ClientRaw__0001__0001_00_00_01_", 185)
    assert tool.sequence_key("images/x/dataset__real__17.png") == ("images/x/dataset__real__", 17)
    assert tool.sequence_key("images/x/17.png") == ("images/x", 17)
    assert tool.sequence_key("images/x/image_T1.jpg") is None and tool.sequence_key("images/x/face.jpg") is None

    def item(path, label, score, landmarks=FACE):
        return tool.Item(path, label, "print" if label == "spoof" else "none", "src", "image", score=score,
                         landmarks=landmarks.tolist())

    items = [item("a/rec_01_7.jpg", "live", 0.9), item("a/rec_01_3.jpg", "live", 0.2), item("a/rec_01_5.jpg", "live", 0.8),
             item("a/rec_01_9.jpg", "spoof", 0.1),  # same name, other label: not the live track
             item("a/rec_02_1.jpg", "spoof", 0.3), item("a/rec_02_2.jpg", "spoof", 0.1),
             tool.Item("a/rec_02_3.jpg", "spoof", "print", "src", "image")]  # no face: left out
    tracks = {(t.name, t.label): t for t in tool.build_tracks(items)}
    assert set(tracks) == {("a/rec_01_", "live"), ("a/rec_02_", "spoof")}
    assert tracks[("a/rec_01_", "live")].scores == [0.2, 0.8, 0.9]  # frame order
    report = tool.sequences_report(list(tracks.values()), 0.5)
    pooled = report["pooled"]
    assert pooled["single frame"]["live"] == 3 and pooled["single frame"]["bpcer"] == pytest.approx(1 / 3)
    assert pooled["median"]["bpcer"] == 0.0 and pooled["median"]["apcer"] == 0.0  # the median keeps the live track
    assert pooled["min"]["bpcer"] == 1.0
    assert pooled["door"]["apcer"] == 0.0 and pooled["door"]["bpcer"] == 0.0  # still landmarks: the scores decide
    assert pooled["door"]["per_attack"] == {"print": 0.0} and pooled["door"]["apcer_worst_attack"] == 0.0
    assert pooled["planar motion"]["apcer"] == 1.0  # no movement: the planar cue alone accepts everything
