"""The unfinished interval a stopping agent leaves for the next start.

At a stop the agent writes what it measured since the last boundary to
``<state_directory>/unfinished.json``, with the boundary that interval would have
ended at. The next start adds it to its own first interval when that ends at the
same boundary, or sends it alone, stamped with its boundary, when the restart
took longer. Written atomically; read with every field checked, and set aside
with one log line if anything is off.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .histogram import Counts, Layout, Measured, empty_counts

log = logging.getLogger(__name__)

FILE_NAME = "unfinished.json"
FORMAT = "gsender-bcc unfinished interval"
MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class Unfinished:
    boundary: int
    measured: Measured


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _encode(counts: Counts) -> list:
    return [counts.sum_ns, {str(i): n for i, n in enumerate(counts.slots) if n}]


def save(directory: Path, unfinished: Unfinished) -> None:
    """Write the unfinished interval atomically; raise OSError if it cannot be written."""
    measured = unfinished.measured
    document = {"format": FORMAT, "version": 1, "boot_id": boot_id(),
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
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise ValueError(f"{value!r} is not a whole number from {low}")
    return value


def _decode(layout: Layout, item) -> Counts:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
        raise ValueError("a histogram is not [sum_ns, {slot: count}]")
    counts = empty_counts(layout)
    for slot, n in item[1].items():
        counts.slots[_whole(int(slot) if slot.isdigit() else -1, 0, layout.slots)] = _whole(n)
    return Counts(counts.slots, _whole(item[0]))


def parse(text: str, layout: Layout, same_boot: bool) -> Unfinished:
    """Return the unfinished interval a file's text holds; raise ValueError saying what is wrong."""
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("format") != FORMAT \
            or document.get("version") != 1:
        raise ValueError("not a gsender-bcc unfinished interval")
    seconds = document.get("seconds")
    if not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:  # 0: no rates
        raise ValueError("its length in seconds is missing or out of range")
    cgroups: Dict[int, Counts] = {}
    raw_cgroups = document.get("cgroups")
    if not isinstance(raw_cgroups, dict):
        raise ValueError("its cgroups are not a mapping")
    for cgroup, item in raw_cgroups.items():
        cgroups[_whole(int(cgroup) if cgroup.isdigit() else -1)] = _decode(layout, item)
    if not same_boot:  # cgroup ids mean nothing after a reboot
        cgroups = {}
    measured = Measured(float(seconds), _decode(layout, document.get("host")),
                        _whole(document.get("lost")), cgroups)
    return Unfinished(_whole(document.get("boundary"), 1), measured)


def take(directory: Path, layout: Layout) -> Optional[Unfinished]:
    """Read and remove the unfinished interval left in ``directory``, if there is a sound one."""
    path = directory / FILE_NAME
    try:
        if not path.exists() and not path.is_symlink():
            return None
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
            raise ValueError("not a regular file of a sane size")
        text = path.read_text(encoding="utf-8")
        document_boot = json.loads(text).get("boot_id") if text.startswith("{") else None
        unfinished = parse(text, layout, same_boot=document_boot == boot_id())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError,
            TypeError) as error:
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
