"""Frame in, faces with embeddings out: detector -> align -> embedder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engines.align import align
from engines.embedder import Embedder
from engines.face import Face
from engines.images import to_rgb8
from engines.manifest import MODELS_DIR


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


class FacePipeline:
    """Detects, aligns and embeds every face in a frame; owns and closes its detector and embedder."""

    def __init__(self, detector: Detector, embedder: Embedder) -> None:
        self.detector = detector
        self.embedder = embedder

    @classmethod
    def from_models(cls, models_dir: str | Path | None = None, threads: int = 1,
                    detector_config: Any = None) -> "FacePipeline":
        """MTCNN and the embedder from the cards in models_dir (default engines/models).

        detector_config is an engines.mtcnn.DetectorConfig (None: its defaults).
        """
        from engines.mtcnn import DetectorConfig, MtcnnDetector  # the pipeline also serves other detectors

        models_dir = Path(models_dir or MODELS_DIR)
        detector = MtcnnDetector(models_dir, detector_config or DetectorConfig(), threads=threads)
        try:
            return cls(detector, Embedder.from_models(models_dir, threads=threads))
        except BaseException:
            detector.close()
            raise

    def process(self, rgb: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        """Each face in a frame with its embedding; a gray frame (an IR camera's) is taken too."""
        frame = to_rgb8(rgb)
        faces = self.detector.detect(frame)
        alignment = self.embedder.card.alignment
        chips = [align(frame, face.landmarks, alignment)[0] for face in faces]
        return list(zip(faces, self.embedder.embed(chips)))

    def close(self) -> None:
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()
        self.embedder.close()

    def __enter__(self) -> "FacePipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
