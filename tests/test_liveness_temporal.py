"""A track's liveness (engines/liveness_temporal.py) and the track measures of tools/evaluate_liveness.py --sequences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engines.liveness_temporal import TRACK_STATISTIC, track_is_live, track_live_score
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


def affine(points: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return points @ matrix.T + shift


def test_a_flat_picture_moved_by_affine_maps_is_rigid_and_a_turning_head_is_not():
    rng = np.random.default_rng(3)
    picture = [affine(FACE, np.eye(2) + rng.normal(0, 0.15, (2, 2)), rng.normal(0, 30, 2)) for _ in range(8)]
    assert tool.track_nonrigidity(picture) < 1e-9  # 5 points of a plane, any affine motion
    head = []
    for yaw in np.linspace(-0.3, 0.3, 8):  # the nose swings against the eyes and mouth as the head turns
        moved = FACE.copy()
        moved[2, 0] += 40 * yaw
        moved[[0, 3], 0] += 6 * max(yaw, 0)  # the far side foreshortens
        moved[[1, 4], 0] += 6 * min(yaw, 0)
        head.append(affine(moved, np.array([[1.1, 0.05], [-0.05, 1.1]]), np.array([5.0, -3.0])))
    assert tool.track_nonrigidity(head) > 0.05
    assert tool.affine_residual(FACE, FACE) < 1e-9


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
    assert pooled["landmark non-rigidity"]["apcer"] is None
