"""The daemon on its embedded default: the bundled clip, mock GPIO, a temporary state directory.

Enrols the lead hiker from one still of the clip, then runs the real service
over the clip and prints a readable live log and a summary. Nothing here is
demo-only logic: the same DoorService runs at a door, with liveness (presentation-
attack detection) on as it is by default: the clip is a direct camera recording, so
the hiker is granted, and the summary shows the median live score of each decided track.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from daemon import config as config_module
from daemon.gallery import Gallery, Template
from daemon.recognition import Observation
from daemon.service import DoorService, Seen
from daemon.sources import Frame, make_source
from engines.align import align
from engines.embedder import Embedder
from engines.mtcnn import MtcnnDetector
from engines.quality import measure

DEMO_CLIP = Path(__file__).resolve().parent / "demo" / "video_02_hikers_walking_towards_camera.mp4"
ENROL_FRAME = 120  # the lead hiker (teal jacket), large and frontal
ENROL_NAME = "Lead Hiker"


def demo_config(state: Path, clip: Path = DEMO_CLIP, fast: bool = False) -> dict:
    """The embedded default config: everything a door needs, pointed at the clip and a mock relay."""
    return {
        "camera": {"type": "file", "path": str(clip), "pace": "fast" if fast else "realtime"},
        "gallery": {"path": str(state / "gallery.db")},
        "events": {"path": str(state / "events.db")},
        "door": {"name": "demo-door", "pin_factory": "mock", "relay": {"pin": 17, "unlock_seconds": 3}},
        "policy": {"timezone": "UTC", "default_group": "everyone",
                   "groups": {"everyone": {"doors": "*", "schedule": "always", "holidays": True}}},
        "logging": {"level": "INFO"},
    }


def enrol_from_clip(config: config_module.Config, clip: Path, frame_index: int, name: str) -> int:
    """Enrol the largest face of one frame of the clip; returns the person id."""
    frame = _frame_at(clip, frame_index)
    with MtcnnDetector(config.models.models_dir, config.detector) as detector, Embedder(config.embedder) as embedder:
        faces = detector.detect(frame)
        if not faces:
            raise ValueError(f"frame {frame_index} of {clip} shows no face to enrol")
        face = max(faces, key=lambda f: f.width)
        chip = align(frame, face.landmarks, embedder.card.alignment)[0]
        quality = measure(face, chip, frame.shape).as_dict()
        template = Template(embedder.embed([chip])[0], embedder.card.id, quality, "photo")
    with Gallery.open(config.gallery.path) as gallery:
        return gallery.add_person(name, [template], note=f"from frame {frame_index} of {clip.name}")


def _frame_at(clip: Path, index: int) -> np.ndarray:
    source = make_source({"type": "file", "path": str(clip), "pace": "fast"}).start()
    try:
        while (frame := source.read(timeout=1.0)) is not None:
            if frame.index == index:
                return frame.rgb
    finally:
        source.stop()
    raise ValueError(f"{clip} has no frame {index}")


class LiveLog:
    """Prints new faces, decisions and door changes with the clip's time; optionally annotates."""

    def __init__(self, threshold: float | None, annotate: Path | None) -> None:
        self.threshold = threshold
        self.seen: set[int] = set()
        self.relay_on_video_time: list[float] = []
        self._was_unlocked = False
        self._writer = None
        self._annotate = annotate

    def __call__(self, frame: Frame, seen: list[Seen], unlocked: bool) -> None:
        for face in seen:
            if face.track.id not in self.seen:
                self.seen.add(face.track.id)
                print(f"{frame.video_time:6.2f}s  face on track {face.track.id} at {face.face.box.round().astype(int).tolist()}")
        if unlocked != self._was_unlocked:
            print(f"{frame.video_time:6.2f}s  relay {'ON  (door unlocked)' if unlocked else 'off (door locked)'}")
            if unlocked:
                self.relay_on_video_time.append(frame.video_time)
            self._was_unlocked = unlocked
        if self._annotate is not None:
            self._write(frame, seen, unlocked)

    def _write(self, frame: Frame, seen: list[Seen], unlocked: bool) -> None:
        image = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
        if self._writer is None:
            height, width = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self._annotate), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (width, height))
        for face in seen:
            colour, label = _label(face.observation, self.threshold)
            x1, y1, x2, y2 = face.face.box.round().astype(int)
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
            cv2.putText(image, f"#{face.track.id} {label}", (x1, max(12, y1 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
        state, colour = ("UNLOCKED", (0, 200, 0)) if unlocked else ("locked", (0, 0, 230))
        cv2.putText(image, f"door: {state}", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2)
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def _label(observation: Observation | None, threshold: float) -> tuple[tuple[int, int, int], str]:
    """Box colour (BGR) and text for a face in the annotated clip."""
    if observation is None:
        return (200, 200, 200), "decided"
    match = observation.match
    live = "" if observation.liveness is None else f" live {observation.liveness:.2f}"
    if match is not None and match.distance < threshold:
        return (0, 200, 0), f"{match.name} {match.distance:.2f}{live}"
    return ((0, 0, 230), f"unknown{live}") if observation.usable else ((0, 200, 230), "low quality")


def run_demo(annotate: Path | None = None, fast: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="        %(message)s")
    logging.getLogger("facegate.sources").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="facegate-demo-") as state:
        config = config_module.parse(demo_config(Path(state), fast=fast))
        print(f"facegate demo: {DEMO_CLIP.name} ({'as fast as possible' if fast else 'real time'}), "
              f"mock GPIO, state in {state}")
        print(f"liveness: {liveness_text(config)}")
        enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, ENROL_NAME)
        print(f"enrolled {ENROL_NAME!r} from frame {ENROL_FRAME} of the clip\n")
        live = LiveLog(config.decision.threshold, annotate)
        service = DoorService(config, on_frame=live)
        live.threshold = service.decider.threshold  # the threshold in force for this gallery's size
        service.install_signal_handlers()
        started = time.monotonic()
        code = service.run()
        live.close()
        print_summary(service, live, time.monotonic() - started, annotate)
    return code


OUTCOME_WORDS = {"grant": "granted", "deny": "denied (policy)", "attack": "denied (attack)", "unknown": "unknown face"}


def liveness_text(config: config_module.Config) -> str:
    liveness = config.liveness
    if not liveness.enabled:
        return "OFF (liveness.enabled: false)"
    return f"on, threshold {liveness.threshold:.3f} from {liveness.threshold_source}"


def print_summary(service: DoorService, live: LiveLog, seconds: float, annotate: Path | None) -> None:
    stats = service.stats
    frames = max(stats.frames, 1)
    print("\nsummary")
    print(f"  frames processed     {stats.frames} in {seconds:.1f} s ({stats.frames / seconds:.1f} per second)")
    print(f"  faces per frame      {stats.faces / frames:.2f}")
    print(f"  median frame time    {np.median(stats.frame_ms):.1f} ms (last 100 frames)")
    print(f"  decisions            {stats.grants} granted, {stats.denies} denied "
          f"({stats.attacks} as presentation attacks), {stats.unknowns} unknown faces")
    print(f"  relay switched on at {', '.join(f'{t:.2f}s' for t in live.relay_on_video_time) or 'never'} (clip time)")
    print(f"  liveness             {liveness_text(service.config)}")
    if stats.decided:
        print("  decided tracks       (median live score of the frames each decision rests on)")
        for outcome in stats.decided:
            score = "not computed" if outcome.live_score is None else f"live {outcome.live_score:.3f}"
            print(f"    {outcome.video_time:6.2f}s  track {outcome.track_id:<3} {OUTCOME_WORDS[outcome.kind]:<18} "
                  f"{outcome.name or 'unknown':<14} {score}")
    if annotate is not None:
        print(f"  annotated clip       {annotate}")
