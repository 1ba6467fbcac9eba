"""make bench: what each run-queue latency tracer costs this host, measured side by side.

Run it as `make bench`, which holds /tmp/gsender-heavy.lock throughout so that no other heavy
job (tests, VMs) shares the machine while it times. Phases, with progress on stderr:

1. Cost per round trip, RUNS times over. Tracers: empty programs on the classic and on
   the raw tracepoints (the floors), gsender-bcc host-only (--max-services 0), gsender-bcc
   as deployed (per-service breakdown on), bpftrace's runqlat.bt and bcc's runqlat. In
   each run the tracers take turns in an order rotated by one from the previous run, with
   a block of baseline runs (no tracer) before the first, between any two and after the
   last. A tracer's added cost is the median of its round trips minus the median of the
   baseline blocks on either side. Each run also gives the ns per BPF program run
   (kernel.bpf_stats_enabled, a separate round trip run as the statistics cost time
   themselves), the time to attach, the bytes_memlock of its BPF maps and its RssAnon.
   Ratios are taken within a run, then summarised over the runs.
2. gsender-bcc idle, once a run: host-only and default side by side, each sending to a
   throwaway carbon-cache on loopback at the default frequency; CPU over four intervals,
   then RssAnon, peak RSS and bytes_memlock.
3. gsender-bcc with Graphite down: frequency 1, nothing listening on its port; RssAnon
   after 100 and after 1000 undelivered intervals, and the slope between them in KiB per
   interval (issues 11 and 28). UNDELIVERED_RUNS agents run side by side, each its own run
   (memory, not time, is measured), so the phase takes about 17 minutes however many.
4. One interval with 1000 live services, timed in-process (bench/many_services.py).
5. BPF map memory of the agent computed from the map definitions at 256 CPUs, beside
   bytes_memlock read on this machine.
6. BCC's compile of the program against the package's include tree beside the same compile
   against the distro's kernel headers, each in a fresh process: seconds and peak RSS
   (bench/compile_cost.py).

Every figure is given as the median over the runs and the range (min-max). Writes
docs/benchmarks.md with --record; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
PINGPONG = BUILD / "pingpong"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
AGENT = [str(ROOT / ".venv" / "bin" / "gsender-bcc")]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import compile_cost  # noqa: E402  (bench/, beside this file)
import many_services  # noqa: E402
from local_carbon import CarbonCache, free_port  # noqa: E402

from gsender_bcc import program  # noqa: E402

EMPTY_CLASSIC = """
TRACEPOINT_PROBE(sched, sched_wakeup) { return 0; }
TRACEPOINT_PROBE(sched, sched_wakeup_new) { return 0; }
TRACEPOINT_PROBE(sched, sched_switch) { return 0; }
"""
EMPTY_RAW = """
RAW_TRACEPOINT_PROBE(sched_wakeup) { return 0; }
RAW_TRACEPOINT_PROBE(sched_wakeup_new) { return 0; }
RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }
"""
# A stand-in tracer: loads a BCC program, says so, and waits to be stopped.
# BCC compiles it against the agent's own include tree, with the flags that tree needs, as
# the agent does.
EMPTY_LOADER = """
import os, signal, sys, bcc
from gsender_bcc import program
os.environ["BCC_KERNEL_SOURCE"] = str(program.include_tree())
b = bcc.BPF(text=sys.argv[1], cflags=list(program.include_tree_flags(
    program.running_version_code(), program.running_page_size())))
print("attached", flush=True)
signal.sigwait({signal.SIGINT, signal.SIGTERM})
b.cleanup()
"""
STATE, PORT = "<state directory>", "<graphite port>"  # filled in at each start
DEFAULT_FREQUENCY = 15
INTERVAL_STATUS = "STATUS=last interval ending"
NOT_COMPARABLE = "not comparable"

started_at = time.monotonic()


def progress(text: str) -> None:
    minutes, seconds = divmod(int(time.monotonic() - started_at), 60)
    print(f"bench [{minutes:02d}:{seconds:02d}] {text}", file=sys.stderr, flush=True)


# ---- tracers ------------------------------------------------------------------------------------

@dataclass
class Tracer:
    key: str
    label: str
    command: List[str]
    ready_text: Optional[str] = None  # a line on stdout that says it is attached
    agent: bool = False               # gsender-bcc: READY=1 on a NOTIFY_SOCKET, a state directory
    caveat: str = ""


def agent_command(*extra: str, frequency: int = DEFAULT_FREQUENCY) -> List[str]:
    return AGENT + ["--config", "/dev/null", "--frequency", str(frequency),
                    "--graphite-host", "127.0.0.1", "--graphite-port", PORT,
                    "--state-directory", STATE, *extra]


def tracers() -> List[Tracer]:
    headers = headers_note()
    return [
        Tracer("floor", "empty programs, classic tracepoints",
               [PYTHON, "-c", EMPTY_LOADER, EMPTY_CLASSIC], ready_text="attached"),
        Tracer("raw_floor", "empty programs, raw tracepoints",
               [PYTHON, "-c", EMPTY_LOADER, EMPTY_RAW], ready_text="attached"),
        Tracer("host_only", "gsender-bcc host-only (--max-services 0)",
               agent_command("--max-services", "0"), agent=True),
        Tracer("gsender", "gsender-bcc default (per-service breakdown on)",
               agent_command(), agent=True),
        Tracer("bpftrace", "bpftrace runqlat.bt (the original tool's tracer)",
               ["bpftrace", "/usr/sbin/runqlat.bt"], ready_text="Tracing CPU scheduler"),
        Tracer("bcc", "bcc runqlat-bpfcc", ["/usr/sbin/runqlat-bpfcc"],
               ready_text="Tracing run queue latency", caveat=headers),
    ]


def headers_note() -> str:
    release = os.uname().release
    build = Path("/lib/modules") / release / "build"
    target = os.path.realpath(build)
    if build.is_symlink() and release not in target:
        return (f"kernel headers are {Path(target).name}, not {release}: bcc runqlat reads "
                f"task_struct fields at the headers' offsets, which may be wrong here, so its "
                f"cost is not comparable")
    return ""


# ---- measuring helpers --------------------------------------------------------------------------

def build_helpers() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    source = ROOT / "bench" / "pingpong.c"
    if not PINGPONG.exists() or PINGPONG.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(PINGPONG), str(source)],
                       check=True)
    many_services.build_ticker()
    # As a .deb install does (dh_python3 byte-compiles at install time): without .pyc files
    # every start would compile the agent's modules again, and attach time would measure that.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "gsender_bcc"),
                    str(ROOT / "bpf")], check=True, stdout=subprocess.DEVNULL)


def round_trip_ns(rounds: int) -> float:
    return float(subprocess.run([str(PINGPONG), str(rounds)], capture_output=True, text=True,
                                check=True).stdout)


def bpf_fds(pid: int) -> Tuple[set, set]:
    """Return the ids of the BPF programs and maps a process holds, from its fdinfo."""
    programs, maps = set(), set()
    for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
        try:
            text = info.read_text()
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                programs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return programs, maps


def bpftool(*args: str) -> list:
    out = subprocess.run(["bpftool", "--json", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out or "[]")


def program_stats() -> Dict[int, dict]:
    return {p["id"]: p for p in bpftool("prog", "show")}


def map_memory(ids: set) -> Dict[str, int]:
    """Return {map name: bytes_memlock} for the maps with these ids."""
    return {m.get("name", str(m["id"])): int(m.get("bytes_memlock", 0))
            for m in bpftool("map", "show") if m["id"] in ids}


def proc_status(pid: int) -> Dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads, from schedstat's nanosecond counters."""
    total = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


def ns_per_program_run(programs: set, rounds: int) -> Optional[float]:
    switch = Path("/proc/sys/kernel/bpf_stats_enabled")
    switch.write_text("1")
    try:
        before = program_stats()
        round_trip_ns(rounds)
        after = program_stats()
    finally:
        switch.write_text("0")
    count = sum(after[i].get("run_cnt", 0) - before[i].get("run_cnt", 0)
                for i in programs if i in after and i in before)
    spent = sum(after[i].get("run_time_ns", 0) - before[i].get("run_time_ns", 0)
                for i in programs if i in after and i in before)
    return spent / count if count else None


class DiscardSink:
    """A Graphite stand-in on loopback that takes plaintext lines over TCP and drops them."""

    def __init__(self):
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self.bytes = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return  # closed
            reader = threading.Thread(target=self._read, args=(connection,), daemon=True)
            reader.start()

    def _read(self, connection: socket.socket) -> None:
        with connection:
            while True:
                data = connection.recv(65536)
                if not data:
                    return
                self.bytes += len(data)

    def close(self) -> None:
        self._server.close()


class Running:
    """One tracer process, started and waited for until attached.

    gsender-bcc gets a fresh state directory and a NOTIFY_SOCKET; a thread counts the
    intervals it reports there (one STATUS line each)."""

    def __init__(self, tracer: Tracer, port: int = 0, timeout: float = 90.0):
        self.tracer = tracer
        self.intervals = 0
        self._changed = threading.Condition()
        self._folder = tempfile.mkdtemp(prefix="gsender-bench-")
        self._stderr = open(os.path.join(self._folder, "stderr"), "w+")
        self._listener = None
        self._reader = None
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # use the .pyc files build_helpers wrote
        command = [{STATE: os.path.join(self._folder, "state"), PORT: str(port)}.get(part, part)
                   for part in tracer.command]
        if tracer.agent:
            env["NOTIFY_SOCKET"] = os.path.join(self._folder, "notify.sock")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._listener.bind(env["NOTIFY_SOCKET"])
            self._listener.settimeout(1.0)
        self._drain, self._stopped = None, None
        started = time.monotonic()
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, env=env)
        deadline = started + timeout
        # A tracer silent on stdout would block readline(): end it at the deadline.
        watchdog = threading.Timer(timeout, self.proc.kill)
        watchdog.start()
        try:
            if self._listener is not None:
                self._wait_ready(deadline)
            else:
                self._wait_line(deadline)
        finally:
            watchdog.cancel()
        self.attach_s = time.monotonic() - started
        self.programs, self.maps = bpf_fds(self.proc.pid)
        if self._listener is not None:
            self._reader = threading.Thread(target=self._count_intervals, args=(self._listener,),
                                            daemon=True)
            self._reader.start()
        # Drain stdout so a chatty tracer never blocks on a full pipe.
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    def _failed(self, what: str) -> RuntimeError:
        return RuntimeError(f"{self.tracer.label} {what}: {self.stop_and_stderr()[-300:]}")

    def _wait_ready(self, deadline: float) -> None:
        while True:
            try:
                if b"READY=1" in self._listener.recv(4096):
                    return
            except socket.timeout:
                pass
            if self.proc.poll() is not None:
                raise self._failed("exited before attaching")
            if time.monotonic() > deadline:
                raise self._failed("did not attach in time")

    def _wait_line(self, deadline: float) -> None:
        while True:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise self._failed("did not attach")
            if self.tracer.ready_text in line:
                return

    def _count_intervals(self, listener: socket.socket) -> None:
        while True:
            try:
                message = listener.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return  # closed
            if INTERVAL_STATUS.encode() in message:
                with self._changed:
                    self.intervals += 1
                    self._changed.notify_all()

    def wait_intervals(self, count: int, timeout: float) -> bool:
        """Wait until the agent has reported ``count`` intervals; False if it did not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.intervals < count and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return self.intervals >= count

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop_and_stderr(self) -> str:
        """Stop the tracer (SIGINT, as Ctrl-C would) and return what it wrote on stderr."""
        if self._stopped is not None:
            return self._stopped
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._drain is not None:
            self._drain.wait(10)
        elif self.proc.stdout is not None:
            self.proc.stdout.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._reader is not None:
            self._reader.join(5)
        self._stderr.seek(0)
        self._stopped = self._stderr.read()
        self._stderr.close()
        shutil.rmtree(self._folder, ignore_errors=True)
        return self._stopped


# ---- phase 1: cost per round trip ---------------------------------------------------------------

@dataclass
class Trial:
    """One tracer in one run."""

    added_ns: Optional[float] = None
    ns_per_run: Optional[float] = None
    attach_s: Optional[float] = None
    maps_bytes: Optional[int] = None
    rss_anon_kib: Optional[int] = None
    peak_rss_kib: Optional[int] = None
    survived: bool = False
    failure: str = ""


# How busy the CPU pingpong does not use was during the baseline blocks, % (the bench itself
# is idle then): a quiet machine keeps this near 0; others' work shows up here.
other_cpu_busy: List[float] = []


def cpu_times(cpu: int) -> Tuple[int, int]:
    """Return (busy, total) jiffies of one CPU from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            values = [int(v) for v in line.split()[1:9]]  # guest time is in user already
            idle = values[3] + values[4]  # idle and iowait
            return sum(values) - idle, sum(values)
    return 0, 0


def machine_busy(seconds: float = 2.0) -> float:
    """Return how busy all CPUs were over ``seconds``, % (this process sleeps meanwhile)."""
    def totals() -> Tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values) - values[3] - values[4], sum(values)
    busy, total = totals()
    time.sleep(seconds)
    busy2, total2 = totals()
    return (busy2 - busy) / max(1, total2 - total) * 100


waited_for_quiet: List[float] = []


def wait_for_quiet(limit: float = 10.0, patience: float = 300.0) -> None:
    """Wait, up to ``patience`` seconds, until the machine is less than ``limit`` % busy:
    work that did not take the bench lock would otherwise be timed along with the tracers."""
    started = time.monotonic()
    while True:
        busy = machine_busy()
        if busy < limit:
            break
        if time.monotonic() - started > patience:
            progress(f"machine still {busy:.0f} % busy after {patience:.0f} s: going on anyway")
            break
        progress(f"machine {busy:.0f} % busy (others' work): waiting for it to be quiet")
        time.sleep(5)
    waited_for_quiet.append(time.monotonic() - started)


def baseline_block(rounds: int, runs: int) -> List[float]:
    other = 1 if (os.cpu_count() or 1) > 1 else None
    before = cpu_times(other) if other is not None else None
    timed = [round_trip_ns(rounds) for _ in range(runs)]
    if before is not None:
        busy, total = (a - b for a, b in zip(cpu_times(other), before))
        if total > 0:
            other_cpu_busy.append(busy / total * 100)
    return timed


def try_tracer(tracer: Tracer, rounds: int, runs: int, port: int) -> Tuple[Trial, List[float]]:
    """Attach, time ``runs`` round trips, and detach; return the trial and its round trips."""
    trial = Trial()
    try:
        running = Running(tracer, port)
    except RuntimeError as error:
        trial.failure = str(error)
        return trial, []
    timed: List[float] = []
    try:
        trial.attach_s = running.attach_s
        round_trip_ns(rounds)  # warm-up
        timed = [round_trip_ns(rounds) for _ in range(runs)]
        trial.ns_per_run = ns_per_program_run(running.programs, rounds)
        trial.maps_bytes = sum(map_memory(running.maps).values()) if running.maps else None
        if running.alive():
            status = proc_status(running.proc.pid)
            trial.rss_anon_kib, trial.peak_rss_kib = status.get("RssAnon"), status.get("VmHWM")
    finally:
        alive = running.alive()
        stderr = running.stop_and_stderr()
    trial.survived = alive
    if not alive:
        trial.failure = f"exited early: {stderr.strip()[-200:]}"
    return trial, timed


def cost_run(index: int, total: int, order: List[Tracer], rounds: int, runs: int,
             port: int) -> Dict[str, Trial]:
    trials: Dict[str, Trial] = {}
    before = baseline_block(rounds, runs)
    for tracer in order:
        trial, timed = try_tracer(tracer, rounds, runs, port)
        after = baseline_block(rounds, runs)
        if timed:
            trial.added_ns = statistics.median(timed) - statistics.median(before + after)
        trials[tracer.key] = trial
        progress(f"run {index}/{total}: {tracer.label}: " + (
            f"added {trial.added_ns:.0f} ns/round trip, attached in {trial.attach_s:.2f} s"
            if trial.added_ns is not None else f"FAILED: {trial.failure[:200]}"))
        before = after
    return trials


# ---- phase 2: idle, with a real Graphite --------------------------------------------------------

@dataclass
class Idle:
    cpu_percent: Optional[float] = None
    seconds: float = 0.0
    rss_anon_kib: Optional[int] = None
    peak_rss_kib: Optional[int] = None
    maps: Dict[str, int] = field(default_factory=dict)
    intervals: int = 0
    series: int = 0
    failure: str = ""


IDLE_MODES = [("host_only", "bench.hostonly", ["--max-services", "0"]),
              ("gsender", "bench.default", [])]

# For comparison in the idle runs: a Python process that only wakes once an interval, on the
# same boundaries as the agent, and does a trifle (what a machine charges for waking at all).
WAKER = """
import json, sys, time
frequency, data = float(sys.argv[1]), list(range(2000))
while True:
    time.sleep(frequency - time.time() % frequency)
    with open("/dev/null", "w") as sink:
        sink.write(json.dumps(data))
"""


def idle_run(index: int, total: int, intervals: int, frequency: int) -> Dict[str, Idle]:
    """Run both modes side by side against one carbon-cache; return their figures."""
    folder = Path(tempfile.mkdtemp(prefix="gsender-bench-carbon-"))
    carbon = CarbonCache(folder)
    results = {key: Idle() for key, _, _ in IDLE_MODES}
    agents: Dict[str, Running] = {}
    waker = subprocess.Popen([sys.executable, "-c", WAKER, str(frequency)])
    waker_first: Optional[Tuple[float, float]] = None
    try:
        carbon.start()
        for key, prefix, extra in IDLE_MODES:
            tracer = Tracer(key, key, agent_command("--prefix", prefix, *extra,
                                                    frequency=frequency), agent=True)
            agents[key] = Running(tracer, carbon.port)
        # CPU from the end of the first interval (a partial one) to the end of the last.
        wait = frequency * (intervals + 2) + 30
        first = {}
        for key, agent in agents.items():
            if not agent.wait_intervals(1, wait):
                results[key].failure = "no interval reported"
            first[key] = (time.monotonic(), cpu_seconds(agent.proc.pid))
            waker_first = waker_first or (time.monotonic(), cpu_seconds(waker.pid))
        for key, agent in agents.items():
            if not agent.wait_intervals(1 + intervals, wait):
                results[key].failure = f"{agent.intervals} intervals reported, not {1 + intervals}"
            now, used = time.monotonic(), cpu_seconds(agent.proc.pid)
            result = results[key]
            result.seconds = now - first[key][0]
            result.cpu_percent = (used - first[key][1]) / result.seconds * 100
            status = proc_status(agent.proc.pid)
            result.rss_anon_kib, result.peak_rss_kib = status.get("RssAnon"), status.get("VmHWM")
            result.maps = map_memory(agent.maps)
            result.intervals = agent.intervals
        if waker_first is not None and waker.poll() is None:
            seconds = time.monotonic() - waker_first[0]
            results["waker"] = Idle(cpu_percent=(cpu_seconds(waker.pid) - waker_first[1])
                                    / seconds * 100, seconds=seconds)
    except RuntimeError as error:
        for result in results.values():
            result.failure = result.failure or str(error)
    finally:
        for key, agent in agents.items():
            if not agent.alive():
                results[key].failure = results[key].failure or "exited early"
            stderr = agent.stop_and_stderr()
            if agent.proc.returncode not in (0, -signal.SIGINT):
                results[key].failure = f"ended with {agent.proc.returncode}: {stderr[-300:]}"
        carbon.stop()
        waker.kill()
        waker.wait()
    for key, prefix, _ in IDLE_MODES:
        results[key].series = sum(1 for _ in carbon.whisper_dir.joinpath(
            *prefix.split(".")).rglob("*.wsp")) if carbon.whisper_dir.exists() else 0
    shutil.rmtree(folder, ignore_errors=True)
    if "waker" in results:
        progress(f"idle {index}/{total}: waker: CPU {results['waker'].cpu_percent:.3f} %")
    for key, result in results.items():
        if key == "waker":
            continue
        progress(f"idle {index}/{total}: {key}: " + (
            f"CPU {result.cpu_percent:.3f} % over {result.seconds:.0f} s, RssAnon "
            f"{(result.rss_anon_kib or 0) / 1024:.1f} MiB after {result.intervals} intervals, "
            f"{result.series} series in carbon"
            if not result.failure else f"FAILED: {result.failure[:300]}"))
    return results


# ---- phase 3: Graphite down ---------------------------------------------------------------------

UNDELIVERED_FIRST = 100  # RssAnon is read after this many intervals and after --undelivered


def undelivered_run(marks: Tuple[int, ...], runs: int) -> dict:
    """gsender-bcc at frequency 1 with nothing listening, ``runs`` agents side by side: RssAnon
    after each mark of intervals, and the growth per interval from the first mark to the last."""
    result: dict = {"marks": marks, "runs": [], "failure": ""}
    agents = []
    for run in range(runs):
        port = free_port()  # free a moment ago; nothing is started on it
        tracer = Tracer("gsender", "gsender-bcc, Graphite down",
                        agent_command("--prefix", f"bench.down{run}", frequency=1), agent=True)
        try:
            agents.append(Running(tracer, port))
        except RuntimeError as error:
            result["failure"] = str(error)
            break
        result["runs"].append({"port": port, "readings": [], "failure": ""})
    try:
        for mark in marks:
            for number, (agent, run) in enumerate(zip(agents, result["runs"]), start=1):
                if run["failure"]:
                    continue
                if not agent.wait_intervals(mark, mark * 1.5 + 30):
                    run["failure"] = f"{agent.intervals} intervals reported, not {mark}"
                    continue
                reading = undelivered_reading(agent)
                run["readings"].append(reading)
                progress(f"Graphite down, run {number}/{runs}: after {reading['intervals']} "
                         f"intervals RssAnon {(reading['rss_anon_kib'] or 0) / 1024:.1f} MiB, "
                         f"outbox {reading['outbox_bytes'] / 1024:.0f} KiB")
    finally:
        for agent, run in zip(agents, result["runs"]):
            if not agent.alive():
                run["failure"] = run["failure"] or "exited early"
            agent.stop_and_stderr()
    for run in result["runs"]:
        first, last = (run["readings"][0], run["readings"][-1]) if run["readings"] else ({}, {})
        run["slope_kib"] = undelivered_slope(first, last)
    return result


def undelivered_reading(agent: Running) -> dict:
    """RssAnon, peak RSS and the outbox's bytes on disk of an agent, and its intervals so far."""
    intervals = agent.intervals
    status = proc_status(agent.proc.pid)
    outbox = Path(agent._folder) / "state" / "outbox"
    stored = sum(p.stat().st_size for p in outbox.glob("*") if p.is_file()) \
        if outbox.is_dir() else 0
    return {"intervals": intervals, "rss_anon_kib": status.get("RssAnon"),
            "peak_rss_kib": status.get("VmHWM"), "outbox_bytes": stored}


def undelivered_slope(first: dict, last: dict) -> Optional[float]:
    """KiB of RssAnon more per interval from one reading to a later one (None if unknown)."""
    if not first or not last or last["intervals"] <= first["intervals"] \
            or first["rss_anon_kib"] is None or last["rss_anon_kib"] is None:
        return None
    return (last["rss_anon_kib"] - first["rss_anon_kib"]) / (last["intervals"] - first["intervals"])


# ---- phase 5: BPF map memory --------------------------------------------------------------------

# Kernel structure sizes (bytes) used below, as in Linux 6.x on x86-64; read from the running
# kernel's BTF where bpftool can.
KERNEL_STRUCTS = {"htab_elem": 48, "bucket": 16, "bpf_htab": 832, "bpf_array": 312,
                  "bpf_lru_locallist": 32, "pcpu_freelist_head": 16}
HASHTAB_MAP_LOCK_COUNT = 8  # per-CPU int counters of a hash map (before rqspinlock, 6.15)


def kernel_struct_sizes() -> Tuple[Dict[str, int], str]:
    sizes, source = dict(KERNEL_STRUCTS), "Linux 6.x x86-64 defaults"
    try:
        dump = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux",
                               "format", "raw"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sizes, source
    found = dict(re.findall(r"STRUCT '(\w+)' size=(\d+)", dump))
    for name in sizes:
        if name in found:
            sizes[name] = int(found[name])
    return sizes, "the running kernel's BTF"


def round8(n: int) -> int:
    return (n + 7) // 8 * 8


def pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def agent_maps(cpus: int, sizes: Dict[str, int], per_cgroup: bool = True,
               lock_counters: bool = True) -> List[Tuple[str, int, int, str]]:
    """Return (map, bytes the kernel counts in bytes_memlock, bytes in all, how) per map.

    The kernel's figure (htab_map_mem_usage, array_map_mem_usage) leaves out a few per-CPU
    structures; "in all" adds them.
    """
    slots = program.header_constants(
        (program.source_dir() / program.HEADER_NAME).read_text())["HIST_SLOTS"]
    stats_value = 8 * (slots + 4)   # struct latency_stats
    cgroup_value = 8 * (slots + 1)  # struct cgroup_stats
    elem, bucket = sizes["htab_elem"], sizes["bucket"]
    locks = 4 * HASHTAB_MAP_LOCK_COUNT * cpus if lock_counters else 0
    rows = []
    # last_seen: LRU hash u64 -> struct dispatches (two u64), preallocated, one LRU shared
    # by all CPUs (raw tracepoints, the default here).
    entries = program.DEFAULT_START_ENTRIES
    counted = sizes["bpf_htab"] + bucket * pow2(entries) + locks + (elem + 8 + 16) * entries
    rows.append(("last_seen", counted, counted + sizes["bpf_lru_locallist"] * cpus,
                 f"{entries} x ({elem} B htab_elem + 8 B key + 16 B value) + {pow2(entries)} "
                 f"buckets x {bucket} B; LRU lists of {sizes['bpf_lru_locallist']} B per CPU"))
    # stats: per-CPU array of one struct latency_stats.
    counted = sizes["bpf_array"] + 8 + round8(stats_value) * cpus
    rows.append(("stats", counted, counted,
                 f"{round8(stats_value)} B struct latency_stats per CPU"))
    if per_cgroup:
        # cgroup_counts: preallocated hash, plus one spare element per CPU for updates.
        entries = program.DEFAULT_MAX_CGROUPS
        element = elem + 8 + round8(cgroup_value)
        counted = (sizes["bpf_htab"] + bucket * pow2(entries) + locks
                   + element * (entries + cpus) + 8 * cpus)
        rows.append(("cgroup_counts", counted, counted + sizes["pcpu_freelist_head"] * cpus,
                     f"({entries} + 1 per CPU) x ({elem} B htab_elem + 8 B key + "
                     f"{round8(cgroup_value)} B value), shared by all CPUs; free-list heads of "
                     f"{sizes['pcpu_freelist_head']} B per CPU"))
        counted = sizes["bpf_array"] + round8(cgroup_value)
        rows.append(("zero_cgroup_stats", counted, counted, "one struct cgroup_stats"))
    return rows


def possible_cpus() -> int:
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# ---- phase 4: many services ---------------------------------------------------------------------

def services_run(count: int, repeats: int) -> dict:
    try:
        return many_services.measure(count, repeats,
                                     progress=lambda text: progress(f"services: {text}"))
    except Exception as error:  # a failed phase is reported; the others still count
        progress(f"services: FAILED: {error}")
        return {"failure": str(error)}


# ---- summarising and reporting ------------------------------------------------------------------

def summary(values: List[Optional[float]]) -> Optional[Tuple[float, float, float]]:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return statistics.median(known), min(known), max(known)


def spread(values: List[Optional[float]], spec: str = ".0f", scale: float = 1.0) -> str:
    s = summary(values)
    if s is None:
        return "-"
    median, low, high = (v * scale for v in s)
    if len([v for v in values if v is not None]) == 1:
        return format(median, spec)
    return f"{median:{spec}} ({low:{spec}}–{high:{spec}})"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b is not None and b > 0 else None


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("systemd-detect-virt") else "unknown"
    return (f"{os.cpu_count()} x {model}, {memory} GiB, kernel {platform.release()}, "
            f"virtualisation: {virt or 'none'}")


@dataclass
class Check:
    what: str
    values: List[Optional[float]]
    limit: float
    unit: str
    spec: str = ".2f"
    comparable: bool = True
    aim: bool = False  # reported, not failing the bench

    def verdict(self) -> str:
        s = summary(self.values)
        if not self.comparable:
            return NOT_COMPARABLE
        if s is None:
            return "NO (not measured)"
        median, _, high = s
        if high <= self.limit:
            return "yes"
        over = sum(1 for v in self.values if v is not None and v > self.limit)
        if median <= self.limit:
            return f"median yes ({over} of {len(self.values)} runs over)"
        return "aim missed" if self.aim else "NO"

    def failed(self) -> bool:
        return self.comparable and not self.aim and self.verdict().startswith("NO")


@dataclass
class Bench:
    runs: int
    rounds: int
    block: int
    frequency: int
    idle_intervals: int
    order: List[List[str]] = field(default_factory=list)
    cost: List[Dict[str, Trial]] = field(default_factory=list)
    idle: List[Dict[str, Idle]] = field(default_factory=list)
    undelivered: dict = field(default_factory=dict)
    services: dict = field(default_factory=dict)
    compiles: dict = field(default_factory=dict)
    seconds: float = 0.0

    def trial_values(self, key: str, attribute: str) -> List[Optional[float]]:
        return [getattr(run[key], attribute) if key in run else None for run in self.cost]

    def ratios(self, ours: str, peer: str) -> List[Optional[float]]:
        return [ratio(run[ours].added_ns, run[peer].added_ns)
                if ours in run and peer in run else None for run in self.cost]

    def idle_values(self, key: str, get: Callable[[Idle], Optional[float]]) -> list:
        return [None if run[key].failure else get(run[key]) for run in self.idle]


def report(bench: Bench, all_tracers: List[Tracer]) -> Tuple[str, bool]:
    by_key = {t.key: t for t in all_tracers}
    n = len(bench.cost)
    lines = [f"Machine: {machine()}", "",
             f"Method: {n} full runs. In each, the tracers take turns in an order rotated by one "
             f"from the previous run (run 1: {', '.join(bench.order[0]) if bench.order else '-'}),"
             f" with a block of {bench.block} baseline runs of pingpong (no tracer) before the "
             f"first tracer, between any two, and after the last. A tracer's added cost is the "
             f"median of its {bench.block} runs minus the median of the baseline blocks on either "
             f"side; each run is {bench.rounds} round trips. Ratios are taken within a run. Every "
             f"figure below is the median over the runs, with the range (min–max) in brackets. "
             f"gsender-bcc runs from byte-compiled modules, as installed from its .deb.",
             "", "## Cost per tracer", "",
             "| tracer | added ns / round trip | ns / BPF run | attach s | BPF maps MiB "
             "(bytes_memlock) | RssAnon MiB after its runs | peak RSS MiB | survived |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for tracer in all_tracers:
        key = tracer.key
        survived = sum(1 for run in bench.cost if key in run and run[key].survived)
        maps = [v and v / 2**20 for v in bench.trial_values(key, "maps_bytes")]
        rss = [v and v / 1024 for v in bench.trial_values(key, "rss_anon_kib")]
        peak = [v and v / 1024 for v in bench.trial_values(key, "peak_rss_kib")]
        lines.append(f"| {tracer.label} | {spread(bench.trial_values(key, 'added_ns'))} | "
                     f"{spread(bench.trial_values(key, 'ns_per_run'), '.1f')} | "
                     f"{spread(bench.trial_values(key, 'attach_s'), '.2f')} | "
                     f"{spread(maps, '.2f')} | {spread(rss, '.1f')} | {spread(peak, '.1f')} | "
                     f"{survived}/{n} |")
    failures = sorted({f"{by_key[k].label}: {t.failure}" for run in bench.cost
                       for k, t in run.items() if t.failure})
    notes = [f"- {t.label}: {t.caveat}" for t in all_tracers if t.caveat]
    notes += [f"- failed: {f[:300]}" for f in failures]
    notes.append("- ns / BPF run leaves out the tracepoint's own argument marshalling, which "
                 "is where classic and raw tracepoints differ; added ns / round trip has it.")
    notes.append("- the empty programs and both peers attach to sched_wakeup, sched_wakeup_new "
                 "and sched_switch; gsender-bcc on raw tracepoints attaches to sched_switch, "
                 "where it reads the wait the scheduler already measured (README: What is "
                 "measured), and to sched_process_free, which a round trip never runs. Each "
                 "round trip runs its sched_switch program twice, and the others' programs four "
                 "times.")
    waited = sum(waited_for_quiet) - 2.0 * len(waited_for_quiet)
    if waited > 1:
        notes.append(f"- the machine was busy with other work at times: the bench waited "
                     f"{waited:.0f} s in all for it to be quiet (< 10 % busy) before a phase.")
    waker = [run["waker"].cpu_percent for run in bench.idle if "waker" in run]
    if waker:
        notes.append(f"- for comparison with the idle CPU below: a Python process that only wakes "
                     f"once an interval (frequency {bench.frequency}, on the same boundaries) and "
                     f"serialises a short list used {spread(waker, '.3f')} % of a core over the "
                     f"same windows: what this machine charges for waking at all.")
    if other_cpu_busy:
        notes.append(f"- quiet machine check: while the baseline blocks ran pingpong on CPU 0, "
                     f"CPU 1 was busy {spread(other_cpu_busy, '.1f')} % of the time (the bench "
                     f"itself idle; anything well above 0 is other work on the machine).")
    lines += ["", "Notes:"] + notes

    # Side by side: host-only and default.
    modes = ("host_only", "gsender")
    bcc_comparable = not by_key["bcc"].caveat
    rows = [("added ns / round trip", [bench.trial_values(m, "added_ns") for m in modes], ".0f"),
            ("/ empty programs, classic tracepoints",
             [bench.ratios(m, "floor") for m in modes], ".2f"),
            ("/ empty programs, raw tracepoints",
             [bench.ratios(m, "raw_floor") for m in modes], ".2f"),
            ("/ bpftrace runqlat.bt", [bench.ratios(m, "bpftrace") for m in modes], ".2f"),
            ("/ bcc runqlat" + ("" if bcc_comparable else f" ({NOT_COMPARABLE})"),
             [bench.ratios(m, "bcc") for m in modes], ".2f"),
            ("attach s", [bench.trial_values(m, "attach_s") for m in modes], ".2f")]
    if bench.idle:
        rows += [(f"CPU % of a core, idle, {bench.idle_intervals} intervals at frequency "
                  f"{bench.frequency}", [bench.idle_values(m, lambda r: r.cpu_percent)
                                         for m in modes], ".3f"),
                 (f"RssAnon MiB after {bench.idle_intervals + 1} intervals sent to carbon-cache",
                  [bench.idle_values(m, lambda r: r.rss_anon_kib and r.rss_anon_kib / 1024)
                   for m in modes], ".1f"),
                 ("peak RSS MiB", [bench.idle_values(m, lambda r: r.peak_rss_kib and
                                                     r.peak_rss_kib / 1024) for m in modes],
                  ".1f"),
                 ("BPF maps MiB (bytes_memlock)",
                  [bench.idle_values(m, lambda r: sum(r.maps.values()) / 2**20 if r.maps else None)
                   for m in modes], ".2f"),
                 ("series stored by carbon-cache",
                  [bench.idle_values(m, lambda r: r.series) for m in modes], ".0f")]
    lines += ["", "## gsender-bcc: host-only and default side by side", "",
              "| figure | host-only (--max-services 0) | default (breakdown on) |",
              "|---|---:|---:|"]
    for what, (host_values, default_values), spec in rows:
        lines.append(f"| {what} | {spread(host_values, spec)} | {spread(default_values, spec)} |")
    lines.append(f"| default added cost / host-only added cost | | "
                 f"{spread(bench.ratios('gsender', 'host_only'), '.2f')} |")

    # Memory.
    checks = [
        Check("added cost / bpftrace runqlat.bt", bench.ratios("gsender", "bpftrace"), 0.45, "x"),
        Check("added cost / bcc runqlat", bench.ratios("gsender", "bcc"), 0.75, "x",
              comparable=bcc_comparable),
        Check("added cost / empty programs, classic tracepoints",
              bench.ratios("gsender", "floor"), 1.8, "x"),
        Check("added cost / empty programs, raw tracepoints (the kind the agent uses)",
              bench.ratios("gsender", "raw_floor"), 1.8, "x"),
        Check("added cost / host-only added cost", bench.ratios("gsender", "host_only"), 1.15,
              "x", aim=True),
        Check("attach, s", bench.trial_values("gsender", "attach_s"), 0.5, " s"),
    ]
    if bench.idle:
        checks += [
            Check(f"CPU while idle at frequency {bench.frequency}, % of one core",
                  bench.idle_values("gsender", lambda r: r.cpu_percent), 0.2, " %", ".3f"),
            Check(f"RssAnon after {bench.idle_intervals + 1} intervals sent to carbon-cache, MiB",
                  bench.idle_values("gsender", lambda r: r.rss_anon_kib and
                                    r.rss_anon_kib / 1024), 40, " MiB", ".1f"),
        ]
    memory_lines = ["", "## Memory", ""]
    memory_lines += undelivered_lines(bench.undelivered, checks)
    sizes, source = kernel_struct_sizes()
    here = possible_cpus()
    measured = next((run["gsender"].maps for run in reversed(bench.idle)
                     if run["gsender"].maps), {})
    measured_host = next((run["host_only"].maps for run in reversed(bench.idle)
                          if run["host_only"].maps), {})
    # Kernels with rqspinlock (6.15 and later) no longer have the per-CPU lock counters: take
    # the variant that matches what this kernel reports, and count them at 256 CPUs anyway.
    lock_counters = next((flag for flag in (True, False) if measured and sum(
        r[1] for r in agent_maps(here, sizes, lock_counters=flag)) == sum(measured.values())),
        True)
    computed_here = agent_maps(here, sizes, lock_counters=lock_counters)
    computed_256 = agent_maps(256, sizes, lock_counters=True)
    memory_lines += ["", f"BPF maps of gsender-bcc default, computed from the map definitions "
                     f"(structure sizes from {source}) and read with `bpftool map show --json` "
                     f"while it ran (bytes_memlock):", "",
                     f"| map | computed, {here} CPUs (as the kernel counts) | measured here | "
                     f"computed, 256 CPUs, in all | how |", "|---|---:|---:|---:|---|"]
    for (name, counted, _, how), (_, _, all_256, _) in zip(computed_here, computed_256):
        seen = next((v for k, v in measured.items() if name.startswith(k) or k.startswith(name)),
                    None)
        memory_lines.append(f"| {name} | {counted / 2**20:.3f} MiB | "
                            f"{fmt_mib(seen)} | {all_256 / 2**20:.2f} MiB | {how} |")
    total_256 = sum(r[2] for r in computed_256)
    host_256 = sum(r[2] for r in agent_maps(256, sizes, per_cgroup=False))
    memory_lines.append(f"| total | {sum(r[1] for r in computed_here) / 2**20:.3f} MiB | "
                        f"{fmt_mib(sum(measured.values()) if measured else None)} | "
                        f"{total_256 / 2**20:.2f} MiB | |")
    memory_lines += ["", f"Host-only mode has last_seen and stats only: "
                     f"{host_256 / 2**20:.2f} MiB at 256 CPUs computed, "
                     f"{fmt_mib(sum(measured_host.values()) if measured_host else None)} measured "
                     f"here. The programs' own images and the verifier's memory are not maps "
                     f"and are left out; so is the per-CPU allocator's slack."]
    checks.append(Check("BPF map memory at 256 CPUs (computed), MiB", [total_256 / 2**20], 16,
                        " MiB"))

    services_lines: List[str] = []
    result = bench.services
    if result.get("all_changed"):
        few, every = result["few_changed"], result["all_changed"]
        checks.append(Check(f"one interval with {result['count']} services, all changed, ms",
                            every["ms"], 20, " ms", ".1f"))
        services_lines = [
            "", f"## One interval with {result['count']} live services", "",
            f"{result['count']} cgroups under {result['mount']}, each with a process waking "
            f"every {many_services.TICK_MS} ms; the BPF program loaded as the agent does, with "
            f"{result['map_entries']} entries in its cgroup map. Timed in-process: "
            f"`Sampler.measure` (read_snapshot, delta) and `Sampler.services` (resolve, "
            f"by_service, top_services, cpu.pressure, interval_stats for the top "
            f"{every['series_sent'] - 1} and other), {result['repeats']} intervals each:", "",
            f"- all {result['count']} changed since the previous reading: "
            f"{spread(every['ms'], '.1f')} ms",
            f"- none of them changed (every entry read, unchanged ones reused): "
            f"{spread(few['ms'], '.1f')} ms",
            f"- the first interval, which walks the cgroup tree: {result['first_ms']:.1f} ms",
            "- all changed, by stage (medians, ms): " + ", ".join(
                f"{k} {v:.1f}" for k, v in result["stages_ms"].items()),
            "- profile (cProfile, which slows pure Python more than C; ms per interval): "
            + "; ".join(result.get("profile", [])),
        ]
        pages = result.get("pages")
        if pages:
            services_lines.append(
                f"- this machine's memory after a pause: writing one byte in each of "
                f"{pages['pages']} pages (as many as the map's values fill) takes "
                f"{pages['warm_ms']:.2f} ms warm and {pages['after_pause_ms']:.2f} ms after "
                f"the same {pages['pause_s']:g} s pause the timed readings follow; every "
                f"interval of the agent starts after such a pause.")
    elif result.get("failure"):
        services_lines = ["", f"## Many live services: FAILED: {result['failure']}"]

    lines += ["", "## Targets (gsender-bcc default: per-service breakdown on)", "",
              "| target | median | range over the runs | limit | met |",
              "|---|---:|---:|---:|---|"]
    failed = False
    for check in checks:
        s = summary(check.values)
        lines.append(f"| {check.what} | {'-' if s is None else format(s[0], check.spec)} | "
                     f"{'-' if s is None else f'{s[1]:{check.spec}}–{s[2]:{check.spec}}'} | "
                     f"{'aim ' if check.aim else ''}{check.limit}{check.unit} | "
                     f"{check.verdict()} |")
        failed |= check.failed()
    lines += memory_lines + services_lines
    if bench.compiles:
        lines += [""] + compile_cost.compile_report(bench.compiles, spread)
    return "\n".join(lines), not failed


def undelivered_lines(undelivered: dict, checks: List[Check]) -> List[str]:
    """The Graphite-down figures for the memory section, and their targets added to checks."""
    runs = undelivered.get("runs", [])
    if not runs:
        return [f"- Graphite down: FAILED: {undelivered['failure']}"] \
            if undelivered.get("failure") else []
    marks = undelivered["marks"]
    last = len(marks) - 1  # a run that failed before a mark has no reading for it

    def at(index: int, key: str, scale: float = 1.0) -> List[Optional[float]]:
        return [run["readings"][index][key] * scale if len(run["readings"]) > index
                and run["readings"][index][key] is not None else None for run in runs]
    slopes = [run["slope_kib"] for run in runs]
    failures = [f"run {n}: {run['failure']}" for n, run in enumerate(runs, 1) if run["failure"]]
    failures += [undelivered["failure"]] if undelivered["failure"] else []
    lines = [f"- Graphite down (issues 11 and 28): {len(runs)} agents side by side, default "
             f"configuration at frequency 1, nothing listening on their ports. RssAnon after "
             f"{marks[0]} undelivered intervals {spread(at(0, 'rss_anon_kib', 1 / 1024), '.1f')} "
             f"MiB, after {marks[-1]} {spread(at(last, 'rss_anon_kib', 1 / 1024), '.1f')} MiB "
             f"(outbox {spread(at(last, 'outbox_bytes', 1 / 1024), '.0f')} KiB on disk); growth "
             f"between them {spread(slopes, '.3f')} KiB per interval (median and range over the "
             f"runs; one page of 4 KiB over {marks[-1] - marks[0]} intervals is "
             f"{4 / (marks[-1] - marks[0]):.3f})."
             + (f" FAILED: {'; '.join(failures)}" if failures else "")]
    checks.append(Check(f"RssAnon after {marks[-1]} undelivered intervals, MiB",
                        at(last, "rss_anon_kib", 1 / 1024), 40, " MiB", ".1f"))
    checks.append(Check(f"RssAnon growth per undelivered interval, {marks[0]} to {marks[-1]}, "
                        f"KiB", slopes, 0.1, " KiB", ".3f", aim=True))
    return lines


def fmt_mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.3f} MiB"


# ---- main ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="full runs (default 5)")
    parser.add_argument("--rounds", type=int, default=200000, help="round trips per pingpong")
    parser.add_argument("--block", type=int, default=5,
                        help="pingpong runs per tracer and per baseline block")
    parser.add_argument("--idle-intervals", type=int, default=4)
    parser.add_argument("--frequency", type=int, default=DEFAULT_FREQUENCY,
                        help="gsender-bcc's frequency in the idle phase")
    parser.add_argument("--undelivered", type=int, default=1000,
                        help=f"intervals with Graphite down (RssAnon read after "
                             f"{UNDELIVERED_FIRST} and after these)")
    parser.add_argument("--undelivered-runs", type=int, default=3,
                        help="agents with Graphite down, side by side (default 3)")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--services-repeats", type=int, default=9)
    parser.add_argument("--compiles", type=int, default=5,
                        help="compiles against each of the include tree and kernel headers")
    parser.add_argument("--skip", default="", help="phases to leave out, comma-separated: "
                                                    "cost,idle,undelivered,services,compile")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if os.geteuid() != 0:
        print("bench: needs root to load BPF programs: run 'sudo make bench'", file=sys.stderr)
        return 77
    if args.record and skip:
        print("bench: --record writes the whole page: leave --skip out", file=sys.stderr)
        return 2
    build_helpers()
    all_tracers = tracers()
    bench = Bench(args.runs, args.rounds, args.block, args.frequency, args.idle_intervals)
    sink = DiscardSink()
    try:
        for run in range(args.runs):
            if "cost" not in skip:
                wait_for_quiet()
                shift = run % len(all_tracers)
                order = all_tracers[shift:] + all_tracers[:shift]
                bench.order.append([t.key for t in order])
                progress(f"run {run + 1}/{args.runs}: cost per round trip, order "
                         f"{', '.join(t.key for t in order)}")
                bench.cost.append(cost_run(run + 1, args.runs, order, args.rounds, args.block,
                                           sink.port))
            if "idle" not in skip:
                wait_for_quiet()
                progress(f"run {run + 1}/{args.runs}: idle, both modes, "
                         f"{args.idle_intervals} intervals of {args.frequency} s")
                bench.idle.append(idle_run(run + 1, args.runs, args.idle_intervals,
                                           args.frequency))
    finally:
        sink.close()
    if "undelivered" not in skip:
        wait_for_quiet()
        progress(f"Graphite down: {args.undelivered_runs} agents, {args.undelivered} intervals "
                 f"at frequency 1")
        bench.undelivered = undelivered_run(
            tuple(sorted({min(UNDELIVERED_FIRST, args.undelivered), args.undelivered})),
            args.undelivered_runs)
    if "services" not in skip:
        wait_for_quiet()
        progress(f"{args.services} live services")
        bench.services = services_run(args.services, args.services_repeats)
    if "compile" not in skip:
        wait_for_quiet()
        progress(f"compiling the program {args.compiles} times against the include tree and "
                 f"against kernel headers")
        bench.compiles = compile_cost.compile_run(args.compiles)
    bench.seconds = time.monotonic() - started_at
    table, all_met = report(bench, all_tracers)
    print(table)
    progress(f"done in {bench.seconds / 60:.1f} min")
    if args.record:
        page = ROOT / "docs" / "benchmarks.md"
        page.parent.mkdir(exist_ok=True)
        page.write_text(f"# Benchmarks\n\nRecorded by `make bench` on {time.strftime('%Y-%m-%d')}"
                        f", in {bench.seconds / 60:.0f} minutes. {BENCH_NOTES}\n\n{table}\n")
    return 0 if all_met else 1


BENCH_NOTES = ("Added cost is what a workload feels: nanoseconds per pipe round trip between two "
               "processes pinned to one CPU (two wakeups and two context switches) with the "
               "tracer attached, minus without. gsender-bcc runs as deployed: default "
               "configuration, frequency 15, sending to Graphite on loopback (a listener that "
               "drops the data in the cost runs, a throwaway carbon-cache in the idle runs).")

if __name__ == "__main__":
    sys.exit(main())
