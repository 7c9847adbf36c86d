#!/usr/bin/env python3
"""Benchmark the face pipeline per stage on a video.

Runs detection (P-Net, R-Net, O-Net), alignment, embedding and the liveness
check (engines/liveness.py: every liveness net on all faces of the frame in one
batch, with the configured sessions) of every face over frames of a video and
prints median and p90 latency per stage, the liveness check's cost per face,
faces per frame, frames per second and peak memory, for 1 and 2 intra-op threads per
session and 1 and 2 sessions per model (engines.onnx_runner: each batch split
between the sessions, P-Net's canvas in bands), with the packed pyramid and
level by level. Each configuration runs in its own process so peak memory and
thread pools do not mix, several times over (--repeat), and the table gives
the median of the runs.

examples:
  python tools/bench.py                          # demo clip, every third frame, min face 40 and 80
  python tools/bench.py clip.mp4 --stride 1 --min-face 60 --threads 1 --sessions 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.align import align  # noqa: E402
from engines.embedder import Embedder  # noqa: E402
from engines.liveness import LivenessChecker  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import find_card  # noqa: E402
from engines.mtcnn import DetectorConfig, MtcnnDetector  # noqa: E402
from engines.runner import Runner, open_runner  # noqa: E402

DEMO_CLIP = Path(__file__).resolve().parents[1] / "daemon" / "demo" / "video_02_hikers_walking_towards_camera.mp4"
STAGES = ("pnet", "rnet", "onet", "detect", "align", "embed", "liveness", "total")


class TimedRunner(Runner):
    """Wraps a runner and records how long each run takes."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.times: list[float] = []

    @property
    def input_shapes(self):
        return self.inner.input_shapes

    @property
    def output_shapes(self):
        return self.inner.output_shapes

    @property
    def concurrency(self):
        return self.inner.concurrency

    def run(self, inputs):
        start = time.perf_counter()
        try:
            return self.inner.run(inputs)
        finally:
            self.times.append(time.perf_counter() - start)

    def take(self) -> float:
        """Milliseconds spent since the last take."""
        total, self.times = sum(self.times), []
        return total * 1000

    def close(self) -> None:
        self.inner.close()


def read_frames(video: Path, stride: int, size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames, index = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % stride == 0:
            frames.append(cv2.cvtColor(cv2.resize(frame, size), cv2.COLOR_BGR2RGB))
        index += 1
    if not frames:
        raise SystemExit(f"error: no frames read from {video}")
    return frames


def measure(video: Path, stride: int, min_face: float, threads: int, sessions: int, packed: bool) -> dict:
    frames = read_frames(video, stride, (640, 480))
    nets = {role: TimedRunner(open_runner(find_card(MODELS_DIR, role).model_path, threads, sessions))
            for role in ("pnet", "rnet", "onet")}
    detector = MtcnnDetector(config=DetectorConfig(min_face_size=min_face, packed=packed), runners=nets)
    embedder = Embedder.from_models(threads=threads, sessions=sessions)
    liveness = LivenessChecker.from_models(threads=threads, sessions=sessions)
    first = detector.detect(frames[0])  # first-call allocations are not what a running door pays
    if first:
        liveness.score(frames[0], first)
    for net in nets.values():
        net.take()
    times = {stage: [] for stage in STAGES}
    faces = 0
    per_face = []  # liveness ms / faces, on frames with faces
    wall = time.perf_counter()
    for rgb in frames:
        t0 = time.perf_counter()
        found = detector.detect(rgb)
        t1 = time.perf_counter()
        chips = [align(rgb, face.landmarks, embedder.card.alignment)[0] for face in found]
        t2 = time.perf_counter()
        if chips:
            embedder.embed(chips)
        t3 = time.perf_counter()
        if found:
            liveness.score(rgb, found)
        t4 = time.perf_counter()
        faces += len(found)
        if found:
            per_face.append((t4 - t3) * 1000 / len(found))
        for role, net in nets.items():
            times[role].append(net.take())
        for stage, seconds in (("detect", t1 - t0), ("align", t2 - t1), ("embed", t3 - t2), ("liveness", t4 - t3),
                               ("total", t4 - t0)):
            times[stage].append(seconds * 1000)
    wall = time.perf_counter() - wall
    return {
        "min_face": min_face, "threads": threads, "sessions": sessions, "packed": packed, "frames": len(frames),
        "faces_per_frame": faces / len(frames), "fps": len(frames) / wall,
        # the liveness check per face: all liveness time over all faces, and the median over frames with faces
        "liveness_per_face": sum(times["liveness"]) / faces if faces else float("nan"),
        "liveness_per_face_median": statistics.median(per_face) if per_face else float("nan"),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "median": {s: statistics.median(v) for s, v in times.items()},
        "p90": {s: float(np.percentile(v, 90)) for s, v in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, default=DEMO_CLIP)
    parser.add_argument("--stride", type=int, default=3, help="every N-th frame (default 3)")
    parser.add_argument("--min-face", type=float, nargs="+", default=[40, 80])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2], help="sessions per model")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each configuration, each in a fresh process; the table gives their median "
                             "(this VM's neighbours move single runs by 10-20%%)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, run in a child process
    args = parser.parse_args(argv)
    if args.worker:
        min_face, threads, sessions, packed = json.loads(args.worker)
        print(json.dumps(measure(args.video, args.stride, min_face, threads, sessions, packed)))
        return 0

    configs = list(itertools.product(args.min_face, args.threads, args.sessions, (True, False)))
    runs = {config: [] for config in configs}
    # Round-robin over the configurations, so drift in the machine's load touches them all alike.
    for round_ in range(args.repeat):
        for config in configs:
            out = subprocess.run([sys.executable, __file__, str(args.video), "--stride", str(args.stride),
                                  "--worker", json.dumps(config)], capture_output=True, text=True, check=True)
            runs[config].append(json.loads(out.stdout))
            min_face, threads, sessions, packed = config
            print(f"run {round_ + 1}/{args.repeat}: min face {min_face:g}, {threads} thread(s), {sessions} session(s), "
                  f"{'packed' if packed else 'level by level'}", file=sys.stderr)
    results = [summarise(r) for r in runs.values()]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.video.name}, 640x480, every {args.stride} frame(s); median / p90 ms per frame, "
          f"each the median of {args.repeat} runs; 'total range' is the spread of the runs' median totals; "
          "'live/face': the liveness check's ms per face (all its time over all faces; the median over frames "
          "with faces)")
    header = f"{'min face':>8} {'thr':>3} {'ses':>3} {'pyramid':>8} | " + " ".join(f"{s:>11}" for s in STAGES)
    print(header + f" | {'total range':>11} | {'live/face':>9} | {'faces':>5} {'fps':>5} {'peak MiB':>8}")
    for r in results:
        cells = " ".join(f"{r['median'][s]:5.1f}/{r['p90'][s]:<5.1f}" for s in STAGES)
        spread = f"{r['total_range'][0]:.1f}-{r['total_range'][1]:.1f}"
        per_face = f"{r['liveness_per_face']:.1f}/{r['liveness_per_face_median']:.1f}"
        print(f"{r['min_face']:8g} {r['threads']:3d} {r['sessions']:3d} {'packed' if r['packed'] else 'levels':>8} | "
              f"{cells} | {spread:>11} | {per_face:>9} | {r['faces_per_frame']:5.2f} {r['fps']:5.1f} "
              f"{r['peak_mib']:8.0f}")
    return 0


def summarise(runs: list[dict]) -> dict:
    """One configuration's runs: the median of each figure over runs, the largest peak memory."""
    first = runs[0]
    totals = [r["median"]["total"] for r in runs]
    return {
        **{key: first[key] for key in ("min_face", "threads", "sessions", "packed", "frames", "faces_per_frame")},
        "runs": len(runs), "total_range": [min(totals), max(totals)],
        "fps": statistics.median(r["fps"] for r in runs),
        "liveness_per_face": statistics.median(r["liveness_per_face"] for r in runs),
        "liveness_per_face_median": statistics.median(r["liveness_per_face_median"] for r in runs),
        "peak_mib": max(r["peak_mib"] for r in runs),
        "median": {s: statistics.median(r["median"][s] for r in runs) for s in STAGES},
        "p90": {s: statistics.median(r["p90"][s] for r in runs) for s in STAGES},
    }

if __name__ == "__main__":
    sys.exit(main())
