"""What the program's counters held at one moment (a Snapshot), and what one interval counted
between two of them (Measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

from .histogram import (BACKWARDS, Counts, Layout, add_counts, difference, subtract_counts,
                        sum_counts)


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

    def cgroups_sum(self, layout: Layout) -> Counts:
        """Every cgroup's counts summed, kept once summed: a reading is the current one of an
        interval, then the previous one of the next."""
        kept = self.__dict__.get("_cgroups_sum")
        if kept is None:
            kept = sum_counts(layout, self.cgroups.values())
            object.__setattr__(self, "_cgroups_sum", kept)
        return kept


@dataclass(frozen=True)
class Measured:
    """What one interval counted: the host's histogram and, by cgroup id, each cgroup's.

    With a breakdown, ``host`` is the sum of the cgroups, so they add up exactly.
    """

    seconds: float
    host: Counts
    lost: int
    cgroups: Mapping[int, Counts] = field(default_factory=dict)
    # By victim cgroup, what it waited behind each culprit in the interval, in ns; None where
    # the interval was measured without attribution.
    culprits: Optional[Mapping[int, Mapping[int, int]]] = None


def delta(layout: Layout, previous: Snapshot, current: Snapshot, seconds: float) -> Measured:
    """Return what was counted between two snapshots of the same program.

    A cgroup unknown to ``previous`` counts from zero; one missing from ``current``
    (its entry was removed after its last reading) counts nothing. The culprit counters are
    turned into what each victim cgroup waited behind each culprit between the two.

    Counters that went back raise ValueError: the host's and every cgroup's sum at once, a
    cgroup's slots once they are looked at (histogram.difference).
    """
    cgroups: Dict[int, Counts] = {}
    for cgroup, counts in current.cgroups.items():
        before = previous.cgroups.get(cgroup)
        if before is None:
            if counts.has_samples:
                cgroups[cgroup] = counts
        elif counts is not before and counts != before:
            cgroups[cgroup] = difference(counts, before)
    host = subtract_counts(current.host, previous.host)
    if 2 * len(cgroups) < len(current.cgroups):  # a few counted: their differences summed
        if cgroups:
            host = add_counts(host, sum_counts(layout, cgroups.values()))
    else:
        # Most counted: Σ (now - before) over them is every cgroup's sum now less every one's
        # before (the unchanged cancel out), with the removed ones' put back. One new sum an
        # interval, where subtracting each cgroup first would take a pass over them all, for
        # histograms mostly never looked at.
        gone = [counts for cgroup, counts in previous.cgroups.items()
                if cgroup not in current.cgroups]
        now = current.cgroups_sum(layout)
        host = add_counts(host, subtract_counts(
            add_counts(now, sum_counts(layout, gone)) if gone else now,
            previous.cgroups_sum(layout)))
    lost = current.lost - previous.lost
    if lost < 0:
        raise ValueError(BACKWARDS)
    pairs = None
    if current.culprits is not None:
        pairs = culprit_pairs(previous.culprits.words if previous.culprits else {},
                              current.culprits.words, current.culprits.layout)
    return Measured(seconds, host, lost, cgroups, pairs)


class CulpritPairs(Mapping[int, Mapping[int, int]]):
    """What each victim cgroup waited behind each culprit between two readings, in ns: by
    victim, by culprit; only what was charged something. A cgroup unknown to the previous
    reading counts from zero.

    A slot that changed hands splits its growth at claimed_at: the holder seen before gets
    what came before, the new one the rest (claimed_at is clamped into the growth, so the
    parts always add up to it).

    Written for a thousand victims an interval, of which a breakdown shows some twenty: one
    pass over the words checks them and adds up ``totals`` (what every culprit was charged,
    all victims together) and each victim's wait behind its own cgroup (``own``); a victim's
    row is worked out when it is first asked for."""

    def __init__(self, previous: Mapping[int, Sequence[int]],
                 current: Mapping[int, Sequence[int]], words: CulpritWords):
        self.words = words
        self.totals: Dict[int, int] = {}
        self._changed: Dict[int, Tuple[Sequence[int], Sequence[int]]] = {}
        self._own: Dict[int, int] = {}
        self._rows: Dict[int, Dict[int, int]] = {}
        size, step, counters = words.size, words.SLOT_WORDS, words.counters
        fixed = (*words.reserved, words.other)
        zero = (0,) * size
        totals = self.totals
        for victim, now in current.items():
            before = previous.get(victim)
            if before is None:
                before = zero
            elif before == now:
                continue
            if len(before) != size or len(now) != size:
                raise ValueError(f"culprit counters of {len(before)} and {len(now)} words, "
                                 f"not {size}")
            # Plain loops with each check inline: a call per counter cost about a tenth of
            # the pass.
            own = charged = 0
            for culprit, was, grown in zip((victim, *fixed), before, now[:counters]):
                if grown != was:
                    if grown < was:
                        raise ValueError(BACKWARDS)
                    grown -= was
                    totals[culprit] = totals.get(culprit, 0) + grown
                    charged += grown
                    if culprit == victim:  # the overflow entry's other is itself too
                        own += grown
            for at in range(counters, size, step):
                ns, ns_before = now[at + 1], before[at + 1]
                if ns == ns_before:
                    continue
                if ns < ns_before:
                    raise ValueError(BACKWARDS)
                grown = ns - ns_before
                charged += grown
                held, was = now[at], before[at]
                if held != was:
                    split = min(max(now[at + 2] - ns_before, 0), grown)
                    if split:
                        totals[was] = totals.get(was, 0) + split
                        if was == victim:
                            own += split
                    grown -= split
                if grown:
                    totals[held] = totals.get(held, 0) + grown
                    if held == victim:
                        own += grown
            if charged:
                self._changed[victim] = (before, now)
                self._own[victim] = own

    def own(self, victim: int) -> int:
        """What ``victim`` waited behind its own cgroup (0: nothing, or not a victim)."""
        return self._own.get(victim, 0)

    def __getitem__(self, victim: int) -> Mapping[int, int]:
        row = self._rows.get(victim)
        if row is None:
            before, now = self._changed[victim]
            row = self._rows[victim] = _row(victim, before, now, self.words)
        return row

    def __iter__(self) -> Iterator[int]:
        return iter(self._changed)

    def __len__(self) -> int:
        return len(self._changed)


def _row(victim: int, before: Sequence[int], now: Sequence[int],
         words: CulpritWords) -> Dict[int, int]:
    """One victim's row, from words CulpritPairs has checked."""
    row: Dict[int, int] = {}
    counters = words.counters
    for culprit, was, grown in zip((victim, *words.reserved, words.other), before,
                                   now[:counters]):
        if grown != was:
            row[culprit] = row.get(culprit, 0) + grown - was
    for at in range(counters, words.size, words.SLOT_WORDS):
        grown = now[at + 1] - before[at + 1]
        if not grown:
            continue
        held, was = now[at], before[at]
        if held != was:
            split = min(max(now[at + 2] - before[at + 1], 0), grown)
            if split:
                row[was] = row.get(was, 0) + split
            grown -= split
        if grown:
            row[held] = row.get(held, 0) + grown
    return row


def culprit_pairs(previous: Mapping[int, Sequence[int]], current: Mapping[int, Sequence[int]],
                  words: CulpritWords) -> CulpritPairs:
    """The interval's pairs between two readings' culprit words (CulpritPairs)."""
    return CulpritPairs(previous, current, words)
