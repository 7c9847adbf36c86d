"""One frame's faces: detect them; then, for the faces the door still has to decide on,
align, check quality, embed the good ones and search the gallery.

Detection and recognition are two steps so that the tracker can sit between them:
a face on a track that is already decided is not embedded again, and a person
standing at the door after the decision costs detection only.
Faces that fail the quality gate are still tracked (so a person walking in
keeps one track) but never vote: a small or turned face must neither grant
nor mark someone as unknown.

The faces that pass the gate also get a live score (presentation-attack detection,
engines/liveness.py), all of a frame's in one batch per liveness net, while liveness
is enabled: the decision judges a track's voting frames by it (daemon/decision.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daemon.config import Config, LivenessSettings
from daemon.gallery import GalleryReader, Match
from engines.align import align
from engines.embedder import Embedder
from engines.face import Face
from engines.liveness import LivenessChecker
from engines.mtcnn import MtcnnDetector
from engines.quality import Quality, measure, problems
from engines.runner import open_runner


@dataclass(frozen=True)
class Observation:
    face: Face
    quality: Quality
    refusals: list[str]  # why the face may not vote; empty when it may
    match: Match | None  # the gallery's answer, for faces that passed the gate
    liveness: float | None = None  # live score in [0, 1] of a face that passed the gate; None with liveness off

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
        self.liveness: LivenessChecker | None = None  # opened while liveness is (or was) enabled
        self._models = config.models
        self.live_enabled = False
        try:
            self.set_liveness(config.liveness)
        except BaseException:
            self.close()
            raise

    def set_liveness(self, settings: LivenessSettings) -> None:
        """Score faces while settings.enabled; the nets are opened the first time (at start or a
        reload that enables liveness) and kept open while disabled, so enabling again is instant."""
        if settings.enabled and self.liveness is None:
            self.liveness = LivenessChecker.from_models(settings.models_dir, threads=self._models.threads,
                                                        sessions=self._models.sessions, engines=settings.engines)
        self.live_enabled = settings.enabled

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detector.detect(rgb)

    def recognise(self, rgb: np.ndarray, faces: list[Face], gallery: GalleryReader) -> list[Observation]:
        """Quality and, for the faces that pass the gate, the gallery's best match and (liveness enabled)
        the live score, in the order of faces."""
        chips = [align(rgb, face.landmarks, self.embedder.card.alignment)[0] for face in faces]
        qualities = [measure(face, chip, rgb.shape, self.limits.edge_margin) for face, chip in zip(faces, chips)]
        refusals = [problems(q, self.limits) for q in qualities]
        good = [i for i, r in enumerate(refusals) if not r]
        matches: list[Match | None] = [None] * len(faces)
        live: list[float | None] = [None] * len(faces)
        if good:
            found = gallery.search(self.embedder.embed([chips[i] for i in good]))
            for i, match in zip(good, found):
                matches[i] = match
            if self.live_enabled:
                for i, score in zip(good, self.liveness.score(rgb, [faces[i] for i in good])):
                    live[i] = float(score)
        return [Observation(f, q, r, m, s) for f, q, r, m, s in zip(faces, qualities, refusals, matches, live)]

    def close(self) -> None:
        self.detector.close()
        self.embedder.close()
        if self.liveness is not None:
            self.liveness.close()
