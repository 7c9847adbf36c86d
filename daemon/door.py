"""Door I/O: the lock relay, door contact, request-to-exit button, status LED and buzzer.

Fail-secure: the relay is de-energised whenever this module is not sure the door should be
open — at construction (explicitly, whatever state the pin was in), on `release()` (the
daemon calls it on SIGTERM, on unhandled errors and when its watchdog is not fed), on
`close()` and at interpreter exit. "De-energised" means locked only with fail-secure hardware
(an electric strike, or a maglock wired through the relay's normally-open contact); a process
killed with SIGKILL or a crashed box leaves the pin to the hardware, so the relay input needs
a pull resistor that holds it in the off state.

All happenings go to an injected `on_event(kind, detail)` callback (the daemon wires it to the
event log); gpiozero calls the input callbacks from its own threads, so every state change
happens under one lock.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from gpiozero import LED, Button, Buzzer, DigitalInputDevice, OutputDevice
from gpiozero.pins import Factory

from daemon.clock import Clock
from daemon.settings import ConfigError, Section

log = logging.getLogger("facegate.door")

EventCallback = Callable[[str, str], None]
Pin = int | str  # gpiozero pin names: 17, "GPIO17", "BOARD11"

LEVELS = ("low", "high")
PULLS = ("internal", "external")  # an input's pull resistor: the GPIO chip's own, or one on the wiring


@dataclass(frozen=True)
class _FactorySpec:
    module: str
    cls: str
    package: str | None = None  # the library it needs, imported only when chosen
    install: str = ""  # how to install that library
    internal_pull: bool = True  # False: every input needs door.<input>.pull: external


# Imported only when chosen, so a box without a GPIO library still imports the daemon.
_PIN_FACTORIES: dict[str, _FactorySpec] = {
    "mock": _FactorySpec("gpiozero.pins.mock", "MockFactory"),
    "lgpio": _FactorySpec("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio", "pip install 'facegate[pi]'"),
    "rpigpio": _FactorySpec("gpiozero.pins.rpigpio", "RPiGPIOFactory", "RPi.GPIO",
                            "pip install RPi.GPIO (Raspberry Pi 4 and older)"),
    "pigpio": _FactorySpec("gpiozero.pins.pigpio", "PiGPIOFactory", "pigpio",
                           "pip install pigpio, with the pigpiod daemon running (Raspberry Pi 4 and older)"),
    "native": _FactorySpec("gpiozero.pins.native", "NativeFactory"),
    "jetson": _FactorySpec("daemon.jetson_pins", "JetsonFactory", "Jetson.GPIO",
                           "sudo apt install python3-jetson-gpio (JetPack's package; the venv needs "
                           "--system-site-packages, as tools/install_device.sh makes it)", internal_pull=False),
}


class DoorConfigError(ConfigError):
    """A door config value outside what is allowed; the message names its key path."""


class PinFactoryError(RuntimeError):
    """The chosen GPIO library is missing or cannot reach the hardware."""


def make_pin_factory(name: str | None) -> Factory | None:
    """The gpiozero pin factory for a config name; None leaves the choice to gpiozero
    (its GPIOZERO_PIN_FACTORY environment variable, else its own preference order)."""
    if name is None:
        return None
    check_pin_factory_library(name)
    spec = _PIN_FACTORIES[name]
    try:
        return getattr(importlib.import_module(spec.module), spec.cls)()
    except Exception as error:  # each library fails its own way when the GPIO chip is absent
        raise PinFactoryError(f"pin factory {name!r} could not start: {error}") from error


def check_pin_factory_library(name: str | None) -> None:
    """Raise PinFactoryError, naming the package and how to install it, when the library the
    pin factory `name` needs does not import here (check-config asks this on the device)."""
    if name is None:
        return
    if name not in _PIN_FACTORIES:
        raise DoorConfigError(f"door.pin_factory = {name!r} is not allowed: expected one of "
                              f"{sorted(_PIN_FACTORIES)} or null for gpiozero's default")
    spec = _PIN_FACTORIES[name]
    if spec.package is None:
        return
    try:
        importlib.import_module(spec.package)
    except ImportError as error:
        raise PinFactoryError(
            f"pin factory {name!r} needs the Python package {spec.package!r}, which does not import "
            f"({error}); install it: {spec.install}; or choose another door.pin_factory") from error
    except Exception as error:  # installed, but it refuses this machine (not a Pi / Jetson, no permission)
        raise PinFactoryError(f"pin factory {name!r}: the package {spec.package!r} is installed but does "
                              f"not start here: {error}") from error


@dataclass(frozen=True)
class DoorConfig:
    relay_pin: Pin
    name: str = "door"
    relay_active_high: bool = True  # many relay boards switch on a low input: set False for those
    unlock_seconds: float = 5.0
    contact_pin: Pin | None = None
    contact_closed_when: str = "low"  # pin level with the door closed: 'low' = reed switch to ground, pulled up
    contact_pull: str = "internal"  # 'external': a resistor on the wiring pulls the input (a Jetson needs one)
    held_open_seconds: float = 30.0
    exit_pin: Pin | None = None
    exit_pressed_when: str = "low"
    exit_pull: str = "internal"
    led_pin: Pin | None = None
    led_active_high: bool = True
    buzzer_pin: Pin | None = None
    buzzer_active_high: bool = True
    debounce_seconds: float | None = 0.05
    pin_factory: str | None = None  # see make_pin_factory

    def __post_init__(self) -> None:
        if self.unlock_seconds <= 0 or self.held_open_seconds <= 0:
            raise DoorConfigError("door unlock_seconds and held_open_seconds must be positive")
        for key, allowed in (("contact_closed_when", LEVELS), ("exit_pressed_when", LEVELS),
                             ("contact_pull", PULLS), ("exit_pull", PULLS)):
            if getattr(self, key) not in allowed:
                raise DoorConfigError(f"door {key} = {getattr(self, key)!r} is not allowed: expected "
                                      + " or ".join(map(repr, allowed)))
        pins = [p for p in (self.relay_pin, self.contact_pin, self.exit_pin, self.led_pin, self.buzzer_pin)
                if p is not None]
        if len(set(map(str, pins))) != len(pins):
            raise DoorConfigError(f"door pins {pins} are not allowed: expected a different pin for each device")

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, path: str = "door") -> DoorConfig:
        """Read the YAML `door` section; errors name the key path, the value and what is allowed."""
        try:
            return cls(**_door_values(section, path))
        except DoorConfigError:
            raise
        except ConfigError as error:
            raise DoorConfigError(str(error)) from None


def _door_values(section: dict[str, Any] | None, path: str) -> dict[str, Any]:
    top = Section(section, path, {"name", "pin_factory", "debounce_seconds", "relay", "contact",
                                  "exit_button", "led", "buzzer"})
    relay = top.section("relay", {"pin", "active_high", "unlock_seconds"})
    values: dict[str, Any] = {
        "name": top.get("name", str, "door"),
        "pin_factory": top.choice("pin_factory", (None, *_PIN_FACTORIES), None),
        "debounce_seconds": top.number("debounce_seconds", 0.05, low=0, high=1),
        "relay_pin": _pin(relay),
        "relay_active_high": relay.get("active_high", bool, True),
        "unlock_seconds": relay.number("unlock_seconds", 5.0, low=0.01, high=300),
    }
    # An optional device is fitted when its section is present.
    if "contact" in top.raw:
        contact = top.section("contact", {"pin", "closed_when", "pull", "held_open_seconds"})
        values.update(contact_pin=_pin(contact), contact_closed_when=contact.choice("closed_when", LEVELS, "low"),
                      contact_pull=_pull(contact, top),
                      held_open_seconds=contact.number("held_open_seconds", 30.0, low=0.01, high=3600))
    if "exit_button" in top.raw:
        button = top.section("exit_button", {"pin", "pressed_when", "pull"})
        values.update(exit_pin=_pin(button), exit_pressed_when=button.choice("pressed_when", LEVELS, "low"),
                      exit_pull=_pull(button, top))
    for device in ("led", "buzzer"):
        if device in top.raw:
            part = top.section(device, {"pin", "active_high"})
            values.update({f"{device}_pin": _pin(part), f"{device}_active_high": part.get("active_high", bool, True)})
    return values


def _pin(section: Section) -> Pin:
    value = section.get("pin", (int, str))
    if isinstance(value, int) and value < 0 or value == "":
        section.fail("pin", value, "a GPIO number or a gpiozero pin name such as 'GPIO17'")
    return value


def _pull(section: Section, top: Section) -> str:
    """An input's pull resistor; refused as 'internal' where the pin factory has no such thing."""
    pull = section.choice("pull", PULLS, "internal")
    factory = top.raw.get("pin_factory")
    if pull == "internal" and factory is not None and not _PIN_FACTORIES[factory].internal_pull:
        default = " (the default)" if "pull" not in section.raw else ""
        raise DoorConfigError(
            f"{section.key('pull')} = 'internal'{default} is not allowed with {top.key('pin_factory')} = "
            f"{factory!r}: its pins have no software pull resistors, so the input would float; fit a pull "
            f"resistor (about 10 kOhm to 3.3 V for an input active low, to ground for one active high) and set "
            f"{section.key('pull')}: external")
    return pull


def _input_pull(pull: str, active_level: str) -> dict[str, Any]:
    """gpiozero's pull arguments for an input active at `active_level`. An internal pull holds the
    input at its other level; with an external resistor gpiozero is told the active level instead
    (pull_up=None with active_state, gpiozero's documented way for an externally pulled input)."""
    if pull == "external":
        return {"pull_up": None, "active_state": active_level == "high"}
    return {"pull_up": active_level == "low"}


class Door:
    """One door's GPIO devices and its lock state machine.

    States: locked (relay off) or unlocked (relay on until `_relock_at`). The door contact,
    when fitted, turns a short unlock into a single passage: the relay relocks as soon as the
    door closes after having been opened; opening while locked is a forced-open alarm and
    staying open past held_open_seconds after a legitimate opening is a held-open alarm.
    """

    def __init__(self, config: DoorConfig, on_event: EventCallback | None = None, *,
                 pin_factory: Factory | None = None, clock: Clock | None = None) -> None:
        self.config = config
        # Deadlines (the unlock pulse, the held-open alarm) are on this clock: real time at a
        # door, the video's time in a fast replay (daemon.clock).
        self._clock = clock or Clock()
        self._on_event = on_event
        # RLock: release() may run in a signal handler on the main thread while that thread
        # is inside grant(); a plain lock would deadlock exactly when the door must lock.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._unlocked = False
        self._unlock_reason = ""
        self._relock_at: float | None = None  # deadline of the unlock pulse, on self._clock
        self._door_open = False
        self._opened_during_unlock = False
        self._held_open_at: float | None = None  # deadline of the held-open alarm
        self._alarm: str | None = None
        self._devices: list[Any] = []
        self._contact: DigitalInputDevice | None = None
        self._exit: Button | None = None
        self._led: LED | None = None
        self._buzzer: Buzzer | None = None
        factory = pin_factory if pin_factory is not None else make_pin_factory(config.pin_factory)
        try:
            self._relay = self._add(OutputDevice(config.relay_pin, active_high=config.relay_active_high,
                                                 initial_value=False, pin_factory=factory))
            self._relay.off()  # explicit, whatever initial_value did with the pin before
            if config.contact_pin is not None:
                # Not a Button: a shut door is "pressed" all day, and a Button's hold thread
                # would fire when_held and delay close() by its hold_time.
                self._contact = self._add(DigitalInputDevice(
                    config.contact_pin, **_input_pull(config.contact_pull, config.contact_closed_when),
                    bounce_time=config.debounce_seconds, pin_factory=factory))
            if config.exit_pin is not None:
                self._exit = self._add(Button(
                    config.exit_pin, **_input_pull(config.exit_pull, config.exit_pressed_when),
                    bounce_time=config.debounce_seconds, pin_factory=factory))
            if config.led_pin is not None:
                self._led = self._add(LED(config.led_pin, active_high=config.led_active_high, pin_factory=factory))
            if config.buzzer_pin is not None:
                self._buzzer = self._add(Buzzer(config.buzzer_pin, active_high=config.buzzer_active_high,
                                                pin_factory=factory))
        except Exception:
            self._close_devices()
            raise
        with self._lock:
            self._emit("relay_off", "start")
            if self._contact is not None:
                # active = the contact reads its closed level, i.e. the door is shut
                self._contact.when_activated = self._door_closed
                self._contact.when_deactivated = self._door_opened
                if not self._contact.is_active:
                    # Open at start: nobody was granted, but it is not a fresh forcing either;
                    # it counts as held open so a door left ajar still raises the alarm.
                    self._door_open = True
                    self._held_open_at = self._clock.now() + config.held_open_seconds
                    self._emit("door_opened", "open at start")
            if self._exit is not None:
                self._exit.when_pressed = self._exit_pressed
        # Last resort for a forgotten close(); runs before gpiozero's own atexit hook (LIFO).
        atexit.register(self.close)
        self._thread: threading.Thread | None = None
        self._stop_following_clock = lambda: None
        if self._clock.driven_by_frames:
            self._stop_following_clock = self._clock.on_advance(self._on_clock)
        else:
            self._thread = threading.Thread(target=self._run, name=f"door-{config.name}", daemon=True)
            self._thread.start()

    def _add(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    # -- public API -------------------------------------------------------------------

    @property
    def is_unlocked(self) -> bool:
        with self._lock:
            return self._unlocked

    @property
    def is_open(self) -> bool | None:
        """The door contact's reading, or None without a contact."""
        with self._lock:
            return None if self._contact is None else self._door_open

    @property
    def alarm(self) -> str | None:
        """'alarm_held_open', 'alarm_forced_open' or None."""
        with self._lock:
            return self._alarm

    def grant(self, reason: str) -> bool:
        """Unlock for unlock_seconds; a grant while unlocked extends the pulse.
        False when the door is closed for business (closed object) or the relay failed."""
        with self._lock:
            if self._closed:
                return False
            deadline = self._clock.now() + self.config.unlock_seconds
            if self._unlocked:
                self._relock_at = max(self._relock_at or deadline, deadline)
                self._emit("unlock_extended", reason)
            else:
                try:
                    self._relay.on()
                except Exception as error:
                    self._fault(f"relay on failed: {error!r}")
                    return False
                self._unlocked = True
                self._unlock_reason = reason
                self._relock_at = deadline
                # A door already standing open passes someone when it next closes: relock then too.
                self._opened_during_unlock = self._door_open
                self._set(self._led, True)
                self._emit("relay_on", reason)
            self._wake.notify()
            return True

    def release(self, reason: str = "release") -> None:
        """Lock now (relay off, pending unlock cancelled). The door stays usable: a later
        grant() unlocks again. Safe from any thread and from signal handlers."""
        with self._lock:
            if not self._closed:
                self._relock(f"release: {reason}")

    def close(self) -> None:
        """Lock, switch every output off and free the pins; idempotent. From a signal handler
        call release() instead and close from the main flow: close() waits for threads."""
        with self._lock:
            if self._closed:
                return
            self._relock("close")
            self._set(self._buzzer, False)
            self._closed = True
            self._wake.notify_all()
        self._stop_following_clock()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        # Outside the lock: closing a gpiozero input may wait for its callback thread, which
        # may itself be waiting for our lock.
        self._close_devices()
        atexit.unregister(self.close)

    def __enter__(self) -> Door:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state machine (every method below runs with self._lock held) ------------------

    def _relock(self, detail: str) -> None:
        # Written whatever our flag says: after a fault the flag may not match the pin.
        was_unlocked = self._unlocked
        self._unlocked = False
        self._relock_at = None
        self._opened_during_unlock = False
        try:
            self._relay.off()
        except Exception as error:
            self._fault(f"relay off failed ({detail}): {error!r}")
        self._set(self._led, False)
        if was_unlocked:
            self._emit("relay_off", detail)

    def _door_opened(self) -> None:
        with self._lock:
            if self._closed or self._door_open:
                return
            self._door_open = True
            if self._unlocked:
                self._opened_during_unlock = True
                self._held_open_at = self._clock.now() + self.config.held_open_seconds
                self._emit("door_opened", f"during unlock ({self._unlock_reason})")
            else:
                self._emit("door_opened", "while locked")
                self._raise_alarm("alarm_forced_open", "door opened while locked")
            self._wake.notify()

    def _door_closed(self) -> None:
        with self._lock:
            if self._closed or not self._door_open:
                return
            self._door_open = False
            self._held_open_at = None
            self._emit("door_closed", "")
            if self._alarm is not None:
                self._emit("alarm_cleared", f"{self._alarm} ended: door closed")
                self._alarm = None
                self._set(self._buzzer, False)
            if self._unlocked and self._opened_during_unlock:
                self._relock("door closed")  # one passage per grant: no tailgating on the rest of the pulse

    def _exit_pressed(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._emit("exit_request", "exit button")
            self.grant("exit request")

    def _raise_alarm(self, kind: str, detail: str) -> None:
        self._alarm = kind
        self._set(self._buzzer, True)
        self._emit(kind, detail)

    def _run(self) -> None:
        """Scheduler thread on a real-time clock: one for the door's life, waking at the next deadline."""
        with self._wake:
            while not self._closed:
                self._expire(self._clock.now())
                deadlines = [d for d in (self._relock_at, self._held_open_at) if d is not None]
                self._wake.wait(max(0.0, min(deadlines) - self._clock.now()) if deadlines else None)

    def _on_clock(self, now: float) -> None:
        """A frame-driven clock moved: the deadlines it passed expire now, in the frame's thread."""
        with self._lock:
            if not self._closed:
                self._expire(now)

    def _expire(self, now: float) -> None:
        try:
            if self._relock_at is not None and now >= self._relock_at:
                self._relock("timeout")
            if self._held_open_at is not None and now >= self._held_open_at:
                self._held_open_at = None
                self._raise_alarm("alarm_held_open", f"open longer than {self.config.held_open_seconds:g} s")
        except Exception as error:  # keep the scheduler alive: it is what relocks the door
            self._fault(f"door scheduler: {error!r}")
            self._relock_at = self._held_open_at = None

    def _fault(self, detail: str) -> None:
        log.error("door %s: %s", self.config.name, detail)
        self._emit("fault", detail)
        try:
            self._relay.off()
        except Exception:  # already reported; nothing more to try from software
            pass

    def _set(self, device: Any, on: bool) -> None:
        if device is None:
            return
        try:
            device.on() if on else device.off()
        except Exception as error:  # an indicator failing must never keep the door from locking
            log.error("door %s: %r", self.config.name, error)
            self._emit("fault", f"{type(device).__name__} {'on' if on else 'off'} failed: {error!r}")

    def _emit(self, kind: str, detail: str) -> None:
        log.info("door %s: %s %s", self.config.name, kind, detail)
        if self._on_event is None:
            return
        try:
            self._on_event(kind, detail)
        except Exception:  # the event sink's trouble is not the door's
            log.exception("door %s: on_event(%r) failed", self.config.name, kind)

    def _close_devices(self) -> None:
        for device in reversed(self._devices):
            try:
                device.close()
            except Exception as error:
                log.error("door %s: closing %r failed: %r", self.config.name, device, error)
        self._devices.clear()
