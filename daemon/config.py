"""The daemon's YAML config: one file, validated at start, errors naming the key path.

Each section is parsed by the module that owns the concept (camera by the frame
sources, door by the door, policy by the access policy); this module composes
them and owns the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daemon.decision import DecisionConfig
from daemon.door import DoorConfig
from daemon.fleet.settings import MqttSettings, parse_mqtt
from daemon.metrics import MetricsSettings, parse_metrics
from daemon.panel.output import PanelSettings, parse_panel
from daemon.policy import Policy
from daemon.settings import ConfigError, Section
from daemon.sources import SourceConfig, parse_source_config
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, ModelCardError, cards_of, find_card, load_card
from engines.mtcnn import DetectorConfig
from engines.quality import QualityLimits

DEFAULT_PATH = Path("/etc/facegate/config.yaml")
EXAMPLE_PATH = Path(__file__).resolve().parent / "config.example.yaml"
SECTIONS = {"camera", "detector", "embedder", "quality", "gallery", "decision", "liveness", "door", "policy",
            "events", "logging", "watchdog", "mqtt", "metrics", "panel"}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Models:
    models_dir: Path
    engines: dict[str, Path]  # role -> TensorRT engine replacing that role's ONNX model
    threads: int  # ONNX Runtime intra-op threads per session
    sessions: int  # ONNX Runtime sessions per model sharing each batch (engines.onnx_runner)


@dataclass(frozen=True)
class GallerySettings:
    path: Path
    index: str  # 'flat' (exact) or an approximate kind
    refresh_seconds: float


@dataclass(frozen=True)
class LivenessSettings:
    """Presentation-attack detection in the door's decision (daemon/decision.py: the median live
    score of the frames that voted for the person must reach threshold)."""

    enabled: bool
    threshold: float | None  # None only when disabled and no liveness card is installed
    models_dir: Path | None  # the folder whose liveness cards (and models) score faces
    threshold_source: str  # where threshold came from, for the log
    engines: dict[str, Path] = field(default_factory=dict)  # card id -> TensorRT engine run instead of its ONNX

    @property
    def live_threshold(self) -> float | None:
        """What the Decider checks: the threshold, or None when liveness is off."""
        return self.threshold if self.enabled else None


@dataclass(frozen=True)
class EventSettings:
    path: Path
    max_rows: int
    max_age_days: float
    snapshots: bool
    unknown_log_interval: float  # seconds between two logged unknown faces


@dataclass(frozen=True)
class Config:
    path: Path | None
    camera: SourceConfig
    models: Models
    detector: DetectorConfig
    embedder: ModelCard
    quality: QualityLimits
    gallery: GallerySettings
    decision: DecisionConfig
    liveness: LivenessSettings
    tracker_iou: float
    track_max_age: float
    door: DoorConfig
    policy: Policy
    events: EventSettings
    log_level: str
    stall_seconds: float
    status_seconds: float
    mqtt: MqttSettings | None = None  # None: no broker (the default)
    metrics: MetricsSettings | None = None  # None: no metrics endpoint (the default)
    panel: PanelSettings = PanelSettings()  # the relay alone (the default); daemon/panel/output.py


def load(path: str | Path) -> Config:
    path = Path(path)
    return parse(read_yaml(path), path)


def read_yaml(path: Path) -> Any:
    """A config file's YAML, unvalidated; ConfigError when it cannot be read or parsed, or repeats a key."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from error
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as duplicate:
        raise ConfigError(f"{path}: {duplicate}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error


class _DuplicateKey(Exception):
    """A mapping of the config names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key written twice in one mapping is refused: YAML's last-one-wins would
    silently drop the first value, e.g. a second `relay:` under `door:` replacing the pin."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._check(node, "", set())
        return self.construct_document(node)

    def _check(self, node: yaml.Node, path: str, checked: set[int]) -> None:
        if id(node) in checked:  # an alias: checked where its anchor is (and it may refer to itself)
            return
        checked.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check(item, f"{path}[{index}]", checked)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults` merges a mapping in; a list as a key is no config key anyway
                key = self.construct_object(key_node)
                where = f"{path}.{key}" if path else str(key)
                if key in seen:
                    raise _DuplicateKey(f"{where} is given twice, at lines {seen[key].start_mark.line + 1} and "
                                        f"{key_node.start_mark.line + 1}: keep one (YAML would silently use the "
                                        f"last)")
                seen[key] = key_node
                self._check(value_node, where, checked)


def parse(raw: Any, path: Path | None = None) -> Config:
    top = Section(raw, "", SECTIONS)
    state = Path(top.section("gallery", {"path", "index", "refresh_seconds"}).get("path", str, "/var/lib/facegate/gallery.db")).parent
    models = _models(top.section("detector", _DETECTOR_KEYS))
    embedder = _embedder(top.section("embedder", {"card"}), models)
    decision = top.section("decision", {"threshold", "max_fpir", "margin", "k", "n", "tracker_iou", "track_max_age"})
    logging_section = top.section("logging", {"level", "status_seconds"})
    watchdog = top.section("watchdog", {"stall_seconds"})
    door = DoorConfig.from_config(top.raw.get("door"), "door")
    return Config(
        path=path,
        camera=parse_source_config(top.raw.get("camera"), "camera"),
        models=models,
        detector=_detector(top.section("detector", _DETECTOR_KEYS)),
        embedder=embedder,
        quality=_quality(top.section("quality", set(QualityLimits.__dataclass_fields__))),
        gallery=_gallery(top.section("gallery", {"path", "index", "refresh_seconds"}), state),
        decision=_decision(decision),
        liveness=_liveness(top.section("liveness", {"enabled", "threshold", "models_dir", "engines"}), models),
        tracker_iou=decision.number("tracker_iou", 0.3, low=0.01, high=1),
        track_max_age=decision.number("track_max_age", 1.0, low=0.05, high=60),
        door=door,
        policy=Policy.from_config(top.raw.get("policy"), "policy"),
        events=_events(top.section("events", {"path", "max_rows", "max_age_days", "snapshots", "unknown_log_interval"}), state),
        log_level=logging_section.choice("level", LOG_LEVELS, "INFO"),
        status_seconds=logging_section.number("status_seconds", 10.0, low=0.5, high=3600),
        stall_seconds=watchdog.number("stall_seconds", 5.0, low=0.5, high=600),
        mqtt=_mqtt(top.raw.get("mqtt"), door.name),
        metrics=parse_metrics(top.raw.get("metrics")),
        panel=parse_panel(top.raw.get("panel")),
    )


def _mqtt(raw: Any, door_name: str) -> MqttSettings | None:
    """The mqtt section, with the front desk's public key read now so check-config catches a bad one."""
    settings = parse_mqtt(raw, door_name)
    if settings is not None and settings.gallery_public_key is not None:
        from daemon.bundles import BundleError, load_public_key

        try:
            load_public_key(settings.gallery_public_key)
        except BundleError as error:
            raise ConfigError(f"mqtt.gallery_public_key = {str(settings.gallery_public_key)!r} is not allowed: "
                              f"{error}") from None
    return settings


_DETECTOR_KEYS = {"models_dir", "engines", "threads", "sessions", "min_face_size", "scale_factor", "thresholds",
                  "max_input_side"}
_ROLES = ("pnet", "rnet", "onet", "embedder")


def _decision(section: Section) -> DecisionConfig:
    try:
        # threshold null (the default): the one that holds max_fpir for the gallery's size (daemon/decision.py).
        return DecisionConfig(
            threshold=section.number("threshold", None, low=1e-6),
            max_fpir=section.number("max_fpir", 1e-3, low=1e-9, high=0.5),
            margin=section.number("margin", 0.05, low=0),
            k=section.number("k", 3, low=1, high=100, integer=True),
            n=section.number("n", 5, low=1, high=100, integer=True))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _liveness(section: Section, models: Models) -> LivenessSettings:
    """liveness.models_dir (null: detector.models_dir where it holds liveness cards, else the shipped
    engines/models); threshold (null: the cards' liveness.threshold)."""
    enabled = section.get("enabled", bool, True)
    given = section.get("models_dir", str, None)
    if given is not None:
        folder = Path(given)
        if not folder.is_dir():
            section.fail("models_dir", given, "an existing folder holding the liveness models and their cards")
        cards = _liveness_cards(section, folder)
        if not cards and enabled:
            section.fail("models_dir", given, "a folder with model cards of role 'liveness' (engines/models has "
                                              "them), or liveness.enabled: false")
    else:
        folder = models.models_dir
        cards = _liveness_cards(section, folder)
        if not cards and folder.resolve() != MODELS_DIR.resolve():
            # A models folder of its own from before liveness: the shipped nets judge its faces.
            folder, cards = MODELS_DIR, _liveness_cards(section, MODELS_DIR)
        if not cards and enabled:
            section.fail("enabled", enabled, f"false: neither detector.models_dir ({models.models_dir}) nor "
                                              f"{MODELS_DIR} holds model cards of role 'liveness'")
    thresholds = {card.threshold for card in cards}
    if len(thresholds) > 1:
        raise ConfigError(f"liveness: the liveness cards in {folder} disagree on liveness.threshold "
                          f"({', '.join(f'{c.path.name} {c.threshold}' for c in cards)}): fix the cards")
    default = cards[0].threshold if cards else None
    threshold = section.number("threshold", default, low=0, high=1)
    source = ("liveness.threshold in the config" if section.raw.get("threshold") is not None
              else f"the liveness cards' liveness.threshold ({', '.join(c.path.name for c in cards)})" if cards
              else "none: no liveness card installed")
    return LivenessSettings(enabled, threshold, folder if cards else None, source, _liveness_engines(section, cards))


def _liveness_engines(section: Section, cards: list[ModelCard]) -> dict[str, Path]:
    """liveness.engines: {<liveness card id>: <TensorRT .engine>}, one per net built by tools/build_engine.py."""
    raw = section.get("engines", dict, {})
    ids = sorted(card.id for card in cards)
    engines = {}
    for card_id, value in raw.items():
        key = f"engines.{card_id}"
        if card_id not in ids:
            section.fail(key, value, f"a key that is a liveness card id: one of {ids}")
        if not isinstance(value, str) or Path(value).suffix not in (".engine", ".plan"):
            section.fail(key, value, "a TensorRT .engine or .plan file built by tools/build_engine.py")
        engines[card_id] = Path(value)
    return engines


def _liveness_cards(section: Section, folder: Path) -> list[ModelCard]:
    try:
        return cards_of(folder, "liveness")
    except (ModelCardError, OSError) as error:
        raise ConfigError(f"{section.path}: the liveness model cards in {folder} cannot be read: {error}") from error


def _models(detector: Section) -> Models:
    models_dir = Path(detector.get("models_dir", str, str(MODELS_DIR)))
    if not models_dir.is_dir():
        detector.fail("models_dir", str(models_dir), "an existing folder of ONNX models and model cards")
    engines_section = detector.section("engines", set(_ROLES))
    engines = {}
    for role in _ROLES:
        value = engines_section.get(role, str, None)
        if value is not None:
            if Path(value).suffix not in (".engine", ".plan"):
                engines_section.fail(role, value, "a TensorRT .engine or .plan file built by tools/build_engine.py")
            engines[role] = Path(value)
    return Models(models_dir, engines, detector.number("threads", 1, low=1, high=64, integer=True),
                  detector.number("sessions", 2, low=1, high=64, integer=True))


def _detector(detector: Section) -> DetectorConfig:
    thresholds = detector.get("thresholds", list, [0.6, 0.7, 0.7])
    if len(thresholds) != 3 or not all(isinstance(t, (int, float)) and 0 < t < 1 for t in thresholds):
        detector.fail("thresholds", thresholds, "three probabilities between 0 and 1 (P-Net, R-Net, O-Net)")
    return DetectorConfig(
        min_face_size=detector.number("min_face_size", 40.0, low=12, high=2000),
        scale_factor=detector.number("scale_factor", 0.709, low=0.3, high=0.95),
        thresholds=tuple(float(t) for t in thresholds),
        max_input_side=detector.number("max_input_side", 1280, low=64, high=8192, integer=True))


def _embedder(section: Section, models: Models) -> ModelCard:
    card_path = section.get("card", str, None)
    try:
        return load_card(Path(card_path)) if card_path else find_card(models.models_dir, "embedder")
    except (ModelCardError, OSError) as error:
        raise ConfigError(f"embedder.card: {error}") from error


# The door's gate is looser than enrolment's (QualityLimits' defaults): faces at a
# door are small and soft until the last metre. tools/tune_decision.py on the demo
# clip with 42 decoy people: 14 px with K/N 3/5 at SFace's threshold 0.64 grants the
# enrolled hiker 1.90 s after she is first seen and nobody else (dlib at 0.48: 2.74 s);
# sharpness of small chips (3-15) does not separate good faces from bad, so it is not gated.
DOOR_QUALITY = QualityLimits(min_eye_distance=14, min_sharpness=0)


def _quality(section: Section) -> QualityLimits:
    defaults = DOOR_QUALITY
    return QualityLimits(**{name: section.number(name, getattr(defaults, name), low=0)
                            for name in QualityLimits.__dataclass_fields__})


def _gallery(section: Section, state: Path) -> GallerySettings:
    return GallerySettings(
        path=Path(section.get("path", str, str(state / "gallery.db"))),
        index=section.choice("index", ("flat", "hnsw", "ivf"), "flat"),
        refresh_seconds=section.number("refresh_seconds", 0.5, low=0.05, high=60))


def _events(section: Section, state: Path) -> EventSettings:
    return EventSettings(
        path=Path(section.get("path", str, str(state / "events.db"))),
        max_rows=section.number("max_rows", 1_000_000, low=100, integer=True),
        max_age_days=section.number("max_age_days", 365, low=1),
        snapshots=section.get("snapshots", bool, False),
        unknown_log_interval=section.number("unknown_log_interval", 10.0, low=0))
