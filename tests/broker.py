"""A real Mosquitto for the tests: a broker on 127.0.0.1 per test session or per test, and a test subscriber.

Registered for all tests by tests/conftest.py (pytest_plugins). Without Mosquitto the fixtures skip with
the command that installs it.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

HOST = "127.0.0.1"
USERNAME = "facegate"
PASSWORD = "door-secret"
INSTALL_HINT = "Mosquitto is not installed: sudo apt-get install mosquitto (./facegate.sh test installs it when run as root)"
START_TIMEOUT = 10.0


def _tool(name: str) -> str | None:
    # Debian puts the broker in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                       if p.is_file()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Broker:
    """One mosquitto process with its config, log, persistence and certificates in directory.

    The port is chosen once, so clients reconnect to the same address after restart()."""

    def __init__(self, directory: Path, tls: bool = False, password: bool = False) -> None:
        self.directory = directory
        self.tls = tls
        self.password_protected = password
        self.port = _free_port()
        self.log_path = directory / "mosquitto.log"
        self._process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "persistence").mkdir(exist_ok=True)
        self.ca_path = _write_certificates(directory) if tls else None
        if password:
            _make_password_file(directory / "passwd")
            (directory / "password").write_text(PASSWORD + "\n", encoding="utf-8")
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text(self._config(), encoding="utf-8")

    host = HOST

    @property
    def username(self) -> str | None:
        return USERNAME if self.password_protected else None

    @property
    def password(self) -> str | None:
        return PASSWORD if self.password_protected else None

    @property
    def password_file(self) -> Path | None:
        """A file holding the password, as mqtt.password_file expects (not mosquitto's hashed file)."""
        return self.directory / "password" if self.password_protected else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config(self) -> str:
        lines = [
            f"listener {self.port} {HOST}",
            # Run as root (CI), mosquitto would switch to the mosquitto user and lose the temp dir.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.directory / 'persistence'}/",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
        ]
        if self.password_protected:
            lines += ["allow_anonymous false", f"password_file {self.directory / 'passwd'}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.ca_path}", f"certfile {self.directory / 'server.pem'}",
                      f"keyfile {self.directory / 'server.key'}"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start mosquitto and return once its port accepts connections."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            # Errors before the config is read (a bad option) go to stderr, so it joins the log.
            self._process = subprocess.Popen([_tool("mosquitto") or "mosquitto", "-c", str(self.config_path)],
                                             stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} "
                           f"within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait: a graceful stop, which saves the persistence file."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is saved since the last autosave."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if not self.running:
            return
        self._process.send_signal(sig)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise RuntimeError(f"mosquitto ignored {sig.name} for 10 s:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])

    def mqtt_section(self, **overrides) -> dict:
        """A facegate `mqtt:` config section pointing at this broker; overrides replace its keys."""
        section: dict = {"host": HOST, "port": self.port}
        if self.tls:
            section["tls"] = {"enabled": True, "ca": str(self.ca_path)}
        if self.password_protected:
            section.update(username=USERNAME, password_file=str(self.password_file))
        section.update(overrides)
        return section

    def client(self, client_id: str = "", clean_session: bool = True):
        """A paho client with this broker's TLS and credentials, not yet connected."""
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean_session)
        if self.tls:
            client.tls_set(ca_certs=str(self.ca_path))
        if self.password_protected:
            client.username_pw_set(USERNAME, PASSWORD)
        return client

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish one QoS 1 message and return once the broker acknowledged it."""
        client = self.client()
        client.connect(HOST, self.port, keepalive=5)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout)
        finally:
            client.disconnect()
            client.loop_stop()

    def connack(self, client, timeout: float = 5.0):
        """Connect client and return the broker's CONNACK reason code, or None when there was none
        (the connection failed or the broker hung up, as a TLS listener does on a plain client)."""
        answered = threading.Event()
        result: list = [None]

        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            result[0] = reason_code
            answered.set()

        client.on_connect = on_connect
        client.on_disconnect = lambda *args: answered.set()
        try:
            client.connect(HOST, self.port, keepalive=5)
        except OSError:  # ssl.SSLError included
            return None
        client.loop_start()
        answered.wait(timeout)
        client.disconnect()
        client.loop_stop()
        return result[0]


def _make_password_file(path: Path) -> None:
    tool = _tool("mosquitto_passwd")
    if tool is None:
        pytest.skip(f"mosquitto_passwd is missing. {INSTALL_HINT}")
    subprocess.run([tool, "-b", "-c", str(path), USERNAME, PASSWORD], check=True, capture_output=True)


def _write_certificates(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it; returns the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("facegate test CA", ca_key, "facegate test CA", ca_key, ca=True)
    server_cert = certificate(HOST, server_key, "facegate test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    (directory / "server.key").write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return directory / "ca.pem"


def _require_mosquitto() -> None:
    if _tool("mosquitto") is None:
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """A plain broker shared by the session: for tests that only publish and subscribe.

    Tests that stop, kill or restart a broker take their own from broker_factory."""
    _require_mosquitto()
    broker = Broker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def broker_factory(tmp_path):
    """broker_factory(tls=False, password=False) -> a started Broker of the test's own, stopped at teardown."""
    _require_mosquitto()
    brokers: list[Broker] = []

    def make(tls: bool = False, password: bool = False) -> Broker:
        broker = Broker(tmp_path / f"broker{len(brokers)}", tls=tls, password=password)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


class Message(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A paho client subscribed (QoS 1) to topic_filter, collecting every Message it receives.

    With clean_session=False and a fixed client_id the broker keeps its session while it is away, so QoS 1
    messages published meanwhile arrive on reconnection (after a broker restart too, with persistence).
    paho reconnects by itself within a second after the broker comes back."""

    def __init__(self, broker: Broker, topic_filter: str, client_id: str = "",
                 clean_session: bool = True) -> None:
        self.topic_filter = topic_filter
        self.broker = broker
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = broker.client(client_id, clean_session)
        # paho sleeps a float delay fine (its hint says int): back on a restarted broker within a second.
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self._messages.append(Message(message.topic, message.payload, bool(message.retain)))

    def connect(self, timeout: float = 10.0) -> Subscriber:
        """Connect and return once the subscription is acknowledged."""
        self._subscribed.clear()
        self._client.connect(self.broker.host, self.broker.port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.disconnect()
            pytest.fail(f"subscriber did not subscribe to {self.topic_filter!r} within {timeout:.0f} s:\n"
                        f"{self.broker.log_tail()}")
        return self

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.disconnect()

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = 20.0) -> list[Message]:
        """Poll until predicate(messages) holds and return the messages; fail the test with them if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.messages):
                return self.messages
            time.sleep(0.02)
        if predicate(self.messages):
            return self.messages
        received = "\n".join(f"  {m.topic} {m.payload[:200]!r} retain={m.retain}" for m in self.messages) or "  none"
        pytest.fail(f"no match on {self.topic_filter!r} within {timeout:.0f} s; received:\n{received}\n"
                    f"broker log:\n{self.broker.log_tail()}")
