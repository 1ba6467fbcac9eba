"""The real program in the kernel: it counts, agrees with the kernel's accounting of busy
loops, and leaves."""

import time
from dataclasses import replace

import pytest

from conftest import (assert_unloaded, dispatches_of, loaded_program_ids, run_delay_of,
                      thread_capabilities as capabilities)
from gsender_bcc import btf, tracefs
from gsender_bcc.config import Config
from gsender_bcc.histogram import add_counts, interval_stats, percentile_slot, slot_bounds
from gsender_bcc.readings import delta
from gsender_bcc.probe import CAP_SYSLOG, Probe
from gsender_bcc.program import ProgramSettings

pytestmark = pytest.mark.bpf

# Measured here, in both attach modes: within 0.01 % on a CPU of their own, within 1.5 % on
# the CPU the rest of the machine shares; past 2 % once with a qemu guest running beside.
# The bound is the 5 % the per-service issue asks for.
WAIT_TOLERANCE = 0.05


def settings_for(kind, per_cgroup=True):
    """raw: as the agent loads them here; raw-read: raw, prev's state read from task_struct
    (as on kernels before 6.16) whatever this kernel's sched_switch hands over; classic."""
    if kind in ("raw", "raw-read"):
        layout = btf.read_raw_layout()
        if kind == "raw-read":
            layout = replace(layout, switch_state_argument=False)
        return ProgramSettings(raw=layout, per_cgroup=per_cgroup)
    return ProgramSettings(preempted_state=tracefs.read_preempted_state_bit(tracefs.tracefs_root()),
                           per_cgroup=per_cgroup)


@pytest.fixture(params=["raw", "classic"])
def probe(request):
    with Probe(Config(), settings_for(request.param)) as attached:
        yield attached


def assert_slots_explain(layout, counts, stats):
    """The exact sum lies within the slots' bounds, and each percentile in its crossing slot."""
    low = sum(slot_bounds(layout, slot)[0] * n for slot, n in enumerate(counts.slots) if n)
    high = sum(slot_bounds(layout, slot)[1] * n for slot, n in enumerate(counts.slots) if n)
    assert low <= counts.sum_ns / 1000 <= high
    for percent, value in stats.percentiles_us:
        slot_low, slot_high = slot_bounds(layout, percentile_slot(counts.slots, counts.count,
                                                                  percent))
        assert slot_low <= value < slot_high
    top = max(slot for slot, n in enumerate(counts.slots) if n)
    assert slot_bounds(layout, top)[0] <= stats.max_us < slot_bounds(layout, top)[1]


def test_raw_tracepoints_are_the_default_where_btf_describes_them():
    with Probe(Config()) as attached:
        assert attached.settings.raw == btf.read_raw_layout()
        assert attached.settings.per_cgroup


@pytest.mark.parametrize("kind", ["raw", "classic"])
def test_a_header_missing_from_the_tree_is_one_line_naming_bcc_and_the_file(kind, tmp_path):
    """What a future BCC that includes one more header would meet: exit 69, nothing attached."""
    import shutil
    from dataclasses import replace

    import bcc

    from gsender_bcc.errors import AgentError
    tree = tmp_path / "tree"
    shutil.copytree(settings_for(kind).include_tree, tree)
    (tree / "include" / "linux" / "version.h").unlink()
    before = loaded_program_ids()
    with pytest.raises(AgentError) as error:
        Probe(Config(), replace(settings_for(kind), include_tree=tree))
    assert error.value.exit_code == 69
    assert str(error.value).startswith(f"BCC {bcc.__version__} wants the header linux/version.h, "
                                       f"which gsender-bcc's include tree ({tree}) does not have")
    assert not loaded_program_ids() - before  # none left loaded (others may be freed meanwhile)


def test_the_program_compiles_without_cap_syslog(monkeypatch):
    """Then the kernel hides /proc/kallsyms' addresses from BCC's compile, which skips the
    lines it would otherwise read whole; the agent keeps the capability after."""
    import bcc
    compiled_with, real = [], bcc.BPF.__init__

    def spy(self, *args, **kwargs):
        compiled_with.append(capabilities())
        real(self, *args, **kwargs)

    monkeypatch.setattr(bcc.BPF, "__init__", spy)
    held_before = capabilities() >> CAP_SYSLOG & 1
    with Probe(Config(), settings_for("raw")):
        pass
    assert len(compiled_with) == 1 and not compiled_with[0] >> CAP_SYSLOG & 1
    assert capabilities() >> CAP_SYSLOG & 1 == held_before


@pytest.mark.parametrize("kind, programs", [("raw", 4), ("classic", 4)])
def test_attaches_its_programs_and_detaches_all(kind, programs):
    before = loaded_program_ids()
    with Probe(Config(), settings_for(kind)) as attached:
        during = loaded_program_ids() - before
        assert len(during) == len(attached.settings.tracepoints) == programs
    assert_unloaded(during)


@pytest.mark.parametrize("kind", ["user", "kernel"])
def test_each_cgroup_wait_matches_its_threads_run_delay(probe, cgroup_factory, kind):
    """Two loops share CPU 0 in one cgroup, three share CPU 1 in another.

    Busy loops are never woken, so each wait of theirs is one behind the other loops, which
    the scheduler's own run_delay times as the agent does (it misses only the time after a
    wakeup that asks for a reschedule). Both readings are taken with the loops stopped, so no
    wait is in progress: schedstat adds a wait to run_delay only when the task runs again.
    """
    pair, trio = cgroup_factory("pair"), cgroup_factory("trio")
    for _ in range(2):
        pair.spin(0, kind)
    for _ in range(3):
        trio.spin(1, kind)
    time.sleep(0.3)
    readings = []
    for _ in range(3):
        pair.pause(), trio.pause()
        readings.append((probe.read_snapshot(), run_delay_of(pair.pids), run_delay_of(trio.pids),
                         dispatches_of(pair.pids + trio.pids)))
        pair.resume(), trio.resume()
        time.sleep(1.0)
    (first, pair_0, trio_0, runs_0), middle, (last, pair_2, trio_2, runs_2) = readings
    whole = delta(probe.layout, first, last, 2.0)
    halves = [delta(probe.layout, first, middle[0], 1.0), delta(probe.layout, middle[0], last, 1.0)]
    delays = [pair_2 - pair_0, trio_2 - trio_0]
    # Two loops on one CPU wait about half the time each, three about two thirds.
    assert delays[0] > 0.8e9 and delays[1] > 2.5e9
    # One sample per wait the scheduler counted.
    samples = whole.cgroups[pair.id].count + whole.cgroups[trio.id].count
    assert samples == pytest.approx(runs_2 - runs_0, rel=WAIT_TOLERANCE)
    for cgroup, kernel_wait in zip((pair, trio), delays):
        counted = whole.cgroups[cgroup.id]
        assert counted.sum_ns == pytest.approx(kernel_wait, rel=WAIT_TOLERANCE)
        # A read in between neither clears nor disturbs the cumulative counters.
        assert add_counts(halves[0].cgroups[cgroup.id], halves[1].cgroups[cgroup.id]) == counted
        stats = interval_stats(probe.layout, counted, 2.0)
        assert_slots_explain(probe.layout, counted, stats)
        # Spinners are preempted by the scheduler tick: their waits are in the milliseconds.
        assert stats.max_us >= 1000 and counted.count > 100
    assert whole.host.count == sum(c.count for c in whole.cgroups.values())
    assert whole.lost == 0


def test_host_only_mode_counts_at_least_the_owned_threads_wait(cgroup_factory):
    """Without the breakdown only the host total exists; other processes add to it."""
    with Probe(Config(), settings_for("raw", per_cgroup=False)) as attached:
        pair = cgroup_factory("pair")
        for _ in range(2):
            pair.spin(0)
        time.sleep(0.3)
        pair.pause()
        first, delay = attached.read_snapshot(), run_delay_of(pair.pids)
        pair.resume()
        time.sleep(1.5)
        pair.pause()
        counted = delta(attached.layout, first, attached.read_snapshot(), 1.5)
        kernel_wait = run_delay_of(pair.pids) - delay
    assert counted.cgroups == {}
    assert kernel_wait * (1 - WAIT_TOLERANCE) <= counted.host.sum_ns <= kernel_wait * 3
    assert_slots_explain(attached.layout, counted.host,
                         interval_stats(attached.layout, counted.host, 1.5))


def test_a_removed_cgroups_entry_can_be_forgotten(probe, cgroup_factory):
    doomed = cgroup_factory("doomed")
    doomed.spin(0)
    doomed.spin(0)
    time.sleep(0.5)
    assert probe.read_snapshot().cgroups[doomed.id].count > 0
    doomed.remove()
    probe.forget([doomed.id])
    assert doomed.id not in probe.read_snapshot().cgroups


def test_short_lived_tasks_never_give_absurd_waits(cgroup_factory):
    """Exited tasks' pids and task_struct addresses are reused by new ones: each new task's
    first wait starts at its own sched_wakeup_new, never at a stamp an exited one left.

    Thousands of processes that exit at once come and go here; none waits a second, so any
    sample of a second or more is a task measured from another's stamp.
    """
    with Probe(Config(), settings_for("raw")) as attached:
        churn = cgroup_factory("churn")
        first = attached.read_snapshot()
        workers = [churn.start("import subprocess\n"
                               "for _ in range(800):\n"
                               "    subprocess.run(['/bin/true'])\n") for _ in range(3)]
        for worker in workers:
            worker.wait(timeout=120)
        counted = delta(attached.layout, first, attached.read_snapshot(), 1.0)
    assert counted.cgroups[churn.id].count >= 2400
    second = next(slot for slot in range(attached.layout.slots)
                  if slot_bounds(attached.layout, slot)[0] >= 1_000_000)
    assert sum(counted.host.slots[second:]) == 0, (
        f"{sum(counted.host.slots[second:])} samples of a second or more")


SLEEPERS = 200
SLEEPY = "import time\nwhile True: time.sleep(0.005)"


@pytest.mark.parametrize("kind", ["raw", "classic"])
def test_tasks_the_start_time_map_cannot_hold_are_counted_as_lost(kind, cgroup_factory):
    """A map of 64 start times beside 200 sleepers that wake every 5 ms: the wakeups it has no
    room for are counted (agent.samples_lost), and a map of the default size loses none."""
    from dataclasses import replace
    sleepy = cgroup_factory("sleepy")
    for _ in range(SLEEPERS):
        sleepy.start(SLEEPY)
    time.sleep(0.5)
    with Probe(Config(), replace(settings_for(kind), start_entries=64)) as small, \
            Probe(Config(), settings_for(kind)) as default:
        small_first, default_first = small.read_snapshot(), default.read_snapshot()
        time.sleep(1.0)
        small_last, default_last = small.read_snapshot(), default.read_snapshot()
    lost = delta(small.layout, small_first, small_last, 1.0).lost
    counted = delta(small.layout, small_first, small_last, 1.0).cgroups[sleepy.id].count
    # 136 sleepers at least have no room, each losing about 200 wakeups in the second.
    assert lost > (SLEEPERS - 64) * 50, (lost, counted)
    assert delta(default.layout, default_first, default_last, 1.0).lost == 0
