"""Model cards: the YAML beside each model that says how to feed and read it.

A new embedding model (an ArcFace 112x112 ONNX, say) is a new card, not new
code: input size, channel order, normalisation, alignment template, metric and
threshold all come from here. Likewise a liveness net: the crop around the face
box, which class is "live", how its score combines with the other liveness nets'
and the threshold on the combined score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engines.open_set import ImpostorTail

CARD_VERSION = 1
ROLES = ("pnet", "rnet", "onet", "embedder", "liveness")
METRICS = ("euclidean", "cosine")
# How the liveness nets of a folder combine: "mean", the mean over the nets of each one's probability of
# its live class (upstream Silent-Face-Anti-Spoofing sums the nets' softmaxes; the mean keeps it in [0, 1]).
LIVENESS_COMBINE = ("mean",)


class ModelCardError(ValueError):
    """A model card is missing a key or has a value outside what is allowed."""


@dataclass(frozen=True)
class Alignment:
    chip_size: tuple[int, int]  # width, height
    template: np.ndarray  # 5x2 landmark positions in chip pixels


@dataclass(frozen=True)
class Liveness:
    crop_scale: float  # the face box scaled this much around its centre (kept inside the frame) is the input
    live_class: int  # index of the "live" class in the output probabilities
    combine: str  # one of LIVENESS_COMBINE: how this net's live probability joins the other nets'


@dataclass(frozen=True)
class ModelCard:
    path: Path
    id: str
    role: str
    file: str
    input_name: str
    input_size: tuple[int, int] | None  # width, height; None where dynamic
    channel_order: str
    mean: np.ndarray  # per channel, subtracted first
    scale: float  # multiplied after the mean is subtracted
    outputs: dict[str, str]
    metric: str | None
    normalize: bool
    # Embed each chip and its horizontal mirror and average the two (embedding.flip_average, default false).
    flip_average: bool
    # embedder: the largest distance that matches; liveness: the least combined live score judged live.
    threshold: float | None
    threshold_source: str | None
    embedding_dim: int | None
    alignment: Alignment | None
    liveness: Liveness | None
    source: dict[str, str]
    licence: str
    # embedder: the measured impostor distance tail (embedding.impostor_tail) that sets the door's threshold
    # for its gallery's size (engines/open_set.py); None where the card has not measured one.
    impostor_tail: ImpostorTail | None = None
    # embedder: the measured per-image TPIR at thresholds (embedding.tpir_at_threshold: [[distance, tpir], ...],
    # ascending), so check-config can say what the threshold in force costs; empty where not measured.
    tpir_at_threshold: tuple[tuple[float, float], ...] = ()
    tpir_source: str | None = None

    @property
    def model_path(self) -> Path:
        return self.path.parent / self.file

    def preprocess(self, images_rgb: np.ndarray) -> np.ndarray:
        """NHWC RGB uint8 (or float) -> normalised NCHW float32 in the card's channel order."""
        if self.channel_order == "BGR":
            images_rgb = images_rgb[..., ::-1]
        # Transposing the small uint8 array first makes the float arithmetic run on
        # contiguous planes: same values, about ten times faster on a P-Net canvas.
        batch = np.ascontiguousarray(images_rgb.transpose(0, 3, 1, 2)).astype(np.float32)
        batch -= self.mean[:, None, None]
        batch *= np.float32(self.scale)
        return batch


def load_card(path: Path) -> ModelCard:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ModelCardError(f"{path}: not valid YAML: {error}") from error
    return _Reader(path, raw).card()


def load_cards(models_dir: Path) -> list[ModelCard]:
    return [load_card(p) for p in sorted(Path(models_dir).glob("*.yaml"))]


def cards_of(models_dir: Path, role: str) -> list[ModelCard]:
    """Every card for a role in a folder of models (several embedders may be installed side by side)."""
    return [card for card in load_cards(models_dir) if card.role == role]


def find_card(models_dir: Path, role: str) -> ModelCard:
    """The card for a role (e.g. 'pnet') in a folder of models: the only one, or, where the folder
    holds several, the one its DEFAULTS file names for the role."""
    matches = cards_of(models_dir, role)
    if len(matches) > 1:
        chosen = read_defaults(models_dir).get(role)
        matches = [card for card in matches if card.id == chosen]
        if not matches:
            raise ModelCardError(f"{models_dir}: several model cards have role {role!r} and "
                                 f"{Path(models_dir) / DEFAULTS_FILE} names none of them for it"
                                 f"{'' if chosen is None else f' (it names {chosen!r})'}")
    if len(matches) != 1:
        raise ModelCardError(f"{models_dir}: expected a model card with role {role!r}, found none")
    return matches[0]


DEFAULTS_FILE = "DEFAULTS"


def read_defaults(models_dir: Path) -> dict[str, str]:
    """Role -> card id from models_dir/DEFAULTS ('<role>  <card id>' lines, # comments); {} without it."""
    path = Path(models_dir) / DEFAULTS_FILE
    if not path.exists():
        return {}
    defaults = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ROLES:
            raise ModelCardError(f"{path} line {number}: expected '<role>  <card id>' with a role of "
                                 f"{list(ROLES)}, got {line!r}")
        defaults[parts[0]] = parts[1]
    return defaults


class _Reader:
    """Reads values by key path so every error names the key, the value and what is allowed."""

    KEYS = {"card_version", "id", "role", "file", "input", "outputs", "embedding", "alignment", "liveness",
            "source", "licence"}
    # The section each role's own fields live in (threshold and threshold_source among them).
    SECTIONS = {"embedder": "embedding", "liveness": "liveness"}

    def __init__(self, path: Path, raw: Any) -> None:
        self.path = Path(path)
        if not isinstance(raw, dict):
            raise ModelCardError(f"{path}: a model card must be a mapping, got {type(raw).__name__}")
        self.raw = raw
        unknown = sorted(set(raw) - self.KEYS)
        if unknown:
            self.fail(unknown[0], raw[unknown[0]], f"one of {sorted(self.KEYS)}")

    def fail(self, key: str, value: Any, allowed: str) -> None:
        raise ModelCardError(f"{self.path}: {key} = {value!r} is not allowed: expected {allowed}")

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
        node: Any = self.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and not required:
            return None
        if not isinstance(node, kind) or isinstance(node, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(key, node, f"a {names}")
        return node

    def numbers(self, key: str, shape: tuple[int, ...], required: bool = True) -> np.ndarray | None:
        value = self.get(key, (list, int, float), required)
        if value is None:
            return None
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != shape and not (shape == (3,) and array.shape == ()):
            self.fail(key, value, f"numbers of shape {list(shape)}")
        return np.broadcast_to(array, shape).copy()

    def card(self) -> ModelCard:
        version = self.get("card_version", int)
        if version != CARD_VERSION:
            self.fail("card_version", version, f"{CARD_VERSION}")
        role = self.get("role", str)
        if role not in ROLES:
            self.fail("role", role, f"one of {list(ROLES)}")
        order = self.get("input.channel_order", str)
        if order not in ("RGB", "BGR"):
            self.fail("input.channel_order", order, "RGB or BGR")
        if self.get("input.layout", str) != "NCHW":
            self.fail("input.layout", self.raw["input"]["layout"], "NCHW")
        size = self.numbers("input.size", (2,), required=role != "pnet")
        scale = self.get("input.scale", (int, float))
        if scale <= 0:
            self.fail("input.scale", scale, "a positive number")
        outputs = self.get("outputs", dict)
        embedder = role == "embedder"
        section = self.SECTIONS.get(role)
        return ModelCard(
            path=self.path, id=self.get("id", str), role=role, file=self.get("file", str),
            input_name=self.get("input.name", str),
            input_size=None if size is None else (int(size[0]), int(size[1])),
            channel_order=order, mean=self.numbers("input.mean", (3,)), scale=float(scale),
            outputs={str(k): str(v) for k, v in outputs.items()},
            metric=self._metric() if embedder else None,
            normalize=bool(self.get("embedding.normalize", bool)) if embedder else False,
            flip_average=bool(self.get("embedding.flip_average", bool, required=False)) if embedder else False,
            threshold=self._threshold(section) if section else None,
            threshold_source=self.get(f"{section}.threshold_source", str) if section else None,
            embedding_dim=self.get("embedding.dim", int) if embedder else None,
            alignment=self._alignment() if embedder else None,
            liveness=self._liveness() if role == "liveness" else None,
            source={str(k): str(v) for k, v in self.get("source", dict).items()},
            licence=self.get("licence", str),
            impostor_tail=self._impostor_tail() if embedder else None,
            tpir_at_threshold=self._tpir_at_threshold() if embedder else (),
            tpir_source=self.get("embedding.tpir_source", str, required=False) if embedder else None)

    def _tpir_at_threshold(self) -> tuple[tuple[float, float], ...]:
        raw = self.get("embedding.tpir_at_threshold", list, required=False)
        if raw is None:
            return ()
        pairs = self.numbers("embedding.tpir_at_threshold", (len(raw), 2))
        if np.any(np.diff(pairs[:, 0]) <= 0) or np.any((pairs[:, 1] < 0) | (pairs[:, 1] > 1)):
            self.fail("embedding.tpir_at_threshold", raw, "[distance, tpir] pairs with ascending distances and "
                                                          "rates from 0 to 1")
        return tuple((round(float(t), 6), round(float(r), 6)) for t, r in pairs)  # float32 in numbers()

    def _impostor_tail(self) -> ImpostorTail | None:
        raw = self.get("embedding.impostor_tail", dict, required=False)
        try:
            return None if raw is None else ImpostorTail.from_card(raw, "embedding.impostor_tail")
        except ValueError as error:
            raise ModelCardError(f"{self.path}: {error}") from None

    def _metric(self) -> str:
        metric = self.get("embedding.metric", str)
        if metric not in METRICS:
            self.fail("embedding.metric", metric, f"one of {list(METRICS)}")
        return metric

    def _threshold(self, section: str) -> float:
        threshold = float(self.get(f"{section}.threshold", (int, float)))
        if section == "liveness" and not 0.0 <= threshold <= 1.0:
            self.fail("liveness.threshold", threshold, "a number from 0 to 1 (a combined live probability)")
        return threshold

    def _liveness(self) -> Liveness:
        scale = self.get("liveness.crop_scale", (int, float))
        if scale <= 0:
            self.fail("liveness.crop_scale", scale, "a positive number")
        live = self.get("liveness.live_class", int)
        if live < 0:
            self.fail("liveness.live_class", live, "a class index >= 0")
        combine = self.get("liveness.combine", str)
        if combine not in LIVENESS_COMBINE:
            self.fail("liveness.combine", combine, f"one of {list(LIVENESS_COMBINE)}")
        return Liveness(crop_scale=float(scale), live_class=live, combine=combine)

    def _alignment(self) -> Alignment:
        size = self.numbers("alignment.chip_size", (2,))
        return Alignment(chip_size=(int(size[0]), int(size[1])),
                         template=self.numbers("alignment.template", (5, 2)))
