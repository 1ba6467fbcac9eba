"""The real program in the kernel: it counts, agrees with the kernel's own accounting, and leaves."""

import time

import pytest

from conftest import assert_unloaded, loaded_program_ids, run_delay_ns
from gsender_bcc import btf, tracefs
from gsender_bcc.histogram import delta, interval_stats
from gsender_bcc.probe import Probe
from gsender_bcc.program import ProgramSettings

pytestmark = pytest.mark.bpf


def settings_for(kind):
    if kind == "raw":
        return ProgramSettings(raw=btf.read_raw_layout())
    return ProgramSettings(preempted_state=tracefs.read_preempted_state_bit(tracefs.tracefs_root()))


@pytest.fixture(params=["raw", "classic"])
def probe(request):
    with Probe(settings_for(request.param)) as attached:
        yield attached


def test_raw_tracepoints_are_the_default_where_btf_describes_them():
    with Probe() as attached:
        assert attached.settings.raw == btf.read_raw_layout()


@pytest.mark.parametrize("kind", ["raw", "classic"])
def test_attaches_three_programs_and_detaches_all(kind):
    before = loaded_program_ids()
    with Probe(settings_for(kind)):
        during = loaded_program_ids() - before
    assert len(during) == 3
    assert_unloaded(during)


def test_total_wait_matches_schedstat_run_delay(probe, busy_cpu):
    first, delay_first = probe.read_snapshot(), run_delay_ns()
    time.sleep(2.0)
    second, delay_second = probe.read_snapshot(), run_delay_ns()
    counted = delta(first, second)
    kernel_wait = delay_second - delay_first
    # Two spinners sharing one CPU wait about half the time each: roughly a second per second.
    assert kernel_wait > 1.0e9
    assert counted.count > 100
    assert counted.sum_ns == pytest.approx(kernel_wait, rel=0.10)
    stats = interval_stats(probe.layout, counted, 2.0)
    assert stats.mean_us * stats.count * 1000 == pytest.approx(counted.sum_ns)


def test_counters_are_cumulative(probe):
    readings = [probe.read_snapshot() for _ in range(3) if time.sleep(0.2) is None]
    counts = [r.count for r in readings]
    sums = [r.sum_ns for r in readings]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert sums == sorted(sums) and sums[0] < sums[-1]


def test_samples_fill_the_histogram_consistently(probe, busy_cpu):
    first = probe.read_snapshot()
    time.sleep(1.0)
    counted = delta(first, probe.read_snapshot())
    stats = interval_stats(probe.layout, counted, 1.0)
    p50, p90, p99 = (v for _, v in stats.percentiles_us)
    assert 0 < p50 <= p90 <= p99 <= stats.max_us
    # Spinners are preempted by the scheduler tick: their waits are in the milliseconds.
    assert stats.max_us >= 1000
    assert counted.lost == 0
