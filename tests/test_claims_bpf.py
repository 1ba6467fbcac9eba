"""The per-service breakdown's limits (docs/design.md), with the real agent and real cgroups:
more cgroups than the kernel map holds, and a host without cgroup v2."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gsender_bcc import program
from conftest import AGENT
from test_claims import NOTICE, without_cgroup_v2

pytestmark = pytest.mark.bpf

PREFIX = "ovf.cpu-lat"
SERVICE_COUNT = re.compile(re.escape(PREFIX) + r"\.service\.[^.]+\.count")
BEYOND = 300  # cgroups with samples past the map's capacity

# Moves itself through the cgroups named on stdin, one after the other, and sleeps a moment
# in each: the switch-out of each sleep is a sample of the cgroup it is in.
MOVER = """
import sys, time
for line in sys.stdin:
    with open(line.strip() + "/cgroup.procs", "w") as procs:
        procs.write("0")
    time.sleep(0.0002)
print("done", flush=True)
"""


def test_samples_of_cgroups_past_the_maps_capacity_are_counted_in_other(agent_factory,
                                                                       cgroup_factory):
    entries = program.DEFAULT_MAX_CGROUPS
    holder = cgroup_factory("overflow")
    folders = [holder.path / f"job-{i}.scope" for i in range(entries + BEYOND)]
    for folder in folders:
        folder.mkdir()
    agent = agent_factory(["--stdout", "--frequency", "1", "--prefix", PREFIX,
                           "--max-services", "5", "--config", "/dev/null"])
    lines = agent.intervals(1)  # attached: the mover starts after the attach
    mover = subprocess.Popen([sys.executable, "-c", MOVER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        mover.stdin.write("".join(f"{folder}\n" for folder in folders))
        mover.stdin.close()
        assert mover.stdout.readline() == "done\n"
        assert mover.wait(timeout=30) == 0
        finished = time.time()
    finally:
        mover.kill()
        mover.wait()
    # The agent printed on while the mover ran (seconds on a slow machine): read on up to the
    # interval after the one the mover finished in, not a fixed number of intervals.
    for _ in range(60):
        batch = agent.intervals(1)
        lines += batch
        if batch[0][2] >= finished + 1:
            break
    assert agent.proc.poll() is None
    by_stamp = {}
    for path, value, stamp in lines:
        by_stamp.setdefault(stamp, {})[path] = value
    overflow = 0
    for stamp, values in sorted(by_stamp.items()):
        services = sum(v for p, v in values.items() if SERVICE_COUNT.fullmatch(p))
        assert values[f"{PREFIX}.count"] == services, f"interval {stamp}: services do not add up"
        beyond = values[f"{PREFIX}.agent.services_overflow"]
        assert values.get(f"{PREFIX}.service.other.count", 0) >= beyond, stamp
        overflow += beyond
    # Each cgroup had at least one sample; the map held at most `entries` of them (fewer: the
    # reserved entry and the host's other cgroups take room too).
    print(f"samples counted past the map's capacity: {overflow}")
    assert overflow >= BEYOND, f"only {overflow} samples counted past the map's capacity"


def test_without_cgroup_v2_the_agent_sends_the_host_series_alone():
    agent = subprocess.Popen(without_cgroup_v2(AGENT + [
        "--config", "/dev/null", "--stdout", "--frequency", "1", "--prefix", "v1.cpu-lat"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while len({line.split(" ")[2] for line in lines}) < 3:  # the second interval is whole
            line = agent.stdout.readline()
            assert line, f"the agent ended: {agent.communicate()[1]}"
            lines.append(line)
    finally:
        agent.terminate()
        _, stderr = agent.communicate(timeout=10)
    assert agent.returncode == 0, stderr
    assert stderr.count(NOTICE) == 1, stderr
    second = sorted({line.split(" ")[2] for line in lines})[1]
    names = {line.split(" ")[0][len("v1.cpu-lat."):] for line in lines
             if line.split(" ")[2] == second}
    host = {"count", "wait_ms", "mean", "p50", "p90", "p99", "max", "agent.samples_lost"}
    buckets = {name for name in names if name.isdigit()}
    assert names - buckets == host and "0" in buckets, sorted(names)


def _top_screen(tmp_path, terminal: str) -> str:
    """Return the first full screen of ``--top`` in a tmux pane whose TERM is ``terminal``,
    with its escape sequences (capture-pane -e)."""
    name = f"gsender-claims-{os.getpid()}-{terminal}"
    conf = tmp_path / f"{terminal}.conf"
    conf.write_text(f"set -g default-terminal {terminal}\nset -g status off\n"
                    f"set -g remain-on-exit on\n")
    tmux = ["tmux", "-L", name]
    command = " ".join([sys.executable, "-m", "gsender_bcc", "--top", "--config", "/dev/null"])
    subprocess.run(tmux + ["-f", str(conf), "new-session", "-d", "-s", "top", "-x", "80", "-y",
                           "24", f"exec {command}"], check=True, timeout=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            screen = subprocess.run(tmux + ["capture-pane", "-e", "-p", "-t", "top"],
                                    capture_output=True, text=True, check=True,
                                    timeout=10).stdout
            if "|#" in re.sub(r"\x1b\[[0-9;]*m", "", screen):  # a bar is drawn
                return screen
            assert time.monotonic() < deadline, f"--top drew no bar in {terminal}:\n{screen}"
            time.sleep(0.2)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True, timeout=10)


def test_top_uses_colour_only_where_the_terminal_has_it(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run 'make setup' (it installs tmux)")
    colour = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38;5;\d+)(?:;[0-9;]*)?m")
    assert colour.search(_top_screen(tmp_path, "screen")), "no colour where the terminal has it"
    plain = _top_screen(tmp_path, "vt100")
    assert not colour.search(plain), plain


# Stops itself before the probe attaches; once continued, starts a thread, and both sleep in
# short steps (each step one dispatch after a wait).
BEFORE_AND_AFTER = """
import os, signal, threading, time
os.kill(os.getpid(), signal.SIGSTOP)
def steps():
    while True:
        time.sleep(0.001)
threading.Thread(target=steps, daemon=True).start()
steps()
"""


def _stopped(pid) -> bool:
    return all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
               for task in Path(f"/proc/{pid}/task").glob("[0-9]*"))


def _pcounts(pid):
    return {task.name: int((task / "schedstat").read_text().split()[2])
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*")}


@pytest.mark.parametrize("kind", ["raw", "classic"])
def test_the_waits_of_a_task_from_before_the_attach_count_as_a_new_ones_do(kind,
                                                                            cgroup_factory):
    """A task stopped before the attach, continued after it, and a thread it starts then: each
    switch-in after a wait the scheduler counts (schedstat's pcount) is one sample, the first
    wakeup after the attach included."""
    from gsender_bcc.config import Config
    from gsender_bcc.probe import Probe
    from gsender_bcc.readings import delta
    from test_probe_bpf import settings_for
    holder = cgroup_factory("before-and-after")
    child = holder.start(BEFORE_AND_AFTER)
    deadline = time.monotonic() + 10
    while not _stopped(child.pid):
        assert time.monotonic() < deadline, "the task did not stop itself"
        time.sleep(0.01)
    (main, before), = _pcounts(child.pid).items()
    with Probe(Config(), settings_for(kind)) as probe:
        first = probe.read_snapshot()
        os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGSTOP)
        while not _stopped(child.pid):
            assert time.monotonic() < deadline + 10, "the task did not stop"
            time.sleep(0.01)
        time.sleep(0.05)  # the CPUs switch away from the stopped threads
        last = probe.read_snapshot()
    after = _pcounts(child.pid)
    thread = next(name for name in after if name != main)
    counted = delta(probe.layout, first, last, 1.0).cgroups[holder.id].count
    dispatches = (after[main] - before) + after[thread]
    assert after[main] - before > 10 and after[thread] > 10
    assert abs(counted - dispatches) <= 0.01 * dispatches + 2, (counted, dispatches)
