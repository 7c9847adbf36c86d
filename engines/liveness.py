"""Presentation-attack detection: a live score in [0, 1] per face, from the frame and the face's box.

The liveness nets (Silent-Face-Anti-Spoofing's MiniFASNets, engines/models/minifasnet_*.yaml)
each see the face box scaled by their card's liveness.crop_scale around its centre, kept
inside the frame, resized to the card's input size: context around the face (a phone's
bezel, a photo's edge, moire) is what they judge. Every card of role `liveness` in the
models folder is used; the combined score is, per card's liveness.combine = mean, the mean
over the nets of each one's probability of its live class (upstream sums the softmaxes and
takes the arg max; the mean of the live class keeps the sum's order and stays in [0, 1]).
That passive score is then multiplied by the recapture cue's factor (engines/screen_cue.py:
a face that lost its fine detail to a screen or a print loses score in proportion). A face
is judged live when its score is at or above the cards' threshold.

The crop geometry is upstream's (src/generate_patches.py, CropImage._get_new_box) with the
MTCNN box (x1, y1, x2, y2) as upstream's (x, y, width, height) = (x1, y1, x2 - x1, y2 - y1).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from engines.errors import ModelError
from engines.face import Face
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, cards_of
from engines.mtcnn import _checked_frame
from engines.runner import Runner, open_runner
from engines.screen_cue import screen_factors

PROB_OUTPUT = "prob"  # the card's logical output name: class probabilities
DEFAULT_MAX_BATCH = 32  # faces per inference call; a frame rarely holds more


def crop_box(box: Sequence[float], frame_width: int, frame_height: int, scale: float) -> tuple[int, int, int, int]:
    """Upstream's crop of a face box: (left, top, right, bottom), inclusive pixel indices.

    The box is scaled by `scale` around its centre, the scale first limited so the crop
    fits the frame ((frame size - 1) / box size), then shifted back inside the frame where
    it sticks out; the corners are truncated to integers as upstream does.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    width, height = x2 - x1, y2 - y1
    if not (np.isfinite([x1, y1, x2, y2]).all() and width > 0 and height > 0):
        raise ValueError(f"face box {[x1, y1, x2, y2]}: expected finite corners with x2 > x1 and y2 > y1")
    scale = min((frame_height - 1) / height, (frame_width - 1) / width, scale)
    centre_x, centre_y = x1 + width / 2, y1 + height / 2
    left, right = centre_x - width * scale / 2, centre_x + width * scale / 2
    top, bottom = centre_y - height * scale / 2, centre_y + height * scale / 2
    if left < 0:
        right -= left
        left = 0
    if top < 0:
        bottom -= top
        top = 0
    if right > frame_width - 1:
        left -= right - frame_width + 1
        right = frame_width - 1
    if bottom > frame_height - 1:
        top -= bottom - frame_height + 1
        bottom = frame_height - 1
    return int(left), int(top), int(right), int(bottom)


def liveness_crop(rgb: np.ndarray, box: Sequence[float], scale: float, size: tuple[int, int]) -> np.ndarray:
    """The net's input image for one face: the crop_box region of the frame resized to size (width, height)."""
    left, top, right, bottom = crop_box(box, rgb.shape[1], rgb.shape[0], scale)
    return cv2.resize(rgb[top:bottom + 1, left:right + 1], size)  # upstream: cv2's default, bilinear


class _Net:
    """One liveness net: its card and runner, checked against each other."""

    def __init__(self, card: ModelCard, runner: Runner) -> None:
        if card.role != "liveness" or card.liveness is None or card.input_size is None:
            raise ModelError(f"{card.path}: role {card.role!r} is not a liveness card with an input size")
        self.card, self.runner = card, runner
        self.output = card.outputs.get(PROB_OUTPUT)
        if self.output not in runner.output_shapes:
            raise ModelError(f"{card.path}: outputs.{PROB_OUTPUT} = {self.output!r} is not an output of the model "
                             f"(it has {sorted(runner.output_shapes)})")
        shape = runner.input_shapes.get(card.input_name)
        width, height = card.input_size
        if shape is None or len(shape) != 4 or tuple(shape[1:]) != (3, height, width):
            raise ModelError(f"{card.path}: the model's input {card.input_name!r} is {shape}, the card says "
                             f"[N, 3, {height}, {width}]")
        classes = runner.output_shapes[self.output][-1]
        if isinstance(classes, int) and not card.liveness.live_class < classes:
            raise ModelError(f"{card.path}: liveness.live_class = {card.liveness.live_class}, but the model has "
                             f"{classes} classes")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def live_probability(self, rgb: np.ndarray, faces: Sequence[Face], max_batch: int) -> np.ndarray:
        crops = np.stack([liveness_crop(rgb, face.box, self.card.liveness.crop_scale, self.card.input_size)
                          for face in faces])
        step = self.fixed_batch or max_batch
        return np.concatenate([self._run(crops[i:i + step]) for i in range(0, len(crops), step)])

    def _run(self, crops: np.ndarray) -> np.ndarray:
        count = len(crops)
        if self.fixed_batch and count < self.fixed_batch:  # a fixed-batch engine: pad, then drop the padding
            crops = np.concatenate([crops, np.zeros((self.fixed_batch - count, *crops.shape[1:]), crops.dtype)])
        prob = self.runner.run({self.card.input_name: self.card.preprocess(crops)})[self.output]
        return np.asarray(prob, np.float64)[:count, self.card.liveness.live_class]


class LivenessChecker:
    """Live scores for the faces of a frame from every liveness card given; owns its runners.

    Each net gets all faces of a frame in one batch (up to max_batch), which its runner
    splits across its sessions (engines.onnx_runner.OnnxRunner) like the other models.
    """

    def __init__(self, cards: Sequence[ModelCard], runners: Sequence[Runner] | None = None, *, threads: int = 1,
                 sessions: int = 1, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if not cards:
            raise ModelError("no liveness model cards given")
        if runners is not None and len(runners) != len(cards):
            raise ValueError(f"{len(runners)} runners for {len(cards)} liveness cards")
        if max_batch < 1:
            raise ValueError(f"max_batch = {max_batch}: expected >= 1")
        rules = {(card.liveness.combine if card.liveness else None, card.threshold) for card in cards}
        if len(rules) != 1:
            raise ModelError("the liveness cards disagree on liveness.combine or liveness.threshold: "
                             + ", ".join(f"{card.path.name} {card.liveness and card.liveness.combine} "
                                         f"{card.threshold}" for card in cards))
        self.max_batch = max_batch
        self._pool: ThreadPoolExecutor | None = None
        self._nets: list[_Net] = []
        taken: list[Runner] = []
        try:
            for i, card in enumerate(cards):
                taken.append(runners[i] if runners is not None else open_runner(card.model_path, threads, sessions))
                self._nets.append(_Net(card, taken[-1]))
        except (ModelError, OSError):
            for runner in taken + list(runners or [])[len(taken):]:
                runner.close()
            raise
        # A frame usually holds one face, which no runner can split; where every runner computes
        # side by side anyway (ONNX Runtime sessions, thread-safe), the nets run side by side too:
        # measured about 20% faster for one face on two cores, the same scores. A TensorRT engine
        # (concurrency 1) stays on the calling thread, which owns the CUDA context.
        if len(self._nets) > 1 and all(net.runner.concurrency > 1 for net in self._nets):
            self._pool = ThreadPoolExecutor(len(self._nets) - 1, "liveness")

    @classmethod
    def from_models(cls, models_dir: str | Path | None = None, *, threads: int = 1, sessions: int = 1,
                    max_batch: int = DEFAULT_MAX_BATCH,
                    engines: Mapping[str, Path] | None = None) -> "LivenessChecker":
        """Every card with role 'liveness' in models_dir (default engines/models); engines maps a card id
        to the TensorRT engine built from its model (tools/build_engine.py), which then runs instead."""
        folder = Path(models_dir or MODELS_DIR)
        cards = cards_of(folder, "liveness")
        if not cards:
            raise ModelError(f"{folder}: no model card with role 'liveness'")
        unknown = sorted(set(engines or {}) - {card.id for card in cards})
        if unknown:
            raise ModelError(f"{folder}: engines given for {unknown}, which no liveness card there is")
        runners: list[Runner] = []
        try:
            for card in cards:
                runners.append(open_runner((engines or {}).get(card.id, card.model_path), threads, sessions))
        except BaseException:
            for runner in runners:
                runner.close()
            raise
        return cls(cards, runners, max_batch=max_batch)

    @property
    def cards(self) -> list[ModelCard]:
        return [net.card for net in self._nets]

    @property
    def threshold(self) -> float:
        """The least combined score judged live (the cards' liveness.threshold)."""
        return self._nets[0].card.threshold

    @property
    def threshold_source(self) -> str:
        return self._nets[0].card.threshold_source

    def score(self, rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """One live score in [0, 1] per face (float32, in the order given) for an HxWx3 uint8 RGB frame:
        the nets' passive score times the recapture cue's factor (engines.screen_cue.screen_factors)."""
        frame = _checked_frame(rgb)
        return (self._passive(frame, faces) * screen_factors(frame, faces)).astype(np.float32)

    def _passive(self, frame: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not len(faces):
            return np.empty(0, np.float64)
        first, *others = self._nets
        if self._pool is None:
            total = sum(net.live_probability(frame, faces, self.max_batch) for net in self._nets)
        else:
            pending = [self._pool.submit(net.live_probability, frame, faces, self.max_batch) for net in others]
            total = first.live_probability(frame, faces, self.max_batch) + sum(p.result() for p in pending)
        return np.clip(total / len(self._nets), 0.0, 1.0)

    def is_live(self, scores: np.ndarray | float) -> np.ndarray | bool:
        """Whether scores reach the threshold."""
        return np.asarray(scores) >= self.threshold

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for net in self._nets:
            net.runner.close()

    def __enter__(self) -> "LivenessChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
