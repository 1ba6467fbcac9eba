"""What the kernel's tracefs says about the scheduler tracepoints we attach to."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

from .errors import EX_UNAVAILABLE, AgentError

MOUNT_POINTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The waits start at the first two and at sched_switch, and end at sched_switch; a task's
# start time is forgotten at sched_process_free.
TRACEPOINTS = ("sched_wakeup", "sched_wakeup_new", "sched_switch", "sched_process_free")


def tracefs_root(candidates: Iterable[Path] = MOUNT_POINTS) -> Path:
    """Return the mounted tracefs, or fail with how to mount it."""
    for root in candidates:
        if (root / "events").is_dir():
            return root
    raise AgentError("tracefs is not mounted: run 'mount -t tracefs nodev /sys/kernel/tracing'",
                     EX_UNAVAILABLE)


def check_tracepoints(root: Path, names: Iterable[str] = TRACEPOINTS) -> None:
    """Fail naming the first scheduler tracepoint this kernel lacks."""
    for name in names:
        if not (root / "events" / "sched" / name / "format").is_file():
            raise AgentError(f"this kernel has no tracepoint sched:{name} "
                             f"({root}/events/sched/{name} is missing); gsender-bcc needs "
                             f"{', '.join('sched:' + each for each in TRACEPOINTS)}",
                             EX_UNAVAILABLE)


_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.Constant, ast.BitOr, ast.Add, ast.Sub, ast.LShift)


def _evaluate_constant(expression: str) -> int:
    tree = ast.parse(expression, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES) or (
                isinstance(node, ast.Constant) and not isinstance(node.value, int)):
            raise ValueError(f"unexpected {type(node).__name__} in {expression!r}")
    return eval(compile(tree, "<print fmt>", "eval"), {"__builtins__": {}})  # only int arithmetic


def preempted_state_bit(format_text: str) -> int:
    """Return the prev_state bit that sched_switch sets for a preempted task.

    The tracepoint prints a "+" after the state letter when that bit is set; its
    print fmt spells the bit as ``REC->prev_state & <constant> ? "+" : ""``.
    """
    end = format_text.find('? "+"')
    start = format_text.rfind("REC->prev_state &", 0, end)
    if end < 0 or start < 0:
        raise ValueError("its print fmt has no 'REC->prev_state & ... ? \"+\"' term")
    bit = _evaluate_constant(format_text[start + len("REC->prev_state &"):end].strip())
    if bit <= 0 or bit & (bit - 1):
        raise ValueError(f"its preempted marker {bit:#x} is not a single bit")
    return bit


def read_preempted_state_bit(root: Path) -> int:
    """Read the preempted bit from the running kernel's sched_switch format."""
    path = root / "events" / "sched" / "sched_switch" / "format"
    try:
        return preempted_state_bit(path.read_text())
    except (OSError, ValueError, SyntaxError) as error:
        raise AgentError(f"cannot tell how {path} marks a preempted task: {error}",
                         EX_UNAVAILABLE) from None
