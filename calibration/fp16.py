"""FP16 as TensorRT runs it, simulated on the CPU: an ONNX model whose numbers are rounded to half precision.

TensorRT's FP16 layers read FP16 weights and write FP16 tensors; ONNX Runtime's
CPU provider has no FP16 kernels for most of these nets. So the simulation keeps
FP32 arithmetic and rounds where TensorRT stores: every FP32 weight, the graph
inputs, and the output of every compute node (a Cast to FP16 and back). What it
leaves out, FP16 accumulation inside a layer, TensorRT mostly avoids too (its
FP16 convolutions accumulate in FP32 on tensor cores), so this is the optimistic
side of FP16; it serves to compare precisions, not to predict bit patterns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.atomic_file import write_atomic

# Nodes that compute new float values; shape and index plumbing is left alone.
ROUNDED_OPS = frozenset({"Add", "AveragePool", "BatchNormalization", "Conv", "Div", "Gemm",
                         "GlobalAveragePool", "MatMul", "Max", "MaxPool", "Min", "Mul", "PRelu", "Relu",
                         "Sigmoid", "Softmax", "Sub", "Sum"})
SUFFIX = ".fp16sim"


def simulate_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` that rounds its weights, inputs and computed tensors to FP16."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float16).astype(np.float32), tensor.name))
    float_inputs = [i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    nodes: list[onnx.NodeProto] = []
    for name in float_inputs:
        nodes += _round_trip(name, f"{name}{SUFFIX}")
    renamed = {name: f"{name}{SUFFIX}" for name in float_inputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        nodes.append(node)
        if node.op_type in ROUNDED_OPS:
            exact = f"{node.output[0]}{SUFFIX}.exact"
            nodes += _round_trip(exact, node.output[0])
            node.output[0] = exact
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def write_fp16_simulation(source: Path, out_dir: Path) -> Path:
    """`source`'s FP16 simulation as out_dir/<stem>.fp16sim.onnx."""
    out = Path(out_dir) / f"{Path(source).stem}{SUFFIX}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, simulate_fp16(onnx.load(str(source))).SerializeToString())
    return out


def _round_trip(source: str, target: str) -> list[onnx.NodeProto]:
    half = f"{target}{SUFFIX}.half"
    return [helper.make_node("Cast", [source], [half], name=half, to=TensorProto.FLOAT16),
            helper.make_node("Cast", [half], [target], name=f"{target}{SUFFIX}.float", to=TensorProto.FLOAT)]
