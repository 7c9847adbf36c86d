"""A temporal 3D cue over a track: does the face move as a flat picture does?

A photo or a phone held up to the camera is a plane: between any two frames its 5 landmarks
(eyes, nose, mouth corners) are one homography apart, however it is tilted, turned or shaken.
A real head turning or nodding is not: the nose moves against the eyes and mouth (parallax),
and expressions and blinks move the rest. For a pair of frames two residuals are compared,
each the RMS over the 5 points divided by the eye distance:
  shape change  the residual of the best similarity (shift, rotation, scale): how much the
                face's layout changed beyond moving in the image plane;
  non-planar    the residual of the best homography: what no plane's motion explains.
A plane's non-planar residual stays at the detector's noise while its shape change grows with
perspective; a head's grows with it. Pure detector noise gives a ratio near sqrt(2/6) = 0.58
(a homography leaves 2 of the 10 coordinates free, a similarity 6), so a ratio well below that
on pairs that did change shape says "flat". Pairs that barely changed shape (a person standing
still, a picture held still) are not evidence either way: then the passive score decides alone.

Measured on spoof_dev's videos (tools/evaluate_liveness.py --sequences; pairs with a shape
change of at least MIN_SHAPE_CHANGE): the phone replay's median ratio 0.28 (15 pairs), the
two live videos' 0.87 and 0.84 (26 and 332 pairs); the synthetic held-photo and held-phone
sequences of tests/synthetic_presentations.py stay below 0.3. MAX_FLAT_RATIO sits between.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_SHAPE_CHANGE = 0.03  # a pair whose similarity residual (over the eye distance) is below this is not evidence
MAX_FLAT_RATIO = 0.3  # flat when the median non-planar / shape-change ratio of the evidence is at most this
MIN_PAIRS = 3  # pairs of frames that changed shape, needed before the cue says anything
MAX_FRAMES = 16  # the latest frames of a track compared pairwise (120 pairs at most)


@dataclass(frozen=True)
class PlanarEvidence:
    pairs: int  # frame pairs that changed shape enough to judge
    ratio: float | None  # their median non-planar / shape-change ratio; None without pairs

    @property
    def flat(self) -> bool:
        """Whether the track moved as one plane: enough pairs, and a ratio at most MAX_FLAT_RATIO."""
        return self.pairs >= MIN_PAIRS and self.ratio is not None and self.ratio <= MAX_FLAT_RATIO


def _eye_distance(points: np.ndarray) -> float:
    return max(float(np.linalg.norm(points[1] - points[0])), 1e-6)


def similarity_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual of the least-squares similarity taking landmarks a to b, over b's eye distance."""
    za = (a[:, 0] - a[:, 0].mean()) + 1j * (a[:, 1] - a[:, 1].mean())
    zb = (b[:, 0] - b[:, 0].mean()) + 1j * (b[:, 1] - b[:, 1].mean())
    norm = np.vdot(za, za).real
    scale = np.vdot(za, zb) / norm if norm > 0 else 0.0  # rotation and scale as one complex factor
    return float(np.sqrt(np.mean(np.abs(zb - scale * za) ** 2))) / _eye_distance(b)


def homography_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS residual of the algebraic least-squares homography (normalised DLT) taking landmarks a to b, over
    b's eye distance. The DLT by one SVD, not cv2.findHomography's refinement: 120 pairs cost about 2 ms
    instead of 90, on the door's thread, at a track's decision."""
    def normaliser(points: np.ndarray) -> np.ndarray:
        centre = points.mean(0)
        spread = max(float(np.sqrt(np.mean(np.sum((points - centre) ** 2, axis=1)))), 1e-9)
        k = np.sqrt(2) / spread
        return np.array([[k, 0, -k * centre[0]], [0, k, -k * centre[1]], [0, 0, 1]])

    ta, tb = normaliser(a), normaliser(b)
    pa = np.hstack([a, np.ones((len(a), 1))]) @ ta.T
    pb = np.hstack([b, np.ones((len(b), 1))]) @ tb.T
    zeros = np.zeros((len(a), 3))
    rows = np.vstack([np.hstack([zeros, -pa, pa * pb[:, 1:2]]), np.hstack([pa, zeros, -pa * pb[:, 0:1]])])
    matrix = np.linalg.inv(tb) @ np.linalg.svd(rows)[2][-1].reshape(3, 3) @ ta
    mapped = np.hstack([a, np.ones((len(a), 1))]) @ matrix.T
    if np.any(np.abs(mapped[:, 2]) < 1e-12):  # a point mapped to infinity: no plane explains the pair
        return float("inf")
    residual = mapped[:, :2] / mapped[:, 2:] - b
    return float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)))) / _eye_distance(b)


def planar_evidence(landmarks: Sequence[np.ndarray]) -> PlanarEvidence:
    """The cue over a track's per-frame 5x2 landmarks (frame order; the latest MAX_FRAMES are used)."""
    points = [np.asarray(p, np.float64).reshape(5, 2) for p in landmarks][-MAX_FRAMES:]
    points = [p for p in points if np.isfinite(p).all()]
    ratios = []
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            change = similarity_residual(points[i], points[j])
            if change >= MIN_SHAPE_CHANGE:
                ratios.append(homography_residual(points[i], points[j]) / change)
    return PlanarEvidence(len(ratios), float(np.median(ratios)) if ratios else None)
