#!/usr/bin/env python3
"""Panel output latency: from the decision to the last Wiegand edge (busy-wait sender over a recording
line, measured jitter), and from the decision to the OSDP card read received by a libosdp ControlPanel
over a pty, plus the reader's poll response time; optionally with the face pipeline busy on the demo clip.

examples:
  tools/bench_panel.py --frames 30 --cards 30
  tools/bench_panel.py --load            # the demo clip replayed by a door in this process meanwhile

Prints tables; asserts nothing (timings are the machine's).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.panel.formats import STANDARD_FORMATS, encode  # noqa: E402
from daemon.panel.wiegand import BusyWaitSender, WiegandTiming  # noqa: E402


class _Line:
    def __init__(self) -> None:
        self.last = 0

    def set(self, level: int) -> None:
        self.last = time.perf_counter_ns()


def _row(name: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"{name:<44} (none)"
    p = np.percentile(values_ms, [50, 95, 99])
    return f"{name:<44} {len(values_ms):>5} {p[0]:>9.2f} {p[1]:>9.2f} {p[2]:>9.2f} {max(values_ms):>9.2f}"


def bench_wiegand(frames: int) -> list[str]:
    d0, d1 = _Line(), _Line()
    sender = BusyWaitSender(d0, d1, WiegandTiming())
    bits = encode(STANDARD_FORMATS["H10301"], 42, 31337)
    latency, pulses, gaps = [], [], []
    for _ in range(frames):
        decided = time.perf_counter_ns()
        report = sender.send(bits)
        latency.append((max(d0.last, d1.last) - decided) / 1e6)
        pulses += [p / 1000 for p in report.pulses_us]
        gaps += [g / 1000 for g in report.intervals_us]
        time.sleep(0.05)
    return [_row("wiegand: decision -> last edge (26 bits)", latency),
            _row("wiegand: pulse width (configured 0.05)", pulses),
            _row("wiegand: pulse interval (configured 2.00)", gaps)]


class _Master:
    """The panel's end of the pty, timing each poll it writes against the first reply bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.sent_at: int | None = None
        self.responses: list[float] = []

    def read(self, n: int) -> bytes:
        try:
            data = os.read(self.fd, n)
        except BlockingIOError:
            return b""
        if data and self.sent_at is not None:
            self.responses.append((time.perf_counter_ns() - self.sent_at) / 1e6)
            self.sent_at = None
        return data

    def write(self, buf: bytes) -> int:
        self.sent_at = time.perf_counter_ns()
        return os.write(self.fd, buf)

    def flush(self) -> None:
        pass


def bench_osdp(cards: int) -> list[str]:
    import osdp

    from daemon.panel.osdp_reader import OsdpReader, OsdpSettings, save_key

    master, slave = os.openpty()
    tty.setraw(master)
    key = bytes(range(16))
    with tempfile.TemporaryDirectory() as folder:
        save_key(Path(folder) / "k", key)
        reader = OsdpReader(OsdpSettings(port=os.ttyname(slave), key_file=Path(folder) / "k", address=1))
        reader.start()
        channel = _Master(master)
        panel = osdp.ControlPanel([osdp.PDInfo(1, channel, scbk=key, flags=[osdp.LibFlag.EnforceSecure])],
                                  log_level=osdp.LogLevel.Warning)
        panel.start()
        latency = []
        try:
            if not panel.sc_wait(1, timeout=10):
                return ["osdp: no Secure Channel within 10 s"]
            channel.responses.clear()
            bits = encode(STANDARD_FORMATS["H10301"], 42, 31337)
            for _ in range(cards):
                decided = time.perf_counter_ns()
                reader.report_card(bits)
                while True:
                    event = panel.get_event(1, timeout=2)
                    if event is None or event["event"] == osdp.Event.CardRead:
                        break
                if event is not None:
                    latency.append((time.perf_counter_ns() - decided) / 1e6)
                time.sleep(0.05)
        finally:
            panel.teardown()
            reader.close()
            os.close(master)
            os.close(slave)
    return [_row("osdp: decision -> card read at the panel", latency),
            _row("osdp: poll -> first reply byte", channel.responses)]


def _load(stop: threading.Event, folder: Path) -> threading.Thread:
    """A door replaying the demo clip in this process: the face pipeline competing for CPU and the GIL."""
    from gpiozero.pins.mock import MockFactory

    from daemon import config as config_module
    from daemon.demo import DEMO_CLIP, demo_config
    from daemon.service import DoorService

    raw = demo_config(folder, DEMO_CLIP, fast=True)
    raw["camera"]["loop"] = True
    service = DoorService(config_module.parse(raw), pin_factory=MockFactory())

    def run() -> None:
        service.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    threading.Thread(target=lambda: (stop.wait(), service.stop()), daemon=True).start()
    time.sleep(3)  # models loaded, frames flowing
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="Wiegand frames to send (default 30)")
    parser.add_argument("--cards", type=int, default=30, help="OSDP card reads to send (default 30)")
    parser.add_argument("--load", action="store_true", help="run a door on the demo clip meanwhile")
    args = parser.parse_args(argv)
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as folder:
        loader = _load(stop, Path(folder)) if args.load else None
        try:
            rows = bench_wiegand(args.frames) + bench_osdp(args.cards)
        finally:
            stop.set()
            if loader is not None:
                loader.join(timeout=30)
    print(f"{'milliseconds' + (' (face pipeline on the demo clip)' if args.load else ' (idle)'):<44} "
          f"{'n':>5} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
