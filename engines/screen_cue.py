"""A recapture cue beside the liveness nets: how much fine detail the face keeps for its contrast.

A face shown on a phone or a monitor, or printed and held up, reaches the camera through a
second imaging step (the screen's pixel grid and its glass, the print's dots, the second
lens's defocus, one more JPEG): the finest detail is lost first while the coarse contrast
stays. The cue is the variance of the Laplacian of the face box (grey, area-resized to
DETAIL_SIZE) over the variance of its intensity; engines/liveness.py multiplies the nets'
live score by min(1, detail / MIN_DETAIL), so a face with its detail intact keeps its score
and a recaptured one loses in proportion.

Measured on spoof_dev (tools/evaluate_liveness.py, per frame, leave-one-source-out): of the
screen-replay cues tried on the face and on the wider crop (this ratio; the FFT's
high-frequency energy; moire as peaks in the spectrum; refresh banding in the row means;
glare as saturated low-chroma pixels; a bezel as straight edges in the 2.7x crop; the
face's brightness against its surround; saturation and chroma), only this one and the
spectrum's high-frequency energy told live from attack in 9 of the 10 sources, and this one
alone, as a veto, lowered the attacks accepted with no live frame lost where the others each
cost live frames on sources they were not fitted on (glare, banding, colour: those follow a
source's camera and lighting, not the attack). MIN_DETAIL is the 2nd percentile of the live
frames' detail (0.077). Faces smaller than DETAIL_SIZE are not judged (factor 1): their
detail is the camera's and the distance's, not the presentation's.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from engines.face import Face

DETAIL_SIZE = 64  # pixels: the face box is area-resized to this square before the Laplacian
MIN_DETAIL = 0.077  # the least detail ratio kept at full score: spoof_dev's live frames' 2nd percentile


def fine_detail(rgb: np.ndarray, box: Sequence[float]) -> float | None:
    """Laplacian variance over intensity variance of the face box; None for a face too small to judge."""
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if min(x2 - x1, y2 - y1) < DETAIL_SIZE:
        return None
    left, top = max(int(x1), 0), max(int(y1), 0)
    right, bottom = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
    if right - left < DETAIL_SIZE // 2 or bottom - top < DETAIL_SIZE // 2:  # mostly outside the frame
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[top:bottom, left:right]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (DETAIL_SIZE, DETAIL_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    contrast = float(grey.var())
    if contrast < 1.0:  # a flat patch: no detail to compare (a lens cap, a wall); leave it to the nets
        return None
    return float(cv2.Laplacian(grey, cv2.CV_32F).var()) / contrast


def detail_factor(detail: float | None) -> float:
    """What the live score is multiplied by: 1 for intact detail (or a face too small to judge), less below."""
    return 1.0 if detail is None else float(np.clip(detail / MIN_DETAIL, 0.0, 1.0))


def screen_factors(rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """detail_factor of each face, float64, in the order given."""
    return np.array([detail_factor(fine_detail(rgb, face.box)) for face in faces], np.float64)
