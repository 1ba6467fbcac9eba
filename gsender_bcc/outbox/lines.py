"""The outbox's content: Graphite plaintext lines, grouped in runs of one timestamp.

An interval is the lines of one stamp; where it was split over two segments, it is a run of
that stamp at the end of one and another at the start of the next. Nothing else is kept beside
the lines: where a run ends, and so where an interval ends, is read from the lines themselves.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Tuple

SEGMENT_BYTES = 256 << 10  # no segment written holds more (an interval larger is split)
# The longest line the agent writes: a path of at most 1000 characters (metrics.MAX_PATH_CHARS),
# a value of at most 40 and a stamp of at most 12, the two spaces and the newline.
LONGEST_LINE = 1000 + 40 + 12 + 3
_LINE = re.compile(rb"^([A-Za-z0-9_.;=-]{1,1000}) (\S{1,40}) (\d{1,12})$")


def parse_line(line: bytes) -> Optional[Tuple[bytes, float, int]]:
    """Return (path, value, timestamp) of one Graphite line (no newline), or None if malformed."""
    match = _LINE.match(line)
    if not match:
        return None
    try:
        value = float(match.group(2))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return match.group(1), value, int(match.group(3))


class Run(NamedTuple):
    """Consecutive lines of one stamp: where the last of them ends, and the stamp."""

    end: int
    stamp: int


Runs = Tuple[Run, ...]


@dataclass(frozen=True)
class Chunk:
    """Lines read for sending, the runs they hold (ends within ``data``), how many intervals
    they end, and what consuming them moves past in their segment."""

    data: bytes
    intervals: int
    runs: Runs
    length: int
    segment: int

    @property
    def last_stamp(self) -> int:
        return self.runs[-1].stamp if self.runs else 0


def one_interval(data: bytes, stamp: int) -> Chunk:
    """Return a new interval's lines, all stamped ``stamp``, as a chunk to append."""
    return Chunk(data, 1, (Run(len(data), stamp),) if data else (), len(data), 0)


def runs_of_lines(stamps: List[int], ends: List[int]) -> List[Run]:
    """Return the runs of lines that end at ``ends`` and carry ``stamps`` (line by line)."""
    runs: List[Run] = []
    for stamp, end in zip(stamps, ends):
        if runs and runs[-1].stamp == stamp:
            runs[-1] = Run(end, stamp)
        else:
            runs.append(Run(end, stamp))
    return runs


def runs_in(lines: bytes, start: int = 0) -> List[Run]:
    """Return the runs of the complete lines of ``lines`` (stamp 0 where malformed), their
    ends counted from ``start``."""
    stamps, ends, end = [], [], start
    for line in lines.split(b"\n")[:-1]:
        parsed = parse_line(line)
        end += len(line) + 1
        stamps.append(parsed[2] if parsed else 0)
        ends.append(end)
    return runs_of_lines(stamps, ends)


def count_intervals(runs: List[Run], before: Optional[int]) -> int:
    """Return how many intervals ``runs`` begin: runs of one stamp, the first not counted
    if it continues the run ``before`` (its stamp) of the segment before."""
    return sum(1 for k, run in enumerate(runs) if run.stamp != (runs[k - 1].stamp if k else before))


def chunk_runs(runs: List[Run], limit: int) -> List[Run]:
    """Return the runs a chunk takes from ``runs`` (waiting, oldest first, the last one past
    ``limit`` unless it ends the segment): the whole runs ending by ``limit``, cut after an
    interval's last run, unless the oldest interval alone passes ``limit`` (then its runs that
    fit); none if the oldest run alone passes it."""
    fit = list(itertools.takewhile(lambda run: run.end <= limit, runs))
    if len(fit) == len(runs):
        return fit
    whole = len(fit)
    while whole and fit[whole - 1].stamp == runs[whole].stamp:
        whole -= 1
    return fit[:whole] or fit


def pieces(data: bytes, limit: int) -> Iterator[bytes]:
    """Split lines into pieces of whole lines, each at most ``limit`` bytes if a line fits."""
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # a single line longer than the limit goes alone
            end = data.find(b"\n", start) + 1 or len(data)
        yield data[start:end]
        start = end


def stamped_pieces(chunk: Chunk) -> Iterator[Tuple[bytes, int]]:
    """Yield a chunk's lines in pieces of one stamp, none larger than a segment if a line fits."""
    start = 0
    for end, stamp in chunk.runs:
        for piece in pieces(chunk.data[start:end], SEGMENT_BYTES):
            yield piece, stamp
        start = end


def lines_chunk(data: bytes) -> Chunk:
    """Return one interval's lines as a chunk, its runs read from the lines."""
    return Chunk(data, 1, tuple(runs_in(data)), len(data), 0)
