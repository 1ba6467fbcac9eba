"""One interval's measurement, written once for the daemon, ``--top``, ``--check`` and the bench.

The program's counters are cumulative. Each interval is the difference between two readings
(histogram.delta), over the monotonic seconds between them. With the per-service breakdown,
the cgroups that counted are named by the tree, and merged by service.

With attribution, each cgroup's culprit counters are cumulative too: the interval holds what
each (waiting cgroup, culprit) pair was charged between the two readings.

A removed cgroup's entry stays in the kernel's map, its counts unchanged, until it is
forgotten: its last samples are sent under its name, and once the tree reports it gone
its entry is deleted and it is dropped from the reading the next interval is subtracted
from, both together. The tree is asked about the ids of that reading, the latest (every
entry the map holds). So a cgroup id the kernel hands out again, to a new cgroup, counts
from zero: never less its predecessor's counts, never those counted twice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterable, List, Optional, Tuple

from . import interfaces
from .blame import Charges, Ledger, blame, pair_cgroups, reserved_totals
from .cgroups import OTHER, CgroupTree, PressureReader, v2_mount
from .histogram import Counts, IntervalStats, interval_stats
from .metrics import ServiceStats
from .probe import overflow_cgroup, reserved_culprits
from .readings import Measured, Snapshot, delta
from .services import by_service, top_services


def cgroup_tree(attached) -> Optional[CgroupTree]:
    """Return the host's cgroup tree where the attached program counts per cgroup, else None."""
    return CgroupTree(v2_mount()) if attached.settings.per_cgroup else None


class Sampler:
    """Measure intervals from one probe's counters; ``tree`` None: no per-service breakdown."""

    def __init__(self, probe: interfaces.Probe, tree: Optional[interfaces.CgroupNames],
                 clock: interfaces.Monotonic):
        self.probe = probe
        self.tree = tree
        self.clock = clock
        self.overflow = overflow_cgroup()
        self.reserved = reserved_culprits()
        self._pressure = PressureReader(tree) if tree is not None else None
        self._baseline: Optional[Snapshot] = None
        self._started = 0.0

    def start(self) -> None:
        """Take the reading the first interval is measured from."""
        self._baseline, self._started = self.probe.read_snapshot(), self.clock.monotonic()

    @property
    def baseline(self) -> Snapshot:
        """The reading the next interval is measured from."""
        if self._baseline is None:
            raise RuntimeError("Sampler.start() was not called")
        return self._baseline

    def measure(self) -> Measured:
        """Return what was counted since the last reading; this reading becomes the baseline."""
        previous = self.baseline
        current = self.probe.read_snapshot()
        ended = self.clock.monotonic()
        measured = delta(self.probe.layout, previous, current, max(ended - self._started, 1e-6))
        self._baseline, self._started = current, ended
        return measured

    def host(self, measured: Measured) -> IntervalStats:
        """The host's figures for an interval."""
        return interval_stats(self.probe.layout, measured.host, measured.seconds, measured.lost)

    def services(self, measured: Measured, limit: Optional[int] = None,
                 culprits: Optional[int] = None) -> Optional[List[ServiceStats]]:
        """Return the figures of the services that counted in ``measured``: the ``limit`` with
        the most total wait and the rest summed as ``other`` (None: every one), each with its
        cpu.pressure; None without the per-service breakdown.

        Where ``measured`` holds culprit pairs and ``culprits`` is not 0, the ranking is by
        wait plus the wait caused others, and each row gets its Blame naming its ``culprits``
        culprits with the most charge (None: every one).

        ``measured`` may hold an interval measured before the baseline (the one a restart
        carried over). The cgroups the tree finds gone are forgotten once named.
        """
        if self.tree is None or self._pressure is None:
            return None
        layout = self.probe.layout
        pairs = measured.culprits if culprits != 0 else None
        resolved = self.tree.resolve(set(measured.cgroups) | pair_cgroups(pairs, self.reserved),
                                     present=self.baseline.cgroups.keys(), keep=(self.overflow,))
        named = by_service(layout, measured.cgroups, resolved.service_of)
        ledger = Ledger(pairs, resolved.service_of, self.reserved) if pairs is not None \
            else None
        caused = None if ledger is None else ledger.caused
        everyone = len(named) + len(caused or ())
        chosen = top_services(layout, named, everyone if limit is None else limit,
                              caused=caused, total=measured.host)
        figures = self._pressure.read([name for name, _ in chosen if name != OTHER],
                                      measured.seconds)
        if resolved.gone:
            self._forget(resolved.gone)
        return [ServiceStats(name, interval_stats(layout, counts, measured.seconds),
                             figures.get(name, {}),
                             None if ledger is None else
                             blame(self._row_charges(ledger, name, chosen), culprits),
                             self.tree.tags(name) if name != OTHER else ())
                for name, counts in chosen]

    @staticmethod
    def _row_charges(ledger: Ledger, name: str, chosen: List[Tuple[str, Counts]]) -> Charges:
        """A row's charges: the service's own, or for ``other`` its members' summed."""
        if name != OTHER:
            return ledger.charges(name)
        return ledger.rest(shown for shown, _ in chosen if shown != OTHER)

    def host_behind(self, measured: Measured) -> Optional[Dict[str, int]]:
        """The host's wait behind each reserved culprit, in ns; None without attribution."""
        if measured.culprits is None:
            return None
        return reserved_totals(measured.culprits, self.reserved)

    def _forget(self, gone: Iterable[int]) -> None:
        """Delete the entries of removed cgroups and drop them from the baseline, together."""
        gone = set(gone)
        self.probe.forget(gone)
        baseline = self.baseline
        culprits = baseline.culprits
        if culprits is not None:
            culprits = replace(culprits, words={cgroup: words for cgroup, words
                                                in culprits.words.items() if cgroup not in gone})
        self._baseline = replace(
            baseline, cgroups={cgroup: counts for cgroup, counts in baseline.cgroups.items()
                               if cgroup not in gone}, culprits=culprits)

    def overflow_count(self, measured: Measured) -> int:
        """The samples counted beyond the map's capacity (under the overflow key)."""
        counts = measured.cgroups.get(self.overflow)
        return counts.count if counts is not None else 0

    def sample(self) -> Tuple[IntervalStats, Optional[List[ServiceStats]]]:
        """Measure one interval: the host's figures and every service's (None: no breakdown)."""
        measured = self.measure()
        return self.host(measured), self.services(measured)
