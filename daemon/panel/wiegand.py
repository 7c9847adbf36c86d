"""The Wiegand wire: timing, the waveform senders per pin library, and the input decoder.

Out: a frame is one timed waveform. For each bit a pulse on D0 (a 0) or D1 (a 1), `pulse_us` long,
the pulses `interval_us` apart (start to start). The schedule is a pure function of the bits and
the timing (`schedule`, `wave_steps`); the senders only play it:
  - LgpioSender: lgpio's tx_wave (Raspberry Pi 5 and 4), timed by lgpio's own C thread;
  - PigpioSender: pigpio's DMA-timed waves, where the pigpiod daemon runs (Pi 4 and older);
  - BusyWaitSender: Python spinning on perf_counter_ns over any gpiozero pin (Jetson, others). It
    measures what it played and logs pulses outside the SIA limits: another thread holding the GIL
    or the scheduler can stretch a pulse, and only a measurement says by how much.
In: WiegandInput decodes a card reader wired to two GPIOs from D0/D1 falling edges, a frame ending
after `timeout` of silence.
"""
from __future__ import annotations

import functools
import gc
import importlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from daemon.panel.formats import Card, WiegandDecodeError, WiegandFormat, decode_any
from daemon.settings import ConfigError

log = logging.getLogger("facegate.panel.wiegand")

# SIA AC-01 (1996) Wiegand reader interface: data pulse width and the time between pulses.
PULSE_LIMITS_US = (20.0, 100.0)
INTERVAL_LIMITS_US = (200.0, 20_000.0)
LEVELS = ("high", "low")


@dataclass(frozen=True)
class WiegandTiming:
    pulse_us: float = 50.0
    interval_us: float = 2000.0  # from the start of one pulse to the start of the next

    def __post_init__(self) -> None:
        for name, value, (low, high) in (("pulse_us", self.pulse_us, PULSE_LIMITS_US),
                                         ("interval_us", self.interval_us, INTERVAL_LIMITS_US)):
            if not low <= value <= high:
                raise ConfigError(f"wiegand {name} = {value!r} is not allowed: expected {low:g} to {high:g} "
                                  f"(the SIA Wiegand limits)")
        if self.interval_us <= self.pulse_us:
            raise ConfigError("wiegand interval_us must be longer than pulse_us")


@dataclass(frozen=True)
class Edge:
    at_us: float  # from the start of the frame
    line: int  # 0: D0, 1: D1
    active: bool  # True: the pulse starts (the panel's line pulled low), False: it ends


def schedule(bits: tuple[int, ...], timing: WiegandTiming) -> list[Edge]:
    """The frame's edges in time order."""
    edges = []
    for i, bit in enumerate(bits):
        start = i * timing.interval_us
        edges += [Edge(start, bit, True), Edge(start + timing.pulse_us, bit, False)]
    return edges


@dataclass(frozen=True)
class Step:
    """One entry of a wave: drive the lines in `high` (a mask, bit 0 = D0, bit 1 = D1) high and those
    in `low` low, then wait delay_us. What both lgpio's and pigpio's pulse() take, in line masks."""

    high: int
    low: int
    delay_us: int


def wave_steps(bits: tuple[int, ...], timing: WiegandTiming, pulse_level: str = "high") -> list[Step]:
    """The schedule as wave steps. pulse_level is the GPIO level during a pulse: 'high' through an
    open-collector transistor stage (which pulls the panel's 5 V line low), 'low' through a level
    shifter that follows the GPIO."""
    edges = schedule(bits, timing)
    steps = []
    for edge, following in zip(edges, edges[1:] + [None]):
        mask = 1 << edge.line
        drive_high = edge.active == (pulse_level == "high")
        delay = round((following.at_us if following else edge.at_us + timing.interval_us - timing.pulse_us)
                      - edge.at_us)
        steps.append(Step(mask if drive_high else 0, 0 if drive_high else mask, delay))
    return steps


@dataclass
class SendReport:
    """What a sender played. Measured timings only where Python played it (the busy-wait); a wave
    timed by lgpio or pigpio reports its planned duration."""

    bits: int
    duration_us: float
    pulses_us: list[float] = field(default_factory=list)
    intervals_us: list[float] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.pulses_us)

    @property
    def worst_pulse_us(self) -> float | None:
        return max(self.pulses_us) if self.pulses_us else None

    @property
    def within_limits(self) -> bool:
        return all(PULSE_LIMITS_US[0] <= p <= PULSE_LIMITS_US[1] for p in self.pulses_us) and \
            all(INTERVAL_LIMITS_US[0] <= i <= INTERVAL_LIMITS_US[1] for i in self.intervals_us)


class Line(Protocol):
    """One output line as the busy-wait sender drives it."""

    def set(self, level: int) -> None: ...


class WiegandSender(Protocol):
    def send(self, bits: tuple[int, ...]) -> SendReport: ...

    def close(self) -> None: ...


class GpiozeroLine:
    """A gpiozero pin driven directly (pin.state), without a device's overhead per edge."""

    def __init__(self, factory: Any, pin: int | str, idle: int) -> None:
        self._pin = factory.pin(pin)
        self._pin.output_with_state(idle)

    def set(self, level: int) -> None:
        self._pin.state = level

    def close(self) -> None:
        self._pin.close()


class BusyWaitSender:
    """Plays a frame by spinning on perf_counter_ns. Each wait is measured from the moment the
    previous edge was written, so a late edge only ever lengthens a pulse or a gap, never shortens
    one; the report says how long each really was, and a frame outside the SIA limits is logged."""

    def __init__(self, d0: Line, d1: Line, timing: WiegandTiming, pulse_level: str = "high") -> None:
        self._lines = (d0, d1)
        self._timing = timing
        self._active = 1 if pulse_level == "high" else 0

    def send(self, bits: tuple[int, ...]) -> SendReport:
        pulse_ns = int(self._timing.pulse_us * 1000)
        interval_ns = int(self._timing.interval_us * 1000)
        starts: list[int] = []
        ends: list[int] = []
        gc_was_on = gc.isenabled()
        gc.disable()  # a collection in the middle of a pulse would stretch it by milliseconds
        # Keep the interpreter for the whole frame (50-75 ms): at the default 5 ms switch interval the door
        # loop's Python threads took it mid-frame and stretched gaps past 30 ms, which a panel reads as two
        # frames. Threads inside C code that released the GIL (inference) run on meanwhile.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(max(switch, 2 * len(bits) * self._timing.interval_us / 1e6))
        try:
            now = time.perf_counter_ns
            next_start = now()
            for bit in bits:
                line = self._lines[bit]
                while now() < next_start:
                    pass
                line.set(self._active)
                started = now()
                while now() < started + pulse_ns:
                    pass
                line.set(1 - self._active)
                ended = now()
                starts.append(started)
                ends.append(ended)
                next_start = max(started + interval_ns, ended + pulse_ns)
        finally:
            sys.setswitchinterval(switch)
            if gc_was_on:
                gc.enable()
        report = SendReport(len(bits), (ends[-1] - starts[0]) / 1000 if bits else 0.0,
                            [(e - s) / 1000 for s, e in zip(starts, ends)],
                            [(b - a) / 1000 for a, b in zip(starts, starts[1:])])
        if not report.within_limits:
            log.warning("Wiegand busy-wait frame of %d bits outside the SIA limits: longest pulse %.0f us "
                        "(limit %.0f), gaps %.0f-%.0f us; this box is loaded: prefer lgpio or pigpio waves",
                        len(bits), report.worst_pulse_us, PULSE_LIMITS_US[1], min(report.intervals_us, default=0),
                        max(report.intervals_us, default=0))
        return report

    def close(self) -> None:
        for line in self._lines:
            closer = getattr(line, "close", None)
            if closer is not None:
                closer()


class LgpioSender:
    """lgpio's tx_wave on a claimed group of the two GPIOs (Raspberry Pi 5 and 4)."""

    def __init__(self, d0: int, d1: int, timing: WiegandTiming, pulse_level: str = "high", chip: int = 0) -> None:
        self._lgpio = _library("lgpio", "pip install 'facegate[pi]' (lgpio)")
        self._timing = timing
        self._pulse_level = pulse_level
        self._leader = d0
        idle = 0 if pulse_level == "high" else 1
        self._handle = self._lgpio.gpiochip_open(chip)
        try:
            self._lgpio.group_claim_output(self._handle, [d0, d1], [idle, idle])
        except Exception:
            self._lgpio.gpiochip_close(self._handle)
            raise

    def send(self, bits: tuple[int, ...]) -> SendReport:
        lg = self._lgpio
        steps = wave_steps(bits, self._timing, self._pulse_level)
        # Group bits: bit 0 is the group's first GPIO (D0), bit 1 the second (D1), as our masks are.
        lg.tx_wave(self._handle, self._leader, [lg.pulse(s.high, s.high | s.low, s.delay_us) for s in steps])
        _wait(lambda: lg.tx_busy(self._handle, self._leader, lg.TX_WAVE), steps)
        return SendReport(len(bits), float(sum(s.delay_us for s in steps[:-1])))

    def close(self) -> None:
        try:
            self._lgpio.group_free(self._handle, self._leader)
        finally:
            self._lgpio.gpiochip_close(self._handle)


class PigpioSender:
    """pigpio's DMA-timed wave, through the pigpiod daemon."""

    def __init__(self, d0: int, d1: int, timing: WiegandTiming, pulse_level: str = "high") -> None:
        self._pigpio = _library("pigpio", "pip install pigpio, with the pigpiod daemon running")
        self._pi = self._pigpio.pi()
        if not self._pi.connected:
            raise PanelOutputError("pigpio: the pigpiod daemon is not reachable (sudo systemctl start pigpiod), "
                                   "or choose output.wiegand.sender: lgpio or busy_wait")
        self._gpios = (d0, d1)
        self._timing = timing
        self._pulse_level = pulse_level
        idle = 0 if pulse_level == "high" else 1
        for gpio in self._gpios:
            self._pi.set_mode(gpio, self._pigpio.OUTPUT)
            self._pi.write(gpio, idle)

    def send(self, bits: tuple[int, ...]) -> SendReport:
        steps = wave_steps(bits, self._timing, self._pulse_level)
        pi, pg = self._pi, self._pigpio
        pi.wave_add_new()
        pi.wave_add_generic([pg.pulse(self._mask(s.high), self._mask(s.low), s.delay_us) for s in steps])
        wave = pi.wave_create()
        try:
            pi.wave_send_once(wave)
            _wait(pi.wave_tx_busy, steps)
        finally:
            pi.wave_delete(wave)
        return SendReport(len(bits), float(sum(s.delay_us for s in steps[:-1])))

    def _mask(self, lines: int) -> int:
        return sum(1 << gpio for i, gpio in enumerate(self._gpios) if lines >> i & 1)

    def close(self) -> None:
        self._pi.stop()


class PanelOutputError(RuntimeError):
    """A panel output that cannot start here (library missing, daemon not running)."""


def _library(name: str, install: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise PanelOutputError(f"the Wiegand sender needs the Python package {name!r}, which does not import "
                               f"({error}); install it: {install}; or choose output.wiegand.sender: busy_wait") from error


def _wait(busy: Callable[[], Any], steps: list[Step]) -> None:
    """Until the library says the wave is done, or twice its length has passed."""
    deadline = time.monotonic() + 2 * sum(s.delay_us for s in steps) / 1e6 + 0.05
    time.sleep(sum(s.delay_us for s in steps[:-1]) / 1e6)
    while busy() and time.monotonic() < deadline:
        time.sleep(0.001)


SENDERS = ("lgpio", "pigpio", "busy_wait")


def make_sender(kind: str, d0: int | str, d1: int | str, timing: WiegandTiming, pulse_level: str = "high",
                pin_factory: Any = None) -> WiegandSender:
    """The sender for output.wiegand.sender; busy_wait drives gpiozero pins of `pin_factory`."""
    if kind == "lgpio":
        return LgpioSender(int(d0), int(d1), timing, pulse_level)
    if kind == "pigpio":
        return PigpioSender(int(d0), int(d1), timing, pulse_level)
    if pin_factory is None:  # gpiozero's own choice, as the door's devices got it
        from gpiozero import Device

        Device.ensure_pin_factory()
        pin_factory = Device.pin_factory
    idle = 0 if pulse_level == "high" else 1
    return BusyWaitSender(GpiozeroLine(pin_factory, d0, idle), GpiozeroLine(pin_factory, d1, idle), timing,
                          pulse_level)


class WiegandAssembler:
    """Bits from falling edges; a frame is complete after `timeout_s` without an edge. Pure: the
    caller supplies the times (monotonic seconds)."""

    def __init__(self, timeout_s: float = 0.025) -> None:
        self.timeout_s = timeout_s
        self._bits: list[int] = []
        self._last = 0.0

    def edge(self, bit: int, at: float) -> tuple[int, ...] | None:
        """Add a bit; returns the previous frame when this edge came after a silence."""
        done = self.complete(at)
        self._bits.append(bit)
        self._last = at
        return done

    def complete(self, now: float) -> tuple[int, ...] | None:
        """The frame, once the line has been silent for the timeout; None while bits may follow."""
        if self._bits and now - self._last >= self.timeout_s:
            frame, self._bits = tuple(self._bits), []
            return frame
        return None

    def deadline(self) -> float | None:
        return self._last + self.timeout_s if self._bits else None


CardCallback = Callable[[Card | None, tuple[int, ...], str | None], None]


class WiegandInput:
    """A card reader's D0/D1 on two GPIO inputs (through a level shifter: they are 5 V). Each
    complete frame is decoded against the configured formats and handed to on_card(card, bits,
    error): card None and error set when no format accepts the bits."""

    def __init__(self, d0: int | str, d1: int | str, formats: dict[str, WiegandFormat], on_card: CardCallback, *,
                 timeout_s: float = 0.025, pin_factory: Any = None) -> None:
        from gpiozero import DigitalInputDevice

        self._formats = formats
        self._on_card = on_card
        self._assembler = WiegandAssembler(timeout_s)
        self._lock = threading.Condition()
        self._closed = False
        # Pulled up, a pulse pulls low: active low. No debounce: a pulse is 20-100 us.
        self._inputs = [DigitalInputDevice(pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
                        for pin in (d0, d1)]
        for bit, device in enumerate(self._inputs):
            device.when_activated = functools.partial(self._edge, bit)
        self._thread = threading.Thread(target=self._run, name="wiegand-in", daemon=True)
        self._thread.start()

    def _edge(self, bit: int) -> None:
        with self._lock:
            frame = self._assembler.edge(bit, time.monotonic())
            self._lock.notify()
        if frame is not None:
            self._deliver(frame)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                deadline = self._assembler.deadline()
                self._lock.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                frame = self._assembler.complete(time.monotonic())
            if frame is not None:
                self._deliver(frame)

    def _deliver(self, frame: tuple[int, ...]) -> None:
        try:
            card, error = decode_any(self._formats, frame), None
        except WiegandDecodeError as failure:
            card, error = None, str(failure)
            log.warning("Wiegand input: %s", error)
        try:
            self._on_card(card, frame, error)
        except Exception:  # the consumer's trouble must not stop the reader
            log.exception("Wiegand input: on_card failed")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=2)
        for device in self._inputs:
            device.close()
