"""The time a CPU's tasks lost to the hypervisor (and to interrupts, where those are kept apart).

The scheduler keeps two clocks for each CPU: ``clock``, wall time, which the program's
timestamps follow, and ``clock_task``, by which tasks are charged their CPU time
(schedstat's sum_exec_runtime). ``clock_task`` leaves out the time a hypervisor gives another
guest (CONFIG_PARAVIRT_TIME_ACCOUNTING) and, with CONFIG_IRQ_TIME_ACCOUNTING, interrupts. While
that time is taken from a task that holds the CPU, the tasks behind it go on waiting, and its
CPU time does not grow. /sys/kernel/debug/sched/debug shows both clocks to the nanosecond, so
physics that counts CPU time is off by at most the growth of their difference.
"""

import re
import subprocess
from pathlib import Path

DEBUGFS = Path("/sys/kernel/debug")
SCHED_DEBUG = DEBUGFS / "sched" / "debug"
_CLOCK = re.compile(r"^\s+\.(clock|clock_task)\s+:\s+(\d+)\.(\d{6})$", re.M)


def mount_debugfs() -> bool:
    """Mount debugfs if the scheduler's debug file is not there; True if this mounted it."""
    if SCHED_DEBUG.exists():
        return False
    return subprocess.run(["mount", "-t", "debugfs", "debugfs", str(DEBUGFS)],
                          capture_output=True).returncode == 0


def unmount_debugfs() -> None:
    subprocess.run(["umount", str(DEBUGFS)], capture_output=True)


def clocks_apart_ns(text: str, cpu: int) -> int:
    """``clock`` − ``clock_task`` of ``cpu`` in the text of sched/debug (both in ms, to 6 places)."""
    block = re.search(rf"^cpu#{cpu},.*?(?=^cpu#|\Z)", text, re.M | re.S)
    if block is None:
        raise ValueError(f"no cpu#{cpu} in {SCHED_DEBUG}")
    clocks = {name: int(ms) * 1_000_000 + int(ns) for name, ms, ns in _CLOCK.findall(block[0])}
    return clocks["clock"] - clocks["clock_task"]


def stolen_ns(cpu: int) -> int:
    """What ``cpu``'s tasks have lost so far; 0 where sched/debug cannot be read (so a test that
    allows for it is as strict as without it)."""
    try:
        return clocks_apart_ns(SCHED_DEBUG.read_text(), cpu)
    except OSError:
        return 0
