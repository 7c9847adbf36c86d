#!/usr/bin/env python3
"""Measure the door's decision settings on a clip: how fast the right person gets in, and who else does.

Enrols one person from a still of the clip plus, as decoys, every identity of
a labelled photo set (people who never appear in the clip), then replays the
daemon's own tracker, quality gate and K-of-N decider over every frame for a
grid of settings. Faces are detected and embedded once; the grid replays them.

Reported per setting: the clip time of the enrolled person's first grant
(their first detectable frame is given with --first-seen), grants to them
after --last-seen (false: they have left), grants to decoys (false accepts),
and unknown-face reports.

examples:
  python tools/tune_decision.py                      # demo clip, lead hiker, decoys from ../shared
  python tools/tune_decision.py --thresholds 0.44 0.48 --eye 14 20 --kn 3/5
  python tools/tune_decision.py --card engines/models/sface_2021dec.yaml --thresholds 0.6 0.64
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.config import DOOR_QUALITY  # noqa: E402
from daemon.decision import Decider, DecisionConfig  # noqa: E402
from daemon.demo import DEMO_CLIP, ENROL_FRAME  # noqa: E402
from daemon.sources import make_source  # noqa: E402
from daemon.tracker import Tracker  # noqa: E402
from engines.align import align  # noqa: E402
from engines.embedder import Embedder, distance  # noqa: E402
from engines.face import Face  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.model_card import load_card  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from engines.quality import Quality, QualityLimits, measure, problems  # noqa: E402

SHARED_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_identities.tsv"


@dataclass
class Seen:
    face: Face
    quality: Quality
    embedding: np.ndarray


@dataclass
class SearchResult:
    person_id: int
    name: str
    distance: float
    runner_up_distance: float


def observe_clip(clip: Path, detector: MtcnnDetector, embedder: Embedder) -> list[tuple[float, list[Seen]]]:
    source = make_source({"type": "file", "path": str(clip), "pace": "fast"}).start()
    frames = []
    try:
        while (frame := source.read(timeout=1.0)) is not None:
            faces = detector.detect(frame.rgb)
            chips = [align(frame.rgb, f.landmarks, embedder.card.alignment)[0] for f in faces]
            embeddings = embedder.embed(chips) if chips else []
            frames.append((frame.video_time, [Seen(f, measure(f, c, frame.rgb.shape), e)
                                              for f, c, e in zip(faces, chips, embeddings)]))
            print(f"\rdetecting and embedding frame {frame.index}", end="", file=sys.stderr)
    finally:
        source.stop()
    print(file=sys.stderr)
    return frames


def decoy_gallery(tsv: Path, detector: MtcnnDetector, embedder: Embedder) -> tuple[np.ndarray, list[str]]:
    base = tsv.parent / "sets"
    vectors, names = [], []
    for line in tsv.read_text().splitlines()[1:]:
        path, identity = line.split("\t")[:2]
        rgb = load_image(base / path)
        faces = detector.detect(rgb)
        if faces:
            face = max(faces, key=lambda f: f.width)
            vectors.append(embedder.embed([align(rgb, face.landmarks, embedder.card.alignment)[0]])[0])
            names.append(identity)
    return np.array(vectors), names


def search(probe: np.ndarray, vectors: np.ndarray, owners: np.ndarray, names: list[str], metric: str) -> SearchResult:
    distances = distance(probe, vectors, metric)
    best_per_person = {}
    for owner, d in zip(owners, distances):
        best_per_person[owner] = min(best_per_person.get(owner, np.inf), d)
    ranked = sorted(best_per_person.items(), key=lambda item: item[1])
    runner_up = ranked[1][1] if len(ranked) > 1 else np.inf
    return SearchResult(int(ranked[0][0]), names[ranked[0][0]], float(ranked[0][1]), float(runner_up))


def replay(frames, vectors, owners, names, metric: str, config: DecisionConfig, limits: QualityLimits):
    tracker, decider = Tracker(), Decider(config)
    decisions = []
    for video_time, seen in frames:
        tracks = tracker.update([s.face.box for s in seen], video_time)
        for track, s in zip(tracks, seen):
            if track.decided or problems(s.quality, limits):
                continue
            decision = decider.observe(track, search(s.embedding, vectors, owners, names, metric))
            if decision is not None:
                decisions.append((video_time, decision))
        decider.forget({t.id for t in tracker.tracks})
    return decisions


@dataclass(frozen=True)
class Outcome:
    first_grant: float | None  # clip time of the enrolled person's first grant
    late_grants: int  # grants to them after they have left
    decoy_grants: int  # grants to people who are not in the clip
    unknown: int  # unknown-face reports


class DoorReplay:
    """The clip's faces detected and embedded once, the enrolled person and the decoys in a gallery:
    any decision setting is then a cheap replay."""

    def __init__(self, clip: Path, enrol_frame: int, decoys: Path, detector: MtcnnDetector, embedder: Embedder) -> None:
        self.metric = embedder.card.metric
        self.frames = observe_clip(clip, detector, embedder)
        enrolled = max((s for t, seen in self.frames if round(t * 29.97) == enrol_frame for s in seen),
                       key=lambda s: s.face.width)
        vectors, self.names, owners = [enrolled.embedding], ["enrolled"], [0]
        if decoys.exists():
            decoy_vectors, identities = decoy_gallery(decoys, detector, embedder)
            people = sorted(set(identities))
            self.names += people
            vectors += list(decoy_vectors)
            owners += [1 + people.index(i) for i in identities]
        else:
            print(f"note: {decoys} absent: no decoy people in the gallery", file=sys.stderr)
        self.vectors, self.owners = np.array(vectors), np.array(owners)

    def outcome(self, config: DecisionConfig, limits: QualityLimits, last_seen: float) -> Outcome:
        decisions = replay(self.frames, self.vectors, self.owners, self.names, self.metric, config, limits)
        mine = [t for t, d in decisions if d.person_id == 0]
        return Outcome(min(mine, default=None), sum(t > last_seen for t in mine),
                       sum(d.person_id not in (None, 0) for _, d in decisions),
                       sum(d.person_id is None for _, d in decisions))


def door_limits(eye: float) -> QualityLimits:
    """The door's quality gate (daemon.config.DOOR_QUALITY) with another minimum eye distance."""
    return replace(DOOR_QUALITY, min_eye_distance=eye)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=DEMO_CLIP)
    parser.add_argument("--enrol-frame", type=int, default=ENROL_FRAME)
    parser.add_argument("--first-seen", type=float, default=0.0, help="clip time the enrolled person is first detectable")
    parser.add_argument("--last-seen", type=float, default=4.3, help="clip time after which they are gone")
    parser.add_argument("--decoys", type=Path, default=SHARED_TSV, help="identity TSV of people never in the clip")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.44, 0.48, 0.52, 0.6])
    parser.add_argument("--eye", type=float, nargs="+", default=[10, 14, 20, 30], help="min eye distances, px")
    parser.add_argument("--kn", nargs="+", default=["2/3", "3/5", "4/6"], help="K/N settings")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--min-face", type=float, default=40)
    parser.add_argument("--card", type=Path, help="the embedder's model card (default: the one engines/models/DEFAULTS names)")
    args = parser.parse_args(argv)

    detector = MtcnnDetector(config=DetectorConfig(min_face_size=args.min_face))
    embedder = Embedder(load_card(args.card)) if args.card else Embedder.from_models()
    door = DoorReplay(args.clip, args.enrol_frame, args.decoys, detector, embedder)
    print(f"embedder {embedder.card.id}; gallery: the enrolled person + {len(door.names) - 1} decoy people "
          f"({len(door.vectors) - 1} photos); {len(door.frames)} frames, "
          f"{sum(len(s) for _, s in door.frames) / len(door.frames):.2f} faces per frame\n")
    print(f"{'threshold':>9} {'eye px':>6} {'K/N':>5} | {'first grant':>11} {'latency':>8} {'late grants':>11} "
          f"{'decoy grants':>12} {'unknown':>7}")
    for threshold, eye, kn in itertools.product(args.thresholds, args.eye, args.kn):
        k, n = (int(x) for x in kn.split("/"))
        result = door.outcome(DecisionConfig(threshold, args.margin, k, n), door_limits(eye), args.last_seen)
        first = result.first_grant
        shown = f"{first:10.2f}s {first - args.first_seen:7.2f}s" if first is not None else f"{'never':>11} {'-':>8}"
        print(f"{threshold:9.2f} {eye:6.0f} {kn:>5} | {shown} {result.late_grants:11d} {result.decoy_grants:12d} "
              f"{result.unknown:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
