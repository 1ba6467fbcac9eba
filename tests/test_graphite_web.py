"""The throwaway graphite-web that `make run` starts beside its carbon-cache draws the data.

`make run` is `local_carbon.py run FOLDER PORT --web-port N -- AGENT...`; these tests run that
same command line (in a temporary folder, on free ports), read the graph URL it prints, and
fetch it: a PNG, and the same URL as JSON holds the values the whisper files hold.
"""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import AGENT, free_port, wait_for
from local_carbon import LocalGraphite, complete, http_get, listening, stored_series

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "local_carbon.py"
URL_LINE = re.compile(r"latency graph \(reload to refresh\): (http://127\.0\.0\.1:(\d+)/render\?\S+)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stands in for the agent where no BPF is wanted: sends known datapoints once a second.
FAKE_AGENT = r"""
import signal, socket, sys, time
port = int(sys.argv[-1])
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
while True:
    stamp = int(time.time())
    lines = [f"fake.cpu-lat.mean {stamp % 100 + 0.5} {stamp}",
             f"fake.cpu-lat.p99 {stamp % 100 + 900} {stamp}"]
    lines += [f"fake.cpu-lat.service.svc{i}.p99 {100 * i} {stamp}" for i in range(7)]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(("\n".join(lines) + "\n").encode())
    time.sleep(1 - time.time() % 1)
"""


def png_size(body):
    """(width, height) from a PNG's IHDR chunk."""
    assert body[:8] == PNG_MAGIC and body[12:16] == b"IHDR", body[:32]
    return struct.unpack(">II", body[16:24])


def rendered(url):
    """Fetch ``url`` as a PNG and as JSON: (PNG bytes, {target: {stamp: value} without nulls})."""
    status, kind, body = http_get(url)
    assert (status, kind) == (200, "image/png"), body[:500]
    status, kind, data = http_get(url + "&format=json")
    assert (status, kind) == (200, "application/json"), data[:500]
    return body, {s["target"]: {t: v for v, t in s["datapoints"] if v is not None}
                  for s in json.loads(data)}


class RunBeside:
    """`local_carbon.py run` as `make run` starts it, in its own session (a terminal's job)."""

    def __init__(self, folder, port, command, *options):
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "run", str(folder), str(port), "--web-port", "0",
             *options, "--", *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def url(self, timeout=60):
        def found():
            if self.proc.poll() is not None:
                pytest.fail("local_carbon.py ended:\n" + "".join(self.lines)[-3000:])
            return next((m for m in map(URL_LINE.search, self.lines) if m), None)
        match = wait_for(found, timeout, "the graph URL")
        return match.group(1), int(match.group(2))

    def ctrl_c(self, timeout=20):
        """SIGINT to the whole process group, as the terminal's Ctrl-C; return the exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def close(self):
        """Stop it as Ctrl-C does, so that it stops carbon-cache and graphite-web; whatever
        still runs in the folder then (they have sessions of their own) is killed."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in processes_under(self.folder):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def run_beside():
    started = []

    def start(*args):
        started.append(RunBeside(*args))
        return started[-1]
    yield start
    for run in started:
        run.close()


def processes_under(folder):
    """Pids of processes whose command line names ``folder`` (carbon-cache) or that run in it
    (graphite-web)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (str(folder).encode() in (proc / "cmdline").read_bytes()
                    or os.readlink(proc / "cwd").startswith(str(folder))):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def whisper_values(folder, path):
    """The points of one series in the whisper files of ``folder``'s carbon-cache, once carbon
    has finished creating its file ({} before)."""
    return dict(stored_series(folder / "storage" / "whisper", 600).get(path, []))


def wait_for_files(folder, names, points=1, timeout=30):
    """Wait until carbon-cache has created each series' whisper file whole, with ``points``
    points at least. graphite-web answers 500 to a render that reads a file carbon is still
    writing (its header or archives are short), so the tests render only after this."""
    def written():
        stored = stored_series(folder / "storage" / "whisper", 600)
        return all(len(stored.get(name, ())) >= points for name in names)
    wait_for(written, timeout, f"carbon-cache to write {len(names)} series")


def names_sent(prefix, service):
    """The series FAKE_AGENT (service "svc") and test_graph_of_known_datapoints ("s") send."""
    return [f"{prefix}.mean", f"{prefix}.p99"] + [f"{prefix}.service.{service}{k}.p99"
                                                   for k in range(7)]


def assert_same_as_whisper(drawn, stored):
    """graphite-web's values are the whisper file's (the newest second may still be in carbon's
    cache, which graphite-web reads through carbonlink)."""
    common = set(drawn) & set(stored)
    assert len(common) >= max(3, len(drawn) - 2), (sorted(drawn), sorted(stored))
    assert {t: drawn[t] for t in common} == {t: stored[t] for t in common}


def test_graph_of_known_datapoints(tmp_path):
    """graphite-web reads the carbon-cache's files: exact values, top-5 services, a PNG."""
    with LocalGraphite(tmp_path / "graphite") as graphite:
        now = int(time.time())
        lines = []
        for i in range(30):
            stamp = now - 30 + i
            lines += [f"t.cpu-lat.mean {10 + i} {stamp}", f"t.cpu-lat.p99 {500 + i} {stamp}"]
            lines += [f"t.cpu-lat.service.s{k}.p99 {100 * k + i} {stamp}" for k in range(7)]
        with socket.create_connection(("127.0.0.1", graphite.carbon.port)) as sock:
            sock.sendall(("\n".join(lines) + "\n").encode())
        wait_for_files(graphite.carbon.folder, names_sent("t.cpu-lat", "s"), 30)
        body, series = rendered(graphite.graph_url("t.cpu-lat"))
    assert png_size(body) == (900, 450)
    assert series["mean"] == {now - 30 + i: 10.0 + i for i in range(30)}
    assert series["p99"] == {now - 30 + i: 500.0 + i for i in range(30)}
    # highestMax(..., 5): the five services with the highest p99, named by aliasByNode.
    assert sorted(set(series) - {"mean", "p99"}) == [f"s{k}.p99" for k in range(2, 7)]
    assert series["s6.p99"][now - 1] == 629.0


def test_a_file_carbon_is_still_creating_gets_a_500_and_is_not_a_series_yet(tmp_path):
    """carbon-cache writes a new whisper file in place, header first, and graphite-web fails a
    render whose target matches a file not yet whole with a 500. So the tests render once
    carbon has finished (complete())."""
    import whisper
    with LocalGraphite(tmp_path / "graphite") as graphite:
        folder = graphite.carbon.whisper_dir / "t" / "cpu-lat"
        folder.mkdir(parents=True)
        whole = folder / "p99.wsp"
        whisper.create(str(whole), [(1, 7200)])
        url = graphite.graph_url("t.cpu-lat", fmt="json")
        assert graphite.web.get(url)[0] == 200
        for size in (0, 16, 28, 28 + 12 * 100):  # nothing, part of the header, no points, some
            (folder / "mean.wsp").write_bytes(whole.read_bytes()[:size])
            assert not complete(folder / "mean.wsp")
            assert set(graphite.carbon.series()) == {"t.cpu-lat.p99"}
            if size < 28:
                assert graphite.web.get(url)[0] == 500
        (folder / "mean.wsp").write_bytes(whole.read_bytes())
        assert complete(folder / "mean.wsp") and graphite.web.get(url)[0] == 200


def test_make_run_stores_by_the_printed_stanzas(tmp_path, run_beside):
    """`make run` gives the throwaway carbon-cache what `--carbon-config` prints for its flags."""
    import whisper
    dry_run = subprocess.run(["make", "-n", "run"], capture_output=True, text=True,
                             cwd=SCRIPT.parent.parent, check=True).stdout
    agent = re.search(r"^mkdir -p var && (.*) --carbon-config > var/carbon-storage.conf$", dry_run,
                      re.M)
    assert agent and re.search(r"local_carbon\.py run var/carbon \d+ \\\n\s*--web-port \d+ "
                               r"--carbon-config var/carbon-storage.conf -- " + re.escape(
                                   agent.group(1)) + "$", dry_run, re.M), dry_run
    printed = subprocess.run(AGENT + ["--config", "/dev/null", "--frequency", "5",
                                      "--prefix", "fake.cpu-lat", "--carbon-config"],
                             capture_output=True, text=True, check=True).stdout
    (tmp_path / "storage.conf").write_text(printed)
    folder, port = tmp_path / "carbon", free_port()
    run = run_beside(folder, port, [sys.executable, "-c", FAKE_AGENT, str(port)],
                     "--carbon-config", str(tmp_path / "storage.conf"))
    run.url()
    assert (folder / "storage-schemas.conf").read_text().startswith(printed.split("\n# st")[0])
    wait_for_files(folder, names_sent("fake.cpu-lat", "svc"))
    files = folder / "storage" / "whisper" / "fake" / "cpu-lat"
    p99, mean = whisper.info(str(files / "p99.wsp")), whisper.info(str(files / "mean.wsp"))
    assert [(a["secondsPerPoint"], a["retention"]) for a in p99["archives"]] == [
        (5, 7 * 86400), (60, 30 * 86400), (600, 365 * 86400)]
    assert (p99["aggregationMethod"], p99["xFilesFactor"]) == ("max", 0)
    assert (mean["aggregationMethod"], mean["xFilesFactor"]) == ("average", 0)


def test_run_prints_a_graph_url_that_draws_the_data_and_ctrl_c_stops_everything(
        tmp_path, run_beside):
    folder, port = tmp_path / "carbon", free_port()
    run = run_beside(folder, port, [sys.executable, "-c", FAKE_AGENT, "--prefix", "fake.cpu-lat",
                                    str(port)])
    url, web_port = run.url()
    assert "target=color(alias(fake.cpu-lat.mean,'mean'),'1f77b4')" in url
    assert "from=-10min" in url
    wait_for_files(folder, names_sent("fake.cpu-lat", "svc"))
    wait_for(lambda: len(rendered(url)[1].get("mean", {})) >= 5, 30, "five means")
    body, series = rendered(url)
    assert png_size(body) == (900, 450)
    assert_same_as_whisper(series["mean"], whisper_values(folder, "fake.cpu-lat.mean"))
    assert all(v == t % 100 + 0.5 for t, v in series["mean"].items())
    assert sorted(set(series) - {"mean", "p99"}) == [f"svc{i}.p99" for i in range(2, 7)]

    assert run.ctrl_c() == 0
    assert not listening(port) and not listening(web_port)
    assert processes_under(folder) == []
    assert "stopped graphite-web and carbon-cache" in "".join(run.lines)


def test_sigterm_stops_the_command_then_carbon_and_graphite_web(tmp_path, run_beside):
    """`timeout make run`, or a service manager, sends SIGTERM to local_carbon.py alone."""
    folder, port = tmp_path / "carbon", free_port()
    run = run_beside(folder, port, [sys.executable, "-c", FAKE_AGENT, str(port)])
    _, web_port = run.url()
    assert processes_under(folder)  # carbon-cache and graphite-web, at least
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 128 + signal.SIGTERM  # the fake agent died of it
    assert not listening(port) and not listening(web_port)
    assert processes_under(folder) == []


@pytest.mark.bpf
def test_run_with_the_agent_graphs_its_mean_and_p99(tmp_path, run_beside):
    """The real agent as `make run` starts it (at frequency 1): the URL shows its data."""
    folder, port = tmp_path / "carbon", free_port()
    prefix = "webtest.cpu-lat"
    run = run_beside(folder, port, AGENT + [
        "--config", "/dev/null", "--frequency", "1", "--prefix", prefix, "--graphite-host",
        "127.0.0.1", "--graphite-port", str(port), "--state-directory", str(tmp_path / "state")])
    url, web_port = run.url()
    # The first interval creates every file at once; services and buckets seen later still
    # create theirs while the graph is drawn (a short window, carbon creates them sparse).
    wait_for_files(folder, [prefix + ".mean", prefix + ".p99"], timeout=60)
    wait_for(lambda: len(rendered(url)[1].get("mean", {})) >= 5, 60, "five intervals' means")
    body, series = rendered(url)
    assert png_size(body) == (900, 450) and len(body) > 5000
    # The graph's values are the whisper files' values: real latencies, p99 above the mean.
    stored_mean = whisper_values(folder, prefix + ".mean")
    stored_p99 = whisper_values(folder, prefix + ".p99")
    assert_same_as_whisper(series["mean"], stored_mean)
    assert_same_as_whisper(series["p99"], stored_p99)
    stamps = sorted(series["mean"])
    assert stamps == list(range(stamps[0], stamps[0] + len(stamps)))  # one per second, no gap
    assert all(0 < series["mean"][t] < 1e6 for t in stamps)
    assert all(0 < value < 1e7 for value in series["p99"].values())
    assert run.ctrl_c() == 0
    assert not listening(port) and not listening(web_port)
    assert processes_under(folder) == []
