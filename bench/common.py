"""What every phase of the bench shares: the paths, the tracers' processes and their figures
read from /proc and bpftool, waiting for a quiet machine, and the one way figures are summed
up (the median over the runs, with the range) and checked against their targets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
PINGPONG = BUILD / "pingpong"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
AGENT = [str(ROOT / ".venv" / "bin" / "gsender-bcc")]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

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


# ---- reading a tracer's process ---------------------------------------------------------------

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


# ---- a quiet machine ---------------------------------------------------------------------------

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


# ---- summarising ------------------------------------------------------------------------------

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
