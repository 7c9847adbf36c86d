"""daemon/config.example.yaml tells the truth: every value it shows is the loader's default, except the
keys it marks `# required` (the loader refuses a config without them) and `# example` (a value to adapt).

A leaf is checked by writing it, with its shown value, into a config of only the marked keys: a true
default changes nothing the loader builds; a value the loader does not default to, or a key it does not
know, shows up as a difference or an error naming the key. A section marked example (door.contact, a
policy group) is an optional part: it is in that config, and its keys are judged by their own marks.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from daemon import config as config_module
from daemon.policy import Policy
from daemon.settings import ConfigError
from engines import model_card
from engines.manifest import MODELS_DIR
from engines.model_card import find_card

# Keys that switch a section on, so that the section's other keys are read at all (mqtt.host is null,
# off, in the example: with no broker the loader ignores the rest of the section).
SWITCHED_ON = {("mqtt", "host"): "broker.example.lan"}


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    value: Any
    line: int  # 1-based, for messages
    mark: str | None  # 'required', 'example' or None (a default)


def leaves(text: str) -> list[Leaf]:
    """Every key of the example whose value is not a non-empty mapping, with the mark its comment starts with."""
    lines = text.splitlines()
    data = yaml.safe_load(text)

    def mark_of(line: int) -> str | None:
        comment = lines[line].partition(" #")[2].strip()
        return next((m for m in ("required", "example") if comment.startswith(m)), None)

    found: list[Leaf] = []

    def walk(node: yaml.MappingNode, path: tuple[str, ...]) -> None:
        for key_node, value_node in node.value:
            here = path + (key_node.value,)
            mark = mark_of(key_node.start_mark.line)
            if isinstance(value_node, yaml.MappingNode) and value_node.value:
                if mark == "required":
                    raise AssertionError(f"line {key_node.start_mark.line + 1}: mark the keys under "
                                         f"{'.'.join(here)}, not the section")
                walk(value_node, here)
            else:
                found.append(Leaf(here, _at(data, here), key_node.start_mark.line + 1, mark))

    walk(yaml.compose(text), ())
    return found


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _with(raw: dict, path: tuple[str, ...], value: Any) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(value)
    return raw


def _without(raw: dict, path: tuple[str, ...]) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return raw


def marked_config(found: list[Leaf], marks: tuple[str, ...] = ("required", "example")) -> dict:
    raw: dict = {}
    for leaf in found:
        if leaf.mark in marks:
            raw = _with(raw, leaf.path, leaf.value)
    for path, value in SWITCHED_ON.items():
        raw = _with(raw, path, value)
    return raw


def comparable(value: Any) -> Any:
    """What the loader built, as plain values: a Config holds model cards with numpy arrays (which == cannot
    compare) and a Policy (which compares by identity)."""
    if dataclasses.is_dataclass(value):
        return type(value).__name__, {f.name: comparable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(map(repr, value))
    if isinstance(value, Policy):
        return comparable(vars(value))
    return value


def loaded(raw: dict) -> Any:
    return comparable(config_module.parse(raw))


def untrue_defaults(text: str) -> list[str]:
    """One line per shown default that is not the loader's, per unknown key, per false 'required'."""
    found = leaves(text)
    base_raw = marked_config(found)
    base = loaded(base_raw)
    problems = []
    for leaf in found:
        name = ".".join(leaf.path)
        if leaf.mark is None and leaf.path not in SWITCHED_ON:
            try:
                differs = loaded(_with(base_raw, leaf.path, leaf.value)) != base
            except ConfigError as error:
                problems.append(f"line {leaf.line}: {name}: {error}")
                continue
            if differs:
                problems.append(f"line {leaf.line}: {name}: {leaf.value!r} is shown as the default, but the loader's "
                                f"default differs (mark it '# example' or show the default)")
        elif leaf.mark == "required":
            try:
                config_module.parse(_without(base_raw, leaf.path))
            except ConfigError as error:
                if "is required" not in str(error):
                    problems.append(f"line {leaf.line}: {name} omitted: refused for another reason: {error}")
            else:
                problems.append(f"line {leaf.line}: {name} is marked required, but the loader starts without it")
    return problems


EXAMPLE = config_module.EXAMPLE_PATH.read_text()


@pytest.fixture(autouse=True)
def cards_read_once(monkeypatch):
    """The same real cards, parsed once: each check loads the config again, and the cards' YAML is most of that."""
    monkeypatch.setattr(model_card, "load_card", functools.lru_cache(model_card.load_card))


def test_every_default_the_example_shows_is_the_loaders():
    assert untrue_defaults(EXAMPLE) == []


def test_the_example_shows_defaults_of_every_section_and_marks_the_required_keys():
    found = leaves(EXAMPLE)
    shown = {leaf.path[0] for leaf in found if leaf.mark is None}
    assert shown == config_module.SECTIONS, "a section of the config is missing from the example"
    required = {".".join(leaf.path) for leaf in found if leaf.mark == "required"}
    assert {"camera.type", "camera.device", "door.relay.pin", "policy.timezone"} <= required


def test_its_required_keys_alone_make_a_config_the_loader_starts_with():
    config_module.parse(marked_config(leaves(EXAMPLE), marks=("required",)))


@pytest.mark.parametrize("change, expected", [
    (("max_rows: 1000000", "max_rows: 999999"), "events.max_rows: 999999 is shown as the default"),
    (("  level: INFO", "  level: INFO\n  colour: true"), "logging.colour: logging.colour is not a known key"),
    (("  keepalive: 60", "  keepalive: 61"), "mqtt.keepalive: 61 is shown as the default"),
    (("    closed_when: low", "    closed_when: high"), "door.contact.closed_when: 'high' is shown as the default"),
    (("  fps: 30                      # example", "  fps: 30                      #"),
     "camera.fps: 30 is shown as the default"),
    (("  name: door ", "  name: door # required"), "door.name is marked required, but the loader starts without it"),
])
def test_an_untrue_default_or_mark_is_caught(change, expected):
    old, new = change
    assert EXAMPLE.count(old) == 1, f"the example no longer holds {old!r}: update this test"
    problems = untrue_defaults(EXAMPLE.replace(old, new))
    assert len(problems) == 1 and expected in problems[0], problems


def test_its_comments_name_the_embedder_the_loader_uses():
    card = find_card(MODELS_DIR, "embedder")
    [line] = [line for line in EXAMPLE.splitlines() if line.strip().startswith("card:")]
    assert f"engines/models/{Path(card.path).name}" in line
    default = config_module.parse(marked_config(leaves(EXAMPLE)))
    assert default.embedder.id == card.id
    assert "dlib" not in line.partition("#")[2].split(";")[0], "the example names dlib as the default embedder"
