"""The committed models: present, unmodified, loadable, and described by valid cards."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from engines import manifest
from engines.model_card import DEFAULTS_FILE, ModelCardError, cards_of, find_card, load_card, load_cards
from tests.conftest import MODELS, REPO

CARDS = load_cards(MODELS)


def test_every_manifest_entry_matches_its_file():
    names = manifest.verify(MODELS)
    assert set(names) == {card.file for card in CARDS}
    assert {"mtcnn_pnet.onnx", "mtcnn_rnet.onnx", "mtcnn_onet.onnx", "dlib_resnet_v1.onnx",
            "sface_2021dec.onnx", "minifasnet_v2_2.7.onnx", "minifasnet_v1se_4.0.onnx"} <= set(names)


def test_a_modified_model_is_caught(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    with open(copy / "mtcnn_pnet.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(manifest.ManifestError, match="mtcnn_pnet.onnx: sha256"):
        manifest.verify(copy)


def test_an_unlisted_model_is_caught(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    (copy / "extra.onnx").write_bytes(b"x")
    with pytest.raises(manifest.ManifestError, match="extra.onnx is not listed"):
        manifest.verify(copy)


@pytest.mark.parametrize("card", CARDS, ids=[c.id for c in CARDS])
def test_each_model_loads_and_matches_its_card(card):
    session = ort.InferenceSession(str(card.model_path), providers=["CPUExecutionProvider"])
    [model_input] = session.get_inputs()
    assert model_input.name == card.input_name
    assert model_input.shape[1] == 3
    if card.input_size is not None:
        assert model_input.shape[2:] == [card.input_size[1], card.input_size[0]]
    assert set(card.outputs.values()) == {o.name for o in session.get_outputs()}

    width, height = card.input_size or (64, 48)
    batch = card.preprocess(np.full((2, height, width, 3), 128, np.uint8))
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {card.input_name: batch})))
    for name, value in outputs.items():
        assert value.shape[0] == 2, f"{card.file}:{name} lost the dynamic batch"
        assert np.isfinite(value).all()
    if card.role == "embedder":
        assert outputs[card.outputs["embedding"]].shape == (2, card.embedding_dim)
        assert card.input_size == card.alignment.chip_size
    else:
        if card.role == "liveness":
            assert outputs[card.outputs["prob"]].shape[1] > card.liveness.live_class
        assert np.allclose(outputs[card.outputs["prob"]].sum(axis=1), 1.0, atol=1e-5)


def test_cards_say_where_the_threshold_and_weights_come_from():
    embedders = [c for c in CARDS if c.role == "embedder"]
    assert {c.id for c in embedders} >= {"dlib-resnet-v1", "sface-2021dec"}
    for embedder in embedders:
        assert embedder.threshold > 0 and "tools/evaluate.py" in embedder.threshold_source
        assert embedder.alignment.template.shape == (5, 2)
    for card in CARDS:
        # A PyPI package and its version, or a repository's file and its sha256.
        assert (card.source.get("package") and card.source.get("version")
                or card.source.get("repository") and card.source.get("file") and card.source.get("sha256"))
        assert card.licence


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(role="detector"), "role = 'detector'"),
    (lambda c: c["input"].update(channel_order="RGBA"), "input.channel_order = 'RGBA'"),
    (lambda c: c["embedding"].update(metric="manhattan"), "embedding.metric = 'manhattan'"),
    (lambda c: c["alignment"].update(template=[[1, 2]]), "alignment.template"),
    (lambda c: c["input"].update(scale=0), "input.scale = 0"),
    (lambda c: c.update(colour="blue"), "colour = 'blue'"),
    (lambda c: c.pop("licence"), "licence = None"),
    (lambda c: c["embedding"].update(flip_average="yes"), "embedding.flip_average = 'yes'"),
])
def test_a_bad_card_names_the_key_and_value(tmp_path, change, message):
    assert message in bad_card_error(tmp_path, "dlib_resnet_v1.yaml", change)


def bad_card_error(tmp_path, card_file: str, change) -> str:
    """The error loading a committed card gives once `change` has edited its YAML."""
    raw = yaml.safe_load((MODELS / card_file).read_text())
    change(raw)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelCardError) as error:
        load_card(path)
    return str(error.value)


def test_the_sface_card_describes_the_published_model():
    card = load_card(MODELS / "sface_2021dec.yaml")
    assert (card.role, card.metric, card.normalize, card.embedding_dim) == ("embedder", "cosine", True, 128)
    assert (card.channel_order, float(card.scale)) == ("RGB", 1.0) and not card.mean.any()  # the graph normalises
    assert card.alignment.chip_size == (112, 112)
    assert card.source["sha256"] == "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
    assert card.licence == "Apache-2.0"
    # The default by measurement (docs/figures.md, compare_embedders.py); dlib stays installed beside it.
    assert find_card(MODELS, "embedder").id == "sface-2021dec"
    assert {c.id for c in cards_of(MODELS, "embedder")} == {"sface-2021dec", "dlib-resnet-v1"}


def test_flip_average_is_off_unless_a_card_says_so(tmp_path):
    raw = yaml.safe_load((MODELS / "dlib_resnet_v1.yaml").read_text())
    raw["embedding"].pop("flip_average", None)
    (tmp_path / "absent.yaml").write_text(yaml.safe_dump(raw))
    raw["embedding"]["flip_average"] = True
    (tmp_path / "on.yaml").write_text(yaml.safe_dump(raw))
    assert not load_card(tmp_path / "absent.yaml").flip_average
    assert load_card(tmp_path / "on.yaml").flip_average


def test_export_check_passes_on_the_committed_models():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "export_models.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "7 model files match MANIFEST" in result.stdout


def test_export_check_fails_on_a_tampered_copy(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    (copy / "mtcnn_rnet.onnx").write_bytes(b"tampered")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "export_models.py"), "--check", "--out", str(copy)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "mtcnn_rnet.onnx: sha256" in result.stderr


def second_embedder(folder, card_id: str = "dlib-resnet-v1-copy") -> None:
    """Install another embedder card beside the first (same weights, another id)."""
    raw = yaml.safe_load((folder / "dlib_resnet_v1.yaml").read_text())
    raw["id"] = card_id
    (folder / "copy.yaml").write_text(yaml.safe_dump(raw))


def test_with_several_embedders_the_defaults_file_chooses(tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    second_embedder(copy)
    assert sorted(card.id for card in cards_of(copy, "embedder")) == ["dlib-resnet-v1", "dlib-resnet-v1-copy",
                                                                      "sface-2021dec"]
    (copy / DEFAULTS_FILE).write_text("# the measured default\nembedder  dlib-resnet-v1-copy\n")
    assert find_card(copy, "embedder").id == "dlib-resnet-v1-copy"
    assert find_card(copy, "pnet").role == "pnet"


@pytest.mark.parametrize("defaults, message", [(None, "names none of them"),
                                               ("embedder  nobody\n", "it names 'nobody'"),
                                               ("embedder\n", "line 1: expected")])
def test_several_embedders_without_a_usable_default_are_refused(tmp_path, defaults, message):
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    (copy / DEFAULTS_FILE).unlink(missing_ok=True)
    second_embedder(copy)
    if defaults is not None:
        (copy / DEFAULTS_FILE).write_text(defaults)
    with pytest.raises(ModelCardError, match=message):
        find_card(copy, "embedder")


# --- liveness: two nets used together, so no DEFAULTS entry chooses between them ----------------------

LIVENESS = {"minifasnet-v2-2.7": ("minifasnet_v2_2.7.onnx", 2.7),
            "minifasnet-v1se-4.0": ("minifasnet_v1se_4.0.onnx", 4.0)}


def test_the_liveness_cards_describe_the_minifasnets():
    cards = cards_of(MODELS, "liveness")
    assert {card.id: (card.file, card.liveness.crop_scale) for card in cards} == LIVENESS
    for card in cards:
        assert (card.input_size, card.channel_order, float(card.scale)) == ((80, 80), "BGR", 1.0)
        assert not card.mean.any()  # BGR 0..255 as float, no normalisation
        assert (card.liveness.live_class, card.liveness.combine) == (1, "mean")
        assert card.threshold == 0.5 and "upstream's own rule" in card.threshold_source
        assert card.licence == "Apache-2.0" and "Silent-Face-Anti-Spoofing" in card.source["repository"]
        assert card.alignment is None and card.metric is None and card.embedding_dim is None


@pytest.mark.parametrize("card", cards_of(MODELS, "liveness"), ids=lambda c: c.id)
def test_each_liveness_model_has_a_dynamic_batch_and_three_classes(card):
    session = ort.InferenceSession(str(card.model_path), providers=["CPUExecutionProvider"])
    [model_input], [model_output] = session.get_inputs(), session.get_outputs()
    assert isinstance(model_input.shape[0], str) and model_input.shape[1:] == [3, 80, 80]
    assert model_output.name == card.outputs["prob"]
    assert isinstance(model_output.shape[0], str) and model_output.shape[1:] == [3]
    batch = card.preprocess(np.random.default_rng(0).integers(0, 256, (5, 80, 80, 3), dtype=np.uint8))
    [prob] = session.run(None, {card.input_name: batch})
    assert prob.shape == (5, 3) and np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)


def test_two_liveness_cards_leave_find_card_for_the_other_roles_alone():
    assert len(cards_of(MODELS, "liveness")) == 2
    assert {role: find_card(MODELS, role).role for role in ("pnet", "rnet", "onet", "embedder")} == {
        "pnet": "pnet", "rnet": "rnet", "onet": "onet", "embedder": "embedder"}
    with pytest.raises(ModelCardError, match="several model cards have role 'liveness'"):
        find_card(MODELS, "liveness")  # the door uses them all: cards_of


@pytest.mark.parametrize("change, message", [
    (lambda c: c["liveness"].update(crop_scale=0), "liveness.crop_scale = 0"),
    (lambda c: c["liveness"].update(live_class=-1), "liveness.live_class = -1"),
    (lambda c: c["liveness"].update(live_class=1.0), "liveness.live_class = 1.0"),
    (lambda c: c["liveness"].update(combine="max"), "liveness.combine = 'max'"),
    (lambda c: c["liveness"].update(threshold=1.5), "liveness.threshold = 1.5"),
    (lambda c: c["liveness"].pop("threshold_source"), "liveness.threshold_source = None"),
    (lambda c: c.pop("liveness"), "liveness.threshold = None"),
])
def test_a_bad_liveness_card_names_the_key_and_value(tmp_path, change, message):
    assert message in bad_card_error(tmp_path, "minifasnet_v2_2.7.yaml", change)
