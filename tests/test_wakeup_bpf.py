"""Waits that start at a wakeup, against physics and against libbpf-tools' runqlat.

A waker writes its CLOCK_MONOTONIC time into a pipe; the wakee, pinned to a CPU of its own
(idle) or shared with a busy loop of the same nice (hog), takes the time it resumes
(bench/wakeup.c). Each wait of the wakee's starts at the wakeup the write makes and ends
before its read returns, so the wakee's total measured wait is at most Σ(resume − write), and
it has one wait per write.

What lies outside the wait in each round trip is not only the two syscalls: a wakeup onto an
idle CPU is queued there, and sched_wakeup fires only after the interrupt and the idle exit
(Linux 6.0 and later), which is no part of the wait that runqlat or the agent measures. So
the lower side comes from a peer timing the same waits over the same seconds, libbpf-tools'
runqlat following the wakee's pid: the agent's exact sum lies within the bounds runqlat's log2
rows put on the same samples, the samples sit in the same rows give or take one of the agent's
slots, and the medians agree.
"""

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from gsender_bcc.config import Config
from gsender_bcc.histogram import log2_counts, slot_bounds
from gsender_bcc.readings import delta
from gsender_bcc.probe import Probe
from peers import (HOST_COUNT_APART, SHIFT_APART, Runqlat, agreement, medians_agree,
                   rows_of_log2, runqlat_path, shift_apart)
from test_probe_bpf import settings_for

pytestmark = pytest.mark.bpf

ROUNDS = 3000
# Between writes: the wakee is back in read() long before the next one, unless it is held
# off its CPU that long (wakeup.c then counts the read that did not block).
GAP_US = 1000
WAKEE_CPU, WAKER_CPU = 1, 0
# A wait both tracers time lands on either side of a row's edge at most this often.
EDGE_SHARE = 0.05


@pytest.fixture(scope="session")
def wakeup(tmp_path_factory):
    """bench/wakeup.c, compiled for this run."""
    binary = tmp_path_factory.mktemp("load") / "wakeup"
    bench = Path(__file__).resolve().parent.parent / "bench"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(bench / "wakeup.c")],
                   check=True)
    return binary


def needs_peer_and_cpus():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a second CPU")
    if runqlat_path() is None:
        pytest.fail("libbpf-tools' runqlat is missing: 'make setup' installs libbpf-tools")


def round_trips(wakeup, cgroup, rounds, on_start):
    """Run the waker and the wakee (moved into ``cgroup``); call ``on_start(wakee pid)`` just
    before the first write and return the wakee's figures: rounds, blocked, preempted, sum_ns,
    min_ns."""
    child = subprocess.Popen([str(wakeup), str(rounds), str(WAKEE_CPU), str(WAKER_CPU),
                              str(GAP_US)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        wakee = int(child.stdout.readline().split()[1])
        (cgroup.path / "cgroup.procs").write_text(str(wakee))
        time.sleep(0.1)  # its move to its CPU is over
        on_start(wakee)
        child.stdin.write("go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    words = out.split()
    return dict(zip(words[0::2], map(int, words[1::2])))


@pytest.mark.parametrize("case", ["idle", "hog"])
@pytest.mark.parametrize("kind", ["raw", "raw-read", "classic"])
def test_a_woken_tasks_wait_is_bounded_by_the_write_and_agrees_with_runqlat(
        kind, case, wakeup, cgroup_factory):
    needs_peer_and_cpus()
    wakee_group = cgroup_factory("wakee")
    if case == "hog":
        cgroup_factory("hog").spin(WAKEE_CPU)
        time.sleep(0.3)
    readings = {}
    with contextlib.ExitStack() as tracers:

        def start(wakee):
            # The peer attaches first, so on every hook its program runs before the agent's:
            # its times are the waits as they are, not lengthened by the agent's run time.
            readings["peer"] = tracers.enter_context(
                Runqlat(seconds=int(ROUNDS * GAP_US / 1e6) + 6, pid=wakee))
            readings["peer"].attached()
            readings["probe"] = tracers.enter_context(Probe(Config(), settings_for(kind)))
            readings["first"] = readings["probe"].read_snapshot()
        trips = round_trips(wakeup, wakee_group, ROUNDS, start)
        probe = readings["probe"]
        readings["last"] = probe.read_snapshot()
        theirs = readings["peer"].rows()
    ours = delta(probe.layout, readings["first"], readings["last"], 1.0).cgroups[wakee_group.id]
    bound = trips["sum_ns"]
    their_count = sum(theirs.values())
    their_low = sum(low * n for low, n in theirs.items()) * 1000
    mine = rows_of_log2(log2_counts(probe.layout, ours.slots))
    waits = trips["blocked"] + trips["preempted"]
    report = (f"{kind}, {case}: {trips['rounds']} writes, {trips['blocked']} blocking reads, "
              f"{trips['preempted']} preemptions, Σ(resume − write) {bound / 1e6:.2f} ms; "
              f"agent {ours.count} waits, {ours.sum_ns / 1e6:.2f} ms, rows {sorted(mine.items())}"
              f"; runqlat {their_count} waits, at least {their_low / 1e6:.2f} ms, rows "
              f"{sorted(theirs.items())}")
    print(report)
    # Physics: one wait per switch-out of the wakee (a read that blocked, or a preemption),
    # none longer than from the write to the resume. Most writes find the wakee asleep.
    assert trips["blocked"] >= ROUNDS // 2, report
    assert abs(ours.count - waits) <= 0.01 * ROUNDS, report
    assert ours.sum_ns <= bound, report
    # The peer, on the same waits: as many, no shorter, in the same rows, the medians agreeing.
    assert abs(ours.count - their_count) <= 0.01 * ROUNDS, report
    assert ours.sum_ns >= their_low * (1 - EDGE_SHARE), report
    # Where the waits crowd a row's edge, stamps a fraction of a µs apart put many on either
    # side of it: the rows are compared with each of the agent's samples free to move by one
    # of its slots (1 µs here), not row by row.
    fine = [slot_bounds(probe.layout, slot) + (n,) for slot, n in enumerate(ours.slots)]
    apart = shift_apart(fine, theirs)
    assert apart <= SHIFT_APART, (f"{report}; {apart:.1%} of the samples in other rows even "
                                  f"one slot on")
    assert medians_agree(mine, theirs), report


SLEEPER = "import time\nwhile True: time.sleep(0.002)"
PEER_SECONDS = 5


@pytest.mark.parametrize("load", ["idle", "mixed"])
def test_the_host_series_agree_with_runqlat_over_the_same_seconds(load, wakeup, cgroup_factory):
    """The agent at its defaults and runqlat, attached at once, agree (peers.agreement: as many
    waits, within one in a hundred and the edges' two, the median and the 99th percentile in
    the same or a neighbouring log2 row, the samples in the same rows). Mixed: a busy loop and
    two sleepers on each CPU, and the pipe's round trips beside them. Idle, a sample whose
    task's switch-out goes unreported (docs/design.md) weighs in the count."""
    needs_peer_and_cpus()
    pipe = None
    if load == "mixed":
        busy = cgroup_factory("mixed")
        for cpu in (0, 1):
            busy.spin(cpu)
            busy.start(SLEEPER, cpu)
            busy.start(SLEEPER, cpu)
        pipe = subprocess.Popen([str(wakeup), "100000", str(WAKEE_CPU), str(WAKER_CPU), "200"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pipe.stdout.readline()
        pipe.stdin.write("go\n")
        pipe.stdin.flush()
        time.sleep(0.3)
    try:
        with Probe(Config()) as probe, Runqlat(seconds=PEER_SECONDS) as peer:
            peer.attached()
            first = probe.read_snapshot()
            peer.ended()
            last = probe.read_snapshot()
            theirs = peer.rows()
    finally:
        if pipe is not None:
            pipe.kill()
            pipe.wait()
    host = delta(probe.layout, first, last, PEER_SECONDS).host
    ok, detail = agreement(rows_of_log2(log2_counts(probe.layout, host.slots)), theirs,
                           HOST_COUNT_APART)
    print(f"{load}: {detail}")
    assert ok, f"{load}: {detail}"
