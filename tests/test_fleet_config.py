"""The mqtt and metrics config sections: validated like the rest, errors naming the key path."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from daemon import config as config_module
from daemon.bundles import generate_keypair
from daemon.config import EXAMPLE_PATH
from daemon.settings import ConfigError
from tests.conftest import REPO


def parsed(mqtt=None, metrics=None, name="front-door"):
    raw = yaml.safe_load(EXAMPLE_PATH.read_text())
    raw["door"]["name"] = name
    raw["mqtt"] = mqtt
    raw["metrics"] = metrics
    return config_module.parse(raw)


def test_mqtt_and_metrics_are_off_by_default():
    config = config_module.load(EXAMPLE_PATH)
    assert config.mqtt is None and config.metrics is None


def test_the_defaults_follow_the_door_name(tmp_path):
    mqtt = parsed({"host": "broker.lan"}, name="loading-bay").mqtt
    assert (mqtt.port, mqtt.client_id, mqtt.topic_prefix, mqtt.allow_remote_unlock) == \
        (1883, "facegate-loading-bay", "facegate/loading-bay", False)
    assert mqtt.command_topic == "facegate/loading-bay/command" and mqtt.discovery_prefix == "homeassistant"
    assert (mqtt.command_max_age_seconds, mqtt.require_issued_at) == (30, True), "stale unlocks refused by default"
    assert parsed({"host": "broker.lan", "tls": {"enabled": True}}).mqtt.port == 8883


def test_the_password_is_read_from_its_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    mqtt = parsed({"host": "b", "username": "door", "password_file": str(tmp_path / "pw")}).mqtt
    assert (mqtt.username, mqtt.password) == ("door", "s3cret")


@pytest.mark.parametrize("mqtt, key", [
    ({"host": "b", "port": 0}, "mqtt.port"),
    ({"host": "b", "topic_prefix": "facegate/+/x"}, "mqtt.topic_prefix"),
    ({"host": "b", "topic_prefix": "facegate/"}, "mqtt.topic_prefix"),
    ({"host": "b", "gallery_topic": "fleet/#"}, "mqtt.gallery_topic"),
    ({"host": "b", "password_file": "/etc/passwd"}, "mqtt.password_file"),
    ({"host": "b", "username": "u", "password_file": "/nonexistent/pw"}, "mqtt.password_file"),
    ({"host": "b", "tls": {"enabled": True, "ca": "/nonexistent/ca.pem"}}, "mqtt.tls.ca"),
    ({"host": "b", "gallery_public_key": "/nonexistent/desk.pub"}, "mqtt.gallery_public_key"),
    ({"host": "b", "keepalive": 1}, "mqtt.keepalive"),
    ({"host": "b", "allow_remote_unlock": "yes"}, "mqtt.allow_remote_unlock"),
    ({"host": "b", "command_max_age_seconds": 0}, "mqtt.command_max_age_seconds"),
    ({"host": "b", "command_max_age_seconds": "30s"}, "mqtt.command_max_age_seconds"),
    ({"host": "b", "require_issued_at": "no"}, "mqtt.require_issued_at"),
    ({"host": "b", "qos": 2}, "mqtt.qos"),
])
def test_a_bad_mqtt_value_names_its_key(mqtt, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parsed(mqtt)


def test_a_client_certificate_needs_its_key(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.key"):
        parsed({"host": "b", "tls": {"enabled": True, "cert": str(tmp_path / "cert.pem")}})


def test_the_gallery_public_key_must_be_an_ed25519_public_key(tmp_path):
    generate_keypair(tmp_path / "desk.key", tmp_path / "desk.key.pub")
    assert parsed({"host": "b", "gallery_public_key": str(tmp_path / "desk.key.pub")}).mqtt.gallery_public_key
    with pytest.raises(ConfigError, match=r"mqtt\.gallery_public_key"):
        parsed({"host": "b", "gallery_public_key": str(tmp_path / "desk.key")})  # the private key, by mistake


def test_check_config_refuses_a_bad_metrics_address(tmp_path):
    raw = yaml.safe_load(EXAMPLE_PATH.read_text())
    raw["metrics"] = {"listen": "localhost"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(path)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "metrics.listen = 'localhost'" in result.stderr
