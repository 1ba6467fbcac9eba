"""Reading the oldest waiting lines for delivery, in chunks cut on interval boundaries.

A chunk's runs are read from its lines: each line carries its interval's stamp. Every line is
checked again as it is read, so only lines of the agent's own form within the age limit are
sent; the rest are skipped and counted for one log line per segment.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional

from .files import Gone, Segment, open_segment
from .lines import LONGEST_LINE, Chunk, Run, chunk_runs, parse_line, runs_of_lines


@dataclass(frozen=True)
class Read:
    """A chunk, and how many lines read for it were skipped as malformed or too old."""

    chunk: Chunk
    skipped: int


def read_chunk(head: Segment, max_bytes: int, oldest_kept: float) -> Read:
    """Read the oldest waiting lines of ``head``, up to about ``max_bytes``: whole intervals
    while one fits, else the whole lines of the oldest that fit, one line at least."""
    limit = head.consumed + max_bytes
    wanted = min(head.size, limit + LONGEST_LINE) - head.consumed  # one line past the limit
    with open_segment(head) as source:
        source.seek(head.consumed)
        raw = source.read(wanted)
    if len(raw) < wanted:
        raise Gone("was cut short by someone else")
    lines = raw[:raw.rfind(b"\n") + 1].split(b"\n")[:-1]
    if not lines:
        raise Gone("holds a line longer than any this agent writes")
    stamps, ends, end, stamp = [], [], head.consumed, 0
    for line in lines:  # where runs end: only the stamps, the lines are checked once taken
        stamp = _stamp_of(line, stamp)
        end += len(line) + 1
        stamps.append(stamp)
        ends.append(end)
    runs = runs_of_lines(stamps, ends)
    if runs[-1].end < head.size and runs[-1].end <= limit:  # the last run read goes on
        runs.append(Run(head.size + 1, runs[-1].stamp))
    taken = chunk_runs(runs, limit)
    if not taken:  # the oldest run alone passes max_bytes: its whole lines that fit
        fit = [e for e in ends if e <= min(limit, runs[0].end)] or ends[:1]
        taken = [Run(fit[-1], runs[0].stamp)]
    ended = sum(1 for k, run in enumerate(taken) if run.end == runs[k].end
                and (k + 1 == len(runs) or runs[k + 1].stamp != run.stamp))
    count = bisect.bisect_left(ends, taken[-1].end) + 1
    return _checked(lines[:count], oldest_kept, ended, taken[-1].end - head.consumed,
                    head.sequence)


def _stamp_of(line: bytes, before: int) -> int:
    """The stamp a line ends with, or ``before`` if it ends with none (it stays in its run)."""
    tail = line[line.rfind(b" ") + 1:]
    return int(tail) if tail.isdigit() and len(tail) <= 12 else before


def _checked(lines: List[bytes], oldest_kept: float, ended: int, length: int,
             sequence: int) -> Read:
    """Keep the lines of the agent's form within the age limit."""
    kept: List[bytes] = []
    stamps, ends, size = [], [], 0
    for line in lines:
        fields = parse_line(line)
        if fields is not None and fields[2] >= oldest_kept:
            kept.append(line + b"\n")
            size += len(line) + 1
            stamps.append(fields[2])
            ends.append(size)
    runs = tuple(runs_of_lines(stamps, ends))
    return Read(Chunk(b"".join(kept), ended, runs, length, sequence), len(lines) - len(kept))


@dataclass(frozen=True)
class Peeked:
    """The chunk last read, and what it was read from: handed out again while nothing it holds
    changed, so a server that refuses every try in an outage costs no new reading."""

    chunk: Chunk
    segment: Segment
    consumed: int
    max_bytes: int
    size: Optional[int]  # the segment's size then, if the chunk reached its end

    @classmethod
    def of(cls, chunk: Chunk, head: Segment, max_bytes: int) -> Peeked:
        reached_end = head.consumed + chunk.length >= head.size
        return cls(chunk, head, head.consumed, max_bytes, head.size if reached_end else None)

    def still(self, head: Segment, max_bytes: int, oldest_kept: float) -> bool:
        """Tell whether reading ``head`` again would give the same chunk."""
        return (head is self.segment and head.consumed == self.consumed
                and max_bytes == self.max_bytes and self.size in (None, head.size)
                and all(stamp >= oldest_kept for _, stamp in self.chunk.runs))
