"""Reading plain config dicts by key path, so every error names the key, the value and what is allowed."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value outside what is allowed; the message names its key path."""


_MISSING = object()

# What an operator reads in "expected ...": YAML's words, not Python's type names.
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list",
              bool: "true or false"}


def kind_names(kinds: tuple[type, ...]) -> str:
    """The allowed kinds in English, e.g. 'an integer or a string'."""
    return " or ".join(KIND_NAMES.get(kind, f"a {kind.__name__}") for kind in kinds)


class Section:
    """One mapping of the config, read key by key; unknown keys are errors."""

    def __init__(self, raw: Any, path: str, keys: set[str]) -> None:
        self.path = path
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} = {raw!r} is not allowed: expected a mapping")
        unknown = sorted(set(raw) - keys)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])} is not a known key: expected one of {sorted(keys)}")
        self.raw = raw

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{self.key(name)} = {value!r} is not allowed: expected {allowed}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = self.raw.get(name)
        if value is None:  # absent, or written as null: both mean "the default"
            if default is _MISSING:
                raise ConfigError(f"{self.key(name)} is required")
            if default is None:
                return None
            value = default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        accepted = kinds + (int,) if float in kinds and int not in kinds else kinds  # 5 is a number too
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, accepted):
            self.fail(name, value, kind_names(kinds))
        return float(value) if kinds[0] is float else value

    def number(self, name: str, default: Any = _MISSING, low: float | None = None, high: float | None = None,
               integer: bool = False) -> Any:
        value = self.get(name, int if integer else float, default)
        if value is None:
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{'an integer' if integer else 'a number'} from {low if low is not None else '-inf'} to {high if high is not None else 'inf'}"
            self.fail(name, value, bounds)
        return value

    def choice(self, name: str, choices: tuple, default: Any = _MISSING) -> Any:
        value = self.raw.get(name, default)
        if value is _MISSING:
            raise ConfigError(f"{self.key(name)} is required")
        if value not in choices:
            self.fail(name, value, " or ".join(repr(c) for c in choices))
        return value

    def section(self, name: str, keys: set[str]) -> "Section":
        return Section(self.raw.get(name), self.key(name), keys)
