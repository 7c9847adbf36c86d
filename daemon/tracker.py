"""IoU tracking: the same face across consecutive frames gets the same track."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of (x1, y1, x2, y2) boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class Track:
    id: int
    box: np.ndarray
    first_seen: float
    last_seen: float
    frames: int = 1
    votes: list = field(default_factory=list)  # per frame: a person id, or None for "no confident match"
    live: list = field(default_factory=list)  # per frame of votes: its live score, or None where not computed
    # per frame, the latest engines.planar_motion.MAX_FRAMES: the face's 5x2 landmarks (the planar-motion cue)
    landmarks: list = field(default_factory=list)
    decided: bool = False  # a person decision (grant, deny or attack) was made: the track never decides again
    reported_unknown: bool = False


class Tracker:
    """Greedy IoU association of each frame's faces with the live tracks.

    Faces move little between frames at door distance, so the highest-IoU
    pairing is enough; a track unseen for max_age seconds ends.
    """

    def __init__(self, iou_threshold: float = 0.3, max_age: float = 1.0) -> None:
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[np.ndarray], now: float) -> list[Track]:
        """The track of each box, in the order of boxes; creates and expires tracks."""
        self.tracks = [t for t in self.tracks if now - t.last_seen <= self.max_age]
        assigned: list[Track | None] = [None] * len(boxes)
        if self.tracks and boxes:
            overlap = iou(np.array([t.box for t in self.tracks]), np.array(boxes))
            for flat in np.argsort(overlap, axis=None)[::-1]:
                t, b = np.unravel_index(flat, overlap.shape)
                if overlap[t, b] < self.iou_threshold:
                    break
                if assigned[b] is None and all(a is not self.tracks[t] for a in assigned):
                    assigned[b] = self._extend(self.tracks[t], boxes[b], now)
        for i, box in enumerate(boxes):
            if assigned[i] is None:
                assigned[i] = self._start(box, now)
        return assigned

    def _extend(self, track: Track, box: np.ndarray, now: float) -> Track:
        track.box, track.last_seen = np.asarray(box, np.float32), now
        track.frames += 1
        return track

    def _start(self, box: np.ndarray, now: float) -> Track:
        track = Track(self._next_id, np.asarray(box, np.float32), now, now)
        self._next_id += 1
        self.tracks.append(track)
        return track
