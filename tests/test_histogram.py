import sys
from array import array

import pytest

from gsender_bcc.histogram import (Counts, Layout, interval_stats, log2_bucket, log2_counts,
                                   percentile_slot, slot_bounds, slot_of, slot_value, sum_counts)

LAYOUT = Layout(sub_bits=3, log2_max=32)
SMALL = Layout(sub_bits=2, log2_max=5)  # slots: 0 1 2 3 | 4 5 6 7 | 8 10 12 14 | 16 20 24 28 | >=32


def counts(layout, pairs):
    slots = [0] * layout.slots
    for slot, n in pairs:
        slots[slot] = n
    return tuple(slots)


class TestLayout:
    @pytest.mark.parametrize("layout, sub_count, slots, overflow", [
        (LAYOUT, 8, 241, 240),
        (SMALL, 4, 17, 16),
        (Layout(sub_bits=2, log2_max=32), 4, 125, 124),
    ])
    def test_sizes(self, layout, sub_count, slots, overflow):
        assert (layout.sub_count, layout.slots, layout.overflow_slot) == (sub_count, slots, overflow)


class TestSlotOf:
    @pytest.mark.parametrize("us, slot", [
        (0, 0), (1, 1), (7, 7), (8, 8), (15, 15), (16, 16), (17, 16), (18, 17), (31, 23),
        (32, 24), (35, 24), (36, 25), (63, 31), (64, 32), (1000, 63), (1023, 63), (1024, 64),
        (2**31, 232), (2**32 - 1, 239), (2**32, 240), (2**40, 240), (2**64 - 1, 240),
    ])
    def test_default_layout(self, us, slot):
        assert slot_of(LAYOUT, us) == slot

    @pytest.mark.parametrize("us, slot", [
        (0, 0), (3, 3), (4, 4), (7, 7), (8, 8), (9, 8), (10, 9), (15, 11), (16, 12), (19, 12),
        (20, 13), (31, 15), (32, 16), (1000, 16),
    ])
    def test_small_layout(self, us, slot):
        assert slot_of(SMALL, us) == slot


class TestSlotBounds:
    @pytest.mark.parametrize("slot, bounds", [
        (0, (0, 1)), (7, (7, 8)), (8, (8, 9)), (15, (15, 16)), (16, (16, 18)), (23, (30, 32)),
        (24, (32, 36)), (63, (960, 1024)), (64, (1024, 1152)), (239, (2**32 - 2**28, 2**32)),
        (240, (2**32, None)),
    ])
    def test_default_layout(self, slot, bounds):
        assert slot_bounds(LAYOUT, slot) == bounds

    def test_every_slot_holds_exactly_the_values_mapped_to_it(self):
        for slot in range(LAYOUT.overflow_slot):
            low, high = slot_bounds(LAYOUT, slot)
            assert {slot_of(LAYOUT, v) for v in (low, high - 1)} == {slot}
            assert slot_of(LAYOUT, high) == slot + 1

    def test_slots_are_contiguous(self):
        previous_high = 0
        for slot in range(LAYOUT.overflow_slot):
            low, high = slot_bounds(LAYOUT, slot)
            assert low == previous_high
            previous_high = high
        assert slot_bounds(LAYOUT, LAYOUT.overflow_slot)[0] == previous_high

    @pytest.mark.parametrize("slot", [-1, 241])
    def test_outside_is_rejected(self, slot):
        with pytest.raises(ValueError, match="outside 0..240"):
            slot_bounds(LAYOUT, slot)

    def test_width_is_at_most_one_eighth_of_the_lower_bound_above_eight(self):
        for slot in range(8, LAYOUT.overflow_slot):
            low, high = slot_bounds(LAYOUT, slot)
            assert (high - low) * 8 <= low


class TestLog2Bucket:
    @pytest.mark.parametrize("slot, bucket", [
        (0, 0), (1, 1), (2, 2), (3, 2), (4, 4), (7, 4), (8, 8), (15, 8), (16, 16), (23, 16),
        (24, 32), (64, 1024), (239, 2**31), (240, 2**32),
    ])
    def test_default_layout(self, slot, bucket):
        assert log2_bucket(LAYOUT, slot) == bucket

    def test_every_slot_lies_inside_its_log2_bucket(self):
        for slot in range(LAYOUT.overflow_slot):
            low, high = slot_bounds(LAYOUT, slot)
            bucket = log2_bucket(LAYOUT, slot)
            assert bucket <= low and high <= max(2 * bucket, 1)


class TestSlotValue:
    @pytest.mark.parametrize("slot, value", [
        (0, 0.5), (5, 5.5), (16, 17.0), (24, 34.0), (63, 992.0), (240, float(2**32)),
    ])
    def test_midpoint_or_lower_bound(self, slot, value):
        assert slot_value(LAYOUT, slot) == value


def c(layout, pairs, sum_ns):
    return Counts(array("q", counts(layout, pairs)), sum_ns)


def packed(layout, pairs, sum_ns):
    """Counts as the probe makes them: slots packed into one integer, unpacked when asked."""
    slots = array("q", counts(layout, pairs))
    return Counts.from_packed(int.from_bytes(slots.tobytes(), sys.byteorder), layout.slots, sum_ns)


class TestPercentileSlot:
    @pytest.mark.parametrize("slots, percent, expected", [
        ((10, 0, 0), 50, 0),
        ((1, 1), 50, 0),
        ((1, 1), 51, 1),
        ((0, 99, 1), 99, 1),
        ((0, 98, 2), 99, 2),
        ((0, 0, 5), 1, 2),
        ((3, 0, 0, 1), 100, 3),
    ])
    def test_first_slot_reaching_the_rank(self, slots, percent, expected):
        assert percentile_slot(slots, sum(slots), percent) == expected

    def test_total_larger_than_slots_is_an_error(self):
        with pytest.raises(ValueError):
            percentile_slot((1, 1), 3, 100)


class TestLog2Counts:
    @pytest.mark.parametrize("pairs, expected", [
        ([], ()),
        ([(0, 4)], ((0, 4),)),
        ([(1, 1)], ((0, 0), (1, 1))),
        ([(2, 1), (3, 2), (9, 5)], ((0, 0), (1, 0), (2, 3), (4, 0), (8, 5))),
        ([(16, 1), (19, 1), (24, 7)], ((0, 0), (1, 0), (2, 0), (4, 0), (8, 0), (16, 2), (32, 7))),
    ])
    def test_sums_slots_into_log2_buckets_up_to_the_highest(self, pairs, expected):
        assert log2_counts(LAYOUT, counts(LAYOUT, pairs)) == expected

    def test_overflow_slot_is_its_own_bucket(self):
        result = log2_counts(LAYOUT, counts(LAYOUT, [(240, 1)]))
        assert result[-1] == (2**32, 1) and len(result) == 34


class TestIntervalStats:
    def test_exact_numbers(self):
        # 90 samples of 3 us (slot [3, 4)), 9 of 20 us (slot [20, 22)), 1 of 1000 us (slot [960, 1024))
        slots = counts(LAYOUT, [(3, 90), (slot_of(LAYOUT, 20), 9), (slot_of(LAYOUT, 1000), 1)])
        counted = Counts(slots, sum_ns=90 * 3_400 + 9 * 20_100 + 1_000_707)
        stats = interval_stats(LAYOUT, counted, seconds=2.0, lost=2)
        assert stats.count == 100
        assert stats.lost == 2
        assert stats.mean_us == pytest.approx((306_000 + 180_900 + 1_000_707) / 100 / 1000)
        assert stats.wait_ns == 306_000 + 180_900 + 1_000_707  # the kernel's sum, not mean x count
        assert stats.percentiles_us == ((50, 3.5), (90, 3.5), (99, 21.0))
        assert stats.max_us == 992.0
        assert stats.log2_rates == ((0, 0.0), (1, 0.0), (2, 45.0), (4, 0.0), (8, 0.0),
                                    (16, 4.5), (32, 0.0), (64, 0.0), (128, 0.0), (256, 0.0),
                                    (512, 0.5))

    def test_empty_interval_has_only_a_count(self):
        stats = interval_stats(LAYOUT, Counts((0,) * 241, 0), seconds=15.0, lost=5)
        assert (stats.count, stats.lost, stats.mean_us, stats.percentiles_us, stats.max_us,
                stats.log2_rates, stats.wait_ns) == (0, 5, None, (), None, (), 0)

    def test_rates_times_seconds_add_up_to_count(self):
        slots = counts(LAYOUT, [(i, i + 1) for i in range(0, 240, 7)])
        stats = interval_stats(LAYOUT, Counts(slots, 10**9), seconds=4.0)
        assert sum(rate for _, rate in stats.log2_rates) * 4.0 == stats.count

    @pytest.mark.parametrize("seconds", [0, -1])
    def test_interval_must_have_a_length(self, seconds):
        with pytest.raises(ValueError, match="longer than zero"):
            interval_stats(LAYOUT, Counts((0,) * 241, 0), seconds)


class TestSumCounts:
    def test_packed_and_unpacked_histograms_sum_alike(self):
        a = Counts(counts(LAYOUT, [(0, 5), (120, 7), (240, 1)]), 10)
        packed = Counts(array("q", counts(LAYOUT, [(0, 1), (121, 2)])), 0).packed
        b = Counts.from_packed(packed, LAYOUT.slots, 3)
        total = sum_counts(LAYOUT, [a, b])
        assert list(total.slots) == list(counts(LAYOUT, [(0, 6), (120, 7), (121, 2), (240, 1)]))
        assert total.sum_ns == 13

    def test_a_slot_summed_to_the_63_bit_limit_is_exact(self):
        odd, even = Counts.from_packed((1 << 62) << 64, LAYOUT.slots, 0), \
            Counts.from_packed(1 << 62, LAYOUT.slots, 0)
        below = Counts.from_packed(((1 << 62) - 1) << 64 | ((1 << 62) - 1), LAYOUT.slots, 0)
        total = sum_counts(LAYOUT, [odd, even, below])
        assert (total.slots[0], total.slots[1]) == ((1 << 63) - 1, (1 << 63) - 1)

    @pytest.mark.parametrize("slot", [0, 1, 240])
    def test_a_slot_sum_past_63_bits_is_refused_never_wrapped(self, slot):
        big = Counts.from_packed((1 << 62) << (64 * slot), LAYOUT.slots, 0)
        with pytest.raises(OverflowError):
            sum_counts(LAYOUT, [big, big])


def test_slot_of_the_last_slot_is_the_overflow():
    assert slot_of(LAYOUT, 1 << LAYOUT.log2_max) == LAYOUT.overflow_slot == LAYOUT.slots - 1
