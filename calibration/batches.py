"""Calibration batches on disk: one folder per role of fixed-size `.npy` batches and a `manifest.json`.

Every batch has the same shape, because TensorRT's calibrator hands the engine
one device buffer of a fixed size. The last batch is padded by repeating its own
samples from the start (never with zeros or foreign data, which would widen the
measured ranges); the manifest's `count` says how many samples are real.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engines.manifest import sha256_of

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BATCH_PATTERN = "batch_*.npy"
CACHE_FILE = "trt_entropy.cache"  # calibration/trt_calibrator.py's default TensorRT calibration cache


class CalibrationSetError(ValueError):
    """A calibration folder that is missing, of another format version, or whose files do not match its manifest."""


class BatchWriter:
    """Collects samples of one role and writes them as batch_00000.npy, batch_00001.npy, ... of batch_size each."""

    def __init__(self, folder: Path, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: expected >= 1")
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.count = 0
        self.padded = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.files: list[dict[str, str]] = []
        self._pending: list[np.ndarray] = []
        self._clear()

    def add(self, samples: np.ndarray) -> None:
        """Adds N samples (N x sample shape); writes every batch that fills."""
        if self.sample_shape is not None and samples.shape[1:] != self.sample_shape:
            raise ValueError(f"sample shape {samples.shape[1:]} differs from the earlier {self.sample_shape}")
        self.sample_shape = samples.shape[1:]
        self._pending.append(samples)
        self.count += len(samples)
        pending = np.concatenate(self._pending)
        full = len(pending) // self.batch_size * self.batch_size
        for start in range(0, full, self.batch_size):
            self._write(pending[start:start + self.batch_size])
        self._pending = [pending[full:]] if full < len(pending) else []

    def finish(self) -> None:
        """Writes the last, padded batch."""
        if not self._pending:
            return
        rest = np.concatenate(self._pending)
        self.padded = self.batch_size - len(rest)
        self._write(rest[np.arange(self.batch_size) % len(rest)])
        self._pending = []

    def _write(self, batch: np.ndarray) -> None:
        path = self.folder / f"batch_{len(self.files):05d}.npy"
        np.save(path, np.ascontiguousarray(batch))
        self.files.append({"file": path.name, "sha256": sha256_of(path)})

    def _clear(self) -> None:
        # Batches of an earlier build must not be mixed with this one's, nor TensorRT
        # reuse the scales it cached from them instead of calibrating on the new ones.
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in [*self.folder.glob(BATCH_PATTERN), self.folder / MANIFEST, self.folder / CACHE_FILE]:
            stale.unlink(missing_ok=True)



def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    # Sorted keys and no timestamps: the same input gives byte-identical manifests.
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CalibrationSetError(f"{folder}: no {MANIFEST}: not a calibration batch folder "
                                  "(make one with `python -m calibration build`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CalibrationSetError(f"{path}: not valid JSON: {error}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CalibrationSetError(f"{path}: format_version {manifest.get('format_version')!r}, "
                                  f"this code reads {FORMAT_VERSION}: rebuild the calibration set")
    return manifest


def iter_batches(folder: Path, start: int = 0, stop: int | None = None, verify: bool = True) -> Iterator[np.ndarray]:
    """Batches start..stop-1 (default all) in manifest order, the last one with its padding.

    verify checks each file against its sha256 in the manifest, so a batch left
    over from another build cannot calibrate a model silently.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    shape, dtype = tuple(manifest["input"]["shape"]), np.dtype(manifest["input"]["dtype"])
    for entry in manifest["batches"][start:stop]:
        path = folder / entry["file"]
        if verify and (not path.is_file() or sha256_of(path) != entry["sha256"]):
            raise CalibrationSetError(f"{path}: missing, or not the batch its manifest lists (sha256 differs)")
        batch = np.load(path)
        if batch.shape != shape or batch.dtype != dtype:
            raise CalibrationSetError(f"{path}: shape {batch.shape} {batch.dtype}, the manifest says {shape} {dtype}")
        yield batch
