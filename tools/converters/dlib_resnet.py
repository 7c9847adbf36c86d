"""dlib's face descriptor ResNet (dlib_face_recognition_resnet_model_v1.dat) to ONNX.

The .dat file is dlib's own binary serialisation of ``anet_type`` from
dlib/examples/dnn_face_recognition_ex.cpp (a 29-layer ResNet trained with
loss_metric). It is parsed here without dlib, following dlib/serialize.h,
dlib/dnn/core.h, layers.h, input.h, loss.h and cuda/tensor.h, and rebuilt
layer by layer: each affine layer (batch norm frozen into a per-channel scale
and shift) is folded into the convolution before it.

Input is RGB NCHW 150x150, normalised by the caller as
(pixel - INPUT_MEAN[c]) * INPUT_SCALE, exactly what dlib's
input_rgb_image_sized layer does. The output is dlib's raw 128-d descriptor.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from converters.onnx_graph import GraphBuilder, float_tensor

INPUT_MEAN = (122.782, 117.001, 104.298)
INPUT_SCALE = 1 / 256
EMBEDDING_DIM = 128
INPUT_SIZE = 150

# float_details exponents that stand for inf, -inf and NaN (dlib/float_details.h).
_FLOAT_SPECIALS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_MAX_VERSION_LENGTH = 32


# ---------------------------------------------------------------------------
# The expected network, bottom (input) to top (loss).


@dataclass(frozen=True)
class _Spec:
    """One dlib layer as anet_type declares it; name is the ONNX node name."""

    kind: str
    name: str = ""
    filters: int = 0
    size: int = 0
    stride: int = 1
    tag: int = 0


def _residual_block(name: str, filters: int, downsample: bool) -> list[_Spec]:
    # ares      = relu<add_prev1<block<tag1<SUBNET>>>>
    # ares_down = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<SUBNET>>>>>>>>
    # block     = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUBNET>>>>>
    stride = 2 if downsample else 1
    layers = [
        _Spec("tag", tag=1),
        _Spec("con", f"{name}_conv1", filters=filters, size=3, stride=stride),
        _Spec("affine"),
        _Spec("relu", f"{name}_relu1"),
        _Spec("con", f"{name}_conv2", filters=filters, size=3, stride=1),
        _Spec("affine"),
    ]
    if downsample:
        layers += [
            _Spec("tag", tag=2),
            _Spec("skip", tag=1),
            _Spec("avg_pool", f"{name}_shortcut_pool", size=2, stride=2),
            _Spec("add_prev", f"{name}_add", tag=2),
        ]
    else:
        layers.append(_Spec("add_prev", f"{name}_add", tag=1))
    layers.append(_Spec("relu", f"{name}_relu"))
    return layers


def _architecture() -> list[_Spec]:
    """anet_type without its input and loss layers, in forward order."""
    layers = [
        _Spec("con", "stem_conv", filters=32, size=7, stride=2),
        _Spec("affine"),
        _Spec("relu", "stem_relu"),
        _Spec("max_pool", "stem_pool", size=3, stride=2),
    ]
    # dlib numbers the levels from the top, so level4 is the first one run.
    levels = (("level4", 32, 3, False), ("level3", 64, 4, True), ("level2", 128, 3, True),
              ("level1", 256, 3, True), ("level0", 256, 1, True))
    for level, filters, blocks, downsamples in levels:
        for index in range(blocks):
            layers += _residual_block(f"{level}_block{index + 1}", filters, downsamples and index == 0)
    layers += [
        _Spec("avg_pool", "embedding_pool", size=0, stride=1),
        _Spec("fc", "embedding_fc", filters=EMBEDDING_DIM),
    ]
    return layers


# ---------------------------------------------------------------------------
# dlib's serialisation primitives (dlib/serialize.h, dlib/cuda/tensor.h).


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def _take(self, count: int) -> bytes:
        if self._pos + count > len(self._data):
            raise ValueError(f"dlib model file is truncated at byte {self._pos}")
        chunk = self._data[self._pos:self._pos + count]
        self._pos += count
        return chunk

    def int(self) -> int:
        # A control byte (bit 7: negative, low 4 bits: byte count) then the
        # magnitude in little-endian order.
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8:
            raise ValueError(f"bad integer control byte {control:#x} at byte {self._pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def bool(self) -> bool:
        byte = self._take(1)
        if byte not in (b"0", b"1"):
            raise ValueError(f"bad bool {byte!r} at byte {self._pos - 1}")
        return byte == b"1"

    def float(self) -> float:
        # float_details: the mantissa comes first, then the exponent (the
        # comment at the top of serialize.h says the reverse; the code wins).
        mantissa, exponent = self.int(), self.int()
        if exponent in _FLOAT_SPECIALS:
            return _FLOAT_SPECIALS[exponent]
        return math.ldexp(mantissa, exponent)

    def version(self, what: str, *allowed: int) -> int:
        version = self.int()
        if version not in allowed:
            raise ValueError(f"unexpected {what} version {version} (expected {allowed})")
        return version

    def tag(self, what: str, *allowed: str) -> str:
        """Read a layer's version string (a std::string: length, then bytes)."""
        start, length = self._pos, self.int()
        if not 0 < length <= _MAX_VERSION_LENGTH:
            raise ValueError(f"no dlib layer version string for {what} at byte {start}")
        version = self._take(length).decode("latin-1")
        if version not in allowed:
            raise ValueError(f"expected dlib layer {' or '.join(allowed)} for {what}, found {version!r}")
        return version

    def tensor(self) -> np.ndarray:
        # Version 2 resizable_tensor: four dimensions, then raw little-endian float32.
        self.version("resizable_tensor", 2)
        shape = tuple(self.int() for _ in range(4))
        data = self._take(4 * math.prod(shape))
        return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version("alias_tensor", 1)
        return tuple(self.int() for _ in range(4))


# ---------------------------------------------------------------------------
# Parsing: nested add_layer objects each write their version, then their
# subnetwork, then themselves, so the file holds all the version numbers from
# the top down, then the input layer, then each layer's details from the
# bottom up (dlib/dnn/core.h).


@dataclass
class _Layer:
    spec: _Spec
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    pads: tuple[int, int] = (0, 0)


def _parse(data: bytes) -> list[_Layer]:
    reader = _Reader(data)
    _read_loss(reader)
    specs = _architecture()
    input_version = _read_layer_versions(reader, specs)
    _read_input_layer(reader)
    layers = []
    for index, spec in enumerate(specs):
        if spec.kind in ("tag", "skip"):
            layers.append(_Layer(spec))
            continue
        layers.append(_read_details(reader, spec))
        _skip_add_layer_state(reader, input_version if index == 0 else None)
    if not reader.at_end():
        raise ValueError("unexpected data after the last layer: not dlib's face recognition ResNet v1")
    return layers


def _read_loss(reader: _Reader) -> None:
    reader.version("add_loss_layer", 1)
    if reader.tag("the loss", "loss_metric_", "loss_metric_2") == "loss_metric_2":
        for _ in range(2):
            reader.float()  # margin and distance threshold: training only


def _read_layer_versions(reader: _Reader, specs: list[_Spec]) -> int:
    """Check the top-down version numbers; returns the bottom add_layer's."""
    for spec in reversed(specs[1:]):
        if spec.kind in ("tag", "skip"):
            reader.version(f"add_{spec.kind}_layer", 1)
        else:
            reader.version(f"add_layer ({spec.kind})", 2)
    # The bottom add_layer wraps the input layer and has its own versions.
    return reader.version("add_layer (input)", 2, 3)


def _read_input_layer(reader: _Reader) -> None:
    reader.tag("the input", "input_rgb_image_sized")
    mean = tuple(reader.float() for _ in range(3))
    if np.any(np.float32(mean) != np.float32(INPUT_MEAN)):
        raise ValueError(f"input mean {mean} differs from INPUT_MEAN {INPUT_MEAN}")
    size = (reader.int(), reader.int())
    if size != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"input size {size} differs from {INPUT_SIZE}x{INPUT_SIZE}")


def _skip_add_layer_state(reader: _Reader, input_version: int | None) -> None:
    # Training state only: setup/stale/disabled flags and cached tensors.
    for _ in range(3):
        reader.bool()
    reader.tensor()  # x_grad
    reader.tensor()  # cached_output
    reader.tensor()  # params_grad, or grad_final under the input layer
    if input_version == 3:
        reader.int()  # sample_expansion_factor


def _read_details(reader: _Reader, spec: _Spec) -> _Layer:
    readers = {"con": _read_con, "affine": _read_affine, "relu": _read_plain,
               "add_prev": _read_plain, "max_pool": _read_pool, "avg_pool": _read_pool,
               "fc": _read_fc}
    return readers[spec.kind](reader, spec)


def _read_plain(reader: _Reader, spec: _Spec) -> _Layer:
    reader.tag(spec.name, f"{spec.kind}_")
    return _Layer(spec)


def _read_con(reader: _Reader, spec: _Spec) -> _Layer:
    version = reader.tag(spec.name, "con_4", "con_5")
    params = reader.tensor().ravel()
    shape = (reader.int(), reader.int(), reader.int(), reader.int(), reader.int())
    pads = (reader.int(), reader.int())
    filters = reader.alias_tensor()
    reader.alias_tensor()  # biases: always right after the filters in params
    for _ in range(4):
        reader.float()  # learning-rate and weight-decay multipliers
    if version == "con_5":
        reader.bool()  # use_bias: params holds a bias exactly when it is set
    expected = (spec.filters, spec.size, spec.size, spec.stride, spec.stride)
    if shape != expected:
        raise ValueError(f"{spec.name}: (filters, nr, nc, stride_y, stride_x) = {shape}, expected {expected}")
    count = math.prod(filters)
    weights = {"weight": params[:count].reshape(filters)}
    if params.size == count + spec.filters:
        weights["bias"] = params[count:]
    elif params.size != count:
        raise ValueError(f"{spec.name}: {params.size} parameters do not fit filters {filters}")
    return _Layer(spec, weights, pads)


def _read_affine(reader: _Reader, spec: _Spec) -> _Layer:
    reader.tag("affine", "affine_")
    params = reader.tensor().ravel()
    gamma, beta = reader.alias_tensor(), reader.alias_tensor()
    if reader.int() != 0:
        raise ValueError("affine layer is not in CONV_MODE")
    count = math.prod(gamma)
    if gamma != beta or params.size != 2 * count:
        raise ValueError(f"affine layer has {params.size} parameters for gamma {gamma} and beta {beta}")
    return _Layer(spec, {"gamma": params[:count], "beta": params[count:]})


def _read_pool(reader: _Reader, spec: _Spec) -> _Layer:
    reader.tag(spec.name, f"{spec.kind}_2")
    shape = (reader.int(), reader.int(), reader.int(), reader.int())
    pads = (reader.int(), reader.int())
    expected = (spec.size, spec.size, spec.stride, spec.stride)
    if shape != expected:
        raise ValueError(f"{spec.name}: (nr, nc, stride_y, stride_x) = {shape}, expected {expected}")
    return _Layer(spec, pads=pads)


def _read_fc(reader: _Reader, spec: _Spec) -> _Layer:
    reader.tag(spec.name, "fc_2")
    outputs, inputs = reader.int(), reader.int()
    params = reader.tensor()
    for _ in range(2):
        reader.alias_tensor()  # weights and biases: params is [inputs, outputs]
    if reader.int() != 1:
        raise ValueError(f"{spec.name}: expected fc_no_bias")
    for _ in range(4):
        reader.float()  # learning-rate and weight-decay multipliers
    if outputs != spec.filters or params.shape != (inputs, outputs, 1, 1):
        raise ValueError(f"{spec.name}: {outputs} outputs and parameters {params.shape}, "
                         f"expected {spec.filters} outputs")
    return _Layer(spec, {"weight": params.reshape(inputs, outputs)})


# ---------------------------------------------------------------------------
# Graph building: replays dlib's forward pass, keeping each tensor's static
# (channels, rows, columns) so residual additions can be padded like dlib's.


@dataclass(frozen=True)
class _Value:
    name: str
    shape: tuple[int, int, int]


def build_model(dat_path: pathlib.Path) -> onnx.ModelProto:
    """Parse dlib's serialised anet_type (loss_metric ResNet-29) without dlib and return the ONNX model."""
    layers = _parse(pathlib.Path(dat_path).read_bytes())
    builder = GraphBuilder("dlib_face_recognition_resnet_model_v1")
    value = _Value("input", (3, INPUT_SIZE, INPUT_SIZE))
    tags: dict[int, _Value] = {}
    for index, layer in enumerate(layers):
        kind = layer.spec.kind  # affine layers are folded into the con below them
        if kind == "tag":
            tags[layer.spec.tag] = value
        elif kind == "skip":
            value = tags[layer.spec.tag]
        elif kind == "con":
            value = _conv(builder, value, layer, layers[index + 1])
        elif kind == "relu":
            value = _Value(builder.op("Relu", [value.name], layer.spec.name), value.shape)
        elif kind in ("max_pool", "avg_pool"):
            value = _pool(builder, value, layer)
        elif kind == "add_prev":
            value = _add(builder, value, tags[layer.spec.tag], layer.spec.name)
        elif kind == "fc":
            value = _fc(builder, value, layer)
    return builder.model([float_tensor("input", ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
                         [float_tensor("embedding", ["batch", EMBEDDING_DIM])])


def _output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    # dlib's (and ONNX's floor-mode) output size.
    return 1 + (size + 2 * pad - kernel) // stride


def _conv(builder: GraphBuilder, value: _Value, layer: _Layer, affine: _Layer) -> _Value:
    # Every con in anet_type is followed by an affine layer; folding it into
    # the filters (in float64, rounded once) leaves one Conv per layer.
    if affine.spec.kind != "affine":
        raise ValueError(f"{layer.spec.name} is not followed by an affine layer")
    weight = layer.weights["weight"].astype(np.float64)
    bias = layer.weights.get("bias", np.zeros(weight.shape[0])).astype(np.float64)
    gamma = affine.weights["gamma"].astype(np.float64)
    beta = affine.weights["beta"].astype(np.float64)
    if weight.shape[1] != value.shape[0] or gamma.size != weight.shape[0]:
        raise ValueError(f"{layer.spec.name}: filters {weight.shape} do not fit input channels "
                         f"{value.shape[0]} and affine size {gamma.size}")
    pad_y, pad_x = layer.pads
    name = builder.conv(value.name, layer.spec.name, weight * gamma[:, None, None, None], bias * gamma + beta,
                        stride=layer.spec.stride, pads=(pad_y, pad_x, pad_y, pad_x))
    size = layer.spec.size
    shape = (weight.shape[0], _output_size(value.shape[1], size, layer.spec.stride, pad_y),
             _output_size(value.shape[2], size, layer.spec.stride, pad_x))
    return _Value(name, shape)


def _pool(builder: GraphBuilder, value: _Value, layer: _Layer) -> _Value:
    spec = layer.spec
    if spec.size == 0:  # avg_pool_everything
        return _Value(builder.op("GlobalAveragePool", [value.name], spec.name), (value.shape[0], 1, 1))
    pad_y, pad_x = layer.pads
    # dlib averages over the clipped window, i.e. excludes padding (ONNX default).
    op = "MaxPool" if spec.kind == "max_pool" else "AveragePool"
    name = builder.op(op, [value.name], spec.name, kernel_shape=[spec.size, spec.size],
                      strides=[spec.stride, spec.stride], pads=[pad_y, pad_x, pad_y, pad_x])
    shape = (value.shape[0], _output_size(value.shape[1], spec.size, spec.stride, pad_y),
             _output_size(value.shape[2], spec.size, spec.stride, pad_x))
    return _Value(name, shape)


def _add(builder: GraphBuilder, a: _Value, b: _Value, name: str) -> _Value:
    # add_prev's output takes the larger size in every dimension and treats
    # whatever lies outside a smaller operand as zero (tt::add), which is a
    # zero pad at the end of the channel, row and column axes.
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
    inputs = [_pad_to(builder, operand, shape) for operand in (a, b)]
    return _Value(builder.op("Add", inputs, name), shape)


def _pad_to(builder: GraphBuilder, value: _Value, shape: tuple[int, int, int]) -> str:
    if value.shape == shape:
        return value.name
    pads = np.array([0, 0, 0, 0, 0, *(t - s for t, s in zip(shape, value.shape))], dtype=np.int64)
    name = f"{value.name}_pad"
    return builder.op("Pad", [value.name, builder.constant(f"{name}.pads", pads)], name)


def _fc(builder: GraphBuilder, value: _Value, layer: _Layer) -> _Value:
    flat = builder.op("Flatten", [value.name], "embedding_flatten", axis=1)
    weight = layer.weights["weight"]
    if weight.shape[0] != math.prod(value.shape):
        raise ValueError(f"{layer.spec.name}: {weight.shape[0]} inputs, but the network gives {value.shape}")
    # dlib multiplies [batch, inputs] by an [inputs, outputs] matrix; gemm() takes [outputs, inputs].
    builder.gemm(flat, "embedding", weight.T, None)
    return _Value("embedding", (EMBEDDING_DIM, 1, 1))


# ---------------------------------------------------------------------------
# Numerical check against dlib.


def _normalise(chips_rgb: list[np.ndarray]) -> np.ndarray:
    # Same float32 arithmetic as input_rgb_image_sized::to_tensor.
    for chip in chips_rgb:
        if chip.shape != (INPUT_SIZE, INPUT_SIZE, 3) or chip.dtype != np.uint8:
            raise ValueError(f"face chips must be {INPUT_SIZE}x{INPUT_SIZE}x3 uint8 RGB, "
                             f"got {chip.shape} {chip.dtype}")
    batch = np.stack(chips_rgb).astype(np.float32)
    batch = (batch - np.float32(INPUT_MEAN)) * np.float32(INPUT_SCALE)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def reference_max_error(model_bytes: bytes, dat_path: pathlib.Path, chips_rgb: list[np.ndarray]) -> float:
    """Largest absolute difference between the ONNX model (onnxruntime, all chips in
    one batch) and dlib.face_recognition_model_v1(dat_path).compute_face_descriptor
    over 150x150x3 uint8 RGB face chips."""
    import dlib  # only the check needs dlib

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    ours = session.run(["embedding"], {"input": _normalise(chips_rgb)})[0]
    net = dlib.face_recognition_model_v1(str(dat_path))
    theirs = np.array([net.compute_face_descriptor(np.ascontiguousarray(chip)) for chip in chips_rgb])
    return float(np.max(np.abs(ours - theirs)))
