"""Intervals waiting for Graphite: plain Graphite lines in segment files, oldest first.

The outbox lives in ``<state_directory>/outbox/``. Each interval is appended to
the newest segment (``<sequence>.txt``) and made durable (fdatasync) before
``append`` returns; a new segment starts once the newest holds
``SEGMENT_BYTES``, and a segment is deleted once all of it was delivered. An
operator can read or replay the files with standard tools
(``cat outbox/*.txt | nc graphite 2003``).

Memory holds the list of segments and a read position, never the data, so it
stays flat however long Graphite is away. The outbox is bounded by bytes and by
age; past either the oldest segments are dropped and counted.

Nothing found on disk is trusted: at start every segment is checked line by
line, a damaged one is set aside (renamed ``*.damaged``) with one log line, and
a torn last line (a power cut during an append) is ignored. Every line read for
sending is checked again, so only lines of the agent's own form, with a numeric
value and a timestamp within the age limit, are ever sent.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Iterator, List, Optional, Tuple

log = logging.getLogger(__name__)

SEGMENT_BYTES = 256 << 10
FUTURE_SLACK = 86400
LEGACY_SPOOL = "spool.jsonl"
_SEGMENT_NAME = re.compile(r"^(\d{16})\.txt$")
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


@dataclass(frozen=True)
class Chunk:
    """Lines read for sending, and what consuming them moves past."""

    data: bytes
    intervals: int
    last_stamp: int
    length: int
    segment: int


@dataclass
class _Segment:
    sequence: int
    path: Path
    size: int = 0
    intervals: int = 0
    newest: int = 0
    consumed: int = 0
    consumed_intervals: int = 0


class DiskOutbox:
    """The outbox in a directory; raises OSError at construction if it cannot be used."""

    def __init__(self, directory: Path, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.time):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dropped = 0
        self._clock = clock
        self._segments: Deque[_Segment] = deque()
        self._active: Optional[_Segment] = None
        self._fd: Optional[int] = None
        self._next_sequence = 1  # never reused: a chunk names its segment by sequence
        self._warned_lines: set = set()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not directory.is_dir() or directory.is_symlink():
            raise OSError(errno.ENOTDIR, "not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable")
        self._scan()
        self._import_legacy_spool(directory.parent / LEGACY_SPOOL)
        dropped = self._enforce_limits()
        if dropped:
            log.warning("%s: dropped %d intervals found there that are older than %g h or past "
                        "%d MiB", directory, dropped, max_age / 3600, max_bytes >> 20)
        self.dropped += dropped

    # -- limits --

    def set_limits(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes, self.max_age = max_bytes, max_age
        self.dropped += self._enforce_limits()

    @property
    def intervals(self) -> int:
        return sum(s.intervals - s.consumed_intervals for s in self._segments)

    @property
    def size(self) -> int:
        return sum(s.size - s.consumed for s in self._segments)

    def _enforce_limits(self) -> int:
        """Drop the oldest segments past the age and byte limits; return the intervals dropped."""
        dropped = 0
        oldest_kept = self._clock() - self.max_age
        while self._segments and (self._segments[0].newest < oldest_kept
                                  or (self.size > self.max_bytes and len(self._segments) > 1)):
            dropped += self._drop_head()
        return dropped

    def _drop_head(self) -> int:
        head = self._segments.popleft()
        if head is self._active:
            self._close_active()
        _unlink(head.path)
        return head.intervals - head.consumed_intervals

    # -- appending --

    def append(self, data: bytes, stamp: int) -> int:
        """Store one interval's lines durably; return how many old intervals made room for it."""
        segment = self._active
        if segment is None or segment.size >= SEGMENT_BYTES:
            segment = self._start_segment()
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            self._undo_append(segment)
            raise
        segment.size += len(data)
        segment.intervals += 1
        segment.newest = max(segment.newest, stamp)
        dropped = self._enforce_limits()
        self.dropped += dropped
        return dropped

    def _start_segment(self) -> _Segment:
        self._close_active()
        sequence = self._next_sequence
        path = self.directory / f"{sequence:016d}.txt"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                           | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self._next_sequence = sequence + 1
        try:
            _fsync_directory(self.directory)
        except OSError:
            pass  # the data is synced; only the name could be lost at a power cut
        self._active = _Segment(sequence, path)
        self._segments.append(self._active)
        return self._active

    def _undo_append(self, segment: _Segment) -> None:
        """Cut a failed append off; if that fails too, seal the segment at its last good size."""
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError:
            self._close_active()
        if segment.size == 0:
            self._segments.remove(segment)
            self._close_active()
            _unlink(segment.path)

    def _close_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._active = None, None

    def close(self) -> None:
        """Close the newest segment; what waits stays on disk."""
        self._close_active()

    # -- reading for delivery --

    def peek(self, max_bytes: int) -> Optional[Chunk]:
        """Return the oldest waiting lines, up to about ``max_bytes``, or None."""
        while self._segments:
            head = self._segments[0]
            if head.consumed < head.size:
                return self._read_chunk(head, max_bytes)
            if head is self._active:
                return None
            self._segments.popleft()
            _unlink(head.path)
        return None

    def _read_chunk(self, head: _Segment, max_bytes: int) -> Chunk:
        with open(head.path, "rb") as source:
            source.seek(head.consumed)
            raw = source.read(min(max_bytes, head.size - head.consumed))
        at_end = head.consumed + len(raw) >= head.size
        lines = raw.split(b"\n")
        lines.pop()  # what follows the last newline: empty, or the start of a line read next time
        if not lines:  # one line longer than max_bytes: take it whole
            with open(head.path, "rb") as source:
                source.seek(head.consumed)
                lines = [source.readline().rstrip(b"\n")]
            at_end = head.consumed + len(lines[0]) + 1 >= head.size
        parsed = [parse_line(line) for line in lines]
        stamps = [p[2] if p else None for p in parsed]
        runs = sum(1 for a, b in zip(stamps, stamps[1:]) if a != b)
        if not at_end and runs:  # end on an interval's last line, so chunks hold whole intervals
            last = len(stamps) - 1
            while stamps[last - 1] == stamps[last]:
                last -= 1
            lines, parsed = lines[:last], parsed[:last]
            intervals = runs
        else:
            intervals = runs + 1 if at_end else runs
        length = sum(len(line) + 1 for line in lines)
        oldest_kept = self._clock() - self.max_age
        kept = [line for line, p in zip(lines, parsed) if p and p[2] >= oldest_kept]
        if len(kept) != len(lines) and head.sequence not in self._warned_lines:
            self._warned_lines.add(head.sequence)
            log.warning("%s: skipped %d lines that are malformed or older than the age limit",
                        head.path, len(lines) - len(kept))
        data = b"".join(line + b"\n" for line in kept)
        return Chunk(data, intervals, max((p[2] for p in parsed if p), default=0), length,
                     head.sequence)

    def consume(self, chunk: Chunk) -> None:
        """Forget lines that were delivered, if they are still the oldest."""
        if not self._segments or self._segments[0].sequence != chunk.segment:
            return
        head = self._segments[0]
        head.consumed += chunk.length
        head.consumed_intervals = min(head.intervals, head.consumed_intervals + chunk.intervals)
        if head.consumed >= head.size:
            self._segments.popleft()
            if head is self._active:
                self._close_active()
            _unlink(head.path)

    # -- what was on disk at start --

    def _scan(self) -> None:
        found = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
                self._next_sequence = max(self._next_sequence, int(match.group(1)) + 1)
        for sequence, path in sorted(found):
            try:
                segment = self._check_segment(sequence, path)
            except (OSError, ValueError) as error:
                self._set_aside(path, str(getattr(error, "strerror", None) or error))
                continue
            if segment.size:
                self._segments.append(segment)
            else:
                _unlink(path)

    def _check_segment(self, sequence: int, path: Path) -> _Segment:
        stat = os.stat(path, follow_symlinks=False)
        if not (stat.st_mode & 0o170000 == 0o100000):
            raise ValueError("not a regular file")
        if stat.st_size > 4 * SEGMENT_BYTES:
            raise ValueError(f"{stat.st_size} bytes, more than a segment ever holds")
        with open(path, "rb") as source:
            raw = source.read()
        size = raw.rfind(b"\n") + 1
        if size < len(raw):
            log.warning("%s: ignoring a torn last line (%d bytes)", path, len(raw) - size)
        segment = _Segment(sequence, path, size=size)
        last_stamp = None
        newest_allowed = self._clock() + FUTURE_SLACK
        for number, line in enumerate(raw[:size].split(b"\n")[:-1], start=1):
            parsed = parse_line(line)
            if parsed is None:
                raise ValueError(f"line {number} is not a Graphite line of this agent")
            if parsed[2] > newest_allowed:
                raise ValueError(f"line {number} has a timestamp in the future")
            if parsed[2] != last_stamp:
                segment.intervals += 1
                last_stamp = parsed[2]
            segment.newest = max(segment.newest, parsed[2])
        return segment

    def _set_aside(self, path: Path, reason: str) -> None:
        aside = path.with_name(f"{path.name}.damaged")
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        log.error("%s is damaged (%s): %s", path, reason,
                  f"moved it to {aside}" if aside else "left it there and ignore it")

    def _import_legacy_spool(self, path: Path) -> None:
        """Move what an earlier version spooled (JSON lines) into the outbox, checked like the rest."""
        try:
            if not path.is_file() or path.stat().st_size > 4 * SEGMENT_BYTES * 64:
                if path.exists() or path.is_symlink():
                    self._set_aside(path, "not a regular file of a sane size")
                return
            text = path.read_text(encoding="utf-8")
            intervals = _legacy_intervals(text, self._clock() + FUTURE_SLACK)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError, TypeError,
                OverflowError) as error:
            self._set_aside(path, f"{type(error).__name__}: {error}"[:200])
            return
        for stamp, data in intervals:
            self.append(data, stamp)
        _unlink(path)
        log.info("moved %d intervals from %s into the outbox", len(intervals), path)


def _legacy_intervals(text: str, newest_allowed: float) -> List[Tuple[int, bytes]]:
    lines = text.split("\n")
    if lines[-1] != "":
        raise ValueError("truncated")
    if json.loads(lines[0]) != {"format": "gsender-bcc spool", "version": 1}:
        raise ValueError("not a gsender-bcc spool")
    intervals = []
    for line in lines[1:-1]:
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
        intervals.append((int(items[0][2]), data))
    return intervals


class MemoryOutbox:
    """A small bounded outbox in memory, used while the state directory cannot be written."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.dropped = 0
        self._items: Deque[Tuple[bytes, int]] = deque()
        self._bytes = 0

    @property
    def intervals(self) -> int:
        return len(self._items)

    def append(self, data: bytes, stamp: int) -> int:
        self._items.append((data, stamp))
        self._bytes += len(data)
        dropped = 0
        while self._bytes > self.max_bytes and len(self._items) > 1:
            self._bytes -= len(self._items.popleft()[0])
            dropped += 1
        self.dropped += dropped
        return dropped

    def peek(self, max_bytes: int) -> Optional[Chunk]:
        if not self._items:
            return None
        data, stamp = self._items[0]
        return Chunk(data, 1, stamp, len(data), id(data))

    def consume(self, chunk: Chunk) -> None:
        if self._items and id(self._items[0][0]) == chunk.segment:
            self._bytes -= len(self._items.popleft()[0])

    def drain(self) -> Iterator[Chunk]:
        while self._items:
            data, stamp = self._items.popleft()
            self._bytes -= len(data)
            yield Chunk(data, 1, stamp, len(data), 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
