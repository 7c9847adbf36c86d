"""The metadata sidecar of a TensorRT engine (`<engine>.json`) and the check that it can run here.

A serialized engine runs only on the TensorRT version and the GPU it was built
for, and TensorRT's own reaction to a mismatch is an opaque deserialization
failure. The sidecar says what the engine was built from and with which options,
so the runner can refuse early and name the exact command that rebuilds it.
The builder (tools/build_engine.py) writes it; the runner reads and checks it.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.atomic_file import write_atomic
from engines.errors import ModelError
from engines.manifest import sha256_of

READABLE = 0o644  # engines are no secret, and provisioning (root) builds what the service user reads

SCHEMA = 1
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("qdq", "entropy")  # a Q/DQ-quantised ONNX, or TensorRT's implicit entropy calibrator
MIN_TENSORRT = (8, 5)  # name-based I/O: set_input_shape, set_tensor_address, execute_async_v3
BUILD_TOOL = "tools/build_engine.py"
INSTALL_HINT = (
    "TensorRT and pycuda are not pip dependencies: on a Jetson install JetPack's Python bindings "
    "(sudo apt install python3-libnvinfer), create the venv with --system-site-packages so it sees "
    "them, then pip install -e '.[jetson]' for pycuda")


class EngineMismatchError(ModelError):
    """An engine without a valid sidecar, or built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def gpu_identity(device: Any) -> Gpu:
    """The identity of a pycuda.driver.Device, as recorded in and compared with sidecars."""
    major, minor = device.compute_capability()
    return Gpu(name=str(device.name()), compute_capability=f"{major}.{minor}")


def tensorrt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as '10.3.0.30'."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ModelError(f"cannot read the TensorRT version {version!r}") from None


def require_supported_tensorrt(version: str) -> None:
    if tensorrt_version(version) < MIN_TENSORRT:
        wanted = ".".join(map(str, MIN_TENSORRT))
        raise ModelError(f"TensorRT {version} is too old: facegate needs {wanted} or newer "
                         "(name-based tensor I/O); JetPack 5.1 ships 8.5")


@dataclass(frozen=True)
class Profile:
    """One input's optimisation-profile shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Calibration:
    method: str  # one of CALIBRATION_METHODS
    source: str  # the Q/DQ ONNX file name, or the calibration batch folder


@dataclass(frozen=True)
class BuildOptions:
    """The options tools/build_engine.py was given for one engine, resolved to their values."""

    precision: str
    workspace_mib: int
    max_batch: int | None = None  # batched roles (rnet, onet, embedder)
    opt_batch: int | None = None
    pnet_canvas: tuple[int, int] | None = None  # height, width, as given with --pnet-canvas
    frame_size: tuple[int, int] | None = None  # width, height, as given with --frame-size
    dla_core: int | None = None
    calibration: Calibration | None = None
    timing_cache: str | None = None
    card: str | None = None  # only where --card named a card other than the one beside the ONNX

    def to_args(self) -> list[str]:
        """The command-line options that reproduce these options."""
        args = ["--precision", self.precision, "--workspace", str(self.workspace_mib)]
        if self.max_batch is not None:
            args += ["--max-batch", str(self.max_batch), "--opt-batch", str(self.opt_batch)]
        if self.frame_size is not None:
            args += ["--frame-size", f"{self.frame_size[0]}x{self.frame_size[1]}"]
        if self.pnet_canvas is not None:
            args += ["--pnet-canvas", f"{self.pnet_canvas[0]}x{self.pnet_canvas[1]}"]
        if self.dla_core is not None:
            args += ["--dla-core", str(self.dla_core)]
        if self.calibration is not None and self.calibration.method == "entropy":
            args += ["--calibrator", self.calibration.source]
        if self.timing_cache is not None:
            args += ["--timing-cache", self.timing_cache]
        if self.card is not None:
            args += ["--card", self.card]
        return args


@dataclass(frozen=True)
class EngineMetadata:
    tensorrt: str
    gpu: Gpu
    onnx_file: str
    onnx_path: str
    onnx_sha256: str
    model_id: str
    role: str
    card_path: str
    engine_sha256: str
    options: BuildOptions
    profiles: dict[str, Profile]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def precision(self) -> str:
        return self.options.precision

    def to_json(self) -> dict[str, Any]:
        options = self.options
        return {
            "schema": SCHEMA,
            "created": self.created,
            "tensorrt": self.tensorrt,
            "gpu": {"name": self.gpu.name, "compute_capability": self.gpu.compute_capability},
            "precision": options.precision,
            "engine": {"sha256": self.engine_sha256},
            "onnx": {"file": self.onnx_file, "path": self.onnx_path, "sha256": self.onnx_sha256},
            "model": {"id": self.model_id, "role": self.role, "card": self.card_path},
            "build": {
                "workspace_mib": options.workspace_mib,
                "max_batch": options.max_batch,
                "opt_batch": options.opt_batch,
                "pnet_canvas": _list(options.pnet_canvas),
                "frame_size": _list(options.frame_size),
                "dla_core": options.dla_core,
                "calibration": None if options.calibration is None else {
                    "method": options.calibration.method, "source": options.calibration.source},
                "timing_cache": options.timing_cache,
                "card_option": options.card,
                "profiles": {name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
                             for name, p in self.profiles.items()},
            },
        }

    @classmethod
    def from_json(cls, raw: Any, source: Path) -> "EngineMetadata":
        return _Reader(raw, source).metadata()


def _list(pair: tuple[int, int] | None) -> list[int] | None:
    return None if pair is None else list(pair)


class _Reader:
    """Reads a sidecar by key path so every error names the key and what was expected."""

    def __init__(self, raw: Any, source: Path) -> None:
        self.raw, self.source = raw, source
        if not isinstance(raw, dict):
            self.fail("(top level)", raw, "a JSON object")
        if raw.get("schema") != SCHEMA:
            self.fail("schema", raw.get("schema"), str(SCHEMA))

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise EngineMismatchError(f"{self.source}: {key} = {value!r}: expected {expected}")

    def get(self, key: str, kind: type, optional: bool = False) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and optional:
            return None
        if not isinstance(node, kind) or isinstance(node, bool):
            self.fail(key, node, f"a {kind.__name__}")
        return node

    def pair(self, key: str) -> tuple[int, int] | None:
        value = self.get(key, list, optional=True)
        if value is not None and (len(value) != 2 or not all(isinstance(v, int) for v in value)):
            self.fail(key, value, "two integers")
        return None if value is None else (value[0], value[1])

    def metadata(self) -> EngineMetadata:
        precision = self.get("precision", str)
        if precision not in PRECISIONS:
            self.fail("precision", precision, f"one of {list(PRECISIONS)}")
        options = BuildOptions(
            precision=precision, workspace_mib=self.get("build.workspace_mib", int),
            max_batch=self.get("build.max_batch", int, optional=True),
            opt_batch=self.get("build.opt_batch", int, optional=True),
            pnet_canvas=self.pair("build.pnet_canvas"), frame_size=self.pair("build.frame_size"),
            dla_core=self.get("build.dla_core", int, optional=True),
            calibration=self.calibration(),
            timing_cache=self.get("build.timing_cache", str, optional=True),
            card=self.get("build.card_option", str, optional=True))
        return EngineMetadata(
            tensorrt=self.get("tensorrt", str),
            gpu=Gpu(self.get("gpu.name", str), self.get("gpu.compute_capability", str)),
            onnx_file=self.get("onnx.file", str), onnx_path=self.get("onnx.path", str),
            onnx_sha256=self.get("onnx.sha256", str),
            model_id=self.get("model.id", str), role=self.get("model.role", str),
            card_path=self.get("model.card", str), engine_sha256=self.get("engine.sha256", str),
            options=options, profiles=self.profiles(), created=self.get("created", str))

    def calibration(self) -> Calibration | None:
        if self.get("build.calibration", dict, optional=True) is None:
            return None
        method = self.get("build.calibration.method", str)
        if method not in CALIBRATION_METHODS:
            self.fail("build.calibration.method", method, f"one of {list(CALIBRATION_METHODS)}")
        return Calibration(method, self.get("build.calibration.source", str))

    def profiles(self) -> dict[str, Profile]:
        profiles = {}
        for name, shapes in self.get("build.profiles", dict).items():
            key = f"build.profiles[{name!r}]"
            if not isinstance(shapes, dict) or not all(_is_shape(shapes.get(k)) for k in ("min", "opt", "max")):
                self.fail(key, shapes, "an object with min, opt and max shapes (lists of integers)")
            profiles[name] = Profile(tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
        return profiles


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


# --- files --------------------------------------------------------------------------------------

def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_metadata(engine_path: str | Path, metadata: EngineMetadata) -> Path:
    path = sidecar_path(engine_path)
    write_atomic(path, (json.dumps(metadata.to_json(), indent=2) + "\n").encode(), mode=READABLE)
    return path


def read_metadata(engine_path: str | Path) -> EngineMetadata:
    """The engine's sidecar; FileNotFoundError where it has none, EngineMismatchError where it is invalid."""
    path = sidecar_path(engine_path)
    text = path.read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise EngineMismatchError(f"{path}: not valid JSON: {error}") from error
    return EngineMetadata.from_json(raw, path)


# --- the compatibility check --------------------------------------------------------------------

def rebuild_command(metadata: EngineMetadata, engine_path: str | Path) -> str:
    """The command that rebuilds this engine, in place, with its original options."""
    return shlex.join(["python", BUILD_TOOL, metadata.onnx_path, "--output", str(engine_path),
                       *metadata.options.to_args()])


def mismatches(metadata: EngineMetadata, tensorrt: str, gpu: Gpu) -> list[str]:
    """What differs between the engine's build and this device, one line each, naming both sides."""
    problems = []
    if metadata.tensorrt != tensorrt:
        problems.append(f"TensorRT: engine built with {metadata.tensorrt}, this device runs {tensorrt}")
    if metadata.gpu != gpu:
        problems.append(f"GPU: engine built for {metadata.gpu}, this device has {gpu}")
    return problems


def check_engine(engine_path: str | Path, tensorrt: str, gpu: Gpu) -> EngineMetadata:
    """The engine's metadata if it was built by this TensorRT for this GPU; else EngineMismatchError."""
    engine_path = Path(engine_path)
    try:
        metadata = read_metadata(engine_path)
    except FileNotFoundError:
        raise EngineMismatchError(_unknown_build(engine_path, "it has no metadata sidecar "
                                                 f"{sidecar_path(engine_path).name}")) from None
    except EngineMismatchError as error:
        raise EngineMismatchError(_unknown_build(engine_path, f"its sidecar is invalid ({error})")) from None
    problems = mismatches(metadata, tensorrt, gpu)
    digest = sha256_of(engine_path)
    if digest != metadata.engine_sha256:
        problems.append(f"{sidecar_path(engine_path).name} describes another engine file "
                        f"(sha256 {metadata.engine_sha256[:12]}…, this file {digest[:12]}…)")
    if problems:
        raise EngineMismatchError(
            f"{engine_path} cannot run on this device:\n  " + "\n  ".join(problems)
            + f"\nRebuild it here from {metadata.onnx_file} (sha256 {metadata.onnx_sha256[:12]}…) with:\n  "
            + rebuild_command(metadata, engine_path))
    return metadata


def _unknown_build(engine_path: Path, reason: str) -> str:
    return (f"{engine_path} is refused: {reason}, so the TensorRT version and GPU it was built for are "
            f"unknown. Rebuild the engines on this device with {BUILD_TOOL}, which writes the sidecar:\n  "
            + shlex.join(["python", BUILD_TOOL, "--all", "--out-dir", str(engine_path.parent)])
            + " --frame-size <camera width>x<camera height>")
