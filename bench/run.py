"""make bench: what each run-queue latency tracer costs the host, measured side by side.

For every tracer, on this machine, in one run:
- added ns per pipe round trip of two processes pinned to one CPU (2 wakeups and
  2 context switches each), tracer attached minus no tracer, with baseline runs
  interleaved before and after each tracer and medians of several runs;
- ns per BPF program run, from kernel.bpf_stats_enabled (run_time_ns / run_cnt),
  measured in a separate pass because the statistics cost time themselves;
- time from process start to probes attached, private memory (RssAnon) and peak
  RSS, and whether the tracer survived the load.
gsender-bcc's CPU use over an idle period at the default frequency is measured too.

Prints a table and the ratios checked against the targets, writes the run to
docs/benchmarks.md (with --record), and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / "build"
PINGPONG = BUILD / "pingpong"
AGENT = [str(ROOT / ".venv" / "bin" / "gsender-bcc")]

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
EMPTY_LOADER = """
import signal, sys, bcc
b = bcc.BPF(text=sys.argv[1])
print("attached", flush=True)
signal.sigwait({signal.SIGINT, signal.SIGTERM})
b.cleanup()
"""

TARGETS = [  # (what, ratio key, limit)
    ("added cost / bpftrace runqlat.bt", "vs_bpftrace", 0.45),
    ("added cost / bcc runqlat", "vs_bcc", 0.75),
    ("added cost / empty classic tracepoints", "vs_floor", 1.8),
]


@dataclass
class Tracer:
    key: str
    label: str
    command: List[str]
    ready_text: Optional[str] = None  # a line on stdout that says it is attached
    notify: bool = False              # or READY=1 on a NOTIFY_SOCKET
    caveat: str = ""


@dataclass
class Result:
    tracer: Tracer
    added_ns: Optional[float] = None
    tracer_ns: List[float] = field(default_factory=list)
    baseline_ns: List[float] = field(default_factory=list)
    ns_per_run: Optional[float] = None
    attach_s: List[float] = field(default_factory=list)
    rss_anon_kib: Optional[int] = None
    peak_rss_kib: Optional[int] = None
    survived: str = "yes"


def tracers() -> List[Tracer]:
    python = str(ROOT / ".venv" / "bin" / "python")
    headers = headers_note()
    return [
        Tracer("floor", "empty programs, classic tracepoints",
               [python, "-c", EMPTY_LOADER, EMPTY_CLASSIC], ready_text="attached"),
        Tracer("raw_floor", "empty programs, raw tracepoints",
               [python, "-c", EMPTY_LOADER, EMPTY_RAW], ready_text="attached"),
        Tracer("gsender", "gsender-bcc",
               AGENT + ["--stdout", "--config", "/dev/null", "--frequency", "15"], notify=True),
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
                f"task_struct fields at the headers' offsets, which may be wrong here")
    return ""


# ---- measuring --------------------------------------------------------------------------------

def build_helpers() -> None:
    BUILD.mkdir(parents=True, exist_ok=True)
    source = ROOT / "bench" / "pingpong.c"
    if not PINGPONG.exists() or PINGPONG.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(PINGPONG), str(source)],
                       check=True)


def round_trip_ns(rounds: int) -> float:
    return float(subprocess.run([str(PINGPONG), str(rounds)], capture_output=True, text=True,
                                check=True).stdout)


def program_stats() -> Dict[int, dict]:
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


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
    """One tracer process, started and waited for until attached."""

    def __init__(self, tracer: Tracer, timeout: float = 60.0):
        self.tracer = tracer
        env = dict(os.environ)
        listener = self._listener = None
        if tracer.notify:
            folder = tempfile.mkdtemp(prefix="gsender-bench-")
            env["NOTIFY_SOCKET"] = os.path.join(folder, "notify.sock")
            listener = self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(env["NOTIFY_SOCKET"])
        before = set(program_stats())
        started = time.monotonic()
        self.proc = subprocess.Popen(tracer.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        if listener is not None:
            listener.settimeout(timeout)
            while b"READY=1" not in listener.recv(4096):
                pass
            # Keep the socket until the agent stops: its later notifications (a status line per
            # interval) wait in the socket buffer, far below its size.
        else:
            deadline = started + timeout
            while True:
                line = self.proc.stdout.readline()
                if not line or time.monotonic() > deadline:
                    raise RuntimeError(f"{tracer.label} did not attach: "
                                       f"{self.stop_and_stderr()[-300:]}")
                if tracer.ready_text in line:
                    break
        self.attach_s = time.monotonic() - started
        self.programs = set(program_stats()) - before
        # Drain stdout so a chatty tracer never blocks on a full pipe.
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop_and_stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        stderr = self.proc.stderr.read() if self.proc.stderr else ""
        if getattr(self, "_drain", None):
            self._drain.wait(5)
        if self._listener is not None:
            self._listener.close()
        return stderr


def measure(tracer: Tracer, rounds: int, runs: int, attaches: int) -> Result:
    result = Result(tracer)
    result.baseline_ns += [round_trip_ns(rounds) for _ in range(runs)]
    try:
        running = Running(tracer)
    except RuntimeError as error:
        result.survived = f"no: {error}"
        return result
    try:
        result.attach_s.append(running.attach_s)
        round_trip_ns(rounds)  # warm-up
        result.tracer_ns += [round_trip_ns(rounds) for _ in range(runs)]
        result.ns_per_run = ns_per_program_run(running.programs, rounds)
        if running.alive():
            status = proc_status(running.proc.pid)
            result.rss_anon_kib, result.peak_rss_kib = status.get("RssAnon"), status.get("VmHWM")
    finally:
        alive = running.alive()
        stderr = running.stop_and_stderr()
        if not alive:
            result.survived = f"no: exited early: {stderr.strip()[-200:]}"
    result.baseline_ns += [round_trip_ns(rounds) for _ in range(runs)]
    for _ in range(attaches - 1):
        again = Running(tracer)
        result.attach_s.append(again.attach_s)
        again.stop_and_stderr()
    result.added_ns = statistics.median(result.tracer_ns) - statistics.median(result.baseline_ns)
    return result


def ns_per_program_run(programs, rounds: int) -> Optional[float]:
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


def idle_cpu_percent(seconds: float) -> Optional[float]:
    """Return gsender-bcc's CPU use over ``seconds``, or None if it did not run throughout."""
    gsender = next(t for t in tracers() if t.key == "gsender")
    running = Running(gsender)
    try:
        time.sleep(1)
        first = cpu_seconds(running.proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(running.proc.pid) - first
        if not running.alive():
            print(f"bench: gsender-bcc exited during the idle period", file=sys.stderr)
            return None
        return used / seconds * 100
    finally:
        stderr = running.stop_and_stderr()
        if running.proc.returncode not in (0, -signal.SIGINT):
            print(f"bench: gsender-bcc ended with {running.proc.returncode}: {stderr[-500:]}",
                  file=sys.stderr)


# ---- reporting --------------------------------------------------------------------------------

def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip() \
        if os.path.exists("/usr/bin/systemd-detect-virt") else "unknown"
    return (f"{os.cpu_count()} x {model}, {memory} GiB, kernel {platform.release()}, "
            f"virtualisation: {virt or 'none'}")


def fmt(value, spec=".0f", missing="-"):
    return missing if value is None else format(value, spec)


def report(results: Dict[str, Result], idle_cpu: float, rounds: int, runs: int,
           idle_seconds: float) -> (str, bool):
    lines = [f"Machine: {machine()}",
             f"Workload: pingpong, {rounds} round trips per run, median of {runs} runs with the "
             f"tracer, baseline median of {2 * runs} runs interleaved before and after.", "",
             "| tracer | added ns / round trip | ns / BPF run | attach s (median) | RssAnon MiB | "
             "peak RSS MiB | survived |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results.values():
        attach = statistics.median(r.attach_s) if r.attach_s else None
        lines.append(f"| {r.tracer.label} | {fmt(r.added_ns)} | {fmt(r.ns_per_run, '.1f')} | "
                     f"{fmt(attach, '.2f')} | {fmt(r.rss_anon_kib and r.rss_anon_kib / 1024, '.1f')}"
                     f" | {fmt(r.peak_rss_kib and r.peak_rss_kib / 1024, '.1f')} | {r.survived} |")
    notes = [f"- {r.tracer.label}: {r.tracer.caveat}" for r in results.values() if r.tracer.caveat]
    if notes:
        lines += ["", "Caveats:"] + notes

    ours = results["gsender"]
    ratios = {}
    for key, peer in (("vs_bpftrace", "bpftrace"), ("vs_bcc", "bcc"), ("vs_floor", "floor")):
        theirs = results[peer].added_ns
        if ours.added_ns is not None and theirs:
            ratios[key] = ours.added_ns / theirs
    attach = statistics.median(ours.attach_s) if ours.attach_s else None
    checks = [(what, ratios.get(key), limit, "x") for what, key, limit in TARGETS]
    checks += [("gsender-bcc attach, median s", attach, 0.5, " s"),
               (f"gsender-bcc CPU over {idle_seconds:.0f} idle s at frequency 15, % of one core",
                idle_cpu, 0.2, " %"),
               ("gsender-bcc RssAnon, MiB", ours.rss_anon_kib and ours.rss_anon_kib / 1024, 40,
                " MiB")]
    lines += ["", "| target | measured | limit | met |", "|---|---:|---:|---|"]
    all_met = True
    for what, value, limit, unit in checks:
        met = value is not None and value <= limit
        all_met &= met
        lines.append(f"| {what} | {fmt(value, '.3f')} | {limit}{unit} | {'yes' if met else 'NO'} |")
    return "\n".join(lines), all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--attaches", type=int, default=5, help="starts per tracer to time attach")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root to load BPF programs: run 'sudo make bench'", file=sys.stderr)
        return 77
    build_helpers()
    results = {}
    for tracer in tracers():
        print(f"bench: {tracer.label} ...", file=sys.stderr, flush=True)
        results[tracer.key] = measure(tracer, args.rounds, args.runs, args.attaches)
    print(f"bench: gsender-bcc idle for {args.idle_seconds:.0f}s ...", file=sys.stderr, flush=True)
    idle = idle_cpu_percent(args.idle_seconds)
    table, all_met = report(results, idle, args.rounds, args.runs, args.idle_seconds)
    print(table)
    if args.record:
        page = ROOT / "docs" / "benchmarks.md"
        page.parent.mkdir(exist_ok=True)
        page.write_text(f"# Benchmarks\n\nRecorded by `make bench` on "
                        f"{time.strftime('%Y-%m-%d')}. {BENCH_NOTES}\n\n{table}\n")
    return 0 if all_met else 1


BENCH_NOTES = ("Added cost is what a workload feels: nanoseconds per pipe round trip (two wakeups "
               "and two context switches) with the tracer attached, minus without. ns / BPF run "
               "leaves out the tracepoint's own argument marshalling, which is where classic "
               "and raw tracepoints differ.")

if __name__ == "__main__":
    sys.exit(main())
