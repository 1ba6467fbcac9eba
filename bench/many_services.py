"""What one interval costs the agent with many live services, timed in-process.

Makes COUNT cgroups under the cgroup v2 mount (``gsender-bench-<pid>.slice/svcNNNN.service``,
each its own service), puts one process in each that wakes every 50 ms (bench/ticker.c),
loads the BPF program as the agent does (``Probe(Config())``, per-service breakdown on),
and times what the daemon does for one interval: ``Sampler.measure`` (read_snapshot, delta)
then ``Sampler.services`` (CgroupTree.resolve, by_service, top_services, cpu.pressure of
the top services, interval_stats for the top 20 and other). The Sampler the daemon measures
with is called, so the timing follows whatever it does. The default has culprit attribution
on: read_snapshot also reads each cgroup's culprit counters (in the same entries), delta
turns them into the interval's (waiting cgroup, culprit) pairs, and whatever the Sampler
does with them is timed with the rest. All of it again without the attribution
(``Config(max_culprits=0)``).

Two cases, each repeated: "few changed" (the tickers stopped: every service is in the map,
only the host's own cgroups changed since the last reading) and "all changed" (the tickers
ran between the readings, so every one of the COUNT services has new samples). The tickers
are stopped (SIGSTOP) while a reading is timed, so they do not compete with it. One more
all-changed reading runs under cProfile for where the time goes.

Every cgroup and process made here is removed before returning. Needs root and the BPF
toolchain; run it under the bench lock, as bench/run.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parent.parent
TICKER = ROOT / "bench" / "build" / "ticker"
TICK_MS = 50
LIFETIME_S = 600  # a bound on the tickers' life should this process die without cleaning up

# The functions whose cumulative time the profile reports, in the order the daemon calls them.
STAGES = [
    ("read_snapshot", "probe.py", "read_snapshot"),
    ("  of which _read_cgroups", "probe.py", "_read_cgroups"),
    ("  of which _batches (the cgroup map)", "probe.py", "_batches"),
    ("delta", "readings.py", "delta"),
    ("  of which culprit_pairs", "readings.py", "culprit_pairs"),
    ("  of which subtract_counts", "histogram.py", "subtract_counts"),
    ("  of which sum_counts", "histogram.py", "sum_counts"),
    ("CgroupTree.resolve", "cgroups.py", "resolve"),
    ("  of which CgroupTree.walk", "cgroups.py", "walk"),
    ("by_service", "histogram.py", "by_service"),
    ("top_services", "histogram.py", "top_services"),
    ("PressureReader.read (top services)", "cgroups.py", "read"),
    ("interval_stats", "histogram.py", "interval_stats"),
]


def build_ticker() -> None:
    source = ROOT / "bench" / "ticker.c"
    TICKER.parent.mkdir(parents=True, exist_ok=True)
    if not TICKER.exists() or TICKER.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(TICKER), str(source)],
                       check=True)


class Cgroups:
    """COUNT empty cgroups under a parent of their own, ``<prefix>NNNN<suffix>`` (as ticker
    names them); remove() takes them all away."""

    def __init__(self, mount: Path, count: int, prefix: str = "svc", suffix: str = ".service"):
        self.parent = mount / f"gsender-bench-{os.getpid()}.slice"
        self.prefix, self.suffix = prefix, suffix
        self.children = [self.parent / f"{prefix}{i:04d}{suffix}" for i in range(count)]
        self.parent.mkdir()
        try:
            for child in self.children:
                child.mkdir()
        except OSError:
            self.remove()
            raise

    def ids(self) -> set:
        return {os.stat(child).st_ino for child in self.children if child.exists()}

    def remove(self, timeout: float = 20.0) -> List[str]:
        """Remove every cgroup made; return those that could not be removed."""
        deadline = time.monotonic() + timeout
        left = [d for d in self.children + [self.parent] if d.exists()]
        while left:
            still = []
            for folder in left:  # children first: the parent goes last
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    still.append(folder)
            left = still
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # tasks just killed may take a moment to leave
        return [str(d) for d in left]


class Tickers:
    """One bench/ticker process group: a waking process in each cgroup."""

    def __init__(self, made: Cgroups):
        self.proc = subprocess.Popen([str(TICKER), str(made.parent), str(len(made.children)),
                                      str(TICK_MS), str(LIFETIME_S), made.prefix, made.suffix],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"ticker did not start (exit {self.proc.returncode})")
        self.running = True

    def _group(self, signo: int) -> None:
        try:
            os.killpg(self.proc.pid, signo)
        except ProcessLookupError:
            pass

    def pause(self) -> None:
        self._group(signal.SIGSTOP)
        self.running = False

    def resume(self) -> None:
        self._group(signal.SIGCONT)
        self.running = True

    def close(self) -> None:
        if self.proc.poll() is None:
            self._group(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._group(signal.SIGKILL)
                self.proc.wait()
        # The group's children, should any be left (ticker reaps them on SIGTERM).
        self._group(signal.SIGKILL)


@contextlib.contextmanager
def stage_timers(sampler) -> Iterator[Dict[str, List[float]]]:
    """Time each step the sampler takes for an interval, by wrapping what it calls.

    Yields {stage: [ms per interval, ...]}; a stage called several times in an
    interval (interval_stats) is summed over it. The wrappers are removed on exit.
    """
    from gsender_bcc import sampler as sampler_module
    stages: Dict[str, List[float]] = {}
    current: Dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                current[name] = current.get(name, 0.0) + (time.perf_counter() - started) * 1000
        return wrapper

    instance_patches = [(sampler.probe, "read_snapshot"), (sampler.tree, "resolve"),
                        (sampler._pressure, "read")]
    labels = {"read_snapshot": "read_snapshot", "resolve": "resolve", "read": "cpu.pressure"}
    module_patches = ["delta", "by_service", "top_services", "interval_stats"]
    saved = {name: getattr(sampler_module, name) for name in module_patches}
    measure = sampler.measure

    def whole_interval():
        current.clear()
        return measure()

    def finish(result):
        for name, ms in current.items():
            stages.setdefault(name, []).append(ms)
        return result

    services = sampler.services
    try:
        for owner, attribute in instance_patches:
            setattr(owner, attribute, timed(labels[attribute], getattr(owner, attribute)))
        for name in module_patches:
            setattr(sampler_module, name, timed(name, saved[name]))
        sampler.measure = whole_interval
        sampler.services = lambda measured, limit: finish(services(measured, limit))
        yield stages
    finally:
        for owner, attribute in instance_patches:
            delattr(owner, attribute)  # back to the class's method
        for name in module_patches:
            setattr(sampler_module, name, saved[name])
        del sampler.measure, sampler.services


def profile_lines(profile: cProfile.Profile, calls: int) -> List[str]:
    stats = pstats.Stats(profile)
    found: Dict[tuple, float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for label, file_end, function in STAGES:
            if name == function and filename.endswith(file_end):
                found[label] = found.get(label, 0.0) + cumulative
    lines = [f"{label}: {found[label] / calls * 1000:.2f} ms" for label, _, _ in STAGES
             if label in found]
    # The busiest functions by their own time, whatever they are.
    top = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:8]
    lines.append("most own time: " + "; ".join(
        f"{Path(f).name}:{n} {tt / calls * 1000:.2f} ms ({nc // calls} calls)"
        for (f, _l, n), (_cc, nc, tt, _cum, _callers) in top))
    return lines


def page_touch_ms(pages: int, pause: float, repeats: int = 5) -> Dict[str, float]:
    """Time writing one byte in each of ``pages`` fresh pages, warm and after sleeping ``pause``.

    On some virtual machines memory that was left alone for a moment is slow to touch again
    (the hypervisor or the guest's memory monitoring has marked it old); an interval that
    reads many services pays for that on every page it touches, whatever the code does.
    """
    buffer = bytearray(pages * 4096)

    def touch() -> float:
        started = time.perf_counter()
        for offset in range(0, len(buffer), 4096):
            buffer[offset] = (buffer[offset] + 1) & 0xFF
        return (time.perf_counter() - started) * 1000
    touch()
    warm = statistics.median(touch() for _ in range(repeats))
    cold = []
    for _ in range(repeats):
        time.sleep(pause)
        cold.append(touch())
    return {"pages": pages, "pause_s": pause, "warm_ms": warm, "after_pause_ms": statistics.median(cold)}


# The agent's builds timed: (key in the result, label, Config keywords). The default has the
# culprit attribution on; "breakdown" is the per-service breakdown without it.
BUILDS = [("default", "attribution on (the default)", {}),
          ("breakdown", "attribution off (--max-culprits 0)", {"max_culprits": 0})]


def measure(count: int = 1000, repeats: int = 9, progress=print) -> dict:
    """Return the timings (ms) and profile of one interval with ``count`` live services, for
    the default build at the top level and for each other build under its key."""
    sys.path.insert(0, str(ROOT))
    from gsender_bcc import cgroups

    build_ticker()
    mount = cgroups.v2_mount()
    if mount is None:
        raise RuntimeError("cgroup v2 is not mounted")
    made = Cgroups(mount, count)
    result: dict = {"count": count, "repeats": repeats, "mount": str(mount)}
    try:
        for key, label, keywords in BUILDS:
            progress(f"{label}: {count} cgroups made under {made.parent}; loading the probe")

            def say(text: str, key: str = key) -> None:
                progress(f"{key}: {text}")
            if key == "default":
                result.update(measure_build(made, mount, keywords, repeats, True, say))
                continue
            try:  # the default's figures stand whatever happens to another build's
                result[key] = measure_build(made, mount, keywords, repeats, False, say)
            except Exception as error:
                say(f"FAILED: {error}")
                result[key] = {"failure": str(error)}
    finally:
        left = made.remove()
        result["cgroups_left"] = left
        if left:
            progress(f"could not remove {len(left)} cgroups, e.g. {left[0]}")
    return result


def measure_build(made: Cgroups, mount: Path, keywords: dict, repeats: int, pages: bool,
                  progress, containers=None) -> dict:
    """Time intervals of one build of the probe (Config(**keywords)) over the cgroups made,
    containers named by ``containers`` (a ContainerNames; the runtimes' own files if None)."""
    from gsender_bcc import cgroups
    from gsender_bcc.config import Config
    from gsender_bcc.daemon import SystemClock, freeze_startup_heap
    from gsender_bcc.probe import Probe, overflow_cgroup
    from gsender_bcc.sampler import Sampler

    config = Config(**keywords)
    count = len(made.children)
    tickers: Optional[Tickers] = None
    result: dict = {}
    try:
        with Probe(config) as probe:
            tickers = Tickers(made)
            ours = made.ids()
            tree = cgroups.CgroupTree(mount, containers=containers)
            sampler = Sampler(probe, tree, SystemClock())
            sampler.start()
            freeze_startup_heap()  # as the agent does once it is loaded

            # Per interval: the share of the pairs' ns charged to other (no culprit slot free).
            shares: List[float] = []

            def interval(run_tickers: bool) -> tuple:
                if run_tickers:
                    tickers.resume()
                    time.sleep(0.3)  # about six wakeups of every ticker
                tickers.pause()
                time.sleep(0.2)
                started = time.perf_counter()
                measured = sampler.measure()
                top = sampler.services(measured, config.max_services)
                spent = (time.perf_counter() - started) * 1000
                changed = sum(1 for cgroup in measured.cgroups if cgroup in ours)
                rows = (measured.culprits or {}).values()
                overflow = sum(row.get(overflow_cgroup(), 0) for row in rows)
                total = sum(sum(row.values()) for row in rows)
                shares.append(overflow / total if total else 0.0)
                return spent, changed, len(top), sum(len(row) for row in rows)

            # The first reading meets COUNT unknown ids: it walks the tree.
            first, changed, _, _ = interval(True)
            result["first_ms"] = first
            result["first_changed"] = changed
            names = set(tree.resolve(ours).names.values())  # known now: no walk
            result["names"] = [len(names), min(names), max(names)]
            result["map_entries"] = len(sampler.baseline.cgroups)
            progress(f"first interval (walks the tree): {first:.1f} ms, {changed} services "
                     f"changed")
            for case, run_tickers in (("all_changed", True), ("few_changed", False)):
                times, changes, sizes, pairs = [], [], [], []
                shares.clear()
                for _ in range(repeats):
                    spent, changed, services, changed_pairs = interval(run_tickers)
                    times.append(spent)
                    changes.append(changed)
                    sizes.append(services)
                    pairs.append(changed_pairs)
                result[case] = {"ms": times, "median_ms": statistics.median(times),
                                "min_ms": min(times), "max_ms": max(times),
                                "changed": [min(changes), max(changes)],
                                "pairs_changed": [min(pairs), max(pairs)],
                                "overflow_share": [min(shares), max(shares)],
                                "series_sent": max(sizes)}
                progress(f"{case.replace('_', ' ')}: median {statistics.median(times):.1f} ms "
                         f"({min(times):.1f}-{max(times):.1f}), {min(changes)}-{max(changes)} "
                         f"of the {count} services changed, {min(pairs)}-{max(pairs)} pairs "
                         f"({min(shares):.0%}-{max(shares):.0%} of their ns charged to other)")
            with stage_timers(sampler) as stages:
                for _ in range(repeats):
                    interval(True)
            result["stages_ms"] = {name: statistics.median(times)
                                   for name, times in stages.items()}
            progress("all changed, by stage (medians, ms): " + ", ".join(
                f"{name} {ms:.1f}" for name, ms in result["stages_ms"].items()))
            result["profile"] = profile_run(sampler, tickers, config)
            if pages:
                values = result["map_entries"] * ctypes.sizeof(probe._cgroups.Leaf)
                result["pages"] = page_touch_ms(-(-values // 4096), 0.2)
                progress(f"touching {result['pages']['pages']} pages (the map values' size): "
                         f"{result['pages']['warm_ms']:.2f} ms warm, "
                         f"{result['pages']['after_pause_ms']:.2f} ms after a 0.2 s pause")
    finally:
        if tickers is not None:
            tickers.close()
    return result


def profile_run(sampler, tickers: Tickers, config, calls: int = 3) -> List[str]:
    """More all-changed readings under cProfile: where the time goes."""
    profile = cProfile.Profile()
    for _ in range(calls):
        tickers.resume()
        time.sleep(0.3)
        tickers.pause()
        time.sleep(0.2)
        profile.enable()
        sampler.services(sampler.measure(), config.max_services)
        profile.disable()
    return profile_lines(profile, calls)


def report_lines(result: dict, checks: list) -> List[str]:
    """The report's section for this phase (``result`` from measure()); its target is added to
    checks."""
    from common import Check, spread
    lines: List[str] = []
    if result.get("all_changed"):
        few, every = result["few_changed"], result["all_changed"]
        checks.append(Check(f"one interval with {result['count']} services, attribution on (the "
                            f"default), all changed, ms", every["ms"], 25, " ms", ".1f"))
        lines = [
            "", f"## One interval with {result['count']} live services", "",
            f"{result['count']} cgroups under {result['mount']}, each with a process waking "
            f"every {TICK_MS} ms; the BPF program loaded as the agent does, with "
            f"{result['map_entries']} entries in its cgroup map. Timed in-process: "
            f"`Sampler.measure` (read_snapshot, delta) and `Sampler.services` (resolve, "
            f"by_service, top_services, cpu.pressure, interval_stats for the top "
            f"{every['series_sent'] - 1} and other), {result['repeats']} intervals each:", "",
            f"- all {result['count']} changed since the previous reading: "
            f"{spread(every['ms'], '.1f')} ms ({every['pairs_changed'][0]}–"
            f"{every['pairs_changed'][1]} (waiting cgroup, culprit) pairs an interval, "
            f"{every['overflow_share'][0]:.0%}–{every['overflow_share'][1]:.0%} of their ns "
            f"charged to other)",
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
            lines.append(
                f"- this machine's memory after a pause: writing one byte in each of "
                f"{pages['pages']} pages (as many as the map's values fill) takes "
                f"{pages['warm_ms']:.2f} ms warm and {pages['after_pause_ms']:.2f} ms after "
                f"the same {pages['pause_s']:g} s pause the timed readings follow; every "
                f"interval of the agent starts after such a pause.")
        lines += build_lines(result, checks)
    elif result.get("failure"):
        lines = ["", f"## Many live services: FAILED: {result['failure']}"]
    return lines


def build_lines(result: dict, checks: list) -> List[str]:
    """The report's lines and targets for the builds other than the default."""
    from common import Check, spread
    lines: List[str] = []
    for key, label, _ in BUILDS[1:]:
        timed = result.get(key) or {"failure": "not measured"}
        every = timed.get("all_changed")
        checks.append(Check(f"one interval with {result['count']} services, {label.split(' (')[0]}"
                            f", all changed, ms", every["ms"] if every else [], 20, " ms", ".1f"))
        if not every:
            lines.append(f"- {label}: FAILED: {timed.get('failure')}")
            continue
        few = timed["few_changed"]
        lines += [
            f"- {label}, the same readings: all changed "
            f"{spread(every['ms'], '.1f')} ms, none changed {spread(few['ms'], '.1f')} ms, "
            f"the first interval {timed['first_ms']:.1f} ms; all changed, by stage (medians, "
            f"ms): " + ", ".join(f"{k} {v:.1f}" for k, v in timed["stages_ms"].items()),
            f"- {label}, profile (ms per interval): " + "; ".join(timed.get("profile", [])),
        ]
    return lines


def command_line(name: str, description: str, measure_phase, profile_to_stderr: bool) -> int:
    """Run a phase from the command line: --count and --repeats in, its result as JSON on
    stdout (bench/run.py reads it), progress on stderr as ``name: ...``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    result = measure_phase(args.count, args.repeats,
                           progress=lambda text: print(f"{name}: {text}", file=sys.stderr))
    if profile_to_stderr:
        for line in result.pop("profile", []):
            print(f"  {line}", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0


def main() -> int:
    return command_line("many_services", __doc__.splitlines()[0], measure, True)


if __name__ == "__main__":
    sys.exit(main())
