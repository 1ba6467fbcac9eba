"""An interval's counts from two readings of the program's cumulative counters."""

import pytest

from gsender_bcc.histogram import Counts, add_counts
from gsender_bcc.readings import Measured, Snapshot, delta
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

    def test_packed_counts_unpack_to_the_same_slots(self):
        assert packed(SMALL, [(1, 2), (16, 7)], 5) == c(SMALL, [(1, 2), (16, 7)], 5)
        assert tuple(packed(SMALL, [(1, 2), (16, 7)], 5).slots) == counts(SMALL, [(1, 2), (16, 7)])

    def test_different_layouts_are_refused(self):
        with pytest.raises(ValueError, match="different slot counts"):
            delta(LAYOUT, snap(c(SMALL, [], 0)), snap(c(LAYOUT, [], 0)), 1.0)

    @pytest.mark.parametrize("make", [c, packed])
    def test_the_host_is_the_sum_of_the_cgroups(self, make):
        zero = c(SMALL, [], 0)
        before = snap(zero, cgroups={7: make(SMALL, [(1, 2)], 3000), 8: make(SMALL, [(2, 1)], 2000),
                                     9: make(SMALL, [(4, 4)], 20000)})
        after = snap(zero, cgroups={7: make(SMALL, [(1, 5)], 9000), 8: make(SMALL, [(2, 1)], 2000),
                                    10: make(SMALL, [(3, 1), (4, 1)], 8000)})
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


@pytest.mark.parametrize("previous, current", [
    (None, None), ({(1, 2): 5}, None), (None, {(1, 2): 5}),
    # a reading's pairs are what was charged since the one before: never subtracted
    ({(1, 2): 5, (1, 3): 7}, {(1, 2): 5, (5, 1): 2}),
])
def test_an_interval_s_culprit_pairs_are_the_later_reading_s(previous, current):
    zero = Counts.from_packed(0, LAYOUT.slots, 0)
    measured = delta(LAYOUT, Snapshot(zero, 0, {}, previous), Snapshot(zero, 0, {}, current), 1.0)
    assert measured.culprits == current
