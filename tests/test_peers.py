"""The peer's histogram as the tests read it, and the rows both sides are compared in."""

import pytest

from peers import (HOST_COUNT_APART, agreement, bpftrace_rows, medians_agree, percentile_row,
                   row_of, rows_apart, rows_of_log2, runqlat_rows, share_apart, shift_apart)
from stolen import clocks_apart_ns

RUNQLAT_OUTPUT = """Tracing run queue latency... Hit Ctrl-C to end.

     usecs               : count    distribution
         0 -> 1          : 125      |****************************            |
         2 -> 3          : 178      |****************************************|
         4 -> 7          : 0        |                                        |
      2048 -> 4095       : 2        |                                        |
"""


def test_runqlat_rows_are_read_by_lower_bound():
    assert runqlat_rows(RUNQLAT_OUTPUT) == {0: 125, 2: 178, 4: 0, 2048: 2}
    assert runqlat_rows("Tracing run queue latency... Hit Ctrl-C to end.\n") == {}


@pytest.mark.parametrize("us, row", [(0, 0), (1, 0), (2, 2), (3, 2), (4, 4), (1023, 512),
                                     (1024, 1024)])
def test_row_of(us, row):
    assert row_of(us) == row


def test_the_agents_first_two_buckets_share_runqlats_first_row():
    assert rows_of_log2(((0, 3), (1, 4), (2, 5), (4, 0), (8, 1))) == {0: 7, 2: 5, 8: 1}


@pytest.mark.parametrize("rows, percent, row", [
    ({0: 50, 2: 50}, 50, 0), ({0: 49, 2: 51}, 50, 2), ({0: 98, 2: 1, 1024: 1}, 99, 2),
    ({0: 98, 2: 1, 1024: 1}, 100, 1024), ({}, 50, None)])
def test_percentile_row(rows, percent, row):
    assert percentile_row(rows, percent) == row


@pytest.mark.parametrize("a, b, apart", [(0, 0, 0), (0, 2, 1), (2, 8, 2), (16, 1024, 6),
                                         (None, None, 0), (None, 4, 99)])
def test_rows_apart(a, b, apart):
    assert rows_apart(a, b) == apart


@pytest.mark.parametrize("a, b, share", [
    ({0: 10}, {0: 20}, 0.0), ({0: 10}, {2: 10}, 1.0), ({0: 5, 2: 5}, {2: 10}, 0.5),
    ({0: 1, 2: 3}, {0: 3, 2: 1}, 0.5)])
def test_share_apart(a, b, share):
    assert share_apart(a, b) == pytest.approx(share)


# The agent's 1 µs slots from 1 to 8 µs, and the overflow slot.
SLOTS = [(low, low + 1) for low in range(1, 8)] + [(1 << 32, None)]


def fine(**counts):
    """The agent's slots with counts given by low bound: fine(s3=500) puts 500 in [3, 4)."""
    return [(low, high, counts.get(f"s{low}", 0)) for low, high in SLOTS]


@pytest.mark.parametrize("mine, theirs, apart", [
    (fine(s4=700, s5=300), {4: 1000}, 0.0),                 # the same row
    (fine(s3=500, s4=500), {2: 0, 4: 1000}, 0.0),           # crowding the edge, half a µs on
    (fine(s3=500, s4=500), {2: 500, 4: 500}, 0.0),          # the same, counted the other way
    (fine(s2=500, s3=500), {4: 1000}, 0.5),                 # a whole row down
    (fine(s1=900, s4=100), {4: 1000}, 0.9),                 # most under 2 µs instead
    (fine(s5=990, s6=10), {4: 990, 2: 10}, 0.01),           # 1 % more than a slot apart
])
def test_shift_apart(mine, theirs, apart):
    assert shift_apart(mine, theirs) == pytest.approx(apart)


BPFTRACE_OUTPUT = """Attaching 5 probes...
Tracing


@usecs:
[0]                    3 |@@@                                                 |
[1]                    4 |@@@@                                                |
[2, 4)                 5 |@@@@@                                               |
[4, 8)                 0 |                                                    |
[1K, 2K)               2 |@@                                                  |
[2M, 4M)               1 |@                                                   |
"""


def test_bpftrace_rows_fold_into_runqlats():
    assert bpftrace_rows(BPFTRACE_OUTPUT) == {0: 7, 2: 5, 4: 0, 1024: 2, 2 << 20: 1}


@pytest.mark.parametrize("mine, theirs, ok", [
    ({4: 500, 8: 500}, {4: 500, 8: 500}, True),
    ({4: 520, 8: 500}, {4: 500, 8: 500}, True),
    ({4: 600, 8: 500}, {4: 500, 8: 500}, False),            # 10 % more samples
    ({0: 450, 4: 50, 8: 500}, {4: 500, 8: 500}, False),     # 45 % of them under 2 µs instead
    ({4: 900, 8: 100}, {8: 900, 16: 100}, False),           # one row down throughout
    ({4: 940, 2048: 60}, {4: 940, 8: 60}, False),            # the p99 far apart
    ({}, {}, False),
    ({16: 43, 32: 40}, {16: 40, 32: 39}, True),             # 5 % and the edges' 2 waits
    ({16: 45, 32: 40}, {16: 40, 32: 39}, False),            # one more than that
])
def test_agreement(mine, theirs, ok):
    assert agreement(mine, theirs)[0] is ok


@pytest.mark.parametrize("mine, ok", [
    ({16: 41, 32: 40}, True),       # 1 % and the edges' 2 waits
    ({16: 43, 32: 40}, False),      # 5 %: within COUNT_APART, not within one in a hundred
])
def test_agreement_on_the_build_host_counts_closer(mine, ok):
    assert agreement(mine, {16: 40, 32: 39}, HOST_COUNT_APART)[0] is ok


@pytest.mark.parametrize("mine, theirs, ok", [
    ({4: 620, 8: 380}, {4: 500, 8: 500}, True),     # one row
    ({4: 450, 8: 550}, {4: 500, 8: 500}, True),     # neighbours, 45 % below the edge
    ({4: 390, 8: 610}, {4: 500, 8: 500}, False),    # 39 %
    ({4: 480, 8: 520}, {4: 620, 8: 380}, False),    # either side
    ({4: 500, 16: 500}, {4: 490, 16: 510}, False),  # two rows apart, however split
])
def test_medians_agree(mine, theirs, ok):
    assert medians_agree(mine, theirs) is ok


SCHED_DEBUG = """Sched Debug Version: v0.11, 6.18.0 #1
cpu#0, 2596.124 MHz
  .nr_running                    : 0
  .clock                         : 34020015.325125
  .clock_task                    : 34003502.755510
cpu#1, 2596.124 MHz
  .clock                         : 12.000001
  .clock_task                    : 11.500000
cfs_rq[1]:/autogroup-1934
  .exec_clock                    : 3.000000
"""


@pytest.mark.parametrize("cpu, apart", [(0, 16_512_569_615), (1, 500_001)])
def test_what_the_hypervisor_took_is_clock_less_clock_task(cpu, apart):
    assert clocks_apart_ns(SCHED_DEBUG, cpu) == apart


def test_a_cpu_missing_from_sched_debug_is_an_error():
    with pytest.raises(ValueError):
        clocks_apart_ns(SCHED_DEBUG, 2)
