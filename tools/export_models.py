#!/usr/bin/env python3
"""Convert the upstream face models to ONNX and check them against upstream.

Converts MTCNN P-Net/R-Net/O-Net (facenet-pytorch 2.6.0) and the dlib ResNet
face descriptor (face-recognition-models 0.3.0) into engines/models/, checks
every output numerically against the upstream implementation on real face
images, and rewrites engines/models/MANIFEST. A second run gives byte-identical
files.

examples:
  python tools/export_models.py                 # convert, check, write engines/models
  python tools/export_models.py --out /tmp/m    # convert into another folder
  python tools/export_models.py --check         # verify committed files (no torch needed)

Converter dependencies (never needed at run time):
  pip install -e '.[export]' && pip install --no-deps facenet-pytorch==2.6.0
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
from engines.model_card import load_cards  # noqa: E402

DLIB_FILE = "dlib_resnet_v1.onnx"
DLIB_DAT = "models/dlib_face_recognition_resnet_model_v1.dat"


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
    chips += [chip[:, ::-1].copy() for chip in chips]
    chips += [(chip * 0.6).astype(np.uint8) for chip in chips[:2]]
    return chips


def convert(out_dir: Path) -> list[tuple[str, int, float, str]]:
    """Write every model into out_dir; returns (file, bytes, max abs error, sha256) rows."""
    from converters import dlib_resnet, mtcnn

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for net in mtcnn.NETS:
        print(f"converting MTCNN {net} from {mtcnn.UPSTREAM} ...", flush=True)
        data = mtcnn.build_model(net).SerializeToString()
        error = mtcnn.reference_max_error(net, data, reference_images())
        rows.append(_write(out_dir, f"mtcnn_{net}.onnx", data, error))
    print("converting dlib ResNet face descriptor from face-recognition-models==0.3.0 ...", flush=True)
    dat = dlib_dat_path()
    data = dlib_resnet.build_model(dat).SerializeToString()
    error = dlib_resnet.reference_max_error(data, dat, reference_chips())
    rows.append(_write(out_dir, DLIB_FILE, data, error))
    manifest.write_manifest(out_dir, [row[0] for row in rows])
    return rows


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
    args = parser.parse_args(argv)
    try:
        if args.check:
            check(args.out)
            return 0
        rows = convert(args.out)
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
