"""The calibration-set builder: what each net really sees when the FP32 cascade runs on real frames.

Each runner of the FP32 detector is wrapped in a recorder, so the stored P-Net
canvases and R-Net and O-Net crops are exactly the normalised tensors the
detector fed its nets: the packed pyramid of the configured frame size and the
crops of the cascade's own candidates. The embedder's chips are the faces the
cascade finds, aligned by the embedder card and normalised by it, as
engines.embedder.Embedder feeds them. The liveness nets' crops are recorded
from engines.liveness.LivenessChecker's own runners as it scores those faces:
each card's face box scaled by its crop_scale, resized to 80x80, BGR 0..255
NCHW. The result is one folder per role (pnet, rnet, onet, embedder) and one
per liveness card (liveness/<card id>: the door runs every liveness card), the
layout tools/build_engine.py --all --calibrator DIR expects, of batches and a
manifest (calibration/batches.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from calibration.batches import FORMAT_VERSION, BatchWriter, write_manifest
from engines.manifest import sha256_of
from calibration.frames import FIT, Frame, Selection, iter_frames, source_files
from engines.align import align
from engines.liveness import LivenessChecker
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, cards_of, find_card
from engines.mtcnn import DetectorConfig, MtcnnDetector
from engines.runner import Runner, Shape, open_runner

ROLES = ("pnet", "rnet", "onet", "embedder", "liveness")
DETECTOR_ROLES = ("pnet", "rnet", "onet")
MULTI_CARD_ROLES = ("liveness",)  # roles whose every card runs, each calibrated in a folder of its own
# TensorRT calibrates at the calibration profile's opt shapes, so each role's batch equals the opt
# batch tools/build_engine.py gives it (DEFAULT_BATCH there; P-Net runs one canvas per frame).
DEFAULT_BATCH_SIZES = {"pnet": 1, "rnet": 64, "onet": 16, "embedder": 4, "liveness": 4}
# R-Net sees hundreds of candidates on a busy frame; a cap per frame keeps the set from being
# dominated by a few crowded frames (and its size in bounds). Evenly spaced over the
# candidates, which come best-scoring first, so the cap keeps the whole range of scores.
DEFAULT_MAX_PER_FRAME = {"pnet": None, "rnet": 64, "onet": 32, "embedder": None, "liveness": None}
LAST_BATCH = "padded by repeating its own samples; count is the real samples"


def set_name(card: ModelCard) -> str:
    """The folder of a card's batches, relative to a calibration set: its role, or role/card id for the
    roles whose every card runs (liveness/minifasnet-v2-2.7)."""
    return f"{card.role}/{card.id}" if card.role in MULTI_CARD_ROLES else card.role


def role_cards(models_dir: Path, role: str) -> list[ModelCard]:
    """The cards of a role a calibration set is recorded for: the one the door uses, or every liveness card."""
    if role in MULTI_CARD_ROLES:
        cards = cards_of(Path(models_dir), role)
        if not cards:
            raise ValueError(f"{models_dir}: no model card with role {role!r}")
        return cards
    return [find_card(Path(models_dir), role)]


@dataclass(frozen=True)
class BuildOptions:
    frame_size: tuple[int, int] = (640, 480)  # width, height of the camera the engines are built for
    selection: Selection = Selection()
    detector: DetectorConfig = DetectorConfig()
    roles: tuple[str, ...] = ROLES
    batch_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH_SIZES))
    max_per_frame: dict[str, int | None] = field(default_factory=lambda: dict(DEFAULT_MAX_PER_FRAME))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown or not self.roles:
            raise ValueError(f"roles {list(self.roles)}: expected some of {list(ROLES)}")
        if not self.detector.packed:
            raise ValueError("detector.packed must be True: P-Net's calibration input is the packed canvas")
        if min(self.frame_size) < 12:
            raise ValueError(f"frame_size {self.frame_size}: expected at least 12x12 pixels")

    def as_json(self) -> dict[str, Any]:
        return {"frame_size": list(self.frame_size), "fit": FIT,
                "selection": dataclasses.asdict(self.selection),
                "detector": dataclasses.asdict(self.detector),
                "batch_sizes": {role: self.batch_sizes[role] for role in self.roles},
                "max_per_frame": {role: self.max_per_frame.get(role) for role in self.roles}}


class RecordingRunner(Runner):
    """A runner that hands every input tensor to `record` before running it on the wrapped runner."""

    def __init__(self, runner: Runner, record: Callable[[np.ndarray], None]) -> None:
        self.runner = runner
        self.record = record

    @property
    def input_shapes(self) -> dict[str, Shape]:
        return self.runner.input_shapes

    @property
    def output_shapes(self) -> dict[str, Shape]:
        return self.runner.output_shapes

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (tensor,) = inputs.values()
        self.record(tensor)
        return self.runner.run(inputs)

    def close(self) -> None:
        self.runner.close()


class _RoleSet:
    """One role's writer, and the samples it took from each frame."""

    def __init__(self, folder: Path, batch_size: int, max_per_frame: int | None) -> None:
        self.writer = BatchWriter(folder, batch_size)
        self.max_per_frame = max_per_frame
        self.frames: list[list[int]] = []  # [source index, frame index, samples]
        self.frame: tuple[int, int] = (0, 0)

    def record(self, tensor: np.ndarray) -> None:
        if self.max_per_frame is not None and len(tensor) > self.max_per_frame:
            tensor = tensor[np.linspace(0, len(tensor) - 1, self.max_per_frame).round().astype(int)]
        if len(tensor):
            self.writer.add(tensor.astype(np.float32, copy=False))
            self.frames.append([*self.frame, len(tensor)])


def build(sources: Sequence[Path], out_dir: Path, options: BuildOptions = BuildOptions(),
          models_dir: Path = MODELS_DIR, progress: Callable[[int, Frame], None] | None = None) -> dict[str, dict]:
    """Runs the FP32 cascade over the sources' frames and writes out_dir/<role>/ (liveness: out_dir/liveness/<card
    id>/ per card); returns the manifests by folder name (set_name: the role, or liveness/<card id>)."""
    files = source_files(sources)
    needed = [role for role in ROLES if role in DETECTOR_ROLES or role in options.roles]
    cards = {set_name(card): card for role in needed for card in role_cards(models_dir, role)}
    sets = {name: _RoleSet(Path(out_dir) / name, options.batch_sizes[card.role], options.max_per_frame.get(card.role))
            for name, card in cards.items() if card.role in options.roles}
    runners = {role: RecordingRunner(open_runner(cards[role].model_path), _recorder(sets, role))
               for role in DETECTOR_ROLES}
    liveness = [card for card in cards.values() if card.role == "liveness"]
    checker = LivenessChecker(liveness, [RecordingRunner(open_runner(card.model_path), _recorder(sets, set_name(card)))
                                         for card in liveness]) if liveness else None
    positions = {path: i for i, path in enumerate(files)}
    frame_count = 0
    try:
        with MtcnnDetector(models_dir, options.detector, runners=runners) as detector:
            for frame_count, frame in enumerate(iter_frames(files, options.frame_size, options.selection), 1):
                for role_set in sets.values():
                    role_set.frame = (positions[frame.source], frame.index)
                faces = detector.detect(frame.rgb)
                if "embedder" in sets and faces:
                    card = cards["embedder"]
                    chips = np.stack([align(frame.rgb, face.landmarks, card.alignment)[0] for face in faces])
                    sets["embedder"].record(card.preprocess(chips))
                if checker is not None and faces:
                    checker.score(frame.rgb, faces)  # its runners record each net's batch of crops
                if progress is not None:
                    progress(frame_count, frame)
    finally:
        if checker is not None:
            checker.close()
    sources_json = [{"path": str(path), "sha256": sha256_of(path)} for path in files]
    return {name: _finish(role_set, cards[name], name, sources_json, frame_count, options)
            for name, role_set in sets.items()}


def _recorder(sets: dict[str, _RoleSet], role: str) -> Callable[[np.ndarray], None]:
    role_set = sets.get(role)
    return role_set.record if role_set is not None else (lambda tensor: None)


def _finish(role_set: _RoleSet, card: ModelCard, name: str, sources: list[dict], frames_read: int,
            options: BuildOptions) -> dict[str, Any]:
    writer = role_set.writer
    writer.finish()
    if not writer.count:
        raise ValueError(f"no {name} samples in {frames_read} frames: the cascade found nothing to calibrate on "
                         "(no faces?); give more or other frames")
    manifest = {
        "format_version": FORMAT_VERSION, "role": card.role,
        "model": {"card_id": card.id, "onnx": card.file, "onnx_sha256": sha256_of(card.model_path)},
        "input": {"name": card.input_name, "shape": [writer.batch_size, *writer.sample_shape], "dtype": "float32",
                  "layout": "NCHW"},
        "normalisation": {"channel_order": card.channel_order, "mean": [float(m) for m in card.mean],
                          "scale": card.scale, "formula": "(pixel - mean) * scale"},
        "batch_size": writer.batch_size, "count": writer.count, "padded": writer.padded, "last_batch": LAST_BATCH,
        "batches": writer.files, "sources": sources, "frames_read": frames_read,
        "frames": role_set.frames, "frames_columns": ["source", "frame", "samples"],
        "options": options.as_json(),
    }
    write_manifest(writer.folder, manifest)
    return manifest
