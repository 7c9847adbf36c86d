#!/usr/bin/env python3
"""Measure presentation-attack detection (engines/liveness.py) on a labelled manifest, in ISO/IEC 30107-3 terms.

MANIFEST.tsv has a header with at least `path` and `label` (live or spoof); `attack`
(print, replay, ...; `none` for live), `source` and `sha256` are used where present,
other columns (licence, notes) are ignored. Paths are relative to --root (default: the
manifest's folder). Each image is judged as the door judges a frame: MTCNN's faces, the
largest one scored. A video (a path ending .mp4, .avi, .mov, .mkv, .webm, .m4v) is one
track, scored as the door would: every frame's largest face is scored and the track's
score is the median of its frames' scores (the door decides a track on many frames; the
median ignores a few odd ones either way). A score is the liveness nets' passive score times
the recapture cue's factor (engines/screen_cue.py), as the door scores a face; the figures
without the cue are reported beside (JSON key 'screen_cue').

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
  Candidate thresholds: the figures (pooled, per attack type, per source) at the cards'
  threshold, at those for APCER 1% and 5%, and at each --at value. The trade-off table
  (JSON key 'tradeoff'): per-frame APCER, worst attack type's APCER and BPCER at thresholds
  0.1 to 0.9 and the cards', and with --sequences the door's track figures at each.

--select REGEX measures only the rows whose path matches (the door-like full frames of the
development set: 'imironica|Silent-Face|^videos/'). --sequences adds temporal evidence:
every video, and every group of images numbered as frames of one recording (same name up
to a trailing frame number, same label, attack and source), is a track, judged by each
track statistic of its frames' scores (median, mean, quantiles 0.25 and 0.10, min) beside
every frame judged alone, by the planar-motion cue alone (engines/planar_motion.py: live
unless the landmarks moved as one plane), and as the door judges it (row 'door':
engines.liveness_temporal.judge_track over the track's frames, the median score at the
threshold and the planar-motion cue), pooled and per source, with the worst attack type's
track APCER.

examples:
  python tools/evaluate_liveness.py ../shared/data/sets/spoof_dev/MANIFEST.tsv
  python tools/evaluate_liveness.py ../shared/data/sets/spoof_dev/MANIFEST.tsv --det det.png --target-apcer 0.01
  python tools/evaluate_liveness.py my_set.tsv --root /data/pad --json > pad.json
  python tools/evaluate_liveness.py MANIFEST.tsv --select 'imironica|Silent-Face|^videos/' --sequences --at 0.3 0.4

exit status: 0 measured, 1 nothing to measure (no live or no attack presentation scored), 2 usage error.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
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
from engines.face import Face  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.liveness import LivenessChecker  # noqa: E402
from engines.liveness_temporal import judge_track, track_live_score  # noqa: E402
from engines.planar_motion import planar_evidence  # noqa: E402
from engines.screen_cue import screen_factors  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from tools.evaluate import write_curve_png  # noqa: E402

LABELS = ("live", "spoof")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
VIDEO_STATISTIC = "median of the frames' scores (each frame's largest face)"
APCER_POINTS = (0.01, 0.05)
TRADEOFF_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))


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
    screen_factor: float | None = None  # images: the recapture cue's factor in the score (1: no effect)
    box: list[float] | None = None  # images: the scored face's (x1, y1, x2, y2)
    landmarks: list[list[float]] | None = None  # images: its 5 landmarks
    frame_scores: list[float] | None = None  # videos: each scored frame's score, in frame order
    frame_landmarks: list[list[list[float]]] | None = None  # videos: each scored frame's 5 landmarks
    frame_screen_factors: list[float] | None = None  # videos: each scored frame's recapture factor


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


def select_rows(rows: list[dict[str, str]], pattern: str) -> list[dict[str, str]]:
    """The rows whose path matches the regular expression (re.search)."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise UsageError(f"--select {pattern!r}: not a regular expression: {error}") from None
    chosen = [row for row in rows if compiled.search(row["path"])]
    if not chosen:
        raise UsageError(f"--select {pattern!r}: no manifest path matches")
    return chosen


def source_name(source: str) -> str:
    """A source column's repository or collection: what comes before '@' (a commit) or ':' (a file)."""
    return source.split("@", 1)[0].split(":", 1)[0] or "unknown"


class Scorer:
    """The door's view of one presentation: the largest face of each frame, scored."""

    def __init__(self, detector: MtcnnDetector, checker: LivenessChecker) -> None:
        self.detector, self.checker = detector, checker

    def frame(self, rgb: np.ndarray) -> tuple[float, Face, float] | None:
        """(live score, the face, the recapture cue's factor in that score) of the largest face."""
        faces = self.detector.detect(rgb)
        largest = ev.select_face(faces, rgb.shape, "largest")
        if largest is None:
            return None
        return float(self.checker.score(rgb, [largest])[0]), largest, float(screen_factors(rgb, [largest])[0])

    def image(self, path: Path, item: Item) -> None:
        scored = self.frame(load_image(path))
        if scored is not None:
            item.score, item.screen_factor = scored[0], round(scored[2], 6)
            item.box = [round(float(v), 2) for v in scored[1].box[:4]]
            item.landmarks = np.round(scored[1].landmarks.astype(np.float64), 2).tolist()

    def video(self, path: Path, item: Item, stride: int) -> None:
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise ImageError(f"{path}: not a readable video")
        scores, landmarks, factors, frames = [], [], [], 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                frames += 1
                if (frames - 1) % stride == 0:
                    scored = self.frame(np.ascontiguousarray(bgr[..., ::-1]))
                    if scored is not None:
                        scores.append(scored[0])
                        factors.append(round(scored[2], 6))
                        landmarks.append(np.round(scored[1].landmarks.astype(np.float64), 2).tolist())
        finally:
            capture.release()
        item.frames, item.frames_scored = frames, len(scores)
        item.score = track_live_score(scores) if scores else None
        item.frame_scores, item.frame_landmarks = [round(v, 6) for v in scores], landmarks
        item.frame_screen_factors = factors


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
    report["screen_cue"] = screen_cue_report(items, threshold)
    report["tradeoff"] = tradeoff_report(items, sorted({*TRADEOFF_THRESHOLDS, threshold}))
    report["items"] = [asdict(i) for i in items]
    return report, curve


def passive_score(item: Item) -> float | None:
    """The item's score without the recapture cue: the nets' alone (a video's: the median of its frames')."""
    if item.kind == "video":
        if not item.frame_scores:
            return None
        return track_live_score(s / f for s, f in zip(item.frame_scores, item.frame_screen_factors) if f > 0)
    if item.score is None or not item.screen_factor:
        return None
    return item.score / item.screen_factor


def screen_cue_report(items: list[Item], threshold: float) -> dict:
    """APCER per attack type and BPCER at the threshold with the recapture cue (the door's score) and without."""
    without = [Item(i.path, i.label, i.attack, i.source, i.kind, passive_score(i)) for i in items]
    out = {}
    for name, group in (("with", items), ("without", without)):
        report = group_report(group, threshold)
        by_attack: dict[str, list[Item]] = defaultdict(list)
        for item in group:
            if item.label == "spoof":
                by_attack[item.attack].append(item)
        out[name] = {"apcer": report["apcer"], "bpcer": report["bpcer"], "auc": report["auc"],
                     "per_attack": {a: group_report(g, threshold)["apcer"] for a, g in sorted(by_attack.items())}}
    return out


def tradeoff_report(items: list[Item], thresholds: list[float]) -> list[dict]:
    """Per-frame APCER (pooled and the worst attack type's) and BPCER at each threshold."""
    attacks = sorted({i.attack for i in items if i.label == "spoof"})
    rows = []
    for threshold in thresholds:
        pooled = group_report(items, threshold)
        worst = [group_report([i for i in items if i.attack == a], threshold)["apcer"] for a in attacks]
        worst = [w for w in worst if w is not None]
        rows.append({"threshold": threshold, "apcer": pooled["apcer"], "apcer_worst_attack": max(worst) if worst else None,
                     "bpcer": pooled["bpcer"]})
    return rows


# --- tracks: temporal evidence (--sequences) -------------------------------------------------------------

# Track statistics compared by --sequences: each turns a track's per-frame live scores into one score.
TRACK_STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "median": track_live_score,  # the door's (engines/liveness_temporal.py)
    "mean": lambda s: float(np.mean(s)),
    "quantile 0.25": lambda s: float(np.quantile(s, 0.25)),
    "quantile 0.10": lambda s: float(np.quantile(s, 0.10)),
    "min": lambda s: float(np.min(s)),
}
_FRAME_NUMBER = re.compile(r"^(?P<stem>(?:.*[_\-.])?)(?P<number>\d+)$")  # the number after a separator


@dataclass
class Track:
    """One presentation seen over several frames: a video, or images numbered as frames of one recording."""
    name: str
    label: str
    attack: str
    source: str
    scores: list[float]
    landmarks: list[np.ndarray]  # 5x2 per frame, frame order


def sequence_key(path: str) -> tuple[str, int] | None:
    """(sequence, frame number) of an image named as a frame of a recording: the file name's trailing number,
    after a separator (_ - .) or as the whole name, is the frame (NUAA's SSSS_GG_PP_SS_FFF.jpg, a tutorial's
    dataset__real__17.png), the rest names the sequence; None otherwise (image_T1.jpg is a photo of its own)."""
    stem_path = Path(path)
    match = _FRAME_NUMBER.match(stem_path.stem)
    if not match:
        return None
    return str(stem_path.parent / match["stem"]), int(match["number"])


def build_tracks(items: list[Item]) -> list[Track]:
    """Every video with two or more scored frames, and every group of two or more scored images of one sequence
    (sequence_key) with the same label, attack and source, in frame order."""
    tracks = []
    for item in items:
        if item.kind == "video" and item.frame_scores and len(item.frame_scores) >= 2:
            tracks.append(Track(item.path, item.label, item.attack, item.source, list(item.frame_scores),
                                [np.asarray(l, np.float64) for l in item.frame_landmarks]))
    groups: dict[tuple, list[tuple[int, Item]]] = defaultdict(list)
    for item in items:
        key = sequence_key(item.path) if item.kind == "image" and item.score is not None else None
        if key is not None and item.landmarks is not None:
            groups[(key[0], item.label, item.attack, item.source)].append((key[1], item))
    for (name, label, attack, source), members in sorted(groups.items()):
        if len(members) >= 2:
            members.sort(key=lambda m: m[0])
            tracks.append(Track(name, label, attack, source, [m[1].score for m in members],
                                [np.asarray(m[1].landmarks, np.float64) for m in members]))
    return tracks


def _rates_row(live: list[float], spoof: list[float], threshold: float | None) -> dict:
    live_a, spoof_a = np.asarray(live, np.float64), np.asarray(spoof, np.float64)
    apcer, bpcer = rates(live_a, spoof_a, threshold) if threshold is not None else (None, None)
    return {"live": len(live), "spoof": len(spoof), "apcer": apcer, "bpcer": bpcer,
            "auc": roc_auc(live_a, spoof_a) if len(live) and len(spoof) else None}


def _verdict_row(subset: list[Track], live_of: Callable[[Track], bool]) -> dict:
    """APCER/BPCER of a yes/no track rule, with its APCER per attack type and the worst one."""
    def share(tracks: list[Track], accepted: bool) -> float | None:
        return float(np.mean([live_of(t) == accepted for t in tracks])) if tracks else None

    live = [t for t in subset if t.label == "live"]
    spoof = [t for t in subset if t.label == "spoof"]
    per_attack = {a: share([t for t in spoof if t.attack == a], True) for a in sorted({t.attack for t in spoof})}
    return {"live": len(live), "spoof": len(spoof), "apcer": share(spoof, True), "bpcer": share(live, False),
            "auc": None, "per_attack": per_attack, "apcer_worst_attack": max(per_attack.values(), default=None)}


def door_verdict(track: Track, threshold: float):
    """The door's liveness rule on a whole track (engines.liveness_temporal.judge_track)."""
    return judge_track(track.scores, track.landmarks, threshold)


def sequences_report(tracks: list[Track], threshold: float) -> dict:
    """Per-track figures of each statistic (and of every single frame of the tracks), of the planar-motion
    cue alone and of the door's rule (all cues at the threshold), pooled and per source."""
    def block(subset: list[Track]) -> dict:
        out = {"single frame": _rates_row([s for t in subset if t.label == "live" for s in t.scores],
                                          [s for t in subset if t.label == "spoof" for s in t.scores], threshold)}
        for name, statistic in TRACK_STATISTICS.items():
            out[name] = _rates_row([statistic(np.asarray(t.scores)) for t in subset if t.label == "live"],
                                   [statistic(np.asarray(t.scores)) for t in subset if t.label == "spoof"], threshold)
        out["planar motion"] = _verdict_row(subset, lambda t: not planar_evidence(t.landmarks).flat)
        out["door"] = _verdict_row(subset, lambda t: door_verdict(t, threshold).live)
        return out

    by_source: dict[str, list[Track]] = defaultdict(list)
    for track in tracks:
        by_source[track.source].append(track)
    return {"threshold": threshold, "tracks": len(tracks), "pooled": block(tracks),
            "per_source": {name: block(group) for name, group in sorted(by_source.items())},
            "per_track": [{"name": t.name, "label": t.label, "attack": t.attack, "source": t.source,
                           "frames": len(t.scores), "single_frame_min": min(t.scores), "single_frame_max": max(t.scores),
                           **{name: statistic(np.asarray(t.scores)) for name, statistic in TRACK_STATISTICS.items()},
                           "planar_pairs": planar_evidence(t.landmarks).pairs,
                           "planar_ratio": planar_evidence(t.landmarks).ratio,
                           "door_live": door_verdict(t, threshold).live,
                           "door_reason": door_verdict(t, threshold).reason} for t in tracks]}


def sequences_tradeoff(tracks: list[Track], thresholds: list[float]) -> list[dict]:
    """The door's track APCER (pooled and the worst attack type's) and BPCER at each threshold."""
    rows = []
    for threshold in thresholds:
        row = _verdict_row(tracks, lambda t: door_verdict(t, threshold).live)
        rows.append({"threshold": threshold, "apcer": row["apcer"], "apcer_worst_attack": row["apcer_worst_attack"],
                     "bpcer": row["bpcer"]})
    return rows


def print_sequences(report: dict) -> None:
    print(f"\ntracks (--sequences): {report['tracks']} (videos, and numbered images of one recording), "
          f"threshold {report['threshold']:.4f}; 'door': the door's rule, all cues")
    for title, block in [("pooled", report["pooled"])] + list(report["per_source"].items()):
        print(f"  {title}:")
        print(f"    {'statistic':24} {'live':>5} {'attack':>6} {'APCER':>7} {'BPCER':>7} {'AUC':>7}")
        for name, row in block.items():
            auc = "-" if row["auc"] is None else f"{row['auc']:.3f}"
            print(f"    {name:24} {row['live']:5d} {row['spoof']:6d} {_percent(row['apcer']):>7} "
                  f"{_percent(row['bpcer']):>7} {auc:>7}")


def candidates_report(items: list[Item], thresholds: dict[str, float]) -> list[dict]:
    """ISO/IEC 30107-3 figures at each named candidate threshold: pooled, per attack type and per source."""
    out = []
    for name, threshold in thresholds.items():
        pooled = group_report(items, threshold)
        by_attack: dict[str, list[Item]] = defaultdict(list)
        by_source: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            by_attack[item.attack].append(item)
            by_source[item.source].append(item)
        out.append({"name": name, "threshold": threshold, "apcer": pooled["apcer"], "bpcer": pooled["bpcer"],
                    "acer": pooled["acer"],
                    "per_attack": {a: group_report(g, threshold)["apcer"] for a, g in sorted(by_attack.items())
                                   if any(i.label == "spoof" for i in g)},
                    "per_source": {n: {k: group_report(g, threshold)[k] for k in ("apcer", "bpcer")}
                                   for n, g in sorted(by_source.items())}})
    return out


def print_candidates(candidates: list[dict]) -> None:
    print("\ncandidate thresholds (APCER per attack type; APCER/BPCER per source):")
    for c in candidates:
        attacks = ", ".join(f"{a} {_percent(v)}" for a, v in c["per_attack"].items())
        print(f"  {c['name']:22} {c['threshold']:.4f}: APCER {_percent(c['apcer'])}, BPCER {_percent(c['bpcer'])}, "
              f"ACER {_percent(c['acer'])}; {attacks}")
        for source, r in c["per_source"].items():
            print(f"  {'':22}   {source[:40]:40} {_percent(r['apcer']):>7} {_percent(r['bpcer']):>7}")


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
    cue = report["screen_cue"]
    print("\nthe recapture cue (engines/screen_cue.py) at the threshold: APCER per attack type, BPCER")
    for name in ("without", "with"):
        attacks = ", ".join(f"{a} {_percent(v)}" for a, v in cue[name]["per_attack"].items())
        print(f"  {name:8} APCER {_percent(cue[name]['apcer'])}, BPCER {_percent(cue[name]['bpcer'])}; {attacks}")
    print("\ntrade-off (per frame; per track: the door's rule, with --sequences):")
    print(f"  {'threshold':>9} {'APCER':>7} {'worst':>7} {'BPCER':>7} | {'tr APCER':>8} {'tr worst':>8} {'tr BPCER':>8}")
    for row in report["tradeoff"]:
        tracks = row.get("tracks") or {}
        print(f"  {row['threshold']:9.4f} {_percent(row['apcer']):>7} {_percent(row['apcer_worst_attack']):>7} "
              f"{_percent(row['bpcer']):>7} | {_percent(tracks.get('apcer')):>8} "
              f"{_percent(tracks.get('apcer_worst_attack')):>8} {_percent(tracks.get('bpcer')):>8}")
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
    parser.add_argument("--select", metavar="REGEX",
                        help="measure only the manifest rows whose path matches (re.search), e.g. the door-like "
                             "full frames: 'imironica|Silent-Face|^videos/'")
    parser.add_argument("--at", type=_fraction, nargs="+", default=[], metavar="T",
                        help="also report the figures at these thresholds, beside the cards' and those for "
                             "APCER 1%% and 5%% (JSON key 'candidates')")
    parser.add_argument("--sequences", action="store_true",
                        help="also judge tracks (videos, numbered frames of one recording) by each track statistic "
                             "and by landmark non-rigidity, pooled and per source (JSON key 'sequences')")
    args = parser.parse_args(argv)
    if args.video_stride < 1:
        parser.error(f"--video-stride {args.video_stride}: expected >= 1")
    try:
        rows, root = read_manifest(args.manifest, args.root)
        if args.select:
            rows = select_rows(rows, args.select)
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
    if curve is not None:
        named = {"cards" if args.threshold is None else "--threshold": threshold,
                 "APCER <= 1%": at_apcer(curve, 0.01)["threshold"], "APCER <= 5%": at_apcer(curve, 0.05)["threshold"]}
        named.update({f"--at {t:g}": t for t in args.at})
        report["candidates"] = candidates_report(items, named)
    if args.sequences:
        tracks = build_tracks(items)
        report["sequences"] = sequences_report(tracks, threshold)
        by_threshold = {row["threshold"]: row for row in sequences_tradeoff(tracks, [r["threshold"] for r in
                                                                                    report["tradeoff"]])}
        for row in report["tradeoff"]:
            row["tracks"] = by_threshold[row["threshold"]]
    if curve is not None and args.det:
        write_det_png(curve, args.det, f"{args.manifest.parent.name}: AUC {report['auc']:.4f}")
        report["det_png"] = str(args.det)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if "candidates" in report:
            print_candidates(report["candidates"])
        if "sequences" in report:
            print_sequences(report["sequences"])
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
