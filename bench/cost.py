"""Phase 1: what each tracer adds to a pipe round trip, against baseline blocks on either side."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common import (PINGPONG, PYTHON, Running, Tracer, agent_command, bpftool, map_memory,
                    proc_status, progress)

# The floor: empty programs on the hooks the agent attaches to by default (raw tracepoints).
EMPTY_RAW = """
RAW_TRACEPOINT_PROBE(sched_wakeup) { return 0; }
RAW_TRACEPOINT_PROBE(sched_wakeup_new) { return 0; }
RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }
RAW_TRACEPOINT_PROBE(sched_process_free) { return 0; }
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


def tracers() -> List[Tracer]:
    headers = headers_note()
    return [
        Tracer("raw_floor", "empty programs on the agent's raw tracepoints (the floor)",
               [PYTHON, "-c", EMPTY_LOADER, EMPTY_RAW], ready_text="attached"),
        Tracer("host_only", "gsender-bcc host-only (--max-services 0)",
               agent_command("--max-services", "0"), agent=True),
        Tracer("breakdown", "gsender-bcc breakdown without attribution (--max-culprits 0)",
               agent_command("--max-culprits", "0"), agent=True),
        Tracer("gsender", "gsender-bcc default (breakdown and culprit attribution on)",
               agent_command(), agent=True),
        Tracer("bpftrace", "bpftrace runqlat.bt (the original tool's tracer)",
               ["bpftrace", "/usr/sbin/runqlat.bt"], ready_text="Tracing CPU scheduler"),
        Tracer("bcc", "bcc runqlat-bpfcc", ["/usr/sbin/runqlat-bpfcc"],
               ready_text="Tracing run queue latency", caveat=headers),
        # Line-buffered: on a pipe it would hold its "Tracing" line until it exits.
        Tracer("libbpf", "libbpf-tools runqlat (CO-RE)", ["stdbuf", "-oL", "/usr/sbin/runqlat"],
               ready_text="Tracing run queue latency"),
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


def round_trip_ns(rounds: int) -> float:
    return float(subprocess.run([str(PINGPONG), str(rounds)], capture_output=True, text=True,
                                check=True).stdout)


def program_stats() -> Dict[int, dict]:
    return {p["id"]: p for p in bpftool("prog", "show")}


def program_time(programs: set, rounds: int) -> Tuple[Optional[float], ...]:
    """Time a round trip with kernel.bpf_stats_enabled on; return the ns per run of the
    programs, their ns in all per round trip and their runs per round trip (None each if they
    did not run). The programs trace every CPU: what else runs meanwhile counts too."""
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
    return (spent / count, spent / rounds, count / rounds) if count else (None, None, None)


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


@dataclass
class Trial:
    """One tracer in one run."""

    added_ns: Optional[float] = None
    ns_per_run: Optional[float] = None
    bpf_ns_per_round_trip: Optional[float] = None  # the programs' time, all runs of a round trip
    runs_per_round_trip: Optional[float] = None
    attach_s: Optional[float] = None
    maps: Dict[str, int] = field(default_factory=dict)  # bytes_memlock per map
    rss_anon_kib: Optional[int] = None
    peak_rss_kib: Optional[int] = None
    survived: bool = False
    failure: str = ""

    @property
    def maps_bytes(self) -> Optional[int]:
        return sum(self.maps.values()) if self.maps else None


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
        (trial.ns_per_run, trial.bpf_ns_per_round_trip,
         trial.runs_per_round_trip) = program_time(running.programs, rounds)
        trial.maps = map_memory(running.maps) if running.maps else {}
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
