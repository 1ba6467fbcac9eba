"""The in-memory fallback: a small bounded outbox, used while no directory can take data."""

from __future__ import annotations

from collections import deque
from typing import Deque, Iterator, Optional

from .lines import Chunk, one_interval


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
