"""The spool of an earlier version (``spool.jsonl``, JSON lines), read into the outbox once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List

from . import lines
from .files import unlink
from .lines import Chunk, lines_chunk, parse_line
from .recovery import set_aside

LEGACY_SPOOL = "spool.jsonl"
_MAX_BYTES = 256 * lines.SEGMENT_BYTES  # what such a spool could ever hold


def import_spool(path: Path, append: Callable[[Chunk], int], newest_allowed: float) -> int:
    """Append what the spool at ``path`` holds, checked like the rest, then remove it; set it
    aside if it is damaged. Return the intervals moved."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_BYTES:
            if path.exists() or path.is_symlink():
                set_aside(path, "not a regular file of a sane size")
            return 0
        intervals = _intervals(path.read_text(encoding="utf-8"), newest_allowed)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, TypeError,
            OverflowError) as error:
        set_aside(path, f"{type(error).__name__}: {error}"[:200])
        return 0
    for data in intervals:
        append(lines_chunk(data))
    unlink(path)
    return len(intervals)


def _intervals(text: str, newest_allowed: float) -> List[bytes]:
    found = text.split("\n")
    if found[-1] != "":
        raise ValueError("truncated")
    if json.loads(found[0]) != {"format": "gsender-bcc spool", "version": 1}:
        raise ValueError("not a gsender-bcc spool")
    intervals = []
    for line in found[1:-1]:
        items = json.loads(line)
        if not isinstance(items, list) or not items or not all(
                isinstance(item, list) and len(item) == 3 for item in items):
            raise ValueError("a batch is not a list of [path, value, timestamp]")
        data = b"".join(f"{path} {value} {int(stamp)}\n".encode() for path, value, stamp in items)
        parsed = [parse_line(x) for x in data.split(b"\n")[:-1]]
        if any(p is None for p in parsed):
            raise ValueError("a batch is malformed")
        if any(p[2] > newest_allowed for p in parsed):
            raise ValueError("a batch has a timestamp in the future")
        intervals.append(data)
    return intervals
