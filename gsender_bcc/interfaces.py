"""What the measurement loop asks of its parts, written down once.

The real classes (probe.Probe, cgroups.CgroupTree, sink.StdoutSink and GraphiteSink,
daemon.SystemClock) and the tests' fakes are checked against these same definitions
(tests/test_interfaces.py): a fake cannot drift from what the code calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Protocol, runtime_checkable

from .cgroups import Resolved
from .config import Config
from .histogram import Layout
from .metrics import Interval, Tags
from .program import ProgramSettings
from .readings import Snapshot


@runtime_checkable
class Probe(Protocol):
    """The loaded program's counters: cumulative, read whole, an entry deleted on request."""

    layout: Layout
    # What the program was compiled with: its tracepoints, and whether it keeps per-cgroup
    # counts and culprits (the sampler, --check and --top read it).
    settings: ProgramSettings

    def read_snapshot(self) -> Snapshot:
        """Return the cumulative counters: the host's and each cgroup's, by cgroup id, and
        with the attribution each cgroup's culprit counters."""

    def forget(self, cgroups: Iterable[int]) -> None:
        """Delete the entries of these cgroups (removed ones, after their last counts were
        read)."""


@runtime_checkable
class CgroupNames(Protocol):
    """Cgroup ids to service names, and the directories a service's pressure is read from."""

    def resolve(self, cgroups: Iterable[int], present: Iterable[int] = (),
                keep: Iterable[int] = ()) -> Resolved:
        """Name the ids of ``cgroups``; return as gone those of ``present`` that no longer
        exist, never one of ``keep``."""

    def directories(self, service: str) -> List[Path]:
        """Return the directories of the cgroups that name ``service``."""

    def tags(self, service: str) -> Tags:
        """Return the tags ``service``'s series carry beside ``service`` under ``--tags``."""


@runtime_checkable
class Monotonic(Protocol):
    """What measuring an interval needs of a clock."""

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes back."""


@runtime_checkable
class Clock(Monotonic, Protocol):
    """The daemon's clock: wall time for the stamps, and waiting for a signal."""

    def time(self) -> float:
        """Return the wall-clock time, in seconds since the epoch."""

    def wait_for_signal(self, signals: Iterable[int], seconds: float) -> Optional[int]:
        """Wait up to ``seconds`` for one of ``signals`` (blocked); return it, or None."""


@runtime_checkable
class Sink(Protocol):
    """Where the daemon hands each interval."""

    def submit(self, interval: Interval) -> None:
        """Take one interval, its datapoints and its stamp; never blocks on the network."""

    def health(self) -> Dict[str, int]:
        """Return the sink's own figures, sent as agent series."""

    def alive(self) -> bool:
        """Tell whether delivery makes progress (the watchdog is pinged only then)."""

    def reconfigure(self, config: Config) -> None:
        """Follow a reloaded configuration."""
