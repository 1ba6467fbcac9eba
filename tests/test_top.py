"""``gsender-bcc --top``: the pure screen layout, and the real view in a tmux pane."""

import itertools
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import agent_program_count, assert_unloaded, wait_for_programs_of
from gsender_bcc import cli, top
from gsender_bcc.blame import Blame
from gsender_bcc.histogram import Counts, IntervalStats, Layout
from gsender_bcc.readings import Snapshot
from gsender_bcc.metrics import ServiceStats, short_hostname
from gsender_bcc.top import format_duration, line_text, render

REPO = Path(__file__).resolve().parent.parent


def stats(count, mean_us, p99_us, seconds=1.0, rates=(), percentiles=None):
    return IntervalStats(seconds, count, 0, mean_us,
                         percentiles or ((50, mean_us), (90, p99_us), (99, p99_us)), p99_us,
                         tuple(rates), round(count * (mean_us or 0) * 1000))


def service(name, count, mean_us, p99_us, pressure=None, seconds=1.0):
    return ServiceStats(name, stats(count, mean_us, p99_us, seconds),
                        {} if pressure is None else {"pressure": pressure, "throttled_ms": 0.0})


def texts(lines):
    return [line_text(line) for line in lines]


# -- the pure layout --

SMALL_HOST = stats(136, 3.3, 7.5, seconds=2.0, percentiles=((50, 2.5), (90, 5.5), (99, 7.5)),
                   rates=((0, 0.0), (1, 8.0), (2, 40.0), (4, 20.0)))
SMALL_SERVICES = [service("web", 200, 50.0, 120.0, pressure=12.5, seconds=2.0),
                  service("cron", 2, 10.0, 12.0, pressure=0.0, seconds=2.0),
                  service("db", 40, 1500.0, 6000.0, seconds=2.0)]


def test_small_example_exactly():
    lines = render(SMALL_HOST, SMALL_SERVICES, 72, 16, "wait", hostname="web-01", period=1)
    assert texts(lines) == [
        "gsender-bcc --top  web-01  every 1s  sort: total wait   s: sort  q: quit",
        "samples 68.0/s  mean 3.3us  p50 2.5us  p90 5.5us  p99 7.5us  max 7.5us",
        "",
        "latency us samples/s",
        "    0 -> 1       0.0 |",
        "    1 -> 2       8.0 |" + "#" * 10,
        "    2 -> 4      40.0 |" + "#" * 50,
        "    4 -> 8      20.0 |" + "#" * 25,
        "",
        "SERVICE                       COUNT/S WAIT ms/s    MEAN     P99 PRESSURE",
        "db                               20.0      30.0  1.50ms  6.00ms        -",
        "web                               100       5.0  50.0us   120us    12.5%",
        "cron                              1.0       0.0  10.0us  12.0us     0.0%",
    ]
    # Colour hints: the title bar, the bars, the sorted column, a high pressure.
    assert lines[0] == ((texts(lines)[0], "title"),)
    assert lines[6][1] == ("#" * 50, "bar")
    assert ("WAIT ms/s".rjust(10), "sorted") in lines[9]
    assert ("  COUNT/S", "header") in lines[9]
    assert ("    12.5%", "warn") in lines[11]
    assert ("     0.0%", "") in lines[12]


@pytest.mark.parametrize("sort, order, title", [
    ("wait", ["db", "web", "cron"], "sort: total wait"),
    ("p99", ["db", "web", "cron"], "sort: p99"),
    ("rate", ["web", "db", "cron"], "sort: count/s"),
    ("name", ["cron", "db", "web"], "sort: name"),
    ("caused", ["cron", "db", "web"], "sort: caused"),  # not measured: by name
])
def test_sort_orders(sort, order, title):
    lines = texts(render(SMALL_HOST, SMALL_SERVICES, 72, 16, sort, hostname="web-01"))
    assert title in lines[0]
    assert [line.split()[0] for line in lines[10:13]] == order
    header = render(SMALL_HOST, SMALL_SERVICES, 72, 16, sort)[9]
    assert [text.strip() for text, hint in header if hint == "sorted"] == {
        "wait": ["WAIT ms/s"], "p99": ["P99"], "rate": ["COUNT/S"], "name": ["SERVICE"],
        "caused": []}[sort]  # no CAUSED column without attribution


def test_sort_cycle_covers_every_order():
    assert top.SORT_KEYS == ("wait", "caused", "p99", "rate", "name")
    assert top.sort_keys(True) == top.SORT_KEYS
    assert top.sort_keys(False) == ("wait", "p99", "rate", "name")
    with pytest.raises(ValueError, match="unknown sort order 'size'"):
        render(SMALL_HOST, SMALL_SERVICES, 80, 24, "size")


# A busy host: 15 buckets up to 16 ms, twelve services.
BUSY_HOST = stats(2851, 80.5, 992.0, percentiles=((50, 34.0), (90, 42.0), (99, 992.0)),
                  rates=[(0, 0.0), (1, 12.0), (2, 150.0), (4, 420.0), (8, 610.0), (16, 900.0),
                         (32, 500.0), (64, 150.0), (128, 50.0), (256, 30.0), (512, 20.0),
                         (1024, 8.0), (2048, 1.0), (4096, 0.0), (8192, 0.0), (16384, 1.0)])
BUSY_SERVICES = [service(f"unit-{i:02}", 10 + i, 20.0 + i, 60.0) for i in range(10)] + [
    service("gsender-top-test", 1800, 550.0, 3968.0, pressure=99.0),
    service("a-service-with-a-very-long-name-indeed-longer-than-forty.scope", 5, 1.0, 2.0)]


def test_80x24_fits_with_the_histogram_and_the_top_services():
    lines = render(BUSY_HOST, BUSY_SERVICES, 80, 24, "wait", hostname="web-01")
    shown = texts(lines)
    assert len(lines) == 24
    assert max(map(len, shown)) == 80
    assert shown[0] == ("gsender-bcc --top  web-01  every 1s  sort: total wait"
                        "           s: sort  q: quit")
    assert shown[1] == "samples 2851/s  mean 80.5us  p50 34.0us  p90 42.0us  p99 992us  max 992us"
    # 16 buckets do not fit beside six service rows: the lowest five are merged into one.
    assert shown[2:5] == ["", "latency us     samples/s",
                          "    0 -> 16         1192 |" + "#" * 54]
    assert shown[5] == "   16 -> 32          900 |" + "#" * 41
    assert shown[6] == "   32 -> 64          500 |" + "#" * 23
    assert shown[13:16] == [" 4096 -> 8192        0.0 |", " 8192 -> 16384       0.0 |",
                            "16384 -> 32768       1.0 |#"]
    assert [lines[i][1] for i in (10, 11, 12, 15)] == [
        ("#", "bar"), ("#", "bar-warn"), ("#", "bar-warn"), ("#", "bar-alert")]
    assert shown[16] == ""
    assert shown[17] == "SERVICE                               COUNT/S WAIT ms/s    MEAN     P99 PRESSURE"
    assert shown[18] == "gsender-top-test                         1800     990.0   550us  3.97ms    99.0%"
    assert shown[19] == "unit-09                                  19.0       0.6  29.0us  60.0us        -"
    assert [line.split()[0] for line in shown[20:23]] == ["unit-08", "unit-07", "unit-06"]
    assert shown[23] == "+7 more"


def test_the_histogram_is_whole_where_there_is_room():
    shown = texts(render(BUSY_HOST, BUSY_SERVICES, 120, 40, "name"))
    buckets = [line for line in shown if " -> " in line]
    assert [line.split()[0] for line in buckets] == [str(low) for low, _ in BUSY_HOST.log2_rates]
    assert buckets[5] == "   16 -> 32          900 |" + "#" * 94  # the biggest fills the width
    assert "+" not in shown[-1]  # all services shown
    assert shown[-12].startswith("a-service-with-a-very-long-name-indeed~  ")
    assert [line.split()[0] for line in shown[-11:]] == ["gsender-top-test"] + [
        f"unit-{i:02}" for i in range(10)]


def blamed(row, caused_ms, culprits, rest_ms=0.0):
    """``row`` with its Blame: it caused ``caused_ms`` ms and waited behind ``culprits``,
    (name, ms) each, and ``rest_ms`` others (the figures are in ms per interval)."""
    ms = 1_000_000
    wait = row.stats.wait_ns
    return ServiceStats(row.name, row.stats, row.figures, Blame(
        0, wait, round(caused_ms * ms), tuple((n, round(v * ms)) for n, v in culprits),
        round(rest_ms * ms)))


BLAMED_SERVICES = [blamed(SMALL_SERVICES[0], 10.0, (("db", 6.0), ("idle", 2.0)), 2.0),
                   blamed(SMALL_SERVICES[1], 240.0, ()),
                   blamed(SMALL_SERVICES[2], 4.0, (("cron", 58.0),), 2.0)]


def test_with_attribution_a_caused_column_each_first_culprit_and_the_first_s_culprits():
    lines = render(SMALL_HOST, BLAMED_SERVICES, 84, 16, "wait", hostname="web-01")
    assert texts(lines)[9:] == [
        "SERVICE         COUNT/S WAIT ms/s CAUSED ms/s    MEAN     P99 PRESSURE   BEHIND MOST",
        "db                 20.0      30.0         2.0  1.50ms  6.00ms        -  cron",
        "web                 100       5.0         5.0  50.0us   120us    12.5%  db",
        "cron                1.0       0.0       120.0  10.0us  12.0us     0.0%  -",
        "db behind: cron 29.0 ms/s, other 1.0 ms/s",
    ]
    assert lines[-1][0] == ("db behind: ", "header")


def test_sorted_by_caused_the_causer_comes_first_with_its_culprits():
    lines = render(SMALL_HOST, BLAMED_SERVICES, 84, 16, "caused", hostname="web-01")
    shown = texts(lines)
    assert "sort: caused" in shown[0]
    assert [line.split()[0] for line in shown[10:13]] == ["cron", "web", "db"]
    assert ("CAUSED ms/s".rjust(12), "sorted") in lines[9]
    assert shown[13] == "cron behind: other 0.0 ms/s"  # it waited behind no one


def test_the_culprits_line_keeps_its_row_on_a_short_screen():
    shown = texts(render(BUSY_HOST, [blamed(s, 1.0, (("x", 1.0),)) for s in BUSY_SERVICES],
                         80, 24, "wait"))
    assert len(shown) == 24
    assert shown[-8:-2] == [
        "SERVICE     COUNT/S WAIT ms/s CAUSED ms/s    MEAN     P99 PRESSURE   BEHIND MOST",
        "gsender-~      1800     990.0         1.0   550us  3.97ms    99.0%  x",
        "unit-09        19.0       0.6         1.0  29.0us  60.0us        -  x",
        "unit-08        18.0       0.5         1.0  28.0us  60.0us        -  x",
        "unit-07        17.0       0.5         1.0  27.0us  60.0us        -  x",
        "unit-06        16.0       0.4         1.0  26.0us  60.0us        -  x"]
    assert shown[-2:] == ["+7 more", "gsender-top-test behind: x 1.0 ms/s"]


@pytest.mark.parametrize("host, services", [
    (BUSY_HOST, BUSY_SERVICES), (SMALL_HOST, SMALL_SERVICES), (SMALL_HOST, BLAMED_SERVICES),
    (None, None), (None, []),
    (stats(0, None, None), []), (SMALL_HOST, None), (BUSY_HOST, [])])
def test_any_size_degrades_without_error(host, services):
    for width, height in itertools.product(range(0, 90, 3), range(0, 30)):
        for sort in top.SORT_KEYS:
            lines = render(host, services, width, height, sort, hostname="web-01")
            assert len(lines) <= height
            assert all(len(line_text(line)) <= width for line in lines)


def test_narrow_terminal_wraps_the_host_figures_to_keep_p99():
    shown = texts(render(BUSY_HOST, BUSY_SERVICES, 30, 10, "wait", hostname="web-01"))
    assert shown[:4] == ["gsender-bcc --top  web-01  eve", "samples 2851/s  mean 80.5us",
                         "p50 34.0us  p90 42.0us", "p99 992us  max 992us"]


def test_before_the_first_interval_and_without_samples_or_breakdown():
    assert texts(render(None, None, 80, 24)) == [
        "gsender-bcc --top  every 1s  sort: total wait" + " " * 19 + "s: sort  q: quit",
        "measuring the first interval...", "",
        "per-service breakdown off (no cgroup v2, or max_services = 0)"]
    assert texts(render(stats(0, None, None, seconds=2.0), [], 80, 24, period=2))[1:] == [
        "no samples in the last 2.0s", "",
        "SERVICE                               COUNT/S WAIT ms/s    MEAN     P99 PRESSURE",
        "no service ran in the last interval"]


def test_lost_samples_are_shown_as_a_warning():
    lost = IntervalStats(1.0, 10, 3, 5.0, ((50, 5.5), (90, 5.5), (99, 5.5)), 5.5, ((0, 0.0),),
                         50000)
    lines = render(lost, None, 80, 24)
    assert line_text(lines[1]).endswith("max 5.5us  lost 3")
    assert lines[1][-1] == ("lost 3", "warn")


@pytest.mark.parametrize("us, text", [
    (None, "-"), (0.5, "0.5us"), (34.0, "34.0us"), (99.96, "100us"), (992.0, "992us"),
    (999.6, "1.00ms"), (3968.0, "3.97ms"), (12345.0, "12.3ms"), (123456.0, "123ms"),
    (2.5e6, "2.50s"), (4.3e9, "4300s")])
def test_format_duration(us, text):
    assert format_duration(us) == text


# -- the loop's parts, without BPF --

class FakeProbe:
    """Cumulative counters that grow by one sample per reading; records its closing."""

    layout = Layout(sub_bits=3, log2_max=32)

    def __init__(self, config=None):
        self.readings = 0
        self.closed = False
        self.settings = SimpleNamespace(per_cgroup=False)

    def read_snapshot(self):
        self.readings += 1
        slots = array("q", bytes(8 * self.layout.slots))
        slots[5] = self.readings
        return Snapshot(Counts(slots, 5500 * self.readings), 0, {})

    def forget(self, cgroups):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


@pytest.fixture
def fake_terminal(monkeypatch):
    made = []

    def probe(config):
        made.append(FakeProbe(config))
        return made[-1]
    monkeypatch.setattr("gsender_bcc.probe.Probe", probe)
    monkeypatch.setattr(top, "_has_terminal", lambda: True)
    return made


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP, KeyboardInterrupt])
def test_stops_detach_and_return_0(fake_terminal, monkeypatch, ending):
    def session(sampler, period, hostname):
        if ending is KeyboardInterrupt:
            raise KeyboardInterrupt
        os.kill(os.getpid(), ending)
        time.sleep(5)  # the handler interrupts this
        pytest.fail("the signal did not stop the view")
    monkeypatch.setattr(top, "_session", session)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    assert top.run(None) == 0
    assert fake_terminal[0].closed
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_error_in_the_view_still_detaches(fake_terminal, monkeypatch):
    def session(sampler, period, hostname):
        raise RuntimeError("drawing failed")
    monkeypatch.setattr(top, "_session", session)
    with pytest.raises(RuntimeError, match="drawing failed"):
        top.run(None)
    assert fake_terminal[0].closed


def test_without_a_terminal_it_says_so_and_exits_64(tmp_path, capsys):
    config = tmp_path / "gsender.conf"
    config.write_text("[default]\n")
    assert cli.main(["--top", "--config", str(config)]) == 64
    assert capsys.readouterr().err.endswith(
        "gsender-bcc: --top needs a terminal on its standard input and output\n")


@pytest.mark.parametrize("flags, period", [([], 1), (["--frequency", "5"], 5)])
def test_refresh_period_is_1s_unless_frequency_is_given(tmp_path, monkeypatch, flags, period):
    config = tmp_path / "gsender.conf"
    config.write_text("[default]\nfrequency = 30\n")
    calls = []
    monkeypatch.setattr(top, "run", lambda config, period: calls.append(period) or 0)
    assert cli.main(["--top", "--config", str(config)] + flags) == 0
    assert calls == [period]


# -- the real view in a tmux pane --

TITLE = re.compile(r"^gsender-bcc --top  (\S+)  every (\d+)s  sort: (.+?) +s: sort  q: quit$")
SUMMARY = re.compile(r"^samples [\d.]+/s  mean \S+  p50 \S+  p90 \S+  p99 (\S+)  max \S+$")
BUCKET = re.compile(r"^ *(\d+) -> (\d+) +([\d.]+) \|(#*)$")
TABLE = re.compile(r"^SERVICE +COUNT/S WAIT ms/s(?: CAUSED ms/s)? +MEAN +P99 PRESSURE(?: +BEHIND MOST)?$")
# name, count/s, wait, (caused,) mean, p99, pressure(, behind most): the groups skip the two
# columns of the attribution (on by default).
ROW = re.compile(r"^(\S+) +([\d.]+) +([\d.]+)(?: +[\d.]+)? +(\S+) +(\S+) +(\S+)(?: +\S+)?$")
_panes = itertools.count()

# The pane runs this, which starts --top and records how it ended: tmux can take many
# seconds to reap a pane's process, so its own exit status comes late or not at all.
# It ignores the signals meant for --top (sent to the terminal's foreground group too)
# only once --top runs with the default ones.
RECORDER = """
import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[3:])
for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(sig, signal.SIG_IGN)
open(sys.argv[1], "w").write(str(child.pid))
code = child.wait()
open(sys.argv[2] + ".tmp", "w").write(str(code))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
"""


class Pane:
    """``gsender-bcc --top`` in a tmux pane on a private tmux server."""

    def __init__(self, tmp_path, width, height, args):
        if shutil.which("tmux") is None:
            pytest.fail("tmux is missing: run 'make setup' (it installs tmux)")
        self.socket = f"gsender-top-{os.getpid()}-{next(_panes)}"
        folder = tmp_path / self.socket
        folder.mkdir()
        (folder / "tmux.conf").write_text("set -g remain-on-exit on\nset -g status off\n")
        (folder / "recorder.py").write_text(RECORDER)
        self.pid_file, self.status_file = folder / "pid", folder / "status"
        command = [sys.executable, str(folder / "recorder.py"), str(self.pid_file),
                   str(self.status_file), sys.executable, "-m", "gsender_bcc", "--top", *args]
        self.tmux("-f", str(folder / "tmux.conf"), "new-session", "-d", "-s", "top",
                  "-x", str(width), "-y", str(height), "-c", str(REPO),
                  "exec " + " ".join(map(shlex.quote, command)))
        deadline = time.monotonic() + 10
        while not self.pid_file.exists() or not self.pid_file.read_text():
            assert time.monotonic() < deadline, "the pane never started --top"
            time.sleep(0.02)
        self.pid = int(self.pid_file.read_text())

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "top").rstrip("\n").split("\n")

    def size(self):
        return tuple(map(int, self.tmux("display-message", "-p", "-t", "top",
                                        "#{pane_width} #{pane_height}").split()))

    def exit_status(self):
        """None while --top runs, then its exit status (minus the signal's number if killed)."""
        return int(self.status_file.read_text()) if self.status_file.exists() else None

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "top", *keys)

    def wait_for(self, predicate, timeout, what):
        """Poll the screen until ``predicate(lines)`` is true; fail showing the last screen."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if predicate(lines):
                return lines
            if self.exit_status() is not None or time.monotonic() > deadline:
                pytest.fail(f"waiting for {what}: the screen is\n" + "\n".join(lines)
                            + f"\n(exit status {self.exit_status()})")
            time.sleep(0.1)

    def wait_for_exit(self, timeout):
        started = time.monotonic()
        while self.exit_status() is None:
            if time.monotonic() > started + timeout:
                pytest.fail(f"--top still runs {timeout}s later ({self.where()}); screen:\n"
                            + "\n".join(self.screen()))
            time.sleep(0.02)
        return self.exit_status()

    def where(self):
        """What --top's threads are doing, from /proc, for a failure's message."""
        found = []
        for task in sorted(Path(f"/proc/{self.pid}/task").glob("*")):
            try:
                state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                stack = [line.split()[-1] for line in (task / "stack").read_text().splitlines()]
            except OSError:
                continue
            found.append(f"thread {task.name} {state} in {' < '.join(stack[:6]) or 'user space'}")
        return "; ".join(found) or "gone"

    def kill(self):
        """Stop the tmux server (the hangup ends --top), and --top itself if it lingers."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)
        deadline = time.monotonic() + 5
        while self.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.exit_status() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def pane_factory(tmp_path):
    made = []

    def make(width, height, args=()):
        made.append(Pane(tmp_path, width, height, list(args)))
        return made[-1]
    yield make
    for pane in made:
        pane.kill()


@pytest.fixture
def quiet_graphite(tmp_path):
    """A listening Graphite port that --top is configured to use; and its config file."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        config = tmp_path / "gsender.conf"
        config.write_text(f"[graphite]\nserver_address = 127.0.0.1\n"
                          f"port = {listener.getsockname()[1]}\n")
        yield SimpleNamespace(listener=listener, config=config)


def section(lines):
    """Split a screen into (title match, summary match, bucket matches, table rows)."""
    buckets = [m for m in map(BUCKET.match, lines) if m]
    table = next((i for i, line in enumerate(lines) if TABLE.match(line)), None)
    rows = [m for m in map(ROW.match, lines[table + 1:])] if table is not None else []
    lines = list(lines) + ["", ""]
    return TITLE.match(lines[0]), SUMMARY.match(lines[1]), buckets, rows


def busy_row(lines, name):
    return any(m and m.group(1) == name for m in section(lines)[3])


@pytest.mark.bpf
def test_top_shows_the_host_and_a_busy_service_then_q_detaches(cgroup_factory, pane_factory,
                                                               quiet_graphite):
    busy = cgroup_factory("top-test.service")
    busy.spin(0), busy.spin(0)  # two on one CPU: each waits while the other runs
    pane = pane_factory(120, 40, ["--config", str(quiet_graphite.config)])
    programs = wait_for_programs_of(pane.pid, count=agent_program_count(), timeout=90)

    # The busy cgroup's pressure needs two readings: wait for the row with its figure.
    lines = pane.wait_for(lambda lines: any(
        m and m.group(1) == "top-test" and m.group(6).endswith("%")
        for m in section(lines)[3]), 30, "the busy service with its cpu.pressure")
    title, summary, buckets, rows = section(lines)
    assert title and title.groups() == (short_hostname(), "1", "total wait")
    assert len(lines[0]) == 120
    assert summary, lines[1]
    assert re.fullmatch(r"[\d.]+(us|ms|s)", summary.group(1))
    assert lines[3].split() == ["latency", "us", "samples/s"]
    # The buckets follow on from 0 without a gap, and the busiest one's bar fills the width.
    lows = [int(m.group(1)) for m in buckets]
    assert lows == [0] + [1 << e for e in range(len(lows) - 1)]
    assert all(int(m.group(2)) == max(1, 2 * int(m.group(1))) for m in buckets)
    assert max(len(m.group(0)) for m in buckets) == 120
    assert all((float(m.group(3)) > 0) == bool(m.group(4)) for m in buckets)
    # The rows are in order of total wait. One of the busy service's two threads always waits
    # while the other runs, and both wait while others take their CPU: one to two seconds of
    # wait per second, whatever else runs on the machine.
    waits = [float(m.group(3)) for m in rows if m]
    assert waits == sorted(waits, reverse=True)
    row = next(m for m in rows if m and m.group(1) == "top-test")
    assert 900 <= float(row.group(3)) <= 2100
    assert 50 <= float(row.group(6).rstrip("%")) <= 100

    # s cycles the sort order; by name the rows are in order.
    for label in ("caused", "p99", "count/s", "name"):
        pane.keys("s")
        lines = pane.wait_for(lambda lines, label=label: TITLE.match(lines[0])
                              and TITLE.match(lines[0]).group(3) == label, 3, f"sort {label}")
    names = [m.group(1) for m in section(lines)[3] if m]
    assert "top-test" in names and names == sorted(names)

    started = time.monotonic()
    pane.keys("q")
    assert pane.wait_for_exit(3) == 0
    assert time.monotonic() - started < 3
    assert_unloaded(programs)
    # It sent nothing: no connection ever reached the configured Graphite port.
    assert select.select([quiet_graphite.listener], [], [], 0)[0] == []


@pytest.mark.bpf
def test_top_in_80x24_survives_resizes(cgroup_factory, pane_factory, quiet_graphite):
    busy = cgroup_factory("top-test.service")
    busy.spin(0), busy.spin(0)
    pane = pane_factory(80, 24, ["--config", str(quiet_graphite.config), "--frequency", "2"])
    programs = wait_for_programs_of(pane.pid, count=agent_program_count(), timeout=90)

    def complete(width):
        def check(lines):
            title, summary, buckets, rows = section(lines)
            return (title and len(lines[0]) == width and summary and buckets
                    and busy_row(lines, "top-test"))
        return check

    lines = pane.wait_for(complete(80), 30, "a full 80x24 screen")
    assert pane.size() == (80, 24) and len(lines) <= 24
    assert TITLE.match(lines[0]).group(2) == "2"
    for width, height in ((120, 40), (50, 14), (80, 24)):
        pane.tmux("resize-window", "-t", "top", "-x", str(width), "-y", str(height))
        assert pane.size() == (width, height)
        if width >= 80:
            lines = pane.wait_for(complete(width), 5, f"the screen redrawn at {width}x{height}")
        else:  # too narrow for the keys' help: it goes, and the host's figures wrap
            title = f"gsender-bcc --top  {short_hostname()}  every 2s  sort: total wait"
            lines = pane.wait_for(lambda lines, title=title, width=width:
                                  lines[0] == title[:width].rstrip()
                                  and lines[1].startswith("samples ")
                                  and lines[2].startswith("p99 "),
                                  5, f"the screen redrawn at {width}x{height}")
        assert pane.exit_status() is None
    assert any(" p99 " in line for line in lines[1:3])

    os.kill(pane.pid, signal.SIGTERM)
    assert pane.wait_for_exit(3) == 0
    assert_unloaded(programs)


@pytest.mark.bpf
@pytest.mark.parametrize("ending", ["C-c", "SIGHUP"])
def test_ctrl_c_and_sighup_end_it_with_nothing_attached(pane_factory, quiet_graphite, ending):
    pane = pane_factory(100, 30, ["--config", str(quiet_graphite.config)])
    programs = wait_for_programs_of(pane.pid, count=agent_program_count(), timeout=90)
    pane.wait_for(lambda lines: section(lines)[1] is not None, 20, "the first interval")
    if ending == "C-c":
        pane.keys("C-c")
    else:
        os.kill(pane.pid, signal.SIGHUP)
    assert pane.wait_for_exit(3) == 0
    assert_unloaded(programs)
