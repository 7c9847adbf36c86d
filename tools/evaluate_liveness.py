#!/usr/bin/env python3
"""Measure presentation-attack detection (engines/liveness.py) on a labelled manifest, in ISO/IEC 30107-3 terms.

MANIFEST.tsv has a header with at least `path` and `label` (live or spoof); `attack`
(print, replay, ...; `none` for live), `source` and `sha256` are used where present,
other columns (licence, notes) are ignored. Paths are relative to --root (default: the
manifest's folder). Each image is judged as the door judges a frame: MTCNN's faces, the
largest one scored. A video (a path ending .mp4, .avi, .mov, .mkv, .webm, .m4v) is one
track, scored as the door would: every frame's largest face is scored and the track's
score is the median of its frames' scores (the door decides a track on many frames; the
median ignores a few odd ones either way).

A presentation is judged live when its score is at or above the threshold (default: the
liveness cards' threshold). Reported:
  APCER  attack presentations accepted as live (pooled over attacks; also per attack type
         and the worst type, as ISO/IEC 30107-3 reports it per species)
  BPCER  bona fide (live) presentations rejected
  ACER   (APCER + BPCER) / 2
  BPCER at APCER 1% and 5%, ROC AUC (probability that a live presentation scores above an
  attack), the same per attack type and per source (the source column up to its '@'),
  presentations where no face was found (left out of the rates, listed), and the threshold
  for --target-apcer. --det writes the DET curve (BPCER against log APCER) as a PNG.

examples:
  python tools/evaluate_liveness.py ../shared/data/sets/spoof_dev/MANIFEST.tsv
  python tools/evaluate_liveness.py ../shared/data/sets/spoof_dev/MANIFEST.tsv --det det.png --target-apcer 0.01
  python tools/evaluate_liveness.py my_set.tsv --root /data/pad --json > pad.json

exit status: 0 measured, 1 nothing to measure (no live or no attack presentation scored), 2 usage error.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import evaluation as ev  # noqa: E402
from engines.errors import ImageError  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.liveness import LivenessChecker  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from tools.evaluate import write_curve_png  # noqa: E402

LABELS = ("live", "spoof")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
VIDEO_STATISTIC = "median of the frames' scores (each frame's largest face)"
APCER_POINTS = (0.01, 0.05)


class UsageError(Exception):
    """A manifest that cannot be read as one: exit status 2."""


@dataclass
class Item:
    path: str
    label: str
    attack: str
    source: str
    kind: str  # image or video
    score: float | None = None  # None: no face found (or the file could not be read)
    frames: int | None = None  # videos: frames read
    frames_scored: int | None = None  # videos: frames with a face
    error: str | None = None


def read_manifest(path: Path, root: Path | None) -> tuple[list[dict[str, str]], Path]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{path}: cannot read the manifest: {error}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise UsageError(f"{path}: expected a TSV with a header naming at least 'path' and 'label'")
    for number, row in enumerate(rows, 2):
        if row["label"] not in LABELS:
            raise UsageError(f"{path} line {number}: label {row['label']!r} is not one of {', '.join(LABELS)}")
    return rows, root or path.parent


def source_name(source: str) -> str:
    """A source column's repository or collection: what comes before '@' (a commit) or ':' (a file)."""
    return source.split("@", 1)[0].split(":", 1)[0] or "unknown"


class Scorer:
    """The door's view of one presentation: the largest face of each frame, scored."""

    def __init__(self, detector: MtcnnDetector, checker: LivenessChecker) -> None:
        self.detector, self.checker = detector, checker

    def frame(self, rgb: np.ndarray) -> float | None:
        faces = self.detector.detect(rgb)
        largest = ev.select_face(faces, rgb.shape, "largest")
        return None if largest is None else float(self.checker.score(rgb, [largest])[0])

    def image(self, path: Path, item: Item) -> None:
        item.score = self.frame(load_image(path))

    def video(self, path: Path, item: Item, stride: int) -> None:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise ImageError(f"{path}: not a readable video")
        scores, frames = [], 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                frames += 1
                if (frames - 1) % stride == 0:
                    score = self.frame(np.ascontiguousarray(bgr[..., ::-1]))
                    if score is not None:
                        scores.append(score)
        finally:
            capture.release()
        item.frames, item.frames_scored = frames, len(scores)
        item.score = float(np.median(scores)) if scores else None


def score_all(rows: list[dict[str, str]], root: Path, scorer: Scorer, stride: int,
              progress: Callable[[int, int], None] | None = None) -> list[Item]:
    items = []
    for number, row in enumerate(rows, 1):
        if progress:
            progress(number, len(rows))
        path = root / row["path"]
        kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
        item = Item(row["path"], row["label"], row.get("attack") or ("none" if row["label"] == "live" else "unknown"),
                    source_name(row.get("source") or ""), kind)
        items.append(item)
        try:
            expected = row.get("sha256")
            if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                item.error = f"sha256 differs from the manifest's {expected[:12]}..."
                continue
            if kind == "video":
                scorer.video(path, item, stride)
            else:
                scorer.image(path, item)
        except (OSError, ImageError) as error:
            item.error = str(error)
    return items


# --- the measures ---------------------------------------------------------------------------------

def rates(live: np.ndarray, spoof: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(APCER, BPCER) at a threshold (live when score >= threshold); None where there is nothing to count."""
    apcer = float(np.mean(spoof >= threshold)) if len(spoof) else None
    bpcer = float(np.mean(live < threshold)) if len(live) else None
    return apcer, bpcer


def det_curve(live: np.ndarray, spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds ascending, APCER, BPCER) at every distinct score and just above the highest."""
    scores = np.unique(np.concatenate([live, spoof]))
    thresholds = np.concatenate([scores, [np.nextafter(scores[-1], np.inf)]])
    apcer = 1.0 - np.searchsorted(np.sort(spoof), thresholds, side="left") / len(spoof)
    bpcer = np.searchsorted(np.sort(live), thresholds, side="left") / len(live)
    return thresholds, apcer, bpcer


def at_apcer(curve: tuple[np.ndarray, np.ndarray, np.ndarray], target: float) -> dict:
    """The lowest threshold whose APCER is at most target (so the least BPCER there), with both rates."""
    thresholds, apcer, bpcer = curve
    i = int(np.flatnonzero(apcer <= target)[0])  # the last threshold accepts nothing: APCER 0
    return {"target_apcer": target, "threshold": float(thresholds[i]), "apcer": float(apcer[i]),
            "bpcer": float(bpcer[i])}


def roc_auc(live: np.ndarray, spoof: np.ndarray) -> float:
    """P(a live score > an attack's score), ties counted half (the Mann-Whitney statistic)."""
    ranks = _average_ranks(np.concatenate([live, spoof]))
    return float((ranks[:len(live)].sum() - len(live) * (len(live) + 1) / 2) / (len(live) * len(spoof)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def group_report(items: list[Item], threshold: float) -> dict:
    """Counts and rates of a set of presentations at the threshold."""
    live = np.array([i.score for i in items if i.label == "live" and i.score is not None], np.float64)
    spoof = np.array([i.score for i in items if i.label == "spoof" and i.score is not None], np.float64)
    apcer, bpcer = rates(live, spoof, threshold)
    report = {"live": int(sum(i.label == "live" for i in items)), "spoof": int(sum(i.label == "spoof" for i in items)),
              "live_scored": len(live), "spoof_scored": len(spoof),
              "no_face": int(sum(i.score is None and i.error is None for i in items)),
              "apcer": apcer, "bpcer": bpcer,
              "acer": None if apcer is None or bpcer is None else (apcer + bpcer) / 2,
              "auc": roc_auc(live, spoof) if len(live) and len(spoof) else None}
    return report


def evaluate(items: list[Item], threshold: float, target_apcer: float) -> tuple[dict, tuple | None]:
    report = group_report(items, threshold)
    report["threshold"] = threshold
    live = np.array([i.score for i in items if i.label == "live" and i.score is not None], np.float64)
    spoof = np.array([i.score for i in items if i.label == "spoof" and i.score is not None], np.float64)
    curve = det_curve(live, spoof) if len(live) and len(spoof) else None
    for target in APCER_POINTS:
        report[f"bpcer_at_apcer_{target:g}"] = at_apcer(curve, target)["bpcer"] if curve else None
    report["target"] = at_apcer(curve, target_apcer) if curve else None
    report["apcer_resolution"] = 1 / len(spoof) if len(spoof) else None
    by_attack: dict[str, list[Item]] = defaultdict(list)
    by_source: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_attack[item.attack].append(item)
        by_source[item.source].append(item)
    report["per_attack"] = {name: group_report(group, threshold) for name, group in sorted(by_attack.items())}
    report["per_source"] = {name: group_report(group, threshold) for name, group in sorted(by_source.items())}
    attack_apcers = [g["apcer"] for g in report["per_attack"].values() if g["spoof_scored"]]
    report["apcer_worst_attack"] = max(attack_apcers) if attack_apcers else None
    report["per_kind"] = {kind: group_report([i for i in items if i.kind == kind], threshold)
                          for kind in sorted({i.kind for i in items})}
    report["no_face"] = [i.path for i in items if i.score is None and i.error is None]
    report["errors"] = [f"{i.path}: {i.error}" for i in items if i.error is not None]
    report["video_statistic"] = VIDEO_STATISTIC
    report["items"] = [asdict(i) for i in items]
    return report, curve


# --- output ------------------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def print_report(report: dict) -> None:
    print(f"presentations: {report['live']} live, {report['spoof']} attack; scored {report['live_scored']} live, "
          f"{report['spoof_scored']} attack; no face found: {len(report['no_face'])}; unreadable: "
          f"{len(report['errors'])}")
    print(f"threshold {report['threshold']:.4f} (live when the score is at or above it); videos: "
          f"{report['video_statistic']}")
    rows = [("APCER (attacks accepted)", _percent(report["apcer"])),
            ("APCER, worst attack type", _percent(report["apcer_worst_attack"])),
            ("BPCER (live rejected)", _percent(report["bpcer"])),
            ("ACER", _percent(report["acer"])),
            ("BPCER at APCER 1%", _percent(report["bpcer_at_apcer_0.01"])),
            ("BPCER at APCER 5%", _percent(report["bpcer_at_apcer_0.05"])),
            ("ROC AUC", "-" if report["auc"] is None else f"{report['auc']:.4f}")]
    target = report["target"]
    if target:
        rows.append((f"threshold for APCER <= {_percent(target['target_apcer'])}",
                     f"{target['threshold']:.4f} (APCER {_percent(target['apcer'])}, "
                     f"BPCER {_percent(target['bpcer'])})"))
    for name, value in rows:
        print(f"  {name:36} {value}")
    for title, groups in (("attack type", report["per_attack"]), ("source", report["per_source"]),
                          ("kind", report["per_kind"])):
        print(f"\nper {title}:")
        print(f"  {'':40} {'live':>5} {'attack':>6} {'no face':>7} {'APCER':>7} {'BPCER':>7} {'AUC':>7}")
        for name, g in groups.items():
            auc = "-" if g["auc"] is None else f"{g['auc']:.3f}"
            print(f"  {name[:40]:40} {g['live_scored']:5d} {g['spoof_scored']:6d} {g['no_face']:7d} "
                  f"{_percent(g['apcer']):>7} {_percent(g['bpcer']):>7} {auc:>7}")
    if report["no_face"]:
        print(f"\nno face found ({len(report['no_face'])}):")
        for path in report["no_face"]:
            print(f"  {path}")
    if report["errors"]:
        print(f"\nunreadable ({len(report['errors'])}):")
        for error in report["errors"]:
            print(f"  {error}")


def write_det_png(curve: tuple, path: Path, title: str) -> None:
    _, apcer, bpcer = curve
    write_curve_png(path, title, apcer, bpcer, "APCER (attacks accepted, log)", "BPCER", low=-3.0,
                    y_ticks=(0.0, 0.1, 0.3, 0.7, 1.0))  # none at 0.5, where the axis label is


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="TSV: path, label (live|spoof), attack, source, ..., sha256")
    parser.add_argument("--root", type=Path, help="folder the paths are relative to (default: the manifest's folder)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--det", type=Path, metavar="PNG", help="write the DET curve (BPCER against APCER) here")
    parser.add_argument("--target-apcer", type=_fraction, default=0.01, metavar="X",
                        help="APCER the recommended threshold keeps to (default: 0.01)")
    parser.add_argument("--threshold", type=_fraction, help="judge at this score (default: the liveness cards')")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="model folder (default: engines/models)")
    parser.add_argument("--min-face", type=float, default=20.0, help="smallest face to detect, pixels (default: 20)")
    parser.add_argument("--video-stride", type=int, default=1, metavar="N",
                        help="score every Nth frame of a video (default: every frame)")
    args = parser.parse_args(argv)
    if args.video_stride < 1:
        parser.error(f"--video-stride {args.video_stride}: expected >= 1")
    try:
        rows, root = read_manifest(args.manifest, args.root)
    except UsageError as error:
        print(f"evaluate_liveness.py: error: {error}", file=sys.stderr)
        return 2
    with MtcnnDetector(args.models, DetectorConfig(min_face_size=args.min_face)) as detector, \
            LivenessChecker.from_models(args.models) as checker:
        items = score_all(rows, root, Scorer(detector, checker), args.video_stride, _progress)
        threshold = checker.threshold if args.threshold is None else args.threshold
        source = checker.threshold_source if args.threshold is None else "--threshold"
        cards = [card.id for card in checker.cards]
    print(file=sys.stderr)
    report, curve = evaluate(items, threshold, args.target_apcer)
    report["threshold_source"] = source
    report["cards"] = cards
    if curve is not None and args.det:
        write_det_png(curve, args.det, f"{args.manifest.parent.name}: AUC {report['auc']:.4f}")
        report["det_png"] = str(args.det)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if report.get("det_png"):
            print(f"\nDET curve written to {args.det}")
    if curve is None:
        print("evaluate_liveness.py: no live or no attack presentation was scored: APCER, BPCER or both undefined",
              file=sys.stderr)
        return 1
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a number from 0 to 1")
    return value


def _progress(number: int, total: int) -> None:
    print(f"\rscoring {number}/{total}", end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
