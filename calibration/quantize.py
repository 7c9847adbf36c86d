"""INT8 Q/DQ models for TensorRT, by ONNX Runtime's static quantisation over a calibration folder.

The placement follows TensorRT's guidance for explicit quantisation: the inputs
of the weighted layers (Conv, Gemm, MatMul) and of residual Adds are quantised,
their outputs are not, so TensorRT fuses each Q/DQ pair into the layer next to
it and chooses the precision of everything else. TensorRT takes only symmetric
INT8 (zero points 0): activations per tensor, weights per output channel. The
weights stay FP32 behind a QuantizeLinear/DequantizeLinear pair (the form
pytorch-quantization exports and TensorRT 8 and 10 parse) and biases stay FP32.

The output heads (the weighted layers that feed a model output through
weightless ops only) are kept in float by default: quantising the dlib
embedder's last Gemm alone took its FP32-vs-INT8 median cosine on held-out
chips from 0.9993 to 0.9935, and the heads are a negligible share of the work.
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from calibration.batches import CalibrationSetError, iter_batches, read_manifest
from engines.manifest import sha256_of
from engines.model_card import ModelCard, load_card

SIDECAR_VERSION = 1
METHODS = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
           "minmax": CalibrationMethod.MinMax}
# Measured with tools/int8_quality.py --methods percentile,entropy,minmax: percentile keeps the
# embedder closest to FP32 on the development photos and matches entropy on the MTCNN nets.
DEFAULT_METHOD = "percentile"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
QUANTIZED_OPS = (*WEIGHTED_OPS, "Add")
# ONNX Runtime's histogram calibrators keep every intermediate tensor of the batches they are
# given in memory (2.7 GB for 174 P-Net canvases); this many batches at a time bounds that.
BATCHES_PER_PASS = 32
SUFFIX = ".qdq"


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = DEFAULT_METHOD
    float_heads: bool = True  # keep the output layers in float (see the module docstring)
    float_first: bool = False  # keep the layers that read the model input in float
    exclude: tuple[str, ...] = ()  # further node names to keep in float

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method = {self.method!r}: expected one of {sorted(METHODS)}")


@dataclass(frozen=True)
class Quantized:
    model: Path  # the Q/DQ ONNX
    card: Path  # a copy of the card naming it, so a folder of them loads like engines/models
    sidecar: Path  # how it was made: source, calibration manifest, options


class BatchReader(CalibrationDataReader):
    """The calibration batches of one role folder, fed to ONNX Runtime a range of batches at a time."""

    def __init__(self, folder: Path, input_name: str) -> None:
        self.folder, self.input_name = Path(folder), input_name
        self.count = len(read_manifest(self.folder)["batches"])
        self.set_range(0, self.count)

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter_batches(self.folder, start_index, end_index)

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_model(card_path: Path, calibration_dir: Path, out_dir: Path,
                   options: QuantizeOptions = QuantizeOptions()) -> Quantized:
    """The Q/DQ model of the card's ONNX, calibrated on calibration_dir (one role's batch folder), in out_dir.

    Writes <stem>.qdq.onnx, a card <stem>.qdq.yaml naming it and a sidecar <stem>.qdq.json.
    """
    card = load_card(Path(card_path))
    manifest = check_calibration_set(card, Path(calibration_dir))
    source = onnx.load(str(card.model_path))
    float_nodes = float_node_names(source, options)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / f"{card.model_path.stem}{SUFFIX}.onnx"
    reader = BatchReader(calibration_dir, card.input_name)
    with tempfile.TemporaryDirectory(prefix="facegate-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference only: ONNX Runtime's graph optimisations would rewrite the graph TensorRT parses.
        quant_pre_process(str(card.model_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        # ONNX Runtime's calibrators print their progress; stdout is for our results (--json).
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(str(prepared), str(model_path), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=float_nodes + elementwise_adds(source),
                            calibrate_method=METHODS[options.method],
                            extra_options=_extra_options(len(reader)))
    check_opset(source, onnx.load(str(model_path)), model_path)
    card_copy = write_card_copy(card, model_path)
    sidecar = write_sidecar(card, model_path, Path(calibration_dir), manifest, options, float_nodes)
    return Quantized(model_path, card_copy, sidecar)


def _extra_options(batches: int) -> dict[str, Any]:
    return {
        "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT's INT8 has zero points of 0
        "AddQDQPairToWeight": True,
        # Biases stay float: TensorRT's parser takes INT8 DequantizeLinear only, not INT32, and folds them itself.
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
        # Despite its name it splits the data for every calibrator; it needs a divisor of the count.
        "CalibStridedMinMax": _largest_divisor(batches, BATCHES_PER_PASS),
    }


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def check_calibration_set(card: ModelCard, folder: Path) -> dict[str, Any]:
    """The folder's manifest, after checking its batches were recorded for this very model."""
    manifest = read_manifest(folder)
    digest = sha256_of(card.model_path)
    if manifest["model"]["onnx_sha256"] != digest:
        raise CalibrationSetError(f"{folder} was recorded for {manifest['model']['onnx']} "
                                  f"(sha256 {manifest['model']['onnx_sha256'][:12]}...), not for {card.model_path} "
                                  f"(sha256 {digest[:12]}...): rebuild it with this model")
    if manifest["input"]["name"] != card.input_name:
        raise CalibrationSetError(f"{folder}: batches for input {manifest['input']['name']!r}, the card's input "
                                  f"is {card.input_name!r}")
    return manifest


def float_node_names(model: onnx.ModelProto, options: QuantizeOptions) -> list[str]:
    """Names of the nodes kept in float: the heads and first layers where asked, and options.exclude."""
    names = list(options.exclude)
    if options.float_heads:
        names += _weighted_next_to(model, [o.name for o in model.graph.output], upstream=True)
    if options.float_first:
        names += _weighted_next_to(model, [i.name for i in model.graph.input], upstream=False)
    known = {node.name for node in model.graph.node}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"nodes {unknown} to keep in float are not in the model")
    return sorted(set(names))


def elementwise_adds(model: onnx.ModelProto) -> list[str]:
    """Add nodes that are not residual joins: both operands come from the same weighted layers.

    The exported MTCNN nets write PRelu as Relu(x) + slope * Min(x, 0); quantising
    that Add adds three rounding points inside one activation function (and cost
    measurably many faces), while a residual Add joins the outputs of different layers.
    """
    producers = {out: node for node in model.graph.node for out in node.output}

    @functools.cache
    def sources(tensor: str) -> frozenset[str]:
        node = producers.get(tensor)
        if node is None:  # a graph input or a constant: no layer behind it
            return frozenset()
        if node.op_type in WEIGHTED_OPS:
            return frozenset([node.name])
        return frozenset().union(*(sources(name) for name in node.input if name))

    return [node.name for node in model.graph.node
            if node.op_type == "Add" and len({sources(name) for name in node.input}) == 1]


def _weighted_next_to(model: onnx.ModelProto, tensors: list[str], upstream: bool) -> list[str]:
    """The weighted nodes reached from `tensors` through weightless nodes only, up or down the graph."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def neighbours(tensor: str) -> list[onnx.NodeProto]:
        if upstream:
            return [producers[tensor]] if tensor in producers else []
        return consumers.get(tensor, [])

    found, seen, todo = [], set(), list(tensors)
    while todo:
        for node in neighbours(todo.pop()):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in WEIGHTED_OPS:
                found.append(node.name)
            else:
                todo += list(node.input if upstream else node.output)
    return found


def check_opset(source: onnx.ModelProto, quantized: onnx.ModelProto, path: Path) -> None:
    # TensorRT parses what the source was exported for (opset 17); a raised opset would be a surprise there.
    before, after = _opsets(source), _opsets(quantized)
    if after != before:
        raise RuntimeError(f"{path}: quantisation changed the opsets from {before} to {after}")


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}


def write_card_copy(card: ModelCard, model_path: Path) -> Path:
    """The card with `file:` naming the Q/DQ model, beside it; comments and all else kept as they are."""
    text, count = re.subn(r"(?m)^file:.*$", f"file: {model_path.name}", card.path.read_text())
    if count != 1:
        raise ValueError(f"{card.path}: expected one top-level 'file:' line, found {count}")
    path = model_path.with_suffix(".yaml")
    path.write_text(text)
    load_card(path)  # the copy must be a valid card
    return path


def write_sidecar(card: ModelCard, model_path: Path, calibration_dir: Path, manifest: dict[str, Any],
                  options: QuantizeOptions, float_nodes: list[str]) -> Path:
    sidecar = {
        "format_version": SIDECAR_VERSION, "role": card.role, "card_id": card.id,
        "source": {"onnx": card.model_path.name, "sha256": sha256_of(card.model_path)},
        "model": {"onnx": model_path.name, "sha256": sha256_of(model_path)},
        "calibration": {"manifest": str((calibration_dir / "manifest.json").resolve()),
                        "manifest_sha256": sha256_of(calibration_dir / "manifest.json"),
                        "count": manifest["count"], "input_shape": manifest["input"]["shape"]},
        "quantization": {**asdict(options), "float_nodes": float_nodes, "format": "QDQ",
                         "activations": "int8 symmetric per tensor", "weights": "int8 symmetric per channel",
                         "quantized_ops": list(QUANTIZED_OPS), "onnxruntime": onnxruntime.__version__},
    }
    path = model_path.with_suffix(".json")
    path.write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return path
