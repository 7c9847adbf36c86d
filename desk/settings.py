"""What the desk is started with: its files, where it listens, and the rule for listening beyond this machine."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_LISTEN = "127.0.0.1:8080"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one photo; a phone's 12 MP JPEG is 3 to 6 MB
MAX_REQUEST_BYTES = 8 * MAX_UPLOAD_BYTES  # a request of several photos
MAX_FILES = 8  # photos in one upload
MAX_PIXELS = 40_000_000  # a 48 MP phone photo is refused: ask for a smaller one; a bomb never reaches the decoder


class DeskSettingsError(ValueError):
    """A listen address, TLS or path setting the desk refuses; the message says what to do."""


@dataclass(frozen=True)
class DeskSettings:
    gallery: Path
    events: Path
    desk_db: Path
    models: Path | None = None  # None: engines/models
    card: Any = None  # the configured embedder card (ModelCard); None: the models folder's default
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    mqtt_config: Path | None = None  # a facegate config whose mqtt: section names the fleet's broker
    signing_key: Path | None = None  # the front desk's Ed25519 key (enroll_local.py keygen), to publish
    # publish(gallery, model_id, key, mqtt_settings) -> a dataclass of what was sent; given by the CLI
    publish: Callable[..., Any] | None = field(default=None, compare=False)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:8443 for IPv6) as a host and a port."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeskSettingsError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or 192.168.1.20:8443")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def check_listen(host: str, tls_cert: Path | None, tls_key: Path | None, insecure_http: bool) -> None:
    """Refuse a non-loopback address without TLS (unless insecure_http), and half a TLS pair."""
    if (tls_cert is None) != (tls_key is None):
        raise DeskSettingsError("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not Path(path).is_file():
            raise DeskSettingsError(f"{path}: no such file")
    if not is_loopback(host) and tls_cert is None and not insecure_http:
        raise DeskSettingsError(f"refusing to listen on {host} without TLS: passwords and faces would cross the "
                                "network in clear. Give --tls-cert FILE --tls-key FILE, listen on 127.0.0.1, or "
                                "add --insecure-http on a network you trust")
