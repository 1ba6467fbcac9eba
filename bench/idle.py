"""Phase 2: gsender-bcc idle, host-only, default and with culprit attribution side by side,
sending to a throwaway carbon-cache."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from common import Running, Tracer, agent_command, cpu_seconds, map_memory, proc_status, progress
from local_carbon import CarbonCache


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
              ("gsender", "bench.default", []),
              ("breakdown", "bench.breakdown", ["--max-culprits", "0"])]

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
    """Run the modes side by side against one carbon-cache; return their figures."""
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
