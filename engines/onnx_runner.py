"""Runner on ONNX Runtime's CPU execution provider."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.runner import Runner, Shape


class OnnxRunner(Runner):
    """ONNX Runtime sessions of one model that share each batch between them.

    The MTCNN nets and the dlib ResNet are too small for ONNX Runtime to split:
    two intra-op threads measured twice slower than one on two cores (see
    tools/bench.py). Splitting the batch instead (R-Net's candidates, O-Net's,
    the faces to embed) between `sessions` sessions of `threads` threads each,
    run side by side, does use the cores: each part is a whole, independent
    inference. ONNX Runtime releases the GIL while a session runs. A batch is
    split only where every input and output has a dynamic leading (batch) axis;
    the results equal one session's (each sample is computed on its own).
    """

    def __init__(self, path: str | Path, threads: int = 1, sessions: int = 1) -> None:
        if sessions < 1:
            raise ValueError(f"sessions = {sessions}: expected >= 1")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        first = _session(path, options)
        self._outputs = [o.name for o in first.get_outputs()]
        batched = all(_dynamic(t.shape[0]) for t in [*first.get_inputs(), *first.get_outputs()] if t.shape)
        count = sessions if batched else 1
        self._sessions = [first] + [_session(path, options) for _ in range(count - 1)]
        self._pool = ThreadPoolExecutor(count - 1, "onnx-runner") if count > 1 else None

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {i.name: tuple(i.shape) for i in self._sessions[0].get_inputs()}

    @property
    def output_shapes(self) -> dict[str, Shape]:
        return {o.name: tuple(o.shape) for o in self._sessions[0].get_outputs()}

    @property
    def concurrency(self) -> int:
        return len(self._sessions)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = min((len(a) for a in inputs.values()), default=0)
        parts = min(self.concurrency, batch)
        if parts <= 1:
            return self._run(self._sessions[0], inputs)
        bounds = np.linspace(0, batch, parts + 1).round().astype(int)
        chunks = [{name: array[start:stop] for name, array in inputs.items()}
                  for start, stop in zip(bounds[:-1], bounds[1:])]
        others = [self._pool.submit(self._run, session, chunk)
                  for session, chunk in zip(self._sessions[1:], chunks[1:])]
        results = [self._run(self._sessions[0], chunks[0])] + [future.result() for future in others]
        return {name: np.concatenate([r[name] for r in results]) for name in self._outputs}

    def _run(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, session.run(self._outputs, inputs)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._sessions = []


def _session(path: str | Path, options: ort.SessionOptions) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int)
