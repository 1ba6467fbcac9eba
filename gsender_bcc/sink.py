"""Deliver datapoints: Graphite plaintext built by graphyte, to servers or to stdout.

Delivery to Graphite runs on its own thread, so a slow, refusing or black-holed
server never delays the measurement loop. Each interval is one batch; batches
wait in a bounded outbox, oldest first, until a server takes them, keeping their
original timestamps. Servers are tried in order: one that fails is skipped for a
back-off period that doubles from one second up to one interval (at most a
minute), then tried again first, so traffic returns to the primary once it is
back. At stop, what is still waiting goes to a spool file that the next start
replays before new data.

Delivery is at least once: a batch whose send failed part-way is sent again
whole, which Graphite absorbs, since a datapoint with the same path and
timestamp overwrites the earlier one. The plaintext protocol has no
acknowledgement, and a server that goes down may lose what it took just before,
so the first failure after a success also queues the last successful send again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Iterable, List, Optional, Sequence, TextIO, Tuple

try:  # the .deb ships a private copy; elsewhere graphyte comes from PyPI
    from ._vendor import graphyte
except ImportError:
    import graphyte

from .config import Server
from .metrics import Datapoint

log = logging.getLogger(__name__)

Batch = Tuple[Datapoint, ...]
SPOOL_NAME = "spool.jsonl"
SPOOL_HEADER = {"format": "gsender-bcc spool", "version": 1}
LINES_PER_SEND = 5000
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


def encode(sender: graphyte.Sender, points: Iterable[Datapoint]) -> bytes:
    """Return the plaintext-protocol bytes for ``points``, one line each."""
    return b"".join(sender.build_message(p.path, p.value, p.timestamp) for p in points)


class StdoutSink:
    """Write each interval's lines to a stream instead of sending them."""

    def __init__(self, stream: TextIO = sys.stdout):
        self._stream = stream
        self._builder = graphyte.Sender("localhost")

    def submit(self, points: Sequence[Datapoint]) -> None:
        self._stream.write(encode(self._builder, points).decode("utf-8"))
        self._stream.flush()

    def health(self) -> dict:
        return {}

    def close(self, seconds: float = 0) -> None:
        pass


# ---- the outbox: pure bookkeeping, no I/O --------------------------------------------------

class Outbox:
    """Batches waiting for delivery, oldest first; past ``limit`` the oldest are dropped."""

    def __init__(self, limit: int):
        self.limit = limit
        self._batches: Deque[Batch] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._batches)

    def put(self, batch: Batch) -> int:
        """Queue a batch; return how many old batches it pushed out."""
        self._batches.append(batch)
        return self._trim()

    def put_oldest(self, batches: Sequence[Batch]) -> int:
        """Queue replayed batches ahead of everything else."""
        self._batches.extendleft(reversed(batches))
        return self._trim()

    def resize(self, limit: int) -> int:
        self.limit = limit
        return self._trim()

    def _trim(self) -> int:
        excess = max(0, len(self._batches) - self.limit)
        for _ in range(excess):
            self._batches.popleft()
        self.dropped += excess
        return excess

    def head(self, max_lines: int) -> List[Batch]:
        """Return the oldest batches, at least one, up to about ``max_lines`` lines."""
        taken: List[Batch] = []
        lines = 0
        for batch in self._batches:
            if taken and lines + len(batch) > max_lines:
                break
            taken.append(batch)
            lines += len(batch)
        return taken

    def remove_head(self, batches: Sequence[Batch]) -> None:
        """Forget batches that were delivered, if they are still the oldest."""
        for batch in batches:
            if self._batches and self._batches[0] is batch:
                self._batches.popleft()

    def all(self) -> List[Batch]:
        return list(self._batches)


# ---- the spool: what survives a restart ----------------------------------------------------

def write_spool(path: Path, batches: Sequence[Batch]) -> None:
    """Write batches to ``path`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json.dumps(SPOOL_HEADER) + "\n")
        for batch in batches:
            out.write(json.dumps([[p.path, p.value, p.timestamp] for p in batch]) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def parse_spool(text: str) -> List[Batch]:
    """Return the batches in a spool file's text; raise ValueError naming the bad line."""
    if not text:
        raise ValueError("it is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    else:
        raise ValueError("it is truncated (no final newline)")
    if not lines or _json_line(lines[0], 1) != SPOOL_HEADER:
        raise ValueError("line 1 is not a gsender-bcc spool header")
    batches = []
    for number, line in enumerate(lines[1:], start=2):
        items = _json_line(line, number)
        try:
            batch = tuple(Datapoint(str(path), value, int(ts)) for path, value, ts in items)
        except (TypeError, ValueError):
            raise ValueError(f"line {number} is not a list of [path, value, timestamp]") from None
        if not batch or not all(isinstance(p.value, (int, float)) and " " not in p.path
                                for p in batch):
            raise ValueError(f"line {number} holds an empty or malformed batch")
        batches.append(batch)
    return batches


def _json_line(line: str, number: int):
    try:
        return json.loads(line)
    except ValueError:
        raise ValueError(f"line {number} is not JSON") from None


def take_spool(directory: Path) -> List[Batch]:
    """Read and remove the spool in ``directory``; set a damaged one aside and return nothing."""
    path = directory / SPOOL_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        log.error("cannot read spool %s: %s; leaving it in place", path, error)
        return []
    try:
        batches = parse_spool(text)
    except ValueError as error:
        aside = path.with_name(f"{SPOOL_NAME}.corrupt-{int(time.time())}")
        os.replace(path, aside)
        log.error("spool %s is damaged: %s; moved it to %s", path, error, aside)
        return []
    path.unlink()
    log.info("replaying %d intervals spooled at the last stop", len(batches))
    return batches


# ---- delivery to Graphite ------------------------------------------------------------------

@dataclass
class _Route:
    server: Server
    sender: graphyte.Sender
    down_until: float = 0.0
    backoff: float = BACKOFF_FIRST


class GraphiteSink:
    """Queue intervals and deliver them to the first Graphite server that takes them."""

    def __init__(self, servers: Sequence[Server], protocol: str = "tcp", timeout: float = 5.0,
                 limit: int = 5760, spool_dir: Optional[Path] = None,
                 echo: Optional[TextIO] = None, backoff_max: float = BACKOFF_MAX):
        self._echo = StdoutSink(echo) if echo is not None else None
        self._lock = threading.Condition()
        self._outbox = Outbox(limit)
        self._routes: List[_Route] = []
        self._closing = False
        self._failures = 0
        self._last_sent: List[Batch] = []
        self._dropped_in_outage = 0
        self._reported = {"dropped": 0, "failures": 0}
        self._spool_dir = spool_dir
        self._backoff_max = backoff_max
        self.reconfigure(servers, protocol, timeout, limit)
        if spool_dir is not None:
            self._outbox.put_oldest(take_spool(spool_dir))
        self._thread = threading.Thread(target=self._deliver_forever, name="graphite-delivery",
                                        daemon=True)
        self._thread.start()

    def reconfigure(self, servers: Sequence[Server], protocol: str, timeout: float,
                    limit: int, spool_dir: Optional[Path] = None,
                    backoff_max: Optional[float] = None) -> None:
        """Change servers, protocol, timeout or limit, keeping what is queued."""
        with self._lock:
            if backoff_max is not None:
                self._backoff_max = backoff_max
            self._routes = [_Route(s, graphyte.Sender(s.host, s.port, timeout=timeout,
                                                      protocol=protocol, raise_send_errors=True))
                            for s in servers]
            self._note_dropped(self._outbox.resize(limit))
            if spool_dir is not None:
                self._spool_dir = spool_dir
            self._lock.notify_all()

    def submit(self, points: Sequence[Datapoint]) -> None:
        """Queue one interval's datapoints; never blocks on the network."""
        if self._echo is not None:
            self._echo.submit(points)
        with self._lock:
            self._note_dropped(self._outbox.put(tuple(points)))
            self._lock.notify_all()

    def health(self) -> dict:
        """Return the queue length and, since the last call, drops and failed sends."""
        with self._lock:
            dropped = self._outbox.dropped - self._reported["dropped"]
            failures = self._failures - self._reported["failures"]
            self._reported = {"dropped": self._outbox.dropped, "failures": self._failures}
            return {"queued_intervals": len(self._outbox), "dropped_intervals": dropped,
                    "send_failures": failures}

    def close(self, seconds: float = 2.0) -> None:
        """Try to deliver what is queued for ``seconds``, then spool the rest."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while len(self._outbox) and time.monotonic() < deadline and self._thread.is_alive() \
                    and self._any_route_up():
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            self._closing = True
            self._lock.notify_all()
            left = self._outbox.all()
        if not left:
            return
        if self._spool_dir is None:
            log.warning("%d undelivered intervals are lost: no state directory to spool them to",
                        len(left))
            return
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            write_spool(self._spool_dir / SPOOL_NAME, left)
        except OSError as error:
            log.error("cannot spool %d undelivered intervals to %s: %s", len(left),
                      self._spool_dir, error)
        else:
            log.info("spooled %d undelivered intervals to %s", len(left),
                     self._spool_dir / SPOOL_NAME)

    # -- the delivery thread --

    def _any_route_up(self) -> bool:
        now = time.monotonic()
        return any(route.down_until <= now for route in self._routes)

    def _note_dropped(self, count: int) -> None:
        if count and not self._dropped_in_outage:
            log.warning("outbox full (%d intervals): dropping the oldest until Graphite is back",
                        self._outbox.limit)
        self._dropped_in_outage += count

    def _deliver_forever(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not (len(self._outbox) and self._any_route_up()):
                    soonest = min((r.down_until for r in self._routes), default=0.0)
                    self._lock.wait(max(0.05, soonest - time.monotonic()) if len(self._outbox)
                                    else None)
                if self._closing:
                    return
                batches = self._outbox.head(LINES_PER_SEND)
                routes = list(self._routes)
            delivered_to = self._send(routes, [p for batch in batches for p in batch])
            with self._lock:
                if delivered_to is None and self._last_sent:
                    self._note_dropped(self._outbox.put_oldest(self._last_sent))
                    self._last_sent = []
                if delivered_to is not None:
                    self._outbox.remove_head(batches)
                    self._last_sent = batches
                    if self._dropped_in_outage:
                        log.warning("Graphite is back; %d intervals were dropped during the outage",
                                    self._dropped_in_outage)
                        self._dropped_in_outage = 0
                self._lock.notify_all()

    def _send(self, routes: Sequence[_Route], points: Sequence[Datapoint]) -> Optional[Server]:
        """Send to the first route that is up and takes it; return its server, or None."""
        for route in routes:
            if route.down_until > time.monotonic():
                continue
            try:
                route.sender.send_message(encode(route.sender, points))
            except OSError as error:
                with self._lock:
                    self._failures += 1
                    route.down_until = time.monotonic() + route.backoff
                    log.warning("sending %d datapoints to Graphite at %s failed: %s; next try in "
                                "%.0fs", len(points), route.server, error, route.backoff)
                    route.backoff = min(route.backoff * 2, self._backoff_max)
                continue
            if route.down_until:
                log.info("Graphite at %s takes datapoints again", route.server)
            route.down_until, route.backoff = 0.0, BACKOFF_FIRST
            return route.server
        return None
