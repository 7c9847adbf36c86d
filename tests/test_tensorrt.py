"""TensorRT engines: tools/build_engine.py, the metadata sidecar and TensorRTRunner.

Most tests run against the fakes in tests/fakes (they record what reaches the
TensorRT and pycuda APIs and keep their rules); the last ones build and run a
real engine and skip where tensorrt and pycuda do not import.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import shutil
import sys
import threading
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from engines.engine_metadata import EngineMismatchError, read_metadata, rebuild_command, sidecar_path
from engines.errors import ModelError
from engines.onnx_runner import OnnxRunner
from engines.runner import open_runner
from engines.tensorrt_runner import TensorRTRunner
from tests import fakes
from tests.conftest import MODELS, REPO

_spec = importlib.util.spec_from_file_location("facegate_build_engine", REPO / "tools" / "build_engine.py")
build_engine = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = build_engine  # dataclasses look their module up there
_spec.loader.exec_module(build_engine)

RNET = MODELS / "mtcnn_rnet.onnx"
RNET_INPUT = (3, 24, 24)


def cli(*args: object) -> int:
    """build_engine.py's exit status for these arguments, argparse's own exits included."""
    try:
        return build_engine.main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch)


@pytest.fixture
def rnet_engine(fake, tmp_path) -> Path:
    engine = tmp_path / "rnet.fp16.engine"
    assert cli(RNET, "-o", engine, "--max-batch", 128, "--opt-batch", 8, "--workspace", 256) == 0
    return engine


def built_config(fake: fakes.Fakes):
    network, config = fake.calls("build_serialized_network")[-1]
    return config


def profile_shapes(config) -> dict[str, tuple]:
    (profile,) = config.profiles
    return profile.shapes


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, *RNET_INPUT)).astype(np.float32)


# --- building -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version, network_flags", [("10.3.0", 0), ("8.6.1", 1)])
def test_fp16_build_sets_flags_workspace_and_batch_profile(monkeypatch, tmp_path, version, network_flags):
    fake = fakes.install(monkeypatch, tensorrt_version=version)
    assert cli(RNET, "-o", tmp_path / "r.engine", "--max-batch", 128, "--opt-batch", 8, "--workspace", 256) == 0
    config = built_config(fake)
    assert fake.calls("create_network") == [(network_flags,)]  # EXPLICIT_BATCH on 8.x only
    assert fake.trt.BuilderFlag.FP16 in config.flags
    assert fake.trt.BuilderFlag.INT8 not in config.flags
    assert config.default_device_type == fake.trt.DeviceType.GPU
    assert config.pool_limits == {fake.trt.MemoryPoolType.WORKSPACE: 256 << 20}
    assert profile_shapes(config) == {"input": ((1, *RNET_INPUT), (8, *RNET_INPUT), (128, *RNET_INPUT))}
    assert (tmp_path / "r.engine").read_bytes().startswith(fake.trt.ENGINE_HEADER)


def test_default_batch_limits_come_from_the_role(fake, tmp_path):
    assert cli(MODELS / "dlib_resnet_v1.onnx", "-o", tmp_path / "e.engine") == 0
    opt, largest = build_engine.DEFAULT_BATCH["embedder"]
    assert profile_shapes(built_config(fake)) == {
        "input": ((1, 3, 150, 150), (opt, 3, 150, 150), (largest, 3, 150, 150))}


def test_fp32_build_turns_reduced_precision_off(fake, tmp_path):
    assert cli(RNET, "-o", tmp_path / "r.engine", "--precision", "fp32") == 0
    assert built_config(fake).flags == set()  # TF32 cleared, no FP16 or INT8


def test_sidecar_records_what_the_engine_was_built_from(fake, rnet_engine):
    raw = json.loads(sidecar_path(rnet_engine).read_text())
    assert raw["tensorrt"] == "10.3.0"
    assert raw["gpu"] == {"name": "Orin (fake)", "compute_capability": "8.7"}
    assert raw["precision"] == "fp16"
    assert raw["onnx"] == {"file": "mtcnn_rnet.onnx", "path": str(RNET),
                           "sha256": hashlib.sha256(RNET.read_bytes()).hexdigest()}
    assert raw["model"] == {"id": "mtcnn-rnet-facenet-pytorch-2.6.0", "role": "rnet",
                            "card": str(MODELS / "mtcnn_rnet.yaml")}
    assert raw["engine"]["sha256"] == hashlib.sha256(rnet_engine.read_bytes()).hexdigest()
    build = raw["build"]
    assert (build["workspace_mib"], build["max_batch"], build["opt_batch"], build["dla_core"]) == (256, 128, 8, None)
    assert build["calibration"] is None
    assert build["profiles"] == {"input": {"min": [1, 3, 24, 24], "opt": [8, 3, 24, 24], "max": [128, 3, 24, 24]}}
    assert datetime.fromisoformat(raw["created"]).tzinfo is not None


def write_qdq_model(path: Path, input_shape: tuple[int, ...] = RNET_INPUT) -> Path:
    """A small valid ONNX with the R-Net input (or input_shape), quantised by QuantizeLinear/DequantizeLinear."""
    nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
             helper.make_node("ReduceMean", ["dq", "axes"], ["reg"], keepdims=0)]
    constants = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01]),
                 helper.make_tensor("zero", TensorProto.INT8, [], [0]),
                 helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("reg", TensorProto.FLOAT, ["batch", 3])], initializer=constants)
    # IR 10: what the oldest ONNX Runtime the constraints pin (1.23, Python 3.10) reads; newest onnx writes 14.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_int8_builds_a_qdq_model_without_a_calibrator(fake, tmp_path):
    qdq = write_qdq_model(tmp_path / "rnet.qdq.onnx")
    engine = tmp_path / "rnet.int8.engine"
    assert cli(qdq, "--card", MODELS / "mtcnn_rnet.yaml", "--precision", "int8", "-o", engine) == 0
    config = built_config(fake)
    assert {fake.trt.BuilderFlag.INT8, fake.trt.BuilderFlag.FP16} <= config.flags
    assert config.int8_calibrator is None
    metadata = read_metadata(engine)
    assert (metadata.options.calibration.method, metadata.options.calibration.source) == ("qdq", "rnet.qdq.onnx")
    assert metadata.options.card == str(MODELS / "mtcnn_rnet.yaml")


def qdq_folder(folder: Path) -> Path:
    """A model folder like `python -m calibration quantize --roles rnet` writes: R-Net's Q/DQ model and its card."""
    folder.mkdir()
    write_qdq_model(folder / "mtcnn_rnet.qdq.onnx")
    card = (MODELS / "mtcnn_rnet.yaml").read_text().replace("file: mtcnn_rnet.onnx", "file: mtcnn_rnet.qdq.onnx")
    (folder / "mtcnn_rnet.qdq.yaml").write_text(card)
    return folder


def test_all_with_one_role_int8_builds_it_from_its_qdq_model_and_the_rest_fp16(fake, tmp_path, capsys):
    qdq = qdq_folder(tmp_path / "int8")
    out = tmp_path / "engines"
    assert cli("--all", "--frame-size", "640x480", "--precision", "rnet=int8", "--qdq-models", qdq,
               "--out-dir", out, "--json") == 0
    built = {entry["metadata"]["model"]["role"]: Path(entry["engine"]) for entry in json.loads(capsys.readouterr().out)}
    assert {role: read_metadata(engine).options.precision for role, engine in built.items()} == {
        "pnet": "fp16", "rnet": "int8", "onet": "fp16", "embedder": "fp16", "liveness": "fp16"}
    assert built["rnet"].name == "mtcnn_rnet.qdq.int8.engine"
    rnet = read_metadata(built["rnet"])
    assert (rnet.onnx_path, rnet.card_path) == (str(qdq / "mtcnn_rnet.qdq.onnx"), str(qdq / "mtcnn_rnet.qdq.yaml"))
    int8_builds = [config for _, config in fake.calls("build_serialized_network")
                   if fake.trt.BuilderFlag.INT8 in config.flags]
    assert len(int8_builds) == 1


def test_a_default_precision_and_role_precisions_combine(fake, tmp_path, capsys):
    assert cli("--all", "--frame-size", "640x480", "--precision", "fp32", "--precision", "embedder=fp16",
               "--out-dir", tmp_path, "--json") == 0
    built = json.loads(capsys.readouterr().out)
    assert sorted(Path(entry["engine"]).name for entry in built) == [
        "minifasnet_v1se_4.0.fp32.engine", "minifasnet_v2_2.7.fp32.engine", "mtcnn_onet.fp32.engine",
        "mtcnn_pnet.fp32.engine", "mtcnn_rnet.fp32.engine", "sface_2021dec.fp16.engine"]


@pytest.mark.parametrize("args, message", [
    ((RNET, "--precision", "rnet=int8"), "for --all"),
    (("--all", "--precision", "fp16", "--precision", "int8"), "without a role"),
    ((RNET, "--qdq-models", "."), "--qdq-models is for --all"),
    (("--all", "--precision", "rnet=int8", "--qdq-models", ".", "--calibrator", "."), "one or the other"),
    (("--all", "--frame-size", "640x480", "--precision", "onet=int8", "--qdq-models", "INT8"), "--roles onet"),
])
def test_role_precision_usage_errors_say_why(fake, tmp_path, capsys, args, message):
    qdq_folder(tmp_path / "INT8")
    assert cli(*[tmp_path / "INT8" if a == "INT8" else a for a in args]) == 2
    assert message in capsys.readouterr().err
    assert fake.calls("build_serialized_network") == []


def test_int8_refuses_a_model_without_qdq_nodes(fake, tmp_path, capsys):
    assert cli(RNET, "--precision", "int8", "-o", tmp_path / "r.engine") == 2
    error = capsys.readouterr().err
    assert "Q/DQ" in error and "--calibrator" in error
    assert not (tmp_path / "r.engine").exists()


def test_int8_calibrator_is_refused_clearly_where_the_calibration_module_is_missing(fake, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, build_engine.CALIBRATOR_MODULE, None)
    assert cli(RNET, "--precision", "int8", "--calibrator", tmp_path, "-o", tmp_path / "r.engine") == 1
    assert "calibration/trt_calibrator.py" in capsys.readouterr().err


def test_int8_calibrator_is_attached_with_the_calibration_profile(fake, tmp_path, monkeypatch):
    class EntropyCalibrator:
        def __init__(self, batch_dir: Path) -> None:
            self.batch_dir, self.left = batch_dir, 2

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.left -= 1
            return [0x1000] if self.left >= 0 else None

    module = types.ModuleType(build_engine.CALIBRATOR_MODULE)
    module.EntropyCalibrator = EntropyCalibrator
    monkeypatch.setitem(sys.modules, build_engine.CALIBRATOR_MODULE, module)
    batches = tmp_path / "batches"
    batches.mkdir()
    engine = tmp_path / "r.engine"
    assert cli(RNET, "--precision", "int8", "--calibrator", batches, "-o", engine) == 0
    config = built_config(fake)
    assert isinstance(config.int8_calibrator, EntropyCalibrator)
    assert config.int8_calibrator.batch_dir == batches.resolve()
    assert fake.calls("set_calibration_profile") == [(config.profiles[0],)]
    assert fake.calls("calibrated") == [(2,)]
    calibration = read_metadata(engine).options.calibration
    assert (calibration.method, calibration.source) == ("entropy", str(batches.resolve()))


def test_dla_core_with_gpu_fallback(fake, tmp_path):
    engine = tmp_path / "onet.engine"
    assert cli(MODELS / "mtcnn_onet.onnx", "--dla-core", 1, "-o", engine) == 0
    config = built_config(fake)
    assert config.default_device_type == fake.trt.DeviceType.DLA
    assert config.DLA_core == 1
    assert {fake.trt.BuilderFlag.GPU_FALLBACK, fake.trt.BuilderFlag.FP16} <= config.flags
    assert read_metadata(engine).options.dla_core == 1


@pytest.mark.parametrize("args", [("--dla-core", 2), ("--dla-core", 0, "--precision", "fp32")])
def test_dla_usage_errors(fake, tmp_path, args):
    assert cli(MODELS / "mtcnn_onet.onnx", "-o", tmp_path / "o.engine", *args) == 2  # the fake has 2 cores
    assert not (tmp_path / "o.engine").exists()


def test_timing_cache_is_loaded_and_saved_back(fake, tmp_path, capsys):
    cache = tmp_path / "trt.cache"
    assert cli(RNET, "-o", tmp_path / "r.engine", "--timing-cache", cache) == 0
    assert fake.calls("create_timing_cache") == [(b"",)]
    assert [ignore for _, ignore in fake.calls("set_timing_cache")] == [False]
    first = cache.read_bytes()
    assert first.splitlines() == [b"FAKE-TIMING-CACHE 10.3.0", b"input:['FP16', 'TF32']"]

    assert cli(MODELS / "mtcnn_onet.onnx", "-o", tmp_path / "o.engine", "--timing-cache", cache) == 0
    assert fake.calls("create_timing_cache")[-1] == (first,)
    assert cache.read_bytes().splitlines()[:2] == first.splitlines()
    assert len(cache.read_bytes().splitlines()) == 3


def test_timing_cache_from_another_tensorrt_is_replaced(fake, tmp_path, capsys):
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"FAKE-TIMING-CACHE 8.6.1\nold:entry")
    assert cli(RNET, "-o", tmp_path / "r.engine", "--timing-cache", cache) == 0
    assert "starting a new one" in capsys.readouterr().err
    assert cache.read_bytes().splitlines()[0] == b"FAKE-TIMING-CACHE 10.3.0"
    assert b"old:entry" not in cache.read_bytes()


def test_pnet_profile_is_the_given_canvas(fake, tmp_path):
    engine = tmp_path / "pnet.engine"
    assert cli(MODELS / "mtcnn_pnet.onnx", "--pnet-canvas", "146x430", "-o", engine) == 0
    shape = (1, 3, 146, 430)
    assert profile_shapes(built_config(fake)) == {"input": (shape, shape, shape)}
    metadata = read_metadata(engine)
    assert (metadata.options.pnet_canvas, metadata.options.max_batch) == ((146, 430), None)


def test_pnet_profile_from_the_frame_size_is_the_detectors_canvas(fake, tmp_path):
    from engines.mtcnn import pyramid_layout

    engine = tmp_path / "pnet.engine"
    assert cli(MODELS / "mtcnn_pnet.onnx", "--frame-size", "640x480", "-o", engine) == 0
    shape = (1, 3, *pyramid_layout(480, 640).canvas_size)
    assert profile_shapes(built_config(fake)) == {"input": (shape, shape, shape)}
    assert read_metadata(engine).options.frame_size == (640, 480)


def test_pnet_without_a_canvas_is_a_usage_error(fake, tmp_path, capsys):
    assert cli(MODELS / "mtcnn_pnet.onnx", "-o", tmp_path / "p.engine") == 2
    assert "--frame-size" in capsys.readouterr().err


def test_all_builds_every_model_into_the_folder(fake, tmp_path, capsys):
    out = tmp_path / "engines"
    assert cli("--all", "--frame-size", "640x480", "--out-dir", out, "--json") == 0
    built = json.loads(capsys.readouterr().out)
    assert sorted(entry["metadata"]["model"]["role"] for entry in built) == ["embedder", "liveness", "liveness", "onet", "pnet", "rnet"]
    for entry in built:
        engine = Path(entry["engine"])
        assert engine.parent == out and engine.name.endswith(".fp16.engine")
        assert Path(entry["sidecar"]) == sidecar_path(engine)
        assert read_metadata(engine).role == entry["metadata"]["model"]["role"]


LIVENESS_CARDS = {"minifasnet-v1se-4.0": "minifasnet_v1se_4.0", "minifasnet-v2-2.7": "minifasnet_v2_2.7"}
LIVENESS_INPUT = (3, 80, 80)


def test_all_builds_both_liveness_nets_fp16_with_a_batch_profile(fake, tmp_path, capsys):
    assert cli("--all", "--frame-size", "640x480", "--out-dir", tmp_path, "--json") == 0
    liveness = [e for e in json.loads(capsys.readouterr().out) if e["metadata"]["model"]["role"] == "liveness"]
    assert sorted((e["metadata"]["model"]["id"], Path(e["engine"]).name, e["metadata"]["precision"])
                  for e in liveness) == [(card, f"{stem}.fp16.engine", "fp16") for card, stem in LIVENESS_CARDS.items()]
    for entry in liveness:
        stem = LIVENESS_CARDS[entry["metadata"]["model"]["id"]]
        assert entry["metadata"]["onnx"]["path"] == str(MODELS / f"{stem}.onnx")
        assert entry["metadata"]["build"]["profiles"] == {
            "input": {"min": [1, *LIVENESS_INPUT], "opt": [4, *LIVENESS_INPUT], "max": [32, *LIVENESS_INPUT]}}


def liveness_qdq_folder(folder: Path, cards: tuple[str, ...] = tuple(LIVENESS_CARDS)) -> Path:
    """What `python -m calibration quantize --roles liveness` writes: each liveness card's Q/DQ model and card copy."""
    folder.mkdir()
    for card in cards:
        stem = LIVENESS_CARDS[card]
        write_qdq_model(folder / f"{stem}.qdq.onnx", LIVENESS_INPUT)
        text = (MODELS / f"{stem}.yaml").read_text().replace(f"file: {stem}.onnx", f"file: {stem}.qdq.onnx")
        (folder / f"{stem}.qdq.yaml").write_text(text)
    return folder


def test_all_with_liveness_int8_builds_each_liveness_net_from_its_own_qdq_model(fake, tmp_path, capsys):
    qdq = liveness_qdq_folder(tmp_path / "int8")
    assert cli("--all", "--frame-size", "640x480", "--precision", "liveness=int8", "--qdq-models", qdq,
               "--out-dir", tmp_path / "engines", "--json") == 0
    built = json.loads(capsys.readouterr().out)
    assert sorted(e["metadata"]["precision"] for e in built if e["metadata"]["model"]["role"] != "liveness") == \
        ["fp16"] * 4
    liveness = {e["metadata"]["model"]["id"]: e for e in built if e["metadata"]["model"]["role"] == "liveness"}
    assert sorted(liveness) == sorted(LIVENESS_CARDS)
    for card, entry in liveness.items():
        stem = LIVENESS_CARDS[card]
        metadata = read_metadata(Path(entry["engine"]))
        assert Path(entry["engine"]).name == f"{stem}.qdq.int8.engine" and metadata.precision == "int8"
        assert metadata.onnx_path == str(qdq / f"{stem}.qdq.onnx")
        assert metadata.card_path == str(qdq / f"{stem}.qdq.yaml")
        assert (metadata.options.calibration.method, metadata.options.calibration.source) == ("qdq", f"{stem}.qdq.onnx")
    assert sum(fake.trt.BuilderFlag.INT8 in config.flags for _, config in fake.calls("build_serialized_network")) == 2


def test_liveness_int8_without_each_cards_qdq_model_is_a_usage_error(fake, tmp_path, capsys):
    qdq = liveness_qdq_folder(tmp_path / "int8", ("minifasnet-v2-2.7",))
    assert cli("--all", "--frame-size", "640x480", "--precision", "liveness=int8", "--qdq-models", qdq,
               "--out-dir", tmp_path / "engines") == 2
    error = capsys.readouterr().err
    assert "'minifasnet-v1se-4.0'" in error and "python -m calibration quantize --roles liveness" in error
    assert fake.calls("build_serialized_network") == []


def test_liveness_int8_by_the_calibrator_wants_a_folder_per_liveness_card(fake, tmp_path, capsys):
    for role in ("pnet", "rnet", "onet", "embedder", "liveness/minifasnet-v2-2.7"):
        (tmp_path / "cal" / role).mkdir(parents=True)
    assert cli("--all", "--frame-size", "640x480", "--precision", "int8", "--calibrator", tmp_path / "cal",
               "--out-dir", tmp_path / "engines") == 2
    assert f"{tmp_path / 'cal' / 'liveness' / 'minifasnet-v1se-4.0'} is not a folder" in capsys.readouterr().err
    assert fake.calls("build_serialized_network") == []


def models_with_two_embedders(tmp_path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(MODELS, folder)
    card = yaml.safe_load((folder / "dlib_resnet_v1.yaml").read_text())
    card.update(id="second-embedder", file="second.onnx")
    shutil.copy(folder / "dlib_resnet_v1.onnx", folder / "second.onnx")
    (folder / "second.yaml").write_text(yaml.safe_dump(card))
    (folder / "DEFAULTS").write_text("embedder  dlib-resnet-v1\n")
    return folder


def test_all_builds_the_embedder_the_door_uses_where_several_are_installed(fake, tmp_path, capsys):
    folder = models_with_two_embedders(tmp_path)
    args = ("--all", "--models", folder, "--frame-size", "640x480", "--out-dir", tmp_path / "engines", "--json")
    assert cli(*args) == 0
    built = json.loads(capsys.readouterr().out)
    assert [Path(e["engine"]).name for e in built if e["metadata"]["model"]["role"] == "embedder"] == \
        ["dlib_resnet_v1.fp16.engine"]
    assert cli(*args, "--embedder-card", folder / "second.yaml") == 0
    built = json.loads(capsys.readouterr().out)
    assert sorted(e["metadata"]["model"]["role"] for e in built) == ["embedder", "liveness", "liveness", "onet", "pnet", "rnet"]
    assert [Path(e["engine"]).name for e in built if e["metadata"]["model"]["role"] == "embedder"] == \
        ["second.fp16.engine"]


def test_all_checks_every_model_before_building_any(fake, tmp_path):
    assert cli("--all", "--out-dir", tmp_path) == 2  # P-Net has no canvas
    assert fake.calls("build_serialized_network") == []
    assert list(tmp_path.iterdir()) == []


def test_progress_monitor_on_tensorrt_10(fake, tmp_path, capsys):
    assert cli(RNET, "-o", tmp_path / "r.engine") == 0
    assert isinstance(built_config(fake).progress_monitor, fake.trt.IProgressMonitor)
    error = capsys.readouterr().err
    assert "[Building engine 0/2]" in error and "built in" in error


def test_elapsed_time_line_before_tensorrt_10(monkeypatch, tmp_path, capsys):
    fake = fakes.install(monkeypatch, tensorrt_version="8.6.1")
    assert cli(RNET, "-o", tmp_path / "r.engine") == 0
    assert built_config(fake).progress_monitor is None
    error = capsys.readouterr().err
    assert "r.engine: building, 0 s" in error and "built in" in error


def test_failed_build_exits_1_and_leaves_no_files(fake, tmp_path, capsys):
    fake.trt.FAIL_BUILD = True
    assert cli(RNET, "-o", tmp_path / "r.engine") == 1
    assert "TensorRT built no engine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unparsable_onnx_exits_1(fake, tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert cli(broken, "--card", MODELS / "mtcnn_rnet.yaml", "-o", tmp_path / "b.engine") == 1
    assert "ONNX parser failed" in capsys.readouterr().err


def test_onnx_without_a_card_is_a_usage_error(fake, tmp_path, capsys):
    lonely = write_qdq_model(tmp_path / "lonely.onnx")
    assert cli(lonely, "-o", tmp_path / "l.engine") == 2
    assert "--card" in capsys.readouterr().err


def test_without_tensorrt_exits_1_saying_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    assert cli(RNET, "-o", tmp_path / "r.engine") == 1
    error = capsys.readouterr().err
    assert "python3-libnvinfer" in error and "--system-site-packages" in error


@pytest.mark.parametrize("args", [
    (), (RNET, "--all"), (RNET, "--max-batch", 4, "--opt-batch", 8), (RNET, "--calibrator", "."),
    (MODELS / "mtcnn_pnet.onnx", "--frame-size", "640x480", "--pnet-canvas", "146x430"),
    (RNET, "--frame-size", "640by480"), (RNET, "--max-batch", 0), (REPO / "nothing.onnx",),
    ("--all", "--frame-size", "640x480", "--models", REPO / "tools"), (RNET, "--precision", "face=int8"),
    (RNET, "--precision", "int4"),
])
def test_usage_errors_exit_2(fake, args):
    assert cli(*args) == 2
    assert fake.calls("build_serialized_network") == []


def test_help_has_examples(capsys):
    assert cli("--help") == 0
    assert "examples:" in capsys.readouterr().out


def test_rebuild_command_reproduces_the_options(fake, tmp_path, monkeypatch):
    engine = tmp_path / "onet.engine"
    assert cli(MODELS / "mtcnn_onet.onnx", "-o", engine, "--max-batch", 32, "--dla-core", 0,
               "--workspace", 512, "--timing-cache", tmp_path / "t.cache") == 0
    metadata = read_metadata(engine)
    command = shlex.split(rebuild_command(metadata, engine))
    assert command[:2] == ["python", "tools/build_engine.py"]
    monkeypatch.chdir(tmp_path)  # paths in the command are absolute
    (job,) = build_engine.plan_jobs(build_engine.make_parser().parse_args(command[2:]))
    assert (job.options, job.profiles, job.output, job.onnx) == (metadata.options, metadata.profiles, engine,
                                                                 MODELS / "mtcnn_onet.onnx")


# --- the runner ---------------------------------------------------------------------------------

def test_run_returns_outputs_by_name_with_their_shapes(fake, rnet_engine):
    x = batch(3)
    with TensorRTRunner(rnet_engine) as runner:
        assert runner.input_shapes == {"input": (None, *RNET_INPUT)}
        assert runner.output_shapes == {"reg": (None, 4), "prob": (None, 2)}
        out = runner.run({"input": x})
    assert sorted(out) == ["prob", "reg"]
    assert out["reg"].shape == (3, 4) and out["prob"].shape == (3, 2)
    row_means = x.reshape(3, -1).mean(axis=1)  # what the fake engine computes: output k = mean + k
    np.testing.assert_allclose(out["reg"], np.repeat(row_means[:, None], 4, axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["prob"], np.repeat(row_means[:, None] + 1, 2, axis=1), rtol=1e-5)


def test_outputs_outlive_the_next_run(fake, rnet_engine):
    with TensorRTRunner(rnet_engine) as runner:
        first = runner.run({"input": batch(3, seed=1)})
        kept = {name: array.copy() for name, array in first.items()}
        runner.run({"input": batch(3, seed=2)})
    for name in kept:
        np.testing.assert_array_equal(first[name], kept[name])


def test_run_sets_shapes_and_copies_in_stream_order_inside_the_runners_context(fake, rnet_engine):
    runner = TensorRTRunner(rnet_engine)
    addresses = {name: address for name, address in fake.calls("set_tensor_address")}
    start = len(fake.log)
    runner.run({"input": batch(3)})
    run_log = fake.log[start:]
    names = [entry[0] for entry in run_log]
    assert names[0] == "push" and run_log[0][1] is run_log[-1][1] and names[-1] == "pop"
    assert ("set_input_shape", "input", (3, *RNET_INPUT)) in run_log
    assert [e[1:] for e in run_log if e[0] == "htod"] == [(addresses["input"], 3 * 24 * 24 * 3 * 4)]
    assert [e[1:] for e in run_log if e[0] == "dtoh"] == [(addresses["reg"], 3 * 4 * 4), (addresses["prob"], 3 * 2 * 4)]
    assert names.index("htod") < names.index("execute_async_v3") < names.index("dtoh") < names.index("synchronize")
    assert fake.cuda.Context.get_current() is None
    runner.close()


def test_buffers_start_at_the_opt_batch_and_grow_for_a_larger_one(fake, rnet_engine):
    runner = TensorRTRunner(rnet_engine)
    opt_sizes = sorted(size for size, _ in fake.calls("mem_alloc"))
    assert opt_sizes == sorted([8 * 3 * 24 * 24 * 4, 8 * 4 * 4, 8 * 2 * 4])
    runner.run({"input": batch(5)})
    assert len(fake.calls("mem_alloc")) == 3  # 5 rows fit the buffers for 8

    old_addresses = {address for _, address in fake.calls("mem_alloc")}
    x = batch(100, seed=1)
    out = runner.run({"input": x})
    grown = fake.calls("mem_alloc")[3:]
    assert sorted(size for size, _ in grown) == sorted([100 * 3 * 24 * 24 * 4, 100 * 4 * 4, 100 * 2 * 4])
    assert {address for (address,) in fake.calls("free")} == old_addresses
    new_addresses = {address for _, address in grown}
    assert {address for _, address in fake.calls("set_tensor_address")[-3:]} == new_addresses
    np.testing.assert_allclose(out["reg"][:, 0], x.reshape(100, -1).mean(axis=1), rtol=1e-5)

    runner.run({"input": batch(7)})
    assert len(fake.calls("mem_alloc")) == 6
    runner.close()


@pytest.mark.parametrize("inputs, message", [
    ({"input": batch(129)}, "outside the engine's optimisation profile (min (1, 3, 24, 24), max (128, 3, 24, 24))"),
    ({"input": np.zeros((2, 3, 48, 48), np.float32)}, "outside the engine's optimisation profile"),
    ({"image": batch(2)}, "expected inputs ['input']"),
    ({"input": batch(2), "extra": batch(2)}, "expected inputs ['input']"),
])
def test_run_refuses_inputs_outside_the_engine(fake, rnet_engine, inputs, message):
    with TensorRTRunner(rnet_engine) as runner:
        start = len(fake.log)
        with pytest.raises(ModelError) as error:
            runner.run(inputs)
        assert message in str(error.value)
        assert fake.log[start:] == []  # refused before any GPU work


def test_close_releases_everything_once(fake, rnet_engine):
    start = len(fake.log)
    runner = TensorRTRunner(rnet_engine)
    ((own_context,),) = fake.calls("make_context", since=start)
    runner.run({"input": batch(2)})
    runner.close()
    allocated = {address for _, address in fake.calls("mem_alloc", since=start)}
    assert {address for (address,) in fake.calls("free", since=start)} == allocated
    assert len(fake.calls("free_host", since=start)) == 3
    assert fake.names()[-2:] == ["pop", "detach"] and fake.log[-1][1] is own_context
    assert fake.cuda.Context.get_current() is None
    entries = len(fake.log)
    runner.close()
    assert len(fake.log) == entries
    with pytest.raises(ModelError, match="closed"):
        runner.run({"input": batch(1)})


def test_runners_and_other_contexts_share_a_thread(fake, rnet_engine):
    foreign = fake.cuda.Device(0).make_context()  # another library's context, current on this thread
    first, second = TensorRTRunner(rnet_engine), TensorRTRunner(rnet_engine)
    assert fake.cuda.Context.get_current() is foreign
    first.run({"input": batch(2)})
    second.run({"input": batch(3)})
    assert fake.cuda.Context.get_current() is foreign
    first.close()
    assert second.run({"input": batch(4)})["reg"].shape == (4, 4)
    second.close()
    assert fake.cuda._stack() == [foreign]


def test_run_on_another_thread_is_refused(fake, rnet_engine):
    errors = []
    with TensorRTRunner(rnet_engine) as runner:
        def use():
            try:
                runner.run({"input": batch(1)})
            except ModelError as error:
                errors.append(str(error))

        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "same inference thread" in errors[0]


def test_open_runner_dispatches_engines_to_tensorrt(fake, rnet_engine):
    with open_runner(rnet_engine) as runner:
        assert isinstance(runner, TensorRTRunner)
        assert runner.metadata.role == "rnet"


def test_other_tensorrt_version_is_refused_with_the_rebuild_command(rnet_engine, monkeypatch):
    here = fakes.install(monkeypatch, tensorrt_version="10.4.1")
    with pytest.raises(EngineMismatchError) as error:
        TensorRTRunner(rnet_engine)
    message = str(error.value)
    assert "engine built with 10.3.0, this device runs 10.4.1" in message
    assert (f"python tools/build_engine.py {RNET} --output {rnet_engine} --precision fp16 --workspace 256 "
            "--max-batch 128 --opt-batch 8") in message
    assert here.calls("make_context") == []  # refused before touching the GPU


def test_other_gpu_is_refused_naming_both(rnet_engine, monkeypatch):
    fakes.install(monkeypatch, gpu_name="NVIDIA GeForce RTX 3060", compute_capability=(8, 6))
    with pytest.raises(EngineMismatchError) as error:
        TensorRTRunner(rnet_engine)
    message = str(error.value)
    assert "Orin (fake) (compute capability 8.7)" in message
    assert "NVIDIA GeForce RTX 3060 (compute capability 8.6)" in message
    assert "python tools/build_engine.py" in message


def test_engine_without_sidecar_is_refused(fake, rnet_engine):
    sidecar_path(rnet_engine).unlink()
    start = len(fake.log)
    with pytest.raises(EngineMismatchError) as error:
        TensorRTRunner(rnet_engine)
    assert "no metadata sidecar" in str(error.value)
    assert f"python tools/build_engine.py --all --out-dir {rnet_engine.parent}" in str(error.value)
    assert fake.calls("make_context", since=start) == []


def test_sidecar_of_another_engine_is_refused(fake, rnet_engine):
    rnet_engine.write_bytes(rnet_engine.read_bytes() + b" ")
    with pytest.raises(EngineMismatchError, match="describes another engine file"):
        TensorRTRunner(rnet_engine)


def test_engine_tensorrt_cannot_deserialize_releases_the_context(fake, rnet_engine):
    rnet_engine.write_bytes(b"not a plan")
    raw = json.loads(sidecar_path(rnet_engine).read_text())
    raw["engine"]["sha256"] = hashlib.sha256(b"not a plan").hexdigest()
    sidecar_path(rnet_engine).write_text(json.dumps(raw))
    start = len(fake.log)
    with pytest.raises(ModelError, match="could not deserialize"):
        TensorRTRunner(rnet_engine)
    ((context,),) = fake.calls("make_context", since=start)
    assert fake.calls("detach", since=start) == [(context,)]
    assert fake.cuda.Context.get_current() is None


@pytest.mark.parametrize("edit, key", [(lambda raw: raw.pop("tensorrt"), "tensorrt"),
                                       (lambda raw: raw.update(precision="fp8"), "precision"),
                                       (lambda raw: raw["build"].update(profiles={"input": [1]}), "profiles")])
def test_invalid_sidecar_is_refused_naming_the_key(fake, rnet_engine, edit, key):
    raw = json.loads(sidecar_path(rnet_engine).read_text())
    edit(raw)
    sidecar_path(rnet_engine).write_text(json.dumps(raw))
    with pytest.raises(EngineMismatchError, match=f"sidecar is invalid.*{key}"):
        TensorRTRunner(rnet_engine)


def test_runner_without_tensorrt_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ModelError, match="python3-libnvinfer"):
        TensorRTRunner(tmp_path / "any.engine")


def test_mismatch_error_is_a_model_error():
    assert issubclass(EngineMismatchError, ModelError)


# --- real TensorRT ------------------------------------------------------------------------------

def test_real_fp32_rnet_engine_matches_onnx_runtime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: JetPack's python3-libnvinfer, "
                                           "in a venv made with --system-site-packages")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed: pip install -e '.[jetson]'")
    engine = tmp_path / "rnet.fp32.engine"
    assert cli(RNET, "-o", engine, "--precision", "fp32", "--max-batch", 32, "--opt-batch", 8) == 0
    with OnnxRunner(RNET) as reference, TensorRTRunner(engine) as runner:
        for rows in (1, 7, 32):
            x = batch(rows, seed=rows)
            expected, actual = reference.run({"input": x}), runner.run({"input": x})
            for name in ("reg", "prob"):
                np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, err_msg=f"{name}, {rows} rows")
