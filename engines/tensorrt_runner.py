"""Runner on a serialized TensorRT engine, with host and device buffers through pycuda.

Threading: a CUDA context is current per thread. Construct a TensorRTRunner on
the inference thread and call run() and close() on that same thread; the runner
refuses calls from any other. It owns its own CUDA context and makes it current
only inside its own calls (push ... pop), so several runners, or another CUDA
user such as an INT8 calibrator, can share that thread: whatever context was
current before a call is current again after it.

tensorrt and pycuda are imported when a runner is constructed, never at import
time, so this module imports on machines without them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.engine_metadata import (INSTALL_HINT, EngineMetadata, EngineMismatchError, Profile,
                                     check_engine, gpu_identity, require_supported_tensorrt)
from engines.errors import ModelError
from engines.runner import Runner, Shape

__all__ = ["TensorRTRunner", "EngineMismatchError"]


def import_tensorrt() -> tuple[Any, Any]:
    """The tensorrt and pycuda.driver modules, or a ModelError saying how to install them."""
    try:
        import tensorrt
        import pycuda.driver as cuda
    except ImportError as error:
        raise ModelError(f"TensorRT engines need the tensorrt and pycuda modules ({error}). {INSTALL_HINT}") \
            from error
    require_supported_tensorrt(tensorrt.__version__)
    return tensorrt, cuda


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # as the engine declares it; -1 where dynamic
    profile: Profile | None  # inputs only
    host: np.ndarray | None = None  # flat page-locked staging buffer, grown on demand
    device: Any = None  # pycuda DeviceAllocation of the same size in bytes


class TensorRTRunner(Runner):
    """One TensorRT engine (optimisation profile 0), checked against its sidecar before it is loaded."""

    def __init__(self, path: str | Path, device: int = 0) -> None:
        self._cuda_context = None  # set first: close() must work whatever fails below
        self.path = Path(path)
        trt, self._cuda = import_tensorrt()
        self._cuda.init()
        here = gpu_identity(self._cuda.Device(device))
        self.metadata: EngineMetadata = check_engine(self.path, trt.__version__, here)
        self._thread = threading.get_ident()
        self._cuda_context = self._cuda.Device(device).make_context()  # created current
        try:
            self._load(trt)
        except BaseException:
            self._release()
            raise
        self._cuda_context.pop()

    # --- Runner -------------------------------------------------------------------------------------

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return {t.name: _public(t.shape) for t in self._tensors.values() if t.is_input}

    @property
    def output_shapes(self) -> dict[str, Shape]:
        return {t.name: _public(t.shape) for t in self._tensors.values() if not t.is_input}

    @property
    def profiles(self) -> dict[str, Profile]:
        """Each input's (min, opt, max) shapes: callers with more rows than max[0] split their batch."""
        return {t.name: t.profile for t in self._tensors.values() if t.is_input}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_usable()
        arrays = self._checked_inputs(inputs)
        self._cuda_context.push()
        try:
            return self._execute(arrays)
        finally:
            self._cuda_context.pop()

    def close(self) -> None:
        if self._cuda_context is None:
            return
        self._check_thread()
        self._cuda_context.push()
        self._release()

    # --- loading and releasing (the runner's context is current) ------------------------------------

    def _load(self, trt: Any) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)  # TensorRT requires it to outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ModelError(f"{self.path}: TensorRT could not deserialize the engine (its log above says why)")
        self._execution = self._engine.create_execution_context()
        self._stream = self._cuda.Stream()
        self._tensors = {t.name: t for t in _describe(trt, self._engine)}
        # Buffers for the optimisation shape now, so the first frame does not pay for allocation.
        self._prepare({t.name: t.profile.opt for t in self._tensors.values() if t.is_input})

    def _release(self) -> None:
        """Free buffers and TensorRT objects inside the context, then pop and destroy the context."""
        try:
            for tensor in getattr(self, "_tensors", {}).values():
                _free(tensor)
            # The execution context goes before the engine, the engine before the runtime.
            self._execution = self._engine = self._runtime = self._stream = None
        finally:
            context, self._cuda_context = self._cuda_context, None
            context.pop()
            context.detach()

    # --- running ------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._cuda_context is None:
            raise ModelError(f"{self.path}: the runner is closed")
        self._check_thread()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._thread:
            raise ModelError(f"{self.path}: TensorRTRunner used from thread {threading.get_ident()} but created "
                             f"on thread {self._thread}: CUDA contexts are per thread, so construct, run and "
                             "close it on the same inference thread")

    def _checked_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = sorted(t.name for t in self._tensors.values() if t.is_input)
        if sorted(inputs) != expected:
            raise ModelError(f"{self.path}: expected inputs {expected}, got {sorted(inputs)}")
        arrays = {}
        for name, array in inputs.items():
            tensor = self._tensors[name]
            array = np.ascontiguousarray(array, dtype=tensor.dtype)
            _check_in_profile(self.path, tensor, array.shape)
            arrays[name] = array
        return arrays

    def _execute(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        output_shapes = self._prepare({name: array.shape for name, array in arrays.items()})
        for name, array in arrays.items():
            staged = self._tensors[name].host[:array.size]
            staged[:] = array.reshape(-1)
            self._cuda.memcpy_htod_async(self._tensors[name].device, staged, self._stream)
        if not self._execution.execute_async_v3(self._stream.handle):
            raise ModelError(f"{self.path}: TensorRT failed to enqueue the inference (its log above says why)")
        staged_outputs = {}
        for name, shape in output_shapes.items():
            staged_outputs[name] = self._tensors[name].host[:_volume(shape)]
            self._cuda.memcpy_dtoh_async(staged_outputs[name], self._tensors[name].device, self._stream)
        self._stream.synchronize()
        # Copies: the staging buffers are overwritten by the next run.
        return {name: staged.reshape(output_shapes[name]).copy() for name, staged in staged_outputs.items()}

    def _prepare(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Set the input shapes, grow buffers that are too small; returns the output shapes."""
        for name, shape in input_shapes.items():
            if not self._execution.set_input_shape(name, tuple(shape)):
                raise ModelError(f"{self.path}: TensorRT refused shape {tuple(shape)} for input {name!r}")
        output_shapes = {t.name: tuple(self._execution.get_tensor_shape(t.name))
                         for t in self._tensors.values() if not t.is_input}
        for name, shape in {**input_shapes, **output_shapes}.items():
            self._reserve(self._tensors[name], _volume(shape))
        return output_shapes

    def _reserve(self, tensor: _Tensor, count: int) -> None:
        if tensor.host is not None and tensor.host.size >= count:
            return
        _free(tensor)
        tensor.host = self._cuda.pagelocked_empty(count, tensor.dtype)
        tensor.device = self._cuda.mem_alloc(tensor.host.nbytes)
        # The execution context keeps the address; it changes only here.
        self._execution.set_tensor_address(tensor.name, int(tensor.device))


def _describe(trt: Any, engine: Any) -> list[_Tensor]:
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = Profile(*(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))) if is_input else None
        tensors.append(_Tensor(name=name, is_input=is_input,
                               dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                               shape=tuple(engine.get_tensor_shape(name)), profile=profile))
    return tensors


def _check_in_profile(path: Path, tensor: _Tensor, shape: tuple[int, ...]) -> None:
    low, high = tensor.profile.min, tensor.profile.max
    if len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
        return
    raise ModelError(f"{path}: input {tensor.name!r} has shape {shape}, outside the engine's optimisation "
                     f"profile (min {low}, max {high}); split the batch, or rebuild the engine for this shape "
                     "with tools/build_engine.py (--max-batch, --pnet-canvas or --frame-size)")


def _free(tensor: _Tensor) -> None:
    if tensor.device is not None:
        tensor.device.free()
        tensor.host.base.free()  # pycuda's HostAllocation behind the page-locked array
    tensor.host = tensor.device = None


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _public(shape: tuple[int, ...]) -> Shape:
    return tuple(None if d < 0 else int(d) for d in shape)
