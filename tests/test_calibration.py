"""INT8 calibration: the calibration-set builder, the Q/DQ quantiser, the FP16 simulation and
TensorRT's entropy calibrator.

The builder and the quantiser run on real frames (a few of the demo clip and
skimage's astronaut); the calibrator runs against the fakes in tests/fakes.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from skimage import data

from calibration import cli
from calibration.batches import CACHE_FILE, BatchWriter, CalibrationSetError, iter_batches, read_manifest
from calibration.dataset import BuildOptions, build, set_name
from calibration.fp16 import simulate_fp16, write_fp16_simulation
from calibration.frames import Selection, iter_frames, letterbox, source_files
from calibration.quantize import QuantizeOptions, float_node_names, quantize_model
from engines.align import align
from engines.embedder import Embedder
from engines.liveness import LivenessChecker, crop_box
from engines.model_card import cards_of, find_card, load_card
from engines.mtcnn import MtcnnDetector, pack_pyramid, pyramid_layout
from engines.onnx_runner import OnnxRunner
from engines.runner import Runner
from tests import fakes
from tests.conftest import DEMO_CLIP, MODELS, REPO

FRAME_SIZE = (640, 480)
CLIP_SELECTION = Selection(every=60, offset=30, limit=5)  # the photo, then clip frames 30, 90, 150, 210
UNCAPPED = {"pnet": None, "rnet": None, "onet": None, "embedder": None, "liveness": None}
LIVENESS = cards_of(MODELS, "liveness")


class Recorder(Runner):
    """Runs a real ONNX model and keeps every input it was given."""

    def __init__(self, path: Path) -> None:
        self.runner = OnnxRunner(path)
        self.inputs: list[np.ndarray] = []

    input_shapes = property(lambda self: self.runner.input_shapes)
    output_shapes = property(lambda self: self.runner.output_shapes)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (tensor,) = inputs.values()
        self.inputs.append(tensor.copy())
        return self.runner.run(inputs)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    if not DEMO_CLIP.exists():
        pytest.skip(f"{DEMO_CLIP} is absent")
    photo = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return [photo, DEMO_CLIP]


def options(**changes) -> BuildOptions:
    return BuildOptions(**{"frame_size": FRAME_SIZE, "selection": CLIP_SELECTION, **changes})


@pytest.fixture(scope="module")
def calibration_set(sources, tmp_path_factory) -> Path:
    """Every net input of 5 frames, uncapped, so it can be compared with the detector's own."""
    out = tmp_path_factory.mktemp("calibration")
    build(sources, out, options(max_per_frame=UNCAPPED))
    return out


def all_samples(folder: Path) -> np.ndarray:
    return np.concatenate(list(iter_batches(folder)))[:read_manifest(folder)["count"]]


def fitted_frames(sources: list[Path]) -> list[np.ndarray]:
    return [frame.rgb for frame in iter_frames(source_files(sources), FRAME_SIZE, CLIP_SELECTION)]


# --- the builder --------------------------------------------------------------------------------

def test_batches_hold_exactly_what_the_fp32_nets_see(sources, calibration_set):
    recorders = {role: Recorder(find_card(MODELS, role).model_path) for role in ("pnet", "rnet", "onet")}
    embedder_recorder = Recorder(find_card(MODELS, "embedder").model_path)
    card = find_card(MODELS, "embedder")
    with MtcnnDetector(MODELS, runners=dict(recorders)) as detector, Embedder(card, embedder_recorder) as embedder:
        for rgb in fitted_frames(sources):
            faces = detector.detect(rgb)
            embedder.embed([align(rgb, face.landmarks, card.alignment)[0] for face in faces])
    for role, recorder in [*recorders.items(), ("embedder", embedder_recorder)]:
        seen = np.concatenate([tensor for tensor in recorder.inputs if len(tensor)])
        stored = all_samples(calibration_set / role)
        assert stored.dtype == seen.dtype == np.float32
        np.testing.assert_array_equal(stored, seen, err_msg=role)


def test_pnet_batches_are_the_packed_canvas_of_the_configured_frame_size(sources, calibration_set):
    layout = pyramid_layout(FRAME_SIZE[1], FRAME_SIZE[0])
    card = find_card(MODELS, "pnet")
    expected = np.concatenate([card.preprocess(pack_pyramid(rgb, layout)[None]) for rgb in fitted_frames(sources)])
    np.testing.assert_array_equal(all_samples(calibration_set / "pnet"), expected)
    assert read_manifest(calibration_set / "pnet")["input"]["shape"] == [1, 3, *layout.canvas_size]


@pytest.mark.parametrize("role", ["rnet", "onet", "embedder"])
def test_crops_and_chips_are_normalised_nchw_by_the_card(calibration_set, role):
    samples = all_samples(calibration_set / role)
    card = find_card(MODELS, role)
    width, height = card.alignment.chip_size if card.alignment is not None else card.input_size
    assert samples.shape[1:] == (3, height, width)
    # Pixels 0 and 255 map to the card's (value - mean) * scale; nothing may fall outside.
    low, high = (0 - card.mean.max()) * card.scale, (255 - card.mean.min()) * card.scale
    assert low - 1e-6 <= samples.min() and samples.max() <= high + 1e-6
    assert samples.std() > 0.1  # real images, not padding


def test_manifest_says_what_the_batches_are(sources, calibration_set):
    for role, batch_size in [("pnet", 1), ("rnet", 64), ("onet", 16), ("embedder", 4)]:
        manifest = read_manifest(calibration_set / role)
        card = find_card(MODELS, role)
        assert (manifest["format_version"], manifest["role"], manifest["batch_size"]) == (1, role, batch_size)
        assert manifest["model"] == {"card_id": card.id, "onnx": card.file,
                                     "onnx_sha256": hashlib.sha256(card.model_path.read_bytes()).hexdigest()}
        assert manifest["input"]["name"] == card.input_name and manifest["input"]["shape"][0] == batch_size
        assert manifest["normalisation"]["mean"] == pytest.approx(card.mean.tolist())
        assert manifest["normalisation"]["scale"] == card.scale
        assert [s["path"] for s in manifest["sources"]] == [str(p) for p in sources]
        assert manifest["count"] == sum(samples for _, _, samples in manifest["frames"]) > 0
        assert len(manifest["batches"]) * batch_size == manifest["count"] + manifest["padded"]
        assert manifest["padded"] < batch_size
        assert manifest["frames_read"] == 5
        assert manifest["options"]["fit"] == "letterbox" and manifest["options"]["frame_size"] == [640, 480]
    frames = read_manifest(calibration_set / "pnet")["frames"]
    assert [frame for _, frame, _ in frames] == [0, 30, 90, 150, 210]


def test_liveness_batches_are_the_checkers_own_crops_one_folder_per_card(sources, calibration_set):
    recorders = [Recorder(card.model_path) for card in LIVENESS]
    with MtcnnDetector(MODELS) as detector, LivenessChecker(LIVENESS, recorders) as checker:
        for rgb in fitted_frames(sources):
            faces = detector.detect(rgb)
            if faces:
                checker.score(rgb, faces)
    assert sorted(path.name for path in (calibration_set / "liveness").iterdir()) == sorted(c.id for c in LIVENESS)
    for card, recorder in zip(LIVENESS, recorders):
        stored = all_samples(calibration_set / set_name(card))
        np.testing.assert_array_equal(stored, np.concatenate(recorder.inputs), err_msg=card.id)
        manifest = read_manifest(calibration_set / set_name(card))
        assert (manifest["role"], manifest["model"]["card_id"], manifest["batch_size"]) == ("liveness", card.id, 4)
        assert manifest["input"]["shape"] == [4, 3, 80, 80] and manifest["normalisation"]["channel_order"] == "BGR"
        assert manifest["count"] == sum(samples for _, _, samples in manifest["frames"]) > 0


def test_liveness_crops_are_the_scaled_box_in_bgr_0_to_255(sources, calibration_set):
    rgb = next(frame for frame in fitted_frames(sources))  # the astronaut: one face
    with MtcnnDetector(MODELS) as detector:
        [face] = detector.detect(rgb)
    for card in LIVENESS:
        first = all_samples(calibration_set / set_name(card))[0]
        left, top, right, bottom = crop_box(face.box, rgb.shape[1], rgb.shape[0], card.liveness.crop_scale)
        crop = cv2.resize(rgb[top:bottom + 1, left:right + 1], (80, 80))
        assert first.shape == (3, 80, 80)
        # channel 0 is blue: the frame's RGB crop reversed, NCHW, the raw 0..255 values (no normalisation)
        np.testing.assert_array_equal(first, crop[..., ::-1].transpose(2, 0, 1).astype(np.float32), err_msg=card.id)
        assert not np.array_equal(first[0], first[2])
        samples = all_samples(calibration_set / set_name(card))
        assert 0 <= samples.min() and samples.max() <= 255 and samples.max() > 200
        assert (samples == samples.round()).all()


def test_the_same_input_gives_the_same_files(sources, calibration_set, tmp_path):
    build(sources, tmp_path, options(max_per_frame=UNCAPPED))
    for path in sorted(calibration_set.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / path.relative_to(calibration_set)).read_bytes(), path


def test_max_per_frame_keeps_evenly_spaced_candidates(sources, calibration_set, tmp_path):
    build([DEMO_CLIP], tmp_path, options(roles=("rnet",), selection=Selection(60, 30, 1), max_per_frame={"rnet": 16}))
    capped = all_samples(tmp_path / "rnet")
    [(_, _, photo_count), (_, _, uncapped_count), *_] = read_manifest(calibration_set / "rnet")["frames"]
    uncapped = all_samples(calibration_set / "rnet")[photo_count:photo_count + uncapped_count]
    assert uncapped_count > 16 and len(capped) == 16
    np.testing.assert_array_equal(capped, uncapped[np.linspace(0, uncapped_count - 1, 16).round().astype(int)])


def test_last_batch_is_padded_by_repeating_its_own_samples(tmp_path):
    writer = BatchWriter(tmp_path, batch_size=4)
    samples = np.arange(10, dtype=np.float32)[:, None]
    writer.add(samples[:3])
    writer.add(samples[3:])
    writer.finish()
    files = sorted(tmp_path.glob("batch_*.npy"))
    assert [f["file"] for f in writer.files] == [f.name for f in files]
    assert (writer.count, writer.padded) == (10, 2)
    np.testing.assert_array_equal(np.load(files[2])[:, 0], [8, 9, 8, 9])


def test_a_rebuilt_folder_drops_the_old_batches_and_tensorrt_cache(tmp_path):
    (tmp_path / "batch_00007.npy").write_bytes(b"old")
    (tmp_path / CACHE_FILE).write_bytes(b"old scales")
    BatchWriter(tmp_path, batch_size=2)
    assert not list(tmp_path.iterdir())


def test_a_batch_that_does_not_match_its_manifest_is_refused(sources, tmp_path):
    build(sources[:1], tmp_path, options(roles=("embedder",)))
    np.save(tmp_path / "embedder" / "batch_00000.npy", np.zeros((4, 3, 150, 150), np.float32))
    with pytest.raises(CalibrationSetError, match="sha256"):
        list(iter_batches(tmp_path / "embedder"))


def test_letterbox_keeps_the_aspect_and_centres_on_black():
    image = np.full((100, 200, 3), 200, np.uint8)
    fitted = letterbox(image, (640, 480))  # scaled 3.2x to 640x320, 80 px bars above and below
    assert fitted.shape == (480, 640, 3)
    assert (fitted[:80] == 0).all() and (fitted[400:] == 0).all() and (fitted[80:400] == 200).all()
    assert letterbox(image, (200, 100)) is image


def test_video_frames_are_selected_by_index_modulo():
    frames = list(iter_frames([DEMO_CLIP], FRAME_SIZE, Selection(every=3, offset=1, limit=3)))
    assert [f.index for f in frames] == [1, 4, 7]
    capture = cv2.VideoCapture(str(DEMO_CLIP))
    for _ in range(4):
        capture.grab()
    ok, bgr = capture.read()  # frame 4
    capture.release()
    np.testing.assert_array_equal(frames[1].rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_nothing_to_calibrate_on_is_an_error(tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((480, 640, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="no rnet samples"):
        build([blank], tmp_path / "out", options())


# --- FP16 simulation ----------------------------------------------------------------------------

def test_fp16_simulation_rounds_what_it_computes():
    """1 + 1e-4 is 1.0001 in FP32 and 1 in FP16 (whose step at 1 is 2**-10)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "small"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("small", TensorProto.FLOAT, [1], [1e-4])])
    # IR 10: what the oldest ONNX Runtime the constraints pin (1.23, Python 3.10) reads; newest onnx writes 14.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    one = {"x": np.ones(1, np.float32)}
    exact = onnxruntime.InferenceSession(model.SerializeToString()).run(None, one)[0]
    half = onnxruntime.InferenceSession(simulate_fp16(model).SerializeToString()).run(None, one)[0]
    assert exact[0] == np.float32(1.0001) and half[0] == 1.0
    assert [n.op_type for n in model.graph.node] == ["Add"]  # the source is left alone


def test_fp16_simulation_of_rnet_stays_close_but_not_equal_on_real_crops(calibration_set, tmp_path):
    card = find_card(MODELS, "rnet")
    simulated = write_fp16_simulation(card.model_path, tmp_path)
    model = onnx.load(str(simulated))
    for tensor in model.graph.initializer:
        weights = numpy_helper.to_array(tensor)
        assert np.array_equal(weights, weights.astype(np.float16).astype(np.float32)), tensor.name
    crops = all_samples(calibration_set / "rnet")
    fp32 = OnnxRunner(card.model_path).run({"input": crops})
    fp16 = OnnxRunner(simulated).run({"input": crops})
    difference = np.abs(fp32["prob"] - fp16["prob"])
    assert 0 < difference.max() < 5e-3


# --- the quantiser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized(calibration_set, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("int8")
    models = {role: quantize_model(find_card(MODELS, role).path, calibration_set / role, out).model
              for role in ("pnet", "rnet", "onet", "embedder")}
    for card in LIVENESS:
        models[set_name(card)] = quantize_model(card.path, calibration_set / set_name(card), out).model
    return models


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("role", ["pnet", "rnet", "embedder"])
def test_quantised_model_is_symmetric_int8_qdq_with_per_channel_weights(quantized, role):
    model = onnx.load(str(quantized[role]))
    values = initializers(model)
    nodes = model.graph.node
    quantize = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dequantize = {n.output[0]: n for n in nodes if n.op_type == "DequantizeLinear"}
    assert quantize and dequantize
    for node in [*quantize, *dequantize.values()]:
        zero_point = values[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    source = onnx.load(str(find_card(MODELS, role).model_path))
    heads = float_node_names(source, QuantizeOptions())
    for node in (n for n in nodes if n.op_type in ("Conv", "Gemm")):
        weight = dequantize.get(node.input[1])
        if node.name in heads:
            assert weight is None, f"{node.name} is an output layer, kept in float"
            continue
        assert weight is not None and node.input[0] in dequantize, f"{node.name}: input and weight through Q/DQ"
        axis = {a.name: a.i for a in weight.attribute}.get("axis", 1)
        channels = values[source_weight(source, node.name)].shape[0]
        assert axis == 0 and values[weight.input[1]].shape == (channels,), node.name


def source_weight(model: onnx.ModelProto, node_name: str) -> str:
    return next(n.input[1] for n in model.graph.node if n.name == node_name)


@pytest.mark.parametrize("role", ["pnet", "rnet", "embedder"])
def test_quantised_model_keeps_opset_and_dynamic_input(quantized, role):
    source = onnx.load(str(find_card(MODELS, role).model_path))
    model = onnx.load(str(quantized[role]))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.graph.input[0].type == source.graph.input[0].type  # P-Net: batch, height and width stay dynamic


def test_quantised_liveness_nets_load_as_the_door_loads_them_and_keep_a_dynamic_batch(quantized, calibration_set):
    folder = quantized["rnet"].parent
    for card in LIVENESS:
        model = onnx.load(str(quantized[set_name(card)]))
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        assert model.graph.input[0].type == onnx.load(str(card.model_path)).graph.input[0].type  # batch dynamic
    with LivenessChecker.from_models(folder) as int8, LivenessChecker(LIVENESS) as fp32:
        assert sorted(c.id for c in int8.cards) == sorted(c.id for c in LIVENESS)
        assert all(c.model_path.parent == folder and ".qdq." in c.file for c in int8.cards)
        assert int8.threshold == fp32.threshold
        rgb = data.astronaut()
        with MtcnnDetector(MODELS) as detector:
            [face] = detector.detect(rgb)
        for count in (1, 3):  # batches of other sizes than the calibration batch (4)
            scores = int8.score(rgb, [face] * count)
            assert scores.shape == (count,) and np.all(scores == scores[0])
            assert abs(float(scores[0]) - float(fp32.score(rgb, [face])[0])) < 0.1
    for card in LIVENESS:  # each net on its calibration crops, live class
        crops = all_samples(calibration_set / set_name(card))
        expected = OnnxRunner(card.model_path).run({"input": crops})["prob"][:, 1]
        got = OnnxRunner(quantized[set_name(card)]).run({"input": crops})["prob"][:, 1]
        assert np.abs(expected - got).mean() < 0.05, card.id


def test_quantised_rnet_stays_close_to_fp32_on_real_crops(quantized, calibration_set):
    crops = all_samples(calibration_set / "rnet")
    fp32 = OnnxRunner(find_card(MODELS, "rnet").model_path).run({"input": crops})
    int8 = OnnxRunner(quantized["rnet"]).run({"input": crops})
    # Measured on held-out clip frames: mean 0.012, max 0.23 (tools/int8_quality.py measures the detections).
    assert np.abs(fp32["prob"][:, 1] - int8["prob"][:, 1]).mean() < 0.03
    assert np.abs(fp32["reg"] - int8["reg"]).mean() < 0.02


def test_quantised_pnet_runs_on_other_canvas_sizes(quantized):
    canvas = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 100)).astype(np.float32)
    out = OnnxRunner(quantized["pnet"]).run({"input": canvas})
    assert out["prob"].shape == (1, 2, 27, 45)


def test_quantised_embedder_keeps_the_embedding_direction_on_real_chips(quantized, calibration_set):
    chips = all_samples(calibration_set / "embedder")
    card = find_card(MODELS, "embedder")
    output = card.outputs["embedding"]
    fp32 = OnnxRunner(card.model_path).run({card.input_name: chips})[output]
    int8 = OnnxRunner(quantized["embedder"]).run({card.input_name: chips})[output]
    cosine = np.sum(fp32 * int8, axis=1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    # On the calibration chips (held-out figures come from tools/int8_quality.py): the INT8 target is a median
    # of 0.99; SFace's worst chip here is 0.989, dlib's 0.995.
    assert np.median(cosine) >= 0.99 and cosine.min() > 0.98


def test_quantiser_writes_a_card_and_a_sidecar_naming_its_calibration(quantized, calibration_set):
    model = quantized["rnet"]
    card = load_card(model.with_suffix(".yaml"))
    assert card.model_path == model and card.id == find_card(MODELS, "rnet").id
    sidecar = json.loads(model.with_suffix(".json").read_text())
    manifest = calibration_set / "rnet" / "manifest.json"
    assert sidecar["calibration"]["manifest"] == str(manifest.resolve())
    assert sidecar["calibration"]["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert sidecar["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert sidecar["quantization"]["float_nodes"] == ["dense5_1", "reg"]


def test_a_folder_of_quantised_models_loads_like_engines_models(quantized):
    with MtcnnDetector(quantized["rnet"].parent) as detector:
        [face] = detector.detect(data.astronaut())
    np.testing.assert_allclose(face.box, (180, 61, 268, 174), atol=6)
    with Embedder.from_models(quantized["embedder"].parent) as embedder:
        width, height = embedder.card.alignment.chip_size
        assert embedder.embed(np.zeros((1, height, width, 3), np.uint8)).shape == (1, 128)


def test_batches_of_another_model_are_refused(calibration_set, tmp_path):
    with pytest.raises(CalibrationSetError, match="recorded for mtcnn_rnet.onnx"):
        quantize_model(find_card(MODELS, "onet").path, calibration_set / "rnet", tmp_path)


def test_float_nodes_are_the_output_heads_and_optionally_the_first_layers():
    rnet = onnx.load(str(find_card(MODELS, "rnet").model_path))
    assert float_node_names(rnet, QuantizeOptions()) == ["dense5_1", "reg"]
    assert float_node_names(rnet, QuantizeOptions(float_heads=False, float_first=True)) == ["conv1"]
    with pytest.raises(ValueError, match="not in the model"):
        float_node_names(rnet, QuantizeOptions(exclude=("nonesuch",)))


# --- the TensorRT calibrator --------------------------------------------------------------------

@pytest.fixture
def fake(monkeypatch):
    return fakes.install(monkeypatch)


@pytest.fixture
def context(fake):
    """A current CUDA context, as build_engine.py has while TensorRT calibrates."""
    context = fake.cuda.Device(0).make_context()
    yield context
    context.pop()


def test_calibrator_module_imports_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now raises ImportError
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    module = importlib.reload(importlib.import_module("calibration.trt_calibrator"))
    with pytest.raises(ImportError):
        module.EntropyCalibrator(Path("."))


def test_calibrator_copies_each_batch_to_the_device_then_ends(fake, context, calibration_set):
    from calibration.trt_calibrator import EntropyCalibrator

    folder = calibration_set / "onet"
    calibrator = EntropyCalibrator(folder)
    assert isinstance(calibrator, fake.trt.IInt8EntropyCalibrator2)
    assert calibrator.get_batch_size() == 16
    for expected in iter_batches(folder):
        [address] = calibrator.get_batch(["input"])
        device = fake.cuda._allocation_at(address, expected.nbytes)
        np.testing.assert_array_equal(np.frombuffer(bytes(device.data), np.float32).reshape(expected.shape), expected)
    assert calibrator.get_batch(["input"]) is None
    assert len(fake.calls("mem_alloc")) == 1 and len(fake.calls("free")) == 1  # one buffer, released at the end
    assert len(fake.calls("htod")) == len(read_manifest(folder)["batches"])


def test_calibrator_refuses_a_network_with_other_inputs(fake, context, calibration_set):
    from calibration.trt_calibrator import EntropyCalibrator

    with pytest.raises(ValueError, match="batches are for input 'input'"):
        EntropyCalibrator(calibration_set / "onet").get_batch(["images"])


def test_calibration_cache_round_trips_through_its_file(fake, context, calibration_set, tmp_path):
    from calibration.trt_calibrator import EntropyCalibrator

    cache, table = tmp_path / "onet.cache", b"TRT-1003-EntropyCalibration2\ninput: 3c010a14\n"
    assert EntropyCalibrator(calibration_set / "onet", cache).read_calibration_cache() is None
    EntropyCalibrator(calibration_set / "onet", cache).write_calibration_cache(memoryview(table))  # TensorRT's buffer
    assert EntropyCalibrator(calibration_set / "onet", cache).read_calibration_cache() == table
    assert EntropyCalibrator(calibration_set / "onet").cache_file == calibration_set / "onet" / CACHE_FILE


def test_build_engine_calibrates_on_every_batch(fake, calibration_set, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("facegate_build_engine", REPO / "tools" / "build_engine.py")
    build_engine = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, build_engine)  # dataclasses look their module up there
    spec.loader.exec_module(build_engine)
    folder = calibration_set / "rnet"
    engine = tmp_path / "rnet.int8.engine"
    status = build_engine.main([str(MODELS / "mtcnn_rnet.onnx"), "--precision", "int8", "--calibrator", str(folder),
                                "-o", str(engine)])
    assert status == 0 and engine.is_file()
    assert fake.calls("calibrated") == [(len(read_manifest(folder)["batches"]),)]


# --- the command line ---------------------------------------------------------------------------

def test_cli_builds_and_quantises(tmp_path, capsys):
    assert cli.main(["build", str(DEMO_CLIP), "--every", "60", "--offset", "30", "--max-frames", "2",
                     "--roles", "rnet", "--batch-size", "rnet=8", "-o", str(tmp_path / "cal"), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["roles"]["rnet"]["shape"] == [8, 3, 24, 24]
    assert cli.main(["quantize", str(tmp_path / "cal"), "--roles", "rnet", "--method", "minmax",
                     "-o", str(tmp_path / "int8"), "--json"]) == 0
    assert Path(json.loads(capsys.readouterr().out)["roles"]["rnet"]["model"]).is_file()


def test_cli_builds_and_quantises_every_liveness_net(tmp_path, capsys):
    assert cli.main(["build", str(DEMO_CLIP), "--every", "60", "--offset", "30", "--max-frames", "2",
                     "--roles", "liveness", "-o", str(tmp_path / "cal"), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)["roles"]
    assert sorted(built) == sorted(set_name(card) for card in LIVENESS)
    assert all(entry["shape"] == [4, 3, 80, 80] for entry in built.values())
    assert cli.main(["quantize", str(tmp_path / "cal"), "--roles", "liveness", "-o", str(tmp_path / "int8"),
                     "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["roles"]
    assert sorted(written) == sorted(built)
    assert sorted(c.id for c in cards_of(tmp_path / "int8", "liveness")) == sorted(c.id for c in LIVENESS)


def test_cli_quantises_only_the_embedder_unless_told(tmp_path, capsys):
    assert cli.main(["quantize", str(tmp_path / "cal"), "-o", str(tmp_path / "int8")]) == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "cal" / "embedder") in error and "rnet" not in error


def test_cli_method_choices_match_the_quantiser():
    from calibration import quantize

    assert (cli.METHODS, cli.DEFAULT_METHOD) == (tuple(sorted(quantize.METHODS)), quantize.DEFAULT_METHOD)


@pytest.mark.parametrize("argv", [["build", "nonesuch.mp4", "-o", "x"], ["build", str(DEMO_CLIP), "-o", "x",
                                  "--every", "3", "--offset", "3"], ["quantize", "x", "--roles", "face"]])
def test_cli_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
