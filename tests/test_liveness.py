"""Liveness: upstream's crop geometry at the frame's borders, one batch per net, scores in [0, 1], live above spoof."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import ImageError, ModelError
from engines.face import Face
from engines.images import load_image
import engines.liveness as liveness_module
from engines.liveness import LivenessChecker, crop_box, liveness_crop
from engines.model_card import cards_of
from engines.mtcnn import MtcnnDetector
from engines.onnx_runner import OnnxRunner
from engines.runner import Runner
from tests.conftest import MODELS
from tests.test_embedder import ChunkRecordingRunner

CARDS = cards_of(MODELS, "liveness")
SILENT_FACE = "sets/silent_face_antispoofing/images"


def upstream_new_box(src_w: int, src_h: int, bbox: list[float], scale: float) -> tuple[int, int, int, int]:
    """Silent-Face-Anti-Spoofing's CropImage._get_new_box (src/generate_patches.py), written out again from its
    source: bbox is (x, y, width, height)."""
    x, y, box_w, box_h = bbox
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, scale))
    new_width, new_height = box_w * scale, box_h * scale
    center_x, center_y = box_w / 2 + x, box_h / 2 + y
    left_top_x, left_top_y = center_x - new_width / 2, center_y - new_height / 2
    right_bottom_x, right_bottom_y = center_x + new_width / 2, center_y + new_height / 2
    if left_top_x < 0:
        right_bottom_x -= left_top_x
        left_top_x = 0
    if left_top_y < 0:
        right_bottom_y -= left_top_y
        left_top_y = 0
    if right_bottom_x > src_w - 1:
        left_top_x -= right_bottom_x - src_w + 1
        right_bottom_x = src_w - 1
    if right_bottom_y > src_h - 1:
        left_top_y -= right_bottom_y - src_h + 1
        right_bottom_y = src_h - 1
    return int(left_top_x), int(left_top_y), int(right_bottom_x), int(right_bottom_y)


def upstream_crop(image: np.ndarray, bbox: list[float], scale: float, out_w: int, out_h: int) -> np.ndarray:
    """CropImage.crop: the new box's pixels, both corners included, resized by cv2's default."""
    left, top, right, bottom = upstream_new_box(image.shape[1], image.shape[0], bbox, scale)
    return cv2.resize(image[top:bottom + 1, left:right + 1], (out_w, out_h))


def face(box) -> Face:
    return Face(box=np.asarray(box, np.float32), score=0.99, landmarks=np.zeros((5, 2), np.float32))


W, H = 640, 480
# (x1, y1, x2, y2) boxes on a 640x480 frame: inside, at each edge and corner, partly outside, larger than
# the frame allows at scale 4 (scale limited), larger than the frame itself, thin, tiny, fractional.
BORDER_BOXES = [
    (300, 200, 380, 290),  # inside, room to spare
    (0, 200, 70, 280), (-20, 200, 50, 280),  # left edge, and sticking out of it
    (580, 200, 640, 280), (600, 200, 660, 280),  # right edge
    (300, 0, 370, 75), (300, -15, 370, 60),  # top
    (300, 410, 370, 480), (300, 430, 370, 500),  # bottom
    (0, 0, 60, 70), (580, 0, 640, 70), (0, 410, 60, 480), (580, 410, 640, 480),  # corners
    (-10, -10, 50, 55), (600, 440, 655, 495),  # corners, sticking out
    (200, 100, 400, 360), (100, 20, 560, 470),  # too large for 2.7x and 4x: scale limited by the frame
    (-50, -40, 700, 530),  # larger than the frame
    (10, 100, 630, 140), (300, 5, 320, 475),  # thin
    (318.4, 238.6, 321.9, 243.2),  # tiny, fractional
    (12.7, 33.3, 101.9, 140.05), (551.5, 377.25, 639.5, 479.75),  # fractional near corners
]


@pytest.mark.parametrize("scale", [2.7, 4.0, 1.0])
@pytest.mark.parametrize("box", BORDER_BOXES, ids=[str(b) for b in BORDER_BOXES])
def test_the_crop_is_upstreams_at_the_frame_borders(box, scale):
    x1, y1, x2, y2 = box
    expected = upstream_new_box(W, H, [x1, y1, x2 - x1, y2 - y1], scale)
    got = crop_box(box, W, H, scale)
    assert got == expected
    left, top, right, bottom = got
    assert 0 <= left <= right <= W - 1 and 0 <= top <= bottom <= H - 1  # always inside the frame


def test_a_box_too_large_for_the_frame_gets_the_largest_scale_that_fits():
    left, top, right, bottom = crop_box((200, 100, 400, 360), W, H, 4.0)  # 260 high: 4x would be 1040
    assert (top, bottom) == (0, H - 1)  # (H - 1) / 260 limits the scale: the crop spans the frame's height
    assert right - left == pytest.approx(200 * (H - 1) / 260, abs=1)  # the aspect ratio is kept


@pytest.mark.parametrize("frame_size", [(640, 480), (97, 131), (1, 1), (2, 300)])
def test_crops_equal_upstreams_pixels(frame_size):
    width, height = frame_size
    rng = np.random.default_rng(width * height)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for box, scale in itertools.product([(0.2 * width, 0.3 * height, 0.6 * width, 0.9 * height),
                                         (-5, -5, width / 3 + 1, height / 3 + 1)], (2.7, 4.0)):
        x1, y1, x2, y2 = box
        expected = upstream_crop(frame, [x1, y1, x2 - x1, y2 - y1], scale, 80, 80)
        np.testing.assert_array_equal(liveness_crop(frame, box, scale, (80, 80)), expected)


@pytest.mark.parametrize("box", [(10, 10, 10, 50), (10, 50, 40, 20), (0, 0, np.nan, 5)])
def test_a_box_without_area_is_refused(box):
    with pytest.raises(ValueError, match="face box"):
        crop_box(box, W, H, 2.7)


# --- the checker on the committed nets --------------------------------------------------------------

@pytest.fixture(scope="module")
def checker():
    with LivenessChecker.from_models(MODELS) as checker:
        yield checker


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test photos")
    return data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with MtcnnDetector(MODELS) as detector:
        yield detector


def test_the_checker_uses_both_nets_and_the_cards_threshold(checker):
    assert sorted(card.id for card in checker.cards) == ["minifasnet-v1se-4.0", "minifasnet-v2-2.7"]
    assert checker.threshold == 0.5 and "tools/evaluate_liveness.py" in checker.threshold_source
    assert checker.is_live(0.5) and not checker.is_live(0.4999)


def test_the_astronaut_gets_a_finite_score_in_0_1(checker, astronaut, detector):
    faces = detector.detect(astronaut)
    scores = checker.score(astronaut, faces)
    assert scores.shape == (len(faces),) == (1,) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and (0 <= scores).all() and (scores <= 1).all()


def test_scores_are_in_0_1_at_the_borders_and_for_no_faces(checker, astronaut):
    height, width = astronaut.shape[:2]
    faces = [face(box) for box in [(0, 0, 90, 110), (width - 70, height - 90, width, height), (-30, 200, 700, 560)]]
    scores = checker.score(astronaut, faces)
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    assert checker.score(astronaut, []).shape == (0,)


def test_the_score_is_the_mean_of_the_nets_live_probabilities(checker, astronaut, detector):
    faces = detector.detect(astronaut)
    expected = []
    for card in checker.cards:
        crop = liveness_crop(astronaut, faces[0].box, card.liveness.crop_scale, card.input_size)
        with OnnxRunner(card.model_path) as runner:
            expected.append(runner.run({card.input_name: card.preprocess(crop[None])})["prob"][0, 1])
    np.testing.assert_allclose(checker.score(astronaut, faces), [np.mean(expected)], atol=1e-6)


def test_all_faces_of_a_frame_go_in_one_batch_per_net_split_across_sessions(astronaut, detector):
    faces = detector.detect(astronaut) + [face((x, 30, x + 100, 150)) for x in (0, 150, 300, 412)]
    with LivenessChecker.from_models(MODELS, sessions=1) as one:
        expected = one.score(astronaut, faces)
    runners = [ChunkRecordingRunner(card.model_path, sessions=2) for card in CARDS]
    with LivenessChecker(CARDS, runners) as two:
        split = two.score(astronaut, faces)
    for runner in runners:
        assert runner.batches == [5] and sorted(runner.chunks) == [2, 3]
    np.testing.assert_allclose(split, expected, rtol=0, atol=1e-6)
    assert expected.std() > 0.01  # different crops, different scores: the comparison is not vacuous


class ThreadRecordingRunner(OnnxRunner):
    """Records the thread each run() was called from."""

    def __init__(self, path, sessions: int) -> None:
        super().__init__(path, sessions=sessions)
        self.threads: list[str] = []

    def run(self, inputs):
        self.threads.append(threading.current_thread().name)
        return super().run(inputs)


@pytest.mark.parametrize("sessions", [1, 2])
def test_the_nets_run_side_by_side_only_where_every_runner_does(astronaut, detector, sessions):
    faces = detector.detect(astronaut)
    runners = [ThreadRecordingRunner(card.model_path, sessions) for card in CARDS]
    with LivenessChecker(CARDS, runners) as checker:
        checker.score(astronaut, faces)
    first, second = (runner.threads for runner in runners)
    assert first == [threading.current_thread().name]
    # One session (or a TensorRT engine) runs every net on the caller's thread, the inference thread.
    assert (second != first) == (sessions > 1)


class FakeRunner(Runner):
    """Answers every crop with fixed class probabilities and keeps the inputs it was given."""

    def __init__(self, prob=(0.2, 0.7, 0.1), input_shape=("batch", 3, 80, 80), classes=3) -> None:
        self.prob = np.asarray(prob, np.float32)
        self.shape = input_shape
        self.classes = classes
        self.inputs: list[np.ndarray] = []
        self.closed = False

    @property
    def input_shapes(self):
        return {"input": self.shape}

    @property
    def output_shapes(self):
        return {"prob": ("batch", self.classes)}

    def run(self, inputs):
        self.inputs.append(inputs["input"])
        return {"prob": np.tile(self.prob, (len(inputs["input"]), 1))}

    def close(self):
        self.closed = True


def test_the_nets_see_bgr_0_255_and_their_probabilities_are_averaged():
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[...] = (10, 20, 30)  # RGB
    runners = [FakeRunner((0.1, 0.9, 0.0)), FakeRunner((0.5, 0.3, 0.2))]
    with LivenessChecker(CARDS, runners) as checker:
        scores = checker.score(frame, [face((40, 30, 80, 80)), face((0, 0, 30, 30))])
    np.testing.assert_allclose(scores, [0.6, 0.6], atol=1e-6)
    for runner in runners:
        [batch] = runner.inputs
        assert batch.shape == (2, 3, 80, 80) and batch.dtype == np.float32
        assert (batch[:, 0] == 30).all() and (batch[:, 1] == 20).all() and (batch[:, 2] == 10).all()
        assert runner.closed


def test_a_fixed_batch_engine_gets_padded_batches():
    runners = [FakeRunner(input_shape=(4, 3, 80, 80)) for _ in CARDS]
    frame = np.full((100, 100, 3), 128, np.uint8)
    with LivenessChecker(CARDS, runners) as checker:
        scores = checker.score(frame, [face((10, 10, 50, 50 + i)) for i in range(6)])
    assert scores.shape == (6,)
    assert [len(batch) for batch in runners[0].inputs] == [4, 4]


@pytest.mark.parametrize("runner, message", [
    (FakeRunner(input_shape=("batch", 3, 112, 112)), "the card says"),
    (FakeRunner(classes=1), "live_class = 1"),
])
def test_a_model_that_does_not_fit_its_card_is_refused_and_every_runner_closed(runner, message):
    good = FakeRunner()
    with pytest.raises(ModelError, match=message):
        LivenessChecker(CARDS, [good, runner])
    assert good.closed and runner.closed


def test_cards_that_disagree_on_the_threshold_are_refused():
    cards = [CARDS[0], dataclasses.replace(CARDS[1], threshold=0.7)]
    with pytest.raises(ModelError, match="disagree"):
        LivenessChecker(cards, [FakeRunner(), FakeRunner()])


def test_a_folder_without_liveness_cards_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no model card with role 'liveness'"):
        LivenessChecker.from_models(tmp_path)


def test_a_frame_that_is_not_rgb_uint8_is_refused():
    with LivenessChecker(CARDS, [FakeRunner(), FakeRunner()]) as checker:
        with pytest.raises(ImageError, match="uint8"):
            checker.score(np.zeros((50, 50, 3), np.float32), [face((5, 5, 30, 30))])
        with pytest.raises(ImageError, match="HxWx3"):
            checker.score(np.zeros((50, 50), np.uint8), [face((5, 5, 30, 30))])


# --- real live and spoof photos (development data) ----------------------------------------------------

def test_a_live_face_scores_above_its_printed_and_screen_spoofs(checker, detector, shared_data):
    """Silent-Face-Anti-Spoofing's samples: T1 live, F1 a printed photo, F2 a tablet screen replay."""
    scores = {}
    for name in ("image_T1.jpg", "image_F1.jpg", "image_F2.jpg"):
        rgb = load_image(shared_data / SILENT_FACE / name)
        largest = max(detector.detect(rgb), key=lambda f: f.width)
        scores[name] = float(checker.score(rgb, [largest])[0])
    assert scores["image_T1.jpg"] > max(scores["image_F1.jpg"], scores["image_F2.jpg"]), scores
    assert checker.is_live(scores["image_T1.jpg"]), scores
    assert not checker.is_live(scores["image_F1.jpg"]) and not checker.is_live(scores["image_F2.jpg"]), scores


# --- tools/evaluate_liveness.py on a small labelled fixture -------------------------------------------

@pytest.fixture(scope="module")
def evaluate_liveness():
    from tools import evaluate_liveness

    return evaluate_liveness


def screen_replay(rgb: np.ndarray) -> np.ndarray:
    """A crude replay: the photo shrunk onto a dark 'phone' with a bezel, on a gray wall."""
    wall = np.full((480, 640, 3), 150, np.uint8)
    wall[60:420, 180:460] = 20
    wall[80:400, 200:440] = cv2.resize(rgb, (240, 320), interpolation=cv2.INTER_AREA)
    return wall


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory, astronaut):
    folder = tmp_path_factory.mktemp("pad")
    (folder / "img").mkdir()
    cv2.imwrite(str(folder / "img" / "live.png"), astronaut[..., ::-1])
    cv2.imwrite(str(folder / "img" / "replay.png"), screen_replay(astronaut)[..., ::-1])
    cv2.imwrite(str(folder / "img" / "wall.png"), np.full((240, 320, 3), 90, np.uint8))  # no face
    writer = cv2.VideoWriter(str(folder / "walk.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for shift in (0, 4, 8):
        writer.write(np.roll(astronaut, shift, axis=1)[..., ::-1])
    writer.release()
    digest = hashlib.sha256((folder / "img" / "live.png").read_bytes()).hexdigest()
    rows = [("img/live.png", "live", "none", "skimage@0.22:astronaut", digest),
            ("img/replay.png", "spoof", "replay", "synthetic", ""),
            ("img/wall.png", "spoof", "print", "synthetic", ""),
            ("walk.avi", "live", "none", "skimage@0.22:astronaut", "")]
    manifest = folder / "MANIFEST.tsv"
    manifest.write_text("path\tlabel\tattack\tsource\tlicence\tnotes\tsha256\n"
                        + "".join(f"{p}\t{label}\t{attack}\t{source}\tBSD-3-Clause\t-\t{sha}\n"
                                  for p, label, attack, source, sha in rows))
    return manifest


def run_json(evaluate_liveness, capsys, *args) -> tuple[int, dict]:
    status = evaluate_liveness.main([str(a) for a in args] + ["--json"])
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else {}


def test_evaluate_liveness_reports_the_iso_measures_on_a_labelled_fixture(evaluate_liveness, fixture_set, capsys,
                                                                          tmp_path):
    status, report = run_json(evaluate_liveness, capsys, fixture_set, "--det", tmp_path / "det.png")
    assert status == 0
    assert {"apcer", "bpcer", "acer", "auc", "threshold", "items", "no_face", "bpcer_at_apcer_0.01",
            "bpcer_at_apcer_0.05", "target", "per_attack", "per_source", "apcer_worst_attack"} <= set(report)
    assert (report["live"], report["spoof"], report["live_scored"], report["spoof_scored"]) == (2, 2, 2, 1)
    assert report["no_face"] == ["img/wall.png"] and report["errors"] == []
    assert report["threshold"] == 0.5 and "tools/evaluate_liveness.py" in report["threshold_source"]
    items = {item["path"]: item for item in report["items"]}
    assert items["img/wall.png"]["score"] is None
    video = items["walk.avi"]
    assert (video["kind"], video["frames"], video["frames_scored"]) == ("video", 3, 3)
    assert 0 <= video["score"] <= 1 and "median" in report["video_statistic"]
    live, replay = items["img/live.png"]["score"], items["img/replay.png"]["score"]
    expected_apcer = float(replay >= 0.5)
    expected_bpcer = np.mean([live < 0.5, video["score"] < 0.5])
    assert report["apcer"] == expected_apcer and report["bpcer"] == pytest.approx(expected_bpcer)
    assert report["acer"] == pytest.approx((expected_apcer + expected_bpcer) / 2)
    assert report["per_attack"]["print"]["no_face"] == 1 and report["per_attack"]["print"]["apcer"] is None
    assert report["per_attack"]["replay"]["spoof_scored"] == 1 and report["per_attack"]["none"]["live_scored"] == 2
    assert set(report["per_source"]) == {"skimage", "synthetic"}  # the source up to its '@'
    target = report["target"]
    assert target["target_apcer"] == 0.01 and target["apcer"] == 0.0 and target["threshold"] > replay
    assert cv2.imread(str(tmp_path / "det.png")) is not None


def test_evaluate_liveness_judges_at_a_given_threshold_and_checks_sha256(evaluate_liveness, fixture_set, capsys,
                                                                         tmp_path):
    changed = tmp_path / "MANIFEST.tsv"
    lines = fixture_set.read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\t" + "0" * 64  # live.png with another file's hash
    changed.write_text("\n".join(lines) + "\n")
    status, report = run_json(evaluate_liveness, capsys, changed, "--root", fixture_set.parent, "--threshold", "0")
    assert status == 0 and report["threshold"] == 0.0 and report["threshold_source"] == "--threshold"
    assert report["errors"] == ["img/live.png: sha256 differs from the manifest's 000000000000..."]
    assert (report["live_scored"], report["bpcer"], report["apcer"]) == (1, 0.0, 1.0)  # everything is live at 0


def test_evaluate_liveness_without_attacks_scored_fails_and_a_bad_label_is_a_usage_error(evaluate_liveness, fixture_set,
                                                                                          capsys, tmp_path):
    only_live = tmp_path / "live.tsv"
    only_live.write_text("path\tlabel\nimg/live.png\tlive\nimg/wall.png\tspoof\n")
    status, report = run_json(evaluate_liveness, capsys, only_live, "--root", fixture_set.parent)
    assert status == 1 and report["apcer"] is None and report["bpcer"] is not None and report["auc"] is None
    assert report["no_face"] == ["img/wall.png"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tlabel\nimg/live.png\tgenuine\n")
    assert evaluate_liveness.main([str(bad)]) == 2
    assert "label 'genuine' is not one of live, spoof" in capsys.readouterr().err


def test_the_liveness_measures_on_hand_counted_scores(evaluate_liveness):
    live = np.array([0.9, 0.8, 0.6, 0.3])
    spoof = np.array([0.7, 0.2, 0.1, 0.1, 0.05])
    assert evaluate_liveness.rates(live, spoof, 0.5) == (0.2, 0.25)
    # 18 of the 20 (live, attack) pairs rank the live one higher: 0.6 and 0.3 fall below the attack at 0.7
    assert evaluate_liveness.roc_auc(live, spoof) == pytest.approx(18 / 20)
    assert evaluate_liveness.roc_auc(np.array([0.5]), np.array([0.5])) == 0.5  # a tie counts half
    curve = evaluate_liveness.det_curve(live, spoof)
    assert evaluate_liveness.at_apcer(curve, 0.0) == {"target_apcer": 0.0, "threshold": 0.8, "apcer": 0.0,
                                                      "bpcer": 0.5}
    assert evaluate_liveness.at_apcer(curve, 0.2)["threshold"] == 0.3  # 0.7 passes, 0.2 does not
    thresholds, apcer, bpcer = curve
    assert (np.diff(apcer) <= 0).all() and (np.diff(bpcer) >= 0).all() and apcer[-1] == 0 and bpcer[-1] == 1


def test_evaluate_liveness_reports_candidates_tracks_and_selects_rows(evaluate_liveness, fixture_set, capsys):
    status, report = run_json(evaluate_liveness, capsys, fixture_set, "--select", "live|replay|walk", "--sequences",
                              "--at", "0.3")
    assert status == 0 and (report["live"], report["spoof"]) == (2, 1)  # wall.png is not selected
    assert [c["name"] for c in report["candidates"]] == ["cards", "APCER <= 1%", "APCER <= 5%", "--at 0.3"]
    cards = report["candidates"][0]
    assert (cards["threshold"], cards["apcer"], cards["bpcer"]) == (0.5, report["apcer"], report["bpcer"])
    assert set(cards["per_attack"]) == {"replay"} and set(cards["per_source"]) == {"skimage", "synthetic"}
    items = {item["path"]: item for item in report["items"]}
    assert len(items["walk.avi"]["frame_scores"]) == 3 and len(items["img/live.png"]["landmarks"]) == 5
    sequences = report["sequences"]
    assert sequences["tracks"] == 1 and sequences["per_track"][0]["name"] == "walk.avi"  # the video; lone photos are not
    assert sequences["pooled"]["single frame"]["live"] == 3 and sequences["pooled"]["median"]["live"] == 1
    assert sequences["per_track"][0]["median"] == pytest.approx(items["walk.avi"]["score"])
    assert evaluate_liveness.main([str(fixture_set), "--select", "nothing-matches"]) == 2
    assert "no manifest path matches" in capsys.readouterr().err


def test_an_engine_given_for_a_card_runs_instead_of_its_onnx(tmp_path, monkeypatch):
    cards = cards_of(MODELS, "liveness")
    opened = []

    def recording_open(path, threads=1, sessions=1):
        opened.append(Path(path).name)
        return OnnxRunner(cards[0].model_path if Path(path).suffix == ".engine" else path)

    monkeypatch.setattr(liveness_module, "open_runner", recording_open)
    engine = tmp_path / "v2.fp16.engine"
    with LivenessChecker.from_models(MODELS, engines={cards[0].id: engine}) as checker:
        assert [card.id for card in checker.cards] == [card.id for card in cards]
    assert opened == [engine.name] + [card.model_path.name for card in cards[1:]]
    with pytest.raises(ModelError, match="no liveness card"):
        LivenessChecker.from_models(MODELS, engines={"minifasnet-v9": engine})
