"""``gsender-bcc --top``: run-queue latency live on this terminal; nothing is sent.

Two halves: ``render`` is pure (statistics and a terminal size in, lines of text with
colour hints out), and ``run`` owns the BPF program, the signals and curses. The
program loaded here is this process's own instance: it runs beside the service
without touching it, and is detached when the view ends, however it ends.
"""

from __future__ import annotations

import curses
import logging
import os
import signal
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import EX_USAGE, AgentError
from .histogram import IntervalStats
from .metrics import OTHER_CULPRIT, ServiceStats
from .sampler import Sampler, cgroup_tree

log = logging.getLogger(__name__)

# Sort orders, in the order ``s`` cycles through them: (key, what the title calls it).
SORTS: Tuple[Tuple[str, str], ...] = (("wait", "total wait"), ("caused", "caused"),
                                      ("p99", "p99"), ("rate", "count/s"), ("name", "name"))
SORT_KEYS = tuple(key for key, _ in SORTS)


def sort_keys(attributed: bool) -> Tuple[str, ...]:
    """The orders ``s`` cycles through: by wait caused only with the attribution on."""
    return tuple(key for key in SORT_KEYS if attributed or key != "caused")
KEYS_HELP = "s: sort  q: quit"
MIN_SERVICE_ROWS = 6
MAX_NAME_WIDTH = 40
POLL_SECONDS = 0.2  # longest wait for a key, so signals and Ctrl-C act at once

# A line is a sequence of (text, hint) segments. Hints name a style, not a colour:
# "title", "header", "sorted", "bar", "bar-warn", "bar-alert", "warn", "dim", "" (plain).
Segment = Tuple[str, str]
Line = Tuple[Segment, ...]


def line_text(line: Line) -> str:
    return "".join(text for text, _ in line)


# -- formatting --

def format_duration(us: Optional[float]) -> str:
    """Return a latency in microseconds with about three significant digits and a unit."""
    if us is None:
        return "-"
    for limit, divisor, unit, decimals in ((99.95, 1, "us", 1), (999.5, 1, "us", 0),
                                           (9995, 1e3, "ms", 2), (99950, 1e3, "ms", 1),
                                           (999500, 1e3, "ms", 0), (9995000, 1e6, "s", 2),
                                           (99950000, 1e6, "s", 1)):
        if us < limit:
            return f"{us / divisor:.{decimals}f}{unit}"
    return f"{us / 1e6:.0f}s"


def format_rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second < 99.95 else f"{per_second:.0f}"


def total_wait_ms_per_s(stats: IntervalStats) -> float:
    """The summed wait of all samples, in milliseconds per second of the interval."""
    return stats.wait_ns / 1e6 / stats.seconds


def p99_of(stats: IntervalStats) -> float:
    return dict(stats.percentiles_us).get(99, 0.0)


def caused_ms_per_s(service: ServiceStats) -> Optional[float]:
    """The wait the service's tasks caused other services, in ms per second (None: not
    measured, the attribution is off)."""
    if service.blame is None:
        return None
    return service.blame.caused_ns / 1e6 / service.stats.seconds


def sort_services(services: Sequence[ServiceStats], sort: str) -> List[ServiceStats]:
    """Order the rows: biggest first for the figures, alphabetical for the name; ties by name."""
    if sort == "name":
        return sorted(services, key=lambda s: s.name)
    figure = {"wait": lambda s: total_wait_ms_per_s(s.stats), "p99": lambda s: p99_of(s.stats),
              "rate": lambda s: s.stats.count, "caused": lambda s: caused_ms_per_s(s) or 0.0}[sort]
    return sorted(services, key=lambda s: (-figure(s), s.name))


def behind_line(service: ServiceStats) -> Optional[Line]:
    """Whom the service waited behind, the most first, in ms per second; None without
    attribution: ``web behind: batch 120.0 ms/s, web 8.0 ms/s, other 1.0 ms/s``."""
    if service.blame is None:
        return None
    seconds = service.stats.seconds
    charged = list(service.blame.culprits)
    if service.blame.rest_ns or not charged:
        charged.append((OTHER_CULPRIT, service.blame.rest_ns))
    return ((f"{service.name} behind: ", "header"),
            (", ".join(f"{name} {ns / 1e6 / seconds:.1f} ms/s" for name, ns in charged), ""))


def _clip(line: Line, width: int) -> Line:
    """Cut a line to ``width`` characters, dropping empty segments."""
    kept: List[Segment] = []
    room = width
    for text, hint in line:
        if room <= 0:
            break
        text = text[:room]
        if text:
            kept.append((text, hint))
            room -= len(text)
    return tuple(kept)


# -- the parts of the screen --

def _title(width: int, sort: str, hostname: str, period: float) -> Line:
    label = dict(SORTS)[sort]
    left = "gsender-bcc --top" + (f"  {hostname}" if hostname else "") + \
        f"  every {period:g}s  sort: {label}"
    gap = width - len(left) - len(KEYS_HELP)
    text = left + " " * gap + KEYS_HELP if gap >= 2 else left
    return ((text.ljust(width), "title"),)


def _summary(host: Optional[IntervalStats], width: int) -> List[Line]:
    """The host's figures, wrapped onto more lines when the terminal is narrow."""
    if host is None:
        return [(("measuring the first interval...", "dim"),)]
    if host.count == 0:
        return [((f"no samples in the last {host.seconds:.1f}s", "dim"),)]
    items: List[Segment] = [(f"samples {format_rate(host.count / host.seconds)}/s", ""),
                            (f"mean {format_duration(host.mean_us)}", "")]
    items += [(f"p{p} {format_duration(v)}", "") for p, v in host.percentiles_us]
    items.append((f"max {format_duration(host.max_us)}", ""))
    if host.lost:
        items.append((f"lost {host.lost}", "warn"))
    lines: List[List[Segment]] = [[]]
    used = 0
    for text, hint in items:
        if lines[-1] and used + 2 + len(text) > width:
            lines.append([])
            used = 0
        if lines[-1]:
            lines[-1].append(("  ", ""))
            used += 2
        lines[-1].append((text, hint))
        used += len(text)
    return [tuple(line) for line in lines]


def _buckets(host: IntervalStats, rows: int) -> List[Tuple[int, int, float]]:
    """The log2 buckets as (low, high, samples/s); the lowest merged into one if space is short."""
    buckets = [(low, 1 if low == 0 else 2 * low, rate) for low, rate in host.log2_rates]
    if rows < 1:
        return []
    if len(buckets) > rows:
        merged = len(buckets) - rows + 1
        buckets = [(0, buckets[merged - 1][1], sum(r for _, _, r in buckets[:merged]))] + \
            buckets[merged:]
    return buckets


def _bar_hint(low: int) -> str:
    if low >= 16384:
        return "bar-alert"
    if low >= 1024:
        return "bar-warn"
    return "bar"


def _histogram(host: Optional[IntervalStats], width: int, rows: int) -> List[Line]:
    """The host's log2 buckets as horizontal bars: a header and up to ``rows - 1`` buckets."""
    if rows < 1 or host is None or not host.log2_rates:
        return []
    buckets = _buckets(host, rows - 1)
    low_width = max(len(str(low)) for low, _, _ in buckets)
    high_width = max(len(str(high)) for _, high, _ in buckets)
    label_width = max(low_width + 4 + high_width, len("latency us"))
    rates = [format_rate(rate) for _, _, rate in buckets]
    rate_width = max(len("samples/s"), max(len(r) for r in rates))
    lines: List[Line] = [((f"{'latency us':<{label_width}} {'samples/s':>{rate_width}}",
                           "header"),)]
    room = width - label_width - rate_width - 3
    highest = max(rate for _, _, rate in buckets)
    for (low, high, rate), shown in zip(buckets, rates):
        label = f"{low:>{low_width}} -> {high:<{high_width}}".rjust(label_width)
        line: List[Segment] = [(f"{label} {shown:>{rate_width}} |", "")]
        if room > 0 and rate > 0:
            line.append(("#" * max(1, round(rate / highest * room)), _bar_hint(low)))
        lines.append(tuple(line))
    return lines


SERVICE_COLUMNS = (("COUNT/S", 9, "rate"), ("WAIT ms/s", 10, "wait"), ("MEAN", 8, None),
                   ("P99", 8, "p99"), ("PRESSURE", 9, None))
CAUSED_COLUMN = ("CAUSED ms/s", 12, "caused")  # after WAIT, with attribution only
FIRST_CULPRIT_COLUMN = ("  BEHIND MOST", 14, None)  # last, with attribution only


def _columns(blamed: bool) -> Tuple[Tuple[str, int, Optional[str]], ...]:
    return SERVICE_COLUMNS[:2] + (CAUSED_COLUMN,) + SERVICE_COLUMNS[2:] + \
        (FIRST_CULPRIT_COLUMN,) if blamed else SERVICE_COLUMNS


def first_culprit(service: ServiceStats, width: int) -> str:
    """The culprit the service waited behind the most, cut to ``width`` (``-``: none)."""
    culprits = service.blame.culprits if service.blame is not None else ()
    name = culprits[0][0] if culprits else "-"
    return name if len(name) <= width else name[:width - 1] + "~"


def _service_table(services: Optional[Sequence[ServiceStats]], sort: str, width: int,
                   rows: int) -> List[Line]:
    """A header and up to ``rows - 1`` services, or one line saying there is no breakdown."""
    if rows < 1:
        return []
    if services is None:
        return [(("per-service breakdown off (no cgroup v2, or max_services = 0)", "dim"),)]
    blamed = any(row.blame is not None for row in services)
    columns = _columns(blamed)
    fixed = sum(size for _, size, _ in columns)
    name_width = min(MAX_NAME_WIDTH, max(8, width - fixed))
    header: List[Segment] = [("SERVICE".ljust(name_width), "sorted" if sort == "name"
                              else "header")]
    header += [(title.rjust(size), "sorted" if key == sort else "header")
               for title, size, key in columns]
    lines: List[Line] = [tuple(header)]
    ordered = sort_services(services, sort)
    if not ordered:
        return lines + [(("no service ran in the last interval", "dim"),)][:rows - 1]
    behind = behind_line(ordered[0]) if rows >= 3 else None
    room = rows - (1 if behind else 0)
    shown = ordered[:room - 1]
    if len(shown) < len(ordered):
        shown = shown[:-1]
    for row in shown:
        stats = row.stats
        name = row.name if len(row.name) < name_width else row.name[:name_width - 2] + "~"
        pressure = row.figures.get("pressure")
        cells = [(name.ljust(name_width), ""),
                 (format_rate(stats.count / stats.seconds).rjust(9), ""),
                 (f"{total_wait_ms_per_s(stats):.1f}".rjust(10), "")]
        if blamed:
            caused = caused_ms_per_s(row)
            cells.append(("-".rjust(12) if caused is None else f"{caused:.1f}".rjust(12), ""))
        cells += [(format_duration(stats.mean_us).rjust(8), ""),
                  (format_duration(p99_of(stats) if stats.count else None).rjust(8), ""),
                  (("-" if pressure is None else f"{pressure:.1f}%").rjust(9),
                   "warn" if pressure is not None and pressure >= 10 else "")]
        if blamed:
            size = FIRST_CULPRIT_COLUMN[1]
            cells.append(("  " + first_culprit(row, size - 2), ""))
        lines.append(tuple(cells))
    hidden = len(ordered) - len(shown)
    if hidden and len(lines) < room:
        lines.append(((f"+{hidden} more", "dim"),))
    if behind:
        lines.append(behind)
    return lines


def render(host: Optional[IntervalStats], services: Optional[Sequence[ServiceStats]],
           width: int, height: int, sort: str = "wait", *, hostname: str = "",
           period: float = 1.0) -> List[Line]:
    """Lay the screen out: at most ``height`` lines, none longer than ``width`` characters.

    ``host`` is None before the first interval ends; ``services`` is None when there is
    no per-service breakdown. The histogram gets the room it needs, as long as the
    service table keeps a few rows; when it does not fit, its lowest buckets are merged.
    """
    if width <= 0 or height <= 0:
        return []
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort order {sort!r}: one of {', '.join(SORT_KEYS)}")
    top = [_title(width, sort, hostname, period)] + _summary(host, width) + [()]
    body = height - len(top)
    histogram_wants = 1 + len(host.log2_rates) if host is not None and host.log2_rates else 0
    if services is None:
        table_wants = table_least = 1
    else:
        behind = 1 if any(row.blame is not None for row in services) else 0
        table_wants = 1 + max(1, len(services)) + behind
        table_least = 1 + min(max(1, len(services)), MIN_SERVICE_ROWS) + behind
    gap = 1 if histogram_wants else 0
    if histogram_wants + gap + table_wants <= body:
        histogram_rows = histogram_wants
    else:
        histogram_rows = min(histogram_wants, max(body - gap - table_least,
                                                  min(histogram_wants, 4)))
    lines = top + _histogram(host, width, histogram_rows)
    if gap:
        lines.append(())
    lines += _service_table(services, sort, width, height - len(lines))
    return [_clip(line, width) for line in lines[:height]]


# -- the terminal --

class _Stop(Exception):
    """SIGTERM or SIGHUP arrived."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


class _Held(logging.Handler):
    """Keep log records while curses owns the terminal; they are written out afterwards."""

    def __init__(self):
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _styles() -> Dict[str, int]:
    """Map hints to curses attributes; colour only where the terminal has it."""
    styles = {"": curses.A_NORMAL, "title": curses.A_REVERSE, "header": curses.A_BOLD,
              "sorted": curses.A_BOLD | curses.A_UNDERLINE, "warn": curses.A_BOLD,
              "dim": curses.A_DIM, "bar": curses.A_NORMAL, "bar-warn": curses.A_BOLD,
              "bar-alert": curses.A_BOLD}
    if curses.has_colors():
        try:
            curses.start_color()
            curses.use_default_colors()
            background = -1
        except curses.error:
            background = curses.COLOR_BLACK
        for number, (hint, colour) in enumerate((("bar", curses.COLOR_GREEN),
                                                 ("bar-warn", curses.COLOR_YELLOW),
                                                 ("bar-alert", curses.COLOR_RED),
                                                 ("warn", curses.COLOR_RED)), start=1):
            try:
                curses.init_pair(number, colour, background)
            except curses.error:
                continue
            styles[hint] |= curses.color_pair(number)
    return styles


def _draw(screen, lines: Sequence[Line], styles: Dict[str, int]) -> None:
    screen.erase()
    for y, line in enumerate(lines):
        x = 0
        for text, hint in line:
            try:
                screen.addstr(y, x, text, styles.get(hint, curses.A_NORMAL))
            except curses.error:
                pass  # the bottom right cell: written, but the cursor cannot move past it
            x += len(text)
    screen.refresh()


def _keys(screen, until: float) -> Iterator[int]:
    """Yield the keys pressed before the monotonic time ``until``."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return
        screen.timeout(max(1, int(min(remaining, POLL_SECONDS) * 1000)))
        key = screen.getch()
        if key != -1:
            yield key


def _show(screen, sampler: Sampler, period: float, hostname: str) -> None:
    sorts = sort_keys(bool(sampler.probe.settings.culprits))
    try:
        curses.curs_set(0)
    except curses.error:
        pass
    styles = _styles()
    sort = 0
    host: Optional[IntervalStats] = None
    services: Optional[List[ServiceStats]] = None
    due = time.monotonic() + period
    while True:
        height, width = screen.getmaxyx()
        _draw(screen, render(host, services, width, height, sorts[sort],
                             hostname=hostname, period=period), styles)
        for key in _keys(screen, due):
            if key in (ord("q"), ord("Q"), 3):
                return
            if key in (ord("s"), ord("S")):
                sort = (sort + 1) % len(sorts)
                break
            if key == curses.KEY_RESIZE:
                break
        else:
            host, services = sampler.sample()
            due = max(due + period, time.monotonic() + period / 2)


def _session(sampler: Sampler, period: float, hostname: str) -> None:
    """Run the view with the terminal in curses mode, and give the terminal back however it ends."""
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        _show(screen, sampler, period, hostname)
    finally:
        try:
            screen.keypad(False)
            curses.nocbreak()
            curses.echo()
            curses.endwin()
        except curses.error:
            pass  # the terminal is gone (SIGHUP): nothing to give back


def _has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def run(config, period: float = 1.0) -> int:
    """Show the view until ``q``, Ctrl-C, SIGTERM or SIGHUP; return the exit code (0)."""
    from .daemon import SystemClock
    from .metrics import short_hostname
    from .probe import Probe
    if not _has_terminal():
        raise AgentError("--top needs a terminal on its standard input and output", EX_USAGE)
    # ncurses prefers LINES and COLUMNS from the environment to the terminal's real size,
    # and then never follows a resize: the view must always fit the terminal as it is.
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    # A parent may hand its blocked signals down (the agent's daemon blocks them): take them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    previous = {signum: signal.signal(signum, _raise_stop)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    root = logging.getLogger()
    held = _Held()
    try:
        log.info("compiling and attaching the BPF program (this instance is --top's own)")
        with Probe(config) as attached:
            sampler = Sampler(attached, cgroup_tree(attached), SystemClock())
            sampler.start()
            handlers, root.handlers = root.handlers, [held]
            try:
                _session(sampler, float(period), short_hostname())
            finally:
                root.handlers = handlers
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for record in held.records:
            logging.getLogger(record.name).handle(record)
    return 0
