"""libbpf-tools' runqlat, the peer the agent's numbers are checked against (or, where a release
has no libbpf-tools, bpftrace timing the same waits), and the log2 rows both are compared in.
Also installed into the VM guests beside guest_checks.py."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

# Debian's libbpf-tools: bookworm names it runqlat, trixie runqlat-libbpf.
RUNQLAT_NAMES = (Path("/usr/sbin/runqlat"), Path("/usr/sbin/runqlat-libbpf"))


def runqlat_path() -> Optional[Path]:
    """Where libbpf-tools' runqlat is installed, or None."""
    return next((path for path in RUNQLAT_NAMES if path.exists()), None)
_ROW = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)\s*\|", re.MULTILINE)
_BPFTRACE_ROW = re.compile(r"^\[(\d+)([KMG]?)(?:, \d+[KMG]?\))?\]?[ \t]+(\d+)", re.MULTILINE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# The seed's runqlat.bt without its #include (the guests have no kernel headers): TASK_RUNNING
# is 0. It says "Tracing" once every probe is attached, and "End" right after @usecs at the
# interval's end, before its slow exit (seconds in a guest under TCG).
RUNQLAT_BT = """
BEGIN { printf("Tracing\\n"); }
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @q[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0 && args->prev_pid != 0) { @q[args->prev_pid] = nsecs; }
  $ns = @q[args->next_pid];
  if ($ns) { @usecs = hist((nsecs - $ns) / 1000); }
  delete(@q[args->next_pid]);
}
interval:s:SECONDS { print(@usecs); clear(@usecs); printf("End\\n"); exit(); }
END { clear(@q); }
"""


def runqlat_rows(text: str) -> Dict[int, int]:
    """Parse runqlat's histogram: each row's lower bound in µs (0, 2, 4, 8, ...) -> count."""
    return {int(low): int(count) for low, _, count in _ROW.findall(text)}


def bpftrace_rows(text: str) -> Dict[int, int]:
    """Parse bpftrace's hist(): [0], [1], [2, 4), ... [1K, 2K) -> runqlat's rows, by lower bound."""
    rows: Dict[int, int] = {}
    for low, unit, count in _BPFTRACE_ROW.findall(text):
        row = row_of(int(low) * _UNITS[unit])
        rows[row] = rows.get(row, 0) + int(count)
    return rows


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


def shift_apart(fine: Sequence[Tuple[int, Optional[int], int]], theirs: Mapping[int, int]) -> float:
    """How far the peer's rows lie from the agent's samples once each of these may move by one
    of the agent's own slots (``fine``: (low µs, high µs or None, count), a slot 1 µs wide below
    8 µs, an eighth of its low above): the most, over the edges between the peer's rows, by
    which the peer's share below the edge lies outside the agent's shares below the slot that
    ends there and below the slot that starts there. 0: the peer's rows hold the agent's
    samples, each timed within one slot. Two tracers that stamp a wait a fraction of a µs
    apart agree by it where the waits crowd a row's edge; share_apart does not."""
    total, their_total = sum(n for _, _, n in fine) or 1, sum(theirs.values()) or 1
    worst = 0.0
    for edge in sorted(low for low in set(theirs) | {row_of(low) for low, _, n in fine if n}
                       if low):
        theirs_below = sum(n for low, n in theirs.items() if low < edge) / their_total
        ends = max((low for low, high, _ in fine if high is not None and high <= edge), default=0)
        starts = min((high for low, high, _ in fine if low >= edge and high is not None),
                     default=None)
        low_share = sum(n for _, high, n in fine if high is not None and high <= ends) / total
        high_share = (sum(n for _, high, n in fine if high is not None and high <= starts) / total
                      if starts is not None else 1.0)
        worst = max(worst, low_share - theirs_below, theirs_below - high_share)
    return worst


def rows_apart(a: Optional[int], b: Optional[int]) -> int:
    """How many rows lie between two rows' lower bounds (0: the same row)."""
    if a is None or b is None:
        return 0 if a == b else 99
    return abs(max(a, 1).bit_length() - max(b, 1).bit_length())


# Host-wide, over the same seconds: how far the agent's count may be from the peer's, and the
# share of the samples the two may place in different rows (those on an edge, and the few
# the machine adds at either end while one side reads and the other does not yet).
# COUNT_APART holds in the guests, whose peers end their interval seconds before the agent's
# last reading under TCG; on the build host the two read within a write of each other.
COUNT_APART = 0.05
HOST_COUNT_APART = 0.01
# One wakee's waits, the agent's samples free to move by one of its slots (shift_apart): the
# counts' own difference (at most 1 %) and as much again.
SHIFT_APART = 0.02
ROWS_APART = 0.15
# Waits only one side can count, whatever the load: at each end of the interval, the test's
# own wakeup on the peer's line ("Tracing", then its first line after the interval) ends
# after one side has read and before the other does.
EDGE_WAITS = 2


def agreement(mine: Mapping[int, int], theirs: Mapping[int, int],
              count_apart: float = COUNT_APART) -> Tuple[bool, str]:
    """Whether two histograms of the same seconds agree: as many samples (within count_apart
    and EDGE_WAITS), the median and the 99th percentile in the same or a neighbouring row, and all but
    ROWS_APART of the samples in the same rows. Returns the verdict and what was compared."""
    count, their_count = sum(mine.values()), sum(theirs.values())
    medians = [(percentile_row(mine, p), percentile_row(theirs, p)) for p in (50, 99)]
    apart = share_apart(mine, theirs)
    ok = (their_count > 0 and abs(count - their_count) <= count_apart * their_count + EDGE_WAITS
          and all(rows_apart(a, b) <= 1 for a, b in medians) and apart <= ROWS_APART)
    detail = (f"agent {count} waits, p50 row {medians[0][0]}, p99 row {medians[1][0]}; peer "
              f"{their_count} waits, p50 row {medians[0][1]}, p99 row {medians[1][1]}; "
              f"{apart:.1%} of the samples in other rows; agent rows {sorted(mine.items())}, "
              f"peer rows {sorted(theirs.items())}")
    return ok, detail


# Where the medians lie in neighbouring rows, the waits crowding the edge between them: how
# far from half each side's share below that edge may be. The two tracers read the clock one
# after the other at both ends of a wait, a fraction of a microsecond apart.
MEDIAN_EDGE = 0.1


def medians_agree(mine: Mapping[int, int], theirs: Mapping[int, int]) -> bool:
    """The medians in one row, or in neighbouring rows with each side's share below the edge
    between them within MEDIAN_EDGE of half."""
    medians = percentile_row(mine, 50), percentile_row(theirs, 50)
    apart = rows_apart(*medians)
    if apart != 1:
        return apart == 0
    edge = max(medians)
    return all(abs(sum(n for low, n in rows.items() if low < edge) / sum(rows.values()) - 0.5)
               <= MEDIAN_EDGE for rows in (mine, theirs))


class Runqlat:
    """runqlat attached for one interval of ``seconds``, only to ``pid``'s tasks if given; with
    ``bpftrace``, RUNQLAT_BT under bpftrace instead (host-wide only).

    ``attached()`` returns once it traces (it says so before its interval starts);
    ``ended()`` once its interval is over (its first line after it); ``rows()`` waits for the
    interval's histogram. Always used as a context manager: the
    process is stopped however the test ends.
    """

    def __init__(self, seconds: int, pid: Optional[int] = None, bpftrace: bool = False,
                 kernel_source: Optional[Path] = None):
        env = None
        if bpftrace:
            args = ["bpftrace", "-B", "line", "-e", RUNQLAT_BT.replace("SECONDS", str(seconds))]
            if kernel_source is not None:
                # bpftrace before 0.12 parses its own header, which includes linux/types.h,
                # even for a script that includes nothing.
                env = {**os.environ, "BPFTRACE_KERNEL_SOURCE": str(kernel_source)}
        else:
            # Line-buffered: on a pipe it would hold even its "Tracing" line until it exits.
            args = ["stdbuf", "-oL", str(runqlat_path())] + (["-p", str(pid)] if pid else []) + \
                [str(seconds), "1"]
        self.parse = bpftrace_rows if bpftrace else runqlat_rows
        self.end = "End" if bpftrace else None  # runqlat: its output ends as it exits
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.seconds = seconds
        self.lines: List[str] = []  # what it printed after "Tracing"

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

    def ended(self) -> None:
        """Wait for the peer's first line after its interval: a reading taken right after it
        ends within that line's write of the peer's own (the agent's edge of the interval is
        then the peer's, not the whole of its output and exit)."""
        if not self.lines:
            self.lines.append(self.proc.stdout.readline())

    def rows(self) -> Dict[int, int]:
        lines = self.lines
        for line in self.proc.stdout:
            if line.strip() == self.end:
                return self.parse("".join(lines))
            lines.append(line)
        if self.proc.wait(timeout=30) != 0 or self.end is not None:
            raise AssertionError(f"the peer failed ({self.proc.returncode}): "
                                 f"{self.proc.stderr.read()}")
        return self.parse("".join(lines))

    def __enter__(self) -> Runqlat:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
