"""make bench: what each run-queue latency tracer costs this host, measured side by side.

Run it as `make bench`, which holds /tmp/gsender-heavy.lock throughout so that no other heavy
job (tests, VMs) shares the machine while it times. Phases, with progress on stderr:

1. Cost per round trip, RUNS times over. Tracers, all timing the same wait: empty programs
   on the raw tracepoints the agent uses (the floor), gsender-bcc host-only
   (--max-services 0), gsender-bcc's breakdown without culprit attribution (--max-culprits
   0), gsender-bcc as deployed (breakdown and attribution on), bpftrace's runqlat.bt, bcc's
   runqlat and libbpf-tools' runqlat. In
   each run the tracers take turns in an order rotated by one from the previous run, with
   a block of baseline runs (no tracer) before the first, between any two and after the
   last. A tracer's added cost is the median of its round trips minus the median of the
   baseline blocks on either side. Each run also gives the ns per BPF program run
   (kernel.bpf_stats_enabled, a separate round trip run as the statistics cost time
   themselves) and the programs' time per round trip from the same, the time to attach,
   the bytes_memlock of its BPF maps and its RssAnon. Ratios are taken within a run, then
   summarised over the runs.
2. gsender-bcc idle, once a run: host-only, attribution off and the default side by side, each
   sending to a throwaway carbon-cache on loopback at the default frequency; CPU over four
   intervals, then RssAnon, peak RSS and bytes_memlock.
3. gsender-bcc with Graphite down: frequency 1, nothing listening on its port; RssAnon
   after 100 and after 1000 undelivered intervals, and the slope between them in KiB per
   interval (issues 11 and 28). UNDELIVERED_RUNS agents run side by side, each its own run
   (memory, not time, is measured), so the phase takes about 17 minutes however many.
4. One interval with 1000 live services, timed in-process (bench/many_services.py), with
   attribution off (the default) and on; and the same cgroups as 1000 docker containers, each
   named from its config.v2.json (bench/many_containers.py, in a process of its own),
   attribution off.
5. BPF map memory of the agent computed from the map definitions at 256 CPUs, for the
   default and with attribution, beside bytes_memlock read on this machine while the agent
   ran in phase 2 (or else 1).
6. BCC's compile of the program against the package's include tree beside the same compile
   against the distro's kernel headers, each in a fresh process: seconds and peak RSS
   (bench/compile_cost.py).

Every figure is given as the median over the runs and the range (min-max). Writes
docs/benchmarks.md with --record; exits 1 if a target is missed.

Each phase is measured in its own module beside this one (cost.py, idle.py, undelivered.py,
many_services.py, many_containers.py, map_memory.py, compile_cost.py), which also writes its
part of the report where it has one; common.py holds what they share: starting a tracer and
reading its process, waiting for a quiet machine, and summarising figures as medians with
ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import common  # (bench/, beside this file; it puts the agent and scripts/ on the path)
import compile_cost
import many_containers
import many_services
from common import (BUILD, DEFAULT_FREQUENCY, NOT_COMPARABLE, PINGPONG, PYTHON, ROOT, Check,
                    Tracer, progress, ratio, spread, summary, wait_for_quiet, waited_for_quiet)
from cost import DiscardSink, Trial, cost_run, other_cpu_busy, tracers
from idle import Idle, idle_run
from map_memory import map_memory_lines
from undelivered import UNDELIVERED_FIRST, undelivered_lines, undelivered_run


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


# ---- phase 4: many services ---------------------------------------------------------------------

def services_run(count: int, repeats: int) -> dict:
    """The services' figures, and under "containers" the same cgroups as docker containers'."""
    try:
        result = many_services.measure(count, repeats,
                                       progress=lambda text: progress(f"services: {text}"))
    except Exception as error:  # a failed phase is reported; the others still count
        progress(f"services: FAILED: {error}")
        return {"failure": str(error)}
    # In a process of its own, fresh as the services' default build is: after the attribution
    # build, every stage of a reading in the same process is slower.
    progress(f"{count} docker containers, in a process of their own")
    done = subprocess.run([PYTHON, str(ROOT / "bench" / "many_containers.py"), "--count",
                           str(count), "--repeats", str(repeats)], stdout=subprocess.PIPE,
                          text=True, timeout=600)
    result["containers"] = json.loads(done.stdout) if done.returncode == 0 else {
        "failure": f"bench/many_containers.py exited {done.returncode}"}
    return result


# ---- summarising and reporting ------------------------------------------------------------------

ROUND_TRIP_BPF = "bpf_ns_per_round_trip"  # the Trial attribute of the programs' time

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

    def ratios(self, ours: str, peer: str, attribute: str = "added_ns") -> List[Optional[float]]:
        return [ratio(getattr(run[ours], attribute), getattr(run[peer], attribute))
                if ours in run and peer in run else None for run in self.cost]

    def measured_maps(self) -> Dict[str, Dict[str, int]]:
        """bytes_memlock per map of each tracer, from its last run that read them (the idle
        phase's before the cost phase's)."""
        found: Dict[str, Dict[str, int]] = {}
        for runs in (self.idle, self.cost):
            for run in reversed(runs):
                for key, result in run.items():
                    if getattr(result, "maps", None) and key not in found:
                        found[key] = result.maps
        return found

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
    notes.append("- every tracer here times the same wait, from sched_wakeup, sched_wakeup_new or "
                 "a runnable switch-out to the switch-in, with programs on those three "
                 "tracepoints; gsender-bcc and the floor also attach to sched_process_free, "
                 "which a round trip never runs (with attribution also to sched_migrate_task, "
                 "which a round trip pinned to one CPU never runs either). Each round trip runs "
                 "each tracer's programs four times: two wakeups, two switches.")
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

    # Side by side: host-only, default, and default with culprit attribution.
    modes = ("host_only", "breakdown", "gsender")
    bcc_comparable = not by_key["bcc"].caveat
    rows = [("added ns / round trip", [bench.trial_values(m, "added_ns") for m in modes], ".0f"),
            ("ns / BPF run", [bench.trial_values(m, "ns_per_run") for m in modes], ".1f"),
            ("BPF program runs / round trip (bpf_stats)",
             [bench.trial_values(m, "runs_per_round_trip") for m in modes], ".2f"),
            ("BPF programs' ns / round trip (bpf_stats)",
             [bench.trial_values(m, ROUND_TRIP_BPF) for m in modes], ".0f"),
            ("/ the floor (empty programs, same hooks)",
             [bench.ratios(m, "raw_floor") for m in modes], ".2f"),
            ("/ libbpf-tools runqlat", [bench.ratios(m, "libbpf") for m in modes], ".2f"),
            ("BPF programs' ns / round trip, / libbpf-tools runqlat's",
             [bench.ratios(m, "libbpf", ROUND_TRIP_BPF) for m in modes], ".2f"),
            ("/ bpftrace runqlat.bt", [bench.ratios(m, "bpftrace") for m in modes], ".2f"),
            ("BPF programs' ns / round trip, / bpftrace runqlat.bt's",
             [bench.ratios(m, "bpftrace", ROUND_TRIP_BPF) for m in modes], ".2f"),
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
    rows += [("added cost / host-only added cost",
              [[], bench.ratios("breakdown", "host_only"), bench.ratios("gsender", "host_only")],
              ".2f"),
             ("with attribution: added cost / without it",
              [[], [], bench.ratios("gsender", "breakdown")], ".2f"),
             ("with attribution: ns / BPF run, / without it",
              [[], [], bench.ratios("gsender", "breakdown", "ns_per_run")], ".2f"),
             ("with attribution: BPF programs' ns / round trip, / without it",
              [[], [], bench.ratios("gsender", "breakdown", ROUND_TRIP_BPF)], ".2f")]
    lines += ["", "## gsender-bcc: host-only, without attribution, and the default side by side",
              "", "| figure | host-only (--max-services 0) | breakdown without attribution "
              "(--max-culprits 0) | default (breakdown and culprit attribution) |",
              "|---|---:|---:|---:|"]
    for what, values, spec in rows:
        lines.append(f"| {what} | " + " | ".join(
            spread(v, spec) if v else "" for v in values) + " |")
    lines += ["", "BPF programs' ns / round trip is bpf_stats' run time of a tracer's programs "
                  "over a round trip (what ns / BPF run leaves out: how often they run; "
                  "each tracer runs its programs four times a round trip; runs above "
                  "that are other work's context switches on the machine meanwhile, which the "
                  "programs trace too). It leaves out the tracepoints' own cost, which added "
                  "ns / round trip has, but it is the stable figure where a machine's noise "
                  "swamps the round trips' few hundred ns."]

    # Memory.
    checks = [
        Check("added cost / libbpf-tools runqlat", bench.ratios("gsender", "libbpf"), 0.6, "x"),
        Check("BPF programs' ns / round trip, / libbpf-tools runqlat's (bpf_stats)",
              bench.ratios("gsender", "libbpf", ROUND_TRIP_BPF), 0.6, "x"),
        Check("added cost / bpftrace runqlat.bt", bench.ratios("gsender", "bpftrace"), 0.25, "x"),
        Check("added cost / bcc runqlat", bench.ratios("gsender", "bcc"), 0.75, "x",
              comparable=bcc_comparable),
        Check("added cost / the floor (empty programs on the same hooks)",
              bench.ratios("gsender", "raw_floor"), 2.0, "x"),
        Check("attach, s", bench.trial_values("gsender", "attach_s"), 0.5, " s"),
        Check("with attribution: added cost / without it",
              bench.ratios("gsender", "breakdown"), 1.2, "x"),
        Check("with attribution: BPF programs' ns / round trip, / without it (bpf_stats)",
              bench.ratios("gsender", "breakdown", ROUND_TRIP_BPF), 1.2, "x"),
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
    memory_lines += map_memory_lines(bench.measured_maps(), checks)

    services_lines = many_services.report_lines(bench.services, checks)
    if "containers" in bench.services:
        services_lines += many_containers.report_lines(
            bench.services["containers"], checks, bench.services["all_changed"]["ms"])

    lines += ["", "## Targets (gsender-bcc at its defaults: breakdown and culprit attribution "
                  "on; \"without it\" is --max-culprits 0)", "",
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
                progress(f"run {run + 1}/{args.runs}: idle, the agent's modes side by side, "
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
    bench.seconds = time.monotonic() - common.started_at
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
