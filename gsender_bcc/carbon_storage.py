"""carbon-cache's storage rules for the agent's series: what ``--carbon-config`` prints, and what
``--check`` can tell from a schema file. Pure: configuration and text in, text out.

carbon keeps one point per slot of an archive's precision (a later write to a slot replaces the
earlier one) and rolls points up into coarser archives with the first
``storage-aggregation.conf`` stanza whose pattern matches. So the finest precision must be the
agent's frequency, and each series kind needs its own roll-up:

- counts and totals per interval (samples, total wait, throttling, the wait behind culprits
  and caused, the agent's own counters) are summed;
- maxima and percentiles take the largest: no more than 1 % of an interval's samples lie above
  its p99, so no more than 1 % of a whole window's lie above the largest of its intervals'
  p99s. The maximum is a bound on the window's p99 that keeps a spike; an average of
  percentiles is neither a bound nor a percentile;
- means, per-second bucket rates and ``cpu.pressure`` (a share of time) are averaged; a
  window's exact mean is ``sum(wait_ms) / sum(count)``.

Every stanza has ``xFilesFactor = 0``: services enter and leave the top ``max_services``,
buckets are sent only up to the highest non-empty one, an interval without samples sends no
mean or percentiles, and a sum over the intervals that arrived is what was measured.
"""

from __future__ import annotations

import configparser
import ipaddress
import math
import re
from typing import Optional, Tuple

from .histogram import PERCENTILES
from .metrics import TAGGED_PREFIX, short_hostname, tag_value

SCHEMAS_FILE = "storage-schemas.conf"
AGGREGATION_FILE = "storage-aggregation.conf"
LOCAL_SCHEMAS = "/etc/carbon/" + SCHEMAS_FILE  # Debian's graphite-carbon
# What carbon-cache uses where no stanza matches (carbon/storage.py: defaultArchive).
CARBON_DEFAULT_PRECISION = 60

# Roll-up by series name; a name is the stat of the host or of a service, or agent.<name>.
SUMMED = ("count", "wait_ms", "throttled_ms", "behind_self_ms", "behind_others_ms", "caused_ms")
LARGEST = tuple(f"p{p}" for p in PERCENTILES) + ("max",)
AGENT_SUMMED = ("samples_lost", "dropped_intervals", "send_failures", "spool_errors",
                "services_overflow")
AGENT_LARGEST = ("queued_intervals",)  # a backlog: its peak in the window

# The archives after the finest one: (target precision, retention), both in seconds.
DAY = 86400
COARSER = ((60, 30 * DAY), (600, 365 * DAY))
FINEST_RETENTION = 7 * DAY
_UNITS = (("y", 365 * DAY), ("d", DAY), ("h", 3600), ("m", 60), ("s", 1))


def archives(frequency: int) -> Tuple[Tuple[int, int], ...]:
    """Return (precision, retention) seconds: the finest at ``frequency`` for 7 days, then
    1 min for 30 days and 10 min for a year, each precision rounded up to a multiple of the
    one before (whisper needs that) and merged into it where it would not be coarser."""
    chosen = [(frequency, FINEST_RETENTION)]
    for target, retention in COARSER:
        finer, kept = chosen[-1]
        precision = math.ceil(target / finer) * finer
        if precision == finer:
            chosen[-1] = (finer, max(kept, retention))
        else:
            chosen.append((precision, retention))
    return tuple(chosen)


def duration(seconds: int) -> str:
    """Write seconds as carbon does, in the largest unit that divides them: 60 -> 1m."""
    return next(f"{seconds // size}{unit}" for unit, size in _UNITS if seconds % size == 0)


def retentions(frequency: int) -> str:
    return ",".join(f"{duration(p)}:{duration(r)}" for p, r in archives(frequency))


class _Patterns:
    """Regular expressions for the agent's series names, plain or tagged, as carbon sees them
    (a tagged name is ``<prefix>.<stat>;tag=value;...``)."""

    def __init__(self, config):
        self.tagged = config.tags
        # A prefix holds only [A-Za-z0-9_-] and dots (metrics.check_prefix).
        if config.prefix:
            self.prefix = config.prefix.replace(".", r"\.")
        else:  # the default: one stanza for every host's prefix
            self.prefix = TAGGED_PREFIX if self.tagged else r"[^.]+\.cpu-lat"
        self.end = ";" if self.tagged else "$"

    def any(self) -> str:
        return rf"^{self.prefix}\."

    def behind(self) -> str:
        """The wait behind a culprit: ``behind_ms`` tagged, ``behind.<culprit>_ms`` plain."""
        return "behind_ms" if self.tagged else r"behind\.[^.]+_ms"

    def named(self, stats: Tuple[str, ...], agent: Tuple[str, ...]) -> str:
        service = r"(service\.)?" if self.tagged else r"(service\.[^.]+\.)?"
        return (rf"^{self.prefix}\.({service}({'|'.join(stats)})|agent\.({'|'.join(agent)})"
                rf"){self.end}")

    def summed(self) -> str:
        return self.named(SUMMED + (self.behind(),), AGENT_SUMMED)


def _described(config) -> str:
    prefix = config.metric_prefix if config.prefix or config.tags else "<host>.cpu-lat"
    style = "tagged series" if config.tags else "plain paths"
    return f"prefix {prefix}, {style}, frequency {config.frequency} s"


def schema_stanzas(config) -> str:
    """The storage-schemas.conf stanza for the agent's series."""
    patterns = _Patterns(config)
    return (f"[gsender-bcc]\n"
            f"# the finest archive: one point per interval\n"
            f"pattern = {patterns.any()}\n"
            f"retentions = {retentions(config.frequency)}\n")


def aggregation_stanzas(config) -> str:
    """The storage-aggregation.conf stanzas for the agent's series, most specific first."""
    patterns = _Patterns(config)
    stanzas = (
        ("gsender-bcc-sum", "counts and totals per interval: summed",
         patterns.summed(), "sum"),
        ("gsender-bcc-max", "maxima and percentiles: the largest, a bound on the window's",
         patterns.named(LARGEST, AGENT_LARGEST), "max"),
        ("gsender-bcc-average", "means, bucket rates per second, cpu.pressure: averaged",
         patterns.any(), "average"),
    )
    return "\n".join(f"[{name}]\n# {why}\npattern = {pattern}\nxFilesFactor = 0\n"
                     f"aggregationMethod = {method}\n" for name, why, pattern, method in stanzas)


def render(config) -> str:
    """What ``--carbon-config`` prints: both files' stanzas, each under a header naming it."""
    return (f"# {SCHEMAS_FILE}: gsender-bcc's series ({_described(config)}).\n"
            f"# Put these stanzas above any catch-all stanza: carbon uses the first that matches.\n"
            f"# It reads them when it creates a series' file; existing files keep their archives\n"
            f"# (whisper-resize and whisper-set-aggregation-method change them).\n"
            f"{schema_stanzas(config)}\n"
            f"# {AGGREGATION_FILE}: how carbon rolls them up into the coarser archives.\n"
            f"{aggregation_stanzas(config)}")


def split_rendered(text: str) -> Tuple[str, str]:
    """Split render()'s text back into (storage-schemas.conf, storage-aggregation.conf)."""
    marker = f"# {AGGREGATION_FILE}:"
    at = text.find("\n" + marker)
    if not text.startswith(f"# {SCHEMAS_FILE}:") or at < 0:
        raise ValueError(f"not the output of gsender-bcc --carbon-config (no '{marker}' part)")
    return text[:at + 1], text[at + 1:]


# ---- what --check can tell --------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([a-z]*)$")
_UNIT_WORDS = (("seconds", 1), ("minutes", 60), ("hours", 3600), ("days", DAY),
               ("weeks", 7 * DAY), ("years", 365 * DAY))


def seconds_of(text: str) -> int:
    """Read a carbon/whisper duration: 60, 60s, 1min, 5m, 1h, 7d, 1w, 3y."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    number, unit = int(match.group(1)), match.group(2) or "s"
    # as whisper's getUnitString: the first unit whose name starts with what is written
    size = next((size for word, size in _UNIT_WORDS if word.startswith(unit)), None)
    if size is None:
        raise ValueError(f"unknown unit in {text!r}")
    return number * size


def sent_name(config) -> str:
    """The name carbon sees for the agent's ``count`` series on this host."""
    if config.tags:
        return f"{config.metric_prefix}.count;host={tag_value(short_hostname())}"
    return f"{config.metric_prefix}.count"


def finest_precision(schemas: str, name: str) -> Tuple[int, str]:
    """Return the finest precision carbon gives a new series ``name`` under this
    storage-schemas.conf, and the stanza that decides it ("" for carbon's default)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(schemas)
    for section in parser.sections():
        pattern, kept = parser[section].get("pattern"), parser[section].get("retentions")
        if pattern and kept and re.search(pattern, name):
            return seconds_of(kept.split(",")[0].split(":")[0]), section
    return CARBON_DEFAULT_PRECISION, ""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def schema_warning(config, schemas: str, source: str) -> Optional[str]:
    """Return one line when this storage-schemas.conf and the frequency disagree, else None."""
    name = sent_name(config)
    try:
        precision, stanza = finest_precision(schemas, name)
    except (configparser.Error, ValueError, re.error) as error:
        first = str(error).splitlines()[0].rstrip(".")
        return f"{source} could not be read as carbon's schema ({first}); not checked"
    if precision == config.frequency:
        return None
    rule = f"[{stanza}] in {source}" if stanza else f"carbon's default (nothing in {source} matches)"
    if precision > config.frequency:
        effect = (f"intervals in the same {precision} s overwrite each other and only the last "
                  f"is kept")
    else:
        effect = (f"{math.ceil(config.frequency / precision) - 1} of every "
                  f"{math.ceil(config.frequency / precision)} points stay empty and a roll-up "
                  f"with xFilesFactor above {precision / config.frequency:.2g} keeps nothing")
    return (f"carbon here stores {name} at one point per {precision} s ({rule}), but the agent "
            f"sends every {config.frequency} s: {effect}; gsender-bcc --carbon-config prints "
            f"stanzas that fit")


def local_schema_warning(config, read) -> Optional[str]:
    """The warning for the carbon on this host, where the agent sends to this host and its
    schema file can be read with ``read(path) -> str`` (OSError: nothing to tell)."""
    if not is_loopback(config.server_address):
        return None
    try:
        schemas = read(LOCAL_SCHEMAS)
    except OSError:
        return None
    return schema_warning(config, schemas, LOCAL_SCHEMAS)
