"""TensorRT's INT8 entropy calibrator over a calibration batch folder (calibration/batches.py).

tools/build_engine.py --calibrator DIR makes `EntropyCalibrator(DIR)` while its
CUDA context is current, and TensorRT then pulls the folder's batches through
get_batch, one device buffer at a time. TensorRT and pycuda come from JetPack
and are imported only when a calibrator is made, so this module imports
anywhere; the class is built on first use over the tensorrt module found then.

The batches must have the shape TensorRT calibrates at: the calibration
profile's opt shape, which build_engine.py sets to the role's opt batch (the
builder's default batch sizes in calibration/dataset.py match it).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from calibration.batches import CACHE_FILE, iter_batches, read_manifest


class BatchFeeder:
    """Everything of the calibrator but its TensorRT base: batches into device memory, and the cache file."""

    def __init__(self, batch_dir: Path, cache_file: Path | None = None) -> None:
        import pycuda.driver

        self._cuda = pycuda.driver
        self.batch_dir = Path(batch_dir)
        manifest = read_manifest(self.batch_dir)  # fails early, before TensorRT starts building
        self.input_name = manifest["input"]["name"]
        self.batch_size = int(manifest["batch_size"])
        self.cache_file = Path(cache_file) if cache_file is not None else self.batch_dir / CACHE_FILE
        self._batches = iter_batches(self.batch_dir)
        self._device: Any = None  # one pycuda allocation, reused for every batch

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: list[str]) -> list[int] | None:
        """The device address of the next batch for the one input in `names`; None when all are given."""
        if list(names) != [self.input_name]:
            raise ValueError(f"{self.batch_dir}: batches are for input {self.input_name!r}, "
                             f"the network asks for {list(names)}")
        batch = next(self._batches, None)
        if batch is None:
            self._release()
            return None
        if self._device is None:
            self._device = self._cuda.mem_alloc(batch.nbytes)
        self._cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
        return [int(self._device)]

    def read_calibration_cache(self) -> bytes | None:
        """The saved scales, which let TensorRT skip calibrating; None where there are none yet."""
        if self.cache_file.is_file():
            return self.cache_file.read_bytes()
        return None

    def write_calibration_cache(self, cache: Any) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_bytes(bytes(cache))

    def _release(self) -> None:
        if self._device is not None:
            self._device.free()
            self._device = None


def EntropyCalibrator(batch_dir: Path, cache_file: Path | None = None) -> Any:  # noqa: N802 (used as a class)
    """A tensorrt.IInt8EntropyCalibrator2 over batch_dir; the cache defaults to batch_dir/trt_entropy.cache."""
    import tensorrt as trt

    return _calibrator_class(trt.IInt8EntropyCalibrator2)(batch_dir, cache_file)


@functools.lru_cache(maxsize=None)
def _calibrator_class(base: type) -> type:
    class EntropyCalibrator(BatchFeeder, base):
        def __init__(self, batch_dir: Path, cache_file: Path | None = None) -> None:
            base.__init__(self)  # TensorRT's Python classes must have their own constructor called
            BatchFeeder.__init__(self, batch_dir, cache_file)

    return EntropyCalibrator
