"""An interval's counts from two readings of the program's cumulative counters."""

import pytest

from gsender_bcc.histogram import Counts, add_counts
from gsender_bcc.readings import Culprits, CulpritWords, Measured, Snapshot, culprit_pairs, delta

from culprit_words import by_victim
from test_histogram import LAYOUT, SMALL, c, counts, packed


def snap(host, lost=0, cgroups=None):
    return Snapshot(host, lost, cgroups or {})


class TestDelta:
    def test_subtracts_each_counter(self):
        before = snap(c(SMALL, [(1, 2), (5, 1)], 9000), lost=1)
        after = snap(c(SMALL, [(1, 5), (5, 1), (16, 2)], 99000), lost=4)
        measured = delta(SMALL, before, after, 2.0)
        assert measured == Measured(2.0, c(SMALL, [(1, 3), (16, 2)], 90000), 3, {})
        assert measured.host.count == 5

    @pytest.mark.parametrize("after", [
        snap(c(SMALL, [(1, 1)], 9000), 1),
        snap(c(SMALL, [(1, 2)], 8999), 1),
        snap(c(SMALL, [(1, 2)], 9000), 0),
    ])
    def test_counters_going_backwards_are_refused(self, after):
        with pytest.raises(ValueError, match="went backwards"):
            delta(SMALL, snap(c(SMALL, [(1, 2)], 9000), 1), after, 1.0)

    @pytest.mark.parametrize("make", [c, packed])
    @pytest.mark.parametrize("pairs, sum_ns", [([(1, 1)], 9000), ([(1, 2)], 8999),
                                               ([(1, 3), (2, -1)], 9000)])
    def test_a_cgroup_going_backwards_is_refused(self, make, pairs, sum_ns):
        zero = c(SMALL, [], 0)
        with pytest.raises(ValueError, match="went backwards"):
            delta(SMALL, snap(zero, cgroups={7: make(SMALL, [(1, 2)], 9000)}),
                  snap(zero, cgroups={7: make(SMALL, pairs, sum_ns)}), 1.0)

    @pytest.mark.parametrize("make", [c, packed])
    def test_a_cgroup_s_slot_going_back_is_refused_once_looked_at(self, make):
        """Beside a cgroup that grew more, the host's total still grows: the slots of the
        one that went back are refused when they are read."""
        zero = c(SMALL, [], 0)
        measured = delta(SMALL, snap(zero, cgroups={7: make(SMALL, [(1, 2)], 9000)}),
                         snap(zero, cgroups={7: make(SMALL, [(1, 1)], 9500),
                                             8: make(SMALL, [(1, 5)], 100)}), 1.0)
        assert measured.cgroups[7].sum_ns == 500
        with pytest.raises(ValueError, match="went backwards"):
            tuple(measured.cgroups[7].slots)

    def test_packed_counts_unpack_to_the_same_slots(self):
        assert packed(SMALL, [(1, 2), (16, 7)], 5) == c(SMALL, [(1, 2), (16, 7)], 5)
        assert tuple(packed(SMALL, [(1, 2), (16, 7)], 5).slots) == counts(SMALL, [(1, 2), (16, 7)])

    def test_different_layouts_are_refused(self):
        with pytest.raises(ValueError, match="different slot counts"):
            delta(LAYOUT, snap(c(SMALL, [], 0)), snap(c(LAYOUT, [], 0)), 1.0)

    @pytest.mark.parametrize("idle", [0, 5])  # most cgroups counted, or a few
    @pytest.mark.parametrize("make", [c, packed])
    def test_the_host_is_the_sum_of_the_cgroups(self, make, idle):
        zero = c(SMALL, [], 0)
        still = {100 + n: make(SMALL, [(n, 1)], 1000 * n) for n in range(idle)}
        before = snap(zero, cgroups={7: make(SMALL, [(1, 2)], 3000), 8: make(SMALL, [(2, 1)], 2000),
                                     9: make(SMALL, [(4, 4)], 20000), **still})
        after = snap(zero, cgroups={7: make(SMALL, [(1, 5)], 9000), 8: make(SMALL, [(2, 1)], 2000),
                                    10: make(SMALL, [(3, 1), (4, 1)], 8000), **still})
        measured = delta(SMALL, before, after, 1.0)
        # 8 did not change; 9 was removed after its last reading; 10 is new.
        assert measured.cgroups == {7: c(SMALL, [(1, 3)], 6000),
                                    10: c(SMALL, [(3, 1), (4, 1)], 8000)}
        assert measured.host == c(SMALL, [(1, 3), (3, 1), (4, 1)], 14000)

    def test_counts_over_two_intervals_add_up(self):
        zero = c(SMALL, [], 0)
        readings = [snap(zero, cgroups={1: c(SMALL, [(1, n)], 1000 * n)}) for n in (2, 5, 11)]
        first = delta(SMALL, readings[0], readings[1], 1.0)
        second = delta(SMALL, readings[1], readings[2], 1.0)
        both = delta(SMALL, readings[0], readings[2], 2.0)
        assert add_counts(first.host, second.host) == both.host


# -- culprit counters: what each (victim, culprit) pair was charged between two readings --

W = CulpritWords(reserved=(900, 899, 898), slots=2, other=0)
V = 7  # the victim


def words(self_ns=0, reserved=(0, 0, 0), other=0, slots=((0, 0, 0), (0, 0, 0))):
    """A victim's words: its counters, then each slot's (holder, ns, claimed_at) and an epoch."""
    return (self_ns, *reserved, other, *(word for slot in slots for word in (*slot, 5)))


@pytest.mark.parametrize("before, now, pairs", [
    # A cgroup unknown to the previous reading counts from zero.
    (None, words(3, (1, 0, 2), 4, ((11, 6, 0), (0, 0, 0))),
     {(V, V): 3, (V, 900): 1, (V, 898): 2, (V, 0): 4, (V, 11): 6}),
    # Unchanged: nothing.
    (words(3), words(3), {}),
    # Each counter and each slot held by the same culprit grows by the difference.
    (words(3, (1, 0, 0), 0, ((11, 6, 0), (12, 1, 0))),
     words(5, (1, 4, 0), 2, ((11, 9, 0), (12, 1, 0))),
     {(V, V): 2, (V, 899): 4, (V, 0): 2, (V, 11): 3}),
    # A slot that changed hands splits its growth at claimed_at: 11 had 6, then 2 more,
    # before 13 took the slot at 8 and was charged 5.
    (words(slots=((11, 6, 0), (0, 0, 0))), words(slots=((13, 13, 8), (0, 0, 0))),
     {(V, 11): 2, (V, 13): 5}),
    # ... into an empty slot: all to the new holder.
    (words(slots=((11, 6, 0), (0, 0, 0))), words(slots=((11, 6, 0), (12, 4, 0))),
     {(V, 12): 4}),
    # A claimed_at the reading caught out of step is clamped into the growth: the parts
    # still add up to it.
    (words(slots=((11, 6, 0), (0, 0, 0))), words(slots=((13, 10, 2), (0, 0, 0))),
     {(V, 13): 4}),
    (words(slots=((11, 6, 0), (0, 0, 0))), words(slots=((13, 10, 30), (0, 0, 0))),
     {(V, 11): 4}),
])
def test_culprit_counters_become_the_interval_s_pairs(before, now, pairs):
    previous = {} if before is None else {V: before}
    assert culprit_pairs(previous, {V: now}, W) == by_victim(pairs)
    grown = sum(now[:5]) + sum(now[6::4]) - (sum(before[:5]) + sum(before[6::4]) if before else 0)
    assert sum(pairs.values()) == grown  # every nanosecond once


def test_culprit_counters_going_backwards_are_refused():
    with pytest.raises(ValueError, match="went backwards"):
        culprit_pairs({V: words(3)}, {V: words(2)}, W)
    with pytest.raises(ValueError, match="not 13"):
        culprit_pairs({}, {V: (0,) * 12}, W)


def test_an_interval_s_culprit_pairs_come_from_the_two_readings():
    zero = Counts.from_packed(0, LAYOUT.slots, 0)
    first = Snapshot(zero, 0, {}, Culprits(W, {V: words(3)}))
    second = Snapshot(zero, 0, {}, Culprits(W, {V: words(5), 8: words(other=1)}))
    assert delta(LAYOUT, first, second, 1.0).culprits == {V: {V: 2}, 8: {0: 1}}
    assert delta(LAYOUT, snap(zero), snap(zero), 1.0).culprits is None
