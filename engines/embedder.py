"""Face embeddings from aligned chips, fed and read as the model card says.

`distance` is the one place that says how far apart two embeddings are: the
card's metric, lower is more alike, compared against the card's threshold.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from engines.errors import ModelError
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, find_card
from engines.runner import Runner, open_runner

EMBEDDING_OUTPUT = "embedding"  # the card's logical output name


def distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray | float:
    """Distance between embeddings along the last axis, broadcasting the rest.

    euclidean: the L2 distance; cosine: 1 - cosine similarity (0 same direction,
    2 opposite). One query against a gallery: distance(q[D], gallery[M, D]) -> [M].
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric == "euclidean":
        result = np.linalg.norm(a - b, axis=-1)
    elif metric == "cosine":
        result = 1.0 - np.sum(_unit(a) * _unit(b), axis=-1)
    else:
        raise ValueError(f"unknown metric {metric!r}: expected euclidean or cosine")
    return float(result) if np.ndim(result) == 0 else result


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def mirrored(chips: np.ndarray) -> np.ndarray:
    """N x H x W x C chips flipped left to right (the face's left is its right)."""
    return np.ascontiguousarray(chips[:, :, ::-1])


def _static_size(dims: tuple) -> int | None:
    """Elements per sample of an output ([N, 128] and [N, 128, 1, 1] both give 128); None if dynamic."""
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


class Embedder:
    """Embeds face chips with the model a card describes; owns its runner and closes it in close().

    A model with a fixed batch size (a TensorRT engine built for one) sets
    max_batch to that size and gets short batches padded.

    Where the card says embedding.flip_average, each chip's horizontal mirror is
    embedded beside it, in the same batch (so a runner with several sessions
    computes the two side by side), and the chip's embedding is the mean of the
    two; mirrors count toward max_batch.
    """

    def __init__(self, card: ModelCard, runner: Runner | None = None, *, threads: int = 1, sessions: int = 1,
                 max_batch: int = 16) -> None:
        if card.role != "embedder" or card.alignment is None or card.embedding_dim is None:
            raise ModelError(f"{card.path}: role {card.role!r} is not an embedder card")
        if max_batch < 1:
            raise ValueError(f"max_batch = {max_batch}: expected >= 1")
        self.card = card
        self.runner = runner if runner is not None else open_runner(card.model_path, threads, sessions)
        try:
            self._output = self._output_name()
            self._fixed_batch = self._check_input()
            self._check_output_dim(_static_size(self.runner.output_shapes[self._output][1:]))
        except ModelError:
            self.runner.close()
            raise
        self.max_batch = self._fixed_batch or max_batch

    @classmethod
    def from_models(cls, models_dir: str | Path | None = None, *, threads: int = 1, sessions: int = 1,
                    max_batch: int = 16) -> "Embedder":
        """The embedder of the single card with role 'embedder' in models_dir (default engines/models)."""
        card = find_card(Path(models_dir or MODELS_DIR), "embedder")
        return cls(card, threads=threads, sessions=sessions, max_batch=max_batch)

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    @property
    def threshold(self) -> float:
        """The card's default match threshold on `distance` (a match is below it)."""
        return self.card.threshold

    def embed(self, chips: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """N x dim float32 embeddings of N aligned HxWx3 uint8 RGB chips, in batches of max_batch."""
        batch = self._chip_array(chips)
        count = len(batch)
        if self.card.flip_average:  # chip 0, its mirror, chip 1, its mirror, ...
            batch = np.stack([batch, mirrored(batch)], axis=1).reshape(-1, *batch.shape[1:])
        parts = [self._run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        embeddings = np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)
        if self.card.flip_average:
            pairs = embeddings.reshape(count, 2, embeddings.shape[1])
            if self.card.normalize or self.card.metric == "cosine":  # a direction: average unit vectors
                pairs = _unit(pairs)
            embeddings = pairs.mean(axis=1, dtype=np.float32)
        if self.card.normalize:
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
        """`distance` under this card's metric."""
        return distance(a, b, self.card.metric)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _output_name(self) -> str:
        tensor = self.card.outputs.get(EMBEDDING_OUTPUT)
        if tensor is None:
            raise ModelError(f"{self.card.path}: outputs has no {EMBEDDING_OUTPUT!r} entry")
        if tensor not in self.runner.output_shapes:
            raise ModelError(f"{self.card.path}: the model has no output {tensor!r}, "
                             f"only {sorted(self.runner.output_shapes)}")
        return tensor

    def _check_input(self) -> int | None:
        """Checks the model input against the card; returns its batch size where the model fixes one."""
        shapes = self.runner.input_shapes
        shape = shapes.get(self.card.input_name)
        if shape is None:
            raise ModelError(f"{self.card.path}: the model has no input {self.card.input_name!r}, "
                             f"only {sorted(shapes)}")
        width, height = self.card.alignment.chip_size
        expected = (3, height, width)
        if len(shape) != 4 or any(isinstance(got, int) and got != want for got, want in zip(shape[1:], expected)):
            raise ModelError(f"{self.card.path}: model input {self.card.input_name!r} has shape {list(shape)}, "
                             f"but the card's chips need [N, {', '.join(map(str, expected))}]")
        if self.card.input_size is not None and self.card.input_size != self.card.alignment.chip_size:
            raise ModelError(f"{self.card.path}: input.size {list(self.card.input_size)} differs from "
                             f"alignment.chip_size {list(self.card.alignment.chip_size)}")
        return shape[0] if isinstance(shape[0], int) else None

    def _check_output_dim(self, dim: int | None) -> None:
        # A dynamic dimension (None) is checked on every real output instead.
        if dim is not None and dim != self.dim:
            raise ModelError(f"{self.card.path}: the model's {self._output!r} output has dimension {dim}, "
                             f"but embedding.dim is {self.dim}")

    def _chip_array(self, chips: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        width, height = self.card.alignment.chip_size
        expected = (height, width, 3)
        if isinstance(chips, np.ndarray):
            batch = chips
        else:
            shapes = sorted({np.shape(chip) for chip in chips} - {expected})
            if shapes:
                raise ValueError(f"expected {height}x{width}x3 chips, got shapes {shapes}")
            batch = np.stack(chips) if len(chips) else np.empty((0, *expected), np.uint8)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"expected N x {height} x {width} x 3 chips, got shape {batch.shape}")
        if batch.dtype != np.uint8:
            raise ValueError(f"expected uint8 chips, got {batch.dtype}")
        return batch

    def _run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        if self._fixed_batch and count < self._fixed_batch:  # a fixed-batch engine: pad, then drop the padding
            batch = np.concatenate([batch, np.zeros((self._fixed_batch - count, *batch.shape[1:]), batch.dtype)])
        outputs = self.runner.run({self.card.input_name: self.card.preprocess(batch)})
        embeddings = np.asarray(outputs[self._output], dtype=np.float32)[:count].reshape(count, -1)
        self._check_output_dim(embeddings.shape[1])
        return embeddings
