"""Runner on ONNX Runtime's CPU execution provider."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.runner import Runner, Shape


class OnnxRunner(Runner):
    """One ONNX Runtime session.

    One intra-op thread is the default: the MTCNN nets and the dlib ResNet are
    too small to split, and measured twice slower with two threads on two cores
    (see tools/bench.py); parallelism belongs between stages or frames.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {i.name: tuple(i.shape) for i in self._session.get_inputs()}

    @property
    def output_shapes(self) -> dict[str, Shape]:
        return {o.name: tuple(o.shape) for o in self._session.get_outputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs)))

    def close(self) -> None:
        self._session = None
