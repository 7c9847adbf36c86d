"""A small, deterministic ONNX graph builder shared by the converters.

Building graphs with onnx.helper instead of torch.onnx.export keeps every
conversion byte-reproducible (no exporter version, timestamps or random node
names in the file) and keeps torch out of the graph-building path entirely.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "facegate-export"


class GraphBuilder:
    """Collects nodes and float32 initializers under deterministic names."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        array = np.ascontiguousarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None,
             stride: int = 1, pads: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        inputs = [x, self.constant(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.constant(f"{name}.bias", bias))
        kernel = list(weight.shape[2:])
        return self.op("Conv", inputs, name, kernel_shape=kernel, strides=[stride, stride], pads=list(pads))

    def gemm(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None) -> str:
        """Dense layer with a PyTorch-style [out, in] weight."""
        inputs = [x, self.constant(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.constant(f"{name}.bias", bias))
        return self.op("Gemm", inputs, name, transB=1)

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def float_tensor(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
