"""Reading the config file: a key given twice, the wording of type errors, and the command line's two
ways of naming the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from daemon import config as config_module
from daemon.__main__ import main
from daemon.demo import demo_config
from daemon.settings import ConfigError, Section
from tests.conftest import REPO

EXAMPLE = config_module.EXAMPLE_PATH.read_text()


def _line_of(text: str, start: str) -> int:
    """The number of the first line starting with start."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


@pytest.mark.parametrize("after, duplicate, key, first", [
    # The last would have won: the relay driven on another pin, the schedules read in another zone.
    ("    pin: 17 ", "    pin: 18", "door.relay.pin", "    pin: 17 "),
    ("  timezone: ", "  timezone: UTC", "policy.timezone", "  timezone: "),
    ("  stall_seconds: ", "camera: {type: file, path: x}", "camera", "camera:"),  # a section given twice
    ("        - {days: [mon, tue", "        - {days: [sat], start: '07:00', end: '19:00', days: [sun]}",
     "policy.groups.staff.schedule[1].days", "        - {days: [sat]"),  # both on one line
])
def test_a_key_given_twice_is_refused_naming_its_path_and_both_lines(tmp_path, after, duplicate, key, first):
    lines = EXAMPLE.splitlines()
    at = _line_of(EXAMPLE, after)
    text = "\n".join(lines[:at] + [duplicate] + lines[at:]) + "\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    assert str(caught.value) == (f"{path}: {key} is given twice, at lines {_line_of(text, first)} and {at + 1}: "
                                 f"keep one (YAML would silently use the last)")


def test_the_same_key_in_different_mappings_and_yaml_merges_are_not_duplicates(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE + "\n# anchors and merges stay YAML's\n")
    config_module.load(path)  # pin: in relay, contact and exit_button; members: in two groups
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {a: 1, b: 2}\nmerged:\n  <<: *base\n  b: 3\nloop: &loop [1, *loop]\n")
    raw = config_module.read_yaml(merged)
    assert raw["merged"] == {"a": 1, "b": 3} and raw["loop"][1] is raw["loop"]


def test_the_mqtt_publisher_reads_the_config_the_same_way(tmp_path):
    """enroll_local publish --mqtt shares read_yaml: a repeated broker host is refused there too."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from enroll_local import mqtt_settings
    finally:
        sys.path.remove(str(REPO / "tools"))
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  host: broker-a.lan\n  host: broker-b.lan\n")
    with pytest.raises(ConfigError, match=r"--mqtt: .*mqtt\.host is given twice, at lines 2 and 3"):
        mqtt_settings(path)


@pytest.mark.parametrize("kind, value, expected", [
    (int, "3", "expected an integer"),
    (float, "fast", "expected a number"),
    (str, 5, "expected a string"),
    (dict, [1], "expected a mapping"),
    (list, "a, b", "expected a list"),
    (bool, "yes", "expected true or false"),
    ((int, str), 1.5, "expected an integer or a string"),
    ((list, str), 3, "expected a list or a string"),
])
def test_type_errors_name_the_kind_in_english(kind, value, expected):
    with pytest.raises(ConfigError) as caught:
        Section({"key": value}, "section", {"key"}).get("key", kind)
    assert str(caught.value) == f"section.key = {value!r} is not allowed: {expected}"


def test_an_integer_key_given_a_fraction_says_an_integer(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE.replace("  k: 3 ", "  k: 2.5 "))
    with pytest.raises(ConfigError, match=r"^decision\.k = 2\.5 is not allowed: expected an integer$"):
        config_module.load(path)


# --- python -m daemon: the config file positional or as --config, for run and check-config ----------

def test_check_config_takes_the_file_either_way(capsys):
    example = str(config_module.EXAMPLE_PATH)
    for argv in (["check-config", example], ["check-config", "--config", example],
                 ["check-config", example, "--config", example]):
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.splitlines()[0] == f"{example}: valid"


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_two_different_config_files_are_a_usage_error(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as caught:
        main([command, str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml")])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"python -m daemon {command}: error: two config files given, "
                                    f"{tmp_path / 'a.yaml'} and --config {tmp_path / 'b.yaml'}: give one")


@pytest.mark.parametrize("form", [["CONFIG"], ["--config", "CONFIG"]])
def test_run_takes_the_file_either_way(tmp_path, form):
    """Refused for a missing file, so each form is seen to reach the loader with the path given."""
    missing = tmp_path / "missing.yaml"
    argv = [sys.executable, "-m", "daemon", "run"] + [str(missing) if a == "CONFIG" else a for a in form]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert result.stderr == (f"ERROR facegate: refusing to start: cannot read config {missing}: "
                             f"No such file or directory\n")
    assert not missing.exists()


def test_run_with_the_file_positional_serves_and_logs_no_faiss_loader_lines(tmp_path):
    """faiss announces at INFO which CPU build it loads ("Could not load library with AVX512 support...");
    at a door's INFO level those read as errors, so the daemon keeps the faiss loggers at WARNING."""
    clip = tmp_path / "wall.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for _ in range(5):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(demo_config(tmp_path, clip, fast=True)))
    result = subprocess.run([sys.executable, "-m", "daemon", "run", str(path)], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "INFO facegate.daemon: facegate ready: door demo-door" in result.stderr
    loggers = {line.split(":")[0].split(" ")[-1] for line in result.stderr.splitlines() if line.startswith("INFO ")}
    assert "facegate.gallery" in loggers and not any(name.startswith("faiss") for name in loggers), loggers
