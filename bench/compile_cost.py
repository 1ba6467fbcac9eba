"""make bench, compile phase: BCC's compile of the agent's program against the package's include
tree (what the agent does) beside the same compile against the distro's kernel headers (what it
did before it carried the tree).

Each compile runs in a fresh process that imports bcc, notes its peak RSS, builds the program
exactly as the agent's probe does (same flags, raw tracepoints, per-service breakdown on; BCC
loads and attaches it), and reports the time BPF() took and its peak RSS after. The headers
side needs /lib/modules/<release>/build, which bench/peer-headers.sh links for the bench.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")

# argv[1]: "tree" or "headers". Prints one JSON line.
COMPILE_ONCE = r"""
import json, os, sys, time
import bcc
from gsender_bcc import btf, program
from gsender_bcc.probe import compiling_against

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

settings = program.ProgramSettings(raw=btf.read_raw_layout(), per_cgroup=True)
folder = program.source_dir()
source = str(folder / program.SOURCE_NAME).encode()
flags = list(settings.cflags(folder))
before = peak_kib()
started = time.monotonic()
if sys.argv[1] == "tree":
    with compiling_against(settings.include_tree):
        b = bcc.BPF(src_file=source, cflags=flags)
else:
    os.environ.pop("BCC_KERNEL_SOURCE", None)
    b = bcc.BPF(src_file=source, cflags=flags)
took = time.monotonic() - started
print(json.dumps({"seconds": took, "peak_kib_before": before, "peak_kib": peak_kib()}))
b.cleanup()
"""

SIDES = {"tree": "gsender-bcc's include tree (now)",
         "headers": "the distro's kernel headers (before)"}


def headers_in_place() -> bool:
    return (Path("/lib/modules") / os.uname().release / "build" / "include").is_dir()


def compile_run(repeats: int) -> Dict[str, List[dict]]:
    """Compile ``repeats`` times on each side, alternating; a side that fails records why."""
    results: Dict[str, List[dict]] = {side: [] for side in SIDES}
    for _ in range(repeats):
        for side in SIDES:
            if side == "headers" and not headers_in_place():
                results[side].append({"failure": "no kernel headers at /lib/modules/<release>/build"})
                continue
            done = subprocess.run([PYTHON, "-c", COMPILE_ONCE, side], capture_output=True,
                                  text=True, timeout=300, cwd=ROOT)
            if done.returncode != 0:
                results[side].append({"failure": (done.stderr.strip().splitlines() or ["?"])[-1]})
            else:
                results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def values(runs: List[dict], key: str, scale: float = 1.0) -> List[Optional[float]]:
    return [run[key] * scale if key in run else None for run in runs]


def compile_report(results: Dict[str, List[dict]], spread) -> List[str]:
    """The report's section: seconds and peak RSS per side, medians with ranges."""
    lines = ["## Compiling the program", "",
             "BCC's compile, load and attach of the agent's program (raw tracepoints, per-service "
             "breakdown on), each in a fresh process; peak RSS is the process's VmHWM after the "
             "compile, and the increase over its peak before it (bcc imported).", "",
             "| compiled against | seconds | peak RSS MiB | peak RSS added MiB | failures |",
             "|---|---:|---:|---:|---:|"]
    for side, name in SIDES.items():
        runs = results.get(side, [])
        added = [run["peak_kib"] - run["peak_kib_before"] if "peak_kib" in run else None
                 for run in runs]
        failures = [run["failure"] for run in runs if "failure" in run]
        lines.append(f"| {name} | {spread(values(runs, 'seconds'), '.3f')} | "
                     f"{spread(values(runs, 'peak_kib', 1 / 1024), '.1f')} | "
                     f"{spread([a and a / 1024 for a in added], '.1f')} | "
                     f"{len(failures)}{' (' + failures[0] + ')' if failures else ''} |")
    return lines
