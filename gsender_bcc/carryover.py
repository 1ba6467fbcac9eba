"""The unfinished interval a stopping agent leaves for the next start.

At a stop the agent writes what it measured since the last boundary to
``<state_directory>/unfinished.json``, with the boundary that interval would have
ended at. The next start adds it to its own first interval when that ends at the
same boundary, or sends it alone, stamped with its boundary, when the restart
took longer. Written atomically; read with every field checked against what one
interval can hold, and set aside with one log line if anything is off. Its
cgroup ids are carried only when the file is surely from this boot (see
same_boot): after a reboot the same ids name other cgroups.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .histogram import Counts, Layout, empty_counts, sum_counts
from .outbox import check_private
from .readings import Measured

log = logging.getLogger(__name__)

FILE_NAME = "unfinished.json"
FORMAT = "gsender-bcc unfinished interval"
MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class Unfinished:
    boundary: int
    measured: Measured


# Bounds on what one interval can hold; a file claiming more is damaged. No host dispatches
# 2^32 tasks a second (4096 CPUs at a million each); a sum under 2^62 ns stays within the
# histograms' signed 64 bits once the next interval's own sum is added to it.
MAX_SAMPLES_PER_SECOND = 1 << 32
MAX_SUM_NS = 1 << 62
MAX_SECONDS = 86400
_NUMBER = re.compile(r"[0-9]{1,20}")

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
BOOT_TOLERANCE = 2.0  # seconds: a leap second, and the time between reading two clocks


@dataclass(frozen=True)
class Boot:
    """Which boot of the host this is, as far as the agent can tell.

    ``boot_id`` is the kernel's, or empty where it cannot be read (the unit's
    ProcSubset=pid hides /proc/sys); ``uptime`` (CLOCK_BOOTTIME) and ``wall`` are read
    together, so ``wall - uptime`` is when the host booted by its wall clock.
    """

    boot_id: str
    uptime: Optional[float]
    wall: float = 0.0


def this_boot() -> Boot:
    try:
        boot_id = BOOT_ID_PATH.read_text().strip()
    except OSError:
        boot_id = ""
    return Boot(boot_id, time.clock_gettime(time.CLOCK_BOOTTIME), time.time())


def same_boot(saved: Boot, now: Boot) -> bool:
    """Tell whether ``saved`` is surely from this boot, so that its cgroup ids still mean the
    same cgroups.

    By the kernel's boot ids where both are known; else the host must have booted at the same
    wall-clock moment (within BOOT_TOLERANCE) and have been up longer now than then. A wall
    clock stepped between the two readings makes it another boot: the host series keep
    every sample, only their charge to services is not carried.
    """
    if saved.boot_id and now.boot_id:
        return saved.boot_id == now.boot_id
    if saved.uptime is None or now.uptime is None:
        return False
    booted_then, booted_now = saved.wall - saved.uptime, now.wall - now.uptime
    return now.uptime >= saved.uptime and abs(booted_now - booted_then) <= BOOT_TOLERANCE


def _encode(counts: Counts) -> list:
    return [counts.sum_ns, {str(i): n for i, n in enumerate(counts.slots) if n}]


def save(directory: Path, unfinished: Unfinished, boot: Optional[Boot] = None) -> None:
    """Write the unfinished interval atomically; raise OSError if it cannot be written."""
    measured = unfinished.measured
    boot = boot or this_boot()
    document = {"format": FORMAT, "version": 1, "boot_id": boot.boot_id,
                "uptime": boot.uptime, "saved_at": boot.wall,
                "boundary": unfinished.boundary, "seconds": measured.seconds,
                "lost": measured.lost, "host": _encode(measured.host),
                "cgroups": {str(c): _encode(counts) for c, counts in measured.cgroups.items()}}
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / FILE_NAME
    temporary = path.with_name(FILE_NAME + ".tmp")
    try:
        os.unlink(temporary)  # a link planted there is removed, never followed
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, separators=(",", ":"))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _whole(value, low: int = 0, high: int = 1 << 63) -> int:
    """Return ``value`` if it is a whole number in [low, high), else raise ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise ValueError(f"{value!r} is not a whole number from {low} to {high - 1}")
    return value


def _index(text: str, high: int) -> int:
    """Return the whole number a mapping's key spells, if it is below ``high``."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{text[:30]!r} is not a whole number from 0 to {high - 1}")
    return _whole(int(text), 0, high)


def _decode(layout: Layout, item, most: int) -> Counts:
    """Return the histogram ``item`` holds, with at most ``most`` samples."""
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
        raise ValueError("a histogram is not [sum_ns, {slot: count}]")
    counts = empty_counts(layout)
    for slot, n in item[1].items():
        counts.slots[_index(slot, layout.slots)] = _whole(n, 0, most + 1)
    if counts.count > most:
        raise ValueError(f"{counts.count} samples are more than {most} in one interval")
    return Counts(counts.slots, _whole(item[0], 0, MAX_SUM_NS))


def _within(part: Counts, whole: Counts) -> bool:
    return part.sum_ns <= whole.sum_ns and all(map(operator.le, part.slots, whole.slots))


def _boot(document: dict) -> Boot:
    boot_id, uptime, wall = (document.get(key) for key in ("boot_id", "uptime", "saved_at"))
    known = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in (uptime, wall))
    return Boot(boot_id if isinstance(boot_id, str) else "",
                float(uptime) if known else None, float(wall) if known else 0.0)


def parse(text: str, layout: Layout, boot: Boot) -> Unfinished:
    """Return the unfinished interval a file's text holds; raise ValueError saying what is wrong.

    Its cgroups are kept only when the file is surely from this ``boot``.
    """
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != FORMAT \
            or document.get("version") != 1:
        raise ValueError("not a gsender-bcc unfinished interval")
    seconds = document.get("seconds")
    if not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:  # 0: no rates
        raise ValueError("its length in seconds is missing or out of range")
    most = math.ceil(seconds) * MAX_SAMPLES_PER_SECOND
    host = _decode(layout, document.get("host"), most)
    raw_cgroups = document.get("cgroups")
    if not isinstance(raw_cgroups, dict):
        raise ValueError("its cgroups are not a mapping")
    cgroups: Dict[int, Counts] = {_index(cgroup, 1 << 63): _decode(layout, item, most)
                                  for cgroup, item in raw_cgroups.items()}
    if cgroups and not _within(sum_counts(layout, cgroups.values()), host):
        raise ValueError("its cgroups hold samples its host histogram does not")
    if not same_boot(_boot(document), boot):  # cgroup ids mean nothing after a reboot
        cgroups = {}
    measured = Measured(float(seconds), host, _whole(document.get("lost"), 0, most + 1), cgroups)
    return Unfinished(_whole(document.get("boundary"), 1), measured)


def take(directory: Path, layout: Layout, boot: Optional[Boot] = None) -> Optional[Unfinished]:
    """Read and remove the unfinished interval left in ``directory``, if there is a sound one."""
    path = directory / FILE_NAME
    try:
        if not path.exists() and not path.is_symlink():
            return None
        # A directory others can write to may hold a file they planted: never read from it.
        check_private(directory.stat(), directory)
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
            raise ValueError("not a regular file of a sane size")
        unfinished = parse(path.read_text(encoding="utf-8"), layout, boot or this_boot())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, TypeError) as error:
        aside = path.with_name(f"{FILE_NAME}.damaged-{int(time.time())}")
        try:
            os.replace(path, aside)
            where = f"moved it to {aside}"
        except OSError:
            where = "could not move it aside"
        log.error("%s is damaged (%s): its interval is not sent; %s", path,
                  str(error)[:200] or type(error).__name__, where)
        return None
    try:
        path.unlink()
    except OSError as error:
        log.error("cannot remove %s (%s): its interval could be counted twice", path,
                  error.strerror)
    return unfinished
