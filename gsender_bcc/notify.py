"""Tell systemd how we are (Type=notify): ready, status, watchdog, stopping.

Without NOTIFY_SOCKET in the environment (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from .errors import EX_UNAVAILABLE, AgentError

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self):
        environ = os.environ  # sd_notify(3) reads NOTIFY_SOCKET from the process environment
        self._notify = None
        self._failed = False
        self.watchdog_seconds: Optional[float] = None
        if not environ.get("NOTIFY_SOCKET"):
            return
        try:
            from systemd import daemon
        except ImportError:
            raise AgentError("running under systemd with NOTIFY_SOCKET set needs python3-systemd: "
                             "apt-get install python3-systemd", EX_UNAVAILABLE) from None
        self._notify = daemon.notify
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) advises.
            self.watchdog_seconds = int(usec) / 2e6

    def _send(self, message: str) -> None:
        """Send, and carry on if the socket is gone: a lost notification must not stop the agent."""
        if self._notify is None:
            return
        try:
            self._notify(message)
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), error)
            self._failed = True

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    reloaded = ready  # READY=1 again ends a reload

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
