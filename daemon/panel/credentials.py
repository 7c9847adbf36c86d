"""What a person presents besides a face: a card (daemon.panel.formats.Card) and a PIN, kept hashed."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from daemon.panel.formats import Card, CredentialError, WiegandFormat, format_named

PIN_DIGITS = (4, 12)
# scrypt at 2^14: about 15 ms a guess on a door's CPU. A PIN has few digits, so its hash alone resists
# little; the gallery file is owner-only and the hash keeps the PIN out of backups and bundles.
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Credential:
    card: Card | None
    pin_hash: str | None  # 'scrypt$<salt hex>$<hash hex>'


def checked_card(format_name: str, facility: int, number: int,
                 formats: dict[str, WiegandFormat] | None = None) -> Card:
    """A card its format can carry (standard formats, or those of a config's panel.formats);
    CredentialError naming the limit otherwise."""
    fmt = format_named(format_name, formats)
    fmt.check(facility, number)
    return Card(fmt.name, facility, number)


def hash_pin(pin: str) -> str:
    if not (pin.isascii() and pin.isdigit() and PIN_DIGITS[0] <= len(pin) <= PIN_DIGITS[1]):
        raise CredentialError(f"a PIN is {PIN_DIGITS[0]} to {PIN_DIGITS[1]} digits (0-9)")
    salt = secrets.token_bytes(16)
    return f"scrypt${salt.hex()}${hashlib.scrypt(pin.encode(), salt=salt, **_SCRYPT).hex()}"


def pin_matches(pin: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        candidate = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest)
