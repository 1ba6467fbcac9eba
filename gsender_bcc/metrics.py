"""Turn an interval's statistics into Graphite datapoints (metric contract in README)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import List, Optional, Union

from .histogram import IntervalStats

_UNSAFE_HOST_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
DECIMALS = 3


@dataclass(frozen=True)
class Datapoint:
    path: str
    value: Union[int, float]
    timestamp: int


def default_prefix(hostname: Optional[str] = None) -> str:
    """Return ``<short hostname>.cpu-lat`` with unsafe characters replaced by ``_``."""
    short = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    return (_UNSAFE_HOST_CHARS.sub("_", short) or "unknown") + ".cpu-lat"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe Graphite path, else raise ValueError saying why."""
    if not _PATH.match(prefix):
        raise ValueError("must be dot-separated parts of letters, digits, '_' and '-'")
    return prefix


def to_datapoints(stats: IntervalStats, prefix: str, timestamp: int,
                  buckets: bool = True) -> List[Datapoint]:
    """Return the interval's datapoints, all stamped with ``timestamp``.

    ``buckets`` adds the per-second rate of each classic log2 bucket.
    """
    def point(name: str, value: Union[int, float]) -> Datapoint:
        if isinstance(value, float):
            value = round(value, DECIMALS)
        return Datapoint(f"{prefix}.{name}", value, timestamp)

    points = [point("count", stats.count)]
    if stats.mean_us is not None:
        points.append(point("mean", stats.mean_us))
        points.extend(point(f"p{p}", v) for p, v in stats.percentiles_us)
        points.append(point("max", stats.max_us))
    if buckets:
        points.extend(point(str(bucket), rate) for bucket, rate in stats.log2_rates)
    points.append(point("agent.samples_lost", stats.lost))
    return points


def summary(stats: IntervalStats) -> str:
    """Return a one-line human summary of an interval."""
    if stats.mean_us is None:
        return f"{stats.count} samples in {stats.seconds:.1f}s"
    pcts = " ".join(f"p{p}={v:g}us" for p, v in stats.percentiles_us)
    return (f"{stats.count} samples in {stats.seconds:.1f}s, mean={stats.mean_us:.1f}us "
            f"{pcts} max={stats.max_us:g}us")
