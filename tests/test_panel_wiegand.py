"""Wiegand out and in: every format round-trips through the senders into a decoder written here from
the format sheets (not our encoder run backwards), the timing stays inside the SIA limits where the
sender controls it, and the input decoder reads edges emitted with a reader's timing and jitter."""
from __future__ import annotations

import logging
import random
import sys
import time
import types

import pytest
from gpiozero.pins.mock import MockFactory

from daemon.panel.formats import (STANDARD_FORMATS, Card, CredentialError, WiegandDecodeError, decode, encode,
                                  format_named, parse_custom_formats, to_bytes)
from daemon.panel.wiegand import (BusyWaitSender, LgpioSender, PigpioSender, WiegandAssembler, WiegandInput,
                                  WiegandTiming, make_sender, schedule)
from daemon.settings import ConfigError
from tests.conftest import wait_for

# -- an independent decoder, from the format sheets (bit numbers 1-based, as the sheets write them) ------------


def _ones(frame: str, positions) -> int:
    return sum(frame[p - 1] == "1" for p in positions)


def _number(frame: str, first: int, last: int) -> int:
    return int(frame[first - 1:last], 2)


def sheet_decode(frame: str) -> tuple[str, int, int]:
    """(format, facility, card) of a frame written as '0'/'1'; AssertionError on a bad parity."""
    n = len(frame)
    if n == 26:  # H10301: P1 even over 2-13, FC 2-9, CN 10-25, P26 odd over 14-25
        assert _ones(frame, range(1, 14)) % 2 == 0 and _ones(frame, range(14, 27)) % 2 == 1
        return "H10301", _number(frame, 2, 9), _number(frame, 10, 25)
    if n == 34:  # H10306: P1 even over 2-17, FC 2-17, CN 18-33, P34 odd over 18-33
        assert _ones(frame, range(1, 18)) % 2 == 0 and _ones(frame, range(18, 35)) % 2 == 1
        return "H10306", _number(frame, 2, 17), _number(frame, 18, 33)
    if n == 35:  # Corporate 1000: P1 odd over all; P2 even over 3-4, 6-7 .. 33-34; P35 odd over 2-3, 5-6 .. 32-33
        assert _ones(frame, range(1, 36)) % 2 == 1
        assert _ones(frame, [2] + [p for k in range(11) for p in (3 + 3 * k, 4 + 3 * k)]) % 2 == 0
        assert _ones(frame, [35] + [p for k in range(11) for p in (2 + 3 * k, 3 + 3 * k)]) % 2 == 1
        return "C1000-35", _number(frame, 3, 14), _number(frame, 15, 34)
    if n == 37:  # H10304: P1 even over 2-19, FC 2-17, CN 18-36, P37 odd over 19-36
        assert _ones(frame, range(1, 20)) % 2 == 0 and _ones(frame, range(19, 38)) % 2 == 1
        return "H10304", _number(frame, 2, 17), _number(frame, 18, 36)
    raise AssertionError(f"{n} bits: no sheet")


class RecordingLine:
    """A pin that timestamps every level written to it (perf_counter_ns)."""

    def __init__(self, name: int, log: list, stall_on: int | None = None, stall_s: float = 0.0) -> None:
        self.name, self.log, self.stall_on, self.stall_s = name, log, stall_on, stall_s

    def set(self, level: int) -> None:
        if self.stall_on is not None and len(self.log) + 1 == self.stall_on:
            time.sleep(self.stall_s)  # as if the scheduler took the CPU away before this edge
        self.log.append((time.perf_counter_ns(), self.name, level))


def frame_from_edges(log: list, active: int = 1) -> str:
    """The bits a panel reads: the line of each pulse start, in time order."""
    return "".join(str(line) for _, line, level in sorted(log) if level == active)


def pulses_from_edges(log: list, active: int = 1) -> tuple[list[float], list[float]]:
    """(pulse widths, start-to-start intervals) in microseconds from a recording."""
    ordered = sorted(log)
    starts = [t for t, _, level in ordered if level == active]
    ends = [t for t, _, level in ordered if level != active]
    return [(e - s) / 1000 for s, e in zip(starts, ends)], [(b - a) / 1000 for a, b in zip(starts, starts[1:])]


EXAMPLES = [("H10301", 123, 45678), ("H10301", 0, 0), ("H10301", 255, 65535), ("H10306", 40000, 12345),
            ("C1000-35", 4095, 1_048_575), ("C1000-35", 1234, 567890), ("H10304", 65535, 524287),
            ("H10304", 17, 300000)]


def test_a_hand_worked_h10301_frame() -> None:
    # FC 1 card 1: one 1 in bits 2-13 makes P1 = 1; one 1 in 14-25 leaves P26 = 0
    assert "".join(map(str, encode(STANDARD_FORMATS["H10301"], 1, 1))) == "10000000100000000000000010"


@pytest.mark.parametrize("name, facility, card", EXAMPLES)
def test_encoded_frames_read_right_by_the_sheets(name: str, facility: int, card: int) -> None:
    fmt = STANDARD_FORMATS[name]
    bits = encode(fmt, facility, card)
    assert sheet_decode("".join(map(str, bits))) == (name, facility, card)
    assert decode(fmt, bits) == Card(name, facility, card)


@pytest.mark.parametrize("name", sorted(STANDARD_FORMATS))
def test_every_single_bit_error_is_caught_by_parity(name: str) -> None:
    fmt = STANDARD_FORMATS[name]
    bits = encode(fmt, 77, 1001)
    for i in range(fmt.bits):
        flipped = list(bits)
        flipped[i] ^= 1
        with pytest.raises(WiegandDecodeError):
            decode(fmt, flipped)


@pytest.mark.parametrize("name, facility, card", [("H10301", 256, 1), ("H10301", 1, 65536), ("H10306", 0, 1 << 16),
                                                  ("C1000-35", 4096, 1), ("H10304", 1, 1 << 19), ("H10301", -1, 5)])
def test_values_too_large_for_the_format_are_refused(name: str, facility: int, card: int) -> None:
    with pytest.raises(CredentialError, match="does not fit format"):
        encode(STANDARD_FORMATS[name], facility, card)


def test_formats_by_alias_and_unknown_names() -> None:
    assert format_named("26").name == "H10301" and format_named("37").name == "H10304"
    with pytest.raises(CredentialError, match="not known"):
        format_named("H9999")


def test_a_custom_layout_with_its_parity_rules_written_out() -> None:
    formats = parse_custom_formats({"acme-40": {
        "bits": 40, "facility": {"start": 1, "length": 12}, "card": {"start": 13, "length": 26},
        "parity": [{"bit": 0, "kind": "even", "over": ["1-19"]}, {"bit": 39, "kind": "odd", "over": ["20-38"]}]}},
        "panel.formats")
    fmt = formats["acme-40"]
    bits = encode(fmt, 4000, 60_000_000)
    frame = "".join(map(str, bits))
    assert frame[0] == str(frame[1:20].count("1") % 2) and (frame[20:].count("1") % 2) == 1
    assert int(frame[1:13], 2) == 4000 and int(frame[13:39], 2) == 60_000_000
    assert decode(fmt, bits) == Card("acme-40", 4000, 60_000_000)
    assert set(STANDARD_FORMATS) < set(formats)


@pytest.mark.parametrize("layout, message", [
    ({"bits": 26, "facility": {"start": 1, "length": 8}, "card": {"start": 8, "length": 16}}, "distinct bits"),
    ({"bits": 26, "facility": {"start": 1, "length": 8}, "card": {"start": 9, "length": 16},
      "parity": [{"bit": 0, "kind": "even", "over": ["1-x"]}]}, r"x\.parity\[0\]\.over"),
    ({"bits": 26, "facility": {"start": 1, "length": 8}, "card": {"start": 9, "length": 16},
      "parity": [{"bit": 0, "kind": "mark", "over": [1]}]}, r"x\.parity\[0\]\.kind = 'mark'"),
    ({"bits": 26, "card": {"start": 9, "length": 16}}, r"x\.facility\.start is required"),
])
def test_bad_custom_layouts_name_their_key(layout: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_custom_formats({"x": layout}, "panel.formats")


def test_a_custom_format_may_not_take_a_standard_name() -> None:
    with pytest.raises(ConfigError, match="standard format"):
        parse_custom_formats({"H10301": {}}, "panel.formats")


def test_raw_bytes_are_the_bits_most_significant_first() -> None:
    assert to_bytes((1, 0, 1, 1, 0, 0, 0, 0, 1)) == bytes([0b10110000, 0b10000000])


# -- timing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pulse, interval", [(10, 2000), (150, 2000), (50, 100), (50, 30000)])
def test_timing_outside_the_sia_limits_is_refused(pulse: float, interval: float) -> None:
    with pytest.raises(ConfigError, match="SIA"):
        WiegandTiming(pulse, interval)


def test_the_schedule_is_the_configured_timing_exactly() -> None:
    edges = schedule(encode(STANDARD_FORMATS["H10301"], 1, 1), WiegandTiming(40, 1500))
    starts = [e.at_us for e in edges if e.active]
    assert starts == [i * 1500 for i in range(26)]
    assert all(end.at_us - start.at_us == 40 for start, end in zip(edges[::2], edges[1::2]))


# -- senders -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, facility, card", EXAMPLES[::2])
def test_busy_wait_round_trip_and_never_shorter_than_configured(name: str, facility: int, card: int) -> None:
    log: list = []
    timing = WiegandTiming(50, 2000)
    sender = BusyWaitSender(RecordingLine(0, log), RecordingLine(1, log), timing)
    report = sender.send(encode(STANDARD_FORMATS[name], facility, card))
    assert sheet_decode(frame_from_edges(log)) == (name, facility, card)
    pulses, intervals = pulses_from_edges(log)
    # A late edge may only lengthen a pulse or a gap (how much depends on the machine: not asserted).
    assert min(pulses) >= timing.pulse_us and min(intervals) >= timing.interval_us
    assert len(report.pulses_us) == STANDARD_FORMATS[name].bits and report.measured


def test_busy_wait_measures_and_logs_a_stretched_pulse(caplog: pytest.LogCaptureFixture) -> None:
    log: list = []
    # The 8th write ends the 4th pulse: the CPU is taken away for 2 ms just before it.
    lines = [RecordingLine(line, log, stall_on=8, stall_s=0.002) for line in (0, 1)]
    sender = BusyWaitSender(*lines, WiegandTiming(50, 2000))
    with caplog.at_level(logging.WARNING, "facegate.panel.wiegand"):
        report = sender.send(encode(STANDARD_FORMATS["H10301"], 5, 9))
    assert report.pulses_us[3] >= 2000 and report.worst_pulse_us >= 2000
    assert pulses_from_edges(log)[0][3] >= 2000  # what the pin saw: the report measured the same stall
    assert not report.within_limits
    assert "outside the SIA limits" in caplog.text
    assert sheet_decode(frame_from_edges(log)) == ("H10301", 5, 9)  # still the right bits, only slow


class _WavePlayer:
    """Plays the pulses a fake wave library was given: levels over time, as edges."""

    def __init__(self) -> None:
        self.log: list = []
        self.levels: dict[int, int] = {}

    def play(self, steps: list[tuple[int, int, int]], lines: dict[int, int], levels: dict[int, int]) -> None:
        self.levels = levels
        t = 0
        for high, low, delay in steps:
            for mask, line in lines.items():
                level = 1 if high & mask else 0 if low & mask else None
                if level is not None and level != levels[line]:
                    levels[line] = level
                    self.log.append((t * 1000, line, level))
            t += delay


def _fake_lgpio(player: _WavePlayer) -> types.ModuleType:
    lg = types.ModuleType("lgpio")
    lg.TX_WAVE = 1
    lg.calls = []
    lg.pulse = lambda bits, mask, delay: (bits, mask, delay)

    def tx_wave(handle, leader, pulses):
        lg.calls.append(("tx_wave", leader))
        # group bits: bit 0 the group's first GPIO (D0), bit 1 the second (D1)
        player.play([(bits & mask, ~bits & mask, delay) for bits, mask, delay in pulses], {1: 0, 2: 1}, {0: 0, 1: 0})

    lg.gpiochip_open = lambda chip: 7
    lg.group_claim_output = lambda handle, gpios, levels: lg.calls.append(("claim", tuple(gpios), tuple(levels)))
    lg.tx_wave = tx_wave
    lg.tx_busy = lambda handle, leader, kind: 0
    lg.group_free = lambda handle, leader: lg.calls.append(("free", leader))
    lg.gpiochip_close = lambda handle: lg.calls.append(("close", handle))
    return lg


def _fake_pigpio(player: _WavePlayer, connected: bool = True) -> types.ModuleType:
    pg = types.ModuleType("pigpio")
    pg.OUTPUT = 1
    pg.pulse = lambda on, off, delay: (on, off, delay)

    class Pi:
        def __init__(self) -> None:
            self.connected = connected
            self.waves: dict[int, list] = {}
            self.pending: list = []
            self.writes: list = []

        def set_mode(self, gpio, mode): pass
        def write(self, gpio, level): self.writes.append((gpio, level))
        def wave_add_new(self): self.pending = []
        def wave_add_generic(self, pulses): self.pending += pulses
        def wave_create(self):
            self.waves[len(self.waves)] = self.pending
            return len(self.waves) - 1
        def wave_send_once(self, wave):
            idle = dict(self.writes)
            player.play(self.waves[wave], {1 << 5: 0, 1 << 6: 1}, {0: idle[5], 1: idle[6]})
        def wave_tx_busy(self): return 0
        def wave_delete(self, wave): del self.waves[wave]
        def stop(self): pass

    pg.pi = Pi
    return pg


@pytest.mark.parametrize("name, facility, card", EXAMPLES[1::2])
def test_lgpio_wave_round_trip_with_exact_timing(monkeypatch: pytest.MonkeyPatch, name: str, facility: int,
                                                 card: int) -> None:
    player = _WavePlayer()
    lg = _fake_lgpio(player)
    monkeypatch.setitem(sys.modules, "lgpio", lg)
    sender = make_sender("lgpio", 5, 6, WiegandTiming(50, 2000))
    assert isinstance(sender, LgpioSender)
    sender.send(encode(STANDARD_FORMATS[name], facility, card))
    sender.close()
    assert sheet_decode(frame_from_edges(player.log)) == (name, facility, card)
    pulses, intervals = pulses_from_edges(player.log)
    assert set(pulses) == {50} and set(intervals) == {2000}
    assert lg.calls[0] == ("claim", (5, 6), (0, 0)) and lg.calls[-2:] == [("free", 5), ("close", 7)]


def test_pigpio_wave_round_trip_and_active_low_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    player = _WavePlayer()
    monkeypatch.setitem(sys.modules, "pigpio", _fake_pigpio(player))
    sender = make_sender("pigpio", 5, 6, WiegandTiming(60, 1000), pulse_level="low")
    assert isinstance(sender, PigpioSender)
    sender.send(encode(STANDARD_FORMATS["H10304"], 321, 98765))
    assert sender._pi.writes == [(5, 1), (6, 1)]  # idle high before the first pulse
    assert sheet_decode(frame_from_edges(player.log, active=0)) == ("H10304", 321, 98765)
    pulses, intervals = pulses_from_edges(player.log, active=0)
    assert set(pulses) == {60} and set(intervals) == {1000}
    assert player.levels == {0: 1, 1: 1}  # back to idle at the end
    assert sender._pi.waves == {}  # every created wave deleted


def test_pigpio_without_its_daemon_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pigpio", _fake_pigpio(_WavePlayer(), connected=False))
    with pytest.raises(RuntimeError, match="pigpiod"):
        make_sender("pigpio", 5, 6, WiegandTiming())


def test_a_missing_library_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lgpio", None)  # import fails
    with pytest.raises(RuntimeError, match="'lgpio'.*busy_wait"):
        make_sender("lgpio", 5, 6, WiegandTiming())


def test_busy_wait_over_gpiozero_mock_pins() -> None:
    factory = MockFactory()
    sender = make_sender("busy_wait", 20, 21, WiegandTiming(), pin_factory=factory)
    report = sender.send(encode(STANDARD_FORMATS["H10306"], 2, 3))
    d0, d1 = factory.pin(20), factory.pin(21)
    # each line: idle low, then one high and one low per pulse on it
    frame = encode(STANDARD_FORMATS["H10306"], 2, 3)
    assert len(d1.states) == 1 + 2 * sum(frame) and len(d0.states) == 1 + 2 * (len(frame) - sum(frame))
    assert d0.state == 0 and d1.state == 0 and len(report.pulses_us) == 34
    sender.close()


# -- input -------------------------------------------------------------------------------------------------------


def test_the_assembler_ends_a_frame_on_silence() -> None:
    assembler = WiegandAssembler(timeout_s=0.25)  # times in binary fractions: exact sums
    for i, bit in enumerate((1, 0, 1)):
        assert assembler.edge(bit, 1.0 + i * 0.125) is None
    assert assembler.complete(1.25 + 0.125) is None  # still inside the timeout
    assert assembler.complete(1.25 + 0.25) == (1, 0, 1)
    assert assembler.complete(2.0) is None
    assembler.edge(1, 3.0)
    assert assembler.edge(0, 3.5) == (1,)  # a late edge starts a new frame, delivering the old


def _emit(pins, bits, rng: random.Random) -> None:
    """A card reader: 50 us pulses about 2 ms apart, with jitter."""
    for bit in bits:
        pins[bit].drive_low()
        time.sleep(50e-6)
        pins[bit].drive_high()
        time.sleep(rng.uniform(0.0015, 0.003))


def test_wiegand_input_reads_a_reader_with_jitter_and_reports_bad_frames() -> None:
    factory = MockFactory()
    got: list = []
    # A generous timeout: on a loaded CI box a 3 ms sleep can take tens of ms, which would split a frame.
    reader = WiegandInput(12, 13, STANDARD_FORMATS, lambda card, bits, error: got.append((card, bits, error)),
                          timeout_s=0.25, pin_factory=factory)
    pins = [factory.pin(12), factory.pin(13)]
    rng = random.Random(4)
    try:
        _emit(pins, encode(STANDARD_FORMATS["H10304"], 99, 123456), rng)
        assert wait_for(lambda: len(got) == 1)
        assert got[0][0] == Card("H10304", 99, 123456)
        bad = list(encode(STANDARD_FORMATS["H10301"], 1, 2))
        bad[5] ^= 1
        _emit(pins, bad, rng)
        assert wait_for(lambda: len(got) == 2)
        assert got[1][0] is None and "parity" in got[1][2] and got[1][1] == tuple(bad)
        _emit(pins, (1, 0, 1), rng)
        assert wait_for(lambda: len(got) == 3)
        assert "matches no configured format" in got[2][2]
    finally:
        reader.close()
