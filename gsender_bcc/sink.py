"""Deliver datapoints: Graphite plaintext built by graphyte, to servers or to stdout.

Every interval is appended to an outbox on disk (outboxes.py chooses it) and made durable
before ``submit`` returns; a delivery thread sends what the outbox holds, oldest
first, and lets the outbox forget what a server took. So a slow, refusing or
black-holed server never delays the measurement loop, memory stays flat however
long Graphite is away, and a crash loses nothing that was submitted.

Servers are tried in order: one that fails is skipped for a back-off period
that doubles from one second up to one interval (at most a minute), then tried
first again, so traffic returns to the primary once it is back.

Delivery is at least once: the plaintext protocol has no acknowledgement, and a
server that goes down may lose what it took just before, so the first failure
after a success sends the last successful chunk again. Graphite keeps one value
per path and timestamp, so a repeat changes nothing.

UDP datagrams carry whole lines, at most ``DATAGRAM_BYTES`` each, so that they
cross an IPv6 path with a 1500-byte MTU unfragmented.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, TextIO

try:  # the .deb ships a private copy; elsewhere graphyte comes from PyPI
    from ._vendor import graphyte
except ImportError:
    import graphyte

from .config import Config, Server
from .metrics import Interval
from .outbox import Chunk, one_interval, pieces
from .outboxes import Outboxes

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 10
DATAGRAM_BYTES = 1452  # 1500-byte MTU - 40 (IPv6 header) - 8 (UDP header)
BACKOFF_FIRST = 1.0
CLOSE_SECONDS = 2.0
JOIN_SECONDS = 2.0  # what a stop waits for a send in progress, whatever the timeout

# send(server, data): deliver ``data`` to ``server`` or raise.
Send = Callable[[Server, bytes], None]


def encode(builder: graphyte.Sender, interval: Interval) -> bytes:
    """Return the plaintext-protocol bytes for an interval, one line per datapoint."""
    return b"".join(builder.build_message(p.path, p.value, interval.stamp, tags=dict(p.tags))
                    for p in interval.points)


def message_builder() -> graphyte.Sender:
    """Return a graphyte Sender used only to build lines (it never opens a socket)."""
    return graphyte.Sender("localhost")


def datagrams(data: bytes, limit: int = DATAGRAM_BYTES) -> Iterator[bytes]:
    """Split lines into datagrams of whole lines, each at most ``limit`` bytes if a line fits."""
    return pieces(data, limit)


def _address(server: Server, kind: int):
    """Return the first (family, address) for ``server``, IPv4 or IPv6."""
    family, _, _, _, address = socket.getaddrinfo(server.host, server.port, type=kind)[0]
    return family, address


def time_left(deadline: float, now: float) -> float:
    """Return the seconds left before ``deadline``; raise TimeoutError once none are."""
    left = deadline - now
    if left <= 0:
        raise TimeoutError("the send took longer than the timeout")
    return left


def network_sender(config: Config, clock: Callable[[], float] = time.monotonic) -> Send:
    """Return the function that sends bytes to a server over the configured protocol.

    A TCP send, from connecting to the server closing its side, takes at most ``timeout``
    seconds in all, whatever the server trickles back meanwhile.
    """
    timeout = config.timeout

    def tcp(server: Server, data: bytes) -> None:
        deadline = clock() + timeout
        with socket.create_connection((server.host, server.port), timeout) as connection:
            connection.settimeout(time_left(deadline, clock()))
            connection.sendall(data)  # the timeout bounds the whole sendall (Python >= 3.5)
            # A server closes its side once it has read everything we sent: waiting for that
            # tells a delivered send from one a server shutting down took and dropped.
            connection.shutdown(socket.SHUT_WR)
            while True:
                connection.settimeout(time_left(deadline, clock()))
                if not connection.recv(4096):
                    break

    def udp(server: Server, data: bytes) -> None:
        family, address = _address(server, socket.SOCK_DGRAM)
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for datagram in datagrams(data):
                sock.sendto(datagram, address)

    return udp if config.protocol == "udp" else tcp


class StdoutSink:
    """Write each interval's lines to a stream instead of sending them."""

    def __init__(self, config: Optional[Config] = None, stream: TextIO = sys.stdout):
        self._stream = stream
        self._builder = message_builder()

    def submit(self, interval: Interval) -> None:
        self._stream.write(encode(self._builder, interval).decode("utf-8"))
        self._stream.flush()

    def reconfigure(self, config: Config) -> None:
        pass

    def health(self) -> Dict[str, int]:
        return {}

    def alive(self) -> bool:
        return True

    def close(self, seconds: float = 0) -> None:
        pass


@dataclass
class _Route:
    server: Server
    down_until: float = 0.0
    backoff: float = BACKOFF_FIRST


class GraphiteSink:
    """Keep intervals in the outbox and deliver them to the first Graphite server that takes them.

    ``send`` and ``clock`` (monotonic seconds) are seams for tests; ``start=False`` leaves
    the delivery thread unstarted so a test can drive ``deliver_once`` itself.
    """

    def __init__(self, config: Config, echo: Optional[TextIO] = None,
                 send: Optional[Send] = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, start: bool = True):
        self._echo = StdoutSink(stream=echo) if echo is not None else None
        self._builder = message_builder()
        self._lock = threading.Condition()
        self._clock = clock
        self._wall_clock = wall_clock
        self._custom_send = send
        self._closing = False
        self._send_failures = 0
        self._reported: Dict[str, int] = {}
        self._exceptions_seen: set = set()
        self._last_sent: Optional[Chunk] = None
        self._busy_since: Optional[float] = None  # when the send in progress began
        self._failing_since: Optional[float] = None  # when every delivery began to raise
        self._dropped_in_outage = 0
        self._outboxes = Outboxes(config, wall_clock)
        self.reconfigure(config)
        self._thread = threading.Thread(target=self._deliver_forever, name="graphite-delivery",
                                        daemon=True)
        if start:
            self._thread.start()

    # -- the measurement side --

    def reconfigure(self, config: Config) -> None:
        """Take new servers, protocol, timeout, limits or state directory, keeping what waits."""
        with self._lock:
            self._config = config
            self._send = self._custom_send or network_sender(config)
            self._routes = [_Route(server) for server in config.servers]
            self._outboxes.reconfigure(config)
            self._lock.notify_all()

    def submit(self, interval: Interval) -> None:
        """Append one interval's lines to the outbox, with its stamp; never blocks on the network."""
        data = encode(self._builder, interval)
        with self._lock:
            self._store(one_interval(data, interval.stamp))
            self._lock.notify_all()
        if self._echo is not None:  # printed once stored: a printed interval is never lost
            self._echo.submit(interval)

    def _store(self, chunk: Chunk) -> None:
        self._note_dropped(self._outboxes.store(chunk))

    def health(self) -> Dict[str, int]:
        """Return what waits, and since the last call: drops, failed sends, outbox errors."""
        with self._lock:
            now = {"send_failures": self._send_failures, "spool_errors": self._outboxes.errors,
                   "dropped_intervals": self._outboxes.dropped}
            since = {name: value - self._reported.get(name, 0) for name, value in now.items()}
            self._reported = now
            return {"queued_intervals": self._outboxes.intervals,
                    "dropped_intervals": since["dropped_intervals"],
                    "send_failures": since["send_failures"],
                    "spool_errors": since["spool_errors"]}

    def alive(self) -> bool:
        """Tell whether the delivery thread runs, is not stuck in one delivery, and does not
        fail on every try."""
        stuck_after = self._config.timeout * (len(self._routes) + 1) + 10
        now = self._clock()
        return self._thread.is_alive() and all(
            since is None or now - since < stuck_after
            for since in (self._busy_since, self._failing_since))

    def close(self, seconds: float = CLOSE_SECONDS) -> None:
        """Give delivery ``seconds`` to empty the outbox, then stop; what waits stays on disk.

        A send still in progress then gets ``JOIN_SECONDS`` more, whatever the timeout: what it
        carries is still in the outbox, so a stop takes at most ``seconds + JOIN_SECONDS``."""
        deadline = self._clock() + seconds
        with self._lock:
            while self._pending() and self._clock() < deadline and self._thread.is_alive() \
                    and self._any_route_up():
                self._lock.wait(max(0.0, deadline - self._clock()))
            self._closing = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=JOIN_SECONDS)
        with self._lock:
            waiting = self._outboxes.close()
        if waiting:
            log.info("%d undelivered intervals wait in %s for the next start", waiting,
                     self._outboxes.directory)

    def outbox_bytes(self) -> int:
        """The bytes waiting on disk, as the byte limit counts them."""
        with self._lock:
            return self._outboxes.disk_bytes

    # -- the delivery thread --

    def _pending(self) -> bool:
        return self._outboxes.intervals > 0

    def _any_route_up(self) -> bool:
        now = self._clock()
        return any(route.down_until <= now for route in self._routes)

    def _note_dropped(self, count: int) -> None:
        if count and not self._dropped_in_outage:
            log.warning("outbox full (%s): dropping the oldest intervals until Graphite is back",
                        self._limits())
        self._dropped_in_outage += count

    def _limits(self) -> str:
        return (f"{self._config.buffer_megabytes} MiB or {self._config.buffer_hours:g} h")

    def _deliver_forever(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                if not (self._pending() and self._any_route_up()):
                    # Nothing to send: sleep until submit or close wakes us (a periodic wake
                    # costs an idle host more than the whole interval's work).
                    wait = None
                    if self._pending():
                        soonest = min((r.down_until for r in self._routes), default=0.0)
                        wait = max(0.05, soonest - self._clock())
                    self._lock.wait(wait)
                    continue
                self._busy_since = self._clock()
            try:
                self.deliver_once()
            except Exception as error:  # the thread must outlive any bug or surprise
                if self._failing_since is None:
                    self._failing_since = self._clock()
                self._count_failure(error)
                time.sleep(BACKOFF_FIRST)
            else:
                self._failing_since = None
            finally:
                self._busy_since = None

    def _count_failure(self, error: BaseException) -> None:
        with self._lock:
            self._send_failures += 1
            kind = type(error).__name__
            if kind not in self._exceptions_seen:
                self._exceptions_seen.add(kind)
                log.error("delivery hit an unexpected %s: %s; it carries on", kind, error)

    def deliver_once(self) -> bool:
        """Send the oldest waiting chunk to the first server that takes it; return whether one did."""
        with self._lock:
            waiting = self._outboxes.next_chunk(CHUNK_BYTES)
            if waiting is None:
                return False
            source, chunk = waiting
            routes = list(self._routes)
        delivered = self._send_first(routes, chunk.data) if chunk.data else True
        with self._lock:
            if not delivered:
                if self._last_sent is not None:  # a server going down may lose what it took last
                    self._store(self._last_sent)
                    self._last_sent = None
                self._lock.notify_all()  # close() stops waiting once no server is up
                return False
            source.consume(chunk)
            self._last_sent = chunk
            if self._dropped_in_outage:
                log.warning("Graphite is back; %d intervals were dropped during the outage",
                            self._dropped_in_outage)
                self._dropped_in_outage = 0
            self._lock.notify_all()
        return True

    def _send_first(self, routes: Sequence[_Route], data: bytes) -> bool:
        for route in routes:
            if route.down_until > self._clock():
                continue
            try:
                self._send(route.server, data)
            except Exception as error:  # noqa: BLE001 (a bad host name raises UnicodeError)
                with self._lock:
                    self._send_failures += 1
                    route.down_until = self._clock() + route.backoff
                    log.warning("sending %d bytes to Graphite at %s failed: %s; next try in "
                                "%.0fs", len(data), route.server, error, route.backoff)
                    route.backoff = min(route.backoff * 2, self._config.retry_max_seconds)
                continue
            if route.down_until:
                log.info("Graphite at %s takes datapoints again", route.server)
            route.down_until, route.backoff = 0.0, BACKOFF_FIRST
            return True
        return False

