"""What the outbox finds on disk at start: every segment checked line by line, a damaged one
set aside, and the ``*.damaged`` files kept within the byte limit."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from . import lines
from .files import DAMAGED_SUFFIX, Segment, inode, unlink
from .lines import count_intervals, parse_line, runs_of_lines

log = logging.getLogger(__name__)

CHECK_SEGMENTS = 4  # a segment found at start may hold this many times more (older versions)
FUTURE_SLACK = 86400  # a stamp further ahead of the clock than this is no interval of ours
_SEGMENT_NAME = re.compile(r"^(\d{16})\.txt$")  # as files.segment_path writes it
# The index an earlier version kept beside each segment; the lines alone say what it said.
_OLD_INDEX_SUFFIX = ".stamps"


def scan(directory: Path, clock: Callable[[], float]) -> Tuple[List[Segment], int]:
    """Return the segments waiting in ``directory``, oldest first, and the next sequence."""
    found, next_sequence = [], 1
    for entry in os.scandir(directory):
        if entry.name.endswith(_OLD_INDEX_SUFFIX):
            unlink(Path(entry.path))
        match = _SEGMENT_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
            next_sequence = max(next_sequence, int(match.group(1)) + 1)
    segments = []
    carried = None  # the last stamp of the segment before: an interval split over both
    for sequence, path in sorted(found):
        try:
            segment, carried = _check_segment(sequence, path, carried, clock() + FUTURE_SLACK)
        except (OSError, ValueError) as error:
            carried = None
            set_aside(path, str(getattr(error, "strerror", None) or error))
            continue
        if segment.size:
            segments.append(segment)
        else:
            unlink(path)
    return segments, next_sequence


def _check_segment(sequence: int, path: Path, carried: Optional[int],
                   newest_allowed: float) -> Tuple[Segment, Optional[int]]:
    """Check a segment found at start; return it and its last stamp. An interval that
    began in the segment before (its last stamp is ``carried``) is counted there only."""
    stat = os.stat(path, follow_symlinks=False)
    if not (stat.st_mode & 0o170000 == 0o100000):
        raise ValueError("not a regular file")
    if stat.st_size > CHECK_SEGMENTS * lines.SEGMENT_BYTES:
        raise ValueError(f"{stat.st_size} bytes, more than a segment ever holds")
    with open(path, "rb") as source:
        raw = source.read()
    size = raw.rfind(b"\n") + 1
    if size < len(raw):
        log.warning("%s: ignoring a torn last line (%d bytes)", path, len(raw) - size)
    stamps, ends, end = [], [], 0
    for number, line in enumerate(raw[:size].split(b"\n")[:-1], start=1):
        parsed = parse_line(line)
        if parsed is None:
            raise ValueError(f"line {number} is not a Graphite line of this agent")
        if parsed[2] > newest_allowed:
            raise ValueError(f"line {number} has a timestamp in the future")
        end += len(line) + 1
        stamps.append(parsed[2])
        ends.append(end)
    runs = runs_of_lines(stamps, ends)
    segment = Segment(sequence, path, inode(stat), size=size,
                      intervals=count_intervals(runs, carried), newest=max(stamps, default=0))
    return segment, runs[-1].stamp if runs else carried


def set_aside(path: Path, reason: str) -> None:
    """Rename a damaged file ``*.damaged``, saying why in one log line."""
    aside: Optional[Path] = path.with_name(f"{path.name}{DAMAGED_SUFFIX}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = None
    log.error("%s is damaged (%s): %s", path, reason,
              f"moved it to {aside}" if aside else "left it there and ignore it")


def bound_damaged(directory: Path, room: int, max_bytes: int) -> None:
    """Remove the oldest ``*.damaged`` files while they pass ``room``, what the outbox leaves
    of ``max_bytes``."""
    damaged = []
    for entry in os.scandir(directory):
        if entry.name.endswith(DAMAGED_SUFFIX) and entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            damaged.append((stat.st_mtime, entry.name, stat.st_size))
    removed = 0
    for _, name, size in sorted(damaged, reverse=True):  # the newest are kept
        room -= size
        if room < 0:
            unlink(directory / name)
            removed += 1
    if removed:
        log.warning("%s: removed the %d oldest *%s files, to stay within %d MiB with the "
                    "outbox", directory, removed, DAMAGED_SUFFIX, max_bytes >> 20)
