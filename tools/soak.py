#!/usr/bin/env python3
"""Soak the door daemon: the real service on the looped demo clip for a long time.

Enrols the lead hiker, runs DoorService with mock GPIO on the demo clip looped
in real time (like a camera: frames the loop cannot keep up with are dropped)
and samples the process's memory. Prints a table over time and a summary:
frames per second, latency from frame grab to decision, grants, and memory
at the start and end (flat memory means no leak).

examples:
  python tools/soak.py                 # 10 minutes
  python tools/soak.py --minutes 60 --sample 30
  python tools/soak.py --minutes 2 --liveness off   # the same without presentation-attack detection
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero.pins.mock import MockFactory  # noqa: E402

from daemon import config as config_module  # noqa: E402
from daemon.demo import DEMO_CLIP, ENROL_FRAME, demo_config, enrol_from_clip  # noqa: E402
from daemon.service import DoorService  # noqa: E402


def rss_mib() -> float:
    """Current resident memory (not the peak), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class Latency:
    """Frame grab to end of processing, per frame: what a decision waits for; and the processing
    time of frames by what was in view (faces to recognise, or only faces already decided)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.service: DoorService | None = None
        self.by_view: dict[str, list[float]] = {"no face": [], "faces to recognise": [], "decided faces only": []}

    def __call__(self, frame, seen, unlocked) -> None:
        self.samples.append((time.monotonic() - frame.time) * 1000)
        view = ("no face" if not seen else "decided faces only" if all(s.observation is None for s in seen)
                else "faces to recognise")
        self.by_view[view].append(self.service.stats.frame_ms[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between memory samples")
    parser.add_argument("--liveness", choices=("on", "off"), default="on",
                        help="presentation-attack detection in the decision (default on, as at a door)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="facegate-soak-") as state:
        raw = demo_config(Path(state))
        raw["camera"]["loop"] = True
        raw["liveness"] = {"enabled": args.liveness == "on"}
        config = config_module.parse(raw)
        enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
        latency = Latency()
        service = DoorService(config, pin_factory=MockFactory(), on_frame=latency)
        latency.service = service
        rows = []
        started = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(args.sample):
                elapsed = time.monotonic() - started
                recent = latency.samples[-200:]
                rows.append((elapsed, rss_mib(), service.stats.frames, service.stats.grants,
                             statistics.median(recent) if recent else float("nan")))
                print(f"{elapsed / 60:7.1f} min  {rows[-1][1]:7.1f} MiB  {rows[-1][2]:7d} frames  "
                      f"{rows[-1][3]:4d} grants  {rows[-1][4]:6.1f} ms", flush=True)
                if elapsed >= args.minutes * 60:
                    service.stop()

        print(f"{'elapsed':>11}  {'memory':>11}  {'processed':>14}  {'grants':>11}  latency (median of last 200)")
        threading.Thread(target=sample, daemon=True).start()
        service.run()
        done.set()
        seconds = time.monotonic() - started
        grabbed = service.source.stats.grabbed if hasattr(service.source, "stats") else None

    print("\nsummary")
    print(f"  ran                  {seconds / 60:.1f} min, clip looped in real time (29.97 fps offered)")
    print(f"  frames processed     {service.stats.frames} ({service.stats.frames / seconds:.1f} per second)"
          + (f", {grabbed} grabbed" if grabbed is not None else ""))
    print(f"  grab-to-decision     median {statistics.median(latency.samples):.1f} ms, "
          f"p90 {statistics.quantiles(latency.samples, n=10)[-1]:.1f} ms")
    print(f"  grants               {service.stats.grants} (the hiker passes once per loop)")
    for view, times in latency.by_view.items():
        if times:
            print(f"  frame time, {view + ':':<20} median {statistics.median(times):.1f} ms over {len(times)} frames")
    if len(rows) >= 2:
        print(f"  memory               {rows[0][1]:.1f} MiB at {rows[0][0] / 60:.1f} min, {rows[-1][1]:.1f} MiB at "
              f"{rows[-1][0] / 60:.1f} min, max {max(r[1] for r in rows):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
