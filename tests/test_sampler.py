"""One interval's measurement (gsender_bcc.sampler), with a fake map, tree and clock: fast and exact.

The fakes model the parts the Sampler depends on: the kernel's map keeps a cgroup's
cumulative counts until its entry is deleted, and a new entry under an id counts from zero;
the tree names the cgroups that exist and reports, of the ids it is shown, those that no
longer do (once they stopped counting, as CgroupTree does).
"""

from array import array
from types import SimpleNamespace

import pytest

from gsender_bcc.cgroups import OTHER, Resolved
from gsender_bcc.histogram import Counts, Layout, empty_counts, slot_of
from gsender_bcc.readings import Measured, Snapshot
from gsender_bcc.blame import Blame
from gsender_bcc.config import Config
from gsender_bcc.metrics import to_datapoints
from gsender_bcc.probe import overflow_cgroup, reserved_culprits
from gsender_bcc.sampler import Sampler
from culprit_words import culprits_of

LAYOUT = Layout(sub_bits=3, log2_max=32)
OVERFLOW = overflow_cgroup()


class FakeMap:
    """The per-cgroup map: cumulative counts by cgroup id; a deleted entry starts from zero."""

    layout = LAYOUT

    def __init__(self, attribution=False):
        self.entries = {}
        self.forgotten = []
        self.pairs = {} if attribution else None  # (victim, culprit) -> ns, cumulative
        self.settings = SimpleNamespace(per_cgroup=True, culprits=attribution)

    def blamed(self, victim, behind):
        """Count one sample of ``victim`` that waited behind each culprit ``behind[c]`` ns."""
        total = sum(behind.values())
        slots, summed = self.entries.get(victim, (array("q", bytes(8 * LAYOUT.slots)), 0))
        slots = array("q", slots)
        slots[slot_of(LAYOUT, total // 1000)] += 1
        self.entries[victim] = (slots, summed + total)
        for culprit, ns in behind.items():
            self.pairs[victim, culprit] = self.pairs.get((victim, culprit), 0) + ns

    def count(self, cgroup, samples, us=10):
        slots, total = self.entries.get(cgroup, (array("q", bytes(8 * LAYOUT.slots)), 0))
        slots = array("q", slots)
        slots[slot_of(LAYOUT, us)] += samples
        self.entries[cgroup] = (slots, total + samples * us * 1000)

    def read_snapshot(self):
        """The cumulative histograms and culprit counters."""
        return Snapshot(empty_counts(LAYOUT), 0, {cgroup: Counts(array("q", slots), total)
                                                  for cgroup, (slots, total) in self.entries.items()},
                        None if self.pairs is None else culprits_of(self.pairs))

    def forget(self, cgroups):
        for cgroup in cgroups:
            self.forgotten.append(cgroup)
            self.entries.pop(cgroup, None)
        if self.pairs is not None:
            self.pairs = {pair: ns for pair, ns in self.pairs.items() if pair[0] not in cgroups}


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

    def tags(self, service):
        return (("runtime", "docker"),) if service.startswith("docker_") else ()


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


# -- who waited behind whom (attribution on) --

MS = 1_000_000
IDLE = next(i for i, name in reserved_culprits().items() if name == "idle")


def blaming(*services):
    """A map with attribution and a tree naming ``(cgroup, service)`` each."""
    kernel, tree = FakeMap(attribution=True), FakeTree()
    for cgroup, service in services:
        tree.make(cgroup, service)
    return kernel, tree


def rows(shown):
    return {s.name: (s.stats.count, s.blame) for s in shown}


def test_a_service_that_causes_wait_is_ranked_even_without_samples():
    kernel, tree = blaming((1, "web"), (2, "db"), (3, "batch"))
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    kernel.blamed(1, {3: 30 * MS})  # web waits behind batch, which never waits
    kernel.blamed(2, {2: 10 * MS})
    measured = sampler.measure()
    assert rows(sampler.services(measured, 2, 3)) == {
        "batch": (0, Blame(0, 0, 30 * MS, (), 0)),
        "web": (1, Blame(0, 30 * MS, 0, (("batch", 30 * MS),), 0)),
        OTHER: (1, Blame(10 * MS, 0, 0, (("db", 10 * MS),), 0))}
    # Without attribution (max_culprits = 0) the ranking is by wait alone, with no Blame.
    assert rows(sampler.services(measured, 2, 0)) == {"web": (1, None), "db": (1, None)}


def test_the_other_row_sums_its_members_figures():
    kernel, tree = blaming((1, "web"), (2, "db"), (3, "batch"))
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    kernel.blamed(1, {1: 50 * MS, 2: 40 * MS})
    kernel.blamed(2, {3: 5 * MS, IDLE: 1 * MS})
    kernel.blamed(3, {3: 2 * MS, 1: 3 * MS})
    shown = sampler.services(sampler.measure(), 1, 1)
    assert rows(shown) == {
        "web": (1, Blame(50 * MS, 40 * MS, 3 * MS, (("web", 50 * MS),), 40 * MS)),
        OTHER: (2, Blame(2 * MS, 9 * MS, 45 * MS, (("batch", 7 * MS),), 4 * MS))}


def test_the_series_keep_the_conservation_laws_exactly():
    """Per service: behind_self + behind_others = wait_ms = Σ behind.*; over the services
    (other included): Σ caused + Σ the host's behind.<reserved> = Σ behind_others."""
    kernel, tree = blaming((1, "web"), (2, "db"), (3, "batch"), (4, "cron"))
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    kernel.blamed(1, {1: 5 * MS, 2: 7 * MS, 3: 11 * MS, IDLE: 2 * MS})
    kernel.blamed(2, {3: 13 * MS, OVERFLOW: 1 * MS})
    kernel.blamed(3, {1: 3 * MS, 3: 17 * MS})
    kernel.blamed(4, {2: 19 * MS})
    kernel.blamed(9, {1: 23 * MS, 4: 1 * MS})  # an unnamed cgroup: other
    measured = sampler.measure()
    points = to_datapoints(sampler.host(measured), Config(prefix="p", bucket_series=False),
                           sampler.services(measured, 2, 1), sampler.host_behind(measured))
    values = {p.path: p.value for p in points}
    services = {path.split(".")[2] for path in values if path.startswith("p.service.")}
    assert services == {"web", "batch", OTHER}
    for name in services:
        own = {path.split(".", 3)[3]: v for path, v in values.items()
               if path.startswith(f"p.service.{name}.")}
        behind = [v for stat, v in own.items() if stat.startswith("behind.")]
        assert own["behind_self_ms"] + own["behind_others_ms"] == own["wait_ms"] == sum(behind)
        assert len(behind) == 2  # max_culprits = 1, and behind.other
    assert sum(values[f"p.service.{name}.caused_ms"] for name in services) + sum(
        values[f"p.behind.{name}_ms"] for name in ("idle", "migrated", "untracked")) == sum(
        values[f"p.service.{name}.behind_others_ms"] for name in services)


def test_a_culprit_that_never_waited_is_named_each_interval_it_is_charged():
    kernel, tree = blaming((1, "web"), (3, "batch"))
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    kernel.blamed(1, {3: 4 * MS})
    assert rows(sampler.services(sampler.measure(), 20, 3))["batch"] == (
        0, Blame(0, 0, 4 * MS, (), 0))
    assert tree.asked[-1][0] == {1, 3}  # the culprit is named as the victims are
    # Charged nothing since: it is neither asked about nor kept (no entry of it to delete).
    tree.existing.remove(3)
    assert "batch" not in rows(sampler.services(sampler.measure(), 20, 3))
    assert tree.asked[-1][0] == set() and sampler.baseline.culprits.words.keys() == {1}
    assert kernel.forgotten == []
    # Its id handed out again is named anew.
    tree.make(3, "job")
    kernel.blamed(1, {3: 1 * MS})
    assert rows(sampler.services(sampler.measure(), 20, 3))["job"] == (
        0, Blame(0, 0, 1 * MS, (), 0))


def test_an_interval_carried_over_has_no_culprit_figures():
    kernel, tree = blaming((1, "web"))
    sampler = Sampler(kernel, tree, FakeClock())
    kernel.blamed(1, {IDLE: 3 * MS})
    sampler.start()
    left = FakeMap()
    left.count(1, 3)
    cgroups = left.read_snapshot().cgroups
    carried = Measured(4.0, cgroups[1], 0, cgroups)
    shown = sampler.services(carried, 20, 3)
    assert rows(shown) == {"web": (3, None)} and sampler.host_behind(carried) is None
    paths = [p.path for p in to_datapoints(sampler.host(carried), Config(prefix="p"), shown,
                                           sampler.host_behind(carried))]
    assert not [path for path in paths if "behind" in path or "caused" in path]


def test_a_services_row_carries_its_tags_from_the_tree():
    kernel, tree = FakeMap(), FakeTree()
    tree.make(1, "docker_web")
    tree.make(2, "nginx")
    sampler = Sampler(kernel, tree, FakeClock())
    sampler.start()
    for cgroup in (1, 2, 9):
        kernel.count(cgroup, 1)
    rows = {row.name: row.tags for row in sampler.sample()[1]}
    assert rows == {"docker_web": (("runtime", "docker"),), "nginx": (), OTHER: ()}
