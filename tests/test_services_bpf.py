"""Per-service series from the running agent, with real cgroups coming and going."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf


def rss_anon_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_hundreds_of_short_lived_cgroups_keep_series_and_memory_bounded(agent_factory,
                                                                        cgroup_factory):
    agent = agent_factory(["--stdout", "--frequency", "1", "--prefix", "churn.cpu-lat",
                           "--max-services", "5"])
    agent.intervals(2)
    rss_before = rss_anon_kib(agent.proc.pid)
    holder = cgroup_factory("holder")
    made = 0
    for batch in range(6):
        folders = []
        for i in range(50):  # each short-lived cgroup runs one short process, then goes
            folder = holder.path / f"job-{batch}-{i}.scope"
            folder.mkdir()
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE)
            (folder / "cgroup.procs").write_text(str(child.pid))
            child.stdin.close()
            child.wait(timeout=10)
            folders.append(folder)
            made += 1
        for folder in folders:
            folder.rmdir()
        lines = agent.intervals(1)
    lines = agent.intervals(3)
    assert agent.proc.poll() is None
    per_interval = {}
    for path, _, stamp in lines:
        if re.fullmatch(r"churn\.cpu-lat\.service\.[^.]+\.count", path):
            per_interval.setdefault(stamp, set()).add(path)
    assert max(len(names) for names in per_interval.values()) <= 5 + 1  # the top five and other
    growth = rss_anon_kib(agent.proc.pid) - rss_before
    assert made == 300 and growth < 4096, f"RssAnon grew {growth} KiB over {made} cgroups"
    # The kernel map forgets removed cgroups: what is left is about what exists.
    entries = map_entries("cgroup_counts", agent.proc.pid)
    assert entries < 100, f"{entries} entries left in the cgroup map"
    host = sum(v for p, v, _ in lines if p == "churn.cpu-lat.count")
    by_service = sum(v for p, v, _ in lines
                     if re.fullmatch(r"churn\.cpu-lat\.service\.[^.]+\.count", p))
    assert host == by_service


def map_entries(name, pid):
    """Count the entries of the agent's BPF hash map ``name`` (found by its fdinfo)."""
    import json
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
        try:
            text = info.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("map_id:"):
                ids.add(int(line.split()[1]))
    for map_id in ids:
        shown = json.loads(subprocess.run(["bpftool", "--json", "map", "show", "id", str(map_id)],
                                          capture_output=True, text=True, check=True).stdout)
        if shown.get("name") == name[:15]:
            dump = json.loads(subprocess.run(["bpftool", "--json", "map", "dump", "id",
                                              str(map_id)], capture_output=True, text=True,
                                             check=True).stdout)
            return len(dump)
    raise AssertionError(f"the agent holds no map named {name}")


def test_a_busy_cgroup_appears_under_its_service_name(agent_factory, cgroup_factory):
    busy = cgroup_factory("worker.service/child")
    busy.spin(0)
    busy.spin(0)
    time.sleep(0.2)
    agent = agent_factory(["--stdout", "--frequency", "1", "--prefix", "svc.cpu-lat"])
    agent.intervals(1)
    lines = agent.intervals(2)
    counts = {p: v for p, v, _ in lines if p == "svc.cpu-lat.service.worker.count"}
    assert counts and min(counts.values()) > 100
    assert os.path.isdir(busy.path)
