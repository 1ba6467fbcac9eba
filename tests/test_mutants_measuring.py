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
from gsender_bcc.cgroups import CgroupTree, PressureReader
from gsender_bcc.config import Config
from gsender_bcc.histogram import IntervalStats, slot_of
from gsender_bcc.metrics import ServiceStats, to_datapoints
from gsender_bcc.sink import encode, message_builder
from test_daemon import (LAYOUT, FakeClock, FakeProbe, run_daemon, signal_mask_restored,  # noqa: F401
                         stop_at)

STATS = IntervalStats(5.0, 7, 0, 3.0, ((50, 2.5), (90, 3.5), (99, 5.0)), 5.0, ((0, 1.4),), 21000)


@pytest.mark.parametrize("name, value", [("web 01", "web_01"), ("a;b", "a_b"), ("~x", "_x")])
def test_a_tagged_service_name_is_made_a_valid_tag_value_on_the_wire(name, value):
    points = to_datapoints(STATS, Config(tags=True, bucket_series=False), 10,
                           [ServiceStats(name, STATS, {"pressure": 1.5})])
    wire = encode(message_builder(), [p for p in points if p.path.startswith("cpu-lat.service.")])
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
