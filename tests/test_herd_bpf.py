"""A herd of 1000 services with culprit attribution at its defaults: the real program in the
kernel, real cgroups, against physics.

1000 services (the bench's tickers, one waking process per cgroup, every 50 ms) run on CPU 0
while the agent's program counts them, so every cgroup's entry is in the map and charged. On
CPU 1, 20 victim services take turns, each beside a hog service of its own: two
always-runnable loops on one CPU, the victim running before the hog starts and until after
it stops, so the victim waits exactly while the hog runs. Its wait behind the hog is the
hog's CPU time (schedstat's sum_exec_runtime), which neither the program nor its timeline
touches, plus at most what the hypervisor took from CPU 1 meanwhile (tests/stolen.py).
"""

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from gsender_bcc.cgroups import v2_mount
from gsender_bcc.config import Config
from gsender_bcc.probe import Probe, reserved_culprits
from test_culprits_bpf import between, charged_to, cpu_ns, needs_two_cpus
from test_physics_bpf import CPU

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import many_services  # noqa: E402

pytestmark = pytest.mark.bpf

HERD = 1000
VICTIMS = 20
# A victim's figure and its physics part by up to about 12 ms here, whatever the window (most
# agree to 0.1 ms): over 1 s of hog (about 500 ms of its CPU time) that is under half of
# TOLERANCE; over 0.3 s (150 ms) it exceeds TOLERANCE in about one run of five.
WINDOW_S = 1.0
TOLERANCE = 0.05  # what the issue asks for


@contextlib.contextmanager
def pinned(cpus):
    """Run the block on ``cpus``: what it starts inherits them."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


@pytest.fixture
def herd():
    """HERD ticking services on CPU 0; all stopped and removed afterwards."""
    if shutil.which("gcc") is None:
        pytest.skip("the tickers are built with gcc")
    many_services.build_ticker()
    made = many_services.Cgroups(v2_mount(), HERD, prefix="herd", suffix=".service")
    tickers = None
    try:
        with pinned({0}):
            tickers = many_services.Tickers(made)
        yield made
    finally:
        if tickers is not None:
            tickers.close()
        made.remove()


def test_in_a_herd_each_victim_s_first_culprit_is_its_hog(herd, cgroup_factory, stolen_ns):
    needs_two_cpus()
    pairs = [(cgroup_factory(f"herd-victim-{n}"), cgroup_factory(f"herd-hog-{n}"))
             for n in range(VICTIMS)]
    for victim, hog in pairs:
        hog.spin(CPU), victim.spin(CPU)
        time.sleep(0.05)  # the interpreters have started
        victim.pause(), hog.pause()
    physics = {}
    with Probe(Config()) as probe:
        assert probe.settings.culprits  # the default
        time.sleep(0.5)
        before = probe.read_snapshot()
        for victim, hog in pairs:
            # The victim runs throughout the hog's run: it waits while the hog runs.
            victim.resume()
            ran, lost = cpu_ns(hog), stolen_ns(CPU)
            hog.resume()
            time.sleep(WINDOW_S)
            hog.pause()
            physics[victim.id] = cpu_ns(hog) - ran, stolen_ns(CPU) - lost
            victim.pause()
        after = probe.read_snapshot()
    herd_ids = herd.ids()
    assert len(herd_ids & set(after.cgroups)) > 0.9 * HERD  # the herd is in the map
    charged = between(probe, before, after)
    reserved = set(reserved_culprits())
    print("\n" + "; ".join(f"{v.path.name}: {charged_to(charged, v.id).get(h.id, 0) / 1e6:.1f} ms "
                           f"behind its hog, {physics[v.id][0] / 1e6:.1f} ms of its CPU time, "
                           f"{physics[v.id][1] / 1e6:.1f} ms stolen" for v, h in pairs))
    for victim, hog in pairs:
        behind = charged_to(charged, victim.id)
        ranked = sorted(((ns, culprit) for culprit, ns in behind.items()
                         if culprit != victim.id), reverse=True)
        assert ranked and ranked[0][1] == hog.id, (victim.path.name, ranked[:3], hog.id)
        share, (truth, lost) = behind[hog.id], physics[victim.id]
        assert (1 - TOLERANCE) * truth <= share <= (1 + TOLERANCE) * (truth + lost), (
            f"{victim.path.name}: {share / 1e6:.1f} ms behind its hog by the program, "
            f"{truth / 1e6:.1f} ms of the hog's CPU time, {lost / 1e6:.1f} ms stolen")
        assert not set(behind) & herd_ids - reserved  # the herd ran on the other CPU
