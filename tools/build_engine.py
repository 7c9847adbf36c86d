#!/usr/bin/env python3
"""Build TensorRT engines from the ONNX models, for this device, each with its metadata sidecar.

An engine runs only on the TensorRT version and the GPU it was built with, so build it
on the device that runs it. Every engine gets `<engine>.json` (engines/engine_metadata.py):
the runner checks it before loading the engine, and it holds the exact command that
rebuilds the engine. The model card beside the ONNX (or --card) gives the role and the
input; P-Net needs the packed pyramid canvas of the camera's frame size.

examples:
  # every model in engines/models, FP16, P-Net for a 1280x720 camera
  python tools/build_engine.py --all --frame-size 1280x720 --out-dir /var/lib/facegate/engines
  # the recommended mix: MTCNN FP16, the embedder INT8 from its Q/DQ model (python -m calibration quantize)
  python tools/build_engine.py --all --precision embedder=int8 --qdq-models build/int8 --frame-size 1280x720
  # one model, with a larger batch limit
  python tools/build_engine.py engines/models/mtcnn_rnet.onnx -o rnet.fp16.engine --max-batch 1024
  # P-Net for an explicit canvas (height x width)
  python tools/build_engine.py engines/models/mtcnn_pnet.onnx -o pnet.fp16.engine --pnet-canvas 218x854
  # INT8 from a Q/DQ-quantised ONNX (made with calibration/), described by the original card
  python tools/build_engine.py rnet.qdq.onnx --card engines/models/mtcnn_rnet.yaml --precision int8 -o rnet.int8.engine
  # INT8 by TensorRT's entropy calibrator over a calibration batch folder
  python tools/build_engine.py engines/models/dlib_resnet_v1.onnx --precision int8 --calibrator cal/emb -o e.engine
  # on DLA core 0 of a Jetson Orin (GPU fallback), reusing layer timings between builds
  python tools/build_engine.py engines/models/mtcnn_onet.onnx --dla-core 0 --timing-cache trt.cache -o onet.dla.engine

exit status: 0 built, 1 failed (TensorRT missing, parse or build failure), 2 usage error.
TensorRT comes from JetPack, not pip: sudo apt install python3-libnvinfer, a venv made with
--system-site-packages, and pip install -e '.[jetson]' for pycuda.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.arguments import natural as _natural, positive as _positive, size as _size  # noqa: E402
from engines.atomic_file import write_atomic  # noqa: E402
from engines.engine_metadata import (INSTALL_HINT, PRECISIONS, READABLE, BuildOptions, Calibration,  # noqa: E402
                                     EngineMetadata, Profile, gpu_identity, require_supported_tensorrt,
                                     sidecar_path, tensorrt_version, write_metadata)
from engines.errors import ModelError  # noqa: E402
from engines.manifest import MODELS_DIR, sha256_of  # noqa: E402
from engines.model_card import ROLES, ModelCard, ModelCardError, cards_of, find_card, load_card, load_cards  # noqa: E402

DEFAULT_WORKSPACE_MIB = 1024
# (opt, max) batch per batched role. R-Net sees every P-Net candidate left after NMS (tens on a
# quiet frame, hundreds in a crowd); O-Net and the embedder see only what R-Net and the quality
# gate keep. Larger batches are refused by the runner, so callers split them.
DEFAULT_BATCH = {"rnet": (64, 512), "onet": (16, 128), "embedder": (4, 32), "liveness": (4, 32)}
CALIBRATOR_MODULE = "calibration.trt_calibrator"


class UsageError(Exception):
    """Bad options or inputs: exit status 2."""


class BuildError(Exception):
    """TensorRT, pycuda or the build itself failed: exit status 1."""


@dataclass(frozen=True)
class Job:
    onnx: Path
    card: ModelCard
    output: Path
    options: BuildOptions
    profiles: dict[str, Profile]


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        jobs = plan_jobs(args)
        trt, cuda = import_tensorrt()
        built = [build_one(job, trt, cuda, args.verbose, label=f"[{n}/{len(jobs)}] {job.output.name}")
                 for n, job in enumerate(jobs, 1)]
    except UsageError as error:
        print(f"build_engine.py: error: {error}", file=sys.stderr)
        return 2
    except (BuildError, ModelError, ModelCardError, OSError) as error:
        print(f"build_engine.py: failed: {error}", file=sys.stderr)
        return 1
    report(built, args.json)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build_engine.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="?", type=Path, help="the ONNX model to build (or --all)")
    parser.add_argument("--all", action="store_true",
                        help="build one engine per role from --models: the MTCNN nets, the embedder the door uses "
                             "(the one engines/models/DEFAULTS names, or --embedder-card) and every liveness net")
    parser.add_argument("--models", type=Path, default=MODELS_DIR,
                        help="model folder for --all (default: engines/models)")
    parser.add_argument("--card", type=Path, help="model card of the ONNX (default: the card beside it naming it)")
    parser.add_argument("--embedder-card", type=Path, metavar="CARD",
                        help="with --all: the embedder to build, as the config's embedder.card names it")
    parser.add_argument("-o", "--output", type=Path,
                        help="engine file (default: OUT_DIR/<onnx stem>.<precision>.engine)")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="folder for engines (default: .)")
    parser.add_argument("--precision", type=_precision, action="append", default=[], metavar="[ROLE=]PRECISION",
                        help=f"{'|'.join(PRECISIONS)} (default fp16); ROLE=PRECISION sets one role's with --all, "
                             "e.g. embedder=int8 (repeatable)")
    parser.add_argument("--qdq-models", type=Path, metavar="DIR",
                        help="with --all: build the INT8 roles from their Q/DQ models in DIR (python -m calibration "
                             "quantize) rather than from --models")
    parser.add_argument("--calibrator", type=Path, metavar="DIR",
                        help="INT8 by TensorRT's entropy calibrator over this calibration batch folder (with --all: "
                             "one subfolder per role, DIR/rnet, ..., DIR/liveness/<card id>); without it, INT8 "
                             "expects a Q/DQ ONNX")
    parser.add_argument("--max-batch", type=_positive, help="largest batch the engine accepts (R-Net, O-Net, embedder, "
                        f"liveness; defaults {', '.join(f'{r} {b[1]}' for r, b in DEFAULT_BATCH.items())})")
    parser.add_argument("--opt-batch", type=_positive,
                        help="batch TensorRT tunes for (default: per role, at most --max-batch)")
    parser.add_argument("--pnet-canvas", type=_size, metavar="HxW", help="P-Net input: the packed pyramid canvas")
    parser.add_argument("--frame-size", type=_size, metavar="WxH",
                        help="P-Net: the camera frame size; the canvas is engines.mtcnn.pyramid_layout's for the "
                             "default detector config")
    parser.add_argument("--dla-core", type=_natural, metavar="N", help="run on DLA core N, GPU fallback for the rest")
    parser.add_argument("--workspace", type=_positive, default=DEFAULT_WORKSPACE_MIB, metavar="MiB",
                        help=f"builder workspace memory limit (default: {DEFAULT_WORKSPACE_MIB})")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE", help="layer timing cache, loaded and saved back")
    parser.add_argument("--json", action="store_true", help="print the sidecars of the built engines as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="TensorRT's INFO log")
    return parser


# --- planning (no TensorRT needed) --------------------------------------------------------------

def plan_jobs(args: argparse.Namespace) -> list[Job]:
    precisions = role_precisions(args)
    check_option_combinations(args, set(precisions.values()))
    if args.all:
        cards = cards_to_build(args)
        return [plan_job(args, *source_for(args, card, precisions[card.role]), precisions[card.role],
                         explicit_card=False) for card in cards]
    if not args.onnx.is_file():
        raise UsageError(f"{args.onnx}: no such ONNX file")
    card = load_card(args.card) if args.card else card_beside(args.onnx)
    return [plan_job(args, args.onnx, card, precisions[None], explicit_card=args.card is not None)]


def cards_to_build(args: argparse.Namespace) -> list[ModelCard]:
    """--all: one card per role found in --models; several embedders installed side by side give the
    one the door runs (DEFAULTS' choice, or --embedder-card); every liveness card (the door runs them all)."""
    try:
        cards = [find_card(args.models, role) for role in ROLES
                 if role not in ("embedder", "liveness") and cards_of(args.models, role)]
        cards += cards_of(args.models, "liveness")
        if args.embedder_card is not None:
            cards.append(load_card(args.embedder_card))
        elif cards_of(args.models, "embedder"):
            cards.append(find_card(args.models, "embedder"))
    except (ModelCardError, OSError) as error:
        raise UsageError(f"--models {args.models}: {error}") from None
    if not cards:
        raise UsageError(f"--models {args.models}: no model cards (*.yaml) there")
    return cards


def role_precisions(args: argparse.Namespace) -> dict[str | None, str]:
    """The precision of each role (key None: of the ONNX given alone), from --precision's values."""
    default = [precision for role, precision in args.precision if role is None]
    per_role = dict((role, precision) for role, precision in args.precision if role is not None)
    if len(default) > 1:
        raise UsageError(f"--precision given {len(default)} times without a role")
    if per_role and not args.all:
        raise UsageError("--precision ROLE=... is for --all; one ONNX takes one --precision")
    precision = default[0] if default else "fp16"
    return {None: precision, **{role: per_role.get(role, precision) for role in ROLES}}


def source_for(args: argparse.Namespace, card: ModelCard, precision: str) -> tuple[Path, ModelCard]:
    """The ONNX and card an --all job builds from: the Q/DQ model for INT8 where --qdq-models names a folder."""
    if precision != "int8" or args.qdq_models is None:
        return card.model_path, card
    try:
        if card.role == "liveness":  # every liveness card runs: each one's Q/DQ copy, which keeps its id
            matches = [quantized for quantized in cards_of(args.qdq_models, card.role) if quantized.id == card.id]
            if not matches:
                raise ModelCardError(f"{args.qdq_models}: no model card with id {card.id!r}")
            return matches[0].model_path, matches[0]
        quantized = find_card(args.qdq_models, card.role)
    except ModelCardError as error:
        raise UsageError(f"--qdq-models: {error} (python -m calibration quantize --roles {card.role})") from None
    return quantized.model_path, quantized


def check_option_combinations(args: argparse.Namespace, precisions: set[str]) -> None:
    if args.all == (args.onnx is not None):
        raise UsageError("give one ONNX file or --all")
    if args.all and (args.output or args.card):
        raise UsageError("--output and --card name one engine; with --all use --out-dir")
    if args.embedder_card is not None and not args.all:
        raise UsageError("--embedder-card is for --all; give the embedder's ONNX itself (and --card) for one engine")
    if args.qdq_models is not None and not args.all:
        raise UsageError("--qdq-models is for --all; give the Q/DQ ONNX itself (and --card) for one engine")
    if args.qdq_models is not None and args.calibrator is not None:
        raise UsageError("give --qdq-models or --calibrator: INT8 scales come from one or the other")
    if args.dla_core is not None and "fp32" in precisions:
        raise UsageError("the DLA runs FP16 or INT8 only: add --precision fp16 or int8")
    if args.calibrator is not None and "int8" not in precisions:
        raise UsageError("--calibrator is for --precision int8")
    if args.pnet_canvas and args.frame_size:
        raise UsageError("give --pnet-canvas or --frame-size, not both")
    if args.max_batch and args.opt_batch and args.opt_batch > args.max_batch:
        raise UsageError(f"--opt-batch {args.opt_batch} is larger than --max-batch {args.max_batch}")


def card_beside(onnx: Path) -> ModelCard:
    matches = [card for card in load_cards(onnx.parent) if card.file == onnx.name]
    if len(matches) != 1:
        raise UsageError(f"{onnx}: found {len(matches)} model cards naming it in {onnx.parent}: name one with --card")
    return matches[0]


def plan_job(args: argparse.Namespace, onnx: Path, card: ModelCard, precision: str, explicit_card: bool) -> Job:
    options = BuildOptions(precision=precision, workspace_mib=args.workspace, dla_core=args.dla_core,
                           calibration=calibration_for(args, onnx, card, precision),
                           timing_cache=_text(args.timing_cache),
                           card=str(args.card.resolve()) if explicit_card else None)
    if card.role == "pnet":
        options, shape = pnet_shape(args, options)
        profiles = {card.input_name: Profile(shape, shape, shape)}
    else:
        options, profiles = batch_profiles(args, options, card)
    output = args.output or args.out_dir / f"{onnx.stem}.{precision}.engine"
    return Job(onnx=onnx.resolve(), card=card, output=output.resolve(), options=options, profiles=profiles)


def calibration_for(args: argparse.Namespace, onnx: Path, card: ModelCard, precision: str) -> Calibration | None:
    if precision != "int8":
        return None
    if args.calibrator is None:
        return Calibration("qdq", onnx.name)
    # --all: one subfolder per role, and per card for liveness (calibration/dataset.py's set_name)
    folder = args.calibrator
    if args.all:
        folder = folder / card.role / (card.id if card.role == "liveness" else "")
    if not folder.is_dir():
        raise UsageError(f"--calibrator: {folder} is not a folder of calibration batches")
    return Calibration("entropy", str(folder.resolve()))


def pnet_shape(args: argparse.Namespace, options: BuildOptions) -> tuple[BuildOptions, tuple[int, ...]]:
    if args.frame_size:
        width, height = args.frame_size
        return replace(options, frame_size=args.frame_size), (1, 3, *pnet_canvas_for(height, width))
    if args.pnet_canvas:
        return replace(options, pnet_canvas=args.pnet_canvas), (1, 3, *args.pnet_canvas)
    raise UsageError("the P-Net engine runs on one packed pyramid canvas: give --frame-size WxH (the camera's "
                     "resolution) or --pnet-canvas HxW")


def pnet_canvas_for(height: int, width: int) -> tuple[int, int]:
    """P-Net's canvas (height, width) for a frame, exactly as the detector packs it."""
    from engines.mtcnn import pyramid_layout  # needs OpenCV, which only this option uses

    canvas = pyramid_layout(height, width).canvas_size
    if min(canvas) <= 0:
        raise UsageError(f"--frame-size {width}x{height} is too small for any pyramid level")
    return canvas


def batch_profiles(args: argparse.Namespace, options: BuildOptions,
                   card: ModelCard) -> tuple[BuildOptions, dict[str, Profile]]:
    default_opt, default_max = DEFAULT_BATCH[card.role]
    largest = args.max_batch or max(default_max, args.opt_batch or 0)
    opt = args.opt_batch or min(default_opt, largest)
    width, height = card.input_size
    shape = (3, height, width)
    profile = Profile((1, *shape), (opt, *shape), (largest, *shape))
    return replace(options, max_batch=largest, opt_batch=opt), {card.input_name: profile}


def _precision(text: str) -> tuple[str | None, str]:
    """'int8' -> (None, 'int8'); 'embedder=int8' -> ('embedder', 'int8')."""
    role, sep, precision = text.rpartition("=")
    if precision not in PRECISIONS or (sep and role not in ROLES):
        raise argparse.ArgumentTypeError(f"{text!r}: expected [ROLE=]PRECISION, ROLE one of {', '.join(ROLES)}, "
                                         f"PRECISION one of {', '.join(PRECISIONS)}")
    return (role if sep else None), precision


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


# --- building -----------------------------------------------------------------------------------

def import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt
    except ImportError as error:
        raise BuildError(f"TensorRT's Python module is not importable ({error}). {INSTALL_HINT}") from error
    try:
        import pycuda.driver as cuda
    except ImportError as error:
        raise BuildError(f"pycuda is not importable ({error}); it names the GPU in the sidecar. "
                         f"{INSTALL_HINT}") from error
    require_supported_tensorrt(tensorrt.__version__)
    return tensorrt, cuda


def build_one(job: Job, trt: Any, cuda: Any, verbose: bool, label: str) -> tuple[Path, EngineMetadata]:
    cuda.init()
    gpu = gpu_identity(cuda.Device(0))
    # A CUDA context of our own, current while TensorRT builds: the calibrator's pycuda buffers live in it.
    context = cuda.Device(0).make_context()
    try:
        data = serialize(job, trt, verbose, label)
    finally:
        context.pop()
        context.detach()
    write_atomic(job.output, data, mode=READABLE)
    metadata = EngineMetadata(
        tensorrt=trt.__version__, gpu=gpu, onnx_file=job.onnx.name, onnx_path=str(job.onnx),
        onnx_sha256=sha256_of(job.onnx), model_id=job.card.id, role=job.card.role,
        card_path=str(job.card.path.resolve()), engine_sha256=hashlib.sha256(data).hexdigest(), options=job.options,
        profiles=job.profiles)
    write_metadata(job.output, metadata)
    return job.output, metadata


def serialize(job: Job, trt: Any, verbose: bool, label: str) -> bytes:
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    parse_onnx(parser, job.onnx)
    check_network(trt, network, job)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.options.workspace_mib << 20)
    set_precision(trt, config, job.options.precision)
    profile = add_profile(builder, config, job.profiles)
    if job.options.dla_core is not None:
        use_dla(trt, builder, config, job.options.dla_core)
    calibrator = attach_calibrator(config, profile, job.options.calibration)
    timing_cache = load_timing_cache(config, job.options.timing_cache)
    with BuildProgress(trt, config, label):
        serialized = builder.build_serialized_network(network, config)
    del calibrator  # this name kept it alive until TensorRT had finished calibrating
    if serialized is None:
        raise BuildError(f"{job.onnx.name}: TensorRT built no engine (its log above says why; "
                         "--verbose for more, a larger --workspace if it ran out of memory)")
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()), mode=READABLE)
    return bytes(serialized)


def network_flags(trt: Any) -> int:
    # EXPLICIT_BATCH is required for ONNX on 8.x; 10.x networks are always explicit and deprecate the flag.
    if tensorrt_version(trt.__version__) >= (10, 0):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def parse_onnx(parser: Any, onnx: Path) -> None:
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx}: TensorRT's ONNX parser failed: {errors}")


def check_network(trt: Any, network: Any, job: Job) -> None:
    """The parsed network has the card's input, its fixed dimensions fit the profile, INT8 has its scales."""
    inputs = {t.name: tuple(t.shape) for t in (network.get_input(i) for i in range(network.num_inputs))}
    if sorted(inputs) != sorted(job.profiles):
        raise BuildError(f"{job.onnx.name}: inputs {sorted(inputs)} do not match the card's {sorted(job.profiles)} "
                         f"({job.card.path})")
    for name, shape in inputs.items():
        profile = job.profiles[name]
        if len(shape) != len(profile.min) or any(d >= 0 and not lo == d == hi
                                                 for d, lo, hi in zip(shape, profile.min, profile.max)):
            raise BuildError(f"{job.onnx.name}: input {name!r} has shape {shape} (-1: dynamic), which does not "
                             f"admit the profile min {profile.min}, max {profile.max}")
    calibration = job.options.calibration
    if calibration is not None and calibration.method == "qdq" and not has_quantize_layers(trt, network):
        raise UsageError(f"{job.onnx.name} has no Q/DQ (QuantizeLinear) nodes, so INT8 would have no scales: "
                         "quantise it with the calibration package, or give --calibrator DIR")


def has_quantize_layers(trt: Any, network: Any) -> bool:
    return any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))


def set_precision(trt: Any, config: Any, precision: str) -> None:
    if precision == "fp32":
        # TensorRT allows TF32 by default; FP32 here means FP32, the reference the others are measured against.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8"):
        # With INT8, layers left unquantised run in FP16 rather than FP32.
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)


def add_profile(builder: Any, config: Any, profiles: dict[str, Profile]) -> Any:
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    return profile


def use_dla(trt: Any, builder: Any, config: Any, core: int) -> None:
    if core >= builder.num_DLA_cores:
        raise UsageError(f"--dla-core {core}: this device has {builder.num_DLA_cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def attach_calibrator(config: Any, profile: Any, calibration: Calibration | None) -> Any:
    """TensorRT's implicit INT8 calibrator (deprecated since 10.1, still supported) where asked for."""
    if calibration is None or calibration.method != "entropy":
        return None
    try:
        module = importlib.import_module(CALIBRATOR_MODULE)
    except ModuleNotFoundError as error:
        if error.name not in (CALIBRATOR_MODULE, "calibration"):
            raise
        raise BuildError(f"--calibrator needs {CALIBRATOR_MODULE.replace('.', '/')}.py (class EntropyCalibrator), "
                         "which this installation lacks; build from a Q/DQ-quantised ONNX instead") from error
    calibrator = module.EntropyCalibrator(Path(calibration.source))
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)  # calibration runs at this profile's opt shapes
    return calibrator


def load_timing_cache(config: Any, path_text: str | None) -> Path | None:
    """Start from the saved timings where there are some; returns where to save them back."""
    if path_text is None:
        return None
    path = Path(path_text)
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    # A cache from another TensorRT or GPU is refused rather than trusted; the build then starts afresh.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        print(f"{path}: timing cache not usable here (another TensorRT or GPU?); starting a new one",
              file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return path


class BuildProgress:
    """One status line while TensorRT builds: the elapsed time, and on TensorRT 10 the optimiser's
    current phase and step (IProgressMonitor)."""

    def __init__(self, trt: Any, config: Any, label: str, out: TextIO | None = None) -> None:
        self.label, self.out = label, out or sys.stderr
        self.tty = self.out.isatty()
        self.phase = ""
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.start = time.monotonic()
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = self.monitor = _progress_monitor(trt, self)
        self.thread = threading.Thread(target=self._tick, name="build-progress", daemon=True)

    def __enter__(self) -> "BuildProgress":
        self.start = time.monotonic()
        self.draw()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.phase = ""
        self.draw("built in" if exc[0] is None else "failed after", final=True)

    def set_phase(self, text: str, started: bool) -> None:
        """A terminal shows every step; a log only each phase's start."""
        self.phase = text
        if self.tty or started:
            self.draw()

    def draw(self, state: str = "building,", final: bool = False) -> None:
        with self.lock:
            line = f"{self.label}: {state} {time.monotonic() - self.start:.0f} s {self.phase}".rstrip()
            if self.tty:
                self.out.write("\r\x1b[2K" + line + ("\n" if final else ""))
            else:
                self.out.write(line + "\n")
            self.out.flush()

    def _tick(self) -> None:
        # A terminal gets a live line; a log gets a line every 15 s.
        while not self.done.wait(0.5 if self.tty else 15.0):
            self.draw()


def _progress_monitor(trt: Any, progress: BuildProgress) -> Any:
    """An IProgressMonitor that shows the innermost running phase; TensorRT calls it from its own threads."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            progress.set_phase(f"[{phase_name} 0/{num_steps}]", started=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            progress.set_phase(f"[{phase_name} {step + 1}/{self.steps.get(phase_name, '?')}]", started=False)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

    return Monitor()


def report(built: list[tuple[Path, EngineMetadata]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"engine": str(path), "sidecar": str(sidecar_path(path)), "metadata": metadata.to_json()}
                          for path, metadata in built], indent=2))
        return
    for path, metadata in built:
        print(f"{path}  ({metadata.role}, {metadata.precision}, TensorRT {metadata.tensorrt}, {metadata.gpu}; "
              f"sidecar {path.name}.json)")


if __name__ == "__main__":
    sys.exit(main())
