"""A gpiozero pin factory over NVIDIA's Jetson.GPIO, for the Jetson's 40-pin header.

gpiozero ships no Jetson factory. This one follows gpiozero's RPiGPIOFactory (Jetson.GPIO
keeps RPi.GPIO's API): Jetson.GPIO runs in BOARD mode, so a channel is a header pin number.

Pin names: an int, "n", "GPIOn" or "BCMn" is the Raspberry-Pi-compatible BCM number of the
header pin (the mapping Jetson.GPIO's own BCM mode uses: GPIO17 is header pin 11); "BOARDn"
and "40PIN:n" are header pin n. Only the 22 header pins Jetson.GPIO drives as GPIO are pins
here; a carrier board may lack some of them, which Jetson.GPIO reports at setup.

What the header cannot do, and this factory refuses rather than pretends:
- pull resistors: Jetson.GPIO ignores setup()'s pull_up_down (it only warns), so a pin's
  pull is fixed at 'floating' and an input needs a resistor on the wiring;
- PWM (Jetson.GPIO has hardware PWM on a few pins only; the door needs none) and SPI.

Jetson.GPIO is imported when the factory is made, so this module imports on any machine.
Jetson.GPIO's state is per process: make one factory per process.
"""
from __future__ import annotations

from contextlib import contextmanager
from time import monotonic
from typing import Any, Iterator

from gpiozero.exc import (
    PinFixedPull,
    PinInvalidBounce,
    PinInvalidEdges,
    PinInvalidFunction,
    PinInvalidPin,
    PinInvalidState,
    PinSetInput,
)
from gpiozero.pins import BoardInfo, Factory, HeaderInfo, PinInfo
from gpiozero.pins.pi import PiPin

HEADER = "40PIN"

# Header pin -> BCM number, for the header pins Jetson.GPIO drives as GPIO (its gpio_pin_data.py
# gives every Jetson the same ones; a carrier board may lack one, the TX2's pin 26 for instance).
GPIO_PINS = {7: 4, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10, 21: 9, 22: 25, 23: 11,
             24: 8, 26: 7, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21}
# The other header pins, named so that asking for one says what it is.
OTHER_PINS = {1: "3V3", 2: "5V", 3: "I2C_SDA", 4: "5V", 5: "I2C_SCL", 6: "GND", 8: "UART_TX", 9: "GND",
              10: "UART_RX", 14: "GND", 17: "3V3", 20: "GND", 25: "GND", 27: "I2C_SDA", 28: "I2C_SCL",
              30: "GND", 34: "GND", 39: "GND"}

_CHOOSE = ("give a Raspberry-Pi-compatible BCM number (17 or 'GPIO17' is header pin 11) or a header pin "
           "('BOARD11'); the GPIO header pins are "
           + ", ".join(f"BOARD{n} (GPIO{bcm})" for n, bcm in GPIO_PINS.items()))
NO_PULL = ("Jetson header pins have no software pull resistors (Jetson.GPIO ignores pull_up_down): "
           "fit a pull resistor on the wiring and build the input with pull_up=None and active_state "
           "(facegate: door.contact.pull / door.exit_button.pull: external)")


def _pin_info(number: int) -> PinInfo:
    names = {f"BOARD{number}", f"{HEADER}:{number}"}
    if number in GPIO_PINS:
        bcm = GPIO_PINS[number]
        name, interfaces = f"GPIO{bcm}", {"gpio"}
        names |= {bcm, str(bcm), f"BCM{bcm}"}
    else:
        name = OTHER_PINS[number]
        interfaces = {name.split("_")[0].lower()} if "_" in name else {""}
    names.add(name)
    row, col = divmod(number - 1, 2)
    return PinInfo(number=number, name=name, names=frozenset(names), pull="", row=row + 1, col=col + 1,
                   interfaces=frozenset(interfaces))


HEADER_INFO = HeaderInfo(name=HEADER, rows=20, columns=2, pins={n: _pin_info(n) for n in range(1, 41)})


class JetsonFactory(Factory):
    """gpiozero pins on the Jetson's 40-pin header through Jetson.GPIO (JetPack's
    python3-jetson-gpio). See the module docstring for pin names."""

    def __init__(self) -> None:
        super().__init__()
        import Jetson.GPIO as GPIO  # lazily: only a Jetson has it

        # Jetson.GPIO's warnings stay on: its pinmux warning is the one hint that a header
        # pin is not muxed as GPIO (see jetson-io), and the door never asks for a pull.
        GPIO.setmode(GPIO.BOARD)
        self._gpio = GPIO
        self.pins: dict[PinInfo, JetsonPin] = {}
        info = GPIO.JETSON_INFO
        self._board_info = BoardInfo(
            revision=str(info.get("REVISION", "unknown")), model=str(info.get("TYPE", "Jetson")),
            pcb_revision="unknown", released="unknown", soc=str(info.get("PROCESSOR", "unknown")),
            manufacturer=str(info.get("MANUFACTURER", "NVIDIA")), memory=0, storage="unknown", usb=0,
            usb3=0, ethernet=0, eth_speed=0, wifi=False, bluetooth=False, csi=0, dsi=0,
            headers={HEADER: HEADER_INFO}, board="")

    def close(self) -> None:
        """Release every pin, then let Jetson.GPIO clean up whatever else this process set up."""
        for pin in self.pins.values():
            pin.close()
        self.pins.clear()
        self._gpio.cleanup()

    def pin(self, name: Any) -> JetsonPin:
        for _, info in self._board_info.find_pin(name):
            if "gpio" not in info.interfaces:
                raise PinInvalidPin(f"{name!r} is header pin {info.number}, {info.name}, not a GPIO: {_CHOOSE}")
            if info not in self.pins:
                self.pins[info] = JetsonPin(self, info)
            return self.pins[info]
        raise PinInvalidPin(f"{name!r} is not a pin of the Jetson 40-pin header: {_CHOOSE}")

    def _get_board_info(self) -> BoardInfo:
        return self._board_info

    @staticmethod
    def ticks() -> float:
        return monotonic()

    @staticmethod
    def ticks_diff(later: float, earlier: float) -> float:
        return later - earlier


class JetsonPin(PiPin):
    """One header pin. PiPin brings gpiozero's when_changed bookkeeping (weak references,
    enabling and disabling edge detection); the rest maps onto Jetson.GPIO calls."""

    EDGES = ("both", "rising", "falling")

    def __init__(self, factory: JetsonFactory, info: PinInfo) -> None:
        super().__init__(factory, info)
        self._gpio = factory._gpio
        self._channel = info.number  # BOARD mode: the channel is the header pin
        self._bounce: float | None = None
        self._edges = "both"
        self._function = "input"
        self._setup(self._gpio.IN)  # an input drives nothing until a device says otherwise

    def __repr__(self) -> str:
        return f"{self.info.name} (BOARD{self._channel})"

    def close(self) -> None:
        self.when_changed = None
        if self._gpio.getmode() is not None:  # None: the factory has cleaned up everything already
            self._gpio.cleanup(self._channel)

    def _setup(self, direction: int, **kwargs: Any) -> None:
        try:
            self._gpio.setup(self._channel, direction, **kwargs)
        except ValueError as error:  # Jetson.GPIO's word for a pin this carrier board lacks
            raise PinInvalidPin(f"{self!r} is not a GPIO on this Jetson: {error}") from error

    def output_with_state(self, state: Any) -> None:
        self._setup(self._gpio.OUT, initial=self._level(state))
        self._function = "output"

    def input_with_pull(self, pull: str) -> None:
        self._check_pull(pull)
        self._setup(self._gpio.IN)
        self._function = "input"

    def _get_function(self) -> str:
        return self._function

    def _set_function(self, value: str) -> None:
        if value == "input":
            self._setup(self._gpio.IN)
        elif value == "output":
            self._setup(self._gpio.OUT)
        else:
            raise PinInvalidFunction(f'invalid function "{value}" for pin {self!r}: expected input or output')
        self._function = value

    def _get_state(self) -> int:
        return self._gpio.input(self._channel)

    def _set_state(self, value: Any) -> None:
        if self._function != "output":
            raise PinSetInput(f"cannot set the state of input pin {self!r}")
        self._gpio.output(self._channel, self._level(value))

    def _level(self, state: Any) -> int:
        if state not in (0, 1):  # True and False included; no PWM here
            raise PinInvalidState(f'invalid state "{state}" for pin {self!r}: expected 0 or 1')
        return int(state)

    def _get_pull(self) -> str:
        return "floating"

    def _set_pull(self, value: str) -> None:
        self._check_pull(value)

    def _check_pull(self, pull: str) -> None:
        if pull != "floating":
            raise PinFixedPull(f"cannot pull {self!r} {pull}: {NO_PULL}")

    def _get_bounce(self) -> float | None:
        return self._bounce

    def _set_bounce(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise PinInvalidBounce("bounce must be 0 or greater")
        with self._detection_paused():
            self._bounce = value

    def _get_edges(self) -> str:
        return self._edges

    def _set_edges(self, value: str) -> None:
        if value not in self.EDGES:
            raise PinInvalidEdges(f'invalid edges "{value}" for pin {self!r}: expected one of {self.EDGES}')
        with self._detection_paused():
            self._edges = value

    @contextmanager
    def _detection_paused(self) -> Iterator[None]:
        # Jetson.GPIO takes edge and bounce time only when detection is added: re-add it.
        callback = self.when_changed
        self.when_changed = None
        try:
            yield
        finally:
            self.when_changed = callback

    def _enable_event_detect(self) -> None:
        edge = {"both": self._gpio.BOTH, "rising": self._gpio.RISING, "falling": self._gpio.FALLING}[self._edges]
        bouncetime = None if self._bounce is None else round(self._bounce * 1000)  # Jetson.GPIO: int ms
        self._gpio.add_event_detect(self._channel, edge, callback=self._edge_detected, bouncetime=bouncetime)

    def _disable_event_detect(self) -> None:
        self._gpio.remove_event_detect(self._channel)

    def _edge_detected(self, channel: int) -> None:
        # Jetson.GPIO names the channel, not the level: read it now, as RPiGPIOPin does.
        self._call_when_changed(self._factory.ticks(), self.state)
