"""Intervals waiting for Graphite: plain Graphite lines in segment files, oldest first.

The outbox lives in ``<state_directory>/outbox/``. Each interval is appended to the newest
segment (``<sequence>.txt``) and made durable (fdatasync) before ``append`` returns; a new
segment starts once the newest holds ``SEGMENT_BYTES``, and a segment is deleted once all of it
was delivered. An operator can read or replay the files with standard tools
(``cat outbox/*.txt | nc graphite 2003``). Memory holds the list of segments, a read position
and the chunk last read, never the rest, so it stays flat however long Graphite is away.

By job: ``lines`` the format (a line, a run of one stamp, a chunk), ``disk`` appending and
limits, ``reading`` reading for delivery, ``recovery`` what is found at start, ``legacy`` the
previous version's spool, ``memory`` the in-memory fallback, ``files`` the system calls.
"""

from .disk import DiskOutbox
from .files import NAME_DIGITS, check_private
from .lines import SEGMENT_BYTES, Chunk, Run, Runs, one_interval, parse_line, pieces
from .memory import MemoryOutbox

__all__ = ["DiskOutbox", "MemoryOutbox", "Chunk", "Run", "Runs", "SEGMENT_BYTES", "NAME_DIGITS",
           "check_private", "one_interval", "parse_line", "pieces"]
