"""The measurement loop: wait for each interval boundary, read, summarise, deliver.

The loop owns the clock and the signals. Waits are relative, so they run on the
monotonic clock; each interval is stamped with a wall-clock multiple of the
frequency, and the first interval after a start ends at the next one. After a
stall (process stopped, host suspended) the time missed becomes one interval
stamped at the latest boundary passed, never a burst; a wall clock stepped back
never repeats a timestamp: the samples wait for the next new boundary instead,
for at most MAX_HOLD_SECONDS. A clock that went back further (one that was wrong,
say a day ahead, and was corrected) is followed at once: delivery resumes on the
clock as it is, and the stamps sent while it was ahead are sent again when it
reaches them. A reload ends the interval in progress at the first boundary after
the signal came, however long the reload takes.

A stop between boundaries does not send the unfinished interval (its timestamp
would lie in the future, which whisper refuses): it is left in the state
directory, and the next start adds it to its first interval when that ends at
the same boundary, or sends it alone at its own boundary, so a restart leaves
no hole. Its boundary never gets it dropped: one a little ahead of the clock (the
last run was waiting out a clock that went back) becomes the first boundary, and
one far from the clock (a step since, or a stop longer than buffer_hours) is
added to the first interval.
"""

from __future__ import annotations

import gc
import logging
import math
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional

from . import carryover, interfaces
from .config import Config, ConfigError, needing_restart
from .histogram import add_counts
from .metrics import Interval, agent_points, summary, to_datapoints
from .notify import NullNotifier
from .readings import Measured
from .sampler import Sampler

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
HANDLED_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}
# A wall clock that went back makes the samples wait for the first boundary after the last
# stamp, so that no stamp is sent twice, for at most this long (the longest interval). A
# longer step back (a clock that was wrong, say a day ahead, and was corrected) resumes
# delivery on the clock as it is now.
MAX_HOLD_SECONDS = 3600
CLOCK_WENT_BACK = -1  # what _wait_until returns when the boundary waited for is out of reach


def next_boundary(now: float, frequency: int) -> int:
    """Return the first multiple of ``frequency`` after ``now``."""
    return int(math.floor(now / frequency) + 1) * frequency


def interval_stamp(boundary: int, now: float, frequency: int, last_stamp: int) -> Optional[int]:
    """Return the timestamp for an interval that was due at ``boundary`` and read at ``now``.

    That is ``boundary``, or after a stall the latest boundary passed; None when it would
    not be later than ``last_stamp`` (the wall clock went back).
    """
    stamp = max(boundary, int(math.floor(now / frequency)) * frequency)
    return stamp if stamp > last_stamp else None


def stamp_floor(now: float, last_stamp: int) -> int:
    """Return the stamp the next interval must come after: the last one, unless the wall clock
    went back more than MAX_HOLD_SECONDS before it (then now: resume on the clock as it is)."""
    return last_stamp if last_stamp - now <= MAX_HOLD_SECONDS else math.floor(now)


def boundary_after_reload(boundary: int, heard: float, last_stamp: int, frequency: int) -> int:
    """Return where the interval in progress ends after a reload heard at ``heard``.

    ``boundary`` is where it was due; ``frequency`` the one now in force. That is the first
    multiple of it after the last stamp that is not before the moment the signal came (or
    before ``boundary``, had that passed): however long the reload took, no boundary is
    skipped, and with the frequency unchanged it is ``boundary`` itself.
    """
    return max(next_boundary(last_stamp, frequency),
               math.ceil(min(heard, boundary) / frequency) * frequency)


def freeze_startup_heap() -> None:
    """Put what startup made (modules, the configuration, the loaded program) out of the
    collector's reach: the full collections an interval's allocations set off then walk
    only what the intervals keep, not the whole process."""
    gc.collect()
    gc.freeze()


def merge_measured(a: Measured, b: Measured) -> Measured:
    """Add two measurements of consecutive stretches of time."""
    cgroups = dict(a.cgroups)
    for cgroup, counts in b.cgroups.items():
        cgroups[cgroup] = add_counts(cgroups[cgroup], counts) if cgroup in cgroups else counts
    return Measured(a.seconds + b.seconds, add_counts(a.host, b.host), a.lost + b.lost, cgroups)


class SystemClock:
    """Wall and monotonic time, and waiting for a signal; a seam for tests."""

    @staticmethod
    def time() -> float:
        return time.time()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    @staticmethod
    def wait_for_signal(signals, seconds: float) -> Optional[int]:
        received = signal.sigtimedwait(signals, seconds)
        return received.si_signo if received is not None else None


@dataclass
class Daemon:
    """``state_directory`` keeps the unfinished interval across restarts (None: not kept)."""

    probe: interfaces.Probe
    sink: interfaces.Sink
    config: Config
    reload: Optional[Callable[[], Config]] = None
    notifier: NullNotifier = field(default_factory=NullNotifier)
    clock: interfaces.Clock = field(default_factory=SystemClock)
    cgroup_tree: Optional[interfaces.CgroupNames] = None
    keep_unfinished: bool = True
    last_stamp: int = field(default=0, init=False)

    def __post_init__(self):
        self.sampler = Sampler(self.probe, self.cgroup_tree, self.clock)
        self._carried: Optional[Measured] = None
        self._warned_stuck = False

    def run(self, once: bool = False) -> int:
        """Deliver intervals until a stop signal (or after one, with ``once``); return 0."""
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        self.sampler.start()
        boundary = self._take_unfinished(next_boundary(self.clock.time(),
                                                       self.config.frequency))
        self.notifier.ready(f"attached; first interval ends at {boundary}")
        while True:
            received = self._wait_until(boundary)
            if received == CLOCK_WENT_BACK:
                boundary = self._next_boundary()
                continue
            if received in STOP_SIGNALS:
                log.info("%s received: stopping", signal.Signals(received).name)
                self.notifier.stopping()
                self._leave_unfinished(boundary)
                return 0
            if received == signal.SIGHUP:
                heard = self.clock.time()
                self._reload()
                boundary = boundary_after_reload(boundary, heard, self.last_stamp,
                                                 self.config.frequency)
                continue
            self._deliver_interval(boundary, self.clock.time())
            if once:
                return 0
            boundary = self._next_boundary()

    def _next_boundary(self) -> int:
        """The next boundary after now, and after the last stamp if the wall clock went back
        (within MAX_HOLD_SECONDS; beyond, delivery resumes on the clock as it is)."""
        now = self.clock.time()
        floor = stamp_floor(now, self.last_stamp)
        if floor != self.last_stamp:
            log.warning("wall clock went back %ds, before the last interval at %d: resuming on "
                        "it now; the stamps up to %d will be sent again as the clock reaches "
                        "them", self.last_stamp - int(now), self.last_stamp, self.last_stamp)
            self.last_stamp = floor
        return next_boundary(max(now, floor), self.config.frequency)

    # -- the unfinished interval across a restart --

    def _state_directory(self) -> Optional[Path]:
        return self.config.state_directory if self.keep_unfinished else None

    def _take_unfinished(self, boundary: int) -> int:
        """Take the interval left at the last stop; return where the first interval ends.

        It is never dropped for its boundary: a wall clock stepped since (or a restart longer
        than buffer_hours) adds its samples to the first interval.
        """
        directory = self._state_directory()
        left = carryover.take(directory, self.probe.layout) if directory is not None else None
        if left is None:
            return boundary
        frequency, now = self.config.frequency, self.clock.time()
        if left.boundary < boundary and left.boundary > now - self.config.buffer_seconds:
            log.info("sending the %.1fs measured before the restart as the interval ending %d",
                     left.measured.seconds, left.boundary)
            self._submit(left.boundary, left.measured)
            return boundary
        if boundary < left.boundary <= now + MAX_HOLD_SECONDS:
            # The last run waited out a wall clock that went back (or had longer intervals):
            # going on to its boundary sends no stamp twice.
            boundary = math.ceil(left.boundary / frequency) * frequency
        elif left.boundary != boundary:
            log.warning("the interval left at the last stop ends at %d, %ds from the wall clock "
                        "now (a clock step, or a stop longer than buffer_hours): its samples go "
                        "into the first interval", left.boundary, left.boundary - int(now))
        log.info("adding the %.1fs measured before the restart to the interval ending %d",
                 left.measured.seconds, boundary)
        self._carried = left.measured
        return boundary

    def _leave_unfinished(self, boundary: int) -> None:
        measured = self.sampler.measure()
        if self._carried is not None:
            measured = merge_measured(self._carried, measured)
        directory = self._state_directory()
        if directory is None:
            log.info("the unfinished interval (%.1fs, %d samples) is not sent",
                     measured.seconds, measured.host.count)
            return
        try:
            carryover.save(directory, carryover.Unfinished(boundary, measured))
        except OSError as error:
            log.error("cannot keep the unfinished interval (%.1fs, %d samples) in %s: %s",
                      measured.seconds, measured.host.count, directory, error.strerror)
            return
        log.info("the unfinished interval (%.1fs, %d samples) is kept for the next start",
                 measured.seconds, measured.host.count)

    # -- intervals --

    def _deliver_interval(self, boundary: int, now: float) -> None:
        stamp = interval_stamp(boundary, now, self.config.frequency, self.last_stamp)
        if stamp is None:
            log.warning("wall clock went back to %d, before the last interval at %d: its samples "
                        "go into the next interval", int(now), self.last_stamp)
            return
        measured = self.sampler.measure()
        if self._carried is not None:
            measured, self._carried = merge_measured(self._carried, measured), None
        line = self._submit(stamp, measured)
        self.last_stamp = stamp
        log.info("interval ending %d: %s", stamp, line)
        self.notifier.status(f"last interval ending {stamp}: {line}")

    def _submit(self, stamp: int, measured: Measured) -> str:
        """Send one interval's datapoints; return its one-line summary."""
        stats = self.sampler.host(measured)
        services = self.sampler.services(measured, self.config.max_services,
                                         self.config.max_culprits)
        extra: Dict[str, int] = {}
        if services is not None:
            extra["services_overflow"] = self.sampler.overflow_count(measured)
        behind = self.sampler.host_behind(measured) if self.config.max_culprits else None
        points = to_datapoints(stats, self.config, services or (), behind)
        points += agent_points(self.config, {**extra, **self.sink.health()})
        self.sink.submit(Interval(stamp, tuple(points)))
        return summary(stats)

    # -- reload and waiting --

    def _reload(self) -> None:
        if self.reload is None:
            return
        self.notifier.reloading()
        try:
            new = self.reload()
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload refused, keeping the running configuration: %s", problem)
            self.notifier.reloaded("reload refused; running configuration kept")
            return
        needs_restart = needing_restart(self.config, new)
        if needs_restart:
            log.warning("changing %s needs a restart: keeping the running setting",
                        " and ".join(needs_restart))
            new = replace(new, **{key: getattr(self.config, key) for key in needs_restart})
        logging.getLogger().setLevel(new.logging_level)
        self.sink.reconfigure(new)
        self.config = new
        log.info("configuration reloaded: frequency %ds, prefix %s", new.frequency,
                 new.metric_prefix)
        self.notifier.reloaded("configuration reloaded")

    def _wait_until(self, wall_time: float) -> Optional[int]:
        """Sleep until ``wall_time``, pinging the watchdog; return a signal that came first,
        or CLOCK_WENT_BACK once the wall clock went back so far that it is out of reach."""
        ping = self.notifier.watchdog_seconds
        while True:
            remaining = wall_time - self.clock.time()
            if remaining <= 0:
                return None
            if remaining > self.config.frequency + MAX_HOLD_SECONDS:
                return CLOCK_WENT_BACK
            received = self.clock.wait_for_signal(
                HANDLED_SIGNALS, min(remaining, ping or remaining, self.config.frequency))
            if received is not None:
                return received
            if ping:
                self._ping_watchdog()

    def _ping_watchdog(self) -> None:
        """Ping only while delivery makes progress too: a stuck sender gets the unit restarted."""
        if self.sink.alive():
            self.notifier.watchdog()
            self._warned_stuck = False
        elif not self._warned_stuck:
            log.error("the delivery thread is dead or stuck: no longer pinging the watchdog")
            self._warned_stuck = True
