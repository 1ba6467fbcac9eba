"""A restart leaves no hole: the unfinished interval is kept and sent at its own boundary."""

import json
import logging
import os
import re
from array import array

import pytest

from gsender_bcc import carryover
from gsender_bcc.histogram import Counts, Layout
from gsender_bcc.readings import Measured
from test_delivery import agent_args, agents, assert_carbon_holds_exactly  # noqa: F401 (fixture)
from test_delivery import wall_sleep_until_fraction

LAYOUT = Layout(sub_bits=3, log2_max=32)
FREQUENCY = 5
PREFIX = "restart.cpu-lat"


def counts(**slots):
    values = array("q", bytes(8 * LAYOUT.slots))
    for slot, n in slots.items():
        values[int(slot[1:])] = n
    return Counts(values, sum(n * 1000 for n in slots.values()))


MEASURED = Measured(3.25, counts(s3=10, s20=2), 1, {4242: counts(s3=10, s20=2)})


class TestUnfinishedFile:
    def test_round_trip(self, tmp_path):
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        assert carryover.take(tmp_path, LAYOUT) == carryover.Unfinished(1800000005, MEASURED)
        assert list(tmp_path.iterdir()) == []

    def test_nothing_there_is_nothing(self, tmp_path):
        assert carryover.take(tmp_path, LAYOUT) is None

    def test_a_link_planted_as_the_temporary_file_is_not_followed(self, tmp_path):
        victim = tmp_path / "victim"
        victim.write_text("precious")
        (tmp_path / (carryover.FILE_NAME + ".tmp")).symlink_to(victim)
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        assert victim.read_text() == "precious"
        assert carryover.take(tmp_path, LAYOUT) == carryover.Unfinished(1800000005, MEASURED)

    def test_nothing_is_taken_from_a_directory_others_can_write(self, tmp_path, caplog):
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        tmp_path.chmod(0o777)
        try:
            assert carryover.take(tmp_path, LAYOUT) is None
        finally:
            tmp_path.chmod(0o700)
        assert "writable by group or others" in caplog.text
        assert not (tmp_path / carryover.FILE_NAME).exists()  # set aside, never sent

    def test_cgroup_ids_are_forgotten_after_a_reboot(self, tmp_path):
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        path = tmp_path / carryover.FILE_NAME
        document = json.loads(path.read_text())
        document["boot_id"] = "another boot"
        path.write_text(json.dumps(document))
        taken = carryover.take(tmp_path, LAYOUT)
        assert taken.measured.cgroups == {} and taken.measured.host == MEASURED.host

    def test_cgroups_are_kept_within_one_boot_where_the_boot_id_is_hidden(self, tmp_path,
                                                                          monkeypatch):
        monkeypatch.setattr(carryover, "BOOT_ID_PATH", tmp_path / "hidden" / "boot_id")
        assert carryover.this_boot().boot_id == ""  # as under the unit's ProcSubset=pid
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        assert carryover.take(tmp_path, LAYOUT).measured.cgroups == MEASURED.cgroups

    @pytest.mark.parametrize("boot_id", ["", "id-of-the-old-boot"])
    def test_after_a_reboot_with_the_boot_id_hidden_no_cgroup_is_carried(self, tmp_path,
                                                                        boot_id):
        """Old files (only a boot id, empty under the unit) and files of another boot carry
        no cgroup ids: the same ids name other cgroups now. The host keeps every sample."""
        now = carryover.Boot("", uptime=40.0, wall=1800000100.0)
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED),
                       boot=carryover.Boot(boot_id, uptime=3600.0, wall=1800000003.0))
        taken = carryover.take(tmp_path, LAYOUT, boot=now)
        assert taken.measured.cgroups == {} and taken.measured.host == MEASURED.host
        path = tmp_path / carryover.FILE_NAME
        carryover.save(tmp_path, carryover.Unfinished(1800000005, MEASURED))
        document = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in document.items()
                                    if k not in ("uptime", "saved_at")} | {"boot_id": ""}))
        assert carryover.take(tmp_path, LAYOUT, boot=now).measured.cgroups == {}

    @pytest.mark.parametrize("saved, now, same", [
        (("a", 10.0, 110.0), ("a", 5.0, 90.0), True),        # the kernel's ids decide
        (("a", 10.0, 110.0), ("b", 50.0, 150.0), False),
        (("", 10.0, 110.0), ("", 50.0, 150.0), True),        # booted at 100 both times
        (("", 10.0, 110.0), ("", 51.5, 150.0), True),        # within the tolerance
        (("", 10.0, 110.0), ("", 53.0, 150.0), False),       # booted 3 s apart
        (("", 10.0, 110.0), ("", 5.0, 105.0), False),        # up for less time than then
        (("a", 10.0, 110.0), ("", 50.0, 150.0), True),       # one id hidden: the clocks decide
        (("", None, 0.0), ("", 50.0, 150.0), False),         # unknown: never the same
        (("", 10.0, 110.0), ("", 50.0, 86550.0), False),     # a day's step reads as a reboot
    ])
    def test_same_boot(self, saved, now, same):
        assert carryover.same_boot(carryover.Boot(*saved), carryover.Boot(*now)) is same

    @staticmethod
    def document(**changes):
        document = {"format": carryover.FORMAT, "version": 1, "boot_id": carryover.this_boot().boot_id,
                    "boundary": 1800000005, "seconds": 3.0, "lost": 0,
                    "host": [5000, {"3": 5}], "cgroups": {}}
        document.update(changes)
        return json.dumps(document)

    @pytest.mark.parametrize("text, reason", [
        ('{"format": ' + "[" * 100000, "recursion"),
        ("[" * 100000, "recursion"),
        ("{", "Expecting property name"),
        ('"just a string"', "not a gsender-bcc unfinished interval"),
        (document.__func__(seconds="3"), "its length in seconds is missing or out of range"),
        (document.__func__(seconds=0), "its length in seconds is missing or out of range"),
        (document.__func__(seconds=-1), "its length in seconds is missing or out of range"),
        (document.__func__(seconds=1e9), "its length in seconds is missing or out of range"),
        (document.__func__(host=[5000, {"3": -5}]), "-5 is not a whole number from 0"),
        (document.__func__(host=[5000, {"3": 5.5}]), "5.5 is not a whole number from 0"),
        (document.__func__(host=[5000, {"999": 5}]), "999 is not a whole number from 0"),
        (document.__func__(host=[5000, {"9" * 5000: 5}]), "'999999999999999999999999999999' is "
                                                          "not a whole number from 0 to 240"),
        (document.__func__(host=[5000, {"\u00b2": 5}]), "'\u00b2' is not a whole number"),
        (document.__func__(host=[5000, {"3\n": 5}]), "'3\\n' is not a whole number"),
        # What one interval (3 s here) cannot hold: a slot at 2^63-1 would overflow the
        # histogram at the next sample, and claims samples nobody measured.
        (document.__func__(host=[5000, {"3": 2 ** 63 - 1}]), "9223372036854775807 is not a whole "
                                                             "number from 0 to 12884901888"),
        (document.__func__(host=[5000, {"3": 2 ** 33, "4": 2 ** 33}]),
         "17179869184 samples are more than 12884901888 in one interval"),
        (document.__func__(host=[2 ** 62, {"3": 5}]), "is not a whole number from 0 to "
                                                      "4611686018427387903"),
        (document.__func__(lost=2 ** 40), "1099511627776 is not a whole number from 0 to "
                                          "12884901888"),
        (document.__func__(cgroups={"7": [5000, {"3": 6}]}), "its cgroups hold samples its host "
                                                             "histogram does not"),
        (document.__func__(cgroups={"7": [5001, {"3": 5}]}), "its cgroups hold samples its host "
                                                             "histogram does not"),
        (document.__func__(host=[5000]), "a histogram is not"),
        (document.__func__(boundary="soon"), "'soon' is not a whole number from 1"),
        (document.__func__(boundary=2 ** 70), "is not a whole number from 1"),
        (document.__func__(lost=True), "True is not a whole number"),
        (document.__func__(cgroups=[]), "its cgroups are not a mapping"),
        (document.__func__(cgroups={"x": [0, {}]}), "'x' is not a whole number"),
        (document.__func__(version=2), "not a gsender-bcc unfinished interval"),
    ], ids=lambda value: str(value)[:30])
    def test_damage_is_set_aside_with_one_line(self, tmp_path, caplog, text, reason):
        (tmp_path / carryover.FILE_NAME).write_text(text)
        with caplog.at_level(logging.INFO):
            assert carryover.take(tmp_path, LAYOUT) is None
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        message = caplog.records[0].getMessage()
        assert message.startswith(f"{tmp_path / carryover.FILE_NAME} is damaged (")
        assert reason in message and "its interval is not sent; moved it to" in message
        aside = list(tmp_path.glob(carryover.FILE_NAME + ".damaged-*"))
        assert [p.read_text() for p in aside] == [text]

    @pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
    def test_what_is_not_a_regular_file_is_set_aside(self, tmp_path, caplog, kind):
        path = tmp_path / carryover.FILE_NAME
        target = tmp_path / "elsewhere.json"
        target.write_text(self.document())
        {"directory": path.mkdir, "fifo": lambda: os.mkfifo(path),
         "symlink": lambda: path.symlink_to(target)}[kind]()
        with caplog.at_level(logging.INFO):
            assert carryover.take(tmp_path, LAYOUT) is None
        assert len(caplog.records) == 1
        assert "is damaged (not a regular file of a sane size)" in caplog.text
        assert not path.exists() and not path.is_symlink()


@pytest.fixture
def steady_load(cgroup_factory):
    """A process waking every 2 ms in a service of its own, ``steady``: a stream of samples
    that the rest of the machine's activity does not change."""
    cgroup_factory("steady.service").start("import time\nwhile True: time.sleep(0.002)")
    return "steady"


def interval_seconds(stderr):
    """The seconds of measurement behind each stamp, as the agent logged them: its summary of
    each interval, and the part kept at the last stop when it is sent alone."""
    seconds = {int(stamp): float(length) for stamp, length in re.findall(
        r"interval ending (\d+): \d+ samples in (\d+\.\d)s", stderr)}
    seconds.update({int(stamp): float(length) for length, stamp in re.findall(
        r"sending the (\d+\.\d)s measured before the restart as the interval ending (\d+)$",
        stderr, re.M)})
    return seconds


@pytest.mark.bpf
def test_restarts_early_late_and_very_late_leave_no_missing_boundary(carbon_factory, agents,
                                                                     tmp_path, steady_load):
    """However long each restart takes: every boundary is sent once, what the stopping agent
    kept is in the interval of its boundary, and each interval's count matches the seconds it
    measured (the time the agent was down is not measured, docs/design.md)."""
    carbon = carbon_factory().start()
    args = agent_args(carbon.port, tmp_path / "state", frequency=FREQUENCY, prefix=PREFIX)
    agent = agents(args, "first")
    runs, printed, restarts = [agent], [], []
    for fraction in (0.1, 0.7, 0.95):
        agent.wait_intervals(3, timeout=30)  # a partial first interval, then two whole ones
        stopped_at = wall_sleep_until_fraction(FREQUENCY, fraction)
        assert agent.stop() == 0
        printed += agent.lines()
        kept = re.search(r"the unfinished interval \((\d+\.\d)s, (\d+) samples\) is kept for the "
                         r"next start", agent.stderr())
        assert kept, agent.stderr()
        agent = agents(args, f"after-{fraction}")
        runs.append(agent)
        boundary = (int(stopped_at) // FREQUENCY + 1) * FREQUENCY
        restarts.append((fraction, boundary, float(kept.group(1)), agent))
    agent.wait_intervals(3, timeout=30)
    assert agent.stop() == 0
    printed += agent.lines()

    host = {stamp: value for path, value, stamp in printed if path == PREFIX + ".count"}
    stamps = sorted(host)
    assert stamps == list(range(stamps[0], stamps[-1] + FREQUENCY, FREQUENCY))
    assert_carbon_holds_exactly(carbon, printed)
    stored = [stamp for stamp, _ in carbon.series()[PREFIX + ".count"]]
    assert stored == stamps

    # Plausible counts: those of the steady service, which other activity does not disturb,
    # per second of measurement behind each stamp.
    steady = f"{PREFIX}.service.{steady_load}.count"
    count = {stamp: value for path, value, stamp in printed if path == steady}
    assert sorted(count) == stamps
    seconds = {}
    for run in runs:
        seconds.update(interval_seconds(run.stderr()))
    assert set(seconds) >= set(stamps)
    rate = {stamp: count[stamp] / seconds[stamp] for stamp in stamps}

    boundaries = [boundary for _, boundary, _, _ in restarts]
    touched = {stamps[0]} | set(boundaries) | {b + FREQUENCY for b in boundaries}
    whole = sorted(rate[s] for s in stamps if s not in touched)
    typical = whole[len(whole) // 2]
    report = [f"whole intervals: {len(whole)}, median rate of {steady} {typical:.0f}/s "
              f"({whole[0]:.0f}..{whole[-1]:.0f})"]
    for fraction, boundary, kept_seconds, after in restarts:
        log = after.stderr()
        merged = re.search(rf"adding the (\d+\.\d)s measured before the restart to the interval "
                           rf"ending {boundary}$", log, re.M)
        alone = re.search(rf"sending the (\d+\.\d)s measured before the restart as the interval "
                          rf"ending {boundary}$", log, re.M)
        assert (merged is None) != (alone is None), log
        assert float((merged or alone).group(1)) == kept_seconds
        assert seconds[boundary] >= kept_seconds  # the kept part is in the interval sent
        ratio, following = rate[boundary] / typical, rate[boundary + FREQUENCY] / typical
        report.append(f"restart at {fraction:.2f}: {kept_seconds}s kept, "
                      f"{'merged into' if merged else 'sent alone as'} {boundary}: "
                      f"{count[boundary]:g} in {seconds[boundary]}s ({ratio:.2f} of the median "
                      f"rate), next {count[boundary + FREQUENCY]:g} in "
                      f"{seconds[boundary + FREQUENCY]}s ({following:.2f})")
        assert 0.6 < ratio < 1.4 and 0.6 < following < 1.4, "\n".join(report)
    print("\n" + "\n".join(report))
