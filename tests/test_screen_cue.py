"""The recapture cue (engines/screen_cue.py) and the door's liveness rule on synthetic held photos and phones."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from engines import evaluation as ev
from engines.face import Face
from engines.liveness import LivenessChecker
from engines.liveness_temporal import judge_track
from engines.mtcnn import DetectorConfig, MtcnnDetector
from engines.screen_cue import DETAIL_SIZE, MIN_DETAIL, detail_factor, fine_detail, screen_factors
from tests.conftest import MODELS
from tests.synthetic_presentations import FRAME_SIZE, held_picture_frames

ASTRONAUT_FACE = (165.0, 60.0, 265.0, 185.0)  # the astronaut's face box, about 100 x 125 px


def recaptured(rgb: np.ndarray) -> np.ndarray:
    """The frame shown on a lower-resolution screen and photographed again, slightly out of focus."""
    small = cv2.resize(rgb, None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.resize(small, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR), (5, 5), 1.2)


def test_a_recaptured_face_loses_detail_and_score_factor_and_an_intact_one_keeps_its_score():
    astronaut = skimage.data.astronaut()
    sharp, copy = fine_detail(astronaut, ASTRONAUT_FACE), fine_detail(recaptured(astronaut), ASTRONAUT_FACE)
    assert sharp is not None and copy is not None
    assert sharp >= MIN_DETAIL and detail_factor(sharp) == 1.0
    assert copy < sharp / 3 and detail_factor(copy) < 0.8


def test_small_faces_and_flat_patches_are_not_judged():
    astronaut = skimage.data.astronaut()
    assert fine_detail(astronaut, (200, 100, 200 + DETAIL_SIZE - 1, 180)) is None  # narrower than DETAIL_SIZE
    assert fine_detail(np.full((300, 300, 3), 90, np.uint8), (50, 50, 200, 200)) is None  # nothing to compare
    assert detail_factor(None) == 1.0
    faces = [Face(np.asarray(box, np.float32), 0.99, np.zeros((5, 2), np.float32))
             for box in (ASTRONAUT_FACE, (10, 10, 40, 40))]
    factors = screen_factors(recaptured(astronaut), faces)
    assert factors[0] < 0.8 and factors[1] == 1.0


@pytest.fixture(scope="module")
def door_parts():
    with MtcnnDetector(MODELS, DetectorConfig(min_face_size=40)) as detector, \
            LivenessChecker.from_models(MODELS) as checker:
        yield detector, checker


def test_the_score_is_the_nets_score_times_the_recapture_factor(door_parts):
    detector, checker = door_parts
    frame = recaptured(skimage.data.astronaut())
    faces = detector.detect(frame)
    assert faces
    expected = checker._passive(frame, faces) * screen_factors(frame, faces)
    np.testing.assert_allclose(checker.score(frame, faces), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("phone", [False, True], ids=["held photo", "held phone"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_door_rule_denies_a_held_photo_or_phone_of_the_astronaut(door_parts, phone, seed):
    """Random planar sweeps with perspective and hand shake over a real background (skimage's rocket)."""
    detector, checker = door_parts
    picture = skimage.data.astronaut()[:300, 100:380]
    frames = held_picture_frames(picture, skimage.data.rocket(), 12, np.random.default_rng(seed), phone=phone)
    assert frames[0].shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
    scores, landmarks = [], []
    for frame in frames:
        face = ev.select_face(detector.detect(frame), frame.shape, "largest")
        if face is not None:
            scores.append(float(checker.score(frame, [face])[0]))
            landmarks.append(face.landmarks)
    assert len(scores) >= 8  # the face is found in the held picture: the door would judge it
    verdict = judge_track(scores, landmarks, checker.threshold)
    assert not verdict.live, verdict
