"""Alignment: the similarity fit recovers known transforms and the warp lands landmarks on the template."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.align import align, similarity_transform
from engines.model_card import Alignment, load_card
from tests.conftest import MODELS

CARD_ALIGNMENT = load_card(MODELS / "dlib_resnet_v1.yaml").alignment
TEMPLATE = CARD_ALIGNMENT.template.astype(np.float64)


def similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def frame_landmarks(chip_to_frame: np.ndarray) -> np.ndarray:
    """Landmarks a detector would report for a face whose chip is chip_to_frame's preimage."""
    return apply(chip_to_frame, TEMPLATE)


@pytest.mark.parametrize("scale, degrees, tx, ty", [
    (1.0, 0.0, 0.0, 0.0), (2.5, 8.0, 120.0, 40.0), (0.4, -35.0, 10.0, 300.0), (7.0, 179.0, 900.0, 1200.0)])
def test_a_known_similarity_is_recovered(scale, degrees, tx, ty):
    chip_to_frame = similarity(scale, degrees, tx, ty)
    recovered = similarity_transform(frame_landmarks(chip_to_frame), TEMPLATE)
    expected = cv2.invertAffineTransform(chip_to_frame)
    np.testing.assert_allclose(recovered, expected, atol=1e-4)


def test_noisy_points_give_the_least_squares_fit():
    rng = np.random.default_rng(0)
    frame = frame_landmarks(similarity(1.7, 12.0, 50.0, 60.0)) + rng.normal(0, 1.5, (5, 2))
    best = similarity_transform(frame, TEMPLATE)
    error = np.sum((apply(best, frame) - TEMPLATE) ** 2)
    for _ in range(200):  # no nearby similarity fits better
        nudged = best + rng.normal(0, 1e-3, (2, 3)) * [[1, 1, 100], [1, 1, 100]]
        nudged[1, :2] = [-nudged[0, 1], nudged[0, 0]]  # keep it a similarity
        assert np.sum((apply(nudged, frame) - TEMPLATE) ** 2) >= error - 1e-9


def test_a_mirrored_face_is_not_fitted_with_a_reflection():
    mirrored = TEMPLATE * [-1, 1] + [300, 0]
    matrix = similarity_transform(mirrored, TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0
    a, b = matrix[0, 0], matrix[0, 1]
    np.testing.assert_allclose(matrix[:, :2], [[a, b], [-b, a]], atol=1e-12)


@pytest.mark.parametrize("src, cause", [
    (np.zeros((5, 2)), "coincide"), (np.ones((5, 3)), "Nx2"), (np.ones((1, 2)), "Nx2"),
    (np.full((5, 2), np.nan), "non-finite")])
def test_degenerate_points_are_refused(src, cause):
    with pytest.raises(ValueError, match=cause):
        similarity_transform(src, TEMPLATE)


def test_mismatched_point_counts_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(TEMPLATE[:4], TEMPLATE)


def dots_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A dark RGB frame with one bright Gaussian dot at each point."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for x, y in points:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def dot_centres(chip: np.ndarray, near: np.ndarray, radius: int = 6) -> np.ndarray:
    """Intensity centroid of the chip around each expected point."""
    gray = chip[..., 0].astype(np.float64)
    centres = []
    for x, y in near:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        window = gray[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1]
        ys, xs = np.mgrid[y0:y0 + window.shape[0], x0:x0 + window.shape[1]]
        centres.append([np.sum(xs * window) / window.sum(), np.sum(ys * window) / window.sum()])
    return np.array(centres)


@pytest.mark.parametrize("scale, degrees", [(1.3, 20.0), (0.8, -10.0), (6.0, 30.0)])
def test_the_warp_puts_the_landmarks_on_the_template(scale, degrees):
    chip_to_frame = similarity(scale, degrees, 200.0, 60.0)
    landmarks = frame_landmarks(chip_to_frame)
    frame = dots_image(landmarks, (1200, 1200), sigma=2.0 * scale)
    chip, matrix = align(frame, landmarks, CARD_ALIGNMENT)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    np.testing.assert_allclose(apply(matrix, landmarks), TEMPLATE, atol=1e-4)
    # Sub-pixel: the dots (sigma 2 chip pixels) are found within 0.25 px of the template.
    np.testing.assert_allclose(dot_centres(chip, TEMPLATE), TEMPLATE, atol=0.25)


def test_outside_the_frame_is_black_as_in_dlib_chips():
    frame = np.full((100, 100, 3), 200, np.uint8)
    landmarks = frame_landmarks(similarity(1.0, 0.0, -60.0, -40.0))  # chip's top-left hangs off the frame
    chip, _ = align(frame, landmarks, CARD_ALIGNMENT)
    # chip (x, y) shows frame (x - 60, y - 40)
    assert (chip[:39] == 0).all() and (chip[:, :59] == 0).all() and (chip[141:] == 0).all()
    assert (chip[41:139, 61:149] == 200).all()


def test_a_large_face_is_averaged_not_aliased():
    # A 1-pixel checkerboard seen at 1/8 scale is mid-gray; bilinear sampling alone
    # would pick single pixels and return black and white.
    board = (np.indices((1600, 1600)).sum(axis=0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(board[..., None], 3, axis=2)
    chip, _ = align(frame, frame_landmarks(similarity(8.0, 5.0, 200.0, 100.0)), CARD_ALIGNMENT)
    assert abs(chip.mean() - 127.5) < 3 and chip.std() < 6


def test_the_chip_size_comes_from_the_alignment():
    wide = Alignment(chip_size=(112, 96), template=TEMPLATE * 0.7)
    frame = np.zeros((300, 300, 3), np.uint8)
    chip, _ = align(frame, frame_landmarks(similarity(1.0, 0.0, 50.0, 50.0)), wide)
    assert chip.shape == (96, 112, 3)
