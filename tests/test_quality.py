"""Quality figures from landmarks and the aligned chip, and the reasons a face is refused."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from engines import quality
from engines.face import Face

# MTCNN's landmarks on skimage's astronaut (frontal face), from the project's reference measurement.
ASTRONAUT = np.array([[204, 101], [247, 103], [225, 129], [202, 140], [245, 142]], np.float32)
BOX = np.array([180, 61, 268, 174], np.float32)


def face(landmarks=ASTRONAUT, box=BOX, score=0.999):
    return Face(box=box, score=score, landmarks=np.asarray(landmarks, np.float32))


def rotate(points, degrees, centre):
    angle = np.radians(degrees)
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ r.T + centre


@pytest.fixture
def chip():
    return cv2.resize(data.astronaut()[61:174, 180:268], (150, 150))


def test_a_frontal_sharp_face_passes(chip):
    q = quality.measure(face(), chip, (512, 512))
    assert abs(q.yaw) < 0.05 and abs(q.pitch) < 0.1 and abs(q.roll_degrees) < 5
    assert q.eye_distance == pytest.approx(43.05, abs=0.1)
    assert quality.problems(q, quality.QualityLimits()) == []


def test_roll_is_measured_and_does_not_leak_into_yaw(chip):
    tilted = rotate(ASTRONAUT, 30, ASTRONAUT.mean(axis=0))
    q = quality.measure(face(tilted), chip, (512, 512))
    assert q.roll_degrees == pytest.approx(30 + 2.66, abs=0.5)
    assert abs(q.yaw) < 0.05
    assert any("sideways" in p for p in quality.problems(q, quality.QualityLimits()))


def test_a_turned_head_is_refused_with_the_direction(chip):
    turned = ASTRONAUT.copy()
    turned[2, 0] += 25  # the nose far towards the right eye
    problems = quality.problems(quality.measure(face(turned), chip, (512, 512)), quality.QualityLimits())
    assert any("turned right" in p and "look straight" in p for p in problems)


def test_small_blurred_and_cut_off_faces_say_why(chip):
    small = ASTRONAUT * 0.5
    blurred = cv2.GaussianBlur(chip, (0, 0), 5)
    q = quality.measure(face(small, box=np.array([-5, 20, 60, 90], np.float32)), blurred, (512, 512))
    problems = " | ".join(quality.problems(q, quality.QualityLimits()))
    assert "too small" in problems and "move closer" in problems
    assert "too blurred" in problems
    assert "cut off" in problems


def test_a_low_detector_score_is_refused(chip):
    q = quality.measure(face(score=0.5), chip, (512, 512))
    assert any("detector score" in p for p in quality.problems(q, quality.QualityLimits()))
