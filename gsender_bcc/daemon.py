"""The measurement loop: wait for each interval boundary, read, summarise, deliver."""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass

from .histogram import delta, interval_stats
from .metrics import summary, to_datapoints

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def next_boundary(now: float, frequency: int, shortest: float = 0.0) -> int:
    """Return the first multiple of ``frequency`` at least ``shortest`` seconds after ``now``."""
    return int(math.floor((now + shortest) / frequency) + 1) * frequency


@dataclass
class Daemon:
    probe: object
    sink: object
    prefix: str
    frequency: int

    def run(self, once: bool = False) -> int:
        """Deliver intervals until a stop signal (or after one, with ``once``); return 0."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        previous = self.probe.read_snapshot()
        started = time.monotonic()
        # A first interval shorter than half the frequency would say little: skip to the next boundary.
        boundary = next_boundary(time.time(), self.frequency, shortest=self.frequency / 2)
        while True:
            received = self._wait_until(boundary)
            if received is not None:
                log.info("%s received: stopping", signal.Signals(received).name)
                return 0
            current = self.probe.read_snapshot()
            ended = time.monotonic()
            stats = interval_stats(self.probe.layout, delta(previous, current), ended - started)
            self.sink.send(to_datapoints(stats, self.prefix, boundary))
            log.info("interval ending %d: %s", boundary, summary(stats))
            previous, started = current, ended
            if once:
                return 0
            boundary = next_boundary(time.time(), self.frequency)

    @staticmethod
    def _wait_until(wall_time: float):
        """Sleep until ``wall_time``; return the stop signal that cut the wait short, if any."""
        while True:
            remaining = wall_time - time.time()
            if remaining <= 0:
                return None
            received = signal.sigtimedwait(STOP_SIGNALS, remaining)
            if received is not None:
                return received.si_signo
