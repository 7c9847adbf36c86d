#!/usr/bin/env python3
"""Fit the 5-point alignment template that maps detector landmarks onto dlib's own face chips.

dlib's embedder was trained on chips cut by dlib.get_face_chip (5-point shape
predictor, 150 px, padding 0.25). For every face both dlib and our detector
find, this maps the detector's landmarks into dlib's chip and averages them
into the template. Photos and their mirror images are used, so a one-sided
bias of either detector averages out. Identities are split in two halves: the
template fitted on one half is checked on the other against the card's current one.

The check reports, per template, the RMS chip-pixel distance between our chip
and dlib's (over a 5x5 grid of chip points) and, with --embed, the mean L2
distance between the embeddings of our chip and of dlib's.

Needs the export extra (dlib-bin, face-recognition-models) and ../shared data.

examples:
  python tools/fit_template.py                        # the development set, MTCNN landmarks
  python tools/fit_template.py --embed --json         # also compare embeddings; JSON output
  python tools/fit_template.py my_photos.tsv --root my_photos/
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.align import align, similarity_transform  # noqa: E402
from engines.errors import ImageError  # noqa: E402
from engines.face import Face  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import Alignment, find_card  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DLIB_DETECT_SIDE = 1024  # dlib's HOG detector runs on a copy no larger than this (it is slow on 4k photos)
# A face whose mapped landmarks stray this far from the median is a mismatch between
# the two detectors; natural spread on the development set is 4-13 px (10th-99th percentile).
OUTLIER_PX = 20.0
GRID = np.stack(np.meshgrid(np.linspace(0, CHIP_SIZE - 1, 5), np.linspace(0, CHIP_SIZE - 1, 5)), -1).reshape(-1, 2)


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


@dataclass
class Sample:
    """One face seen by both detectors: our landmarks and dlib's chip transform."""

    identity: str
    image: np.ndarray  # the photo around the face
    landmarks: np.ndarray  # 5x2, our detector, in image pixels
    dlib_matrix: np.ndarray  # 2x3, image -> dlib chip
    dlib_chip: np.ndarray

    @property
    def in_chip(self) -> np.ndarray:
        return apply(self.dlib_matrix, self.landmarks)


class Dlib:
    """dlib's frontal face detector, 5-point shape predictor and chip extraction."""

    def __init__(self) -> None:
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("face_recognition_models is not installed: pip install -e '.[export]'")
        models = Path(spec.submodule_search_locations[0]) / "models"
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))

    def faces(self, rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(2x3 frame->chip transform, chip) of every face dlib finds."""
        shrink = min(1.0, DLIB_DETECT_SIDE / max(rgb.shape[:2]))
        small = rgb if shrink == 1.0 else _resized(rgb, shrink)
        found = []
        for rect in self.detector(small, 1):
            corners = (rect.left(), rect.top(), rect.right(), rect.bottom())
            box = self.dlib.rectangle(*(round(v / shrink) for v in corners))
            details = self.dlib.get_face_chip_details(self.predictor(rgb, box), size=CHIP_SIZE, padding=CHIP_PADDING)
            found.append((chip_matrix(details), self.dlib.extract_image_chip(rgb, details)))
        return found


def chip_matrix(details) -> np.ndarray:
    """The 2x3 frame->chip transform of dlib chip_details.

    dlib maps chip pixels (0, 0) and (cols-1, rows-1) onto the rect's corners
    turned by `angle` about the rect's centre (checked against extract_image_chip
    on coordinate images).
    """
    rect = details.rect
    tl = np.array([rect.tl_corner().x, rect.tl_corner().y])
    br = np.array([rect.br_corner().x, rect.br_corner().y])
    centre = (tl + br) / 2
    scale = (br[0] - tl[0]) / (details.cols - 1)
    c, s = np.cos(details.angle), np.sin(details.angle)
    to_frame = np.array([[c, -s], [s, c]]) * scale
    offset = centre + np.array([[c, -s], [s, c]]) @ (tl - centre)  # frame position of chip pixel (0, 0)
    to_chip = np.linalg.inv(to_frame)
    return np.hstack([to_chip, (-to_chip @ offset)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def read_list(tsv: Path, root: Path) -> list[tuple[Path, str]]:
    with open(tsv, newline="") as f:
        return [(root / row["path"], row["identity"]) for row in csv.DictReader(f, delimiter="\t")]


def collect(photos: list[tuple[Path, str]], detector: Detector, dlib_faces: Dlib, mirror: bool) -> list[Sample]:
    samples = []
    for number, (path, identity) in enumerate(photos, 1):
        try:
            image = load_image(path)
        except ImageError as error:
            print(f"skipped: {error}", file=sys.stderr)
            continue
        for view in [image, np.ascontiguousarray(image[:, ::-1])] if mirror else [image]:
            samples += matched(identity, view, detector.detect(view), dlib_faces.faces(view))
        print(f"\r{number}/{len(photos)} photos, {len(samples)} faces", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return samples


def matched(identity: str, image: np.ndarray, faces: list[Face],
            dlib_faces: list[tuple[np.ndarray, np.ndarray]]) -> list[Sample]:
    """Pairs each dlib face with the detector face whose landmarks land nearest the chip's centre."""
    samples = []
    for matrix, chip in dlib_faces:
        if not faces:
            break
        offsets = [np.linalg.norm(apply(matrix, f.landmarks).mean(axis=0) - CHIP_SIZE / 2) for f in faces]
        best = int(np.argmin(offsets))
        if offsets[best] < CHIP_SIZE / 5:
            crop, origin = around_chip(image, matrix)
            samples.append(Sample(identity, crop, faces[best].landmarks.astype(np.float64) - origin,
                                  shifted(matrix, origin), chip))
    return samples


def around_chip(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame around dlib's chip, half a chip wider on each side, and its (x, y) origin.

    Keeping crops instead of whole photos holds memory down, and the margin covers
    any chip a template near dlib's would cut.
    """
    to_frame = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = apply(to_frame, np.array([[-0.5, -0.5], [1.5, -0.5], [-0.5, 1.5], [1.5, 1.5]]) * CHIP_SIZE)
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    return image[y0:y1, x0:x1].copy(), np.array([x0, y0], np.float64)


def shifted(matrix: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """A frame->chip transform for the frame cropped at origin."""
    return np.hstack([matrix[:, :2], (matrix[:, 2] + matrix[:, :2] @ origin)[:, None]])


def fit(samples: list[Sample]) -> tuple[np.ndarray, int]:
    """The mean of the landmarks in dlib's chips, without outliers; and how many faces it used."""
    points = np.stack([s.in_chip for s in samples])
    median = np.median(points, axis=0)
    keep = np.linalg.norm(points - median, axis=2).max(axis=1) < OUTLIER_PX
    return points[keep].mean(axis=0), int(keep.sum())


def misalignment(samples: list[Sample], template: np.ndarray) -> float:
    """RMS distance, in chip pixels, between where our chip and dlib's chip put the same frame points."""
    errors = []
    for s in samples:
        ours = similarity_transform(s.landmarks, template)
        frame = apply(np.linalg.inv(np.vstack([s.dlib_matrix, [0, 0, 1]]))[:2], GRID)
        errors.append(np.sum((apply(ours, frame) - GRID) ** 2, axis=1))
    return float(np.sqrt(np.mean(errors)))


def embedding_gap(samples: list[Sample], template: np.ndarray, embedder) -> float:
    """Mean L2 distance between the embeddings of our chip and dlib's chip of each face."""
    alignment = Alignment(chip_size=(CHIP_SIZE, CHIP_SIZE), template=template)
    ours = embedder.embed([align(s.image, s.landmarks, alignment)[0] for s in samples])
    theirs = embedder.embed([s.dlib_chip for s in samples])
    return float(np.mean(np.linalg.norm(ours - theirs, axis=1)))


def halves(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Split by identity (alternate identities in sorted order) so no person is in both."""
    identities = sorted({s.identity for s in samples})
    first = set(identities[::2])
    return [s for s in samples if s.identity in first], [s for s in samples if s.identity not in first]


def report(samples: list[Sample], current: np.ndarray, embedder) -> dict:
    fit_half, check_half = halves(samples)
    half_template, _ = fit(fit_half)
    template, used = fit(samples)
    result = {"faces": len(samples), "faces_used": used, "template": np.round(template, 2).tolist(),
              "check": {"faces": len(check_half)}}
    for name, candidate in (("current", current), ("fitted_on_other_half", half_template)):
        row = {"misalignment_px": misalignment(check_half, candidate)}
        if embedder is not None:
            row["embedding_gap"] = embedding_gap(check_half, candidate, embedder)
        result["check"][name] = row
    return result


def print_report(result: dict) -> None:
    print(f"faces matched by both detectors: {result['faces']} ({result['faces_used']} used after outliers)")
    print("fitted template (chip pixels; left eye, right eye, nose, left mouth, right mouth):")
    print("  " + json.dumps(result["template"]))
    check = result["check"]
    print(f"\nheld-out check on {check['faces']} faces of the other identities:")
    for name in ("current", "fitted_on_other_half"):
        row = check[name]
        gap = f", embedding gap to dlib's chip {row['embedding_gap']:.4f}" if "embedding_gap" in row else ""
        print(f"  {name:22} misalignment {row['misalignment_px']:.2f} px{gap}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, nargs="?", default=SHARED_DATA / "dev_identities.tsv",
                        help="TSV with header path<TAB>identity (default: ../shared/data/dev_identities.tsv)")
    parser.add_argument("--root", type=Path, help="folder the paths are relative to (default: ../shared/data/sets)")
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="model folder (default: engines/models)")
    parser.add_argument("--min-face", type=float, default=40.0, help="smallest face for MTCNN, pixels")
    parser.add_argument("--no-mirror", action="store_true", help="do not add the mirror image of each photo")
    parser.add_argument("--embed", action="store_true", help="also compare embeddings of our chips and dlib's")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not args.photos.is_file():
        print(f"error: {args.photos} does not exist", file=sys.stderr)
        return 2
    root = args.root or (SHARED_DATA / "sets" if args.photos.parent == SHARED_DATA else args.photos.parent)
    try:
        from engines.mtcnn import DetectorConfig, MtcnnDetector

        dlib_faces = Dlib()
        detector = MtcnnDetector(args.models, DetectorConfig(min_face_size=args.min_face))
    except ModuleNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    samples = collect(read_list(args.photos, root), detector, dlib_faces, mirror=not args.no_mirror)
    if min(len(half) for half in halves(samples)) < 2:
        print(f"error: only {len(samples)} faces were found by both detectors: too few to fit", file=sys.stderr)
        return 1
    card = find_card(args.models, "embedder")
    embedder = None
    if args.embed:
        from engines.embedder import Embedder

        embedder = Embedder(card)
    result = report(samples, card.alignment.template.astype(np.float64), embedder)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


def _resized(rgb: np.ndarray, factor: float) -> np.ndarray:
    size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


if __name__ == "__main__":
    sys.exit(main())
