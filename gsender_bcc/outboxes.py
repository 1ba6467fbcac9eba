"""Where undelivered intervals wait: the outbox of the configured state directory, the ones a
reload left behind, and the in-memory fallback for while no directory takes data.

The sink delivers from what ``Outboxes.sources`` lists; this object alone decides where a new
interval goes, falls back to memory and back, and moves what waits when a reload names another
state directory. It is not thread-safe: the sink calls it under its own lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional

from .config import Config
from .outbox import Chunk, DiskOutbox, MemoryOutbox

log = logging.getLogger(__name__)

MEMORY_FALLBACK_BYTES = 4 << 20
MOVE_BYTES = 64 << 10  # what a reload moves at a time from an outbox it leaves


class Outboxes:
    """The outboxes of one sink, in the order they are delivered from."""

    def __init__(self, config: Config, wall_clock: Callable[[], float]):
        self._wall_clock = wall_clock
        self._config = config
        self.errors = 0  # failures to create or write an outbox, cumulative
        self._failing = False  # the disk outbox failed and was reported
        self._memory = MemoryOutbox(MEMORY_FALLBACK_BYTES)
        self._disk: Optional[DiskOutbox] = None
        self._retired: List[DiskOutbox] = []  # outboxes a reload left, delivered first
        # The outbox on disk opens at the first reconfigure, or at the first store.

    @property
    def directory(self) -> Optional[Path]:
        """Where the outbox on disk is, if there is one."""
        return self._disk.directory if self._disk is not None else None

    def reconfigure(self, config: Config) -> None:
        """Take new limits or a new state directory, keeping what waits."""
        self._config = config
        if self._disk is None or self._disk.directory != self._wanted():
            self._failing = False
            self._use_wanted(tell=True)
        if self._disk is not None:
            self._disk.set_limits(config.buffer_bytes, config.buffer_seconds)
        self._memory.max_bytes = min(MEMORY_FALLBACK_BYTES, config.buffer_bytes)

    def _wanted(self) -> Path:
        return self._config.state_directory / "outbox"

    def _use_wanted(self, tell: bool) -> None:
        """Open the outbox of the configured state directory and move what waits into it.

        Until the new one is usable (it opened, and takes every chunk), the old one stays
        the outbox: nothing is moved into memory, and nothing is dropped. ``tell``: log that."""
        old = self._disk
        self._open(self._wanted(), quiet=old is not None and not tell)
        if old is None:
            return
        if self._disk is None:
            self._disk, self._failing = old, False  # the old one still takes data
            if tell:
                log.error("keeping the outbox in %s, with its %d intervals, until the new state "
                          "directory can be used", old.directory, old.intervals)
            return
        self._move_waiting(old)

    def _move_waiting(self, old: DiskOutbox) -> None:
        """Move what waits in an outbox given up by a reload into the current one."""
        new = self._disk
        while True:
            chunk = old.peek(MOVE_BYTES)
            if chunk is None:
                break
            try:
                new.append_chunk(chunk)
            except OSError as error:
                self._retired.append(old)
                log.error("cannot move undelivered data to %s (%s): the %d intervals left in %s "
                          "are delivered from there, and wait there if the agent stops first",
                          new.directory, error.strerror or error, old.intervals, old.directory)
                return
            old.consume(chunk)
        old.close()

    def _open(self, directory: Path, quiet: bool = False) -> None:
        config = self._config
        try:
            self._disk = DiskOutbox(directory, config.buffer_bytes, config.buffer_seconds,
                                    clock=self._wall_clock)
        except OSError as error:
            self._disk = None
            self.errors += 1
            if self._failing or quiet:
                return
            self._failing = True
            log.error("cannot use %s for undelivered data (%s): measuring and delivering "
                      "continue, but data cannot survive a Graphite outage longer than a few "
                      "hundred intervals, or a restart, until this is fixed",
                      directory, error.strerror or error)

    def store(self, chunk: Chunk) -> int:
        """Append lines to the outbox on disk or, while that fails, to the one in memory;
        return how many old intervals made room for them."""
        if self._disk is None or self._disk.directory != self._wanted():
            self._use_wanted(tell=False)  # try again what a reload could not use
        if self._disk is not None:
            try:
                dropped = self._disk.append_chunk(chunk)
            except OSError as error:
                self.errors += 1
                if not self._failing:
                    log.error("cannot write undelivered data to %s (%s): it is kept in "
                              "memory meanwhile, so it cannot survive a restart or a long "
                              "Graphite outage until this is fixed",
                              self._disk.directory, error.strerror or error)
                self._failing = True
            else:
                if self._failing:
                    log.warning("the outbox in %s takes data again", self._disk.directory)
                self._failing = False
                return dropped
        return self._memory.append_chunk(chunk)

    def sources(self) -> list:
        """Where intervals wait, in the order they are delivered."""
        return self._retired + ([self._disk] if self._disk is not None else []) + [self._memory]

    def next_chunk(self, max_bytes: int):
        """Return (outbox, its oldest chunk) of the first outbox with something waiting, or
        None; an outbox a reload left is forgotten once empty."""
        for source in self.sources():
            chunk = source.peek(max_bytes)
            if chunk is not None:
                return source, chunk
            if source in self._retired:
                source.close()
                self._retired.remove(source)
        return None

    @property
    def intervals(self) -> int:
        return sum(box.intervals for box in self.sources())

    @property
    def dropped(self) -> int:
        return sum(box.dropped for box in self.sources())

    @property
    def disk_bytes(self) -> int:
        """The bytes waiting on disk, as the byte limit counts them."""
        return self._disk.size if self._disk is not None else 0

    def close(self) -> int:
        """Save what waits in memory to disk; return the intervals waiting on disk."""
        lost = 0
        for chunk in self._memory.drain():
            try:
                if self._disk is None:
                    raise OSError("no usable state directory")
                self._disk.append_chunk(chunk)
            except OSError:
                lost += chunk.intervals
        if lost:
            log.warning("%d undelivered intervals are lost: the state directory cannot take them",
                        lost)
        return self._disk.intervals if self._disk is not None else 0
