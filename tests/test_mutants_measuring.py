"""Plausible bugs in measuring and naming that passed the other fast tests (issue 26, part 2).

Each test asserts a promise through public behaviour: the datapoints sent, the figures read, what
a restart carries, what a reload keeps.
"""

import json
import logging
import os
import signal
from dataclasses import replace

import pytest

from gsender_bcc import carryover
from gsender_bcc.cgroups import CgroupTree, PressureReader, service_name, user_service_name
from gsender_bcc.config import Config
from gsender_bcc.histogram import IntervalStats, slot_of
from gsender_bcc.metrics import Interval, ServiceStats, to_datapoints
from gsender_bcc.sink import encode, message_builder
from test_daemon import (LAYOUT, CountingNotifier, FakeClock, FakeProbe, MonotonicEventsClock,
                         RecordingSink, run_daemon, signal_mask_restored, stop_at)  # noqa: F401
from gsender_bcc.daemon import MAX_HOLD_SECONDS, Daemon

STATS = IntervalStats(5.0, 7, 0, 3.0, ((50, 2.5), (90, 3.5), (99, 5.0)), 5.0, ((0, 1.4),), 21000)


@pytest.mark.parametrize("name, value", [("web 01", "web_01"), ("a;b", "a_b"), ("~x", "_x")])
def test_a_tagged_service_name_is_made_a_valid_tag_value_on_the_wire(name, value):
    points = to_datapoints(STATS, Config(tags=True, bucket_series=False),
                           [ServiceStats(name, STATS, {"pressure": 1.5})])
    wire = encode(message_builder(),
                  Interval(10, tuple(p for p in points if p.path.startswith("cpu-lat.service."))))
    lines = wire.decode().splitlines()
    assert len(lines) == 8 and all(f";service={value} " in line for line in lines)


class TestPressureOfServicesWithSeveralDirectories:
    """Two cgroups named ``web`` (one in each of two slices): the worst pressure of the two,
    never their sum, and the throttling summed; a share of the interval is at most 100 %."""

    @pytest.fixture
    def reader_and_write(self, tmp_path):
        folders = [tmp_path / "a.slice/web.service", tmp_path / "b.slice/web.service"]
        for folder in folders:
            folder.mkdir(parents=True)
        tree = CgroupTree(tmp_path)
        tree.walk()
        assert sorted(tree.directories("web")) == folders

        def write(folder, pressure_us, throttled_us):
            (folder / "cpu.pressure").write_text(
                f"some avg10=0.00 avg60=0.00 avg300=0.00 total={pressure_us}\n"
                f"full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
            (folder / "cpu.stat").write_text(f"usage_usec 9\nthrottled_usec {throttled_us}\n")
        return PressureReader(tree), folders, write

    def test_the_worst_pressure_and_the_summed_throttling(self, reader_and_write):
        reader, (a, b), write = reader_and_write
        write(a, 1_000_000, 20_000)
        write(b, 0, 1_000)
        assert reader.read(["web"], 5.0) == {}
        write(a, 1_500_000, 65_000)  # 0.5 s of the 5 s: 10 %
        write(b, 250_000, 6_000)     # 5 %
        assert reader.read(["web"], 5.0) == {"web": {"pressure": 10.0, "throttled_ms": 50.0}}

    def test_a_counter_that_went_back_gives_no_figure_until_the_next_reading(self,
                                                                            reader_and_write):
        """A service's directory replaced by a new one (its counters start again): that
        interval has no pressure figure, never a negative one; the next has one again."""
        reader, (a, b), write = reader_and_write
        write(a, 1_000_000, 0)
        write(b, 0, 0)
        reader.read(["web"], 5.0)
        write(a, 500_000, 0)
        assert "pressure" not in reader.read(["web"], 5.0).get("web", {})
        write(a, 750_000, 0)
        assert reader.read(["web"], 5.0)["web"]["pressure"] == 5.0

    def test_pressure_is_at_most_100_percent(self, reader_and_write):
        reader, (a, b), write = reader_and_write
        write(a, 0, 0)
        write(b, 0, 0)
        reader.read(["web"], 5.0)
        write(a, 6_000_000, 0)  # 6 s of stall in an interval measured as 5 s (clock skew)
        assert reader.read(["web"], 5.0)["web"]["pressure"] == 100.0


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


def test_slot_of_the_last_slot_is_the_overflow():  # the layout the tests above rely on
    assert slot_of(LAYOUT, 1 << LAYOUT.log2_max) == LAYOUT.overflow_slot == LAYOUT.slots - 1


@pytest.mark.parametrize("path, name", [("/system.slice/.service", "_service"),
                                        ("/.service/worker", "_service")])
def test_a_directory_named_only_dot_service_keeps_a_name(path, name):
    assert service_name(path) == name
    assert user_service_name(1000, path) == f"user-1000_{name}"


def test_samples_that_waited_no_time_at_all_are_counted(tmp_path):
    """Samples of 0 ns, whose sum is 0, count for the host and for their service."""
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
