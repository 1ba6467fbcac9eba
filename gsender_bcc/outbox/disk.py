"""The outbox in a directory: intervals appended to segment files and synced, read back oldest
first for delivery, deleted once delivered, bounded by bytes and by age."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Callable, Deque, List, Optional, Set, Tuple

from . import lines, recovery
from .files import (Gone, Segment, check_private, fsync_directory, inode, segment_path,
                    still_there, unlink, write_all)
from .legacy import LEGACY_SPOOL, import_spool
from .lines import Chunk, one_interval, stamped_pieces
from .reading import Peeked, read_chunk

log = logging.getLogger(__name__)


class DiskOutbox:
    """The outbox in a directory; raises OSError at construction if it cannot be used."""

    def __init__(self, directory: Path, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.time):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dropped = 0
        self._clock = clock
        self._active: Optional[Segment] = None
        self._fd: Optional[int] = None
        self._warned: Set[int] = set()  # segments whose skipped lines were logged
        self._peeked: Optional[Peeked] = None
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        if not directory.is_dir() or directory.is_symlink():
            raise OSError(errno.ENOTDIR, "not a directory")
        for folder in (directory.parent, directory):
            check_private(os.stat(folder), folder)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, "not writable")
        found, self._next_sequence = recovery.scan(directory, clock)
        self._segments: Deque[Segment] = deque(found)
        spool = directory.parent / LEGACY_SPOOL
        moved = import_spool(spool, self.append_chunk, clock() + recovery.FUTURE_SLACK)
        if moved:
            log.info("moved %d intervals from %s into the outbox", moved, spool)
        dropped = self._enforce_limits()
        if dropped:
            log.warning("%s: dropped %d intervals found there that are older than %g h or past "
                        "%d MiB", directory, dropped, max_age / 3600, max_bytes >> 20)
        self.dropped += dropped
        recovery.bound_damaged(directory, max_bytes - self.size, max_bytes)

    # -- limits --

    def set_limits(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes, self.max_age = max_bytes, max_age
        self.dropped += self._enforce_limits()
        recovery.bound_damaged(self.directory, max_bytes - self.size, max_bytes)

    @property
    def intervals(self) -> int:
        return sum(s.waiting for s in self._segments)

    @property
    def size(self) -> int:
        return sum(s.size - s.consumed for s in self._segments)

    def _enforce_limits(self) -> int:
        """Drop the oldest segments past the age and byte limits; return the intervals dropped."""
        dropped = 0
        oldest_kept = self._clock() - self.max_age
        while self._segments and (self._segments[0].newest < oldest_kept
                                  or (self.size > self.max_bytes and len(self._segments) > 1)):
            head = self._segments.popleft()
            self._remove(head)
            dropped += head.waiting
        return dropped

    def _remove(self, segment: Segment) -> None:
        """Remove a segment taken off the list."""
        if segment is self._active:
            self._close_active()
        unlink(segment.path)

    # -- appending --

    def append(self, data: bytes, stamp: int) -> int:
        """Store one interval's lines durably; return how many old intervals made room."""
        return self.append_chunk(one_interval(data, stamp))

    def append_chunk(self, chunk: Chunk) -> int:
        """Store a chunk's lines durably; return how many old intervals made room for them.

        An interval goes whole into one segment of at most ``SEGMENT_BYTES``; one larger than
        that is split at line ends over several, so every segment passes the check at start.
        """
        waiting = list(stamped_pieces(chunk))
        counted = False
        while waiting:
            segment = self._active
            if segment is None or segment.size + len(waiting[0][0]) > lines.SEGMENT_BYTES \
                    or not still_there(segment):
                segment = self._start_segment()
            batch = [waiting.pop(0)]  # what fits the segment goes in one write and one sync
            while waiting and segment.size + sum(len(p) for p, _ in batch) \
                    + len(waiting[0][0]) <= lines.SEGMENT_BYTES:
                batch.append(waiting.pop(0))
            self._write(segment, batch)
            segment.intervals += 0 if counted else chunk.intervals
            counted = True
        dropped = self._enforce_limits()
        self.dropped += dropped
        return dropped

    def _write(self, segment: Segment, batch: List[Tuple[bytes, int]]) -> None:
        """Append pieces of lines (each of one stamp) to a segment and sync them."""
        data = b"".join(piece for piece, _ in batch)
        try:
            write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            self._undo_append(segment)
            raise
        segment.size += len(data)
        segment.newest = max([segment.newest] + [stamp for _, stamp in batch])

    def _start_segment(self) -> Segment:
        self._close_active()
        sequence = self._next_sequence
        path = segment_path(self.directory, sequence)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                           | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self._next_sequence = sequence + 1  # never reused: a chunk names its segment by it
        try:
            fsync_directory(self.directory)
        except OSError:
            pass  # the data is synced; only the name could be lost at a power cut
        self._active = Segment(sequence, path, inode(os.fstat(self._fd)))
        self._segments.append(self._active)
        return self._active

    def _undo_append(self, segment: Segment) -> None:
        """Cut a failed append off; if that fails too, seal the segment at its last good size."""
        try:
            os.ftruncate(self._fd, segment.size)
        except OSError:
            self._close_active()
        if segment.size == 0:
            self._segments.remove(segment)
            self._remove(segment)

    def _close_active(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._active = None, None

    def close(self) -> None:
        """Close the newest segment; what waits stays on disk."""
        self._close_active()

    # -- reading for delivery --

    def peek(self, max_bytes: int) -> Optional[Chunk]:
        """Return the oldest waiting lines, up to about ``max_bytes``, or None. The chunk last
        read is handed out again while nothing it holds changed."""
        while self._segments:
            head = self._segments[0]
            if head.consumed < head.size:
                oldest_kept = self._clock() - self.max_age
                if self._peeked is not None and self._peeked.still(head, max_bytes, oldest_kept):
                    return self._peeked.chunk
                try:
                    read = read_chunk(head, max_bytes, oldest_kept)
                except Gone as gone:
                    self._skip_gone(head, str(gone))
                    continue
                if read.skipped and head.sequence not in self._warned:
                    self._warned.add(head.sequence)
                    log.warning("%s: skipped %d lines that are malformed or older than the age "
                                "limit", head.path, read.skipped)
                self._peeked = Peeked.of(read.chunk, head, max_bytes)
                return read.chunk
            if head is self._active:
                return None
            self._remove(self._segments.popleft())
        return None

    def _skip_gone(self, head: Segment, reason: str) -> None:
        """Forget a segment someone removed or replaced, counting what it held as dropped."""
        self._segments.popleft()
        if head is self._active:
            self._close_active()
        self.dropped += head.waiting
        log.error("%s %s: skipped it and the %d intervals it held", head.path, reason,
                  head.waiting)

    def consume(self, chunk: Chunk) -> None:
        """Forget lines that were delivered, if they are still the oldest."""
        if not self._segments or self._segments[0].sequence != chunk.segment:
            return
        head = self._segments[0]
        head.consumed += chunk.length
        head.consumed_intervals = min(head.intervals, head.consumed_intervals + chunk.intervals)
        if head.consumed >= head.size:
            self._remove(self._segments.popleft())
