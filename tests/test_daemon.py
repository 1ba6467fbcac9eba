"""The measurement loop with a fake probe, a fake clock and a recording sink: fast and exact."""

import json
import logging
import os
import signal
from array import array
from dataclasses import replace
from types import SimpleNamespace

import pytest

from gsender_bcc import carryover
from gsender_bcc.cgroups import CgroupTree
from gsender_bcc.config import Config
from gsender_bcc.daemon import (MAX_HOLD_SECONDS, Daemon, boundary_after_reload, interval_stamp,
                                next_boundary, stamp_floor)
from gsender_bcc.histogram import Counts, Layout, slot_of
from gsender_bcc.readings import Snapshot
from gsender_bcc.notify import NullNotifier
from gsender_bcc.probe import reserved_culprits
from culprit_words import culprits_of

IDLE = next(i for i, name in reserved_culprits().items() if name == "idle")
LAYOUT = Layout(sub_bits=3, log2_max=32)


@pytest.mark.parametrize("now, frequency, boundary", [
    (100.0, 15, 105), (104.999, 15, 105), (105.0, 15, 120), (1700000001.5, 5, 1700000005),
    (0.0, 1, 1),
])
def test_next_boundary_is_a_later_multiple(now, frequency, boundary):
    assert next_boundary(now, frequency) == boundary


@pytest.mark.parametrize("boundary, now, frequency, last, stamp", [
    (105, 105.001, 15, 90, 105),     # on time
    (105, 119.9, 15, 90, 105),       # late, but within the interval
    (105, 151.0, 15, 90, 150),       # stalled past two boundaries: one interval, latest boundary
    (105, 104.0, 15, 90, 105),       # read a moment early (stop at a boundary)
    (105, 300.0, 15, 300, None),     # the latest boundary was already stamped
    (90, 91.0, 15, 105, None),       # the wall clock went back: never repeat a timestamp
])
def test_interval_stamp(boundary, now, frequency, last, stamp):
    assert interval_stamp(boundary, now, frequency, last) == stamp


@pytest.mark.parametrize("now, last, floor", [
    (111.0, 105, 105),                                  # the clock went on: the last stamp
    (99.0, 110, 110),                                   # 11 s back: wait for a new stamp
    (110.0 - MAX_HOLD_SECONDS, 110, 110),               # at most that long
    (109.5 - MAX_HOLD_SECONDS, 110, 109 - MAX_HOLD_SECONDS),  # longer: resume on the clock
    (127.2, 86525, 127),                                # a day ahead, then corrected
])
def test_stamp_floor(now, last, floor):
    assert stamp_floor(now, last) == floor


@pytest.mark.parametrize("boundary, heard, last, frequency, after", [
    (110, 106.0, 105, 5, 110),      # frequency unchanged: the same boundary
    (110, 109.99, 105, 5, 110),     # heard just before it: still that boundary
    (110, 110.02, 105, 5, 110),     # the signal came with the boundary: not skipped
    (110, 106.0, 105, 10, 110),     # longer intervals: the first new multiple after the signal
    (110, 109.99, 105, 15, 120),
    (120, 106.0, 105, 5, 110),      # shorter: the first new multiple after the signal
    (120, 111.0, 105, 5, 115),
    (120, 106.0, 90, 5, 110),       # never before the last stamp's next multiple
    (105, 101.0, 0, 5, 105),        # during the first interval
])
def test_boundary_after_reload(boundary, heard, last, frequency, after):
    assert boundary_after_reload(boundary, heard, last, frequency) == after


class FakeClock:
    """Wall and monotonic time that move only when the daemon waits; signals come on schedule."""

    def __init__(self, start, events=()):
        self.wall = start
        self.mono = 1000.0
        self.events = sorted(events)  # (wall time, signal or callable)
        self.waits = []

    def time(self):
        return self.wall

    def monotonic(self):
        return self.mono

    def advance(self, seconds):
        self.wall += seconds
        self.mono += seconds

    def events_now(self):
        """The clock the events' times are on."""
        return self.wall

    def wait_for_signal(self, signals, seconds):
        self.waits.append(seconds)
        assert len(self.waits) < 100000, "the daemon never stopped"
        if self.events and self.events[0][0] <= self.events_now() + seconds:
            at, what = self.events.pop(0)
            self.advance(max(0.0, at - self.events_now()))
            if callable(what):
                what()
                return None
            return what
        self.advance(seconds)
        return None


class MonotonicEventsClock(FakeClock):
    """Events at monotonic times, so that they keep their order whatever the wall clock does."""

    def events_now(self):
        return self.mono


class FakeProbe:
    def __init__(self, per_cgroup=False):
        self.layout = LAYOUT
        self.slots = array("q", bytes(8 * LAYOUT.slots))
        self.sum_ns = 0
        self.cgroups = {}
        self.per_cgroup = per_cgroup
        self.settings = SimpleNamespace(per_cgroup=per_cgroup, culprits=False)
        self.forgotten = set()
        self.pairs = None  # with attribution: (victim, culprit) -> ns, cumulative

    def blame(self, us, cgroup, culprit):
        """Count one sample of ``us`` in ``cgroup``, all of it behind ``culprit``."""
        self.add(us, cgroup=cgroup)
        self.pairs[cgroup, culprit] = self.pairs.get((cgroup, culprit), 0) + us * 1000

    def add(self, us, n=1, cgroup=None):
        if cgroup is None:
            self.slots[slot_of(LAYOUT, us)] += n
            self.sum_ns += us * 1000 * n
            return
        slots, total = self.cgroups.get(cgroup, (array("q", bytes(8 * LAYOUT.slots)), 0))
        slots = array("q", slots)
        slots[slot_of(LAYOUT, us)] += n
        self.cgroups[cgroup] = (slots, total + us * 1000 * n)

    def read_snapshot(self):
        return Snapshot(Counts(array("q", self.slots), self.sum_ns), 0,
                        {c: Counts(array("q", s), t) for c, (s, t) in self.cgroups.items()},
                        None if self.pairs is None else culprits_of(self.pairs))

    def forget(self, cgroups):
        self.forgotten |= set(cgroups)
        for cgroup in cgroups:
            self.cgroups.pop(cgroup, None)


class RecordingSink:
    def __init__(self):
        self.intervals = []
        self.configs = []
        self.is_alive = True

    def submit(self, interval):
        self.intervals.append({p.path: p.value for p in interval.points} | {"@": interval.stamp})

    def health(self):
        return {"queued_intervals": 0}

    def alive(self):
        return self.is_alive

    def reconfigure(self, config):
        self.configs.append(config)


class CountingNotifier(NullNotifier):
    def __init__(self, clock, watchdog_seconds=None):
        self.clock = clock
        self.watchdog_seconds = watchdog_seconds
        self.pings = []
        self.messages = []

    def _send(self, message):
        self.messages.append(message)
        if message == "WATCHDOG=1":
            self.pings.append(self.clock.time())


@pytest.fixture(autouse=True)
def signal_mask_restored():
    """Daemon.run blocks the signals it waits for: give the next tests the mask they had."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def run_daemon(clock, probe=None, config=None, **kwargs):
    probe = probe or FakeProbe()
    sink = RecordingSink()
    config = config or Config(frequency=5, prefix="t", state_directory=kwargs.pop("state", None)
                              or Config().state_directory)
    daemon = Daemon(probe, sink, config, clock=clock, **kwargs)
    assert daemon.run() == 0
    return sink, daemon


def stop_at(wall):
    return (wall, signal.SIGTERM)


class TestTiming:
    def test_first_interval_ends_at_the_next_boundary(self):
        clock = FakeClock(103.5, [stop_at(116)])
        sink, _ = run_daemon(clock, keep_unfinished=False)
        assert [i["@"] for i in sink.intervals] == [105, 110, 115]

    def test_a_stall_is_one_interval_at_the_latest_boundary(self):
        clock = FakeClock(100.0, [(107, lambda: clock.advance(16)), stop_at(140)])
        sink, _ = run_daemon(clock, keep_unfinished=False)
        assert [i["@"] for i in sink.intervals] == [105, 120, 125, 130, 135]

    def test_a_wall_clock_stepped_back_never_repeats_a_stamp(self):
        def step_back():
            clock.wall -= 12
        clock = FakeClock(100.0, [(111, step_back), stop_at(130)])
        sink, _ = run_daemon(clock, keep_unfinished=False)
        stamps = [i["@"] for i in sink.intervals]
        assert stamps == sorted(set(stamps)) and stamps[:2] == [105, 110]

    def test_rates_use_the_measured_seconds(self):
        probe = FakeProbe()
        clock = FakeClock(100.0, [(101, lambda: probe.add(3, n=50)), stop_at(106)])
        sink, _ = run_daemon(clock, probe, keep_unfinished=False)
        assert sink.intervals[0]["t.count"] == 50
        assert sink.intervals[0]["t.2"] == 10.0  # 50 samples in the 5 s from 100 to 105


class TestWallClockSteps:
    """A wall clock stepped by a day and back: delivery follows the clock as it is corrected,
    and every sample measured reaches an interval, across a restart too."""

    @staticmethod
    def step(clock, seconds):
        def stepped():
            clock.wall += seconds
        return stepped

    def test_a_day_ahead_for_20_s_then_back(self, tmp_path):
        probe = FakeProbe()
        clock = MonotonicEventsClock(100.0)
        clock.events = sorted([(1000.5 + k, lambda: probe.add(3)) for k in range(50)]
                              + [(1007.2, self.step(clock, 86400)),
                                 (1027.2, self.step(clock, -86400)), (1050.1, signal.SIGTERM)])
        sink, _ = run_daemon(clock, probe, state=tmp_path)
        stamps = [i["@"] for i in sink.intervals]
        assert stamps[0] == 105 and {130, 135, 140, 145, 150} <= set(stamps)
        after = MonotonicEventsClock(150.5, [(1001.0, lambda: second.add(3)), stop_at(1010)])
        second = FakeProbe()
        more, _ = run_daemon(after, second, state=tmp_path)
        assert sum(i["t.count"] for i in sink.intervals + more.intervals) == 50 + 1

    def test_a_restart_onto_a_clock_a_day_ahead_keeps_the_interval_left(self, tmp_path):
        first = FakeProbe()
        clock = FakeClock(100.0, [(101, lambda: first.add(3, n=40)), stop_at(102)])
        run_daemon(clock, first, state=tmp_path)
        second = FakeProbe()
        ahead = 100 + 2 * 86400  # beyond buffer_hours: it cannot be sent at its own stamp
        clock = FakeClock(ahead + 2.5, [(ahead + 3, lambda: second.add(3, n=2)),
                                        stop_at(ahead + 6)])
        sink, _ = run_daemon(clock, second, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(ahead + 5, 42)]

    def test_a_restart_while_waiting_out_a_step_back_sends_no_stamp_twice(self, tmp_path):
        probe = FakeProbe()
        clock = MonotonicEventsClock(100.0)
        clock.events = [(1001, lambda: probe.add(3, n=3)), (1011, self.step(clock, -12)),
                        (1012, lambda: probe.add(3, n=4)), (1016, signal.SIGTERM)]
        sink, _ = run_daemon(clock, probe, state=tmp_path)
        assert [i["@"] for i in sink.intervals] == [105, 110]
        second = FakeProbe()
        clock = FakeClock(104.5, [(106, lambda: second.add(3, n=5)), stop_at(121)])
        more, _ = run_daemon(clock, second, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in more.intervals] == [(115, 9), (120, 0)]

    def test_a_small_step_back_is_waited_out_and_a_large_one_is_not(self):
        probe = FakeProbe()
        clock = MonotonicEventsClock(10000.0)
        clock.events = [(1011, self.step(clock, -12)), (1031, self.step(clock, -2 * 3600)),
                        (1032, lambda: probe.add(3, n=6)), (1045, signal.SIGTERM)]
        sink, _ = run_daemon(clock, probe, keep_unfinished=False)
        stamps = [i["@"] for i in sink.intervals]
        # 12 s back at 10011: the samples wait for 10015, after the last stamp (10010).
        assert stamps[:3] == [10005, 10010, 10015]
        # Two hours back at 10019 (wall 2819): delivery goes on from there at once.
        assert stamps[3:] == [2820, 2825, 2830] and sink.intervals[3]["t.count"] == 6


class TestUnfinishedInterval:
    def test_a_restart_within_the_interval_merges_into_the_same_boundary(self, tmp_path):
        first = FakeProbe()
        clock = FakeClock(100.0, [(101, lambda: first.add(3, n=40)), stop_at(102)])
        sink, _ = run_daemon(clock, first, state=tmp_path)
        assert sink.intervals == []
        assert (tmp_path / carryover.FILE_NAME).exists()
        second = FakeProbe()
        clock = FakeClock(102.5, [(103, lambda: second.add(3, n=10)), stop_at(107)])
        sink, _ = run_daemon(clock, second, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(105, 50)]
        assert sink.intervals[0]["t.2"] == round(50 / 4.5, 3)  # 2 s before, 2.5 s after
        assert carryover.take(tmp_path, LAYOUT).boundary == 110  # left by the second stop

    def test_a_restart_across_a_boundary_sends_the_old_part_alone(self, tmp_path):
        first = FakeProbe()
        clock = FakeClock(100.0, [(101, lambda: first.add(3, n=40)), stop_at(104)])
        run_daemon(clock, first, state=tmp_path)
        second = FakeProbe()
        clock = FakeClock(106.0, [(107, lambda: second.add(3, n=7)), stop_at(111)])
        sink, _ = run_daemon(clock, second, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(105, 40), (110, 7)]

    def test_a_crafted_file_is_set_aside_and_nothing_it_holds_is_sent(self, tmp_path, caplog):
        """A slot at 2^63-1 plus one sample in the same slot overflowed the histogram."""
        slot = str(slot_of(LAYOUT, 3))
        (tmp_path / carryover.FILE_NAME).write_text(json.dumps({
            "format": carryover.FORMAT, "version": 1, "boot_id": "", "boundary": 105,
            "seconds": 3.0, "lost": 0, "host": [3000, {slot: 2 ** 63 - 1}], "cgroups": {}}))
        probe = FakeProbe()
        clock = FakeClock(102.0, [(103, lambda: probe.add(3, n=1)), stop_at(106)])
        sink, _ = run_daemon(clock, probe, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(105, 1)]
        assert "unfinished.json is damaged (9223372036854775807 is not a whole number" in caplog.text
        assert list(tmp_path.glob(carryover.FILE_NAME + ".damaged-*"))

    def test_nothing_is_kept_with_keep_unfinished_off(self, tmp_path):
        clock = FakeClock(100.0, [stop_at(102)])
        run_daemon(clock, state=tmp_path, keep_unfinished=False)
        assert not (tmp_path / carryover.FILE_NAME).exists()


class TestReloadAndWatchdog:
    def test_reload_reaches_the_sink_and_changes_the_frequency(self, tmp_path):
        new = Config(frequency=10, prefix="t", state_directory=tmp_path)
        clock = FakeClock(100.0, [(106, signal.SIGHUP), stop_at(131)])
        sink, daemon = run_daemon(clock, reload=lambda: new, keep_unfinished=False)
        assert sink.configs == [new] and daemon.config == new
        assert [i["@"] for i in sink.intervals] == [105, 110, 120, 130]

    @pytest.mark.parametrize("new_frequency, stamps", [(5, [105, 110, 115, 120]),
                                                       (10, [105, 110, 120])])
    def test_a_reload_just_before_a_boundary_skips_and_merges_none(self, new_frequency,
                                                                   stamps):
        """The reload itself takes time (reading the file, opening the outbox): a SIGHUP
        10 ms before 110 whose reload ends after 110 still ends an interval at 110."""
        probe = FakeProbe()

        def slow_reload():
            clock.advance(0.3)
            return Config(frequency=new_frequency, prefix="t")
        clock = FakeClock(100.0, [(104, lambda: probe.add(3, n=7)),
                                  (109.99, signal.SIGHUP), (112, lambda: probe.add(3, n=5)),
                                  stop_at(121)])
        sink, _ = run_daemon(clock, probe, reload=slow_reload, keep_unfinished=False)
        assert [i["@"] for i in sink.intervals] == stamps
        assert [i["t.count"] for i in sink.intervals][:3] == [7, 0, 5]

    def test_the_watchdog_is_pinged_at_its_own_pace_in_long_intervals(self):
        clock = FakeClock(0.5, [stop_at(3599)])
        notifier = CountingNotifier(clock, watchdog_seconds=10)
        run_daemon(clock, config=Config(frequency=3600), notifier=notifier,
                   keep_unfinished=False)
        gaps = [b - a for a, b in zip([0.5] + notifier.pings, notifier.pings)]
        assert len(notifier.pings) >= 359 and max(gaps) <= 10

    def test_no_ping_while_delivery_is_stuck(self):
        clock = FakeClock(0.5, [stop_at(100)])
        notifier = CountingNotifier(clock, watchdog_seconds=1)
        probe, sink = FakeProbe(), RecordingSink()
        sink.is_alive = False
        Daemon(probe, sink, Config(frequency=60), notifier=notifier, clock=clock,
               keep_unfinished=False).run()
        assert notifier.pings == []


class TestServices:
    @pytest.fixture
    def tree(self, tmp_path):
        for path in ("system.slice/nginx.service/worker", "system.slice/cron.service",
                     "user.slice/user-1000.slice/session-3.scope", "batch/job-1"):
            (tmp_path / path).mkdir(parents=True)
        return tmp_path

    def test_service_counts_add_up_to_the_host(self, tree):
        inode = {name: os.stat(tree / name).st_ino for name in (
            "system.slice/nginx.service/worker", "system.slice/cron.service",
            "user.slice/user-1000.slice/session-3.scope", "batch/job-1")}
        probe = FakeProbe(per_cgroup=True)

        def load():
            probe.add(100, n=30, cgroup=inode["system.slice/nginx.service/worker"])
            probe.add(10, n=5, cgroup=inode["system.slice/cron.service"])
            probe.add(50, n=20, cgroup=inode["user.slice/user-1000.slice/session-3.scope"])
            probe.add(3, n=9, cgroup=inode["batch/job-1"])
            probe.add(7, n=4, cgroup=0)  # beyond the map's capacity
        clock = FakeClock(100.0, [(101, load), stop_at(106)])
        sink, _ = run_daemon(clock, probe, config=Config(frequency=5, prefix="t", max_services=2),
                             cgroup_tree=CgroupTree(tree), keep_unfinished=False)
        interval = sink.intervals[0]
        assert interval["t.service.nginx.count"] == 30
        assert interval["t.service.session-3_scope.count"] == 20
        assert interval["t.service.other.count"] == 5 + 9 + 4
        assert "t.service.cron.count" not in interval
        assert interval["t.count"] == sum(v for k, v in interval.items()
                                          if k.startswith("t.service.") and k.endswith(".count"))
        assert interval["t.agent.services_overflow"] == 4

    @pytest.mark.parametrize("max_culprits", [0, 1])
    def test_who_waited_behind_whom_is_sent_with_the_attribution(self, tree, max_culprits):
        nginx, cron = (os.stat(tree / name).st_ino for name in ("system.slice/nginx.service",
                                                                 "system.slice/cron.service"))
        probe = FakeProbe(per_cgroup=True)
        probe.pairs = {}

        def load():
            probe.blame(300, nginx, cron)
            probe.blame(200, nginx, nginx)
            probe.blame(100, cron, IDLE)
        clock = FakeClock(100.0, [(101, load), stop_at(106)])
        config = Config(frequency=5, prefix="t", max_culprits=max_culprits)
        sink, _ = run_daemon(clock, probe, config=config, cgroup_tree=CgroupTree(tree),
                             keep_unfinished=False)
        sent = {path: value for path, value in sink.intervals[0].items()
                if "behind" in path or "caused" in path}
        assert sent == ({} if not max_culprits else {
            "t.behind.idle_ms": 0.1, "t.behind.migrated_ms": 0.0, "t.behind.untracked_ms": 0.0,
            "t.service.nginx.behind_self_ms": 0.2, "t.service.nginx.behind_others_ms": 0.3,
            "t.service.nginx.caused_ms": 0.0, "t.service.nginx.behind.cron_ms": 0.3,
            "t.service.nginx.behind.other_ms": 0.2,
            "t.service.cron.behind_self_ms": 0.0, "t.service.cron.behind_others_ms": 0.1,
            "t.service.cron.caused_ms": 0.3, "t.service.cron.behind.idle_ms": 0.1,
            "t.service.cron.behind.other_ms": 0.0})

    def test_the_part_a_restart_carried_over_sends_no_culprits(self, tree, tmp_path):
        """The carried-over part has no culprit pairs: the interval it is added to sends no
        attribution series, rather than ones that do not add up to its wait."""
        nginx = os.stat(tree / "system.slice/nginx.service").st_ino
        config = Config(frequency=5, prefix="t", max_culprits=3, state_directory=tmp_path)
        first = FakeProbe(per_cgroup=True)
        first.pairs = {}
        clock = FakeClock(100.0, [(101, lambda: first.blame(40, nginx, IDLE)), stop_at(102)])
        run_daemon(clock, first, config=config, cgroup_tree=CgroupTree(tree))
        second = FakeProbe(per_cgroup=True)
        second.pairs = {}
        clock = FakeClock(102.5, [(103, lambda: second.blame(10, nginx, IDLE)),
                                  (108, lambda: second.blame(20, nginx, IDLE)), stop_at(111)])
        sink, _ = run_daemon(clock, second, config=config, cgroup_tree=CgroupTree(tree))
        assert [(i["@"], i["t.service.nginx.wait_ms"], i.get("t.behind.idle_ms"))
                for i in sink.intervals] == [(105, 0.05, None), (110, 0.02, 0.02)]

    def test_a_user_service_is_never_merged_into_a_system_one(self, tree):
        user = tree / "user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service"
        user.mkdir(parents=True)
        top = str(user.parent.parent)
        probe = FakeProbe(per_cgroup=True)

        def load():
            probe.add(100, n=30, cgroup=os.stat(tree / "system.slice/nginx.service").st_ino)
            probe.add(100, n=1000, cgroup=os.stat(user).st_ino)
        clock = FakeClock(100.0, [(101, load), stop_at(106)])
        owner = lambda path: 1000 if path.startswith(top) else 0  # noqa: E731
        sink, _ = run_daemon(clock, probe, cgroup_tree=CgroupTree(tree, owner=owner),
                             keep_unfinished=False)
        assert sink.intervals[0]["t.service.nginx.count"] == 30
        assert sink.intervals[0]["t.service.user-1000_nginx.count"] == 1000

    def test_a_removed_cgroup_is_forgotten_after_its_last_interval(self, tree):
        doomed = tree / "batch" / "job-1"
        cgroup = os.stat(doomed).st_ino
        probe = FakeProbe(per_cgroup=True)

        def remove():
            probe.add(20, n=3, cgroup=cgroup)
            doomed.rmdir()
        clock = FakeClock(100.0, [(101, lambda: probe.add(20, n=2, cgroup=cgroup)), (106, remove),
                                  (111, lambda: forgotten_by_then.update(probe.forgotten)),
                                  stop_at(116)])
        forgotten_by_then = set()
        sink, _ = run_daemon(clock, probe, cgroup_tree=CgroupTree(tree), keep_unfinished=False)
        # Its last samples are sent under its name; it is forgotten once it no longer counts.
        assert [i.get("t.service.batch.count") for i in sink.intervals] == [2, 3, None]
        assert forgotten_by_then == set() and probe.forgotten == {cgroup}


# -- what a restart carries, what a reload keeps, waits across wall-clock steps --

class LosingProbe(FakeProbe):
    """A fake probe whose ring of lost samples grows as a test says."""

    def __init__(self, per_cgroup=True):
        super().__init__(per_cgroup)
        self.lost = 0

    def read_snapshot(self):
        return replace(super().read_snapshot(), lost=self.lost)


def test_a_restart_adds_each_services_samples_and_the_lost_ones_of_both_runs(tmp_path):
    """The interval kept at a stop and the first one after the start are added, service by
    service and their lost samples too: neither part replaces the other."""
    (tmp_path / "tree/system.slice/web.service").mkdir(parents=True)
    web = os.stat(tmp_path / "tree/system.slice/web.service").st_ino
    config = Config(frequency=5, prefix="t", state_directory=tmp_path / "state")

    def run(start, stop, samples, lost):
        probe = LosingProbe()

        def load():
            probe.add(100, n=samples, cgroup=web)
            probe.lost += lost
        clock = FakeClock(start, [(start + 0.5, load), stop_at(stop)])
        return run_daemon(clock, probe, config=config, cgroup_tree=CgroupTree(tmp_path / "tree"))[0]
    assert run(100.0, 102.0, 40, 3).intervals == []  # kept for the next start
    sent = run(102.5, 107.0, 10, 2).intervals
    assert [(i["@"], i["t.count"], i["t.service.web.count"], i["t.agent.samples_lost"])
            for i in sent] == [(105, 50, 50, 5)]


def test_the_interval_kept_at_a_stop_holds_what_the_last_start_carried(tmp_path):
    """Two restarts within one interval: the file left by the second stop holds all three
    parts, service by service, with every lost sample."""
    (tmp_path / "tree/web.service").mkdir(parents=True)
    web = os.stat(tmp_path / "tree/web.service").st_ino
    config = Config(frequency=60, prefix="t", state_directory=tmp_path / "state")
    for start, samples, lost in ((100.0, 40, 3), (103.0, 10, 2), (106.0, 5, 1)):
        probe = LosingProbe()

        def load(probe=probe, samples=samples, lost=lost):
            probe.add(100, n=samples, cgroup=web)
            probe.lost += lost
        clock = FakeClock(start, [(start + 0.5, load), stop_at(start + 2)])
        assert run_daemon(clock, probe, config=config,
                          cgroup_tree=CgroupTree(tmp_path / "tree"))[0].intervals == []
    kept = carryover.take(tmp_path / "state", LAYOUT)
    assert (kept.boundary, kept.measured.host.count, kept.measured.lost) == (120, 55, 6)
    assert {c: n.count for c, n in kept.measured.cgroups.items()} == {web: 55}


class TestUnfinishedSlots:
    """The last slot of the histogram is kept; one past it is damage, set aside with one
    line at start (never an IndexError)."""

    @staticmethod
    def write(folder, slot):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / carryover.FILE_NAME).write_text(json.dumps({
            "format": carryover.FORMAT, "version": 1, "boot_id": carryover.this_boot().boot_id,
            "boundary": 105, "seconds": 3.0, "lost": 0, "host": [5000, {str(slot): 5}],
            "cgroups": {}}))

    def test_the_last_slot_is_kept(self, tmp_path):
        self.write(tmp_path, LAYOUT.slots - 1)
        taken = carryover.take(tmp_path, LAYOUT)
        assert taken.measured.host.slots[LAYOUT.overflow_slot] == 5

    def test_one_past_the_last_slot_is_set_aside_at_start_and_the_agent_measures_on(
            self, tmp_path, caplog):
        self.write(tmp_path, LAYOUT.slots)
        probe = FakeProbe()
        clock = FakeClock(102.0, [(103, lambda: probe.add(3, n=1)), stop_at(106)])
        with caplog.at_level(logging.INFO):
            sink, _ = run_daemon(clock, probe, state=tmp_path)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(105, 1)]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith(
            f"{tmp_path / carryover.FILE_NAME} is damaged ({LAYOUT.slots} is not a whole number ")
        assert errors[0].endswith(f"its interval is not sent; moved it to "
                                  f"{next(tmp_path.glob(carryover.FILE_NAME + '.damaged-*'))}")


class TestReloadOfRestartOnlySettings:
    """README, Configuration: "max_services between 0 and more, and tracepoints, change the
    compiled program and take effect at the next start; a reload says so and keeps the running
    setting." The other settings of the same reload are taken."""

    @pytest.mark.parametrize("changes, named", [
        ({"tracepoints": "classic"}, "tracepoints"),
        ({"max_services": 0}, "max_services"),
        ({"max_services": 0, "tracepoints": "raw"}, "max_services and tracepoints"),
    ])
    def test_a_reload_says_so_and_keeps_the_running_setting(self, changes, named, caplog):
        running = Config(frequency=5, prefix="t", max_services=20, tracepoints="auto")
        new = replace(running, frequency=10, **changes)
        clock = FakeClock(100.0, [(106, signal.SIGHUP), stop_at(121)])
        with caplog.at_level(logging.INFO):
            sink, daemon = run_daemon(clock, config=running, reload=lambda: new,
                                      keep_unfinished=False)
        assert f"changing {named} needs a restart: keeping the running setting" in caplog.text
        kept = replace(new, max_services=20, tracepoints="auto")
        assert daemon.config == kept and sink.configs == [kept]
        assert [i["@"] for i in sink.intervals] == [105, 110, 120]  # the new frequency is taken

    def test_a_new_number_of_services_above_zero_is_taken_at_once(self, caplog):
        running = Config(frequency=5, prefix="t", max_services=20)
        new = replace(running, max_services=3)
        clock = FakeClock(100.0, [(106, signal.SIGHUP), stop_at(111)])
        with caplog.at_level(logging.INFO):
            _, daemon = run_daemon(clock, config=running, reload=lambda: new,
                                   keep_unfinished=False)
        assert daemon.config.max_services == 3 and "needs a restart" not in caplog.text


def test_samples_that_waited_no_time_at_all_are_counted(tmp_path):
    """Samples of 0 ns (a wait under the clock's resolution), whose sum is 0. They
    count, for the host and for their service."""
    (tmp_path / "web.service").mkdir()
    web = os.stat(tmp_path / "web.service").st_ino
    probe = FakeProbe(per_cgroup=True)
    clock = FakeClock(100.0, [(101, lambda: probe.add(0, n=5, cgroup=web)), stop_at(106)])
    sink, _ = run_daemon(clock, probe, cgroup_tree=CgroupTree(tmp_path), keep_unfinished=False)
    assert (sink.intervals[0]["t.count"], sink.intervals[0]["t.service.web.count"]) == (5, 5)


class TestUnfinishedSampleBounds:
    """What one interval can hold: 2^32 samples a second, for its length rounded up."""

    @pytest.mark.parametrize("seconds, slots, kept", [
        (3.0, {"3": 3 << 32}, True),
        (3.0, {"3": 3 << 32, "4": 1}, False),  # one more than the bound, over two slots
        (2.5, {"3": 3 << 32}, True),           # 2.5 s may hold what 3 s may
        (2.5, {"3": (3 << 32) + 1}, False),
    ])
    def test_the_bound_is_kept_and_one_past_it_is_set_aside(self, tmp_path, seconds, slots,
                                                            kept):
        (tmp_path / carryover.FILE_NAME).write_text(json.dumps({
            "format": carryover.FORMAT, "version": 1, "boot_id": carryover.this_boot().boot_id,
            "boundary": 105, "seconds": seconds, "lost": 0, "host": [5000, slots],
            "cgroups": {}}))
        taken = carryover.take(tmp_path, LAYOUT)
        assert (taken is not None) == kept
        if kept:
            assert taken.measured.host.count == sum(slots.values())


class SleepingClock(MonotonicEventsClock):
    """A wait that, like sigtimedwait, is not ended by a wall clock step during it: the events
    within it happen on time and the wait goes on. A loop that reads the clock without ever
    waiting fails instead of spinning."""

    def __init__(self, start, events=()):
        super().__init__(start, events)
        self.reads = 0

    def time(self):
        self.reads += 1
        assert self.reads < 100000, "the daemon reads the clock without waiting"
        return super().time()

    def wait_for_signal(self, signals, seconds):
        self.waits.append(seconds)
        self.reads = 0
        end = self.mono + seconds
        while self.events and self.events[0][0] <= end:
            at, what = self.events.pop(0)
            self.advance(max(0.0, at - self.mono))
            if not callable(what):
                return what
            what()
        self.advance(end - self.mono)
        return None


def stepped(clock, seconds):
    def step():
        clock.wall += seconds
    return step


class TestWaitsAcrossWallClockSteps:
    def test_a_clock_back_for_a_moment_is_noticed_within_an_interval_of_its_return(self):
        clock = SleepingClock(100.0)
        clock.events = [(1012, stepped(clock, -600)), (1020, stepped(clock, 600)),
                        (1031, signal.SIGTERM)]
        sink, _ = run_daemon(clock, keep_unfinished=False)
        # Back at 112 (-488) and forward again at 120: 115 passed meanwhile, so 120 holds it.
        assert [i["@"] for i in sink.intervals] == [105, 110, 120, 125, 130]

    def test_a_step_back_of_almost_max_hold_is_waited_out(self):
        """The clock steps back while an interval is read: the next boundary, after the last
        stamp, lies MAX_HOLD_SECONDS and more away, and is waited for."""
        step = MAX_HOLD_SECONDS - 2
        clock = SleepingClock(100.0)
        probe = SteppingProbe(3, stepped(clock, -step))  # while the interval ending 110 is read
        clock.events = [(1012, lambda: probe.add(3, n=4)),
                        (1010 + step + 5 + 6, signal.SIGTERM)]
        sink, _ = run_daemon(clock, probe, keep_unfinished=False)
        assert [(i["@"], i["t.count"]) for i in sink.intervals] == [
            (105, 0), (110, 0), (115, 4), (120, 0)]


class SteppingProbe(FakeProbe):
    """A fake probe that runs ``what`` during its ``read``-th reading."""

    def __init__(self, read, what):
        super().__init__()
        self.reads, self.read, self.what = 0, read, what

    def read_snapshot(self):
        self.reads += 1
        if self.reads == self.read:
            self.what()
        return super().read_snapshot()


def test_an_interval_left_a_day_ahead_goes_into_the_first_interval_with_one_line(tmp_path,
                                                                                caplog):
    """A stop while the clock was a day ahead, a start once it was corrected: the samples are
    added to the first interval, and the line says why."""
    ahead = FakeProbe()
    day = 86400
    clock = FakeClock(100.0 + day, [(101 + day, lambda: ahead.add(3, n=6)), stop_at(102 + day)])
    run_daemon(clock, ahead, state=tmp_path)
    probe = FakeProbe()
    clock = FakeClock(102.0, [(103, lambda: probe.add(3, n=1)), stop_at(106)])
    with caplog.at_level(logging.INFO):
        sink, _ = run_daemon(clock, probe, state=tmp_path)
    assert [(i["@"], i["t.count"]) for i in sink.intervals] == [(105, 7)]
    assert (f"the interval left at the last stop ends at {105 + day}, {day + 3}s from the wall "
            f"clock now") in caplog.text


def test_a_delivery_thread_stuck_again_after_it_recovered_is_reported_again(caplog):
    clock = FakeClock(0.5, [(5, lambda: setattr(sink, "is_alive", False)),
                            (10, lambda: setattr(sink, "is_alive", True)),
                            (15, lambda: setattr(sink, "is_alive", False)), stop_at(20)])
    notifier = CountingNotifier(clock, watchdog_seconds=1)
    sink = RecordingSink()
    Daemon(FakeProbe(), sink, Config(frequency=60), notifier=notifier, clock=clock,
           keep_unfinished=False).run()
    assert caplog.text.count("the delivery thread is dead or stuck") == 2
    assert any(10 <= ping < 15 for ping in notifier.pings)  # pinged again while it ran
