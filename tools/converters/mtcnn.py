"""MTCNN P-Net, R-Net and O-Net from facenet-pytorch 2.6.0 state dicts to ONNX.

The graphs mirror facenet_pytorch.models.mtcnn layer by layer. Input is RGB
NCHW, normalised by the caller as (x - 127.5) * 0.0078125 (see the model cards).
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import onnx

from converters.onnx_graph import GraphBuilder, float_tensor

UPSTREAM = "facenet-pytorch==2.6.0"
NETS = ("pnet", "rnet", "onet")


@functools.cache  # upstream_net() later replaces the package in sys.modules
def package_dir() -> Path:
    # find_spec does not execute facenet_pytorch/__init__, which would import
    # torchvision (no CPU build is available) and requests.
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"facenet_pytorch is not installed: pip install --no-deps {UPSTREAM}")
    return Path(spec.submodule_search_locations[0])


def load_state_dict(net: str) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(package_dir() / "data" / f"{net}.pt", map_location="cpu", weights_only=True)
    return {key: value.numpy().astype(np.float32) for key, value in state.items()}


def build_model(net: str) -> onnx.ModelProto:
    builders = {"pnet": _pnet, "rnet": _rnet, "onet": _onet}
    return builders[net](load_state_dict(net))


def _conv_prelu(b: GraphBuilder, x: str, w: dict[str, np.ndarray], conv: str, prelu: str) -> str:
    x = b.conv(x, conv, w[f"{conv}.weight"], w[f"{conv}.bias"])
    return _prelu(b, x, w[f"{prelu}.weight"].reshape(-1, 1, 1), prelu)


def _dense_prelu(b: GraphBuilder, x: str, w: dict[str, np.ndarray], dense: str, prelu: str) -> str:
    x = b.gemm(x, dense, w[f"{dense}.weight"], w[f"{dense}.bias"])
    return _prelu(b, x, w[f"{prelu}.weight"], prelu)


def _prelu(b: GraphBuilder, x: str, slope: np.ndarray, name: str) -> str:
    # Relu(x) + slope * Min(x, 0) gives PRelu's values bit for bit, but ONNX
    # Runtime runs it 20-30% faster per net than its own PRelu kernel on a CPU.
    zero = b.constant(f"{name}.zero", np.zeros(1, np.float32))
    positive = b.op("Relu", [x], f"{name}.relu")
    negative = b.op("Mul", [b.op("Min", [x, zero], f"{name}.min"), b.constant(f"{name}.slope", slope)], f"{name}.scaled")
    return b.op("Add", [positive, negative], name)


def _pool(b: GraphBuilder, x: str, name: str, kernel: int, stride: int) -> str:
    return b.op("MaxPool", [x], name, kernel_shape=[kernel, kernel], strides=[stride, stride], ceil_mode=1)


def _flatten_caffe_order(b: GraphBuilder, x: str) -> str:
    # The dense layers were trained on Caffe's (W, H, C) flattening order.
    x = b.op("Transpose", [x], "permute", perm=[0, 3, 2, 1])
    return b.op("Flatten", [x], "flatten", axis=1)


def _pnet(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    b = GraphBuilder("mtcnn_pnet")
    x = _conv_prelu(b, "input", w, "conv1", "prelu1")
    x = _pool(b, x, "pool1", 2, 2)
    x = _conv_prelu(b, x, w, "conv2", "prelu2")
    x = _conv_prelu(b, x, w, "conv3", "prelu3")
    logits = b.conv(x, "conv4_1", w["conv4_1.weight"], w["conv4_1.bias"])
    b.op("Softmax", [logits], "prob", axis=1)
    b.conv(x, "reg", w["conv4_2.weight"], w["conv4_2.bias"])
    return b.model(
        [float_tensor("input", ["batch", 3, "height", "width"])],
        [float_tensor("reg", ["batch", 4, "out_height", "out_width"]),
         float_tensor("prob", ["batch", 2, "out_height", "out_width"])])


def _rnet(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    b = GraphBuilder("mtcnn_rnet")
    x = _conv_prelu(b, "input", w, "conv1", "prelu1")
    x = _pool(b, x, "pool1", 3, 2)
    x = _conv_prelu(b, x, w, "conv2", "prelu2")
    x = _pool(b, x, "pool2", 3, 2)
    x = _conv_prelu(b, x, w, "conv3", "prelu3")
    x = _dense_prelu(b, _flatten_caffe_order(b, x), w, "dense4", "prelu4")
    logits = b.gemm(x, "dense5_1", w["dense5_1.weight"], w["dense5_1.bias"])
    b.op("Softmax", [logits], "prob", axis=1)
    b.gemm(x, "reg", w["dense5_2.weight"], w["dense5_2.bias"])
    return b.model(
        [float_tensor("input", ["batch", 3, 24, 24])],
        [float_tensor("reg", ["batch", 4]), float_tensor("prob", ["batch", 2])])


def _onet(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    b = GraphBuilder("mtcnn_onet")
    x = _conv_prelu(b, "input", w, "conv1", "prelu1")
    x = _pool(b, x, "pool1", 3, 2)
    x = _conv_prelu(b, x, w, "conv2", "prelu2")
    x = _pool(b, x, "pool2", 3, 2)
    x = _conv_prelu(b, x, w, "conv3", "prelu3")
    x = _pool(b, x, "pool3", 2, 2)
    x = _conv_prelu(b, x, w, "conv4", "prelu4")
    x = _dense_prelu(b, _flatten_caffe_order(b, x), w, "dense5", "prelu5")
    logits = b.gemm(x, "dense6_1", w["dense6_1.weight"], w["dense6_1.bias"])
    b.op("Softmax", [logits], "prob", axis=1)
    b.gemm(x, "reg", w["dense6_2.weight"], w["dense6_2.bias"])
    b.gemm(x, "landmarks", w["dense6_3.weight"], w["dense6_3.bias"])
    return b.model(
        [float_tensor("input", ["batch", 3, 48, 48])],
        [float_tensor("reg", ["batch", 4]), float_tensor("landmarks", ["batch", 10]),
         float_tensor("prob", ["batch", 2])])


def upstream_net(net: str):
    """facenet-pytorch's own PNet/RNet/ONet module with its pretrained weights.

    Only models/mtcnn.py is loaded: the package's __init__ and the cascade
    helpers import torchvision, which the nets themselves never use, so the
    detect_face import is satisfied by an empty module.
    """
    root = package_dir()
    stub = types.ModuleType("facenet_pytorch.models.utils.detect_face")
    stub.detect_face = stub.extract_face = None
    for name, path in (("facenet_pytorch", root), ("facenet_pytorch.models", root / "models"),
                       ("facenet_pytorch.models.utils", root / "models" / "utils")):
        package = sys.modules.setdefault(name, types.ModuleType(name))
        package.__path__ = [str(path)]
    sys.modules["facenet_pytorch.models.utils.detect_face"] = stub
    spec = importlib.util.spec_from_file_location("facenet_pytorch.models.mtcnn", root / "models" / "mtcnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"pnet": module.PNet, "rnet": module.RNet, "onet": module.ONet}[net]().eval()


def reference_inputs(net: str, images: list[np.ndarray]) -> list[np.ndarray]:
    """Normalised NCHW batches cut from real face images, shaped for each net."""
    import cv2

    batches = []
    for image in images:
        if net == "pnet":
            for scale in (1.0, 0.5, 0.21):
                resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                batches.append(_normalise(resized[None]))
        else:
            size = 24 if net == "rnet" else 48
            crops = [cv2.resize(image[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA)
                     for s in (48, 96, 128) for y in range(0, image.shape[0] - s, 64)
                     for x in range(0, image.shape[1] - s, 64)]
            batches.append(_normalise(np.stack(crops)))
    return batches


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2).copy()


def reference_max_error(net: str, model_bytes: bytes, images: list[np.ndarray]) -> float:
    """Largest absolute difference between the ONNX graph and facenet-pytorch on real images."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    upstream = upstream_net(net)
    worst = 0.0
    for batch in reference_inputs(net, images):
        ours = dict(zip(names, session.run(None, {"input": batch})))
        with torch.no_grad():
            theirs = [t.numpy() for t in upstream(torch.from_numpy(batch))]
        # facenet-pytorch returns (reg, prob) and O-Net (reg, landmarks, prob).
        for name, expected in zip(("reg", "landmarks", "prob") if net == "onet" else ("reg", "prob"), theirs):
            worst = max(worst, float(np.abs(ours[name] - expected).max()))
    return worst
