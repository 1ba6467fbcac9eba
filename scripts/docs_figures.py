"""The figures the documents state, computed from the agent's own code and written into them.

Each block sits between two comment lines in a page of docs/ or in the README:

    <!-- figures: NAME (written by scripts/docs_figures.py from the code: do not edit) -->
    ...
    <!-- end of figures: NAME -->

and tests/test_claims.py fails while a block differs from what the code gives now. So a
document never states a figure by hand that the code decides, and rewording the prose around
a block changes nothing a test reads.

    docs_figures.py write    rewrite every block from the code (`make settings-docs` runs it)
    docs_figures.py check    exit 1, naming the stale page, when a block differs
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import settings_docs  # noqa: E402
from gsender_bcc import carryover, daemon, metrics, outboxes, program, sink  # noqa: E402
from gsender_bcc import outbox as outbox_files  # noqa: E402
from gsender_bcc.blame import MAX_CULPRIT_CHARS, Blame, culprit_name  # noqa: E402
from gsender_bcc.cgroups import MAX_NAMES_PER_USER  # noqa: E402
from gsender_bcc.config import Config  # noqa: E402
from gsender_bcc.histogram import (Counts, add_counts, empty_counts, interval_stats,  # noqa: E402
                                   log2_counts, slot_of)
from gsender_bcc.metrics import Interval, ServiceStats, agent_points, to_datapoints  # noqa: E402
from gsender_bcc.probe import culprit_words, reserved_culprits  # noqa: E402

LAYOUT = program.installed_layout()
CONSTANTS = program.installed_constants()
DAY = 86400
BEGIN = "<!-- figures: {name} (written by scripts/docs_figures.py from the code: do not edit) -->"
END = "<!-- end of figures: {name} -->"

# The usual host of the examples: its name, its services' number and name length, the log2
# buckets an interval reaches, and the culprits each service names with the attribution on.
USUAL_HOST = "web-01"
USUAL_NAME_CHARS = 15
USUAL_BUCKETS = 16
USUAL_CULPRITS = 3


# -- one interval as the agent writes it --

def _histogram(rng: random.Random, samples: int, top_us: int) -> Counts:
    """``samples`` waits spread over the log2 buckets up to the one holding ``top_us`` (which
    gets one), each with a sub-microsecond part, as real sums have."""
    slots, total = array("q", bytes(8 * LAYOUT.slots)), 0
    for _ in range(samples - 1):
        us = min(int(2 ** rng.uniform(0, top_us.bit_length())), top_us)
        slots[slot_of(LAYOUT, us)] += 1
        total += us * 1000 + rng.randrange(1000)
    slots[slot_of(LAYOUT, top_us)] += 1
    return Counts(slots, total + top_us * 1000)


def blame_of(config: Config, ns: Callable[[int], int], culprits: List[str]) -> Optional[Blame]:
    """A service's attribution at ``config`` (None: off): ``max_culprits`` of ``culprits``
    named, each charge ``ns(10**9)`` nanoseconds."""
    if not config.max_culprits:
        return None
    named = tuple((culprit_name(name, ()), ns(10**9)) for name in culprits[:config.max_culprits])
    return Blame(ns(10**9), ns(10**9), ns(10**9), named, ns(10**9))


def host_behind(config: Config, ns: Callable[[int], int]) -> Optional[dict]:
    """The host's wait behind each reserved culprit, with the attribution at ``config``."""
    if not config.max_culprits:
        return None
    return {name: ns(10**9) for name in reserved_culprits().values()}


@dataclass(frozen=True)
class Stored:
    """One interval as the outbox stored it, and what the outbox counted for it."""

    data: bytes
    counted: int  # the outbox's own count of its bytes


def stored_interval(state: Path, host: str, services: int, name_chars: int, buckets: int,
                    max_culprits: int = 0, frequency: int = 15) -> Stored:
    """What the outbox holds after one interval of host ``host`` (the default prefix):
    ``services`` services named with ``name_chars`` characters, each with its cpu.pressure and
    throttling figures (and with ``max_culprits``, whom it waited behind), the rest as
    ``other``, the host's log2 buckets up to the ``buckets``-th. Its datapoints are built by the
    calls the daemon makes and stored by the real sink."""
    rng = random.Random(26)
    top_us = 1 << (buckets - 2)  # buckets 0, 1, 2, 4, ..., 2^(buckets - 2)
    config = Config(frequency=frequency, state_directory=state, prefix=f"{host}.cpu-lat",
                    max_culprits=max_culprits)
    names = [f"s{i:02d}".ljust(name_chars, "x") for i in range(services)]
    counted = [_histogram(rng, rng.randrange(100, 5000), top_us // 2) for _ in names]
    other = _histogram(rng, rng.randrange(100, 5000), top_us)
    host_counts = empty_counts(LAYOUT)
    for counts in counted + [other]:
        host_counts = add_counts(host_counts, counts)
    stats = interval_stats(LAYOUT, host_counts, frequency)
    listed = [ServiceStats(name, interval_stats(LAYOUT, counts, frequency),
                           {"pressure": rng.uniform(0, 100), "throttled_ms": rng.uniform(0, 50)},
                           blame_of(config, rng.randrange, names[i + 1:] + names[:i + 1]))
              for i, (name, counts) in enumerate(zip(names, counted))]
    listed.append(ServiceStats("other", interval_stats(LAYOUT, other, frequency), {},
                               blame_of(config, rng.randrange, names)))
    graphite = sink.GraphiteSink(config, start=False)
    stamp = int(time.time()) // frequency * frequency
    points = to_datapoints(stats, config, listed, host_behind(config, rng.randrange))
    points += agent_points(config, {"services_overflow": 0, **graphite.health()})
    graphite.submit(Interval(stamp, tuple(points)))
    folder = state / "outbox"
    data = b"".join(path.read_bytes() for path in sorted(folder.glob("*.txt")))
    counted_bytes = graphite.outbox_bytes()
    graphite.close(0)
    return Stored(data, counted_bytes)


def interval_sizes() -> List[List[str]]:
    """Rows of the outbox-size table: an interval's lines and bytes, and what the default
    buffer holds, at the usual names and at the longest, without and with the attribution."""
    config = Config()
    rows = []
    for label, host, chars in ((f"host `{USUAL_HOST}`, {USUAL_NAME_CHARS}-character services",
                                USUAL_HOST, USUAL_NAME_CHARS),
                               (f"{metrics.MAX_HOST_CHARS}-character host, "
                                f"{metrics.MAX_SERVICE_CHARS}-character services",
                                "h" * metrics.MAX_HOST_CHARS, metrics.MAX_SERVICE_CHARS)):
        for culprits in (0, USUAL_CULPRITS):
            with tempfile.TemporaryDirectory() as state:
                data = stored_interval(Path(state), host, config.max_services, chars,
                                       USUAL_BUCKETS, max_culprits=culprits).data
            per_day = len(data) * DAY // config.frequency
            held = config.buffer_bytes // len(data) * config.frequency / 3600
            rows.append([label, str(culprits), str(data.count(b"\n")),
                         f"{len(data) / 1000:.1f}", f"{per_day / 1e6:.0f}", f"{held:.1f}"])
    return rows


# -- series per host --

def series_paths(config: Config, buckets: int, services: int, breakdown: bool) -> List[str]:
    """The paths of one full interval: every stat, the buckets up to the ``buckets``-th,
    ``services`` services with their figures and (with the breakdown) ``other``."""
    slots = array("q", bytes(8 * LAYOUT.slots))
    slots[slot_of(LAYOUT, (1 << (buckets - 2)))] = 1
    stats = interval_stats(LAYOUT, Counts(slots, 1), 1.0)
    names = [f"s{i}" for i in range(services)]
    listed = [ServiceStats(name, stats, {figure: 1.0 for figure in metrics.SERVICE_FIGURES},
                           blame_of(config, lambda top: 1, names[i + 1:] + names[:i + 1]))
              for i, name in enumerate(names)]
    if breakdown:
        listed.append(ServiceStats("other", stats, {}, blame_of(config, lambda top: 1, names)))
    with tempfile.TemporaryDirectory() as state:
        health = sink.GraphiteSink(Config(state_directory=Path(state)), start=False).health()
    extra = {"services_overflow": 0} if breakdown else {}
    behind = host_behind(config, lambda top: 1) if breakdown else None
    return [p.path for p in to_datapoints(stats, config, listed, behind)
            + agent_points(config, {**extra, **health})]


def bucket_count(us: int) -> int:
    """How many log2 bucket series an interval whose longest wait is ``us`` µs sends."""
    slots = array("q", bytes(8 * LAYOUT.slots))
    slots[slot_of(LAYOUT, us)] = 1
    return len(log2_counts(LAYOUT, slots))


def series_counts(max_culprits: int) -> Dict[str, int]:
    """{what: how many series} at the defaults, with ``max_culprits``."""
    config = Config(prefix="p", max_culprits=max_culprits)
    paths = series_paths(config, USUAL_BUCKETS, config.max_services, breakdown=True)
    service = [p for p in paths if p.startswith("p.service.")]
    return {
        "host": len([p for p in paths if re.fullmatch(r"p\.[a-z][a-z0-9_]*", p)]),
        "behind": len([p for p in paths if re.fullmatch(r"p\.behind\.[a-z]+_ms", p)]),
        "buckets": len([p for p in paths if re.fullmatch(r"p\.\d+", p)]),
        "agent": len([p for p in paths if p.startswith("p.agent.")]),
        "per service": len([p for p in service if p.startswith("p.service.s0.")]),
        "other": len([p for p in service if p.startswith("p.service.other.")]),
        "services": config.max_services,
        "total": len(paths),
    }


def series_table() -> List[List[str]]:
    plain, blamed = series_counts(0), series_counts(USUAL_CULPRITS)
    host_only = len(series_paths(Config(prefix="p", max_services=0), USUAL_BUCKETS, 0, False))
    label = {"host": "host statistics", "behind": "host's wait behind the reserved culprits",
             "buckets": f"log2 buckets (up to the {USUAL_BUCKETS}th)", "agent": "agent series",
             "per service": "per service sent", "other": "for `other`",
             "services": "services sent (`max_services`)", "total": "total"}
    rows = [[label[what], str(plain[what]), str(blamed[what])] for what in plain]
    rows.append(["total with `max_services = 0`", str(host_only), "-"])
    rows.append(["log2 buckets once a wait of a second is seen", str(bucket_count(1_000_000)),
                 str(bucket_count(1_000_000))])
    return rows


# -- the code's limits --

def limits() -> List[List[str]]:
    """[figure, value, where the code declares it]."""
    # A cgroup's histogram slots, its sum and its culprit counters (on by default), 8 bytes each.
    entry = (LAYOUT.slots + 1 + culprit_words(CONSTANTS).size) * 8
    return [
        ["outbox segment size", f"{outbox_files.SEGMENT_BYTES >> 10} KiB",
         "`outbox.lines.SEGMENT_BYTES`"],
        ["digits of a segment's number", str(outbox_files.NAME_DIGITS), "`outbox.files.NAME_DIGITS`"],
        ["largest chunk sent at once", f"{sink.CHUNK_BYTES >> 10} KiB", "`sink.CHUNK_BYTES`"],
        ["in-memory queue when the outbox is unusable",
         f"{outboxes.MEMORY_FALLBACK_BYTES >> 20} MiB", "`outboxes.MEMORY_FALLBACK_BYTES`"],
        ["largest UDP datagram", f"{sink.DATAGRAM_BYTES} bytes", "`sink.DATAGRAM_BYTES`"],
        ["a stop's wait for waiting intervals", f"{sink.CLOSE_SECONDS:g} s",
         "`sink.CLOSE_SECONDS`"],
        ["a stop's wait for a send in progress", f"{sink.JOIN_SECONDS:g} s",
         "`sink.JOIN_SECONDS`"],
        ["longest path of a line", f"{metrics.MAX_PATH_CHARS} characters",
         "`metrics.MAX_PATH_CHARS`"],
        ["longest prefix", f"{metrics.MAX_PREFIX_CHARS} characters", "`metrics.MAX_PREFIX_CHARS`"],
        ["longest service name", f"{metrics.MAX_SERVICE_CHARS} characters",
         "`metrics.MAX_SERVICE_CHARS`"],
        ["longest culprit name", f"{MAX_CULPRIT_CHARS} characters", "`blame.MAX_CULPRIT_CHARS`"],
        ["longest host name in a tag", f"{metrics.MAX_HOST_CHARS} characters",
         "`metrics.MAX_HOST_CHARS`"],
        ["names one user's services get", str(MAX_NAMES_PER_USER),
         "`cgroups.MAX_NAMES_PER_USER`"],
        ["tasks the start-time map holds", f"pid_max, at most {program.MAX_START_ENTRIES}",
         "`program.MAX_START_ENTRIES`"],
        ["cgroups the kernel map holds", str(program.DEFAULT_MAX_CGROUPS),
         "`program.DEFAULT_MAX_CGROUPS`"],
        ["kernel memory of that map", f"{program.DEFAULT_MAX_CGROUPS * entry / 2 ** 20:.1f} MiB",
         "its entries × (histogram slots + sum + culprit counters) × 8 bytes"],
        ["culprit cgroups kept per cgroup an interval (the rest: other)",
         str(CONSTANTS["CULPRIT_SLOTS"]), "`CULPRIT_SLOTS` in the BPF header"],
        ["occupants each CPU remembers (older parts of a wait: untracked)",
         str(CONSTANTS["TIMELINE_SLOTS"]), "`TIMELINE_SLOTS` in the BPF header"],
        ["whole-µs slots of the histogram", f"below {LAYOUT.sub_count} µs", "the BPF header"],
        ["slots per power of two above that", str(LAYOUT.sub_count), "the BPF header"],
        ["percentile error above that", f"{100 / (2 * LAYOUT.sub_count):g} %",
         "half a slot"],
        ["one slot for everything from", f"2^{LAYOUT.log2_max} µs "
         f"({(1 << LAYOUT.log2_max) // 60_000_000} minutes)", "the BPF header"],
        ["samples a second an unfinished interval may hold",
         f"2^{carryover.MAX_SAMPLES_PER_SECOND.bit_length() - 1}",
         "`carryover.MAX_SAMPLES_PER_SECOND`"],
        ["largest sum an unfinished interval may hold",
         f"2^{carryover.MAX_SUM_NS.bit_length() - 1} ns", "`carryover.MAX_SUM_NS`"],
        ["boot-time agreement to carry services over", f"{carryover.BOOT_TOLERANCE:g} s",
         "`carryover.BOOT_TOLERANCE`"],
        ["a clock gone back waited out for at most", f"{daemon.MAX_HOLD_SECONDS} s",
         "`daemon.MAX_HOLD_SECONDS`"],
    ]


# -- the blocks --

def _table(head: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def blocks() -> Dict[str, Callable[[], str]]:
    """{block name: its text}, computed on demand."""
    return {
        "limits": lambda: _table(["figure", "value", "from"], limits()),
        "interval-sizes": lambda: _table(
            ["names", "`max_culprits`", "lines", "kB", "MB a day at frequency 15",
             f"hours {Config().buffer_megabytes} MiB holds"], interval_sizes()),
        "series": lambda: _table(["series per interval", "`max_culprits = 0`",
                                  f"default (`max_culprits = {Config().max_culprits}`)"],
                                 series_table()),
    }


PAGES = [ROOT / "docs" / "design.md", ROOT / "docs" / "operations.md"]


def rewritten(text: str, made: Dict[str, str]) -> str:
    """``text`` with every block it holds replaced by the code's figures."""
    def fill(found: re.Match) -> str:
        name = found.group(1)
        if name not in made:
            made[name] = blocks()[name]()
        return f"{BEGIN.format(name=name)}\n{made[name]}\n{END.format(name=name)}"
    pattern = re.escape(BEGIN).replace(re.escape("{name}"), r"([\w-]+)") + r"\n.*?" + \
        re.escape(END).replace(re.escape("{name}"), r"\1")
    return re.sub(pattern, fill, text, flags=re.S)


def expected() -> Dict[Path, str]:
    made: Dict[str, str] = {}
    return {page: rewritten(page.read_text(), made) for page in PAGES}


def main(argv: List[str]) -> int:
    return settings_docs.write_or_check(argv, "docs_figures.py", expected(), "the code's figures")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
