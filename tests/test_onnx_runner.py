"""OnnxRunner: several sessions share a batch and give the one-session results."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from engines.onnx_runner import OnnxRunner
from tests.conftest import MODELS
from tests.test_embedder import channel_means_model


class RecordingRunner(OnnxRunner):
    """Records which session ran which part of a batch, and on which thread."""

    def __init__(self, path, sessions: int) -> None:
        super().__init__(path, sessions=sessions)
        self.parts: list[tuple[int, int, str]] = []  # session index, part size, thread name

    def _run(self, session, inputs):
        size = len(next(iter(inputs.values())))
        self.parts.append((self._sessions.index(session), size, threading.current_thread().name))
        return super()._run(session, inputs)


def rnet_crops(count: int) -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, (count, 3, 24, 24)).astype(np.float32)


@pytest.mark.parametrize("count", [2, 7, 40])
def test_two_sessions_give_the_one_session_results(count):
    crops = {"input": rnet_crops(count)}
    with OnnxRunner(MODELS / "mtcnn_rnet.onnx") as one, OnnxRunner(MODELS / "mtcnn_rnet.onnx", sessions=2) as two:
        expected, split = one.run(crops), two.run(crops)
    assert split.keys() == expected.keys()
    for name in expected:
        assert split[name].shape == expected[name].shape
        np.testing.assert_allclose(split[name], expected[name], rtol=0, atol=1e-6)


def test_a_batch_is_split_between_the_sessions_side_by_side():
    runner = RecordingRunner(MODELS / "mtcnn_rnet.onnx", sessions=3)
    assert runner.concurrency == 3
    runner.run({"input": rnet_crops(7)})
    runner.close()
    assert sorted((index, size) for index, size, _ in runner.parts) == [(0, 2), (1, 3), (2, 2)]
    threads = {index: thread for index, _, thread in runner.parts}
    assert threads[0] == threading.current_thread().name  # the caller computes one part itself
    assert threading.current_thread().name not in (threads[1], threads[2])


def test_a_batch_of_one_runs_on_one_session_on_the_calling_thread():
    runner = RecordingRunner(MODELS / "mtcnn_rnet.onnx", sessions=2)
    runner.run({"input": rnet_crops(1)})
    assert runner.parts == [(0, 1, threading.current_thread().name)]


def test_a_model_with_a_fixed_batch_keeps_one_session(tmp_path):
    channel_means_model(tmp_path / "fixed.onnx", batch=2)
    with OnnxRunner(tmp_path / "fixed.onnx", sessions=4) as runner:
        assert runner.concurrency == 1
        out = runner.run({"input": np.ones((2, 3, 150, 150), np.float32)})
    np.testing.assert_array_equal(out["embedding"], np.ones((2, 3)))


def test_sessions_must_be_positive():
    with pytest.raises(ValueError, match="sessions = 0"):
        OnnxRunner(MODELS / "mtcnn_rnet.onnx", sessions=0)
