#!/usr/bin/python3
"""Checks of the test VM that need arithmetic: run by gsender-vm-check in the guest.

Each check prints one line, ``VMCHECK <name> PASS|FAIL <detail>``, for the host to read.
It reads the series the agent delivered to the guest's carbon-cache (one whisper file per
series, one datapoint per second) and what bpftool says about loaded BPF programs. It runs
on the guest's own python3 (3.9 on bullseye) with nothing but python3-whisper.

    guest_checks.py series   DIR --frequency F --from T0 --until T1
    guest_checks.py accuracy DIR --frequency F --from S0 --until S1 --run-delay-ns NS --service NAME
    guest_checks.py physics  DIR --frequency F --from S0 --until S1 --service NAME
                             --pids "PID..." --stopped-at UPTIME
    guest_checks.py culprit  DIR --from S0 --until S1 --service NAME --culprit NAME
    guest_checks.py reload   DIR --frequency F --since T --need N
    guest_checks.py stamps   DIR --since T                  (prints the stamps delivered since T)
    guest_checks.py continuity DIR --frequency F --from T0 --until T1 --name NAME
    guest_checks.py arrived  DIR --frequency F --from T0 --until T1 --measured "S..." --name NAME
    guest_checks.py named    DIR --since T --service "NAME..." [--absent "NAME..."] --name NAME
                             (each --service series counted samples since T, no --absent one
                             did, and no other that did is named after a container's id)
    guest_checks.py progs    --pid PID                      (prints the ids of PID's BPF programs,
                                                             their types on stderr)
    guest_checks.py loaded   ID...                          (prints those ids still loaded)

The functions below take plain data, so the host's tests feed them wrong values to show
that every check can fail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

PERCENTILES = (50, 90, 99)
# Σ rate × interval against count: see check_rates.
RATE_TOLERANCE = 0.05
READ_DELAY_TOLERANCE = 0.25
ACCURACY_TOLERANCE = 0.05
PHYSICS_TOLERANCE = 0.03


@dataclass
class Interval:
    """One delivered interval: what the agent sent with one timestamp."""

    stamp: int
    count: float
    mean: Optional[float] = None
    p50: Optional[float] = None
    p90: Optional[float] = None
    p99: Optional[float] = None
    max: Optional[float] = None
    rates: Dict[int, float] = field(default_factory=dict)  # log2 bucket N -> samples per second


def verdict(name: str, ok: bool, detail: str) -> str:
    return f"VMCHECK {name} {'PASS' if ok else 'FAIL'} {detail}"


# ---- reading what carbon stored ---------------------------------------------------------

def read_intervals(directory: str, since: int, until: Optional[int] = None) -> List[Interval]:
    """Return the intervals stamped in (since, until], from the whisper files in ``directory``."""
    import whisper

    until = int(until if until is not None else time.time())

    def series(name: str) -> Dict[int, float]:
        path = os.path.join(directory, name + ".wsp")
        if not os.path.exists(path):
            return {}
        (start, _end, step), values = whisper.fetch(path, since, until)
        return {start + i * step: v for i, v in enumerate(values) if v is not None}

    counts = series("count")
    columns = {name: series(name) for name in ("mean", "p50", "p90", "p99", "max")}
    buckets = {}
    for entry in os.listdir(directory) if os.path.isdir(directory) else ():
        if entry.endswith(".wsp") and entry[:-4].isdigit():
            buckets[int(entry[:-4])] = series(entry[:-4])
    intervals = []
    for stamp in sorted(s for s in counts if since < s <= until):
        values = {name: column.get(stamp) for name, column in columns.items()}
        rates = {n: column[stamp] for n, column in buckets.items() if stamp in column}
        intervals.append(Interval(stamp, counts[stamp], rates=rates, **values))
    return intervals


# ---- the arithmetic -----------------------------------------------------------------------

def bucket_bounds(bucket: int) -> Tuple[float, float]:
    """The log2 bucket N covers [N, 2N) µs; bucket 0 covers [0, 1)."""
    return (0.0, 1.0) if bucket == 0 else (float(bucket), 2.0 * bucket)


def bucket_counts(interval: Interval) -> Tuple[Dict[int, int], float]:
    """Samples per log2 bucket, recovered from the rates, and how far they were from whole.

    The interval's length is count / Σ rates; each rate × that length must be a whole number of
    samples (up to the rounding of the rates to 3 decimals), else count and rates disagree.
    """
    total_rate = sum(interval.rates.values())
    if total_rate <= 0:
        return {}, 0.0
    seconds = interval.count / total_rate
    exact = {n: rate * seconds for n, rate in sorted(interval.rates.items())}
    counts = {n: int(round(v)) for n, v in exact.items()}
    return counts, max(abs(v - counts[n]) for n, v in exact.items())


def check_stamps(intervals: Sequence[Interval], frequency: int) -> Tuple[bool, str]:
    """Every stamp a multiple of the frequency, one interval after another, none missing."""
    stamps = [i.stamp for i in intervals]
    if len(stamps) < 3:
        return False, f"only {len(stamps)} intervals delivered"
    off = [s for s in stamps if s % frequency]
    gaps = [(a, b) for a, b in zip(stamps, stamps[1:]) if b - a != frequency]
    ok = not off and not gaps
    return ok, (f"{len(stamps)} stamps {stamps[0]}..{stamps[-1]} every {frequency}s"
                + (f"; not multiples of {frequency}: {off[:5]}" if off else "")
                + (f"; gaps or repeats: {gaps[:5]}" if gaps else ""))


def check_order(intervals: Sequence[Interval]) -> Tuple[bool, str]:
    """p50 <= p90 <= p99 <= max wherever there were samples."""
    bad, seen = [], 0
    for i in intervals:
        if not i.count:
            continue
        seen += 1
        values = (i.p50, i.p90, i.p99, i.max)
        if None in values or not all(a <= b for a, b in zip(values, values[1:])):
            bad.append(f"{i.stamp}: p50={i.p50} p90={i.p90} p99={i.p99} max={i.max}")
    if not seen:
        return False, "no interval with samples"
    return not bad, f"{seen} intervals with samples" + (f"; out of order: {bad[:3]}" if bad else "")


def check_rates(intervals: Sequence[Interval], frequency: int) -> Tuple[bool, str]:
    """Σ bucket rates × interval ≈ count, in the intervals that followed one frequency after another.

    The interval the agent divides by is its own monotonic time between two reads, each a little
    after its boundary, so one interval's length (count / Σ rates) may differ from the frequency
    by a late read (under TCG on a busy host, a tenth of a second or more); but the lengths of
    consecutive intervals add up, so over all of them the late reads cancel out but the last:
    Σ count / Σ rates over n intervals must be n × frequency within RATE_TOLERANCE, and each
    one within READ_DELAY_TOLERANCE of it. The buckets sent are 0, 1, 2, 4, ... up to the
    highest non-empty one, which is not empty.
    """
    bad, lengths = [], []
    previous = None
    for i in intervals:
        regular = previous is not None and i.stamp - previous == frequency
        previous = i.stamp
        if not i.count:
            if i.rates and any(i.rates.values()):
                bad.append(f"{i.stamp}: count 0 but rates {i.rates}")
            continue
        buckets = sorted(i.rates)
        top = buckets[-1] if buckets else None
        expected = [0] + [1 << e for e in range(top.bit_length())] if top else [0]
        if buckets != expected or not i.rates.get(top):
            bad.append(f"{i.stamp}: buckets {buckets} (highest rate {i.rates.get(top)})")
            continue
        if not regular:
            continue
        length = i.count / sum(i.rates.values())
        lengths.append(length)
        if abs(length - frequency) > READ_DELAY_TOLERANCE * frequency:
            bad.append(f"{i.stamp}: count / sum(rates) = {length:.3f}s")
    if not lengths:
        return False, "no interval of one whole frequency with samples"
    total, expected_total = sum(lengths), len(lengths) * frequency
    error = (total - expected_total) / expected_total
    if abs(error) > RATE_TOLERANCE:
        bad.append(f"all together {total:.2f}s for {expected_total}s")
    return not bad, (f"{len(lengths)} intervals of {frequency}s: count / sum(rates) "
                     f"{min(lengths):.3f}..{max(lengths):.3f}s each, {error:+.2%} all together "
                     f"(tolerance {READ_DELAY_TOLERANCE:.0%} each, {RATE_TOLERANCE:.0%} together)"
                     + (f"; {bad[:3]}" if bad else ""))


def crossing_bucket(counts: Dict[int, int], total: int, percent: float) -> int:
    """The log2 bucket where the cumulative count first reaches percent % of total."""
    rank = max(1, math.ceil(total * percent / 100))
    running = 0
    for bucket in sorted(counts):
        running += counts[bucket]
        if running >= rank:
            return bucket
    return max(counts)


def in_bucket(value: float, bucket: int) -> bool:
    low, high = bucket_bounds(bucket)
    return low <= value < high


def check_slots(intervals: Sequence[Interval]) -> Tuple[bool, str]:
    """Slot placement: the buckets bound the total wait, and hold the percentiles and max.

    Σ lower(N) × n_N <= mean × count <= Σ upper(N) × n_N, and p50, p90, p99 and max lie in
    [N, 2N) of the bucket where the cumulative count crosses them (the agent reports a
    sub-slot midpoint, which stays inside its log2 bucket).
    """
    bad, checked = [], 0
    for i in intervals:
        if not i.count or i.mean is None:
            continue
        counts, off = bucket_counts(i)
        if sum(counts.values()) != i.count or off > 0.1:
            bad.append(f"{i.stamp}: the rates are not whole numbers of samples adding up to "
                       f"count={i.count:g} over one length (off by {off:.2f})")
            continue
        checked += 1
        total = i.mean * i.count
        low = sum(bucket_bounds(n)[0] * c for n, c in counts.items())
        high = sum(bucket_bounds(n)[1] * c for n, c in counts.items())
        slack = 0.0005 * i.count + 1e-6  # the mean is sent with 3 decimals
        if not low - slack <= total <= high + slack:
            bad.append(f"{i.stamp}: total {total:.0f}us outside the buckets' [{low:.0f}, {high:.0f}]us")
        for p in PERCENTILES:
            value, bucket = getattr(i, f"p{p}"), crossing_bucket(counts, int(i.count), p)
            if value is None or not in_bucket(value, bucket):
                bad.append(f"{i.stamp}: p{p}={value} not in bucket {bucket} where the count crosses {p}%")
        top = max(n for n, c in counts.items() if c)
        if i.max is None or not in_bucket(i.max, top):
            bad.append(f"{i.stamp}: max={i.max} not in the highest non-empty bucket {top}")
    if not checked:
        return False, "no interval with samples"
    return not bad, f"{checked} intervals" + (f"; {bad[:3]}" if bad else "")


def total_wait_us(intervals: Sequence[Interval]) -> float:
    return sum(i.count * (i.mean or 0.0) for i in intervals)


def check_accuracy(window: Sequence[Interval], first: int, last: int, frequency: int,
                   run_delay_ns: int, others_us: float = 0.0,
                   background: Sequence[Interval] = ()) -> Tuple[bool, str]:
    """The host's total wait over whole intervals (Σ count × mean) against the kernel's run_delay
    of the busy unit plus what the agent's own service series give for every other service.

    ``window`` must hold every interval stamped first, first + F, ..., last; the busy unit lived
    entirely inside them. The rest of the guest is taken from its services' series, not assumed
    small: under a loaded host, TCG guests' own tasks wait far more. ``background`` (intervals
    before the window) only informs the detail line.
    """
    stamps = [i.stamp for i in window]
    wanted = list(range(first, last + 1, frequency))
    if stamps != wanted:
        return False, f"the window {first}..{last} is not whole: stamps {stamps}"
    agent_us = total_wait_us(window)
    kernel_us = run_delay_ns / 1000
    if kernel_us <= 0:
        return False, f"the busy unit's run_delay is {run_delay_ns} ns"
    expected_us = kernel_us + others_us
    error = (agent_us - expected_us) / expected_us
    noise = ""
    if background:
        per_interval = total_wait_us(background) / len(background)
        noise = f"; before the window the guest waited ~{per_interval / 1000:.1f} ms per interval"
    ok = abs(error) <= ACCURACY_TOLERANCE
    return ok, (f"agent {agent_us / 1e6:.4f}s over {len(window)} intervals {first}..{last} vs "
                f"run_delay {kernel_us / 1e6:.4f}s of the busy unit's threads + "
                f"{others_us / 1e6:.4f}s of the other services' series: {error:+.2%} "
                f"(tolerance {ACCURACY_TOLERANCE:.0%})" + noise)


def loops_wait_ns(lifetimes_ns: Sequence[int], cpu_ns: Sequence[int]) -> int:
    """Always-runnable loops wait for exactly the time they did not run."""
    return sum(lifetimes_ns) - sum(cpu_ns)


def check_physics(service_window: Sequence[Interval], first: int, last: int, frequency: int,
                  physics_ns: int, loops: int, note: str = "") -> Tuple[bool, str]:
    """The busy service's total wait in its own series against physics: always-runnable loops
    wait whenever they do not run, which comes from CPU times (schedstat's sum_exec_runtime,
    the CPU's busy time), not from the scheduler's wait accounting that raw mode reads."""
    stamps = [i.stamp for i in service_window]
    wanted = list(range(first, last + 1, frequency))
    if not set(stamps) <= set(wanted):
        return False, f"service stamps outside the window {first}..{last}: {stamps}"
    if physics_ns <= 0:
        return False, f"the loops' lifetime minus CPU time is {physics_ns} ns"
    agent_us = total_wait_us(service_window)
    error = (agent_us * 1000 - physics_ns) / physics_ns
    ok = abs(error) <= PHYSICS_TOLERANCE
    return ok, (f"service series {agent_us / 1e6:.4f}s over {len(service_window)} intervals vs "
                f"{physics_ns / 1e9:.4f}s = Σ lifetime − CPU time of {loops} always-runnable "
                f"loops: {error:+.2%} (tolerance {PHYSICS_TOLERANCE:.0%})" + note)


def culprit_totals(directory: str, service: str, since: int, until: int) -> Dict[str, float]:
    """Σ of each of ``service``'s ``behind.<culprit>_ms`` series stamped in (since, until], by
    culprit (``other`` included)."""
    import whisper
    folder = os.path.join(directory, "service", service, "behind")
    totals = {}
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if entry.endswith("_ms.wsp"):
            (start, _end, step), values = whisper.fetch(os.path.join(folder, entry), since, until)
            totals[entry[:-len("_ms.wsp")]] = sum(
                v for i, v in enumerate(values)
                if v is not None and since < start + i * step <= until)
    return totals


def check_culprit(totals: Dict[str, float], expected: str) -> Tuple[bool, str]:
    """The named culprit (not ``other``, the rest) with the most charge must be ``expected``."""
    named = {name: ms for name, ms in totals.items() if name != "other"}
    if not named:
        return False, f"no behind.<culprit>_ms series (expected {expected} on top)"
    ranked = sorted(named, key=lambda name: (-named[name], name))
    listed = ", ".join(f"{name} {named[name]:.1f} ms" for name in ranked[:4])
    ok = ranked[0] == expected and named[ranked[0]] > 0
    return ok, f"top culprit {ranked[0]} (expected {expected}): {listed}"


# A series named after a container's id rather than its name: the scope's, or the short id.
ID_NAMED = re.compile(r"(libpod|crio|cri-containerd|docker)-(conmon-)?[0-9a-f]{64}|_[0-9a-f]{12}$")


def service_counts(directory: str, since: int) -> Dict[str, float]:
    """Σ count since ``since`` of every service's series (0 for a service with none)."""
    folder = os.path.join(directory, "service")
    return {service: sum(i.count for i in read_intervals(os.path.join(folder, service), since))
            for service in sorted(os.listdir(folder))}


def check_named(counts: Dict[str, float], expected: Sequence[str],
                absent: Sequence[str] = ()) -> Tuple[bool, str]:
    """Every ``expected`` service counted samples, none of ``absent`` did, and no other
    service that did is named after an id."""
    missing = [name for name in expected if counts.get(name, 0) <= 0]
    crossed = [name for name in absent if counts.get(name, 0) > 0]
    by_id = [name for name, count in counts.items()
             if count > 0 and name not in expected and ID_NAMED.search(name)]
    listed = ", ".join(f"{name} {counts.get(name, 0):.0f}" for name in expected)
    ok = bool(expected) and not missing and not crossed and not by_id
    return ok, (f"samples: {listed}; without samples: {', '.join(missing) or 'none'}; "
                + (f"samples where none belong: {', '.join(crossed) or 'none'}; " if absent else "")
                + f"series named by id: {', '.join(by_id) or 'none'}")


def sched_clock_s(pid: int, proc: str = "/proc") -> Optional[float]:
    """When the process last started to run, on its CPU's scheduler clock (se.exec_start), in s.

    A stopped process last ran to take its SIGSTOP, so this is when it stopped.
    """
    try:
        with open(os.path.join(proc, str(pid), "sched")) as sched:
            for line in sched:
                if line.startswith("se.exec_start"):
                    return float(line.split(":")[1]) / 1000
    except OSError:
        pass
    return None


def sched_clock_offset_s(cpu: int) -> Optional[float]:
    """The scheduler clock of ``cpu`` minus CLOCK_BOOTTIME, in s, read from this process's own
    se.exec_start while it runs there (the scheduler refreshes it at every tick)."""
    os.sched_setaffinity(0, {cpu})
    os.sched_yield()
    ours = sched_clock_s(os.getpid())
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return None if ours is None else ours - boottime


def process_lifetime_and_cpu(pid: int, stopped_at: float, proc: str = "/proc") -> Tuple[int, int]:
    """(ns from the process's start to ``stopped_at``, both on CLOCK_BOOTTIME; its CPU ns)."""
    with open(os.path.join(proc, str(pid), "stat")) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, clock ticks
    with open(os.path.join(proc, str(pid), "schedstat")) as schedstat:
        cpu = int(schedstat.read().split()[0])
    return int((stopped_at - started) * 1e9), cpu


def other_services_wait_us(directory: str, since: int, until: int, exclude: str) -> float:
    """Σ count × mean over every service series but ``exclude``, stamped in (since, until]."""
    folder = os.path.join(directory, "service")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return sum(total_wait_us(read_intervals(os.path.join(folder, name), since, until))
               for name in names if name != exclude)


def check_reload(stamps: Sequence[int], frequency: int, need: int) -> Tuple[bool, str]:
    """After the reload, stamps fall on the new frequency, one interval apart."""
    if len(stamps) < need:
        return False, f"{len(stamps)} intervals since the reload, wanted {need}: {list(stamps)}"
    off = [s for s in stamps if s % frequency]
    steps = sorted({b - a for a, b in zip(stamps, stamps[1:])})
    ok = not off and steps == [frequency]
    return ok, (f"stamps since the reload {list(stamps)}: steps {steps}"
                + (f", not multiples of {frequency}: {off}" if off else f", multiples of {frequency}"))


# ---- bpftool ----------------------------------------------------------------------------

def check_continuity(stamps: Sequence[int], first: int, last: int,
                     frequency: int) -> Tuple[bool, str]:
    """One series written by two agents in turn (the original's stamps need not be multiples
    of the frequency): datapoints from ``first`` to ``last``, none a whole interval without
    data (consecutive stamps less than two intervals apart)."""
    inside = sorted(s for s in stamps if first <= s <= last)
    if not inside:
        return False, f"no datapoints from {first} to {last}"
    points = [first] + inside + [last]
    gaps = [(b - a, a, b) for a, b in zip(points, points[1:])]
    widest = max(gaps)
    detail = (f"{len(inside)} datapoints from {first} to {last}; widest gap {widest[0]}s "
              f"({widest[1]} to {widest[2]}; limit: under {2 * frequency}s)")
    return widest[0] < 2 * frequency, detail


def check_arrived(stamps: Sequence[int], measured: Sequence[int], first: int, last: int,
                  frequency: int, in_flight: int = 1) -> Tuple[bool, str]:
    """Every interval the agent measured (the stamps its journal names) from ``first`` to
    ``last`` delivered, but at most ``in_flight`` of them. The stamps of that span no agent
    measured (while the service restarted) are named in the detail, not counted."""
    wanted = sorted(s for s in set(measured) if first <= s <= last)
    have = set(stamps)
    missing = [s for s in wanted if s not in have]
    boundaries = range(first - first % frequency + (frequency if first % frequency else 0),
                       last + 1, frequency)
    unmeasured = [s for s in boundaries if s not in set(measured)]
    detail = (f"{len(wanted) - len(missing)} of the {len(wanted)} intervals measured from {first} "
              f"to {last} delivered; missing: {' '.join(map(str, missing)) or 'none'} "
              f"(at most {in_flight} allowed, the one in flight); not measured (no agent "
              f"running): {len(unmeasured)} ({' '.join(map(str, unmeasured[:10])) or 'none'})")
    return len(wanted) > 0 and len(missing) <= in_flight, detail


def programs_of(listing: list, pid: int) -> List[int]:
    """Ids of the programs that bpftool lists as held by ``pid``."""
    return sorted(p["id"] for p in listing
                  if any(owner.get("pid") == pid for owner in p.get("pids", ())))


def programs_in_fdinfo(pid: int, proc: str = "/proc") -> List[int]:
    """Ids of the BPF programs ``pid`` holds open, from its file descriptors' fdinfo."""
    ids = set()
    folder = os.path.join(proc, str(pid), "fdinfo")
    try:
        fds = os.listdir(folder)
    except OSError:
        return []  # no such process
    for fd in fds:
        try:
            with open(os.path.join(folder, fd)) as info:
                for line in info:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass  # closed meanwhile
    return sorted(ids)


def bpftool_programs() -> list:
    run = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"bpftool exited {run.returncode}: {run.stderr.strip()[-200:]}")
    return json.loads(run.stdout or "[]")


def agent_programs(listing: list, pid: int, fdinfo: Sequence[int]) -> Tuple[List[int], str]:
    """The agent's programs as bpftool lists them, and how they were told apart.

    bpftool names each program's owning pids where it was built with that support (its
    "skeletons" feature); Debian's builds are not, on all three releases, so there the ids the
    agent holds open (its fdinfo) must each be listed by bpftool instead.
    """
    if any("pids" in p for p in listing):
        return programs_of(listing, pid), "bpftool's owning pids"
    listed = {p["id"] for p in listing}
    return sorted(i for i in fdinfo if i in listed), "the agent's fdinfo, each listed by bpftool"


# ---- command line -------------------------------------------------------------------------

def check_peer(seconds: int) -> Tuple[bool, str]:
    """The agent's program, loaded here from the installed package at its defaults, and the
    peer (libbpf-tools' runqlat, or where the release has none, the seed's runqlat.bt under
    bpftrace) over the same seconds agree as on the build host (peers.agreement). The guest
    has no kernel headers: bullseye's bpftrace takes the few basic types its own header wants
    from the package's include tree."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers
    from gsender_bcc import program
    from gsender_bcc.config import Config
    from gsender_bcc.histogram import log2_counts
    from gsender_bcc.probe import Probe
    from gsender_bcc.readings import delta
    bpftrace = peers.runqlat_path() is None
    with Probe(Config()) as probe, peers.Runqlat(seconds, bpftrace=bpftrace,
                                                 kernel_source=program.include_tree()) as peer:
        peer.attached(timeout=240)
        first = probe.read_snapshot()
        theirs = peer.rows()
        last = probe.read_snapshot()
    host = delta(probe.layout, first, last, seconds).host
    ok, detail = peers.agreement(peers.rows_of_log2(log2_counts(probe.layout, host.slots)),
                                 theirs)
    return ok, f"{'bpftrace runqlat.bt' if bpftrace else 'libbpf-tools runqlat'}, {seconds}s: " \
               f"{detail}"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("series", "accuracy", "physics", "reload", "stamps", "continuity", "arrived",
                 "culprit", "named"):
        p = sub.add_parser(name)
        p.add_argument("directory")
        p.add_argument("--frequency", type=int, default=0)
        p.add_argument("--from", dest="first", type=int, default=0)
        p.add_argument("--until", type=int)
        p.add_argument("--since", type=int, default=0)
        p.add_argument("--need", type=int, default=4)
        p.add_argument("--run-delay-ns", type=int, default=0)
        p.add_argument("--name", default=name)
        p.add_argument("--service", default="")
        p.add_argument("--pids", default="")
        p.add_argument("--stopped-at", type=float, default=0.0)
        p.add_argument("--cpu", type=int, default=1)
        p.add_argument("--measured", default="")
        p.add_argument("--culprit", default="")
        p.add_argument("--absent", default="")
    sub.add_parser("progs").add_argument("--pid", type=int, required=True)
    sub.add_parser("peer").add_argument("--seconds", type=int, default=20)
    sub.add_parser("loaded").add_argument("ids", type=int, nargs="*")
    args = parser.parse_args(argv)

    if args.what == "progs":
        listing = bpftool_programs()
        ids, how = agent_programs(listing, args.pid, programs_in_fdinfo(args.pid))
        types = sorted({p.get("type", "?") for p in listing if p["id"] in ids})
        print(" ".join(map(str, ids)))
        print(f"(found by {how}; types: {','.join(types) or 'none'})", file=sys.stderr)
        return 0
    if args.what == "loaded":
        present = {p["id"] for p in bpftool_programs()}
        print(" ".join(str(i) for i in args.ids if i in present))
        return 0
    if args.what == "peer":
        ok, detail = check_peer(args.seconds)
        print(verdict("peer", ok, detail))
        return 0 if ok else 1
    if args.what == "stamps":
        print(" ".join(str(i.stamp) for i in read_intervals(args.directory, args.since)))
        return 0
    if args.what in ("continuity", "arrived"):
        stamps = [i.stamp for i in read_intervals(args.directory, args.first - 1, args.until)]
        if args.what == "continuity":
            ok, detail = check_continuity(stamps, args.first, args.until, args.frequency)
        else:
            ok, detail = check_arrived(stamps, [int(s) for s in args.measured.split()],
                                       args.first, args.until, args.frequency)
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    if args.what == "culprit":
        ok, detail = check_culprit(culprit_totals(args.directory, args.service, args.first - 1,
                                                  args.until), args.culprit)
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    if args.what == "named":
        ok, detail = check_named(service_counts(args.directory, args.since),
                                 args.service.split(), args.absent.split())
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    if args.what == "reload":
        stamps = [i.stamp for i in read_intervals(args.directory, args.since)]
        ok, detail = check_reload(stamps, args.frequency, args.need)
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    if args.what == "series":
        intervals = read_intervals(args.directory, args.first - 1, args.until)
        for name, (ok, detail) in (("series-stamps", check_stamps(intervals, args.frequency)),
                                   ("series-order", check_order(intervals)),
                                   ("series-rates", check_rates(intervals, args.frequency)),
                                   ("series-slots", check_slots(intervals))):
            print(verdict(name, ok, detail))
        return 0
    if args.what == "accuracy":
        f = args.frequency
        intervals = read_intervals(args.directory, args.first - 6 * f, args.until)
        window = [i for i in intervals if i.stamp >= args.first]
        background = [i for i in intervals if i.stamp < args.first]
        others = other_services_wait_us(args.directory, args.first - 1, args.until, args.service)
        ok, detail = check_accuracy(window, args.first, args.until, f, args.run_delay_ns, others,
                                    background)
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    if args.what == "physics":
        pids = [int(p) for p in args.pids.split()]
        # Each loop lived from its start until it took its SIGSTOP, which it does when it next
        # gets the CPU: under TCG that can be seconds after the signal was sent, so its stop
        # is read from the scheduler's clock, brought onto CLOCK_BOOTTIME.
        offset = sched_clock_offset_s(args.cpu)
        stops = [sched_clock_s(pid) for pid in pids]
        if offset is None or None in stops:
            print(verdict(args.name, False, "no scheduler clock in /proc/<pid>/sched"))
            return 1
        measured = [process_lifetime_and_cpu(pid, stop - offset) for pid, stop in zip(pids, stops)]
        physics = loops_wait_ns([m[0] for m in measured], [m[1] for m in measured])
        signalled = loops_wait_ns([process_lifetime_and_cpu(pid, args.stopped_at)[0]
                                   for pid in pids], [m[1] for m in measured])
        note = (f"; the last loop stopped {max(stops) - offset - args.stopped_at:.3f}s after "
                f"SIGSTOP was sent (counting lifetimes to the signal: {signalled / 1e9:.4f}s)")
        window = read_intervals(os.path.join(args.directory, "service", args.service),
                                args.first - 1, args.until)
        ok, detail = check_physics(window, args.first, args.until, args.frequency, physics,
                                   len(pids), note)
        print(verdict(args.name, ok, detail))
        return 0 if ok else 1
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
