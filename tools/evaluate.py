#!/usr/bin/env python3
"""Measure face verification and identification accuracy on a labelled photo set.

Two sub-commands measure the door's open-set 1:N decision instead (tools/evaluate_identify.py;
`evaluate.py identify --help`):
  identify SPLIT.tsv   enrol the split's enrol rows as the front desk does, decide its genuine and
                       stranger probes as the door does: FPIR, TPIR, misidentification, DET curve;
  impostors SPLIT.tsv  fit the impostor distance tail that the embedder card records.

SOURCE is one of:
  a folder with one sub-folder of photos per person;
  a TSV with a header `path<TAB>identity` (paths relative to --root);
  an LFW-style pairs.txt (`name i j` / `name1 i name2 j` lines, optional
    `folds n` header; photos at ROOT/name/name_0001.jpg), or a TSV with a
    header `img_a<TAB>img_b<TAB>same` (optional `fold` column).

Reports detection failures, ROC AUC, equal error rate, TAR at FAR 1e-2 and
1e-3, verification accuracy (10-fold when the pairs have folds), 1:N rank-1
identification and open-set rejection of never-enrolled people, recommends a
threshold for --target-far and writes the ROC curve as a PNG. In a photo with
several faces, --face picks the one measured (the report says which rule ran).

examples:
  python tools/evaluate.py ../shared/data/dev_identities.tsv --roc roc.png
  python tools/evaluate.py photos/ --target-far 1e-4 --json
  python tools/evaluate.py lfw/pairs.txt --root lfw/images
  python tools/evaluate.py lfw/pairs.txt --root lfw/images --face largest
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines import evaluation as ev  # noqa: E402
from engines.embedder import Embedder  # noqa: E402
from engines.errors import ImageError  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import load_card  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from engines.pipeline import FacePipeline  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass
class Dataset:
    paths: list[Path]
    identities: list[str] | None = None  # one per path, for identity sets
    pairs: list[tuple[int, int, bool]] = field(default_factory=list)  # (a, b, same) for pairs files
    folds: list[int] | None = None  # one per pair, where the pairs file defines folds


def load_dataset(source: Path, root: Path | None) -> Dataset:
    if source.is_dir():
        return _identity_folders(source)
    lines = source.read_text().splitlines()
    header = lines[0].split("\t") if lines else []
    if header[:2] == ["path", "identity"]:
        return _identity_tsv(source, lines[1:], root)
    if header[:3] == ["img_a", "img_b", "same"]:
        return _pairs_tsv(source, lines, root)
    return _lfw_pairs(lines, root or source.parent)


def _identity_folders(folder: Path) -> Dataset:
    items = [(p, person.name) for person in sorted(folder.iterdir()) if person.is_dir()
             for p in sorted(person.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return Dataset([p for p, _ in items], [name for _, name in items])


def _resolve_root(tsv: Path, first: str, root: Path | None) -> Path:
    # dev_identities.tsv lists paths relative to the sets/ folder beside it.
    if root is not None:
        return root
    for candidate in (tsv.parent, tsv.parent / "sets"):
        if (candidate / first).exists():
            return candidate
    return tsv.parent


def _identity_tsv(tsv: Path, rows: list[str], root: Path | None) -> Dataset:
    items = [row.split("\t")[:2] for row in rows if row.strip()]
    base = _resolve_root(tsv, items[0][0], root)
    return Dataset([base / path for path, _ in items], [identity for _, identity in items])


def _pairs_tsv(tsv: Path, lines: list[str], root: Path | None) -> Dataset:
    rows = list(csv.DictReader(lines, delimiter="\t"))
    base = _resolve_root(tsv, rows[0]["img_a"], root)
    if not (base / rows[0]["img_a"]).exists() and (tsv.parent.parent / "images").is_dir():
        base = tsv.parent.parent / "images"
    paths: dict[str, int] = {}
    pairs = [(paths.setdefault(r["img_a"], len(paths)), paths.setdefault(r["img_b"], len(paths)),
              r["same"].strip() in ("1", "true", "True")) for r in rows]
    folds = [int(r["fold"]) for r in rows] if "fold" in rows[0] else None
    return Dataset([base / p for p in paths], pairs=pairs, folds=folds)


def _lfw_pairs(lines: list[str], root: Path) -> Dataset:
    head = lines[0].split()
    folds_count, per_fold = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    paths: dict[Path, int] = {}
    pairs, folds = [], []
    for number, line in enumerate(lines[1:]):
        parts = line.split()
        if len(parts) == 3:
            a, b, same = (parts[0], int(parts[1])), (parts[0], int(parts[2])), True
        elif len(parts) == 4:
            a, b, same = (parts[0], int(parts[1])), (parts[2], int(parts[3])), False
        else:
            continue
        ids = [paths.setdefault(root / name / f"{name}_{index:04d}.jpg", len(paths)) for name, index in (a, b)]
        pairs.append((ids[0], ids[1], same))
        folds.append(number // (2 * per_fold))
    return Dataset(list(paths), pairs=pairs, folds=folds if folds_count > 1 else None)


def default_face_rule(dataset: Dataset) -> str:
    """Pairs protocols (LFW's among them) centre each photo on the person the pair is about; identity
    sets promise no such thing, and there the largest face is the one enrolment's --largest takes."""
    return "largest" if dataset.identities is not None else "central"


def embed_all(pipeline: FacePipeline, paths: list[Path], face_rule: str) -> tuple[np.ndarray, list[str]]:
    """One embedding per photo (the face ev.select_face picks by face_rule), NaN rows where no face was found."""
    embeddings = np.full((len(paths), pipeline.embedder.card.embedding_dim), np.nan, np.float32)
    failures = []
    for i, path in enumerate(paths):
        print(f"\rembedding {i + 1}/{len(paths)}", end="", file=sys.stderr, flush=True)
        try:
            rgb = load_image(path)
            faces = pipeline.process(rgb)
        except ImageError as error:
            failures.append(f"{path}: {error}")
            continue
        chosen = ev.select_face([face for face, _ in faces], rgb.shape, face_rule)
        if chosen is None:
            failures.append(f"{path}: no face found")
            continue
        embeddings[i] = next(embedding for face, embedding in faces if face is chosen)
    print(file=sys.stderr)
    return embeddings, failures


def evaluate(dataset: Dataset, embeddings: np.ndarray, metric: str, target_far: float) -> dict:
    found = ~np.isnan(embeddings[:, 0])
    report: dict = {}
    if dataset.identities is not None:
        keep = np.flatnonzero(found)
        identities = np.asarray(dataset.identities)[keep]
        distances = ev.pairwise_distances(embeddings[keep], metric)
        genuine, impostor = ev.all_pairs(distances, identities)
        same = np.concatenate([np.ones(len(genuine), bool), np.zeros(len(impostor), bool)])
        all_distances = np.concatenate([genuine, impostor])
        threshold = ev.best_accuracy_threshold(all_distances, same)
        # Balanced: all-pairs sets hold far more impostor than genuine pairs.
        report["verification_accuracy"] = float(np.mean([np.mean(genuine < threshold), np.mean(impostor >= threshold)]))
        report["verification_protocol"] = "all pairs, balanced accuracy at the best threshold"
        report["rank1_identification"], report["rank1_probes"] = ev.rank1_identification(distances, identities)
    else:
        pairs = [(a, b, same, i) for i, (a, b, same) in enumerate(dataset.pairs) if found[a] and found[b]]
        a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        same = np.array([p[2] for p in pairs])
        pair_distances = np.diag(ev.pairwise_distances(np.concatenate([embeddings[a], embeddings[b]]), metric)[:len(a), len(a):])
        genuine, impostor = pair_distances[same], pair_distances[~same]
        if dataset.folds is not None:
            folds = np.array([dataset.folds[p[3]] for p in pairs])
            mean, std = ev.kfold_accuracy(pair_distances, same, folds)
            report["verification_accuracy"], report["verification_accuracy_std"] = mean, std
            report["verification_protocol"] = f"{len(np.unique(folds))}-fold, threshold chosen on the other folds"
        else:
            threshold = ev.best_accuracy_threshold(pair_distances, same)
            report["verification_accuracy"] = float(np.mean((pair_distances < threshold) == same))
            report["verification_protocol"] = "accuracy at the best threshold (no folds)"
    curve = ev.roc(genuine, impostor)
    eer, eer_threshold = ev.equal_error_rate(curve)
    recommended = ev.threshold_for_far(curve, target_far)
    report.update({
        "genuine_pairs": len(genuine), "impostor_pairs": len(impostor), "roc_auc": ev.auc(curve),
        "eer": eer, "eer_threshold": eer_threshold,
        "tar_at_far_1e-2": ev.tar_at_far(curve, 1e-2), "tar_at_far_1e-3": ev.tar_at_far(curve, 1e-3),
        "target_far": target_far, "recommended_threshold": recommended,
        "tar_at_recommended": ev.tar_at_far(curve, target_far),
        "far_resolution": 1 / len(impostor),
    })
    if dataset.identities is not None:
        openset = ev.open_set(distances, identities, recommended)
        report["open_set"] = openset.__dict__
    return report, curve


def write_roc_png(curve: ev.Roc, path: Path, title: str) -> None:
    """A log-FAR ROC plot drawn with OpenCV (no plotting library needed)."""
    write_curve_png(path, title, curve.far, curve.tar, "false accept rate (log)", "TAR")


def write_curve_png(path: Path, title: str, x_values: np.ndarray, y_values: np.ndarray, x_label: str, y_label: str,
                    low: float = -4.0, y_ticks: tuple[float, ...] = (0.0, 0.5, 0.9, 1.0),
                    y_low: float | None = None) -> None:
    """A curve over a log x axis (10**low to 1) and a y axis from 0 to 1, drawn with OpenCV as a PNG:
    linear, or with y_low a log axis from 10**y_low (a DET curve's FNIR)."""
    width, height, margin = 640, 480, 60
    image = np.full((height, width, 3), 255, np.uint8)

    def point(x: float, y: float) -> tuple[int, int]:
        x = (max(math.log10(max(x, 1e-12)), low) - low) / -low
        if y_low is not None:
            y = (max(math.log10(max(y, 1e-12)), y_low) - y_low) / -y_low
        return int(margin + x * (width - 2 * margin)), int(height - margin - y * (height - 2 * margin))

    if y_low is not None:
        y_ticks = tuple(10.0 ** e for e in range(int(y_low), 1))

    cv2.rectangle(image, point(10 ** low, 0), point(1, 1), (0, 0, 0), 1)
    for exponent in range(int(low), 1):
        x, y = point(10.0 ** exponent, 0)
        cv2.line(image, (x, y), (x, margin), (220, 220, 220), 1)
        cv2.putText(image, f"1e{exponent}", (x - 18, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for tick in y_ticks:
        x, y = point(10 ** low, tick)
        cv2.putText(image, f"{tick:.1f}" if y_low is None else f"{tick:g}", (x - 40, y + 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    points = np.array([point(a, b) for a, b in zip(x_values, y_values)], np.int32)
    cv2.polylines(image, [points], False, (200, 60, 0), 2)
    cv2.putText(image, title, (margin, 35), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    cv2.putText(image, x_label, (width // 2 - 90, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(image, y_label, (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def print_report(report: dict, failures: list[str], total: int) -> None:
    print(f"photos: {total}, detection failures: {len(failures)}, face selection: {report['face_selection']}")
    for failure in failures:
        print(f"  {failure}")
    rows = [("genuine / impostor pairs", f"{report['genuine_pairs']} / {report['impostor_pairs']}"),
            ("ROC AUC", f"{report['roc_auc']:.4f}"),
            ("equal error rate", f"{report['eer']:.4f} at distance {report['eer_threshold']:.3f}"),
            ("TAR at FAR 1e-2", f"{report['tar_at_far_1e-2']:.4f}"),
            ("TAR at FAR 1e-3", f"{report['tar_at_far_1e-3']:.4f}"),
            ("verification accuracy", f"{report['verification_accuracy']:.4f} ({report['verification_protocol']})")]
    if "rank1_identification" in report:
        rows.append(("1:N rank-1 identification", f"{report['rank1_identification']:.4f} over {report['rank1_probes']} probes"))
    if "open_set" in report:
        o = report["open_set"]
        rows.append(("open set, enrolled found", f"{o['detect_and_identify_rate']:.4f} ({o['enrolled_identities']} people enrolled)"))
        rows.append(("open set, unknown rejected", f"{o['unknown_rejection_rate']:.4f} ({o['unknown_identities']} never enrolled)"))
    rows.append((f"recommended threshold (FAR <= {report['target_far']:g})",
                 f"{report['recommended_threshold']:.4f} (TAR {report['tar_at_recommended']:.4f})"))
    for name, value in rows:
        print(f"{name:38} {value}")
    if report["far_resolution"] > report["target_far"]:
        print(f"warning: only {report['impostor_pairs']} impostor pairs; FAR below {report['far_resolution']:.1e} is not measurable")


def write_det_png(curve: ev.OpenSetCurve, path: Path, title: str) -> None:
    """The DET curve (FNIR against FPIR, both on log axes) as a PNG."""
    write_curve_png(path, title, curve.fpir, 1.0 - curve.tpir, "FPIR (log)", "FNIR", y_low=-3.0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["identify"], ["impostors"]):
        from tools import evaluate_identify

        return (evaluate_identify.main_identify if argv[0] == "identify" else evaluate_identify.main_impostors)(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="identity folder, identity TSV or pairs file")
    parser.add_argument("--root", type=Path, help="folder the listed paths are relative to")
    parser.add_argument("--target-far", type=float, default=1e-3, help="false accept rate for the recommended threshold")
    parser.add_argument("--roc", type=Path, default=Path("roc.png"), help="where to write the ROC curve PNG")
    parser.add_argument("--min-face", type=int, default=20, help="smallest face to detect, pixels")
    parser.add_argument("--card", type=Path, help="the embedder's model card (default: the one engines/models/DEFAULTS names)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--face", choices=ev.FACE_RULES,
                        help="which face of a photo with several to measure: the one nearest the photo's centre "
                             "or the largest (default: central for pairs files, largest for identity sets)")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"error: {args.source} does not exist", file=sys.stderr)
        return 2
    dataset = load_dataset(args.source, args.root)
    if args.card is None:
        pipeline = FacePipeline.from_models(detector_config=DetectorConfig(min_face_size=args.min_face))
    else:
        pipeline = FacePipeline(MtcnnDetector(MODELS_DIR, DetectorConfig(min_face_size=args.min_face)),
                                Embedder(load_card(args.card)))
    face_rule = args.face or default_face_rule(dataset)
    embeddings, failures = embed_all(pipeline, dataset.paths, face_rule)
    try:
        report, curve = evaluate(dataset, embeddings, pipeline.embedder.card.metric, args.target_far)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_roc_png(curve, args.roc, f"{args.source.name}: AUC {report['roc_auc']:.4f}, EER {report['eer']:.3f}")
    report.update({"photos": len(dataset.paths), "detection_failures": failures, "roc_png": str(args.roc),
                   "metric": pipeline.embedder.card.metric, "model": pipeline.embedder.card.id,
                   "face_selection": face_rule})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, failures, len(dataset.paths))
        print(f"ROC curve written to {args.roc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
