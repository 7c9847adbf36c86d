#!/usr/bin/env python3
"""How much the INT8 Q/DQ models lose against FP32, on the CPU under ONNX Runtime.

Calibration and evaluation data never overlap:
  calibration  the demo clip's frames with index % 3 == 1, and the photos of
               ../shared/data/sets/dlib_examples/scenes (in no evaluation set),
               letterboxed to 640x480: P-Net canvases, R-Net and O-Net crops and
               embedder chips, all from the FP32 cascade (calibration/dataset.py);
  output error the clip's frames with index % 3 == 0: their P-Net canvases, R-Net
               and O-Net crops and chips as the FP32 cascade makes them, through
               each net in FP32 and INT8: the low-noise figure the calibration
               methods are compared on;
  detection    the demo clip's frames with index % 3 == 0 or 2 (all those not
               calibrated on): INT8 must find >= 99% of the faces FP32 finds
               (IoU >= 0.5), with all three nets INT8 and with each net alone INT8
               (which net loses the faces); beside it, what FP32 itself loses to
               +-1 grey level of noise, and what the three nets lose in FP16
               (simulated: calibration/fp16.py);
  embedding    ../shared/data/dev_identities.tsv: each photo's largest face, found
               and aligned by FP32, embedded by FP32 and INT8: median cosine
               >= 0.99, and all-pairs ROC AUC within 0.005 of FP32; the AUC of the
               whole INT8 pipeline (INT8 detector too) is shown beside it;
  speed        median ms of each model, FP32 and INT8, one thread, on
               calibration inputs (P-Net: one canvas, R-Net 64, O-Net 16 crops,
               embedder 1 chip).
  liveness     both liveness nets (every card of role liveness), calibrated on
               their 80x80 crops of the faces FP32 finds in the calibration
               frames (engines/liveness.py's own crops, calibration/dataset.py:
               liveness/<card id>), all live faces; then FP32 against INT8:
               each net's live probability on the held-out clip crops, the
               combined live score of every FP32 face of the evaluation clip
               frames (live, the door's camera), and on
               ../shared/data/sets/spoof_dev/MANIFEST.tsv as
               tools/evaluate_liveness.py judges it (the largest face of each
               image, videos per track; FP32's faces replayed for INT8, so only
               the liveness nets differ): the live scores' median and max
               absolute difference, the decisions that flip at the cards'
               threshold, and APCER/BPCER/ACER/AUC of FP32, INT8 and simulated
               FP16 (what build_engine.py --all builds by default); speed of
               each net on 1 crop.

examples:
  python tools/int8_quality.py
  python tools/int8_quality.py --methods percentile,entropy,minmax   # compare calibration methods
  python tools/int8_quality.py --keep-fp16 pnet   # P-Net in (simulated) FP16, the others INT8
  python tools/int8_quality.py --float-first --exclude pnet:conv2 --json

exit status: 0 every target met (for the first method), 1 a target missed or a step failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.batches import iter_batches  # noqa: E402
from calibration.dataset import BuildOptions, build, set_name  # noqa: E402
from calibration.fp16 import write_fp16_simulation  # noqa: E402
from calibration.frames import Selection, iter_frames  # noqa: E402
from calibration.quantize import METHODS, QuantizeOptions, quantize_model  # noqa: E402
from engines import evaluation as ev  # noqa: E402
from engines.align import align  # noqa: E402
from engines.embedder import Embedder  # noqa: E402
from engines.errors import ImageError  # noqa: E402
from engines.face import Face  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.liveness import LivenessChecker  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import ModelCard, cards_of, find_card  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from engines.onnx_runner import OnnxRunner  # noqa: E402
from tools import evaluate_liveness as pad  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "daemon" / "demo" / "video_02_hikers_walking_towards_camera.mp4"
SHARED_DATA = REPO.parent / "shared" / "data"
FRAME_SIZE = (640, 480)
EVERY, CALIBRATION_OFFSET, EVALUATION_OFFSETS = 3, 1, (0, 2)
ROLES = ("pnet", "rnet", "onet", "embedder")
TARGET_COSINE, TARGET_AUC_DROP, TARGET_RECALL, MATCH_IOU = 0.99, 0.005, 0.99, 0.5
DEV_MIN_FACE = 20  # as tools/evaluate.py detects photos
SPEED_BATCH = {"pnet": 1, "rnet": 64, "onet": 16, "embedder": 1}
SPEED_REPEATS = 30
HELDOUT_BATCHES = 40  # per role, for the output errors
MIN_FACE = DetectorConfig().min_face_size
LIVENESS_MANIFEST = SHARED_DATA / "sets" / "spoof_dev" / "MANIFEST.tsv"
LIVENESS_MIN_FACE = 20.0  # as tools/evaluate_liveness.py detects
LIVENESS_VIDEO_STRIDE = 1  # every frame of the dev videos, as tools/evaluate_liveness.py by default
LIVENESS_SPEED_BATCH = 1  # crops per net call: a door frame holds one or two faces
KEEP_FP16_ROLES = (*ROLES, "liveness")


@dataclass
class Reference:
    """What FP32 produces on the evaluation data, computed once for every method compared."""

    clip_frames: list[np.ndarray]
    clip_faces: list[list[Face]]
    jitter: dict[str, Any]  # FP32 against itself on the frames with +-1 grey level of noise
    fp16: dict[str, Any]  # FP32 against the three nets in simulated FP16
    heldout: Path  # the nets' inputs on the evaluation frames (a calibration-set folder)
    dev_frames: list[np.ndarray]  # dev photos whose largest face FP32 found
    dev_identities: np.ndarray
    dev_chips: np.ndarray  # N x H x W x 3, aligned from FP32's faces
    dev_embeddings: np.ndarray
    dev_missed: int  # photos where FP32 found no face
    liveness: "LivenessReference | None" = None  # None: no liveness cards or no spoof_dev manifest


@dataclass
class LivenessReference:
    """FP32 liveness on the evaluation data: scores, and the faces FP32 found on the dev set to replay."""

    cards: list[ModelCard]
    threshold: float
    clip_scores: np.ndarray  # the combined score of every FP32 face of the evaluation clip frames
    rows: list[dict[str, str]]  # the dev manifest
    root: Path
    detections: list[tuple[tuple[int, ...], list[Face]]]  # every detect call of the FP32 pass: frame shape, faces
    items: list[Any]  # tools/evaluate_liveness.py's Items, FP32
    face_scores: np.ndarray  # every face scored on the dev set (each scored video frame's too), in call order
    fp16: dict[str, Any]  # simulated FP16 nets against FP32, as liveness_figures reports INT8


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        exclude = parse_exclude(args.exclude)
        keep_fp16 = parse_roles(args.keep_fp16)
        require_data(args.dev)
    except ValueError as error:
        print(f"int8_quality.py: error: {error}", file=sys.stderr)
        return 2
    calibration = args.work_dir / "calibration"
    step(f"calibration set -> {calibration}")
    build([CLIP, SHARED_DATA / "sets" / "dlib_examples" / "scenes"], calibration,
          BuildOptions(frame_size=FRAME_SIZE, selection=Selection(EVERY, CALIBRATION_OFFSET)))
    step("FP32 reference on the evaluation data")
    reference = fp32_reference(args.dev, args.work_dir)
    results = {}
    for method in methods:
        options = QuantizeOptions(method=method, float_heads=not args.quantize_heads, float_first=args.float_first)
        step(f"quantising ({method}) -> {args.work_dir / method}")
        models = quantize_all(calibration, args.work_dir / method, options, exclude, keep_fp16)
        step(f"measuring ({method})")
        results[method] = measure(models, reference, calibration)
    report = {"methods": results, "targets": targets(results[methods[0]], reference.fp16),
              "judged_method": methods[0], "kept_fp16": list(keep_fp16), "fp32_jitter": reference.jitter,
              "fp16": reference.fp16,
              "fp32_dev_photos_without_face": reference.dev_missed,
              "liveness_fp16": reference.liveness.fp16 if reference.liveness else None}
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0 if all(t["pass"] for t in report["targets"]) else 1


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="int8_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=REPO / "build" / "int8-quality",
                        help="calibration set and Q/DQ models go here (default: build/int8-quality)")
    parser.add_argument("--dev", type=Path, default=SHARED_DATA / "dev_identities.tsv",
                        help="identity TSV (path<TAB>identity, paths relative to sets/ beside it)")
    parser.add_argument("--methods", default="percentile",
                        help=f"calibration methods, comma-separated, the first is judged ({', '.join(METHODS)})")
    parser.add_argument("--quantize-heads", action="store_true",
                        help="quantise the output layers too (kept in float by default)")
    parser.add_argument("--float-first", action="store_true", help="also keep the layers reading the input in float")
    parser.add_argument("--exclude", action="append", default=[], metavar="ROLE:NODE",
                        help="keep this node of this role's model in float (repeatable)")
    parser.add_argument("--keep-fp16", action="append", default=[], metavar="ROLE",
                        help="measure this role's model in simulated FP16 instead of INT8 (repeatable), e.g. pnet; "
                             "liveness: both liveness nets")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def parse_methods(text: str) -> list[str]:
    methods = [m for m in text.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"--methods {text!r}: expected some of {', '.join(METHODS)}")
    return methods


def parse_exclude(items: list[str]) -> dict[str, tuple[str, ...]]:
    exclude: dict[str, list[str]] = {role: [] for role in ROLES}
    for item in items:
        role, sep, node = item.partition(":")
        if not sep or role not in ROLES or not node:
            raise ValueError(f"--exclude {item!r}: expected ROLE:NODE with ROLE one of {', '.join(ROLES)}")
        exclude[role].append(node)
    return {role: tuple(nodes) for role, nodes in exclude.items()}


def parse_roles(items: list[str]) -> tuple[str, ...]:
    unknown = sorted(set(items) - set(KEEP_FP16_ROLES))
    if unknown:
        raise ValueError(f"--keep-fp16 {unknown[0]!r}: expected one of {', '.join(KEEP_FP16_ROLES)}")
    return tuple(items)


def require_data(dev: Path) -> None:
    for path in (CLIP, dev, SHARED_DATA / "sets" / "dlib_examples" / "scenes"):
        if not path.exists():
            raise ValueError(f"{path} is absent: this measurement needs the demo clip and ../shared/data")


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- FP32 reference -----------------------------------------------------------------------------

def fp32_reference(dev: Path, work_dir: Path) -> Reference:
    clip = [frame.rgb for offset in EVALUATION_OFFSETS
            for frame in iter_frames([CLIP], FRAME_SIZE, Selection(EVERY, offset))]
    rng = np.random.default_rng(0)
    with MtcnnDetector() as detector:
        clip_faces = [detector.detect(frame) for frame in clip]
        noisy = [detector.detect(np.clip(frame + rng.integers(-1, 2, frame.shape), 0, 255).astype(np.uint8))
                 for frame in clip]
    jitter = compare_faces(clip_faces, noisy)
    fp16 = {role: write_fp16_simulation(find_card(MODELS_DIR, role).model_path, work_dir / "fp16")
            for role in ("pnet", "rnet", "onet")}
    with detector_with(fp16) as detector:
        fp16_faces = compare_faces(clip_faces, [detector.detect(frame) for frame in clip])
    heldout = work_dir / "heldout"
    build([CLIP], heldout, BuildOptions(frame_size=FRAME_SIZE, selection=Selection(EVERY, EVALUATION_OFFSETS[0])))
    frames, identities, chips, missed = dev_chips(dev)
    with Embedder.from_models() as embedder:
        embeddings = embedder.embed(chips)
    liveness = liveness_reference(clip, clip_faces, work_dir)
    return Reference(clip, clip_faces, jitter, fp16_faces, heldout, frames, identities, chips, embeddings, missed,
                     liveness)


def read_identities(tsv: Path) -> list[tuple[Path, str]]:
    rows = [line.split("\t")[:2] for line in tsv.read_text().splitlines()[1:] if line.strip()]
    return [(tsv.parent / "sets" / path, identity) for path, identity in rows]


def dev_chips(tsv: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, int]:
    """The dev photos with a face, their identities and the FP32-aligned chip of each largest face."""
    alignment = find_card(MODELS_DIR, "embedder").alignment
    frames, identities, chips, missed = [], [], [], 0
    with MtcnnDetector(config=DetectorConfig(min_face_size=DEV_MIN_FACE)) as detector:
        for path, identity in read_identities(tsv):
            face, rgb = largest_face(detector, path)
            if face is None:
                missed += 1
                continue
            frames.append(rgb)
            identities.append(identity)
            chips.append(align(rgb, face.landmarks, alignment)[0])
    return frames, np.array(identities), np.stack(chips), missed


def largest_face(detector: MtcnnDetector, path: Path) -> tuple[Face | None, np.ndarray | None]:
    try:
        rgb = load_image(path)
    except ImageError as error:
        print(f"skipped {error}", file=sys.stderr)
        return None, None
    faces = detector.detect(rgb)
    return (max(faces, key=lambda f: f.width) if faces else None), rgb


class ReplayDetector:
    """Records the faces a detector finds, call by call; replays them on a second pass over the same frames."""

    def __init__(self, detector: MtcnnDetector | None = None,
                 recorded: list[tuple[tuple[int, ...], list[Face]]] | None = None) -> None:
        self.detector, self.recorded, self.position = detector, recorded if recorded is not None else [], 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        if self.detector is not None:
            faces = self.detector.detect(rgb)
            self.recorded.append((rgb.shape, faces))
            return faces
        shape, faces = self.recorded[self.position]
        if shape != rgb.shape:
            raise RuntimeError(f"replayed detection {self.position} was of a {shape} frame, not {rgb.shape}")
        self.position += 1
        return faces


class ScoreLog:
    """A LivenessChecker that keeps every score it gives, in call order."""

    def __init__(self, checker: LivenessChecker) -> None:
        self.checker, self.scores = checker, []

    def score(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        scores = self.checker.score(rgb, faces)
        self.scores.append(scores)
        return scores

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checker, name)

    def all_scores(self) -> np.ndarray:
        return np.concatenate(self.scores) if self.scores else np.empty(0, np.float32)


def liveness_reference(clip: list[np.ndarray], clip_faces: list[list[Face]],
                       work_dir: Path) -> LivenessReference | None:
    cards = cards_of(MODELS_DIR, "liveness")
    if not cards or not LIVENESS_MANIFEST.exists():
        print(f"liveness skipped: {'no liveness cards' if not cards else f'{LIVENESS_MANIFEST} is absent'}",
              file=sys.stderr)
        return None
    rows, root = pad.read_manifest(LIVENESS_MANIFEST, None)
    with LivenessChecker(cards) as checker, \
            MtcnnDetector(config=DetectorConfig(min_face_size=LIVENESS_MIN_FACE)) as detector:
        threshold = checker.threshold
        clip_scores = score_clip(checker, clip, clip_faces)
        replay, log = ReplayDetector(detector), ScoreLog(checker)
        items = pad.score_all(rows, root, pad.Scorer(replay, log), LIVENESS_VIDEO_STRIDE)
    reference = LivenessReference(cards, threshold, clip_scores, rows, root, replay.recorded, items,
                                  log.all_scores(), {})
    fp16 = {set_name(card): write_fp16_simulation(card.model_path, work_dir / "fp16") for card in cards}
    reference.fp16 = liveness_scores_against(fp16, reference, clip, clip_faces)
    return reference


def score_clip(checker: LivenessChecker, clip: list[np.ndarray], clip_faces: list[list[Face]]) -> np.ndarray:
    """The combined live score of every face, all faces of a frame in one batch, as the door scores them."""
    scores = [checker.score(frame, faces) for frame, faces in zip(clip, clip_faces) if faces]
    return np.concatenate(scores) if scores else np.empty(0, np.float32)


def liveness_checker(models: dict[str, Path], cards: list[ModelCard]) -> LivenessChecker:
    """The liveness cards with the nets of `models` (INT8 or simulated FP16), keyed by set_name."""
    return LivenessChecker(cards, [OnnxRunner(models[set_name(card)]) for card in cards])


# --- quantising ---------------------------------------------------------------------------------

def quantize_all(calibration: Path, out_dir: Path, options: QuantizeOptions, exclude: dict[str, tuple[str, ...]],
                 keep_fp16: tuple[str, ...]) -> dict[str, Path]:
    """The model of each role to measure as "INT8": its Q/DQ model, or its FP16 simulation where kept."""
    models = {}
    for role in ROLES:
        card = find_card(MODELS_DIR, role)
        if role in keep_fp16:
            models[role] = write_fp16_simulation(card.model_path, out_dir)
        else:
            options_here = replace(options, exclude=exclude[role])
            models[role] = quantize_model(card.path, calibration / role, out_dir, options_here).model
    for card in cards_of(MODELS_DIR, "liveness"):  # every liveness card runs: each its own model, by set_name
        name = set_name(card)
        if "liveness" in keep_fp16:
            models[name] = write_fp16_simulation(card.model_path, out_dir)
        elif (calibration / name).is_dir():
            models[name] = quantize_model(card.path, calibration / name, out_dir, options).model
    return models


# --- measuring ----------------------------------------------------------------------------------

def measure(models: dict[str, Path], reference: Reference, calibration: Path) -> dict[str, Any]:
    return {"output_error": output_errors(models, reference.heldout),
            "embedding": embedding_figures(models, reference),
            "detection": detection_figures(models, reference),
            "speed_ms": speed_figures(models, calibration),
            "liveness": liveness_figures(models, reference, calibration)}


def liveness_figures(models: dict[str, Path], reference: Reference, calibration: Path) -> dict[str, Any] | None:
    """FP32 against INT8 (or simulated FP16 with --keep-fp16 liveness) for the liveness nets."""
    ref = reference.liveness
    if ref is None or any(set_name(card) not in models for card in ref.cards):
        return None
    figures = liveness_scores_against(models, ref, reference.clip_frames, reference.clip_faces)
    nets, speed = {}, {}
    for card in ref.cards:
        name, live = set_name(card), card.liveness.live_class
        expected, got = [], []
        with OnnxRunner(card.model_path) as fp32, OnnxRunner(models[name]) as int8:
            for batch in iter_batches(reference.heldout / name, stop=HELDOUT_BATCHES):
                expected.append(fp32.run({card.input_name: batch})[card.outputs["prob"]][:, live])
                got.append(int8.run({card.input_name: batch})[card.outputs["prob"]][:, live])
            difference = np.abs(np.concatenate(expected) - np.concatenate(got))
            nets[card.id] = {"crops": len(difference), "mean_abs_diff": float(difference.mean()),
                             "max_abs_diff": float(difference.max())}
            batch = next(iter_batches(calibration / name))[:LIVENESS_SPEED_BATCH]
            fp32_ms, int8_ms = median_ms([fp32.run, int8.run], {card.input_name: batch})
        speed[card.id] = {"input": list(batch.shape), "fp32": fp32_ms, "int8": int8_ms}
    return {**figures, "heldout_live_probability": nets, "speed_ms": speed}


def liveness_scores_against(models: dict[str, Path], ref: LivenessReference, clip: list[np.ndarray],
                            clip_faces: list[list[Face]] | None = None) -> dict[str, Any]:
    """The nets of `models` against FP32: score agreement on the clip's and the dev set's faces, and the dev
    set's APCER/BPCER for both (the dev set's faces are FP32's, replayed)."""
    with liveness_checker(models, ref.cards) as checker:
        clip_scores = score_clip(checker, clip, clip_faces) if clip_faces is not None else None
        log = ScoreLog(checker)
        items = pad.score_all(ref.rows, ref.root, pad.Scorer(ReplayDetector(recorded=ref.detections), log),
                              LIVENESS_VIDEO_STRIDE)
    both = np.array([(a.score, b.score) for a, b in zip(ref.items, items)
                     if a.score is not None and b.score is not None], np.float64).reshape(-1, 2)
    figures = {"cards": [card.id for card in ref.cards], "threshold": ref.threshold,
               "dev_faces": agreement(ref.face_scores, log.all_scores(), ref.threshold),
               "dev_presentations": agreement(both[:, 0], both[:, 1], ref.threshold),
               "dev_fp32": pad_rates(ref.items, ref.threshold), "dev_int8": pad_rates(items, ref.threshold)}
    if clip_faces is not None:
        figures = {"clip_faces": agreement(ref.clip_scores, clip_scores, ref.threshold), **figures}
    return figures


def agreement(fp32: np.ndarray, other: np.ndarray, threshold: float) -> dict[str, Any]:
    """Median and max |FP32 - other| of live scores, and the decisions at the threshold that differ."""
    fp32, other = np.asarray(fp32, np.float64), np.asarray(other, np.float64)
    if fp32.shape != other.shape:
        raise RuntimeError(f"{len(fp32)} FP32 scores against {len(other)}: the passes scored different faces")
    difference = np.abs(fp32 - other)
    return {"count": len(fp32), "median_abs_diff": float(np.median(difference)) if len(fp32) else None,
            "max_abs_diff": float(difference.max()) if len(fp32) else None,
            "flipped": int(np.sum((fp32 >= threshold) != (other >= threshold))),
            "live_fp32": int(np.sum(fp32 >= threshold)), "live_other": int(np.sum(other >= threshold))}


def pad_rates(items: list[Any], threshold: float) -> dict[str, Any]:
    """tools/evaluate_liveness.py's measures at the threshold, the headline and per attack type and source."""
    report, _ = pad.evaluate(items, threshold, pad.APCER_POINTS[0])
    keys = ("apcer", "bpcer", "acer", "auc", "live_scored", "spoof_scored")
    return {**{key: report[key] for key in (*keys, "apcer_worst_attack", "bpcer_at_apcer_0.01")},
            "no_face": len(report["no_face"]),
            "per_attack": {name: {key: g[key] for key in keys} for name, g in report["per_attack"].items()},
            "per_source": {name: {key: g[key] for key in keys} for name, g in report["per_source"].items()}}


def output_errors(models: dict[str, Path], heldout: Path) -> dict[str, dict[str, float]]:
    """Per net, FP32 against INT8 on the inputs the FP32 cascade gives it on the evaluation frames."""
    errors = {}
    for role in ROLES:
        card = find_card(MODELS_DIR, role)
        pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        with OnnxRunner(card.model_path) as fp32, OnnxRunner(models[role]) as int8:
            for batch in iter_batches(heldout / role, stop=HELDOUT_BATCHES):
                expected, got = fp32.run({card.input_name: batch}), int8.run({card.input_name: batch})
                for name, tensor in card.outputs.items():
                    pairs.setdefault(name, []).append((expected[tensor], got[tensor]))
        errors[role] = {name: output_error(name, np.concatenate([a for a, _ in p]), np.concatenate([b for _, b in p]))
                        for name, p in pairs.items()}
    return errors


def output_error(name: str, fp32: np.ndarray, int8: np.ndarray) -> float:
    """The embedding's median cosine; the face probability's and others' mean absolute difference."""
    if name == "embedding":
        a, b = fp32.reshape(len(fp32), -1), int8.reshape(len(int8), -1)
        return float(np.median(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    if name == "prob":  # channel 1 is the face probability
        fp32, int8 = fp32[:, 1], int8[:, 1]
    return float(np.abs(fp32 - int8).mean())


def embedding_figures(models: dict[str, Path], reference: Reference) -> dict[str, Any]:
    card = find_card(MODELS_DIR, "embedder")
    with Embedder(card, runner=OnnxRunner(models["embedder"])) as embedder:
        int8 = embedder.embed(reference.dev_chips)
    fp32 = reference.dev_embeddings
    cosine = np.sum(fp32 * int8, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    return {"chips": len(fp32), "cosine_median": float(np.median(cosine)), "cosine_min": float(cosine.min()),
            "l2_median": float(np.median(np.linalg.norm(fp32 - int8, axis=1))),
            "auc_fp32": verification_auc(fp32, reference.dev_identities, card.metric),
            "auc_int8": verification_auc(int8, reference.dev_identities, card.metric),
            "auc_int8_pipeline": pipeline_auc(models, reference, card.metric)}


def verification_auc(embeddings: np.ndarray, identities: np.ndarray, metric: str) -> float:
    genuine, impostor = ev.all_pairs(ev.pairwise_distances(embeddings, metric), identities)
    return ev.auc(ev.roc(genuine, impostor))


def pipeline_auc(models: dict[str, Path], reference: Reference, metric: str) -> float:
    """AUC with INT8 detection, alignment on INT8 landmarks and INT8 embeddings (photos INT8 misses are left out)."""
    card = find_card(MODELS_DIR, "embedder")
    config = DetectorConfig(min_face_size=DEV_MIN_FACE)
    with detector_with(models, config) as detector, Embedder(card, runner=OnnxRunner(models["embedder"])) as embedder:
        kept, chips = [], []
        for i, rgb in enumerate(reference.dev_frames):
            faces = detector.detect(rgb)
            if faces:
                kept.append(i)
                chips.append(align(rgb, max(faces, key=lambda f: f.width).landmarks, card.alignment)[0])
        embeddings = embedder.embed(np.stack(chips))
    return verification_auc(embeddings, reference.dev_identities[kept], metric)


def detector_with(models: dict[str, Path], config: DetectorConfig = DetectorConfig(),
                  roles: tuple[str, ...] = ("pnet", "rnet", "onet")) -> MtcnnDetector:
    """The detector with the given nets from `models` (INT8 or simulated FP16) and the others FP32."""
    return MtcnnDetector(MODELS_DIR, config, runners={role: OnnxRunner(models[role]) for role in roles})


def detection_figures(models: dict[str, Path], reference: Reference) -> dict[str, Any]:
    figures = {}
    for label, roles in [("all", ("pnet", "rnet", "onet")), ("pnet", ("pnet",)), ("rnet", ("rnet",)),
                         ("onet", ("onet",))]:
        with detector_with(models, roles=roles) as detector:
            found = [detector.detect(frame) for frame in reference.clip_frames]
        figures[label] = compare_faces(reference.clip_faces, found)
        if label == "all":
            large = [[face for face in faces if face.width >= MIN_FACE] for faces in reference.clip_faces]
            figures[f"all, FP32 faces >= {MIN_FACE:g} px"] = compare_faces(large, found, count_extra=False)
    return figures


def compare_faces(fp32: list[list[Face]], int8: list[list[Face]], count_extra: bool = True) -> dict[str, Any]:
    """Recall of FP32's faces among INT8's (IoU >= MATCH_IOU), INT8's extra faces, landmark shifts,
    and the faces lost: frame index, FP32 width and score, and the best IoU any INT8 face has with it."""
    matched, extra, shifts, lost = 0, 0, [], []
    for frame, (expected, got) in enumerate(zip(fp32, int8)):
        pairs = match(expected, got)
        matched += len(pairs)
        extra += len(got) - len(pairs) if count_extra else 0
        shifts += [float(np.linalg.norm(expected[i].landmarks - got[j].landmarks, axis=1).max()) for i, j in pairs]
        found = {i for i, _ in pairs}
        lost += [{"frame": frame, "width": round(float(face.width), 1), "score": round(face.score, 3),
                  "best_iou": round(max((iou(face.box, other.box) for other in got), default=0.0), 2)}
                 for i, face in enumerate(expected) if i not in found]
    total = sum(len(faces) for faces in fp32)
    return {"fp32_faces": total, "matched": matched, "recall": matched / total if total else float("nan"),
            "int8_extra": extra, "landmark_shift_median_px": float(np.median(shifts)) if shifts else float("nan"),
            "lost": lost}


def match(expected: list[Face], got: list[Face]) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs by IoU, best first, at IoU >= MATCH_IOU."""
    candidates = sorted(((iou(a.box, b.box), i, j) for i, a in enumerate(expected) for j, b in enumerate(got)),
                        reverse=True)
    pairs, used_i, used_j = [], set(), set()
    for overlap, i, j in candidates:
        if overlap >= MATCH_IOU and i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return pairs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def speed_figures(models: dict[str, Path], calibration: Path) -> dict[str, dict[str, Any]]:
    figures = {}
    for role in ROLES:
        card = find_card(MODELS_DIR, role)
        batch = next(iter_batches(calibration / role))
        batch = np.concatenate([batch] * -(-SPEED_BATCH[role] // len(batch)))[:SPEED_BATCH[role]]
        with OnnxRunner(card.model_path) as fp32, OnnxRunner(models[role]) as int8:
            fp32_ms, int8_ms = median_ms([fp32.run, int8.run], {card.input_name: batch})
        figures[role] = {"input": list(batch.shape), "fp32": fp32_ms, "int8": int8_ms}
    return figures


def median_ms(runs: list[Callable[[dict[str, np.ndarray]], Any]], inputs: dict[str, np.ndarray]) -> list[float]:
    """Median milliseconds of each run; they take turns, so load from elsewhere hits all alike."""
    times: list[list[float]] = [[] for _ in runs]
    for run in runs:
        run(inputs)  # the first run allocates and plans
    for _ in range(SPEED_REPEATS):
        for run, taken in zip(runs, times):
            start = time.perf_counter()
            run(inputs)
            taken.append(time.perf_counter() - start)
    return [float(np.median(taken) * 1e3) for taken in times]


# --- reporting ----------------------------------------------------------------------------------

def targets(figures: dict[str, Any], fp16: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three INT8 targets, and the recommended mix's detector (MTCNN FP16) against the same bar."""
    embedding, detection = figures["embedding"], figures["detection"]["all"]
    drop = embedding["auc_fp32"] - embedding["auc_int8"]
    return [
        {"target": f"median cosine FP32 vs INT8 >= {TARGET_COSINE}", "value": round(embedding["cosine_median"], 5),
         "pass": embedding["cosine_median"] >= TARGET_COSINE},
        {"target": f"verification AUC drop <= {TARGET_AUC_DROP}", "value": round(drop, 5),
         "pass": drop <= TARGET_AUC_DROP},
        {"target": f"INT8 detector finds >= {TARGET_RECALL:.0%} of FP32's faces",
         "value": round(detection["recall"], 4),
         "pass": detection["recall"] >= TARGET_RECALL},
        {"target": f"FP16 detector (simulated) finds >= {TARGET_RECALL:.0%} of FP32's faces",
         "value": round(fp16["recall"], 4), "pass": fp16["recall"] >= TARGET_RECALL},
    ]


def render(report: dict[str, Any]) -> str:
    lines = [f"models kept in FP16 (simulated): {', '.join(report['kept_fp16']) or 'none'}"]
    for method, figures in report["methods"].items():
        lines += ["", f"== calibration method: {method}"]
        lines += render_output_errors(figures["output_error"])
        lines += render_embedding(figures["embedding"])
        lines += render_detection(figures["detection"], report["fp32_jitter"], report["fp16"])
        lines += render_speed(figures["speed_ms"])
        lines += render_liveness(figures["liveness"], report["liveness_fp16"], "liveness" in report["kept_fp16"])
    lines.append(f"\ntargets ({report['judged_method']}; FP32 found no face in "
                 f"{report['fp32_dev_photos_without_face']} dev photos, left out):")
    lines += [f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']}" for t in report["targets"]]
    return "\n".join(lines)


def render_output_errors(errors: dict[str, dict[str, float]]) -> list[str]:
    lines = ["output error on held-out inputs (mean |FP32 - INT8|; embedding: median cosine)"]
    for role, outputs in errors.items():
        lines.append(f"  {role:9} " + "  ".join(f"{name} {value:.5f}" for name, value in outputs.items()))
    return lines


def render_embedding(e: dict[str, Any]) -> list[str]:
    return [f"embedder on {e['chips']} dev chips: cosine median {e['cosine_median']:.5f} (min {e['cosine_min']:.4f}), "
            f"L2 median {e['l2_median']:.4f}",
            f"verification AUC: FP32 {e['auc_fp32']:.5f}, INT8 embedder {e['auc_int8']:.5f}, "
            f"INT8 detector + embedder {e['auc_int8_pipeline']:.5f}"]


def render_detection(detection: dict[str, Any], jitter: dict[str, Any], fp16: dict[str, Any]) -> list[str]:
    lines = [f"{'detection (clip % 3 == 0 or 2)':34} {'FP32 faces':>10} {'matched':>8} {'recall':>8} {'extra':>6} "
             f"{'landmark shift px':>18}"]
    rows = [(f"INT8: {label}" if label.startswith("all") else f"INT8: {label} alone", d)
            for label, d in detection.items()]
    for name, d in [*rows, ("FP32 on +-1 grey level noise", jitter), ("FP16 (simulated): all", fp16)]:
        lines.append(f"{name:34} {d['fp32_faces']:>10} {d['matched']:>8} {d['recall']:>8.4f} {d['int8_extra']:>6} "
                     f"{d['landmark_shift_median_px']:>18.2f}")
    lost = detection["all"]["lost"]
    if lost:
        lines.append("faces INT8 (all) loses: " + ", ".join(
            f"{f['width']:.0f} px score {f['score']:.2f} (best IoU {f['best_iou']:.2f})" for f in lost))
    return lines


def render_speed(speed: dict[str, Any]) -> list[str]:
    lines = [f"{'CPU speed, 1 thread':34} {'input':>14} {'FP32 ms':>9} {'INT8 ms':>9} {'ratio':>6}"]
    for role, t in speed.items():
        shape = "x".join(map(str, t["input"]))
        lines.append(f"{role:34} {shape:>14} {t['fp32']:>9.2f} {t['int8']:>9.2f} {t['int8'] / t['fp32']:>6.2f}")
    return lines


def render_liveness(figures: dict[str, Any] | None, fp16: dict[str, Any] | None, kept_fp16: bool) -> list[str]:
    if figures is None:
        return ["liveness: not measured (no liveness cards, or no spoof_dev manifest)"]
    other = "FP16 (simulated)" if kept_fp16 else "INT8"
    lines = [f"liveness ({', '.join(figures['cards'])}; threshold {figures['threshold']:g}): |FP32 - {other}| of "
             "live scores",
             f"  {'':40} {'count':>6} {'median':>8} {'max':>7} {'flipped':>7} {'live FP32':>9} {'live ' + other:>9}"]
    for label, key in [("door clip, every FP32 face", "clip_faces"), ("spoof_dev, every face scored", "dev_faces"),
                       ("spoof_dev, per presentation", "dev_presentations")]:
        a = figures[key]
        lines.append(f"  {label:40} {a['count']:>6} {a['median_abs_diff']:>8.4f} {a['max_abs_diff']:>7.4f} "
                     f"{a['flipped']:>7} {a['live_fp32']:>9} {a['live_other']:>9}")
    for card, net in figures["heldout_live_probability"].items():  # each net's own live-class probability
        lines.append(f"  {card + ', held-out clip crops':40} {net['crops']:>6} {net['mean_abs_diff']:>8.4f} "
                     f"{net['max_abs_diff']:>7.4f}   (mean, not median)")
    lines.append(f"  {'spoof_dev at the threshold':40} {'APCER':>7} {'BPCER':>7} {'ACER':>7} {'AUC':>7} "
                 f"{'worst attack':>12} {'no face':>7}")
    results = [("FP32", figures["dev_fp32"]), (other, figures["dev_int8"])]
    if fp16 is not None and not kept_fp16:
        results.append(("FP16 (simulated)", fp16["dev_int8"]))
    for label, r in results:
        auc = "-" if r["auc"] is None else f"{r['auc']:.4f}"
        lines.append(f"  {label:40} {pad._percent(r['apcer']):>7} {pad._percent(r['bpcer']):>7} "
                     f"{pad._percent(r['acer']):>7} {auc:>7} {pad._percent(r['apcer_worst_attack']):>12} "
                     f"{r['no_face']:>7}")
    for name in (n for n in figures["dev_fp32"]["per_attack"] if n != "none"):
        lines.append(f"  APCER, attack {name}: " + ", ".join(
            f"{label} {pad._percent(r['per_attack'][name]['apcer'])}" for label, r in results))
    if fp16 is not None and not kept_fp16:
        a = fp16["dev_faces"]
        lines.append(f"  FP16 (simulated) vs FP32 on spoof_dev faces: median {a['median_abs_diff']:.5f}, "
                     f"max {a['max_abs_diff']:.4f}, {a['flipped']} flipped")
    lines.append(f"  {'speed, 1 thread':40} {'input':>14} {'FP32 ms':>9} {other + ' ms':>9}")
    for card, t in figures["speed_ms"].items():
        lines.append(f"  {card:40} {'x'.join(map(str, t['input'])):>14} {t['fp32']:>9.2f} {t['int8']:>9.2f}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
