"""What the program's counters held at one moment (a Snapshot), and what one interval counted
between two of them (Measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from .histogram import BACKWARDS, Counts, Layout, add_counts, subtract_counts, sum_counts


@dataclass(frozen=True)
class Snapshot:
    """Cumulative kernel counters at one moment.

    ``host`` is what the per-CPU counters hold (everything, when there is no per-cgroup
    breakdown), ``cgroups`` what each cgroup's counters hold, by cgroup id.
    """

    host: Counts
    lost: int
    cgroups: Mapping[int, Counts] = field(default_factory=dict)
    # With attribution on (None: off), (victim cgroup, culprit) -> ns waited since the
    # previous reading: the pairs are not cumulative (the reading empties the kernel's map).
    # The culprit is a cgroup id or one of the header's reserved CULPRIT_* ids.
    culprits: Optional[Mapping[Tuple[int, int], int]] = None


@dataclass(frozen=True)
class Measured:
    """What one interval counted: the host's histogram and, by cgroup id, each cgroup's.

    With a breakdown, ``host`` is the sum of the cgroups, so they add up exactly.
    """

    seconds: float
    host: Counts
    lost: int
    cgroups: Mapping[int, Counts] = field(default_factory=dict)
    # What each (victim cgroup, culprit) pair waited in the interval, in ns; None where the
    # interval was measured without attribution.
    culprits: Optional[Mapping[Tuple[int, int], int]] = None


def delta(layout: Layout, previous: Snapshot, current: Snapshot, seconds: float) -> Measured:
    """Return what was counted between two snapshots of the same program.

    A cgroup unknown to ``previous`` counts from zero; one missing from ``current``
    (its entry was removed after its last reading) counts nothing. The culprit pairs are
    ``current``'s: they hold only what was charged since ``previous``.
    """
    cgroups: Dict[int, Counts] = {}
    for cgroup, counts in current.cgroups.items():
        before = previous.cgroups.get(cgroup)
        if before is None:
            if counts.has_samples:
                cgroups[cgroup] = counts
        elif counts is not before and counts != before:
            cgroups[cgroup] = subtract_counts(counts, before)
    host = subtract_counts(current.host, previous.host)
    if cgroups:
        host = add_counts(host, sum_counts(layout, cgroups.values()))
    lost = current.lost - previous.lost
    if lost < 0:
        raise ValueError(BACKWARDS)
    return Measured(seconds, host, lost, cgroups, current.culprits)
