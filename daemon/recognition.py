"""One frame's faces: detect them; then, for the faces the door still has to decide on,
align, check quality, embed the good ones and search the gallery.

Detection and recognition are two steps so that the tracker can sit between them:
a face on a track that is already decided is not embedded again, and a person
standing at the door after the decision costs detection only.
Faces that fail the quality gate are still tracked (so a person walking in
keeps one track) but never vote: a small or turned face must neither grant
nor mark someone as unknown.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.config import Config
from daemon.gallery import GalleryReader, Match
from engines.align import align
from engines.embedder import Embedder
from engines.face import Face
from engines.mtcnn import MtcnnDetector
from engines.quality import Quality, measure, problems
from engines.runner import open_runner


@dataclass(frozen=True)
class Observation:
    face: Face
    quality: Quality
    refusals: list[str]  # why the face may not vote; empty when it may
    match: Match | None  # the gallery's answer, for faces that passed the gate

    @property
    def usable(self) -> bool:
        return not self.refusals


class Recogniser:
    """Owns the inference sessions; use it from one thread (TensorRT contexts are per thread)."""

    def __init__(self, config: Config) -> None:
        engines = config.models.engines
        runners = {role: open_runner(path) for role, path in engines.items() if role != "embedder"}
        self.detector = MtcnnDetector(config.models.models_dir, config.detector, runners=runners,
                                      threads=config.models.threads, sessions=config.models.sessions)
        try:
            embedder_runner = open_runner(engines["embedder"]) if "embedder" in engines else None
            self.embedder = Embedder(config.embedder, embedder_runner, threads=config.models.threads,
                                     sessions=config.models.sessions)
        except BaseException:
            self.detector.close()
            raise
        self.limits = config.quality

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detector.detect(rgb)

    def recognise(self, rgb: np.ndarray, faces: list[Face], gallery: GalleryReader) -> list[Observation]:
        """Quality and, for the faces that pass the gate, the gallery's best match, in the order of faces."""
        chips = [align(rgb, face.landmarks, self.embedder.card.alignment)[0] for face in faces]
        qualities = [measure(face, chip, rgb.shape, self.limits.edge_margin) for face, chip in zip(faces, chips)]
        refusals = [problems(q, self.limits) for q in qualities]
        good = [i for i, r in enumerate(refusals) if not r]
        matches: list[Match | None] = [None] * len(faces)
        if good:
            found = gallery.search(self.embedder.embed([chips[i] for i in good]))
            for i, match in zip(good, found):
                matches[i] = match
        return [Observation(f, q, r, m) for f, q, r, m in zip(faces, qualities, refusals, matches)]

    def close(self) -> None:
        self.detector.close()
        self.embedder.close()
