"""The outbox's files: a segment as the outbox knows it, and the system calls it makes."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

NAME_DIGITS = 16  # a segment is <sequence>.txt, its sequence written with this many digits
DAMAGED_SUFFIX = ".damaged"


def segment_path(directory: Path, sequence: int) -> Path:
    return directory / f"{sequence:0{NAME_DIGITS}d}.txt"


@dataclass
class Segment:
    """One segment file: its lines up to ``size``, of which ``consumed`` were delivered."""

    sequence: int
    path: Path
    inode: Tuple[int, int] = (0, 0)  # (st_dev, st_ino): a segment replaced by hand is noticed
    size: int = 0
    intervals: int = 0
    newest: int = 0
    consumed: int = 0
    consumed_intervals: int = 0

    @property
    def waiting(self) -> int:
        return self.intervals - self.consumed_intervals


class Gone(Exception):
    """A segment's file is no longer the one the outbox wrote."""


def inode(stat: os.stat_result) -> Tuple[int, int]:
    return stat.st_dev, stat.st_ino


def still_there(segment: Segment) -> bool:
    """Tell whether the segment's name still leads to the file the outbox wrote."""
    try:
        return inode(os.stat(segment.path, follow_symlinks=False)) == segment.inode
    except OSError:
        return False


def open_segment(segment: Segment):
    """Open a segment for reading; raise Gone if its name leads elsewhere now or nowhere."""
    try:
        source = open(os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb")
    except FileNotFoundError:
        raise Gone("was removed by someone else") from None
    except OSError as error:
        raise Gone(f"cannot be read ({error.strerror})") from None
    if inode(os.fstat(source.fileno())) != segment.inode:
        source.close()
        raise Gone("was replaced by someone else")
    return source


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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
