"""The measurement loop: wait for each interval boundary, read, summarise, deliver.

The loop owns the clock and the signals. Waits are relative, so they run on the
monotonic clock; each interval is stamped with a wall-clock multiple of the
frequency. After a stall (process stopped, host suspended) the time missed
becomes one interval stamped at the latest boundary passed, never a burst; a
wall clock stepped back never repeats a timestamp: the samples wait for the
next new boundary instead.

A stop between boundaries does not send the unfinished interval: its timestamp
would lie in the future, which whisper refuses, and a restarted agent would
write the same boundary. Completed intervals are delivered or spooled by the sink.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .config import Config, ConfigError
from .histogram import delta, interval_stats
from .metrics import Datapoint, summary, to_datapoints

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
HANDLED_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}


def next_boundary(now: float, frequency: int, shortest: float = 0.0) -> int:
    """Return the first multiple of ``frequency`` at least ``shortest`` seconds after ``now``."""
    return int(math.floor((now + shortest) / frequency) + 1) * frequency


def interval_stamp(boundary: int, now: float, frequency: int, last_stamp: int) -> Optional[int]:
    """Return the timestamp for an interval that was due at ``boundary`` and read at ``now``.

    That is ``boundary``, or after a stall the latest boundary passed; None when it would
    not be later than ``last_stamp`` (the wall clock went back).
    """
    stamp = max(boundary, int(math.floor(now / frequency)) * frequency)
    return stamp if stamp > last_stamp else None


@dataclass
class Daemon:
    probe: object
    sink: object
    config: Config
    prefix_for: Callable[[Config], str]
    reload: Optional[Callable[[], Config]] = None
    apply: Optional[Callable[[Config], None]] = None
    notifier: object = None
    last_stamp: int = field(default=0, init=False)

    def run(self, once: bool = False) -> int:
        """Deliver intervals until a stop signal (or after one, with ``once``); return 0."""
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self._previous = self.probe.read_snapshot()
        self._started = time.monotonic()
        frequency = self.config.frequency
        # A first interval shorter than half the frequency would say little: skip to the next boundary.
        boundary = next_boundary(time.time(), frequency, shortest=frequency / 2)
        self._notify("ready", f"attached; first interval ends at {boundary}")
        while True:
            received = self._wait_until(boundary)
            if received in STOP_SIGNALS:
                log.info("%s received: stopping", signal.Signals(received).name)
                self._notify("stopping")
                unfinished = self.probe.read_snapshot().count - self._previous.count
                log.info("the unfinished interval (%.1fs, %d samples) is not sent",
                         time.monotonic() - self._started, unfinished)
                return 0
            if received == signal.SIGHUP:
                self._reload()
                boundary = next_boundary(time.time(), self.config.frequency)
                continue
            self._deliver_interval(boundary, time.time())
            if once:
                return 0
            boundary = max(next_boundary(time.time(), self.config.frequency),
                           self.last_stamp + self.config.frequency)

    def _deliver_interval(self, boundary: int, now: float) -> None:
        stamp = interval_stamp(boundary, now, self.config.frequency, self.last_stamp)
        if stamp is None:
            log.warning("wall clock went back to %d, before the last interval at %d: its samples "
                        "go into the next interval", int(now), self.last_stamp)
            return
        current = self.probe.read_snapshot()
        ended = time.monotonic()
        stats = interval_stats(self.probe.layout, delta(self._previous, current),
                               max(ended - self._started, 1e-6))
        points = to_datapoints(stats, self.prefix_for(self.config), stamp,
                               buckets=self.config.bucket_series)
        points += self._health_points(stamp)
        self.sink.submit(points)
        self._previous, self._started, self.last_stamp = current, ended, stamp
        line = summary(stats)
        log.info("interval ending %d: %s", stamp, line)
        self._notify("status", f"last interval ending {stamp}: {line}")

    def _health_points(self, stamp: int):
        prefix = self.prefix_for(self.config)
        return [Datapoint(f"{prefix}.agent.{name}", value, stamp)
                for name, value in self.sink.health().items()]

    def _reload(self) -> None:
        if self.reload is None:
            return
        self._notify("reloading")
        try:
            new = self.reload()
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload refused, keeping the running configuration: %s", problem)
            self._notify("reloaded", "reload refused; running configuration kept")
            return
        if self.apply is not None:
            self.apply(new)
        self.config = new
        log.info("configuration reloaded: frequency %ds, prefix %s", new.frequency,
                 self.prefix_for(new))
        self._notify("reloaded", "configuration reloaded")

    def _notify(self, what: str, *args) -> None:
        if self.notifier is not None:
            getattr(self.notifier, what)(*args)

    def _wait_until(self, wall_time: float) -> Optional[int]:
        """Sleep until ``wall_time``, pinging the watchdog; return a signal that came first."""
        ping = getattr(self.notifier, "watchdog_seconds", None)
        while True:
            remaining = wall_time - time.time()
            if remaining <= 0:
                return None
            received = signal.sigtimedwait(HANDLED_SIGNALS, min(remaining, ping or remaining))
            if received is not None:
                return received.si_signo
            if ping:
                self._notify("watchdog")
