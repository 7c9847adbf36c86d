"""`python -m calibration`: build a calibration set, and quantise the models on it to INT8 Q/DQ ONNX.

examples:
  # every third frame of the door camera's recording and a folder of photos, for a 1280x720 camera
  python -m calibration build door.mp4 photos/ --every 3 --frame-size 1280x720 -o build/calibration
  # a quick set from the first 20 frames of the demo clip
  python -m calibration build daemon/demo/video_02_hikers_walking_towards_camera.mp4 --max-frames 20 -o /tmp/cal
  # the embedder's Q/DQ model in build/int8 (with a card and a sidecar JSON)
  python -m calibration quantize build/calibration -o build/int8
  # then TensorRT engines on the Jetson: the embedder INT8, MTCNN FP16
  python tools/build_engine.py --all --precision embedder=int8 --qdq-models build/int8 --frame-size 1280x720
  # the liveness nets INT8 too (both cards, from build/calibration/liveness/<card id>)
  python -m calibration quantize build/calibration --roles embedder,liveness -o build/int8
  python tools/build_engine.py --all --precision embedder=int8 --precision liveness=int8 --qdq-models build/int8 \
      --frame-size 1280x720
  # all four nets INT8 (the detector then loses some marginal faces: tools/int8_quality.py)
  python -m calibration quantize build/calibration --roles pnet,rnet,onet,embedder -o build/int8
  python tools/build_engine.py --all --models build/int8 --precision int8 --frame-size 1280x720
  # or TensorRT's own entropy calibrator over the same batches
  python tools/build_engine.py --all --precision embedder=int8 --calibrator build/calibration --frame-size 1280x720

exit status: 0 done, 1 failed (unreadable data, nothing to calibrate on), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calibration.batches import CalibrationSetError
from calibration.dataset import (DEFAULT_BATCH_SIZES, DEFAULT_MAX_PER_FRAME, ROLES, BuildOptions, build, role_cards,
                                 set_name)
from calibration.frames import Frame, Selection
from engines.arguments import natural as _natural, positive as _positive, size as _size
from engines.errors import EngineError
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCardError
from engines.mtcnn import DetectorConfig


# calibration/quantize.py's METHODS and DEFAULT_METHOD (a test keeps them equal); quantize.py is imported
# only by the quantize command, as it needs the onnx package, which `build` on a device may lack.
METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "percentile"
# Measured by tools/int8_quality.py: the INT8 embedder keeps FP32's accuracy, while any MTCNN net in
# INT8 trades marginal detections for others (the cascade's NMS and thresholds amplify its rounding);
# in FP16 the detector finds every face FP32 finds. So by default only the embedder is quantised.
DEFAULT_QUANTIZED_ROLES = ("embedder",)


class UsageError(Exception):
    """Bad options: exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
    except UsageError as error:
        parser.error(str(error))  # exits 2
    except (CalibrationSetError, ModelCardError, EngineError, OSError, ValueError, RuntimeError) as error:
        print(f"calibration: failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_build_parser(commands)
    add_quantize_parser(commands)
    return parser


def add_build_parser(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser("build", help="record what the FP32 nets see on real frames, one folder per role",
                              description="Runs the FP32 MTCNN cascade over photos and video frames and stores "
                              "each net's real inputs as fixed-size .npy batches with a manifest.json per role "
                              "(OUT/pnet, OUT/rnet, OUT/onet, OUT/embedder) and per liveness card, its crops of "
                              "the faces found (OUT/liveness/<card id>). Frames of another size are "
                              "letterboxed to --frame-size; the last batch is padded by repeating its samples.")
    sub.add_argument("sources", nargs="+", type=Path, help="videos, photos, or folders of them (searched recursively)")
    sub.add_argument("-o", "--out", type=Path, required=True, help="output folder (its role folders are replaced)")
    sub.add_argument("--frame-size", type=_size, default=(640, 480), metavar="WxH",
                     help="the camera's frame size the engines are built for (default 640x480)")
    sub.add_argument("--every", type=_positive, default=1, metavar="N", help="use every Nth video frame (default 1)")
    sub.add_argument("--offset", type=_natural, default=0, metavar="K",
                     help="use video frames with index %% N == K (default 0)")
    sub.add_argument("--max-frames", type=_positive, metavar="N", help="stop after N frames in all")
    sub.add_argument("--min-face", type=float, default=DetectorConfig.min_face_size, metavar="PX",
                     help="the detector's min_face_size; it sets P-Net's canvas "
                          f"(default {DetectorConfig.min_face_size:g})")
    sub.add_argument("--roles", type=_roles, default=ROLES, help=f"comma-separated (default {','.join(ROLES)})")
    sub.add_argument("--batch-size", type=_role_number, action="append", default=[], metavar="ROLE=N",
                     help="batch size of a role (defaults "
                          + ", ".join(f"{r} {n}" for r, n in DEFAULT_BATCH_SIZES.items())
                          + ": TensorRT's opt batches in tools/build_engine.py)")
    sub.add_argument("--max-per-frame", type=_role_number, action="append", default=[], metavar="ROLE=N",
                     help="at most N samples of a role per frame (defaults " + ", ".join(
                         f"{r} {n}" for r, n in DEFAULT_MAX_PER_FRAME.items() if n) + ")")
    sub.add_argument("--models", type=Path, default=MODELS_DIR, help="model folder (default engines/models)")
    sub.add_argument("--json", action="store_true", help="print the manifests as JSON")
    sub.set_defaults(run=run_build)


def add_quantize_parser(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser("quantize", help="INT8 Q/DQ ONNX models calibrated on a calibration folder",
                              description="ONNX Runtime static quantisation to TensorRT-style Q/DQ: symmetric "
                              "INT8 activations per tensor, weights per channel, output layers kept in float. "
                              "Writes <model>.qdq.onnx, a model card naming it and a sidecar JSON per role.")
    sub.add_argument("calibration", type=Path, help="a folder made by `build` (one subfolder per role)")
    sub.add_argument("-o", "--out", type=Path, default=Path("build/int8"), help="output folder (default build/int8)")
    sub.add_argument("--roles", type=_roles, default=DEFAULT_QUANTIZED_ROLES,
                     help=f"comma-separated, some of {','.join(ROLES)} (default {','.join(DEFAULT_QUANTIZED_ROLES)})")
    sub.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                     help=f"activation range calibration (default {DEFAULT_METHOD}, measured by tools/int8_quality.py)")
    sub.add_argument("--quantize-heads", action="store_true", help="quantise the output layers too")
    sub.add_argument("--float-first", action="store_true", help="keep the layers reading the input in float")
    sub.add_argument("--exclude", type=_role_node, action="append", default=[], metavar="ROLE:NODE",
                     help="keep this node of the role's model in float (repeatable)")
    sub.add_argument("--models", type=Path, default=MODELS_DIR, help="model folder (default engines/models)")
    sub.add_argument("--json", action="store_true", help="print what was written as JSON")
    sub.set_defaults(run=run_quantize)


def run_build(args: argparse.Namespace) -> dict:
    try:
        selection = Selection(args.every, args.offset, args.max_frames)
        options = BuildOptions(frame_size=args.frame_size, selection=selection,
                               detector=DetectorConfig(min_face_size=args.min_face), roles=args.roles,
                               batch_sizes={**DEFAULT_BATCH_SIZES, **dict(args.batch_size)},
                               max_per_frame={**DEFAULT_MAX_PER_FRAME, **dict(args.max_per_frame)})
    except ValueError as error:
        raise UsageError(str(error)) from None
    missing = [str(source) for source in args.sources if not source.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    manifests = build(args.sources, args.out, options, args.models, progress=_progress)
    print(file=sys.stderr)
    return {"out": str(args.out), "roles": {role: {key: m[key] for key in ("count", "padded", "batch_size")}
                                            | {"shape": m["input"]["shape"], "batches": len(m["batches"])}
                                            for role, m in manifests.items()}}


def run_quantize(args: argparse.Namespace) -> dict:
    from calibration.quantize import QuantizeOptions, quantize_model

    written = {}
    for role in args.roles:
        options = QuantizeOptions(method=args.method, float_heads=not args.quantize_heads,
                                  float_first=args.float_first,
                                  exclude=tuple(node for r, node in args.exclude if r == role))
        for card in role_cards(args.models, role):  # liveness: every card, each from its own folder
            print(f"quantising {card.file} ({args.method}) ...", file=sys.stderr, flush=True)
            result = quantize_model(card.path, args.calibration / set_name(card), args.out, options)
            written[set_name(card)] = {"model": str(result.model), "card": str(result.card),
                                       "sidecar": str(result.sidecar)}
    return {"out": str(args.out), "roles": written}


def render(result: dict) -> str:
    lines = [f"wrote {result['out']}"]
    for role, entry in result["roles"].items():
        lines.append(f"  {role:9} " + ", ".join(f"{key} {value}" for key, value in entry.items()))
    return "\n".join(lines)


def _progress(count: int, frame: Frame) -> None:
    print(f"\rframe {count}: {frame.source.name} #{frame.index}    ", end="", file=sys.stderr, flush=True)


def _roles(text: str) -> tuple[str, ...]:
    roles = tuple(r for r in text.split(",") if r)
    if not roles or set(roles) - set(ROLES):
        raise argparse.ArgumentTypeError(f"{text!r}: expected some of {','.join(ROLES)}")
    return roles


def _role_number(text: str) -> tuple[str, int]:
    role, sep, number = text.partition("=")
    if not sep or role not in ROLES:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROLE=N with ROLE one of {','.join(ROLES)}")
    return role, _positive(number)


def _role_node(text: str) -> tuple[str, str]:
    role, sep, node = text.partition(":")
    if not sep or role not in ROLES or not node:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROLE:NODE with ROLE one of {','.join(ROLES)}")
    return role, node
