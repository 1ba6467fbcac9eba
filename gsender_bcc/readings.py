"""What the program's counters held at one moment (a Snapshot), and what one interval counted
between two of them (Measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .histogram import BACKWARDS, Counts, Layout, add_counts, subtract_counts, sum_counts


@dataclass(frozen=True)
class CulpritWords:
    """Where each counter sits among a cgroup's culprit words (bpf/runqlat.h's cgroup_stats
    after sum_ns): self, then one per reserved culprit (``reserved``, the ids in the
    program's order), other, then ``slots`` slots of (culprit, ns, claimed_at, epoch)."""

    reserved: Tuple[int, ...]
    slots: int
    other: int  # the culprit id the rest is charged under: the overflow cgroup's

    SLOT_WORDS = 4

    @property
    def counters(self) -> int:
        """Words before the slots: self, the reserved ones and other."""
        return 2 + len(self.reserved)

    @property
    def size(self) -> int:
        return self.counters + self.SLOT_WORDS * self.slots


@dataclass(frozen=True)
class Culprits:
    """Each cgroup's culprit counters as the program keeps them, cumulative: by cgroup id, its
    words (``layout``)."""

    layout: CulpritWords
    words: Mapping[int, Tuple[int, ...]]


@dataclass(frozen=True)
class Snapshot:
    """Cumulative kernel counters at one moment.

    ``host`` is what the per-CPU counters hold (everything, when there is no per-cgroup
    breakdown), ``cgroups`` what each cgroup's counters hold, by cgroup id.
    """

    host: Counts
    lost: int
    cgroups: Mapping[int, Counts] = field(default_factory=dict)
    # With attribution on (None: off), each cgroup's culprit counters.
    culprits: Optional[Culprits] = None


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
    (its entry was removed after its last reading) counts nothing. The culprit counters are
    turned into what each (victim cgroup, culprit) pair was charged between the two.
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
    pairs = None
    if current.culprits is not None:
        pairs = culprit_pairs(previous.culprits.words if previous.culprits else {},
                              current.culprits.words, current.culprits.layout)
    return Measured(seconds, host, lost, cgroups, pairs)


def culprit_pairs(previous: Mapping[int, Sequence[int]], current: Mapping[int, Sequence[int]],
                  words: CulpritWords) -> Dict[Tuple[int, int], int]:
    """What each (victim cgroup, culprit) pair was charged between two readings, in ns; only
    pairs charged something. A cgroup unknown to ``previous`` counts from zero.

    A slot that changed hands splits its growth at claimed_at: the holder seen before gets
    what came before, the new one the rest (claimed_at is clamped into the growth, so the
    parts always add up to it). Written for a thousand cgroups an interval: plain loops over
    the words, no call per counter."""
    pairs: Dict[Tuple[int, int], int] = {}
    size, step, counters = words.size, words.SLOT_WORDS, words.counters
    fixed = (*words.reserved, words.other)
    zero = (0,) * size
    for victim, now in current.items():
        before = previous.get(victim, zero)
        if before == now:
            continue
        if len(before) != size or len(now) != size:
            raise ValueError(f"culprit counters of {len(before)} and {len(now)} words, "
                             f"not {size}")
        for culprit, was, grown in zip((victim, *fixed), before, now):
            if grown != was:
                pairs[victim, culprit] = pairs.get((victim, culprit), 0) + _growth(was, grown)
        for at in range(counters, size, step):
            held, ns, claimed_at = now[at], now[at + 1], now[at + 2]
            was, ns_before = before[at], before[at + 1]
            if ns == ns_before:
                continue
            grown = _growth(ns_before, ns)
            if held != was:
                split = min(max(claimed_at - ns_before, 0), grown)
                if split:
                    pairs[victim, was] = pairs.get((victim, was), 0) + split
                grown -= split
            if grown:
                pairs[victim, held] = pairs.get((victim, held), 0) + grown
    return pairs


def _growth(before: int, now: int) -> int:
    if now < before:
        raise ValueError(BACKWARDS)
    return now - before
