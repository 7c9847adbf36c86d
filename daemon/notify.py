"""systemd's sd_notify protocol: READY, STATUS, WATCHDOG and STOPPING.

A datagram to $NOTIFY_SOCKET is all the protocol is, so no libsystemd binding
is needed; outside systemd (no socket in the environment) every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("facegate.notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if self.address.startswith("@"):  # abstract namespace
            self.address = "\0" + self.address[1:]
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None
        if self._socket is not None:
            # A full receive queue must never block the door loop: drop the message instead.
            self._socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (systemd's advice), or None when no watchdog is configured."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6

    def send(self, **fields: str | int) -> None:
        if self._socket is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), self.address)
        except OSError as error:
            log.warning("sd_notify to %r failed: %s", self.address, error)

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def stopping(self) -> None:
        self.send(stopping=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
