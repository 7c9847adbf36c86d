"""Silent-Face-Anti-Spoofing's MiniFASNet liveness nets, from minivision's PyTorch state dicts to ONNX.

Two nets of github.com/minivision-ai/Silent-Face-Anti-Spoofing (Apache-2.0),
`resources/anti_spoof_models/`: MiniFASNetV2 on the face box scaled 2.7x and
MiniFASNetV1SE on it scaled 4.0x, both 80x80. The graph is built from the state
dict itself (channel counts, groups, the number of residual blocks and where the
squeeze-excitation modules sit all come from the weights' names and shapes), node
for node as upstream's forward(): convolution, batch norm and PReLU stay separate
nodes with the published values (PReLU written as MTCNN's converter writes it,
Relu(x) + slope * Min(x, 0): the same values, and measured 30-40% faster here
than ONNX Runtime's PRelu kernel); a Softmax closes the graph, as upstream's
inference (src/anti_spoof_predict.py) applies one. Input: BGR 0..255 as float,
NCHW, no normalisation, dynamic batch; output `prob`, 3 classes, class 1 = live.

`reference_net` is the check: a PyTorch re-implementation of upstream's
src/model_lib/MiniFASNet.py (Copyright 2020 Minivision, Apache License 2.0; see
NOTICE), built from upstream's own channel tables rather than from the weights,
with the state dict loaded strictly. Torch is needed only to read the weights and
for that check.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from converters.mtcnn import _prelu as prelu
from converters.onnx_graph import GraphBuilder, float_tensor

REPOSITORY = "minivision-ai/Silent-Face-Anti-Spoofing"
INPUT, OUTPUT = "input", "prob"
SIZE = 80
BN_EPSILON = 1e-5  # PyTorch's BatchNorm default, which upstream keeps


@dataclass(frozen=True)
class Net:
    onnx_file: str
    source_file: str  # in resources/anti_spoof_models/ upstream and in the --minifasnet folder
    sha256: str
    architecture: str  # upstream's constructor name
    crop_scale: float


NETS = (
    Net("minifasnet_v2_2.7.onnx", "2.7_80x80_MiniFASNetV2.pth",
        "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0", "MiniFASNetV2", 2.7),
    Net("minifasnet_v1se_4.0.onnx", "4_0_0_80x80_MiniFASNetV1SE.pth",
        "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990", "MiniFASNetV1SE", 4.0),
)


def check_sources(folder: Path) -> None:
    """Refuses a missing weight file or one other than the published bytes this converter was checked on."""
    for net in NETS:
        path = Path(folder) / net.source_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no published MiniFASNet weights there (give --minifasnet DIR, "
                                    "or leave the liveness nets out with --only)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != net.sha256:
            raise ValueError(f"{path}: sha256 {digest} is not the published {net.source_file}'s {net.sha256}")


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The state dict as float32 arrays, without the `module.` prefix DataParallel saved it with."""
    import torch

    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {key.removeprefix("module."): value.numpy().astype(np.float32) for key, value in state.items()
            if not key.endswith("num_batches_tracked")}


# --- the ONNX graph, from the weights ------------------------------------------------------------

class _Graph:
    def __init__(self, name: str, weights: dict[str, np.ndarray]) -> None:
        self.b = GraphBuilder(name)
        self.w = weights

    def batch_norm(self, x: str, name: str) -> str:
        w = self.w
        inputs = [x] + [self.b.constant(f"{name}.{part}", w[f"{name}.{part}"])
                        for part in ("weight", "bias", "running_mean", "running_var")]
        return self.b.op("BatchNormalization", inputs, name, epsilon=BN_EPSILON)

    def conv_block(self, x: str, name: str, channels: int, stride: int = 1, padding: int = 0) -> tuple[str, int]:
        """Upstream's Conv_block (conv, batch norm, PReLU) or, without a prelu weight, Linear_block."""
        weight = self.w[f"{name}.conv.weight"]
        x = self.b.op("Conv", [x, self.b.constant(f"{name}.conv.weight", weight)], f"{name}.conv",
                      kernel_shape=list(weight.shape[2:]), strides=[stride, stride], pads=[padding] * 4,
                      group=channels // weight.shape[1])
        x = self.batch_norm(x, f"{name}.bn")
        if f"{name}.prelu.weight" in self.w:
            x = prelu(self.b, x, self.w[f"{name}.prelu.weight"].reshape(-1, 1, 1), f"{name}.prelu")
        return x, weight.shape[0]

    def depth_wise(self, x: str, name: str, channels: int, stride: int, residual: bool) -> tuple[str, int]:
        """Upstream's Depth_Wise (1x1 expand, 3x3 depthwise, 1x1 project), with its SE module where it has one."""
        y, c = self.conv_block(x, f"{name}.conv", channels)
        y, c = self.conv_block(y, f"{name}.conv_dw", c, stride=stride, padding=1)
        y, c = self.conv_block(y, f"{name}.project", c)
        if f"{name}.se_module.fc1.weight" in self.w:
            y = self.squeeze_excite(y, f"{name}.se_module")
        return (self.b.op("Add", [x, y], f"{name}.add") if residual else y), c

    def squeeze_excite(self, x: str, name: str) -> str:
        b = self.b
        s = b.op("GlobalAveragePool", [x], f"{name}.avg_pool")
        for fc, bn in (("fc1", "bn1"), ("fc2", "bn2")):
            s = b.op("Conv", [s, b.constant(f"{name}.{fc}.weight", self.w[f"{name}.{fc}.weight"])], f"{name}.{fc}",
                     kernel_shape=[1, 1])
            s = self.batch_norm(s, f"{name}.{bn}")
            if fc == "fc1":
                s = b.op("Relu", [s], f"{name}.relu")
        return b.op("Mul", [x, b.op("Sigmoid", [s], f"{name}.sigmoid")], f"{name}.scale")

    def residual_stage(self, x: str, name: str, channels: int) -> tuple[str, int]:
        blocks = sorted({int(m.group(1)) for key in self.w if (m := re.match(rf"{name}\.model\.(\d+)\.", key))})
        for block in blocks:
            x, channels = self.depth_wise(x, f"{name}.model.{block}", channels, stride=1, residual=True)
        return x, channels


def build_model(weights: dict[str, np.ndarray], net: Net) -> onnx.ModelProto:
    g = _Graph(Path(net.onnx_file).stem, weights)
    b = g.b
    x, c = g.conv_block(INPUT, "conv1", 3, stride=2, padding=1)
    x, c = g.conv_block(x, "conv2_dw", c, padding=1)
    for down, stage in (("conv_23", "conv_3"), ("conv_34", "conv_4"), ("conv_45", "conv_5")):
        x, c = g.depth_wise(x, down, c, stride=2, residual=False)
        x, c = g.residual_stage(x, stage, c)
    x, c = g.conv_block(x, "conv_6_sep", c)
    x, c = g.conv_block(x, "conv_6_dw", c)  # kernel 5x5 = upstream's get_kernel(80, 80): down to 1x1
    x = b.op("Flatten", [x], "conv_6_flatten", axis=1)
    if c != weights["linear.weight"].shape[0]:  # upstream skips `linear` when the embedding is 512 wide
        x = b.gemm(x, "linear", weights["linear.weight"], None)
    x = g.batch_norm(x, "bn")  # dropout: identity at inference
    logits = b.gemm(x, "logits", weights["prob.weight"], None)
    b.op("Softmax", [logits], OUTPUT, axis=1)
    model = b.model([float_tensor(INPUT, ["batch", 3, SIZE, SIZE])],
                    [float_tensor(OUTPUT, ["batch", weights["prob.weight"].shape[0]])])
    helper.set_model_props(model, {"source": f"{REPOSITORY} resources/anti_spoof_models/{net.source_file}",
                                   "source_sha256": net.sha256})
    return model


def convert(folder: Path, net: Net) -> bytes:
    return build_model(load_state_dict(Path(folder) / net.source_file), net).SerializeToString()


# --- the reference: upstream's modules, re-implemented in PyTorch --------------------------------

# Upstream's channel tables (keep_dict in src/model_lib/MiniFASNet.py): '1.8M' for V1 and V1SE, '1.8M_' for V2.
_KEEP = {
    "1.8M": [32, 32, 103, 103, 64, 13, 13, 64, 26, 26, 64, 13, 13, 64, 52, 52, 64, 231, 231, 128,
             154, 154, 128, 52, 52, 128, 26, 26, 128, 52, 52, 128, 26, 26, 128, 26, 26, 128, 308, 308,
             128, 26, 26, 128, 26, 26, 128, 512, 512],
    "1.8M_": [32, 32, 103, 103, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 231, 231, 128,
              231, 231, 128, 52, 52, 128, 26, 26, 128, 77, 77, 128, 26, 26, 128, 26, 26, 128, 308, 308,
              128, 26, 26, 128, 26, 26, 128, 512, 512],
}
_ARCHITECTURES = {"MiniFASNetV1": ("1.8M", False), "MiniFASNetV2": ("1.8M_", False),
                  "MiniFASNetV1SE": ("1.8M", True), "MiniFASNetV2SE": ("1.8M_", True)}


def reference_net(architecture: str, weights_path: Path):
    """Upstream's MiniFASNet module tree (same module names, so its state dict loads strictly), in eval mode."""
    import torch
    from torch import nn

    class ConvBlock(nn.Module):  # upstream Conv_block; with prelu=False, Linear_block
        def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1, prelu=True):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.prelu = nn.PReLU(cout) if prelu else None

        def forward(self, x):
            x = self.bn(self.conv(x))
            return x if self.prelu is None else self.prelu(x)

    class SEModule(nn.Module):
        def __init__(self, channels, reduction):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels // reduction)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x):
            s = self.relu(self.bn1(self.fc1(self.avg_pool(x))))
            return x * self.sigmoid(self.bn2(self.fc2(s)))

    class DepthWise(nn.Module):  # upstream Depth_Wise, and Depth_Wise_SE with se=True
        def __init__(self, c1, c2, c3, residual, stride, se=False):
            super().__init__()
            self.conv = ConvBlock(*c1)
            self.conv_dw = ConvBlock(*c2, kernel=3, stride=stride, padding=1, groups=c2[0])
            self.project = ConvBlock(*c3, prelu=False)
            self.residual = residual
            if se:
                self.se_module = SEModule(c3[1], 4)  # ResidualSE's se_reduct

        def forward(self, x):
            y = self.project(self.conv_dw(self.conv(x)))
            if self.residual and hasattr(self, "se_module"):
                y = self.se_module(y)
            return x + y if self.residual else y

    def triple(keep, start):  # (c1, c2, c3) of the block whose channels start at keep[start]
        return (keep[start], keep[start + 1]), (keep[start + 1], keep[start + 2]), (keep[start + 2], keep[start + 3])

    class Residual(nn.Module):  # upstream Residual, and ResidualSE (SE in the last block) with se=True
        def __init__(self, keep, start, blocks, se):
            super().__init__()
            self.model = nn.Sequential(*[DepthWise(*triple(keep, start + 3 * i), residual=True, stride=1,
                                                   se=se and i == blocks - 1) for i in range(blocks)])

        def forward(self, x):
            return self.model(x)

    class MiniFASNet(nn.Module):
        def __init__(self, keep, se, embedding_size=128, conv6_kernel=(5, 5), num_classes=3):
            super().__init__()
            self.embedding_size = embedding_size
            self.conv1 = ConvBlock(3, keep[0], kernel=3, stride=2, padding=1)
            self.conv2_dw = ConvBlock(keep[0], keep[1], kernel=3, padding=1, groups=keep[1])
            self.conv_23 = DepthWise(*triple(keep, 1), residual=False, stride=2)
            self.conv_3 = Residual(keep, 4, 4, se)
            self.conv_34 = DepthWise(*triple(keep, 16), residual=False, stride=2)
            self.conv_4 = Residual(keep, 19, 6, se)
            self.conv_45 = DepthWise(*triple(keep, 37), residual=False, stride=2)
            self.conv_5 = Residual(keep, 40, 2, se)
            self.conv_6_sep = ConvBlock(keep[46], keep[47])
            self.conv_6_dw = ConvBlock(keep[47], keep[48], kernel=conv6_kernel, groups=keep[48], prelu=False)
            self.linear = nn.Linear(512, embedding_size, bias=False)
            self.bn = nn.BatchNorm1d(embedding_size)
            self.drop = nn.Dropout()
            self.prob = nn.Linear(embedding_size, num_classes, bias=False)

        def forward(self, x):
            for stage in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4,
                          self.conv_45, self.conv_5, self.conv_6_sep, self.conv_6_dw):
                x = stage(x)
            x = x.view(x.size(0), -1)
            if self.embedding_size != 512:
                x = self.linear(x)
            return self.prob(self.drop(self.bn(x)))

    keep, se = _ARCHITECTURES[architecture]
    model = MiniFASNet(_KEEP[keep], se)
    state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    model.load_state_dict({key.removeprefix("module."): value for key, value in state.items()}, strict=True)
    return model.eval()


def reference_probabilities(architecture: str, weights_path: Path, batch: np.ndarray) -> np.ndarray:
    """Upstream's inference (AntiSpoofPredict.predict): softmax of the net's output, for an NCHW BGR batch."""
    import torch

    model = reference_net(architecture, weights_path)
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()


def onnx_probabilities(model_bytes: bytes, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: batch})[0]


def reference_max_error(model_bytes: bytes, folder: Path, net: Net, batch: np.ndarray) -> float:
    """Largest absolute difference of the class probabilities, ONNX Runtime against the reference, on one batch."""
    ours = onnx_probabilities(model_bytes, batch)
    theirs = reference_probabilities(net.architecture, Path(folder) / net.source_file, batch)
    return float(np.abs(ours - theirs).max())
