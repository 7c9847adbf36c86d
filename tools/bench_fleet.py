#!/usr/bin/env python3
"""Benchmark the door's latency with MQTT off, on with the broker down, and on with a live broker.

Each mode enrols the lead hiker into a fresh state directory and runs DoorService with
mock GPIO on the demo clip looped in real time, like tools/soak.py, measuring per frame the
time from frame grab to decision. Modes:
  off    no mqtt section
  down   mqtt pointed at a free local port nothing listens on: the link retries in the
         background and the events pile up in the log (the backlog)
  up     a throwaway mosquitto on a free local port (only when mosquitto is installed)
Prints a table and how the down and up latencies compare with off. The door loop never
waits on the network (issue 14), so the three should match within noise.

examples:
  python tools/bench_fleet.py                  # 60 s per mode
  python tools/bench_fleet.py --seconds 20
  python tools/bench_fleet.py --modes off down
"""
from __future__ import annotations

import argparse
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpiozero.pins.mock import MockFactory  # noqa: E402

from daemon import config as config_module  # noqa: E402
from daemon.demo import DEMO_CLIP, ENROL_FRAME, ENROL_NAME, demo_config, enrol_from_clip  # noqa: E402
from daemon.events import EventReader  # noqa: E402
from daemon.service import DoorService  # noqa: E402
from tools.soak import Latency  # noqa: E402

MODES = ("off", "down", "up")


@dataclass(frozen=True)
class Result:
    mode: str
    frames: int
    seconds: float
    latency_ms: list[float]
    grants: int
    events: int
    backlog: int | None  # None with MQTT off

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latency_ms, n=100)[p - 1]


def free_port() -> int:
    """A local TCP port nothing listens on (free when asked; nothing else here takes ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    """Debian puts mosquitto in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None)


@contextmanager
def mosquitto(binary: str, port: int) -> Iterator[None]:
    """A config-less mosquitto (2.x: a localhost-only listener on port) for the duration."""
    process = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {process.returncode}: {process.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on port {port} within 10 s") from None
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_mode(mode: str, seconds: float, mqtt: dict | None) -> Result:
    """Serve the looped clip in real time for seconds on a fresh state directory."""
    with tempfile.TemporaryDirectory(prefix=f"facegate-bench-fleet-{mode}-") as state:
        raw = demo_config(Path(state))
        raw["camera"]["loop"] = True
        if mqtt is not None:
            raw["mqtt"] = mqtt
        config = config_module.parse(raw)
        enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, ENROL_NAME)
        latency = Latency()
        service = DoorService(config, pin_factory=MockFactory(), on_frame=latency)
        latency.service = service
        backlog: list[int] = []

        def stop() -> None:  # the link closes with the service, so its backlog is read just before
            if service.fleet is not None:
                backlog.append(service.fleet.backlog())
            service.stop()

        timer = threading.Timer(seconds, stop)
        started = time.monotonic()
        timer.start()
        service.run()
        elapsed = time.monotonic() - started
        timer.cancel()
        with EventReader(config.events.path) as events:
            recorded = events.count_after(0)
    return Result(mode, service.stats.frames, elapsed, latency.samples, service.stats.grants, recorded,
                  backlog[0] if backlog else None)


def print_table(results: list[Result]) -> None:
    print(f"{'mode':<6} {'frames':>7} {'fps':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
          f"{'grants':>7} {'events':>7} {'backlog':>8}")
    for r in results:
        print(f"{r.mode:<6} {r.frames:>7d} {r.frames / r.seconds:>6.1f} {r.percentile(50):>8.1f} "
              f"{r.percentile(95):>8.1f} {max(r.latency_ms):>8.1f} {r.grants:>7d} {r.events:>7d} "
              f"{'-' if r.backlog is None else r.backlog:>8}")
    by_mode = {r.mode: r for r in results}
    if "off" in by_mode:
        off = by_mode["off"]
        compared = [f"{r.mode} vs off: p50 {r.percentile(50) - off.percentile(50):+.1f} ms, "
                    f"p95 {r.percentile(95) - off.percentile(95):+.1f} ms" for r in results if r.mode != "off"]
        if compared:
            print("\n" + "; ".join(compared))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="real-time replay per mode (default 60)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    broker = find_mosquitto()
    results = []
    for mode in args.modes:
        print(f"running {mode} for {args.seconds:.0f} s ...", flush=True)
        if mode == "off":
            results.append(run_mode(mode, args.seconds, None))
        elif mode == "down":
            results.append(run_mode(mode, args.seconds, {"host": "127.0.0.1", "port": free_port()}))
        elif broker is None:
            print("  skipped: mosquitto is not installed (sudo apt-get install mosquitto)")
        else:
            port = free_port()
            with mosquitto(broker, port):
                results.append(run_mode(mode, args.seconds, {"host": "127.0.0.1", "port": port}))
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
