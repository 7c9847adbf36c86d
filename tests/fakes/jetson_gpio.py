"""A small fake of NVIDIA's Jetson.GPIO that records its calls and keeps the real library's rules.

Rules kept, from Jetson.GPIO's README and lib/python/Jetson/GPIO/gpio.py (2.1, JetPack 6):
setmode before anything else and never a second, different mode; setup only on a header
pin the board has as GPIO (ValueError otherwise); an explicit pull_up_down is ignored with
a warning, and refused on an output; output only on an OUT channel, input only on a set-up
one; add_event_detect only on an IN channel, once, with an int bouncetime in ms; setup of a
set-up channel cleans it up first; cleanup() with no channel cleans all and forgets the mode.

Only BOARD numbering is modelled (the factory under test uses it). The test plays the
outside world: drive(channel, level) sets what the wiring holds an input at and fires the
matching edge callbacks with Jetson.GPIO's debounce: an edge within bouncetime ms of the last
delivered one is dropped. The real library calls back from its event thread; here the
callbacks run inside drive(), so a test knows they ran when drive() returns. `clock` (seconds)
can be replaced to place edges in time. tests/fakes/__init__.py loads a fresh copy per test.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

log: list[tuple] = []
clock: Callable[[], float] = time.monotonic

BOARD, BCM, TEGRA_SOC, CVM = 10, 11, 1000, 1001
PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22
HIGH, LOW = 1, 0
RISING, FALLING, BOTH = 31, 32, 33
UNKNOWN, OUT, IN, HARD_PWM = -1, 0, 1, 43
VERSION = "2.1.7"
model = "JETSON_ORIN_NANO"
JETSON_INFO = {"P1_REVISION": 1, "RAM": "8192M", "REVISION": "Unknown", "TYPE": "Jetson Orin Nano (fake)",
               "MANUFACTURER": "NVIDIA", "PROCESSOR": "A78AE"}

# The header pins an Orin Nano developer kit has as GPIO; a test may remove one to play a
# carrier board without it.
CHANNELS = {7, 11, 12, 13, 15, 16, 18, 19, 21, 22, 23, 24, 26, 29, 31, 32, 33, 35, 36, 37, 38, 40}

_mode: int | None = None
_direction: dict[int, int] = {}  # set-up channel -> IN or OUT
_outputs: dict[int, int] = {}  # OUT channel -> the level it drives
_wiring: dict[int, int] = {}  # channel -> the level the outside world holds it at (drive())
_events: dict[int, dict[str, Any]] = {}  # channel -> edge, callback, bouncetime, last delivered time


class _Default:
    def __init__(self, value: int) -> None:
        self.value = value


_NO_PULL = _Default(PUD_OFF)


def setwarnings(state: bool) -> None:
    log.append(("setwarnings", state))


def setmode(mode: int) -> None:
    global _mode
    log.append(("setmode", mode))
    if _mode is not None and mode != _mode:
        raise ValueError("A different mode has already been set!")
    if mode not in (BOARD, BCM, TEGRA_SOC, CVM):
        raise ValueError("An invalid mode was passed to setmode()!")
    if mode != BOARD:
        raise NotImplementedError("the fake models BOARD numbering only")
    _mode = mode


def getmode() -> int | None:
    return _mode


def _channels(channels: Any) -> list[int]:
    if _mode is None:
        raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD), GPIO.setmode(GPIO.BCM), "
                           "GPIO.setmode(GPIO.TEGRA_SOC) or GPIO.setmode(GPIO.CVM)")
    channels = list(channels) if isinstance(channels, (list, tuple)) else [channels]
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"Channel {channel} is invalid")
    return channels


def setup(channels: Any, direction: int, pull_up_down: Any = _NO_PULL, initial: Any = None,
          consumer: str = "Jetson-gpio") -> None:
    explicit_pull = pull_up_down is not _NO_PULL
    pull = pull_up_down if explicit_pull else PUD_OFF
    log.append(("setup", channels, direction, pull if explicit_pull else None, initial))
    channels = _channels(channels)
    if direction not in (IN, OUT):
        raise ValueError("An invalid direction was passed to setup()")
    if direction == OUT and pull != PUD_OFF:
        raise ValueError("pull_up_down parameter is not valid for outputs")
    if explicit_pull:
        warnings.warn("Jetson.GPIO ignores setup()'s pull_up_down parameter")
    if pull not in (PUD_OFF, PUD_UP, PUD_DOWN):
        raise ValueError("Invalid value for pull_up_down; should be one of PUD_OFF, PUD_UP or PUD_DOWN")
    if direction == IN and initial is not None:
        raise ValueError("initial parameter is not valid for inputs")
    for channel in channels:
        if channel in _direction:
            _cleanup_one(channel)
        _direction[channel] = direction
        if direction == OUT:
            _outputs[channel] = LOW if initial is None else int(bool(initial))


def output(channels: Any, values: Any) -> None:
    log.append(("output", channels, values))
    channels = _channels(channels)
    values = list(values) if isinstance(values, (list, tuple)) else [values] * len(channels)
    if len(values) != len(channels):
        raise RuntimeError("Number of values != number of channels")
    if any(_direction.get(channel) != OUT for channel in channels):
        raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
    for channel, value in zip(channels, values):
        _outputs[channel] = int(bool(value))


def input(channel: int) -> int:
    log.append(("input", channel))
    (channel,) = _channels(channel)
    if channel not in _direction:
        raise RuntimeError("You must setup() the GPIO channel first")
    return _outputs[channel] if _direction[channel] == OUT else _wiring.get(channel, LOW)


def add_event_detect(channel: int, edge: int, callback: Callable[[int], Any] | None = None,
                     bouncetime: int | None = None, polltime: float = 0.2) -> None:
    log.append(("add_event_detect", channel, edge, callback, bouncetime))
    (channel,) = _channels(channel)
    if callback is not None and not callable(callback):
        raise TypeError("Callback Parameter must be callable")
    if _direction.get(channel) != IN:
        raise RuntimeError("You must setup() the GPIO channel as an input first")
    if edge not in (RISING, FALLING, BOTH):
        raise ValueError("The edge must be set to RISING, FALLING, or BOTH")
    if bouncetime is not None:
        if type(bouncetime) is not int:
            raise TypeError("bouncetime must be an integer")
        if bouncetime < 0:
            raise ValueError("bouncetime must be an integer greater than 0")
    if channel in _events:  # 2.1 warns and ignores the new one; either way it is the caller's bug
        raise RuntimeError("Conflicting edge already enabled for this GPIO channel")
    _events[channel] = {"edge": edge, "callback": callback, "bouncetime": bouncetime, "last": None}


def remove_event_detect(channel: int, timeout: float = 0.5) -> None:
    log.append(("remove_event_detect", channel))
    (channel,) = _channels(channel)
    _events.pop(channel, None)


def cleanup(channel: Any = None) -> None:
    global _mode
    log.append(("cleanup",) if channel is None else ("cleanup", channel))
    if _mode is None:
        warnings.warn("No channels have been set up yet - nothing to clean up! Try cleaning up at the end of "
                      "your program instead!", RuntimeWarning)
        return
    if channel is None:
        for set_up in list(_direction):
            _cleanup_one(set_up)
        _mode = None
        return
    for one in _channels(channel):
        if one in _direction:
            _cleanup_one(one)


def _cleanup_one(channel: int) -> None:
    _events.pop(channel, None)
    _outputs.pop(channel, None)
    del _direction[channel]


# -- the test's side of the wire ----------------------------------------------------------------

def drive(channel: int, level: int) -> None:
    """Hold `channel` at `level` from outside, firing its edge callback as Jetson.GPIO would."""
    before = _wiring.get(channel, LOW)
    _wiring[channel] = level
    event = _events.get(channel)
    if event is None or _direction.get(channel) != IN or level == before:
        return
    if event["edge"] != BOTH and event["edge"] != (RISING if level == HIGH else FALLING):
        return
    now = clock()
    bounce = event["bouncetime"]
    if bounce is not None and event["last"] is not None and (now - event["last"]) * 1000 <= bounce:
        return  # Jetson.GPIO drops an edge inside the bounce time (it does not defer it)
    event["last"] = now
    if event["callback"] is not None:
        event["callback"](channel)


def output_level(channel: int) -> int:
    """The level an OUT channel drives."""
    return _outputs[channel]


def calls(name: str) -> list[tuple]:
    """The logged calls of one name, each without the name."""
    return [entry[1:] for entry in log if entry[0] == name]
