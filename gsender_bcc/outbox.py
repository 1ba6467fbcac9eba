"""Intervals waiting for Graphite: plain Graphite lines in segment files, oldest first.

The outbox lives in ``<state_directory>/outbox/``. Each interval is appended to
the newest segment (``<sequence>.txt``) and made durable (fdatasync) before
``append`` returns; a new segment starts once the newest holds
``SEGMENT_BYTES``, and a segment is deleted once all of it was delivered. An
operator can read or replay the files with standard tools
(``cat outbox/*.txt | nc graphite 2003``).

Beside each segment, ``<sequence>.stamps`` keeps each interval's stamp with where its
lines end (one fixed-width record per run of lines of one stamp), so an interval's
identity is never recovered from its text: chunks end on interval boundaries, and
intervals are counted, from the records. The records are a derived index: written
after the lines are synced, not synced themselves, and rebuilt from the lines where
they are missing or do not agree with them (a crash, or segments of an earlier version).

Memory holds the list of segments, a read position and the chunk last read (at
most one chunk), never the rest of the data, so it stays flat however long
Graphite is away; a refused chunk is handed out again without reading it again.
The outbox is bounded by bytes and by age; past either the oldest segments are
dropped and counted.

Nothing found on disk is trusted: at start every segment is checked line by
line, a damaged one is set aside (renamed ``*.damaged``) with one log line, and
a torn last line (a power cut during an append) is ignored. Every line read for
sending is checked again, so only lines of the agent's own form, with a numeric
value and a timestamp within the age limit, are ever sent.
"""

from __future__ import annotations

import errno
import itertools
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

SEGMENT_BYTES = 256 << 10  # no segment written holds more (an interval larger is split)
CHECK_SEGMENTS = 4  # a segment found at start may hold this many times more (older versions)
FUTURE_SLACK = 86400
LEGACY_SPOOL = "spool.jsonl"
NAME_DIGITS = 16
_SEGMENT_NAME = re.compile(r"^(\d{16}|[1-9]\d{16,19})\.txt$")  # as f"{n:016d}" writes
DAMAGED_SUFFIX = ".damaged"
STAMPS_SUFFIX = ".stamps"
RECORD_BYTES = 21  # b"%07d %012d\n": where a run of lines ends in its segment, and its stamp
_RECORD = re.compile(rb"(\d{7}) (\d{12})\n")
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


# (end offset, stamp) of each run of lines that share one stamp, oldest first: an interval
# is one run, or several of the same stamp where it was split.
Runs = Tuple[Tuple[int, int], ...]


@dataclass(frozen=True)
class Chunk:
    """Lines read for sending, the runs they hold (offsets within ``data``), and what
    consuming them moves past."""

    data: bytes
    intervals: int
    runs: Runs
    length: int
    segment: int

    @property
    def last_stamp(self) -> int:
        return self.runs[-1][1] if self.runs else 0


def one_interval(data: bytes, stamp: int) -> Chunk:
    """Return a new interval's lines, all stamped ``stamp``, as a chunk to append."""
    return Chunk(data, 1, ((len(data), stamp),) if data else (), len(data), 0)


def record(end: int, stamp: int) -> bytes:
    """Return the stamps record of a run of lines that ends at ``end`` in its segment."""
    return b"%07d %012d\n" % (end, stamp)


def read_records(raw: bytes) -> List[Tuple[int, int]]:
    """Return the records at the start of ``raw`` up to the first malformed one."""
    found = []
    for start in range(0, len(raw) - RECORD_BYTES + 1, RECORD_BYTES):
        match = _RECORD.fullmatch(raw, start, start + RECORD_BYTES)
        if not match:
            break
        found.append((int(match.group(1)), int(match.group(2))))
    return found


def runs_of_lines(stamps: List[int], ends: List[int]) -> List[Tuple[int, int]]:
    """Return the runs of lines that end at ``ends`` and carry ``stamps`` (line by line):
    what the records say, rebuilt from the lines of a segment written without them."""
    runs: List[Tuple[int, int]] = []
    for stamp, end in zip(stamps, ends):
        if runs and runs[-1][1] == stamp:
            runs[-1] = (end, stamp)
        else:
            runs.append((end, stamp))
    return runs


def count_intervals(runs: List[Tuple[int, int]], before: Optional[int]) -> int:
    """Return how many intervals ``runs`` begin: runs of one stamp, the first not counted
    if it continues the run ``before`` (its stamp) of the segment before."""
    return sum(1 for k, (_, stamp) in enumerate(runs)
               if stamp != (runs[k - 1][1] if k else before))


@dataclass
class _Segment:
    sequence: int
    path: Path
    inode: Tuple[int, int] = (0, 0)  # (st_dev, st_ino): a segment replaced by hand is noticed
    size: int = 0
    intervals: int = 0
    newest: int = 0
    consumed: int = 0
    consumed_intervals: int = 0
    records: int = 0  # in its stamps file
    indexed: bool = True  # False once its stamps file could not take a record (a full disk)
    consumed_records: int = 0  # runs wholly delivered

    @property
    def stamps(self) -> Path:
        return self.path.with_suffix(STAMPS_SUFFIX)


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
        self._stamps_fd: Optional[int] = None
        self._next_sequence = 1  # never reused: a chunk names its segment by sequence
        self._warned_lines: set = set()
        self._warned_stamps: set = set()
        self._peeked: Optional[_Peeked] = None
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        if not directory.is_dir() or directory.is_symlink():
            raise OSError(errno.ENOTDIR, "not a directory")
        for folder in (directory.parent, directory):
            check_private(os.stat(folder), folder)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable")
        self._scan()
        self._import_legacy_spool(directory.parent / LEGACY_SPOOL)
        dropped = self._enforce_limits()
        if dropped:
            log.warning("%s: dropped %d intervals found there that are older than %g h or past "
                        "%d MiB", directory, dropped, max_age / 3600, max_bytes >> 20)
        self.dropped += dropped
        self._bound_damaged()

    # -- limits --

    def set_limits(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes, self.max_age = max_bytes, max_age
        self.dropped += self._enforce_limits()
        self._bound_damaged()

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
        self._remove(head)
        return head.intervals - head.consumed_intervals

    def _remove(self, segment: _Segment) -> None:
        """Remove a segment taken off the list, and its stamps."""
        if segment is self._active:
            self._close_active()
        _unlink(segment.path)
        _unlink(segment.stamps)

    # -- appending --

    def append(self, data: bytes, stamp: int) -> int:
        """Store one interval's lines durably; return how many old intervals made room."""
        return self.append_chunk(one_interval(data, stamp))

    def append_chunk(self, chunk: Chunk) -> int:
        """Store a chunk's lines durably with their runs' stamps; return how many old
        intervals made room for them.

        An interval goes whole into one segment of at most ``SEGMENT_BYTES``; one larger than
        that is split at line ends over several, so every segment passes the check at start.
        """
        waiting = list(_stamped_pieces(chunk))
        counted = False
        while waiting:
            segment = self._active
            if segment is None or segment.size + len(waiting[0][0]) > SEGMENT_BYTES \
                    or not self._still_there(segment):
                segment = self._start_segment()
            batch = [waiting.pop(0)]  # what fits the segment goes in one write and one sync
            while waiting and segment.size + sum(len(p) for p, _ in batch) \
                    + len(waiting[0][0]) <= SEGMENT_BYTES:
                batch.append(waiting.pop(0))
            self._write(segment, batch)
            segment.intervals += 0 if counted else chunk.intervals
            counted = True
        dropped = self._enforce_limits()
        self.dropped += dropped
        return dropped

    def _write(self, segment: _Segment, batch: List[Tuple[bytes, int]]) -> None:
        """Append pieces of lines (each of one stamp) to a segment, then their records."""
        data = b"".join(piece for piece, _ in batch)
        records, end = [], segment.size
        for piece, stamp in batch:
            end += len(piece)
            records.append(record(end, stamp))
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            self._undo_append(segment)
            raise
        segment.size = end
        if segment.indexed:
            try:
                _write_all(self._stamps_fd, b"".join(records))
                segment.records += len(records)
            except OSError:  # the lines are safe: their stamps are rebuilt from them when read
                segment.indexed = False
                _truncate(self._stamps_fd, segment.records * RECORD_BYTES)
        segment.newest = max([segment.newest] + [stamp for _, stamp in batch])

    @staticmethod
    def _still_there(segment: _Segment) -> bool:
        """Tell whether the segment's name still leads to the file being written."""
        try:
            return _inode(os.stat(segment.path, follow_symlinks=False)) == segment.inode
        except OSError:
            return False

    def _start_segment(self) -> _Segment:
        self._close_active()
        sequence = self._next_sequence
        path = self.directory / f"{sequence:016d}.txt"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                           | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self._next_sequence = sequence + 1
        inode = _inode(os.fstat(self._fd))
        try:
            self._stamps_fd = os.open(path.with_suffix(STAMPS_SUFFIX), os.O_WRONLY | os.O_CREAT
                                      | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                                      0o600)
        except OSError:
            os.close(self._fd)
            self._fd = None
            _unlink(path)
            raise
        try:
            _fsync_directory(self.directory)
        except OSError:
            pass  # the data is synced; only the name could be lost at a power cut
        self._active = _Segment(sequence, path, inode)
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
            self._remove(segment)

    def _close_active(self) -> None:
        for fd in (self._fd, self._stamps_fd):
            if fd is not None:
                os.close(fd)
        self._fd, self._stamps_fd, self._active = None, None, None

    def close(self) -> None:
        """Close the newest segment; what waits stays on disk."""
        self._close_active()

    # -- reading for delivery --

    def peek(self, max_bytes: int) -> Optional[Chunk]:
        """Return the oldest waiting lines, up to about ``max_bytes``, or None.

        The chunk last read is handed out again while nothing it holds changed: a server that
        refuses every try in an outage costs no new reading and checking of the same lines."""
        while self._segments:
            head = self._segments[0]
            if head.consumed < head.size:
                if self._peeked is not None and self._peeked.still(head, max_bytes, self._clock()
                                                                   - self.max_age):
                    return self._peeked.chunk
                try:
                    chunk = self._read_chunk(head, max_bytes)
                except _Gone as gone:
                    self._skip_gone(head, str(gone))
                    continue
                self._peeked = _Peeked(chunk, head, head.consumed, max_bytes,
                                       head.size if head.consumed + chunk.length >= head.size
                                       else None)
                return chunk
            if head is self._active:
                return None
            self._remove(self._segments.popleft())
        return None

    def _skip_gone(self, head: _Segment, reason: str) -> None:
        """Forget a segment someone removed or replaced, counting what it held as dropped."""
        self._segments.popleft()
        if head is self._active:
            self._close_active()
        _unlink(head.stamps)  # the lines are someone else's now: left alone
        lost = head.intervals - head.consumed_intervals
        self.dropped += lost
        log.error("%s %s: skipped it and the %d intervals it held", head.path, reason, lost)

    def _read_chunk(self, head: _Segment, max_bytes: int) -> Chunk:
        limit = head.consumed + max_bytes
        runs = self._read_runs(head, limit) if head.indexed else None
        for _ in range(2):
            if runs is None:
                runs = self._rebuild_stamps(head)
            if not runs:
                break
            taken = chunk_runs(runs, limit)
            with _open_segment(head) as source:
                source.seek(head.consumed)
                if not taken:  # the oldest run alone passes max_bytes: whole lines, one at least
                    raw = source.read(min(max_bytes, runs[0][0] - head.consumed))
                    raw = raw[:raw.rfind(b"\n") + 1] or _line_at(source, head.consumed)
                    taken = [(head.consumed + len(raw), runs[0][1])]
                else:
                    raw = source.read(taken[-1][0] - head.consumed)
            if len(raw) < taken[-1][0] - head.consumed:
                raise _Gone("was cut short by someone else")
            if all(raw[end - head.consumed - 1] == ord("\n") for end, _ in taken):
                return self._checked_chunk(head, raw, taken, runs)
            runs = None  # a record does not end on a line's end
        raise _Gone("has stamps that cannot be rebuilt")

    def _checked_chunk(self, head: _Segment, raw: bytes, taken: List[Tuple[int, int]],
                       runs: List[Tuple[int, int]]) -> Chunk:
        """Keep the lines that are of the agent's form, carry their run's stamp and are within
        the age limit; count the intervals whose last run the chunk ends."""
        oldest_kept = self._clock() - self.max_age
        kept, data_runs, dropped, start, size = [], [], 0, head.consumed, 0
        for end, stamp in taken:
            lines = raw[start - head.consumed:end - head.consumed].split(b"\n")[:-1]
            good = [line + b"\n" for line in lines
                    if stamp >= oldest_kept and _stamped(parse_line(line), stamp)]
            dropped += len(lines) - len(good)
            kept.extend(good)
            size += sum(map(len, good))
            if good:
                data_runs.append((size, stamp))
            start = end
        if dropped and head.sequence not in self._warned_lines:
            self._warned_lines.add(head.sequence)
            log.warning("%s: skipped %d lines that are malformed or older than the age limit",
                        head.path, dropped)
        ended = sum(1 for k, (end, stamp) in enumerate(taken) if end == runs[k][0]
                    and (k + 1 == len(runs) or runs[k + 1][1] != stamp))
        return Chunk(b"".join(kept), ended, tuple(data_runs), len(raw), head.sequence)

    def _read_runs(self, head: _Segment, until: int) -> Optional[List[Tuple[int, int]]]:
        runs: List[Tuple[int, int]] = []
        position = head.consumed_records * RECORD_BYTES
        try:
            with open(os.open(head.stamps, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW),
                      "rb") as stamps:
                while not runs or runs[-1][0] <= until and runs[-1][0] < head.size:
                    stamps.seek(position)
                    raw = stamps.read(RECORD_BYTES * 256)
                    found = read_records(raw)
                    if not found:
                        return None
                    for end, stamp in found:
                        if end <= head.consumed:  # delivered with the chunk before
                            head.consumed_records += 1
                        elif runs and end <= runs[-1][0] or end > head.size:
                            return None
                        else:
                            runs.append((end, stamp))
                    position += len(found) * RECORD_BYTES
        except OSError:
            return None
        return runs

    def _rebuild_stamps(self, head: _Segment) -> List[Tuple[int, int]]:
        """Rebuild a segment's records from its lines, once they do not lead from the
        delivered lines to its end (a crash, or someone else's hand); return the runs
        waiting. Written back where the directory takes them, else rebuilt at each read."""
        if head.indexed and head.sequence not in self._warned_stamps:
            self._warned_stamps.add(head.sequence)
            log.warning("%s does not match its segment's lines: rebuilt it from them",
                        head.stamps)
        with _open_segment(head) as source:
            raw = source.read(head.size)
        runs = _runs_in(raw[:raw.rfind(b"\n") + 1])
        try:
            _write_stamps(head, runs)  # the same file: an active segment's appends follow
            head.indexed = True
        except OSError:
            pass
        head.consumed_records = sum(1 for end, _ in runs if end <= head.consumed)
        return [run for run in runs if run[0] > head.consumed]

    def consume(self, chunk: Chunk) -> None:
        """Forget lines that were delivered, if they are still the oldest."""
        if not self._segments or self._segments[0].sequence != chunk.segment:
            return
        head = self._segments[0]
        head.consumed += chunk.length
        head.consumed_intervals = min(head.intervals, head.consumed_intervals + chunk.intervals)
        if head.consumed >= head.size:
            self._remove(self._segments.popleft())

    # -- what was on disk at start --

    def _scan(self) -> None:
        found, stamps = [], []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(STAMPS_SUFFIX):
                stamps.append(Path(entry.path))
            match = _SEGMENT_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
                self._next_sequence = max(self._next_sequence, int(match.group(1)) + 1)
        found.sort()
        if self._next_sequence >= 10 ** NAME_DIGITS:
            found = self._renumber(found)
        carried = None  # the last stamp of the segment before: an interval split over both
        for sequence, path in found:
            try:
                segment, carried = self._check_segment(sequence, path, carried)
            except (OSError, ValueError) as error:
                carried = None
                self._set_aside(path, str(getattr(error, "strerror", None) or error))
                continue
            if segment.size:
                self._segments.append(segment)
            else:
                _unlink(path)
                _unlink(segment.stamps)
        kept = {segment.stamps for segment in self._segments}
        for path in stamps:
            if path not in kept:  # its segment was delivered, dropped or set aside
                _unlink(path)

    def _renumber(self, found: List[Tuple[int, Path]]) -> List[Tuple[int, Path]]:
        """Name the segments 1, 2, ... again, in order, once a name would pass 16 digits."""
        renamed = []
        for sequence, (_, path) in enumerate(found, start=1):
            target = self.directory / f"{sequence:0{NAME_DIGITS}d}.txt"
            _unlink(path.with_suffix(STAMPS_SUFFIX))  # rebuilt from the lines by the check
            if target != path:
                os.replace(path, target)
            renamed.append((sequence, target))
        self._next_sequence = len(found) + 1
        _fsync_directory(self.directory)
        log.warning("%s: segment names reached %d digits: named them 1 to %d again, in order",
                    self.directory, NAME_DIGITS, len(found))
        return renamed

    def _check_segment(self, sequence: int, path: Path,
                       carried: Optional[int]) -> Tuple[_Segment, Optional[int]]:
        """Check a segment found at start; return it and its last stamp. An interval that
        began in the segment before (its last stamp is ``carried``) is counted there only."""
        stat = os.stat(path, follow_symlinks=False)
        if not (stat.st_mode & 0o170000 == 0o100000):
            raise ValueError("not a regular file")
        if stat.st_size > CHECK_SEGMENTS * SEGMENT_BYTES:
            raise ValueError(f"{stat.st_size} bytes, more than a segment ever holds")
        with open(path, "rb") as source:
            raw = source.read()
        size = raw.rfind(b"\n") + 1
        if size < len(raw):
            log.warning("%s: ignoring a torn last line (%d bytes)", path, len(raw) - size)
        segment = _Segment(sequence, path, _inode(stat), size=size)
        newest_allowed = self._clock() + FUTURE_SLACK
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
        if _recorded_runs(segment.stamps) != runs:  # none (an earlier version), torn or wrong
            try:
                _write_stamps(segment, runs)
            except OSError:
                segment.indexed = False  # rebuilt when read
        segment.records = len(runs)
        segment.intervals = count_intervals(runs, carried)
        segment.newest = max(stamps, default=0)
        return segment, runs[-1][1] if runs else carried

    def _set_aside(self, path: Path, reason: str) -> None:
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}")
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        _unlink(path.with_suffix(STAMPS_SUFFIX))
        log.error("%s is damaged (%s): %s", path, reason,
                  f"moved it to {aside}" if aside else "left it there and ignore it")

    def _bound_damaged(self) -> None:
        """Remove the oldest ``*.damaged`` files while they and the outbox pass ``max_bytes``."""
        damaged = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(DAMAGED_SUFFIX) and entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                damaged.append((stat.st_mtime, entry.name, stat.st_size))
        room = self.max_bytes - self.size
        removed = 0
        for _, name, size in sorted(damaged, reverse=True):  # the newest are kept
            room -= size
            if room < 0:
                _unlink(self.directory / name)
                removed += 1
        if removed:
            log.warning("%s: removed the %d oldest *%s files, to stay within %d MiB with the "
                        "outbox", self.directory, removed, DAMAGED_SUFFIX, self.max_bytes >> 20)

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
        for data in intervals:
            self.append_chunk(_lines_chunk(data))
        _unlink(path)
        log.info("moved %d intervals from %s into the outbox", len(intervals), path)


def _legacy_intervals(text: str, newest_allowed: float) -> List[bytes]:
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
        intervals.append(data)
    return intervals


class MemoryOutbox:
    """A small bounded outbox in memory, used while the state directory cannot be written."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.dropped = 0
        self._items: Deque[Chunk] = deque()
        self._bytes = 0

    @property
    def intervals(self) -> int:
        return sum(item.intervals for item in self._items)

    def append(self, data: bytes, stamp: int) -> int:
        return self.append_chunk(one_interval(data, stamp))

    def append_chunk(self, chunk: Chunk) -> int:
        self._items.append(chunk)
        self._bytes += len(chunk.data)
        dropped = 0
        while self._bytes > self.max_bytes and len(self._items) > 1:
            oldest = self._items.popleft()
            self._bytes -= len(oldest.data)
            dropped += oldest.intervals
        self.dropped += dropped
        return dropped

    def peek(self, max_bytes: int) -> Optional[Chunk]:
        return self._items[0] if self._items else None

    def consume(self, chunk: Chunk) -> None:
        if self._items and self._items[0] is chunk:
            self._bytes -= len(self._items.popleft().data)

    def drain(self) -> Iterator[Chunk]:
        while self._items:
            chunk = self._items.popleft()
            self._bytes -= len(chunk.data)
            yield chunk


@dataclass(frozen=True)
class _Peeked:
    """The chunk last read, and what it was read from."""

    chunk: Chunk
    segment: _Segment
    consumed: int
    max_bytes: int
    size: Optional[int]  # the segment's size then, if the chunk reached its end

    def still(self, head: _Segment, max_bytes: int, oldest_kept: float) -> bool:
        """Tell whether reading ``head`` again would give the same chunk."""
        return (head is self.segment and head.consumed == self.consumed
                and max_bytes == self.max_bytes and self.size in (None, head.size)
                and all(stamp >= oldest_kept for _, stamp in self.chunk.runs))


class _Gone(Exception):
    """A segment's file is no longer the one the outbox wrote."""


def _inode(stat: os.stat_result) -> Tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _open_segment(segment: _Segment):
    """Open a segment for reading; raise _Gone if its name leads elsewhere now or nowhere."""
    try:
        source = open(os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb")
    except FileNotFoundError:
        raise _Gone("was removed by someone else") from None
    except OSError as error:
        raise _Gone(f"cannot be read ({error.strerror})") from None
    if _inode(os.fstat(source.fileno())) != segment.inode:
        source.close()
        raise _Gone("was replaced by someone else")
    return source


def chunk_runs(runs: List[Tuple[int, int]], limit: int) -> List[Tuple[int, int]]:
    """Return the runs a chunk takes from ``runs`` (waiting, oldest first, the last one past
    ``limit`` unless it ends the segment): the whole runs ending by ``limit``, cut after an
    interval's last run, unless the oldest interval alone passes ``limit`` (then its runs that
    fit); none if the oldest run alone passes it."""
    fit = list(itertools.takewhile(lambda run: run[0] <= limit, runs))
    if len(fit) == len(runs):
        return fit
    whole = len(fit)
    while whole and fit[whole - 1][1] == runs[whole][1]:
        whole -= 1
    return fit[:whole] or fit


def _line_at(source, offset: int) -> bytes:
    source.seek(offset)
    return source.readline()


def _stamped(parsed: Optional[Tuple[bytes, float, int]], stamp: int) -> bool:
    return parsed is not None and parsed[2] == stamp


def _runs_in(lines: bytes) -> List[Tuple[int, int]]:
    """Return the runs of complete lines, from the stamps they carry (0 where malformed)."""
    stamps, ends, end = [], [], 0
    for line in lines.split(b"\n")[:-1]:
        parsed = parse_line(line)
        end += len(line) + 1
        stamps.append(parsed[2] if parsed else 0)
        ends.append(end)
    return runs_of_lines(stamps, ends)


def _lines_chunk(data: bytes) -> Chunk:
    """Return one interval's lines whose stamps were never kept beside them (an old spool)."""
    return Chunk(data, 1, tuple(_runs_in(data)), len(data), 0)


def _stamped_pieces(chunk: Chunk) -> Iterator[Tuple[bytes, int]]:
    """Yield a chunk's lines in pieces of one stamp, none larger than a segment if a line fits."""
    start = 0
    for end, stamp in chunk.runs:
        for piece in pieces(chunk.data[start:end], SEGMENT_BYTES):
            yield piece, stamp
        start = end


def _recorded_runs(path: Path) -> Optional[List[Tuple[int, int]]]:
    """Return the runs a stamps file records, runs of one stamp merged, or None if unreadable."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb") as source:
            raw = source.read(CHECK_SEGMENTS * SEGMENT_BYTES)
    except OSError:
        return None
    found = read_records(raw)
    if len(found) * RECORD_BYTES != len(raw):
        return None
    return runs_of_lines([stamp for _, stamp in found], [end for end, _ in found])


def _write_stamps(segment: _Segment, runs: List[Tuple[int, int]]) -> None:
    """Write a segment's stamps file anew (not synced: it is rebuilt if lost)."""
    fd = os.open(segment.stamps, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                 | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, b"".join(record(end, stamp) for end, stamp in runs))
    finally:
        os.close(fd)
    segment.records = len(runs)


def pieces(data: bytes, limit: int) -> Iterator[bytes]:
    """Split lines into pieces of whole lines, each at most ``limit`` bytes if a line fits."""
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # a single line longer than the limit goes alone
            end = data.find(b"\n", start) + 1 or len(data)
        yield data[start:end]
        start = end


def check_private(stat: os.stat_result, path: Path) -> None:
    """Raise OSError unless ``path`` (its ``stat``) is owned by this process's user and
    writable by no one else: others could plant data there for the agent to send."""
    owner = os.geteuid()
    if stat.st_uid != owner:
        raise OSError(errno.EPERM, f"{path} is owned by uid {stat.st_uid}, not by the agent's "
                                   f"uid {owner}: chown it")
    if stat.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{path} is writable by group or others (mode "
                                   f"{stat.st_mode & 0o7777:04o}): chmod go-w it")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


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
