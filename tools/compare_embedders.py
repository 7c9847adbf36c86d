#!/usr/bin/env python3
"""Compare the installed embedders, each with and without mirrored-chip averaging.

For every embedder card in the models folder, with embedding.flip_average off and on:
development-set verification (ROC AUC, equal error rate, TAR at FAR 1e-2 and 1e-3) and
open-set figures at the card's threshold, as tools/evaluate.py measures them; the
milliseconds one face costs to embed with the door's default two sessions; and the
demo's decision with the door's defaults (the card's threshold, 14 px between the eyes,
3 of 5 frames), as tools/tune_decision.py replays it: when the lead hiker is granted and
how many decoy people are. The default embedder (engines/models/DEFAULTS) is chosen
from this table.

examples:
  python tools/compare_embedders.py                 # needs ../shared/data for the dev set and decoys
  python tools/compare_embedders.py --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.decision import DecisionConfig  # noqa: E402
from daemon.demo import DEMO_CLIP, ENROL_FRAME  # noqa: E402
from engines import evaluation as ev  # noqa: E402
from engines.align import align  # noqa: E402
from engines.embedder import Embedder  # noqa: E402
from engines.images import load_image  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import ModelCard, cards_of  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from engines.pipeline import FacePipeline  # noqa: E402
from tools.evaluate import embed_all, evaluate, load_dataset  # noqa: E402
from tools.tune_decision import SHARED_TSV, DoorReplay, door_limits  # noqa: E402

DOOR_EYE_PX, DOOR_K, DOOR_N, DOOR_MARGIN = 14, 3, 5, 0.05  # daemon/config.py's defaults
HIKER_LAST_SEEN = 4.3  # clip seconds after which the lead hiker has left


@dataclass(frozen=True)
class Row:
    model: str
    flip_average: bool
    threshold: float
    roc_auc: float
    eer: float
    tar_at_far_1e_2: float
    tar_at_far_1e_3: float
    open_set_found: float
    open_set_rejected: float
    ms_per_face: float
    hiker_granted_at: float | None
    decoys_granted: int


def ms_per_face(card: ModelCard, chip: np.ndarray, sessions: int, repeats: int) -> float:
    """Median wall time to embed one face, after a warm-up call."""
    with Embedder(card, sessions=sessions) as embedder:
        embedder.embed([chip])
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            embedder.embed([chip])
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(card: ModelCard, dev_set: Path, sessions: int, repeats: int) -> Row:
    detector = MtcnnDetector(MODELS_DIR, DetectorConfig(min_face_size=20))
    dataset = load_dataset(dev_set, None)
    pipeline = FacePipeline(detector, Embedder(card))
    embeddings, _ = embed_all(pipeline, dataset.paths, "largest")
    report, _ = evaluate(dataset, embeddings, card.metric, 1e-3)
    openset = ev.open_set(*_identity_distances(dataset, embeddings, card.metric), card.threshold)
    chip = _first_chip(pipeline, dataset.paths)
    pipeline.embedder.close()
    door_detector = MtcnnDetector(MODELS_DIR, DetectorConfig(min_face_size=40))
    with Embedder(card) as embedder:
        door = DoorReplay(DEMO_CLIP, ENROL_FRAME, dev_set, door_detector, embedder)
    outcome = door.outcome(DecisionConfig(card.threshold, DOOR_MARGIN, DOOR_K, DOOR_N), door_limits(DOOR_EYE_PX),
                           HIKER_LAST_SEEN)
    detector.close()
    door_detector.close()
    return Row(card.id, card.flip_average, card.threshold, report["roc_auc"], report["eer"],
               report["tar_at_far_1e-2"], report["tar_at_far_1e-3"], openset.detect_and_identify_rate,
               openset.unknown_rejection_rate, ms_per_face(card, chip, sessions, repeats),
               outcome.first_grant, outcome.decoy_grants)


def _identity_distances(dataset, embeddings: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    keep = np.flatnonzero(~np.isnan(embeddings[:, 0]))
    return ev.pairwise_distances(embeddings[keep], metric), np.asarray(dataset.identities)[keep]


def _first_chip(pipeline: FacePipeline, paths: list[Path]) -> np.ndarray:
    for path in paths:
        rgb = load_image(path)
        faces = pipeline.detector.detect(rgb)
        if faces:
            return align(rgb, faces[0].landmarks, pipeline.embedder.card.alignment)[0]
    raise ValueError("no face in the development set")


def table(rows: list[Row]) -> str:
    lines = ["| embedder | mirrored | threshold | ROC AUC | EER | TAR@FAR 1e-2 | TAR@FAR 1e-3 | open set found / "
             "rejected | ms per face | hiker granted at | decoys granted |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        granted = "never" if r.hiker_granted_at is None else f"{r.hiker_granted_at:.2f} s"
        lines.append(f"| {r.model} | {'yes' if r.flip_average else 'no'} | {r.threshold:.2f} | {r.roc_auc:.4f} | "
                     f"{r.eer:.2%} | {r.tar_at_far_1e_2:.1%} | {r.tar_at_far_1e_3:.1%} | "
                     f"{r.open_set_found:.1%} / {r.open_set_rejected:.1%} | {r.ms_per_face:.1f} | {granted} | "
                     f"{r.decoys_granted} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=MODELS_DIR, help="folder of embedder cards (default engines/models)")
    parser.add_argument("--dev-set", type=Path, default=SHARED_TSV, help="identity TSV of development photos")
    parser.add_argument("--sessions", type=int, default=2, help="ONNX Runtime sessions for the timing (the door's default)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per embedder")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if not args.dev_set.exists():
        print(f"error: {args.dev_set} is absent: the comparison needs the development photos", file=sys.stderr)
        return 1
    rows = [measure(replace(card, flip_average=flip), args.dev_set, args.sessions, args.repeats)
            for card in cards_of(args.models, "embedder") for flip in (False, True)]
    print(json.dumps([asdict(r) for r in rows], indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
