"""Pure statistics over the BPF program's cumulative counters.

The slot layout mirrors ``latency_slot()`` in bpf/runqlat.h: values below
``sub_count`` microseconds have one slot each; above that every power of two is
split into ``sub_count`` equal slots; the last slot holds everything from
``2**log2_max`` up. A slot covers the integer microsecond values [low, high),
and since the kernel truncates nanoseconds to whole microseconds, the real
latencies in it lie in [low, high) microseconds as well.

Percentiles and the maximum are reported as the midpoint of their slot, so they
are off by at most half a slot: 0.5 µs below ``sub_count`` µs, and at most
1 / (2 * sub_count) of the value above it (6.25 % with 8 sub-slots). The last slot
has no upper bound and reports its lower bound. The mean is exact: the kernel
keeps the sum of latencies in nanoseconds.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from array import array
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

PERCENTILES = (50, 90, 99)
BACKWARDS = "counters went backwards: the snapshots are not from one program, in order"


@dataclass(frozen=True)
class Layout:
    """The histogram's slot layout, as defined by the shared header."""

    sub_bits: int
    log2_max: int

    @property
    def sub_count(self) -> int:
        return 1 << self.sub_bits

    @property
    def slots(self) -> int:
        return (self.log2_max - self.sub_bits + 1) * self.sub_count + 1

    @property
    def overflow_slot(self) -> int:
        return self.slots - 1


def slot_of(layout: Layout, us: int) -> int:
    """Return the slot a latency of ``us`` whole microseconds falls in."""
    if us < layout.sub_count:
        return us
    exponent = us.bit_length() - 1
    if exponent >= layout.log2_max:
        return layout.overflow_slot
    shift = exponent - layout.sub_bits
    return (shift + 1) * layout.sub_count + ((us >> shift) & (layout.sub_count - 1))


def slot_bounds(layout: Layout, slot: int) -> Tuple[int, Optional[int]]:
    """Return the [low, high) microseconds of a slot; high is None for the last one."""
    if not 0 <= slot < layout.slots:
        raise ValueError(f"slot {slot} outside 0..{layout.slots - 1}")
    if slot == layout.overflow_slot:
        return 1 << layout.log2_max, None
    if slot < layout.sub_count:
        return slot, slot + 1
    group, sub = divmod(slot, layout.sub_count)
    shift = group - 1
    low = (layout.sub_count + sub) << shift
    return low, low + (1 << shift)


def log2_bucket(layout: Layout, slot: int) -> int:
    """Return the lower bound of the classic log2 bucket holding a slot: 0, 1, 2, 4, ..."""
    low, _ = slot_bounds(layout, slot)
    return 0 if low == 0 else 1 << (low.bit_length() - 1)


def slot_value(layout: Layout, slot: int) -> float:
    """Return the figure reported for a slot: its midpoint, or the lower bound of the last one."""
    low, high = slot_bounds(layout, slot)
    return float(low) if high is None else (low + high) / 2


class Counts:
    """A histogram's slot counts and the exact sum of its latencies in nanoseconds.

    The slots may also be held packed, as one integer with slot i in bits [64 i, 64 i + 64)
    (see the fast paths below): a histogram read or subtracted that way is unpacked only
    if its slots are looked at, and one packed once is not packed again.
    """

    __slots__ = ("_slots", "_packed", "_width", "sum_ns")

    def __init__(self, slots: Sequence[int], sum_ns: int):
        self._slots: Optional[Sequence[int]] = slots
        self._packed: Optional[int] = None
        self._width = len(slots)
        self.sum_ns = sum_ns

    @classmethod
    def from_packed(cls, packed: int, width: int, sum_ns: int) -> Counts:
        """Make Counts of ``width`` slots from slots packed as _packed() does."""
        counts = cls.__new__(cls)
        counts._slots, counts._packed, counts._width, counts.sum_ns = None, packed, width, sum_ns
        return counts

    @property
    def slots(self) -> Sequence[int]:
        if self._slots is None:
            self._slots = _unpacked(self._packed, self._width)
        return self._slots

    @property
    def packed(self) -> Optional[int]:
        """The slots packed, or None where they cannot be (not an array("q"))."""
        if self._packed is None and self._slots is not None:
            self._packed = _packed(self._slots)
        return self._packed

    @property
    def count(self) -> int:
        return sum(self.slots)

    @property
    def has_samples(self) -> bool:
        """Tell whether anything was counted (the sum first: it needs no unpacking)."""
        return self.sum_ns != 0 or self.count != 0

    def __len__(self) -> int:
        return self._width

    def __eq__(self, other) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        if self.sum_ns != other.sum_ns or self._width != other._width:
            return False
        if self._packed is not None and other._packed is not None:
            return self._packed == other._packed
        return self.slots == other.slots

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Counts(slots={self.slots!r}, sum_ns={self.sum_ns!r})"


def empty_counts(layout: Layout) -> Counts:
    return Counts(array("q", bytes(8 * layout.slots)), 0)


def add_counts(a: Counts, b: Counts) -> Counts:
    return Counts(array("q", map(operator.add, a.slots, b.slots)), a.sum_ns + b.sum_ns)


# Fast paths for many histograms at once (an interval with hundreds of services): the
# slots of an array("q") are read as one big integer, 64 bits a slot, so subtracting or
# summing whole histograms takes a few integer operations instead of one per slot. They
# apply only where every slot holds a count in [0, 2**63), which they check; anything
# else (lists, negative slots) takes the slot-by-slot way.

def _packed(slots: Sequence[int]) -> Optional[int]:
    """Return an array("q")'s slots as one integer, slot i in bits [64 i, 64 i + 64), else None."""
    if isinstance(slots, array) and slots.typecode == "q" and slots.itemsize == 8:
        return int.from_bytes(slots, sys.byteorder)
    return None


def _unpacked(value: int, slots: int) -> array:
    unpacked = array("q")
    unpacked.frombytes(value.to_bytes(8 * slots, sys.byteorder))
    return unpacked


@functools.lru_cache(maxsize=8)
def _masks(slots: int) -> Tuple[int, int, int]:
    """Return, over ``slots`` 64-bit fields: bit 63 of each field; all bits of each even
    field; bits 0 to 62 of each even field."""
    def repeat(pattern: bytes) -> int:
        return int.from_bytes((pattern * (slots // 2 + 1))[:8 * slots], "little")
    return (repeat(b"\0" * 7 + b"\x80"), repeat(b"\xff" * 8 + b"\0" * 8),
            repeat(b"\xff" * 7 + b"\x7f" + b"\0" * 8))


def _packed_difference(current: Counts, previous: Counts) -> Optional[int]:
    """Return current - previous slot by slot, packed, or None where the fast path cannot say.

    With every slot in [0, 2**63), setting bit 63 of each slot of ``current`` before
    subtracting keeps each slot's borrow inside that slot, and leaves its bit 63 set
    exactly when the slot did not go backwards. None: a slot is negative or went back.
    """
    a, b = current.packed, previous.packed
    if a is None or b is None:
        return None
    high = _masks(len(current))[0]
    if (a | b) & high:
        return None
    difference = (a | high) - b
    if (difference & high) != high:
        return None
    return difference ^ high


def _packed_sum(slots: int, many: Iterable[Optional[int]]) -> Optional[array]:
    """Return the slot-by-slot sum of packed histograms of ``slots`` slots, or None where the
    fast path cannot say (an item is None, or a slot outside [0, 2**63)).

    Even and odd slots are summed apart, each in a 128-bit field whose upper half (the
    neighbouring slot's room) starts empty, so no carry reaches another slot; each total
    must then fit in 63 bits, as array("q") needs.
    """
    high, even, fits = _masks(slots)
    evens = odds = seen = 0
    for packed in many:
        if packed is None:
            return None
        seen |= packed
        evens += packed & even
        odds += (packed >> 64) & even
    if seen & high or seen >> (64 * slots) or ((evens | odds) & fits) != (evens | odds):
        return None
    return _unpacked(evens | (odds << 64), slots)


def subtract_counts(current: Counts, previous: Counts) -> Counts:
    """Return what was counted between two readings; raise ValueError if a counter went back."""
    if len(previous) != len(current):
        raise ValueError("snapshots have different slot counts")
    if current.sum_ns < previous.sum_ns:
        raise ValueError(BACKWARDS)
    packed = _packed_difference(current, previous)
    if packed is not None:
        return Counts.from_packed(packed, len(current), current.sum_ns - previous.sum_ns)
    slots = array("q", map(operator.sub, current.slots, previous.slots))
    if slots and min(slots) < 0:
        raise ValueError(BACKWARDS)
    return Counts(slots, current.sum_ns - previous.sum_ns)


class _Difference(Counts):
    """current - previous, its slots subtracted only once they are looked at: an interval of a
    thousand services sends the histograms of some twenty. The sum is subtracted at once."""

    __slots__ = ("_operands",)

    def __init__(self, current: Counts, previous: Counts):
        if len(previous) != len(current):
            raise ValueError("snapshots have different slot counts")
        if current.sum_ns < previous.sum_ns:
            raise ValueError(BACKWARDS)
        self._operands: Optional[Tuple[Counts, Counts]] = (current, previous)
        self._slots, self._packed = None, None
        self._width, self.sum_ns = len(current), current.sum_ns - previous.sum_ns

    def _subtract(self) -> None:
        if self._operands is not None:
            exact = subtract_counts(*self._operands)
            self._slots, self._packed, self._operands = exact._slots, exact._packed, None

    @property
    def slots(self) -> Sequence[int]:
        self._subtract()
        return super().slots

    @property
    def packed(self) -> Optional[int]:
        self._subtract()
        return super().packed


def difference(current: Counts, previous: Counts) -> Counts:
    """What was counted between two readings, as subtract_counts, with the slots subtracted
    when first looked at: a slot that went back raises ValueError then."""
    return _Difference(current, previous)


def sum_counts(layout: Layout, many: Iterable[Counts]) -> Counts:
    """Sum histograms."""
    many = list(many)
    total_ns = sum(counts.sum_ns for counts in many)
    summed = _packed_sum(layout.slots, [counts.packed for counts in many]) if all(
        len(counts) == layout.slots for counts in many) else None
    if summed is None:
        slots = [0] * layout.slots
        for counts in many:
            slots = list(map(operator.add, slots, counts.slots))
        summed = array("q", slots)
    return Counts(summed, total_ns)


@dataclass(frozen=True)
class IntervalStats:
    """What one interval measured. Latencies are in microseconds."""

    seconds: float
    count: int
    lost: int
    mean_us: Optional[float]
    percentiles_us: Tuple[Tuple[int, float], ...]
    max_us: Optional[float]
    log2_rates: Tuple[Tuple[int, float], ...]
    wait_ns: int  # the samples' summed wait, exact (the kernel sums nanoseconds)


def percentile_slot(slots: Sequence[int], total: int, percent: float) -> int:
    """Return the first slot whose running count reaches ``percent`` % of ``total``."""
    rank = max(1, math.ceil(total * percent / 100))
    running = 0
    for slot, n in enumerate(slots):
        running += n
        if running >= rank:
            return slot
    raise ValueError("slots hold fewer samples than total")


def log2_counts(layout: Layout, slots: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    """Sum slots into classic log2 buckets, from 0 up to the highest non-empty one."""
    counts: dict = {}
    for slot, n in enumerate(slots):
        if n:
            bucket = log2_bucket(layout, slot)
            counts[bucket] = counts.get(bucket, 0) + n
    if not counts:
        return ()
    top = max(counts)
    bounds = [0] + [1 << e for e in range(top.bit_length())]
    return tuple((b, counts.get(b, 0)) for b in bounds)


def interval_stats(layout: Layout, counted: Counts, seconds: float, lost: int = 0) -> IntervalStats:
    """Summarise one interval's counts; ``seconds`` is how long the interval lasted."""
    if seconds <= 0:
        raise ValueError("an interval must last longer than zero seconds")
    count = counted.count
    if count == 0:
        return IntervalStats(seconds, 0, lost, None, (), None, (), counted.sum_ns)
    highest = max(slot for slot, n in enumerate(counted.slots) if n)
    return IntervalStats(
        seconds=seconds,
        count=count,
        lost=lost,
        mean_us=counted.sum_ns / count / 1000,
        percentiles_us=tuple(
            (p, slot_value(layout, percentile_slot(counted.slots, count, p)))
            for p in PERCENTILES
        ),
        max_us=slot_value(layout, highest),
        log2_rates=tuple((b, n / seconds) for b, n in log2_counts(layout, counted.slots)),
        wait_ns=counted.sum_ns,
    )

