"""Tell systemd how we are (Type=notify): ready, status, reloading, watchdog, stopping.

Outside systemd (no NOTIFY_SOCKET) the agent gets a NullNotifier, which does nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

from .errors import EX_UNAVAILABLE, AgentError

log = logging.getLogger(__name__)


class NullNotifier:
    """Say nothing: not running under systemd."""

    watchdog_seconds: Optional[float] = None

    def _send(self, message: str) -> None:
        pass

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def reloaded(self, status: str) -> None:
        self.ready(status)  # READY=1 again ends a reload

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")


class Notifier(NullNotifier):
    """Send notifications to systemd through python3-systemd's sd_notify."""

    def __init__(self, notify: Callable[[str], object], watchdog_seconds: Optional[float]):
        self._notify = notify
        self._failed = False
        self.watchdog_seconds = watchdog_seconds

    def _send(self, message: str) -> None:
        """Send, and carry on if the socket is gone: a lost notification must not stop the agent."""
        try:
            self._notify(message)
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"),
                            error)
            self._failed = True


def notifier_from_environment() -> NullNotifier:
    """Return a Notifier when systemd gave a NOTIFY_SOCKET, else a NullNotifier."""
    environ = os.environ  # sd_notify(3) reads NOTIFY_SOCKET from the process environment
    if not environ.get("NOTIFY_SOCKET"):
        return NullNotifier()
    try:
        from systemd import daemon
    except ImportError:
        raise AgentError("running under systemd with NOTIFY_SOCKET set needs python3-systemd: "
                         "apt-get install python3-systemd", EX_UNAVAILABLE) from None
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    watchdog = None
    if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
        watchdog = int(usec) / 2e6  # ping at half the timeout, as sd_watchdog_enabled(3) advises
    return Notifier(daemon.notify, watchdog)
