"""Fakes of tensorrt and pycuda.driver for tests on machines without a GPU, and of
Jetson.GPIO for tests off a Jetson.

install() and install_jetson_gpio() load a fresh copy of each per test (no state leaks
between tests) and put them in sys.modules where the code under test imports them;
install() gives tensorrt and pycuda one shared call log.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKES = Path(__file__).resolve().parent


@dataclass
class Fakes:
    trt: Any  # the fake tensorrt module
    cuda: Any  # the fake pycuda.driver module
    log: list[tuple]

    def calls(self, name: str, since: int = 0) -> list[tuple]:
        """The logged calls of one name from log entry `since` on, each without the name."""
        return [entry[1:] for entry in self.log[since:] if entry[0] == name]

    def names(self) -> list[str]:
        return [entry[0] for entry in self.log]


def _fresh(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(monkeypatch: pytest.MonkeyPatch, tensorrt_version: str = "10.3.0",
            gpu_name: str = "Orin (fake)", compute_capability: tuple[int, int] = (8, 7)) -> Fakes:
    log: list[tuple] = []
    trt = _fresh("tensorrt", FAKES / "tensorrt.py")
    trt.__version__, trt.log = tensorrt_version, log
    if int(tensorrt_version.split(".")[0]) < 10:
        del trt.IProgressMonitor  # added in TensorRT 10.0
    cuda = _fresh("pycuda.driver", FAKES / "pycuda_driver.py")
    cuda.log, cuda.GPU_NAME, cuda.COMPUTE_CAPABILITY = log, gpu_name, compute_capability
    package = types.ModuleType("pycuda")
    package.driver = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return Fakes(trt, cuda, log)


def install_jetson_gpio(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The fake Jetson.GPIO, importable as `Jetson.GPIO`; its `log` lists every call."""
    gpio = _fresh("Jetson.GPIO", FAKES / "jetson_gpio.py")
    package = types.ModuleType("Jetson")
    package.GPIO = gpio
    monkeypatch.setitem(sys.modules, "Jetson", package)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    return gpio
