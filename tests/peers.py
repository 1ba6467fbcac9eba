"""libbpf-tools' runqlat, the peer the agent's numbers are checked against, and the log2 rows
both are compared in."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

RUNQLAT = Path("/usr/sbin/runqlat")  # Debian's libbpf-tools
_ROW = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)\s*\|", re.MULTILINE)


def runqlat_rows(text: str) -> Dict[int, int]:
    """Parse runqlat's histogram: each row's lower bound in µs (0, 2, 4, 8, ...) -> count."""
    return {int(low): int(count) for low, _, count in _ROW.findall(text)}


def row_of(us: int) -> int:
    """The lower bound of the runqlat row holding a wait of ``us`` µs: [0, 2), [2, 4), ..."""
    return 0 if us < 2 else 1 << (us.bit_length() - 1)


def rows_of_log2(buckets: Sequence) -> Dict[int, int]:
    """Fold the agent's log2 buckets ((lower bound, count): [0], [1], [2, 4), ...) into rows."""
    rows: Dict[int, int] = {}
    for low, count in buckets:
        if count:
            rows[row_of(low)] = rows.get(row_of(low), 0) + count
    return rows


def percentile_row(rows: Mapping[int, int], percent: float) -> Optional[int]:
    """The row in which the given percentile of the samples falls (None: no sample)."""
    total = sum(rows.values())
    if not total:
        return None
    seen = 0
    for low in sorted(rows):
        seen += rows[low]
        if seen * 100 >= percent * total:
            return low
    return max(rows)


def share_apart(a: Mapping[int, int], b: Mapping[int, int]) -> float:
    """The share of the samples the two histograms place in different rows (half the sum of
    the rows' differences in share; 0: the same distribution, 1: no row in common)."""
    total_a, total_b = sum(a.values()) or 1, sum(b.values()) or 1
    return sum(abs(a.get(row, 0) / total_a - b.get(row, 0) / total_b)
               for row in set(a) | set(b)) / 2


def rows_apart(a: Optional[int], b: Optional[int]) -> int:
    """How many rows lie between two rows' lower bounds (0: the same row)."""
    if a is None or b is None:
        return 0 if a == b else 99
    return abs(max(a, 1).bit_length() - max(b, 1).bit_length())


class Runqlat:
    """runqlat attached for one interval of ``seconds``, only to ``pid``'s tasks if given.

    ``attached()`` returns once it traces (it says so before its interval starts);
    ``rows()`` waits for the interval's histogram. Always used as a context manager: the
    process is stopped however the test ends.
    """

    def __init__(self, seconds: int, pid: Optional[int] = None):
        # Line-buffered: on a pipe it would hold even its "Tracing" line until it exits.
        args = ["stdbuf", "-oL", str(RUNQLAT)] + (["-p", str(pid)] if pid else []) + \
            [str(seconds), "1"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.seconds = seconds

    def attached(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"runqlat ended before tracing: {self.proc.stderr.read()}")
            if line.startswith("Tracing"):
                return
            if time.monotonic() > deadline:
                raise AssertionError("runqlat did not start tracing in time")

    def rows(self) -> Dict[int, int]:
        out = self.proc.stdout.read()  # to its end: runqlat exits after its one interval
        if self.proc.wait(timeout=30) != 0:
            raise AssertionError(f"runqlat failed ({self.proc.returncode}): "
                                 f"{self.proc.stderr.read()}")
        return runqlat_rows(out)

    def __enter__(self) -> Runqlat:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
