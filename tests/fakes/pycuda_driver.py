"""A small fake of pycuda.driver that records its calls and keeps the real driver's rules.

Rules kept, from pycuda's documentation and CUDA's: allocations need a current
context; contexts form a per-thread stack (make_context pushes, pop removes the
top, detach destroys and pops the context if it is current); async copies need
page-locked host memory and run in stream order, i.e. here only when the stream
is synchronized. Device memory is real bytes, so the fake tensorrt can compute
on it. tests/fakes/__init__.py loads a fresh copy per test and sets `log`.
"""
from __future__ import annotations

import itertools
import threading
from typing import Callable

import numpy as np

log: list[tuple] = []
GPU_NAME = "Orin (fake)"
COMPUTE_CAPABILITY = (8, 7)
DEVICE_COUNT = 1

_threads = threading.local()
_memory: dict[int, "DeviceAllocation"] = {}
_streams: dict[int, "Stream"] = {}
_addresses = itertools.count(0x7F0000000000, 0x100000)
_handles = itertools.count(1)


class LogicError(RuntimeError):
    """pycuda.driver.LogicError: the API was used against its rules."""


def _stack() -> list["Context"]:
    if not hasattr(_threads, "stack"):
        _threads.stack = []
    return _threads.stack


def _require_context(what: str) -> "Context":
    if not _stack():
        raise LogicError(f"{what}: no current CUDA context on this thread")
    return _stack()[-1]


def init(flags: int = 0) -> None:
    log.append(("init",))


class Device:
    def __init__(self, number: int) -> None:
        if not 0 <= number < DEVICE_COUNT:
            raise LogicError(f"Device({number}): invalid device ordinal")
        self.number = number

    @staticmethod
    def count() -> int:
        return DEVICE_COUNT

    def name(self) -> str:
        return GPU_NAME

    def compute_capability(self) -> tuple[int, int]:
        return COMPUTE_CAPABILITY

    def make_context(self, flags: int = 0) -> "Context":
        context = Context(self.number)
        _stack().append(context)
        log.append(("make_context", context))
        return context


class Context:
    def __init__(self, device: int) -> None:
        self.device = device
        self.detached = False

    def push(self) -> None:
        if self.detached:
            raise LogicError("push: context was detached")
        _stack().append(self)
        log.append(("push", self))

    @staticmethod
    def pop() -> None:
        # pycuda's pop is static: it removes whatever context is on top.
        if not _stack():
            raise LogicError("cannot pop non-current context")
        log.append(("pop", _stack().pop()))

    def detach(self) -> None:
        if self.detached:
            raise LogicError("cannot detach from invalid context")
        if _stack() and _stack()[-1] is self:
            _stack().pop()
        self.detached = True
        log.append(("detach", self))

    @staticmethod
    def get_current() -> "Context | None":
        return _stack()[-1] if _stack() else None


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.address = next(_addresses)
        self.data = bytearray(nbytes)
        self.freed = False
        _memory[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.freed:
            raise LogicError("free: already freed")
        self.freed = True
        del _memory[self.address]
        log.append(("free", self.address))


class HostAllocation(bytearray):
    """The page-locked memory behind a pagelocked_empty array (its .base)."""

    freed = False

    def free(self) -> None:
        if self.freed:
            raise LogicError("free: already freed")
        self.freed = True
        log.append(("free_host", len(self)))


def mem_alloc(nbytes: int) -> DeviceAllocation:
    _require_context("mem_alloc")
    allocation = DeviceAllocation(nbytes)
    log.append(("mem_alloc", nbytes, allocation.address))
    return allocation


def pagelocked_empty(shape, dtype, order: str = "C") -> np.ndarray:
    _require_context("pagelocked_empty")
    dtype = np.dtype(dtype)
    allocation = HostAllocation(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    log.append(("pagelocked_empty", shape, dtype.name))
    return np.ndarray(shape, dtype, buffer=allocation, order=order)


def _is_pagelocked(array: np.ndarray) -> bool:
    node = array
    while isinstance(node, np.ndarray):
        node = node.base
    return isinstance(node, HostAllocation) and not node.freed


def _allocation_at(address: int, nbytes: int) -> DeviceAllocation:
    allocation = _memory.get(int(address))
    if allocation is None:
        raise LogicError(f"invalid device pointer {int(address):#x} (never allocated or freed)")
    if len(allocation.data) < nbytes:
        raise LogicError(f"{nbytes} bytes do not fit the {len(allocation.data)}-byte allocation at {address:#x}")
    return allocation


class Stream:
    def __init__(self, flags: int = 0) -> None:
        _require_context("Stream")
        self.handle = next(_handles)
        self.pending: list[Callable[[], None]] = []
        _streams[self.handle] = self

    def enqueue(self, operation: Callable[[], None]) -> None:
        self.pending.append(operation)

    def synchronize(self) -> None:
        log.append(("synchronize", self.handle))
        while self.pending:
            self.pending.pop(0)()


def _stream(handle: int) -> Stream:
    if handle not in _streams:
        raise LogicError(f"invalid stream handle {handle}")
    return _streams[handle]


def memcpy_htod(dest, src: np.ndarray) -> None:
    """The synchronous copy takes any contiguous host array, page-locked or not."""
    if not src.flags.c_contiguous:
        raise LogicError("memcpy_htod: src must be contiguous")
    allocation = _allocation_at(int(dest), src.nbytes)
    log.append(("htod", int(dest), src.nbytes))
    allocation.data[:src.nbytes] = src.tobytes()


def memcpy_htod_async(dest, src: np.ndarray, stream: Stream | None = None) -> None:
    if not _is_pagelocked(src):
        raise LogicError("memcpy_htod_async: src must be page-locked")
    allocation = _allocation_at(int(dest), src.nbytes)
    log.append(("htod", int(dest), src.nbytes))

    def copy() -> None:
        allocation.data[:src.nbytes] = src.tobytes()

    stream.enqueue(copy) if stream else copy()


def memcpy_dtoh_async(dest: np.ndarray, src, stream: Stream | None = None) -> None:
    if not _is_pagelocked(dest):
        raise LogicError("memcpy_dtoh_async: dest must be page-locked")
    allocation = _allocation_at(int(src), dest.nbytes)
    log.append(("dtoh", int(src), dest.nbytes))

    def copy() -> None:
        dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(allocation.data[:dest.nbytes]), np.uint8)

    stream.enqueue(copy) if stream else copy()
