"""The MTCNN detector on the committed models: stages, box arithmetic, packed pyramid, real images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from engines import mtcnn
from engines.errors import ImageError, ModelError
from engines.mtcnn import (PNET_CELL, PNET_STRIDE, DetectorConfig, MtcnnDetector, Nms, Octaves, level_images,
                           nms, pack_pyramid, pyramid_layout, regress_boxes, square_boxes)
from engines.onnx_runner import OnnxRunner
from tests.conftest import DEMO_CLIP, MODELS

ASTRONAUT_BOX = (180, 61, 268, 174)
# left eye, right eye, nose, left and right mouth corners
ASTRONAUT_LANDMARKS = [(204, 101), (247, 103), (225, 129), (202, 140), (245, 142)]


@pytest.fixture(scope="module")
def detector():
    with MtcnnDetector() as detector:
        yield detector


@pytest.fixture(scope="module")
def level_detector():
    with MtcnnDetector(config=DetectorConfig(packed=False)) as detector:
        yield detector


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    if not DEMO_CLIP.exists():
        pytest.skip(f"{DEMO_CLIP} is absent")
    capture = cv2.VideoCapture(str(DEMO_CLIP))
    frames = []
    for index in range(0, 300, 50):
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
        if ok:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(frames) == 6, "the demo clip could not be read"
    return frames


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- whole frames -------------------------------------------------------------------------------

def test_astronaut_has_one_face_at_the_known_place(detector):
    [face] = detector.detect(data.astronaut())
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=3)
    np.testing.assert_allclose(face.landmarks, ASTRONAUT_LANDMARKS, atol=3)
    assert face.score > 0.99
    assert face.box.dtype == np.float32 and face.landmarks.shape == (5, 2)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_images_without_faces_give_none(detector, name):
    assert detector.detect(getattr(data, name)()) == []


@pytest.mark.parametrize("shape", [(480, 640, 3), (11, 11, 3), (11, 300, 3), (30, 30, 3)],
                         ids=["blank", "tiny", "thin", "below-min-face"])
def test_blank_and_small_frames_give_none(detector, shape):
    assert detector.detect(np.zeros(shape, np.uint8)) == []


@pytest.mark.parametrize("bad", [
    [[[0, 0, 0]]],
    np.zeros((64, 64, 3), np.float32),
    np.zeros((64, 64), np.uint8),
    np.zeros((64, 64, 4), np.uint8),
    np.zeros((64, 64, 1), np.uint8),
    np.zeros((3, 64, 64, 3), np.uint8),
], ids=["list", "float", "grey", "rgba", "one-channel", "batch"])
def test_anything_but_an_hxwx3_uint8_frame_raises_image_error(detector, bad):
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        detector.detect(bad)


def test_a_large_frame_is_detected_at_max_input_side_and_mapped_back():
    config = DetectorConfig(max_input_side=512)
    big = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    assert pyramid_layout(1024, 1024, config).detect_size == (512, 512)
    with MtcnnDetector(config=config) as detector:
        [face] = detector.detect(big)
    np.testing.assert_allclose(face.box, np.multiply(ASTRONAUT_BOX, 2), atol=6)
    np.testing.assert_allclose(face.landmarks, np.multiply(ASTRONAUT_LANDMARKS, 2), atol=6)


def test_packed_and_level_by_level_find_the_same_faces(detector, level_detector, clip_frames):
    frames = [data.astronaut(), *clip_frames]
    found = 0
    for frame in frames:
        packed, levels = detector.detect(frame), level_detector.detect(frame)
        assert len(packed) == len(levels)
        for a, b in zip(packed, levels):
            np.testing.assert_allclose(a.box, b.box, atol=1e-2)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-2)
            assert a.score == pytest.approx(b.score, abs=1e-4)
        found += len(packed)
    assert found >= 4, "the comparison needs frames with faces"


def test_mtcnn_sample_images(detector, shared_data):
    ivan = cv2.cvtColor(cv2.imread(str(shared_data / "sets/mtcnn/images/ivan.jpg")), cv2.COLOR_BGR2RGB)
    no_faces = cv2.cvtColor(cv2.imread(str(shared_data / "sets/mtcnn/nonface/no-faces.jpg")), cv2.COLOR_BGR2RGB)
    assert len(detector.detect(ivan)) == 1
    assert detector.detect(no_faces) == []


# --- the cascade stages ---------------------------------------------------------------------------

def stages(detector, image):
    octaves = Octaves(image)
    layout = pyramid_layout(image.shape[0], image.shape[1], detector.config)
    proposals = detector.propose(octaves, layout)
    refined = detector.refine(octaves, proposals)
    return octaves, proposals, refined, detector.output(octaves, refined)


def test_pnet_proposals_contain_the_face(detector):
    _, proposals, refined, (boxes, _, _) = stages(detector, data.astronaut())
    assert max(iou(box, ASTRONAUT_BOX) for box in proposals) > 0.6
    assert len(proposals) > len(refined) > len(boxes) == 1


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_rnet_rejects_what_pnet_proposes_in_images_without_faces(detector, name):
    _, proposals, refined, _ = stages(detector, getattr(data, name)())
    assert len(proposals) > 0
    assert len(refined) == 0


def test_onet_keeps_the_face_and_rejects_other_boxes(detector):
    octaves = Octaves(data.astronaut())
    background = np.array([[0, 0, 100, 100], [400, 400, 500, 500], [300, 20, 400, 120], [180, 266, 254, 340]],
                          float)
    assert len(detector.output(octaves, background)[0]) == 0
    boxes, scores, landmarks = detector.output(octaves, np.array([ASTRONAUT_BOX], float))
    assert len(boxes) == 1 and scores[0] > 0.99
    np.testing.assert_allclose(landmarks[0], ASTRONAUT_LANDMARKS, atol=4)


class CountingRunner:
    """A real runner that counts its calls and whether it was closed."""

    concurrency = 1

    def __init__(self, path):
        self.runner = OnnxRunner(path)
        self.calls = 0
        self.closed = False

    def run(self, inputs):
        self.calls += 1
        assert all(len(batch) > 0 for batch in inputs.values()), "a net was called with no candidates"
        return self.runner.run(inputs)

    def close(self):
        self.closed = True


def counting_detector(config=DetectorConfig()):
    runners = {role: CountingRunner(MODELS / f"mtcnn_{role}.onnx") for role in ("pnet", "rnet", "onet")}
    return MtcnnDetector(config=config, runners=runners), runners


@pytest.mark.parametrize("name, calls", [("astronaut", (1, 1, 1)), ("coffee", (1, 1, 0))])
def test_each_net_runs_at_most_once_per_frame(name, calls):
    detector, runners = counting_detector()
    detector.detect(getattr(data, name)())
    assert tuple(runners[role].calls for role in ("pnet", "rnet", "onet")) == calls


def test_level_by_level_runs_pnet_once_per_level():
    detector, runners = counting_detector(DetectorConfig(packed=False))
    detector.detect(data.astronaut())
    assert runners["pnet"].calls == len(pyramid_layout(512, 512, detector.config).levels)


def test_close_closes_the_runners_and_unknown_roles_are_refused():
    detector, runners = counting_detector()
    with detector:
        pass
    assert all(runner.closed for runner in runners.values())
    with pytest.raises(ModelError, match="unknown runner roles"):
        MtcnnDetector(runners={"embedder": CountingRunner(MODELS / "mtcnn_pnet.onnx")})


# --- box arithmetic -------------------------------------------------------------------------------

def test_nms_union_and_min_on_known_boxes():
    boxes = np.array([[0, 0, 10, 10],    # A
                      [1, 0, 11, 10],    # B: IoU with A 90/110
                      [20, 20, 30, 30],  # C: alone
                      [0, 0, 10, 5]],    # D: IoU with A 0.5, half of A's area, wholly inside A
                     float)
    scores = np.array([0.9, 0.8, 0.95, 0.7])
    assert nms(boxes, scores, Nms(0.7, "union")).tolist() == [2, 0, 3]
    assert nms(boxes, scores, Nms(0.7, "min")).tolist() == [2, 0]
    assert nms(boxes, scores, Nms(0.5, "union")).tolist() == [2, 0, 3], "an overlap equal to the threshold stays"
    assert nms(boxes, scores, Nms(0.95, "union")).tolist() == [2, 0, 1, 3]


def test_nms_is_greedy_a_suppressed_box_suppresses_nothing():
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], float)  # A-B and B-C overlap 0.43
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), Nms(0.3)).tolist() == [0, 2]


def test_nms_on_no_boxes():
    assert nms(np.empty((0, 4)), np.empty(0), Nms(0.5)).tolist() == []


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_box_by_box_matches_all_at_once(monkeypatch, method):
    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 200, (300, 2))
    boxes = np.hstack([corners, corners + rng.uniform(5, 60, (300, 2))])
    scores = rng.uniform(0, 1, 300)
    at_once = nms(boxes, scores, Nms(0.4, method))
    monkeypatch.setattr(mtcnn, "NMS_MATRIX_MAX", 0)
    assert nms(boxes, scores, Nms(0.4, method)).tolist() == at_once.tolist()
    assert 10 < len(at_once) < 300


def test_config_is_checked():
    with pytest.raises(ValueError, match="method"):
        Nms(0.5, "max")
    with pytest.raises(ValueError, match="scale_factor"):
        DetectorConfig(scale_factor=1.0)
    from_yaml = DetectorConfig(thresholds=[0.6, 0.7, 0.7])
    assert pyramid_layout(480, 640, from_yaml) is pyramid_layout(480, 640, DetectorConfig())


def test_box_regression_moves_edges_by_fractions_of_the_size():
    boxes = np.array([[10, 20, 30, 60]], float)  # 20 wide, 40 high
    moved = regress_boxes(boxes, np.array([[0.1, -0.1, 0.2, 0.05]]))
    np.testing.assert_allclose(moved, [[12, 16, 34, 62]])


def test_squaring_grows_the_short_side_about_the_centre():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 40, 10], [5, 5, 15, 15]], float)
    np.testing.assert_allclose(square_boxes(boxes), [[0, 20, 40, 60], [0, -15, 40, 25], [5, 5, 15, 15]])


# --- the packed pyramid ---------------------------------------------------------------------------

LAYOUT_CASES = [((480, 640), DetectorConfig()), ((480, 640), DetectorConfig(min_face_size=80)),
                ((720, 1280), DetectorConfig(min_face_size=20)), ((512, 512), DetectorConfig(scale_factor=0.5)),
                ((101, 333), DetectorConfig(min_face_size=13)), ((1080, 1920), DetectorConfig())]


@pytest.mark.parametrize("size, config", LAYOUT_CASES)
def test_layout_places_every_level_apart_on_the_stride_grid(size, config):
    layout = pyramid_layout(*size, config)
    canvas_h, canvas_w = layout.canvas_size
    occupied = np.zeros(layout.canvas_size, np.int32)
    for level in layout.levels:
        assert level.x % PNET_STRIDE == 0 and level.y % PNET_STRIDE == 0
        assert level.x + level.width <= canvas_w and level.y + level.height <= canvas_h
        occupied[level.y:level.y + level.height, level.x:level.x + level.width] += 1
    assert occupied.max() == 1
    level_area = int(np.count_nonzero(occupied))
    assert canvas_h * canvas_w <= 1.25 * level_area, "the canvas wastes too much of P-Net's work"


@pytest.mark.parametrize("size, config", LAYOUT_CASES)
def test_layout_levels_follow_the_pyramid(size, config):
    layout = pyramid_layout(*size, config)
    detect_h, detect_w = layout.detect_size
    assert max(layout.detect_size) == min(max(size), config.max_input_side)
    assert layout.levels[0].scale == pytest.approx(PNET_CELL / config.min_face_size)
    for level, following in zip(layout.levels, layout.levels[1:]):
        assert following.scale == pytest.approx(level.scale * config.scale_factor)
    for level in layout.levels:
        assert (level.width, level.height) == (int(detect_w * level.scale + 1), int(detect_h * level.scale + 1))
        assert min(level.width, level.height) > PNET_CELL
    assert min(detect_h, detect_w) * layout.levels[-1].scale * config.scale_factor < PNET_CELL


def test_layout_is_computed_once_per_frame_size_and_config():
    assert pyramid_layout(480, 640, DetectorConfig()) is pyramid_layout(480, 640, DetectorConfig())
    assert pyramid_layout(480, 640, DetectorConfig(min_face_size=80)).canvas_size != \
        pyramid_layout(480, 640, DetectorConfig()).canvas_size
    assert pyramid_layout(30, 30, DetectorConfig()).levels == ()


def test_packed_canvas_holds_each_level_image():
    frame = data.astronaut()
    layout = pyramid_layout(512, 512, DetectorConfig())
    canvas = pack_pyramid(frame, layout)
    assert canvas.shape == (*layout.canvas_size, 3)
    for level, image in zip(layout.levels, level_images(Octaves(frame), layout)):
        np.testing.assert_array_equal(canvas[level.y:level.y + level.height, level.x:level.x + level.width], image)
    with pytest.raises(ValueError, match="layout is for"):
        pack_pyramid(frame[:500], layout)


def all_cells(detector, frame):
    """P-Net's every cell (threshold 0, so no cell is near a threshold) per level."""
    layout = pyramid_layout(frame.shape[0], frame.shape[1], detector.config)
    return layout, detector.pnet_candidates(Octaves(frame), layout)


@pytest.fixture(scope="module")
def every_cell_detectors():
    config = DetectorConfig(thresholds=(0.0, 0.7, 0.7))
    with MtcnnDetector(config=config) as packed, MtcnnDetector(config=DetectorConfig(
            thresholds=(0.0, 0.7, 0.7), packed=False)) as levels:
        yield packed, levels


def test_packed_pnet_cells_equal_level_by_level(every_cell_detectors, clip_frames):
    packed, levels = every_cell_detectors
    for frame in [data.astronaut(), clip_frames[2]]:
        layout, packed_cells = all_cells(packed, frame)
        _, level_cells = all_cells(levels, frame)
        for level, a, b in zip(layout.levels, packed_cells, level_cells):
            assert len(a) == len(b) == level.cells[0] * level.cells[1]
            np.testing.assert_array_equal(a[:, :4], b[:, :4])
            np.testing.assert_allclose(a[:, 4:], b[:, 4:], atol=1e-4)


@pytest.mark.parametrize("sessions", [2, 3])
def test_pnet_in_bands_gives_the_whole_canvas_cells(every_cell_detectors, clip_frames, sessions):
    whole = every_cell_detectors[0]
    runners = {role: OnnxRunner(MODELS / f"mtcnn_{role}.onnx", sessions=sessions) for role in ("pnet", "rnet", "onet")}
    with MtcnnDetector(config=whole.config, runners=runners) as banded:
        for frame in [data.astronaut(), clip_frames[2]]:
            layout, expected = all_cells(whole, frame)
            _, cells = all_cells(banded, frame)
            for a, b in zip(cells, expected):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
            assert [f.box.tolist() for f in banded.detect(frame)] == [f.box.tolist() for f in whole.detect(frame)]


def test_pnet_bands_go_in_one_call_stacked_on_the_batch_axis():
    class Banded(CountingRunner):
        concurrency = 3

        def run(self, inputs):
            self.shapes = [a.shape for a in inputs.values()]
            return super().run(inputs)

    runners = {"pnet": Banded(MODELS / "mtcnn_pnet.onnx")}
    detector = MtcnnDetector(runners=runners)
    detector.detect(data.astronaut())
    canvas_h, canvas_w = pyramid_layout(512, 512, detector.config).canvas_size
    rows = (canvas_h - PNET_CELL) // PNET_STRIDE + 1
    band_h = PNET_STRIDE * (-(-rows // 3) - 1) + PNET_CELL
    assert runners["pnet"].calls == 1
    assert runners["pnet"].shapes == [(3, 3, band_h, canvas_w)]
    assert band_h < canvas_h


def test_cells_map_back_to_their_window_in_the_frame(every_cell_detectors):
    frame = data.astronaut()
    layout, cells = all_cells(every_cell_detectors[0], frame)
    level, boxes = layout.levels[1], cells[1]
    rows, cols = level.cells
    sx, sy = level.width / 512, level.height / 512
    last = (rows - 1) * PNET_STRIDE, (cols - 1) * PNET_STRIDE
    np.testing.assert_allclose(boxes[0, :4], [0, 0, PNET_CELL / sx, PNET_CELL / sy])
    np.testing.assert_allclose(boxes[-1, :4], [last[1] / sx, last[0] / sy, (last[1] + PNET_CELL) / sx,
                                               (last[0] + PNET_CELL) / sy])
    assert boxes[-1, 2] <= 512 and boxes[-1, 3] <= 512, "a kept cell's window reaches past its level"


# --- resampling -----------------------------------------------------------------------------------

def test_level_images_are_close_to_area_resampling():
    frame = data.astronaut()
    for width, height in [(300, 300), (153, 153), (37, 37)]:
        expected = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(Octaves(frame).resize(width, height) - expected).mean() < 2.5


def test_crops_are_close_to_area_resampling():
    frame = data.astronaut()
    boxes = np.array([[180, 61, 268, 149], [100, 100, 400, 400], [20, 30, 40, 50]], float)
    patches, cut = Octaves(frame).crops(boxes, 24)
    for patch, (x1, y1, x2, y2) in zip(patches, boxes.astype(int)):
        expected = cv2.resize(frame[y1:y2, x1:x2], (24, 24), interpolation=cv2.INTER_AREA).astype(float)
        assert np.abs(patch - expected).mean() < 4
    np.testing.assert_array_equal(cut[[0, 2]], boxes[[0, 2]], err_msg="whole-pixel boxes cut from the frame move")
    np.testing.assert_allclose(cut[1], boxes[1], atol=2, err_msg="a box cut from an octave snaps to its grid")


def test_crops_read_zero_outside_the_frame():
    frame = np.full((100, 100, 3), 200, np.uint8)
    patches, _ = Octaves(frame).crops(np.array([[-20, -20, 40, 40], [150, 150, 210, 210]], float), 24)
    corner, outside = patches.astype(int)
    assert corner[:7].max() == 0 and corner[:, :7].max() == 0  # 20 of 60 px left of and above the frame
    assert corner[9:, 9:].min() == 200
    assert outside.max() == 0
