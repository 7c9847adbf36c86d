"""A small fake of the tensorrt module that records what it is given and checks it like TensorRT.

Building: the ONNX parser reads the real model's inputs, outputs and node types
(with the onnx package); build_serialized_network checks the profile covers the
dynamic inputs, that the DLA gets FP16 or INT8, drives an INT8 calibrator and the
progress monitor, adds an entry to the timing cache, and returns a JSON "plan". A calibrator
subclasses IInt8EntropyCalibrator2, whose __init__ must be called (pybind11's rule).
Running: the engine and execution context keep TensorRT's rules (a current CUDA
context, input shapes inside the profile, an address for every tensor, buffers
large enough) and compute on the fake pycuda's device memory in stream order:
row b of output k is filled with mean(input row b) + k, so a test can tell rows
and outputs apart. The fake pycuda is found in sys.modules, as TensorRT and pycuda
share the one CUDA driver. tests/fakes/__init__.py loads a fresh copy per test and
sets `log` and `__version__` (below 10, there is no IProgressMonitor).
"""
from __future__ import annotations

import enum
import json
import sys
from typing import Any

import numpy as np
import onnx

__version__ = "10.3.0"
log: list[tuple] = []
DLA_CORES = 2
FAIL_BUILD = False  # tests set it to see build_serialized_network return None
ENGINE_HEADER = b"FAKE-TRT-ENGINE\n"


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0


class BuilderFlag(enum.Enum):
    TF32 = "TF32"
    FP16 = "FP16"
    INT8 = "INT8"
    GPU_FALLBACK = "GPU_FALLBACK"


class MemoryPoolType(enum.Enum):
    WORKSPACE = "WORKSPACE"


class DeviceType(enum.Enum):
    GPU = "GPU"
    DLA = "DLA"


class TensorIOMode(enum.Enum):
    NONE = "NONE"
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class LayerType(enum.Enum):
    CONVOLUTION = "CONVOLUTION"
    QUANTIZE = "QUANTIZE"
    DEQUANTIZE = "DEQUANTIZE"
    ELEMENTWISE = "ELEMENTWISE"  # stands for every other ONNX node here


class DataType(enum.Enum):
    FLOAT = np.float32
    HALF = np.float16
    INT8 = np.int8
    INT32 = np.int32
    INT64 = np.int64
    BOOL = np.bool_


def nptype(dtype: DataType) -> type:
    return dtype.value


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class _PybindClass(type):
    """Like pybind11: a Python subclass whose __init__ skips the base class's __init__ cannot be made."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        if not instance.__dict__.get("_base_initialised"):
            raise TypeError("IInt8EntropyCalibrator2.__init__() must be called when overriding __init__")
        return instance


class IInt8EntropyCalibrator2(metaclass=_PybindClass):
    def __init__(self) -> None:
        self._base_initialised = True


def _error(message: str) -> None:
    log.append(("error", message))


def _cuda_context(what: str) -> None:
    if sys.modules["pycuda.driver"].Context.get_current() is None:
        raise RuntimeError(f"{what}: no current CUDA context")


# --- building -----------------------------------------------------------------------------------

class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class ILayer:
    def __init__(self, layer_type: LayerType) -> None:
        self.type = layer_type


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.layers: list[ILayer] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]


_ONNX_TYPES = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
               onnx.TensorProto.INT8: DataType.INT8, onnx.TensorProto.INT32: DataType.INT32,
               onnx.TensorProto.INT64: DataType.INT64}
_ONNX_LAYERS = {"Conv": LayerType.CONVOLUTION, "QuantizeLinear": LayerType.QUANTIZE,
                "DequantizeLinear": LayerType.DEQUANTIZE}


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse(self, model: bytes, path: str | None = None) -> bool:
        log.append(("parse", len(model)))
        explicit = self.network.flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
        if int(__version__.split(".")[0]) < 10 and not explicit:
            self.errors.append("the ONNX parser needs a network created with EXPLICIT_BATCH")
            return False
        try:
            graph = onnx.load_from_string(bytes(model)).graph
        except Exception as error:  # the real parser reports anything unreadable as a parse error
            self.errors.append(f"cannot read the ONNX model: {error}")
            return False
        initializers = {i.name for i in graph.initializer}
        self.network.inputs = [_tensor(v) for v in graph.input if v.name not in initializers]
        self.network.outputs = [_tensor(v) for v in graph.output]
        self.network.layers = [ILayer(_ONNX_LAYERS.get(n.op_type, LayerType.ELEMENTWISE)) for n in graph.node]
        return True


def _tensor(value: Any) -> ITensor:
    kind = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
    return ITensor(value.name, shape, _ONNX_TYPES[kind.elem_type])


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        log.append(("set_shape", input, *shapes))
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise ValueError(f"profile for {input}: min <= opt <= max does not hold: {shapes}")
        self.shapes[input] = shapes


class ITimingCache:
    def __init__(self, header: str, entries: list[str]) -> None:
        self.header, self.entries = header, entries

    def serialize(self) -> bytes:
        return "\n".join([f"FAKE-TIMING-CACHE {__version__}", *self.entries]).encode()


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = {BuilderFlag.TF32}  # TensorRT's default
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.int8_calibrator = None
        self.calibration_profile = None
        self.progress_monitor = None
        self.timing_cache: ITimingCache | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        log.append(("set_flag", flag))
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        log.append(("clear_flag", flag))
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        log.append(("set_memory_pool_limit", pool, pool_size))
        self.pool_limits[pool] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        log.append(("add_optimization_profile", profile))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        log.append(("set_calibration_profile", profile))
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        blob = bytes(serialized_timing_cache)
        log.append(("create_timing_cache", blob))
        lines = blob.decode().split("\n") if blob else [f"FAKE-TIMING-CACHE {__version__}"]
        return ITimingCache(lines[0], lines[1:])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        log.append(("set_timing_cache", cache, ignore_mismatch))
        if cache.header != f"FAKE-TIMING-CACHE {__version__}" and not ignore_mismatch:
            _error(f"timing cache from another TensorRT: {cache.header}")
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        log.append(("Builder",))

    num_DLA_cores = property(lambda self: DLA_CORES)

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        log.append(("create_network", flags))
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        log.append(("build_serialized_network", network, config))
        problem = _build_problem(network, config)
        if problem or FAIL_BUILD:
            _error(problem or "FAIL_BUILD is set")
            return None
        _calibrate(network, config)
        _report_progress(config.progress_monitor)
        if config.timing_cache is not None:
            config.timing_cache.entries.append(f"{network.inputs[0].name}:{sorted(f.value for f in config.flags)}")
        return ENGINE_HEADER + json.dumps(_plan(network, config)).encode()


def _build_problem(network: INetworkDefinition, config: IBuilderConfig) -> str | None:
    shapes = config.profiles[0].shapes if config.profiles else {}
    for tensor in network.inputs:
        if tensor.name not in shapes:
            if -1 in tensor.shape:
                return f"input {tensor.name} is dynamic but no optimisation profile sets it"
            continue
        for d, low, high in zip(tensor.shape, shapes[tensor.name][0], shapes[tensor.name][2]):
            if d != -1 and not low == d == high:
                return f"profile for {tensor.name} disagrees with its fixed dimensions {tensor.shape}"
    if config.default_device_type == DeviceType.DLA:
        if not config.flags & {BuilderFlag.FP16, BuilderFlag.INT8}:
            return "the DLA needs FP16 or INT8"
        if not 0 <= config.DLA_core < DLA_CORES:
            return f"DLA core {config.DLA_core} does not exist"
    return None


def _calibrate(network: INetworkDefinition, config: IBuilderConfig) -> None:
    if config.int8_calibrator is None or BuilderFlag.INT8 not in config.flags:
        return
    names = [t.name for t in network.inputs]
    batches = 0
    while config.int8_calibrator.get_batch(names) is not None:
        batches += 1
    log.append(("calibrated", batches))


def _report_progress(monitor: Any) -> None:
    if monitor is None:
        return
    monitor.phase_start("Building engine", None, 2)
    for step in range(2):
        monitor.step_complete("Building engine", step)
    monitor.phase_finish("Building engine")


def _plan(network: INetworkDefinition, config: IBuilderConfig) -> dict[str, Any]:
    shapes = config.profiles[0].shapes if config.profiles else {}

    def describe(tensor: ITensor, mode: TensorIOMode) -> dict[str, Any]:
        profile = shapes.get(tensor.name) if mode == TensorIOMode.INPUT else None
        return {"name": tensor.name, "mode": mode.name, "dtype": tensor.dtype.name, "shape": list(tensor.shape),
                "profile": None if profile is None else [list(s) for s in profile]}

    return {"version": __version__,
            "tensors": [describe(t, TensorIOMode.INPUT) for t in network.inputs]
            + [describe(t, TensorIOMode.OUTPUT) for t in network.outputs],
            "flags": sorted(f.value for f in config.flags), "device_type": config.default_device_type.value}


# --- running ------------------------------------------------------------------------------------

class Runtime:
    def __init__(self, logger: Logger) -> None:
        log.append(("Runtime",))

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> "ICudaEngine | None":
        _cuda_context("deserialize_cuda_engine")
        log.append(("deserialize_cuda_engine", len(serialized_engine)))
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_HEADER):
            _error("not a serialized engine")
            return None
        plan = json.loads(data[len(ENGINE_HEADER):])
        if plan["version"] != __version__:
            _error(f"engine plan from TensorRT {plan['version']}, this is {__version__}")
            return None
        return ICudaEngine(plan)


class ICudaEngine:
    num_optimization_profiles = 1

    def __init__(self, plan: dict[str, Any]) -> None:
        self.tensors = {t["name"]: t for t in plan["tensors"]}

    num_io_tensors = property(lambda self: len(self.tensors))

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.tensors[name]["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.tensors[name]["dtype"]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        profile = self.tensors[name]["profile"]
        if profile is None or profile_index != 0:
            raise RuntimeError(f"no profile {profile_index} for {name}")
        return [tuple(s) for s in profile]

    def create_execution_context(self) -> "IExecutionContext":
        _cuda_context("create_execution_context")
        log.append(("create_execution_context",))
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _inputs(self) -> list[dict[str, Any]]:
        return [t for t in self.engine.tensors.values() if t["mode"] == "INPUT"]

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        log.append(("set_input_shape", name, shape))
        tensor = self.engine.tensors.get(name)
        if tensor is None or tensor["mode"] != "INPUT":
            _error(f"{name} is not an input")
            return False
        low, _, high = tensor["profile"]
        if len(shape) != len(low) or not all(a <= d <= b for d, a, b in zip(shape, low, high)):
            _error(f"shape {shape} for {name} is outside the profile {low}..{high}")
            return False
        self.input_shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        tensor = self.engine.tensors[name]
        if tensor["mode"] == "INPUT":
            return self.input_shapes.get(name, tuple(tensor["shape"]))
        shape = list(tensor["shape"])
        if shape and shape[0] == -1 and self.input_shapes:
            shape[0] = next(iter(self.input_shapes.values()))[0]
        if -1 in shape:
            raise NotImplementedError(f"the fake resolves only a dynamic batch dimension, not {tensor['shape']}")
        return tuple(shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        log.append(("set_tensor_address", name, int(memory)))
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _cuda_context("execute_async_v3")
        log.append(("execute_async_v3", stream_handle))
        driver = sys.modules["pycuda.driver"]
        try:
            buffers = {name: self._buffer(driver, name) for name in self.engine.tensors}
        except (KeyError, driver.LogicError) as error:
            _error(f"execute_async_v3: {error}")
            return False
        driver._stream(stream_handle).enqueue(lambda: self._compute(buffers))
        return True

    def _buffer(self, driver: Any, name: str) -> tuple[Any, tuple[int, ...], np.dtype]:
        if name not in self.addresses:
            raise KeyError(f"no address set for tensor {name}")
        shape = self.get_tensor_shape(name)
        dtype = np.dtype(nptype(self.engine.get_tensor_dtype(name)))
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return driver._allocation_at(self.addresses[name], nbytes), shape, dtype

    def _compute(self, buffers: dict[str, tuple[Any, tuple[int, ...], np.dtype]]) -> None:
        (allocation, shape, dtype), = [buffers[t["name"]] for t in self._inputs()]
        data = np.frombuffer(bytes(allocation.data[:int(np.prod(shape)) * dtype.itemsize]), dtype).reshape(shape)
        row_means = data.reshape(shape[0], -1).astype(np.float64).mean(axis=1)
        outputs = [t["name"] for t in self.engine.tensors.values() if t["mode"] == "OUTPUT"]
        for k, name in enumerate(outputs):
            allocation, out_shape, out_dtype = buffers[name]
            values = np.broadcast_to((row_means + k).reshape(-1, *[1] * (len(out_shape) - 1)), out_shape)
            result = np.ascontiguousarray(values, dtype=out_dtype).tobytes()
            allocation.data[:len(result)] = result
