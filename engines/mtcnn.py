"""MTCNN face detector: P-Net -> R-Net -> O-Net over a packed image pyramid.

The pyramid levels are packed into one canvas whose layout depends only on the
frame size and the config, so P-Net runs once per frame on a fixed shape (what
a TensorRT engine and its INT8 calibration need) instead of once per level.

Frames larger than max_input_side are detected as if downscaled to fit it: the
pyramid is planned for that size (so the cost is bounded whatever the camera),
while levels and crops are still resampled from the full frame and all boxes are
in frame pixels. Coordinates are continuous pixel edges: a box (x1, y1, x2, y2)
covers x1 <= x < x2, so its width is x2 - x1 and pixel i spans [i, i + 1).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engines.errors import ImageError, ModelError
from engines.face import Face
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, find_card
from engines.runner import Runner, open_runner

PNET_STRIDE = 2  # output cell step in level pixels
PNET_CELL = 12  # receptive field of one output cell in level pixels
NMS_METHODS = ("union", "min")


@dataclass(frozen=True)
class Nms:
    """Greedy NMS: overlap is IoU ('union') or intersection over the smaller area ('min')."""

    threshold: float
    method: str = "union"

    def __post_init__(self) -> None:
        if self.method not in NMS_METHODS:
            raise ValueError(f"Nms.method = {self.method!r}: expected one of {NMS_METHODS}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Nms.threshold = {self.threshold}: expected 0..1")


@dataclass(frozen=True)
class DetectorConfig:
    min_face_size: float = 40.0  # pixels of the detection frame (the frame itself up to max_input_side)
    scale_factor: float = 0.709  # between pyramid levels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probability
    pnet_level_nms: Nms = field(default_factory=lambda: Nms(0.5))
    pnet_nms: Nms = field(default_factory=lambda: Nms(0.7))
    rnet_nms: Nms = field(default_factory=lambda: Nms(0.7))
    onet_nms: Nms = field(default_factory=lambda: Nms(0.7, "min"))
    max_input_side: int = 1280  # longest side of the detection frame
    packed: bool = True  # one P-Net call on the packed pyramid; False runs level by level

    def __post_init__(self) -> None:
        # A tuple even when read from YAML as a list, so the config can key the layout cache.
        object.__setattr__(self, "thresholds", tuple(self.thresholds))
        if self.min_face_size <= 0:
            raise ValueError(f"min_face_size = {self.min_face_size}: expected > 0")
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"scale_factor = {self.scale_factor}: expected strictly between 0 and 1")
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds = {self.thresholds}: expected three probabilities")
        if self.max_input_side < PNET_CELL:
            raise ValueError(f"max_input_side = {self.max_input_side}: expected >= {PNET_CELL}")


# --- pyramid layout -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One pyramid level: the frame resized to width x height, placed at (x, y) on the canvas."""

    scale: float  # nominal level pixels per detection-frame pixel
    x: int  # canvas position, even so level cells line up with P-Net's stride-2 grid
    y: int
    width: int
    height: int

    @property
    def cells(self) -> tuple[int, int]:
        """Rows and columns of P-Net cells whose 12x12 window lies wholly inside the level."""
        return ((self.height - PNET_CELL) // PNET_STRIDE + 1,
                (self.width - PNET_CELL) // PNET_STRIDE + 1)


@dataclass(frozen=True)
class PyramidLayout:
    frame_size: tuple[int, int]  # height, width of the frame given to detect()
    detect_size: tuple[int, int]  # height, width of the detection frame the pyramid is planned for
    canvas_size: tuple[int, int]  # height, width of P-Net's packed input
    levels: tuple[Level, ...]


@functools.lru_cache(maxsize=32)
def pyramid_layout(height: int, width: int, config: DetectorConfig = DetectorConfig()) -> PyramidLayout:
    """Where each pyramid level of a height x width frame goes on P-Net's packed canvas.

    Depends only on its arguments, so calibration and TensorRT engine builds can
    reproduce the exact P-Net input for a camera resolution: the shape is
    (1, 3, *layout.canvas_size), and card.preprocess(pack_pyramid(rgb, layout)[None])
    is the tensor the detector feeds P-Net for that frame.
    """
    detect_h, detect_w = _detection_size(height, width, config.max_input_side)
    sizes = _level_sizes(detect_h, detect_w, config.min_face_size, config.scale_factor)
    positions, canvas = _pack([(_even(w), _even(h)) for _, w, h in sizes])
    levels = tuple(Level(scale, x, y, w, h) for (scale, w, h), (x, y) in zip(sizes, positions))
    return PyramidLayout((height, width), (detect_h, detect_w), canvas, levels)


def _detection_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    ratio = max_side / max(height, width)
    if ratio >= 1.0:
        return height, width
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def _level_sizes(height: int, width: int, min_face: float, factor: float) -> list[tuple[float, int, int]]:
    """(scale, width, height) of each level, largest first; sizes rounded as facenet-pytorch does."""
    sizes = []
    scale = PNET_CELL / min_face
    while min(height, width) * scale >= PNET_CELL:
        sizes.append((scale, int(width * scale + 1), int(height * scale + 1)))
        scale *= factor
    return sizes


def _even(n: int) -> int:
    return n + n % 2


def _pack(footprints: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Positions of (width, height) rectangles, in order, and the (height, width) of the canvas.

    Tries canvas widths from the widest level to all levels side by side and keeps
    the smallest canvas area, since P-Net's cost is proportional to it. Levels may
    touch: cells whose window crosses into a neighbour are discarded, and with even
    sizes and positions every cell wholly inside a level sees exactly what it would
    see on that level alone, so padding between levels would only add cost.
    """
    if not footprints:
        return [], (0, 0)
    widest = max(w for w, _ in footprints)
    total = sum(w for w, _ in footprints)
    step = max(2, _even((total - widest) // 256))  # bounds the search for very deep pyramids
    best = None
    for canvas_w in range(widest, total + 1, step):
        positions, canvas_h = _skyline(footprints, canvas_w)
        area = canvas_w * canvas_h
        if best is None or area < best[0]:
            best = (area, positions, (canvas_h, canvas_w))
    return best[1], best[2]


def _skyline(footprints: list[tuple[int, int]], canvas_w: int) -> tuple[list[tuple[int, int]], int]:
    """Bottom-left skyline packing into a strip canvas_w wide; returns positions and used height."""
    skyline = [(0, canvas_w, 0)]  # segments (x, width, top), left to right
    positions = []
    for w, h in footprints:
        x, y = _lowest_fit(skyline, w, canvas_w)
        positions.append((x, y))
        skyline = _raise(skyline, x, w, y + h)
    return positions, max(top for _, _, top in skyline)


def _lowest_fit(skyline: list[tuple[int, int, int]], w: int, canvas_w: int) -> tuple[int, int]:
    """The left edge and resting height of the lowest place a w-wide rectangle fits (leftmost on ties)."""
    best = None
    for x, _, _ in skyline:
        if x + w > canvas_w:
            break
        y = max(top for sx, sw, top in skyline if sx < x + w and sx + sw > x)
        if best is None or y < best[1]:
            best = (x, y)
    return best


def _raise(skyline: list[tuple[int, int, int]], x: int, w: int, top: int) -> list[tuple[int, int, int]]:
    """The skyline after a rectangle covers [x, x + w) up to top."""
    raised = []
    for sx, sw, stop in skyline:
        if sx < x:
            raised.append((sx, min(sw, x - sx), stop))
        if sx + sw > x + w:
            start = max(sx, x + w)
            raised.append((start, sx + sw - start, stop))
    raised.append((x, w, top))
    return sorted(raised)


def pack_pyramid(rgb: np.ndarray, layout: PyramidLayout) -> np.ndarray:
    """P-Net's packed input for a frame of layout.frame_size: HxWx3 uint8, before the card's normalising."""
    if rgb.shape[:2] != layout.frame_size:
        raise ValueError(f"frame is {rgb.shape[:2]} but the layout is for {layout.frame_size}")
    return _paste(level_images(Octaves(rgb), layout), layout)


def level_images(octaves: "Octaves", layout: PyramidLayout) -> list[np.ndarray]:
    """The whole frame resized to each level's size, largest first."""
    return [octaves.resize(level.width, level.height) for level in layout.levels]


def _paste(images: list[np.ndarray], layout: PyramidLayout) -> np.ndarray:
    # Padding is never inside a kept cell's window, so its value does not matter.
    canvas = np.zeros((*layout.canvas_size, 3), np.uint8)
    for level, image in zip(layout.levels, images):
        canvas[level.y:level.y + level.height, level.x:level.x + level.width] = image
    return canvas


# --- resampling ---------------------------------------------------------------------------------

class Octaves:
    """A frame and its successive 2:1 area halvings, each made when first needed.

    Every resize in the detector (pyramid levels, R-Net and O-Net crops) reads
    the smallest octave at least twice as fine as its target, resamples it
    bilinearly to twice the target (so every source pixel counts) and halves
    that. This approximates area averaging, the resampling (torch 'area') the
    nets were run with, as closely as cv2's INTER_AREA does (about 2 grey levels
    mean difference), at a cost that does not grow with the box: INTER_AREA takes
    about 2 ms per level from a VGA frame at fractional ratios but is nearly free at 2:1.
    """

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self._images = [frame]

    def resize(self, width: int, height: int) -> np.ndarray:
        """The whole frame resized to width x height."""
        frame_h, frame_w = self.frame.shape[:2]
        source, _, _ = self._source(width / frame_w, height / frame_h)
        return _halve(cv2.resize(source, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR))

    def crops(self, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """size x size patches of frame boxes (N x 4, non-empty), and the boxes actually cut.

        Each box is snapped to the pixel grid of the octave it is cut from, and the
        snapped box is returned so that the nets' offsets and landmarks refer to
        exactly what they saw. Outside the frame reads as zero, as in MTCNN.
        """
        large = np.empty((len(boxes), 2 * size, 2 * size, 3), np.uint8)
        cut = np.empty((len(boxes), 4))
        if not len(boxes):
            return large[:, :size, :size], cut
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            source, sx, sy = self._source(size / (x2 - x1), size / (y2 - y1))
            left, top = round(x1 * sx), round(y1 * sy)
            right, bottom = max(round(x2 * sx), left + 1), max(round(y2 * sy), top + 1)
            cv2.resize(_region(source, left, top, right, bottom), (2 * size, 2 * size), dst=large[k],
                       interpolation=cv2.INTER_LINEAR)
            cut[k] = left / sx, top / sy, right / sx, bottom / sy
        # Stacked, the patches halve in one call: 2x2 blocks never straddle two of them.
        return _halve(large.reshape(-1, 2 * size, 3)).reshape(-1, size, size, 3), cut

    def _source(self, scale_x: float, scale_y: float) -> tuple[np.ndarray, float, float]:
        """The smallest octave with at least twice the target scales, and its own scales."""
        frame_h, frame_w = self.frame.shape[:2]
        index = 0
        while True:
            height, width = self._images[index].shape[:2]
            if (width + 1) // 2 < 2 * scale_x * frame_w or (height + 1) // 2 < 2 * scale_y * frame_h:
                break
            if index + 1 == len(self._images):
                self._images.append(_halve(self._images[index]))
            index += 1
        image = self._images[index]
        return image, image.shape[1] / frame_w, image.shape[0] / frame_h


def _region(image: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """image[top:bottom, left:right], reading zero where that reaches outside the image."""
    height, width = image.shape[:2]
    if left >= 0 and top >= 0 and right <= width and bottom <= height:
        return image[top:bottom, left:right]
    inside = image[max(top, 0):max(min(bottom, height), 0), max(left, 0):max(min(right, width), 0)]
    if not inside.size:
        return np.zeros((bottom - top, right - left, 3), np.uint8)
    return cv2.copyMakeBorder(inside, max(-top, 0), max(bottom - height, 0), max(-left, 0), max(right - width, 0),
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def _halve(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if width % 2 or height % 2:  # cv2's fast 2:1 path needs even sizes
        image = cv2.resize(image, (width + width % 2, height + height % 2), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


# --- box arithmetic -----------------------------------------------------------------------------

NMS_MATRIX_MAX = 512  # up to this many boxes, all overlaps at once is faster than box by box


def nms(boxes: np.ndarray, scores: np.ndarray, overlap: Nms) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first.

    A box is dropped when its overlap with a kept, higher-scoring box exceeds the threshold.
    """
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order].astype(np.float64)
    matrix = _exceeds(ranked[:, None], ranked[None], overlap) if len(ranked) <= NMS_MATRIX_MAX else None
    alive = np.ones(len(ranked), bool)
    for i in range(len(ranked)):
        if alive[i]:
            row = matrix[i, i + 1:] if matrix is not None else _exceeds(ranked[i], ranked[i + 1:], overlap)
            alive[i + 1:] &= ~row
    return order[alive]


def _exceeds(a: np.ndarray, b: np.ndarray, overlap: Nms) -> np.ndarray:
    """Whether the overlap of boxes a and b (broadcast over leading axes) exceeds the threshold."""
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    base = area_a + area_b - inter if overlap.method == "union" else np.minimum(area_a, area_b)
    # Multiplying instead of dividing keeps zero-area boxes (0 > 0 is false) without a special case.
    return inter > overlap.threshold * base


def regress_boxes(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each edge by its offset times the box width (x) or height (y)."""
    size = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * size


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square on its longer side, keeping its centre (MTCNN's rerec)."""
    size = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True)
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


# --- the detector -------------------------------------------------------------------------------

@dataclass
class _Net:
    card: ModelCard
    runner: Runner

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by the card's logical names for a NHWC RGB uint8 batch."""
        outputs = self.runner.run({self.card.input_name: self.card.preprocess(images)})
        return {name: outputs[tensor] for name, tensor in self.card.outputs.items()}


class MtcnnDetector:
    """Finds faces in RGB frames with the MTCNN cascade.

    Nets come from the model cards in models_dir; pass `runners` ({'pnet', 'rnet',
    'onet'} -> Runner, e.g. TensorRT engines) to use other sessions for the same
    cards. The detector owns its runners and closes them in close(). threads and
    sessions are for the ONNX models it opens (see engines.onnx_runner.OnnxRunner).
    """

    def __init__(self, models_dir: str | Path = MODELS_DIR, config: DetectorConfig = DetectorConfig(),
                 runners: dict[str, Runner] | None = None, threads: int = 1, sessions: int = 1) -> None:
        self.config = config
        runners = dict(runners or {})
        nets = {}
        for role in ("pnet", "rnet", "onet"):
            card = find_card(Path(models_dir), role)
            nets[role] = _Net(card, runners.pop(role, None) or open_runner(card.model_path, threads, sessions))
        if runners:
            raise ModelError(f"unknown runner roles {sorted(runners)}: expected pnet, rnet, onet")
        self._pnet, self._rnet, self._onet = nets["pnet"], nets["rnet"], nets["onet"]

    def close(self) -> None:
        for net in (self._pnet, self._rnet, self._onet):
            net.runner.close()

    def __enter__(self) -> "MtcnnDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 RGB frame, highest score first, in frame pixels."""
        frame = _checked_frame(rgb)
        if min(frame.shape[:2]) < PNET_CELL:
            return []
        layout = pyramid_layout(frame.shape[0], frame.shape[1], self.config)
        if not layout.levels:  # the frame is smaller than min_face_size
            return []
        octaves = Octaves(frame)
        boxes = self.propose(octaves, layout)
        boxes = self.refine(octaves, boxes)
        boxes, scores, landmarks = self.output(octaves, boxes)
        return [Face(box=b.astype(np.float32), score=float(s), landmarks=m.astype(np.float32))
                for b, s, m in zip(boxes, scores, landmarks)]

    # The stages are public so tests and tools can look between them; all boxes are in frame pixels.

    def pnet_candidates(self, octaves: Octaves, layout: PyramidLayout) -> list[np.ndarray]:
        """Per level, the cells at or over P-Net's threshold: rows of (x1, y1, x2, y2, score, 4 offsets)."""
        maps = self._pnet_packed(octaves, layout) if self.config.packed else self._pnet_levels(octaves, layout)
        return [_cell_boxes(prob, reg, level, octaves.frame.shape, self.config.thresholds[0])
                for level, (prob, reg) in zip(layout.levels, maps)]

    def propose(self, octaves: Octaves, layout: PyramidLayout) -> np.ndarray:
        """Stage 1: square candidate boxes (N x 4) from P-Net after NMS and box regression."""
        per_level = [c[nms(c[:, :4], c[:, 4], self.config.pnet_level_nms)]
                     for c in self.pnet_candidates(octaves, layout)]
        cells = np.concatenate(per_level) if per_level else np.empty((0, 9))
        cells = cells[nms(cells[:, :4], cells[:, 4], self.config.pnet_nms)]
        return square_boxes(regress_boxes(cells[:, :4], cells[:, 5:9]))

    def refine(self, octaves: Octaves, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: the candidates R-Net keeps, after NMS and box regression, squared."""
        boxes = _non_empty(boxes)
        if not len(boxes):
            return boxes
        patches, boxes = octaves.crops(boxes, self._rnet.card.input_size[0])
        out = self._rnet.run(patches)
        scores = out["prob"][:, 1]
        keep = scores > self.config.thresholds[1]
        boxes, scores, offsets = boxes[keep], scores[keep], out["reg"][keep]
        keep = nms(boxes, scores, self.config.rnet_nms)
        return square_boxes(regress_boxes(boxes[keep], offsets[keep]))

    def output(self, octaves: Octaves, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-Net's final boxes (N x 4), scores (N) and landmarks (N x 5 x 2), best first."""
        boxes = _non_empty(boxes)
        if not len(boxes):
            return np.empty((0, 4)), np.empty(0), np.empty((0, 5, 2))
        patches, boxes = octaves.crops(boxes, self._onet.card.input_size[0])
        out = self._onet.run(patches)
        scores = out["prob"][:, 1]
        keep = scores > self.config.thresholds[2]
        boxes, scores = boxes[keep], scores[keep]
        landmarks = _landmarks(boxes, out["landmarks"][keep])
        boxes = regress_boxes(boxes, out["reg"][keep])
        keep = nms(boxes, scores, self.config.onet_nms)
        return boxes[keep], scores[keep], landmarks[keep]

    def _pnet_packed(self, octaves: Octaves, layout: PyramidLayout) -> list[tuple[np.ndarray, np.ndarray]]:
        """One P-Net call on the canvas, cut back into each level's (prob, reg) cell maps."""
        prob, reg = self._pnet_canvas(_paste(level_images(octaves, layout), layout))
        maps = []
        for level in layout.levels:
            rows, cols = level.cells
            r, c = level.y // PNET_STRIDE, level.x // PNET_STRIDE
            maps.append((prob[r:r + rows, c:c + cols], reg[:, r:r + rows, c:c + cols]))
        return maps

    def _pnet_canvas(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P-Net's face probability (rows x cols) and offsets (4 x rows x cols) for the canvas.

        The canvas goes in as horizontal bands stacked on the batch axis, as many
        as the runner computes side by side (one for TensorRT: the whole canvas),
        still one call. Bands start on even rows and overlap by the receptive
        field, so each band's cells are exactly the whole canvas's cells for its rows.
        """
        rows = (canvas.shape[0] - PNET_CELL) // PNET_STRIDE + 1
        bands = max(1, min(self._pnet.runner.concurrency, rows))
        band_rows = -(-rows // bands)
        starts = [min(k * band_rows, rows - band_rows) for k in range(bands)]
        height = PNET_STRIDE * (band_rows - 1) + PNET_CELL
        out = self._pnet.run(np.stack([canvas[PNET_STRIDE * s:PNET_STRIDE * s + height] for s in starts]))
        prob = np.empty((rows, out["prob"].shape[3]), out["prob"].dtype)
        reg = np.empty((4, rows, out["reg"].shape[3]), out["reg"].dtype)
        for band, start in enumerate(starts):
            prob[start:start + band_rows] = out["prob"][band, 1]
            reg[:, start:start + band_rows] = out["reg"][band]
        return prob, reg

    def _pnet_levels(self, octaves: Octaves, layout: PyramidLayout) -> list[tuple[np.ndarray, np.ndarray]]:
        """The classic way: one P-Net call per level, keeping the cells the packed canvas keeps."""
        maps = []
        for level, image in zip(layout.levels, level_images(octaves, layout)):
            out = self._pnet.run(image[None])
            rows, cols = level.cells
            maps.append((out["prob"][0, 1, :rows, :cols], out["reg"][0, :, :rows, :cols]))
        return maps


def _checked_frame(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise ImageError(f"expected an HxWx3 uint8 RGB numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 uint8 RGB frame, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ImageError(f"expected an HxWx3 uint8 RGB frame, got dtype {rgb.dtype}")
    return np.ascontiguousarray(rgb)


def _cell_boxes(prob: np.ndarray, reg: np.ndarray, level: Level, frame_shape: tuple[int, ...],
                threshold: float) -> np.ndarray:
    """Frame boxes of a level's cells at or over threshold, with score and offsets."""
    rows, cols = np.nonzero(prob >= threshold)
    # The level image spans the whole frame, so its true ratio (not the nominal scale) maps back.
    sx, sy = level.width / frame_shape[1], level.height / frame_shape[0]
    x, y = cols * PNET_STRIDE, rows * PNET_STRIDE
    return np.column_stack([x / sx, y / sy, (x + PNET_CELL) / sx, (y + PNET_CELL) / sy,
                            prob[rows, cols], reg[:, rows, cols].T]).astype(np.float64)


def _non_empty(boxes: np.ndarray) -> np.ndarray:
    # Regression can turn a box inside out; such a box has nothing to crop.
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _landmarks(boxes: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """O-Net's [x1..x5, y1..y5] fractions of the box -> N x 5 x 2 frame pixels."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    xs = boxes[:, 0:1] + relative[:, :5] * size[:, 0:1]
    ys = boxes[:, 1:2] + relative[:, 5:] * size[:, 1:2]
    return np.stack([xs, ys], axis=2)
