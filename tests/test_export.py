"""Rerunning the converter reproduces the committed models byte for byte; the exported SFace equals the published
one; the MiniFASNet liveness nets equal a re-implementation of upstream's PyTorch modules."""
from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from engines import manifest
from engines.align import align
from engines.images import load_image
from engines.model_card import load_card
from tests.conftest import MODELS, REPO, SHARED

CONVERTER_MODULES = ("torch", "onnx", "dlib", "facenet_pytorch", "face_recognition_models", "skimage")
missing = [m for m in CONVERTER_MODULES if importlib.util.find_spec(m) is None]
SFACE_UPSTREAM = SHARED / "models" / "sface" / "face_recognition_sface_2021dec.onnx"
SFACE = "sface_2021dec.onnx"
needs_sface = pytest.mark.skipif(not SFACE_UPSTREAM.exists(),
                                 reason=f"{SFACE_UPSTREAM} is absent: the published SFace file is only on "
                                        "development machines")


def export(out, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "export_models.py"), "--out", str(out), *options],
                          capture_output=True, text=True)


def printed_rows(stdout: str) -> dict[str, tuple[int, float, str]]:
    """The converter's closing table: file -> (bytes, max abs error, sha256)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    return {name: (int(size), float(error), digest) for name, size, error, digest in map(str.split, lines[start + 1:])}


@pytest.mark.skipif(bool(missing), reason=f"the export extra is not installed (missing {', '.join(missing)}): "
                    "pip install -e '.[export]' && pip install --no-deps facenet-pytorch==2.6.0")
def test_conversion_reproduces_the_committed_hashes(tmp_path):
    groups = ["mtcnn", "dlib"] + (["sface"] if SFACE_UPSTREAM.exists() else [])
    result = export(tmp_path, *(option for group in groups for option in ("--only", group)))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = printed_rows(result.stdout)
    committed = manifest.read_manifest(MODELS)
    assert manifest.read_manifest(tmp_path) == {name: committed[name] for name in rows}
    assert {name: digest for name, (_, _, digest) in rows.items()} == {name: committed[name] for name in rows}
    for name, (_, error, _) in rows.items():
        assert error < 1e-4, name


# --- SFace: needs only onnx, onnxruntime and scikit-image's photos ----------------------------------

@pytest.fixture(scope="module")
def converters():
    pytest.importorskip("onnx", reason="onnx (dev extra) reads the graphs")
    pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test photos")
    from tools import export_models  # puts tools/ on sys.path for its converters package

    return export_models, importlib.import_module("converters.sface")


@needs_sface
def test_sface_export_is_reproducible_and_listed_in_the_manifest(tmp_path):
    result = export(tmp_path, "--only", "sface")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = printed_rows(result.stdout)
    assert list(rows) == [SFACE] and rows[SFACE][1] < 1e-5
    assert manifest.read_manifest(tmp_path) == {SFACE: manifest.read_manifest(MODELS)[SFACE]}
    assert "faster" in result.stdout  # the published and exported graphs' timing, printed, never asserted


@needs_sface
def test_sface_refuses_a_source_other_than_the_published_file(tmp_path):
    changed = tmp_path / "sface.onnx"
    changed.write_bytes(SFACE_UPSTREAM.read_bytes()[:-1] + b"\0")
    result = export(tmp_path / "out", "--only", "sface", "--sface", str(changed))
    assert result.returncode == 1
    assert "is not the published SFace file's 0ba9fbfa" in result.stderr


@needs_sface
def test_the_exported_sface_equals_the_published_graph(converters, shared_data):
    """Batch 1 of the published graph against batch N of the committed one, on real aligned faces."""
    export_models, sface = converters
    from engines.mtcnn import MtcnnDetector

    chips = export_models.aligned_reference_chips()
    alignment = load_card(MODELS / "sface_2021dec.yaml").alignment
    rows = (shared_data / "dev_identities.tsv").read_text().splitlines()[1:]
    with MtcnnDetector(MODELS) as detector:
        for row in rows[::40]:
            rgb = load_image(shared_data / "sets" / row.split("\t")[0])
            face = max(detector.detect(rgb), key=lambda f: f.width)
            chips.append(align(rgb, face.landmarks, alignment)[0])
    ours, theirs = sface.published_and_exported((MODELS / SFACE).read_bytes(), SFACE_UPSTREAM, chips)
    assert ours.shape == theirs.shape == (len(chips), 128) and len(chips) >= 12
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(theirs).max() > 1  # raw vectors, so the bound is a real one


def test_the_exported_sface_has_a_dynamic_batch_and_no_initializer_inputs():
    onnx = pytest.importorskip("onnx", reason="onnx (dev extra) reads the graph")
    graph = onnx.load(str(MODELS / SFACE)).graph
    assert [value.name for value in graph.input] == ["data"]
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    assert not [node.name for node in graph.node if node.op_type == "Reshape"]  # Flatten keeps the batch


# --- MiniFASNet liveness nets: need torch (the export extra) and the published weights ------------------

MINIFASNET_UPSTREAM = SHARED / "models" / "minifasnet"
MINIFASNET_FILES = ("minifasnet_v2_2.7.onnx", "minifasnet_v1se_4.0.onnx")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed: the MiniFASNet weights are PyTorch state dicts "
                                        "(pip install -e '.[export]')")
needs_minifasnet = pytest.mark.skipif(not (MINIFASNET_UPSTREAM / "2.7_80x80_MiniFASNetV2.pth").exists(),
                                      reason=f"{MINIFASNET_UPSTREAM} is absent: the published weights are only on "
                                             "development machines")


@needs_torch
@needs_minifasnet
def test_minifasnet_export_reproduces_the_committed_files(tmp_path):
    result = export(tmp_path, "--only", "minifasnet")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = printed_rows(result.stdout)
    committed = manifest.read_manifest(MODELS)
    assert list(rows) == list(MINIFASNET_FILES)
    assert manifest.read_manifest(tmp_path) == {name: committed[name] for name in MINIFASNET_FILES}
    for name in MINIFASNET_FILES:
        assert (tmp_path / name).read_bytes() == (MODELS / name).read_bytes()
        assert rows[name][1] < 1e-5, name


@needs_torch
@needs_minifasnet
def test_the_committed_minifasnets_equal_the_reference_on_real_faces(converters, shared_data):
    """The committed ONNX (batch N) against upstream's modules re-implemented in PyTorch, on the door's crops
    (engines.liveness) of MTCNN faces: the Silent-Face live and spoof samples and the reference photos."""
    export_models, _ = converters
    minifasnet = importlib.import_module("converters.minifasnet")
    from engines.liveness import liveness_crop
    from engines.mtcnn import MtcnnDetector

    samples = shared_data / "sets" / "silent_face_antispoofing" / "images"
    photos = [load_image(path) for path in sorted(samples.glob("*.jpg"))]
    for net in minifasnet.NETS:
        card = load_card(MODELS / net.onnx_file.replace(".onnx", ".yaml"))
        with MtcnnDetector(MODELS) as detector:
            crops = [liveness_crop(rgb, face.box, card.liveness.crop_scale, card.input_size)
                     for rgb in photos for face in detector.detect(rgb)]
        batch = np.concatenate([card.preprocess(np.stack(crops)), export_models.liveness_reference_batch(card.path)])
        ours = minifasnet.onnx_probabilities((MODELS / net.onnx_file).read_bytes(), batch)
        theirs = minifasnet.reference_probabilities(net.architecture, MINIFASNET_UPSTREAM / net.source_file, batch)
        assert ours.shape == theirs.shape == (len(batch), 3) and len(crops) >= 3
        assert np.abs(ours - theirs).max() < 1e-5
        assert ours[:, 1].max() > 0.9 and ours[:, 1].min() < 0.1  # live and spoof faces both in the batch


@needs_torch
@needs_minifasnet
def test_minifasnet_refuses_weights_other_than_the_published_ones(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    for path in MINIFASNET_UPSTREAM.glob("*.pth"):
        (folder / path.name).write_bytes(path.read_bytes())
    changed = folder / "4_0_0_80x80_MiniFASNetV1SE.pth"
    changed.write_bytes(changed.read_bytes()[:-1] + b"\0")
    result = export(tmp_path / "out", "--only", "minifasnet", "--minifasnet", str(folder))
    assert result.returncode == 1
    assert "is not the published 4_0_0_80x80_MiniFASNetV1SE.pth's 84ee1d37" in result.stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written
