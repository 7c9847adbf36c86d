"""Card credentials and the Wiegand bit layouts that carry them: pure functions over bits.

A format is a bit count, two fields (facility code and card number, most significant bit first)
and parity rules. Bit 0 is the first bit on the wire. Each parity rule names the bit it sets, even
or odd, and the bits it covers; rules are applied in the order written, so a rule may cover a
parity bit set by an earlier one (HID Corporate 1000's first bit covers both of its other parity
bits). Timing lives in daemon/panel/wiegand.py; nothing here knows about pins or clocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.settings import ConfigError, Section

PARITY_KINDS = ("even", "odd")


class CredentialError(ValueError):
    """A card number or facility code that its format cannot carry."""


class WiegandDecodeError(ValueError):
    """Bits that are not a valid frame of any configured format (wrong length, bad parity)."""


@dataclass(frozen=True)
class Field:
    start: int  # first bit (0 = first on the wire), most significant first
    length: int

    @property
    def maximum(self) -> int:
        return (1 << self.length) - 1

    def bits(self) -> range:
        return range(self.start, self.start + self.length)


@dataclass(frozen=True)
class ParityRule:
    bit: int
    kind: str  # 'even': the covered bits and this one hold an even number of ones; 'odd': an odd number
    over: tuple[int, ...]


@dataclass(frozen=True)
class WiegandFormat:
    name: str
    bits: int
    facility: Field
    card: Field
    parity: tuple[ParityRule, ...]

    def __post_init__(self) -> None:
        used = [*self.facility.bits(), *self.card.bits(), *(rule.bit for rule in self.parity)]
        if any(not 0 <= bit < self.bits for bit in used) or len(set(used)) != len(used):
            raise ValueError(f"format {self.name}: fields and parity bits must be distinct bits of 0..{self.bits - 1}")
        for rule in self.parity:
            if rule.kind not in PARITY_KINDS or rule.bit in rule.over or \
                    any(not 0 <= bit < self.bits for bit in rule.over):
                raise ValueError(f"format {self.name}: parity rule for bit {rule.bit} is not valid")

    def check(self, facility: int, card: int) -> None:
        """CredentialError unless this format can carry the facility code and card number."""
        for label, value, field in (("facility code", facility, self.facility), ("card number", card, self.card)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= field.maximum:
                raise CredentialError(f"{label} {value!r} does not fit format {self.name}: expected 0 to "
                                      f"{field.maximum} ({field.length} bits)")


@dataclass(frozen=True)
class Card:
    """A person's card as the gallery keeps it."""

    format: str
    facility: int
    number: int


def encode(fmt: WiegandFormat, facility: int, card: int) -> tuple[int, ...]:
    """The frame's bits, first on the wire first; CredentialError when a value does not fit."""
    fmt.check(facility, card)
    bits = [0] * fmt.bits
    _put(bits, fmt.facility, facility)
    _put(bits, fmt.card, card)
    for rule in fmt.parity:
        ones = sum(bits[i] for i in rule.over)
        bits[rule.bit] = ones % 2 if rule.kind == "even" else 1 - ones % 2
    return tuple(bits)


def decode(fmt: WiegandFormat, bits: tuple[int, ...] | list[int]) -> Card:
    """The card a frame carries; WiegandDecodeError on a wrong length or a failed parity rule."""
    if len(bits) != fmt.bits:
        raise WiegandDecodeError(f"{len(bits)} bits is not a {fmt.name} frame ({fmt.bits} bits)")
    for rule in fmt.parity:
        ones = bits[rule.bit] + sum(bits[i] for i in rule.over)
        if ones % 2 != (0 if rule.kind == "even" else 1):
            raise WiegandDecodeError(f"{fmt.name}: {rule.kind} parity of bit {rule.bit} failed")
    return Card(fmt.name, _get(bits, fmt.facility), _get(bits, fmt.card))


def decode_any(formats: dict[str, WiegandFormat], bits: tuple[int, ...] | list[int]) -> Card:
    """The card in a frame read off the wire, trying every format of its length."""
    candidates = [fmt for fmt in formats.values() if fmt.bits == len(bits)]
    if not candidates:
        raise WiegandDecodeError(f"{len(bits)} bits matches no configured format "
                                 f"({', '.join(f'{f.name} {f.bits}' for f in formats.values())})")
    errors = []
    for fmt in candidates:
        try:
            return decode(fmt, bits)
        except WiegandDecodeError as error:
            errors.append(str(error))
    raise WiegandDecodeError("; ".join(errors))


def to_bytes(bits: tuple[int, ...]) -> bytes:
    """Bits packed most significant first, the last byte padded with zeros (OSDP's raw card data)."""
    padded = list(bits) + [0] * (-len(bits) % 8)
    return bytes(int("".join(map(str, padded[i:i + 8])), 2) for i in range(0, len(padded), 8))


def _put(bits: list[int], field: Field, value: int) -> None:
    for offset in range(field.length):
        bits[field.start + offset] = (value >> (field.length - 1 - offset)) & 1


def _get(bits: tuple[int, ...] | list[int], field: Field) -> int:
    value = 0
    for i in field.bits():
        value = value << 1 | bits[i]
    return value


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# The published layouts (HID's format sheets, counted from 0). Corporate 1000's middle parity bits
# cover two of every three bits, offset by one from each other.
STANDARD_FORMATS: dict[str, WiegandFormat] = {fmt.name: fmt for fmt in (
    WiegandFormat("H10301", 26, Field(1, 8), Field(9, 16),
                  (ParityRule(0, "even", _span(1, 12)), ParityRule(25, "odd", _span(13, 24)))),
    WiegandFormat("H10306", 34, Field(1, 16), Field(17, 16),
                  (ParityRule(0, "even", _span(1, 16)), ParityRule(33, "odd", _span(17, 32)))),
    WiegandFormat("C1000-35", 35, Field(2, 12), Field(14, 20),
                  (ParityRule(1, "even", tuple(b for b in range(2, 34) if b % 3 != 1)),
                   ParityRule(34, "odd", tuple(b for b in range(1, 33) if b % 3 != 0)),
                   ParityRule(0, "odd", _span(1, 34)))),
    WiegandFormat("H10304", 37, Field(1, 16), Field(17, 19),
                  (ParityRule(0, "even", _span(1, 18)), ParityRule(36, "odd", _span(18, 35)))),
)}
ALIASES = {"26": "H10301", "34": "H10306", "35": "C1000-35", "37": "H10304"}


def format_named(name: str, formats: dict[str, WiegandFormat] | None = None) -> WiegandFormat:
    """A format by name or alias ('26' is H10301); CredentialError naming the known ones otherwise."""
    formats = STANDARD_FORMATS if formats is None else formats
    fmt = formats.get(ALIASES.get(name, name))
    if fmt is None:
        raise CredentialError(f"card format {name!r} is not known: expected one of "
                              f"{sorted(formats)} (or {', '.join(sorted(ALIASES))} bits)")
    return fmt


def parse_custom_formats(raw: Any, path: str) -> dict[str, WiegandFormat]:
    """Every format a config may use: the standard ones and its own layouts, e.g.

        formats:
          acme-40:
            bits: 40
            facility: {start: 1, length: 12}
            card: {start: 13, length: 26}
            parity:
              - {bit: 0, kind: even, over: [1-19]}    # runs "a-b" and single bits
              - {bit: 39, kind: odd, over: [20-38]}
    """
    formats = dict(STANDARD_FORMATS)
    if raw is None:
        return formats
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} = {raw!r} is not allowed: expected a mapping of format name to layout")
    for name, layout in raw.items():
        key = f"{path}.{name}"
        if name in formats or name in ALIASES:
            raise ConfigError(f"{key} is not allowed: {name!r} is a standard format's name")
        section = Section(layout, key, {"bits", "facility", "card", "parity"})
        bits = section.number("bits", low=2, high=128, integer=True)
        fields = [_field(section.section(part, {"start", "length"})) for part in ("facility", "card")]
        rules = section.get("parity", list, [])
        parity = tuple(_parity(rule, f"{key}.parity[{i}]") for i, rule in enumerate(rules))
        try:
            formats[name] = WiegandFormat(name, bits, fields[0], fields[1], parity)
        except ValueError as error:
            raise ConfigError(f"{key} is not allowed: {error}") from None
    return formats


def _field(section: Section) -> Field:
    return Field(section.number("start", low=0, high=127, integer=True),
                 section.number("length", low=1, high=64, integer=True))


def _parity(raw: Any, path: str) -> ParityRule:
    section = Section(raw, path, {"bit", "kind", "over"})
    over = section.get("over", list)
    covered: list[int] = []
    for item in over:
        if isinstance(item, int) and not isinstance(item, bool):
            covered.append(item)
        elif isinstance(item, str) and item.count("-") == 1 and all(p.strip().isdigit() for p in item.split("-")):
            first, last = (int(p) for p in item.split("-"))
            covered.extend(range(first, last + 1))
        else:
            section.fail("over", over, "a list of bit numbers and runs such as '1-12'")
    return ParityRule(section.number("bit", low=0, high=127, integer=True),
                      section.choice("kind", PARITY_KINDS), tuple(covered))
