"""Turn an interval's statistics into Graphite datapoints (metric contract in README).

Hierarchical paths by default (``<prefix>.mean``, ``<prefix>.service.<name>.p99``), or,
with ``tags``, Graphite 1.1 tagged series (``cpu-lat.mean;host=<h>``,
``cpu-lat.service.p99;host=<h>;service=<name>``).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .blame import MAX_CULPRIT_CHARS, Blame
from .histogram import IntervalStats

_UNSAFE_HOST_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_PATH = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_UNSAFE_TAG_VALUE = re.compile(r"[;\s]")
DECIMALS = 3
TAGGED_PREFIX = "cpu-lat"
# The longest series key (path, with its tags) a line may carry: what the outbox checks
# every line it reads back against (outbox.lines); a longer line would never be sent.
MAX_PATH_CHARS = 1000
MAX_HOST_CHARS = 64  # Linux's HOST_NAME_MAX: the short host name in a tag is cut to it
MAX_SERVICE_CHARS = 255  # a service's series name, cut to this (one cgroup directory's name)
# A container's tags beside service= (runtime, namespace, workload, container, pod, user),
# each value cut to this; those a series has no room for (MAX_PATH_CHARS) are left off it.
MAX_EXTRA_TAGS = 6
MAX_TAG_VALUE_CHARS = 63
SERVICE_FIGURES = ("pressure", "throttled_ms")  # per-service figures beside the statistics
BLAME_FIGURES = ("behind_self_ms", "behind_others_ms", "caused_ms")  # with attribution
OTHER_CULPRIT = "other"  # behind.other: the culprits not named, summed

Tags = Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Datapoint:
    """One series' value; the interval it belongs to carries the timestamp."""

    path: str
    value: Union[int, float]
    tags: Tags = ()


@dataclass(frozen=True)
class Interval:
    """One interval's datapoints, and the Graphite timestamp every one of them is sent with."""

    stamp: int
    points: Tuple[Datapoint, ...]


@dataclass(frozen=True)
class ServiceStats:
    """One service's interval, with cpu.pressure and throttling figures where known, and
    whom it waited behind where the interval was measured with attribution."""

    name: str
    stats: IntervalStats
    figures: Mapping[str, float] = field(default_factory=dict)
    blame: Optional[Blame] = None
    tags: Tags = ()  # a container's, beside ``service`` under ``--tags`` (cgroups.CgroupTree.tags)


def short_hostname(hostname: Optional[str] = None) -> str:
    """Return the host's short name with characters other than [A-Za-z0-9_-] replaced by ``_``."""
    short = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    return _UNSAFE_HOST_CHARS.sub("_", short)[:MAX_HOST_CHARS] or "unknown"


def default_prefix(hostname: Optional[str] = None) -> str:
    """Return ``<short hostname>.cpu-lat``."""
    return short_hostname(hostname) + ".cpu-lat"


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe Graphite path that leaves room for every series."""
    if not _PATH.fullmatch(prefix):
        raise ValueError("must be dot-separated parts of letters, digits, '_' and '-'")
    if len(prefix) > MAX_PREFIX_CHARS:
        raise ValueError(f"is {len(prefix)} characters long: at most {MAX_PREFIX_CHARS} leave "
                         f"room for the longest series under the {MAX_PATH_CHARS}-character "
                         f"path limit")
    return prefix


def tag_value(text: str) -> str:
    """Make ``text`` a valid Graphite tag value: no ';' or white space, no leading '~'."""
    value = _UNSAFE_TAG_VALUE.sub("_", text)
    if value.startswith("~"):
        value = "_" + value[1:]
    return value or "_"


class _Namer:
    """Build each series' path and tags in one style: ``tagged`` or hierarchical."""

    def __init__(self, prefix: str, tagged: bool, host: str):
        self.prefix = prefix
        self.tagged = tagged
        self.host = (("host", tag_value(host)),) if tagged else ()

    @classmethod
    def of(cls, config) -> _Namer:
        return cls(config.metric_prefix, config.tags, short_hostname())

    def point(self, name: str, value, tags: Tags = ()) -> Datapoint:
        if isinstance(value, float):
            value = round(value, DECIMALS)
        return Datapoint(f"{self.prefix}.{name}", value, self.host + tags if self.tagged else ())

    def host_stat(self, stat: str, value) -> Datapoint:
        return self.point(stat, value)

    def bucket(self, lower_us: int, rate: float) -> Datapoint:
        if self.tagged:
            return self.point("bucket", rate, (("lower_us", str(lower_us)),))
        return self.point(str(lower_us), rate)

    def service_stat(self, service: str, stat: str, value, extra: Tags = ()) -> Datapoint:
        if self.tagged:
            return _with_extra(self.point(f"service.{stat}", value,
                                          (("service", tag_value(service)),)), extra)
        return self.point(f"service.{service}.{stat}", value)

    def behind(self, culprit: str, value, service: Optional[str] = None,
               extra: Tags = ()) -> Datapoint:
        """A service's wait behind one culprit, or with ``service`` None the host's."""
        if self.tagged:
            tags = (("culprit", tag_value(culprit)),)
            if service is None:
                return self.point("behind_ms", value, tags)
            return _with_extra(self.point("service.behind_ms", value,
                                          tags + (("service", tag_value(service)),)), extra)
        stat = f"behind.{culprit}_ms"
        return self.point(stat, value) if service is None else \
            self.service_stat(service, stat, value)


def _with_extra(point: Datapoint, extra: Tags) -> Datapoint:
    """A point with a service's own tags added (at most MAX_EXTRA_TAGS, each value cut to
    MAX_TAG_VALUE_CHARS), in their order, as long as the series key stays within
    MAX_PATH_CHARS: so the prefix's limit does not depend on them."""
    room = MAX_PATH_CHARS - len(series_key(point))
    tags = point.tags
    for key, value in extra[:MAX_EXTRA_TAGS]:
        value = tag_value(value)[:MAX_TAG_VALUE_CHARS]
        if len(key) + len(value) + 2 > room:
            break
        room -= len(key) + len(value) + 2
        tags += ((key, value),)
    return replace(point, tags=tags)


def _stat_values(stats: IntervalStats) -> List[Tuple[str, Union[int, float]]]:
    values: List[Tuple[str, Union[int, float]]] = [("count", stats.count),
                                                   ("wait_ms", stats.wait_ns / 1e6)]
    if stats.mean_us is not None:
        values.append(("mean", stats.mean_us))
        values.extend((f"p{p}", v) for p, v in stats.percentiles_us)
        values.append(("max", stats.max_us))
    return values


def _blame_points(namer: _Namer, service: str, blame: Blame,
                  extra: Tags = ()) -> List[Datapoint]:
    """A service's wait split by whom it waited behind, and the wait it caused others (ms)."""
    points = [namer.service_stat(service, stat, ns / 1e6, extra) for stat, ns in (
        ("behind_self_ms", blame.behind_self_ns), ("behind_others_ms", blame.behind_others_ns),
        ("caused_ms", blame.caused_ns))]
    points.extend(namer.behind(culprit, ns / 1e6, service, extra)
                  for culprit, ns in blame.culprits)
    points.append(namer.behind(OTHER_CULPRIT, blame.rest_ns / 1e6, service, extra))
    return points


def series_key(point: Datapoint) -> str:
    """Return what identifies a series on the wire: its path, then ``;tag=value`` each."""
    return point.path + "".join(f";{key}={value}" for key, value in sorted(point.tags))


def _longest_suffix() -> int:
    """Return how many characters the longest series adds to the prefix, in either style.

    That is a per-service figure, or a service's wait behind a culprit, of a service and a
    culprit with the longest names: longer than any host, bucket or agent series.
    """
    stat = max(SERVICE_FIGURES + BLAME_FIGURES, key=len)  # longer than count, p99, ...
    service, culprit = "s" * MAX_SERVICE_CHARS, "c" * MAX_CULPRIT_CHARS
    longest = 0
    for tagged in (False, True):
        namer = _Namer("", tagged, "h" * MAX_HOST_CHARS)
        longest = max(longest, len(series_key(namer.service_stat(service, stat, 0))),
                      len(series_key(namer.behind(culprit, 0, service))))
    return longest


MAX_PREFIX_CHARS = MAX_PATH_CHARS - _longest_suffix()


def to_datapoints(stats: IntervalStats, config, services: Sequence[ServiceStats] = (),
                  behind: Optional[Mapping[str, int]] = None) -> List[Datapoint]:
    """Return the interval's datapoints (its ``Interval`` gives them their timestamp).

    ``config`` gives the prefix, the naming style (``tags``) and whether the per-second
    rate of each classic log2 bucket is sent (``bucket_series``). ``behind``: with
    attribution, the host's wait behind each reserved culprit, in ns.
    """
    namer = _Namer.of(config)
    points = [namer.host_stat(stat, value) for stat, value in _stat_values(stats)]
    if config.bucket_series:
        points.extend(namer.bucket(bucket, rate) for bucket, rate in stats.log2_rates)
    points.extend(namer.behind(culprit, ns / 1e6) for culprit, ns in (behind or {}).items())
    points.append(namer.point("agent.samples_lost", stats.lost))
    for service in services:
        points.extend(namer.service_stat(service.name, stat, value, service.tags)
                      for stat, value in _stat_values(service.stats))
        points.extend(namer.service_stat(service.name, name, value, service.tags)
                      for name, value in sorted(service.figures.items()))
        if service.blame is not None:
            points.extend(_blame_points(namer, service.name, service.blame, service.tags))
    return points


def agent_points(config, figures: Dict[str, Union[int, float]]) -> List[Datapoint]:
    """Return the agent's own figures as ``<prefix>.agent.<name>`` datapoints."""
    namer = _Namer.of(config)
    return [namer.point(f"agent.{name}", value) for name, value in figures.items()]


def summary(stats: IntervalStats) -> str:
    """Return a one-line human summary of an interval."""
    if stats.mean_us is None:
        return f"{stats.count} samples in {stats.seconds:.1f}s"
    pcts = " ".join(f"p{p}={v:g}us" for p, v in stats.percentiles_us)
    return (f"{stats.count} samples in {stats.seconds:.1f}s, mean={stats.mean_us:.1f}us "
            f"{pcts} max={stats.max_us:g}us")
