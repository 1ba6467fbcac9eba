"""One interval's measurement (gsender_bcc.sampler), with a fake map, tree and clock: fast and exact.

The fakes model the parts the Sampler depends on: the kernel's map keeps a cgroup's
cumulative counts until its entry is deleted, and a new entry under an id counts from zero;
the tree names the cgroups that exist and reports, of the ids it is shown, those that no
longer do (once they stopped counting, as CgroupTree does).
"""

from array import array

import pytest

from gsender_bcc.cgroups import OTHER, Resolved
from gsender_bcc.histogram import Counts, Layout, Measured, Snapshot, empty_counts, slot_of
from gsender_bcc.probe import overflow_cgroup
from gsender_bcc.sampler import Sampler

LAYOUT = Layout(sub_bits=3, log2_max=32)
OVERFLOW = overflow_cgroup()


class FakeMap:
    """The per-cgroup map: cumulative counts by cgroup id; a deleted entry starts from zero."""

    layout = LAYOUT

    def __init__(self):
        self.entries = {}
        self.forgotten = []

    def count(self, cgroup, samples, us=10):
        slots, total = self.entries.get(cgroup, (array("q", bytes(8 * LAYOUT.slots)), 0))
        slots = array("q", slots)
        slots[slot_of(LAYOUT, us)] += samples
        self.entries[cgroup] = (slots, total + samples * us * 1000)

    def read_snapshot(self):
        return Snapshot(empty_counts(LAYOUT), 0, {cgroup: Counts(array("q", slots), total)
                                                  for cgroup, (slots, total) in self.entries.items()})

    def forget(self, cgroups):
        for cgroup in cgroups:
            self.forgotten.append(cgroup)
            self.entries.pop(cgroup, None)


class FakeTree:
    """Names the cgroups it has seen exist, until it reports them gone; records what it is asked."""

    def __init__(self):
        self.names = {}      # every cgroup seen, by id: its service
        self.existing = set()
        self.asked = []

    def make(self, cgroup, service):
        self.names[cgroup] = service
        self.existing.add(cgroup)

    def resolve(self, cgroups, present=(), keep=()):
        changed, keep = set(cgroups), set(keep)
        self.asked.append((changed, set(present), keep))
        names = {cgroup: self.names.get(cgroup, OTHER) for cgroup in changed}
        gone = {cgroup for cgroup in (changed | set(present)) - keep
                if cgroup not in self.existing and cgroup not in changed}
        for cgroup in gone:
            self.names.pop(cgroup, None)
        return Resolved(names, gone)

    def directories(self, service):
        return []


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def made(cgroup, service):
    return lambda kernel, tree: tree.make(cgroup, service)


def removed(cgroup):
    return lambda kernel, tree: tree.existing.remove(cgroup)


def counted(cgroup, samples):
    return lambda kernel, tree: kernel.count(cgroup, samples)


# Each case is a list of intervals: (what happens during it, the services sent for it by
# their sample counts, every cgroup forgotten so far).
CASES = {
    "a service's cgroups are merged": [
        ([made(1, "web"), made(2, "web"), made(3, "db"),
          counted(1, 2), counted(2, 1), counted(3, 4)], {"web": 3, "db": 4}, []),
        ([counted(3, 1)], {"db": 1}, []),
    ],
    "a removed cgroup's last samples keep its name; it is forgotten once it stops counting": [
        ([made(5, "batch"), counted(5, 2)], {"batch": 2}, []),
        ([counted(5, 3), removed(5)], {"batch": 3}, []),
        ([], {}, [5]),
        ([], {}, [5]),
    ],
    "an id handed out again after its cgroup was forgotten counts from zero": [
        ([made(5, "batch"), counted(5, 4)], {"batch": 4}, []),
        ([removed(5)], {}, [5]),
        ([made(5, "web"), counted(5, 1)], {"web": 1}, [5]),
        ([counted(5, 2)], {"web": 2}, [5]),
    ],
    "a cgroup removed between two readings, while it counted, is counted once": [
        ([made(6, "job"), counted(6, 1)], {"job": 1}, []),
        ([counted(6, 2), removed(6), made(7, "job"), counted(7, 5)], {"job": 7}, []),
        ([counted(7, 1)], {"job": 1}, [6]),
    ],
    "an unknown cgroup counts as other": [
        ([counted(8, 2)], {OTHER: 2}, []),
        ([], {}, [8]),
    ],
    "the samples beyond the map's capacity are never forgotten": [
        ([counted(OVERFLOW, 3)], {OTHER: 3}, []),
        ([], {}, []),
        ([counted(OVERFLOW, 1)], {OTHER: 1}, []),
    ],
}


@pytest.mark.parametrize("intervals", CASES.values(), ids=CASES.keys())
def test_intervals(intervals):
    kernel, tree, clock = FakeMap(), FakeTree(), FakeClock()
    sampler = Sampler(kernel, tree, clock)
    sampler.start()
    for number, (events, services, forgotten) in enumerate(intervals, 1):
        for event in events:
            event(kernel, tree)
        clock.now += 5
        host, shown = sampler.sample()
        assert ({s.name: s.stats.count for s in shown}, kernel.forgotten) == (
            services, forgotten), f"interval {number}"
        assert host.count == sum(services.values()) and host.seconds == 5


def test_the_tree_is_shown_every_entry_of_the_latest_reading():
    kernel, tree = FakeMap(), FakeTree()
    tree.make(1, "web")
    tree.make(2, "db")
    sampler = Sampler(kernel, tree, FakeClock())
    kernel.count(1, 1)
    sampler.start()
    kernel.count(2, 1)  # a new entry, made after the baseline was read
    sampler.sample()
    assert tree.asked == [({2}, {1, 2}, {OVERFLOW})]


def test_the_overflow_is_counted_apart():
    kernel = FakeMap()
    sampler = Sampler(kernel, FakeTree(), FakeClock())
    sampler.start()
    kernel.count(OVERFLOW, 4)
    kernel.count(1, 1)
    measured = sampler.measure()
    assert sampler.overflow_count(measured) == 4
    kernel.count(1, 1)
    assert sampler.overflow_count(sampler.measure()) == 0


@pytest.mark.parametrize("limit, services", [
    (None, {"web": 30, "db": 20, "cron": 5, OTHER: 2}),   # every service that counted
    (2, {"web": 30, "db": 20, OTHER: 5 + 2}),              # the rest summed as other
    (0, {OTHER: 30 + 20 + 5 + 2}),
])
def test_the_services_with_the_most_wait_and_the_rest_as_other(limit, services):
    kernel, tree = FakeMap(), FakeTree()
    for cgroup, service in ((1, "web"), (2, "db"), (3, "cron")):
        tree.make(cgroup, service)
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    for cgroup, samples in ((1, 30), (2, 20), (3, 5), (9, 2)):
        kernel.count(cgroup, samples)
    shown = sampler.services(sampler.measure(), limit)
    assert {s.name: s.stats.count for s in shown} == services


def test_without_a_tree_there_is_no_breakdown():
    kernel, clock = FakeMap(), FakeClock()
    sampler = Sampler(kernel, None, clock)
    sampler.start()
    kernel.count(1, 3)
    clock.now += 2.5
    host, services = sampler.sample()
    assert (host.count, host.seconds, services) == (3, 2.5, None)


def test_an_interval_carried_over_is_named_against_the_latest_reading():
    """The daemon sends the interval a restart left before any of its own: its cgroups are
    named, and those gone forgotten, as for any interval."""
    kernel, tree = FakeMap(), FakeTree()
    tree.make(1, "web")
    kernel.count(1, 2)
    kernel.count(4, 1)  # the entry of a cgroup removed while the agent was stopped
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    left = FakeMap()
    left.count(1, 3)
    cgroups = left.read_snapshot().cgroups
    shown = sampler.services(Measured(4.0, cgroups[1], 0, cgroups), 20)
    assert {s.name: s.stats.count for s in shown} == {"web": 3}
    assert kernel.forgotten == [4] and set(sampler.baseline.cgroups) == {1}


def test_measuring_needs_a_start():
    with pytest.raises(RuntimeError, match="start"):
        Sampler(FakeMap(), None, FakeClock()).measure()
