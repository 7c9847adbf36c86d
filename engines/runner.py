"""The Runner interface: one inference session behind named arrays in and out.

ONNX Runtime and TensorRT are two implementations; the model file picks one
(`.onnx`, or `.engine`/`.plan` with its metadata sidecar).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

Shape = tuple[int | str | None, ...]  # str or None marks a dynamic dimension


class Runner(ABC):
    """Runs one model; `run` takes and returns arrays by tensor name."""

    @property
    @abstractmethod
    def input_shapes(self) -> dict[str, Shape]: ...

    @property
    @abstractmethod
    def output_shapes(self) -> dict[str, Shape]: ...

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @property
    def concurrency(self) -> int:
        """Into how many parts run() splits a batch to compute them side by side (1: none)."""
        return 1

    def close(self) -> None:
        """Release the session; the runner is unusable afterwards."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ENGINE_SUFFIXES = (".engine", ".plan")


def open_runner(path: str | Path, threads: int = 1, sessions: int = 1) -> Runner:
    """The runner for a model file, chosen by its suffix.

    threads and sessions (see OnnxRunner) apply to ONNX models; a TensorRT
    engine runs on the GPU with one execution context.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix == ".onnx":
        from engines.onnx_runner import OnnxRunner

        return OnnxRunner(path, threads=threads, sessions=sessions)
    if path.suffix in ENGINE_SUFFIXES:
        from engines.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path)
    raise ValueError(f"{path}: unknown model format {path.suffix!r}: expected .onnx, .engine or .plan")
