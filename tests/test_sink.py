"""The sink's logic with a fake network and fake clocks (a real Graphite is test_delivery.py).

GraphiteSink(start=False) leaves the delivery thread unstarted, so these tests drive
deliver_once() themselves and move the clocks by hand: no sockets and no sleeps, except
where a test is about the thread itself or about UDP datagrams on loopback.
"""

import errno
import gc
import io
import logging
import os
import random
import socket
import threading
import time
import tracemalloc

import graphyte
import pytest

from conftest import TIMER_SLACK, Lateness
from gsender_bcc import outbox, outboxes as outboxes_module, sink as sink_module
from gsender_bcc.config import Config, Server
from gsender_bcc.metrics import Datapoint, Interval
from gsender_bcc.outbox import DiskOutbox
from gsender_bcc.sink import DATAGRAM_BYTES, GraphiteSink, StdoutSink, datagrams, encode, network_sender

NOW = 1_800_000_000
SEGMENT_ENTRY_BYTES = 2048  # what the outbox may hold per segment (its path, its figures)
PRIMARY = Server("primary", 2003)
SECONDARY = Server("secondary", 2004)


def points(stamp, value=1):
    return Interval(stamp, (Datapoint("sink.a", value), Datapoint("sink.b", value + 0.5)))


def lines(stamp, value=1):
    return b"sink.a %d %d\nsink.b %s %d\n" % (value, stamp, str(value + 0.5).encode(), stamp)


class Clock:
    """Monotonic and wall time that move together, only when a test moves them."""

    def __init__(self):
        self.elapsed = 0.0

    def monotonic(self):
        return 1000.0 + self.elapsed

    def time(self):
        return NOW + self.elapsed

    def advance(self, seconds):
        self.elapsed += seconds


class Network:
    """A fake send(): servers in ``down`` refuse; ``raises`` are raised by the next calls."""

    def __init__(self, clock=None):
        self.clock = clock
        self.down = set()
        self.raises = []
        self.attempts = []  # (when, server, data, delivered)

    def __call__(self, server, data):
        when = self.clock.elapsed if self.clock else None
        if self.raises:
            self.attempts.append((when, server, data, False))
            raise self.raises.pop(0)
        if server in self.down:
            self.attempts.append((when, server, data, False))
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        self.attempts.append((when, server, data, True))

    @property
    def delivered(self):
        return [(server, data) for _, server, data, ok in self.attempts if ok]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def network(clock):
    return Network(clock)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def config_for(state, **changes):
    settings = dict(state_directory=state, frequency=5, server_address=PRIMARY.host,
                    port=PRIMARY.port, timeout=1.0)
    settings.update(changes)
    return Config(**settings)


@pytest.fixture
def make_sink(state, clock, network):
    """Sinks with the fake network and clocks and no delivery thread; all closed afterwards."""
    made = []

    def make(echo=None, **changes):
        made.append(GraphiteSink(config_for(state, **changes), echo=echo, send=network,
                                 clock=clock.monotonic, wall_clock=clock.time, start=False))
        return made[-1]
    yield make
    for sink in made:
        sink.close(0)


def deliver_all(sink, limit=1000):
    """Call deliver_once until it has nothing more to send; return how many chunks went."""
    for count in range(limit):
        if not sink.deliver_once():
            return count
    raise AssertionError("deliver_once never ran out of work")


def messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records
            if r.levelno >= level and r.name.startswith("gsender_bcc")]


def outbox_bytes(state):
    return b"".join(p.read_bytes() for p in sorted((state / "outbox").glob("*.txt")))


class TestFraming:
    def test_encode_builds_plaintext_lines(self):
        assert encode(graphyte.Sender("localhost"), points(NOW)) == lines(NOW)

    def test_tagged_series(self):
        tagged = Interval(NOW, (Datapoint("cpu-lat.p99", 12.5, (("host", "web-01"),
                                                                ("service", "db"))),))
        assert encode(graphyte.Sender("localhost"), tagged) == (
            b"cpu-lat.p99;host=web-01;service=db 12.5 %d\n" % NOW)

    def test_stdout_sink_prints_the_same_lines(self):
        out = io.StringIO()
        StdoutSink(stream=out).submit(points(NOW))
        assert out.getvalue() == lines(NOW).decode()


class TestDatagrams:
    @staticmethod
    def backlog(count, seed=11):
        chooser = random.Random(seed)
        return b"".join(b"backlog.%s %d %d\n" % (b"x" * chooser.randint(1, 120), i, NOW + i // 50)
                        for i in range(count))

    def test_a_backlog_goes_in_full_datagrams_of_whole_lines_within_the_limit(self):
        data = self.backlog(5000)
        grams = list(datagrams(data))
        assert b"".join(grams) == data
        assert all(len(g) <= DATAGRAM_BYTES and g.endswith(b"\n") for g in grams)
        for gram, following in zip(grams, grams[1:]):  # each is as full as whole lines allow
            assert len(gram) + following.index(b"\n") + 1 > DATAGRAM_BYTES
        assert len(grams) == 302 and len(data) == 423695  # 292 would be full to the byte

    def test_a_line_of_exactly_the_limit_fits_and_a_longer_one_goes_alone(self):
        exact = b"a." + b"x" * (DATAGRAM_BYTES - 7) + b" 1 1\n"
        longer = b"b." + b"y" * DATAGRAM_BYTES + b" 1 1\n"
        assert len(exact) == DATAGRAM_BYTES
        assert list(datagrams(exact + b"c.z 1 1\n" + longer + b"d.z 1 1\n")) == [
            exact, b"c.z 1 1\n", longer, b"d.z 1 1\n"]

    def test_nothing_gives_no_datagram(self):
        assert list(datagrams(b"")) == []

    def test_udp_datagrams_on_loopback_carry_a_backlog_within_the_limit(self, state):
        """A real UDP socket records what the sink's UDP sender puts on the wire."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            receiver.bind(("127.0.0.1", 0))
            receiver.settimeout(5)
            config = config_for(state, protocol="udp", server_address="127.0.0.1",
                                port=receiver.getsockname()[1])
            udp, sent = sink_module.network_sender(config), []

            def send(server, data):
                udp(server, data)
                sent.append(data)
            sink = GraphiteSink(config, send=send, start=False)
            expected = b""
            stamp = int(time.time()) - 100
            for k in range(40):  # 40 intervals of 100 lines: 4000 lines waiting
                batch = Interval(stamp + k, tuple(
                    Datapoint(f"udp.backlog.series{i:03d}", k * 1000 + i + 0.125)
                    for i in range(100)))
                sink.submit(batch)
                expected += encode(graphyte.Sender("localhost"), batch)
            received = []
            # One chunk on the wire, read before the next: UDP has no flow control, so a
            # receiver that fell behind would lose datagrams, which is not the sink's doing.
            while sink.deliver_once():
                while sum(map(len, received)) < sum(map(len, sent)):
                    received.append(receiver.recv(65536))
            chunks = len(sent)
            sink.close(0)
        sizes = [len(gram) for gram in received]
        print(f"\n{len(expected)} bytes in {len(received)} datagrams from {chunks} chunks, "
              f"sizes {min(sizes)}..{max(sizes)}")
        assert b"".join(received) == expected
        assert max(sizes) <= DATAGRAM_BYTES and all(g.endswith(b"\n") for g in received)
        assert len(received) == sum(len(list(datagrams(c))) for c in self._chunks(expected))

    @staticmethod
    def _chunks(data):
        """The chunks the outbox hands over: whole intervals, up to CHUNK_BYTES."""
        intervals, current, stamp = [], b"", None
        for line in data.splitlines(keepends=True):
            if stamp is not None and line.split()[2] != stamp:
                intervals.append(current)
                current = b""
            current, stamp = current + line, line.split()[2]
        intervals.append(current)
        chunks, chunk = [], b""
        for one in intervals:
            if chunk and len(chunk) + len(one) > sink_module.CHUNK_BYTES:
                chunks.append(chunk)
                chunk = b""
            chunk += one
        return chunks + [chunk]


class TestStoring:
    def test_submit_stores_durably_and_sends_nothing_itself(self, make_sink, state, network,
                                                            monkeypatch):
        synced = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
        sink = make_sink()
        sink.submit(points(NOW))
        assert len(synced) == 1 and outbox_bytes(state) == lines(NOW)
        assert network.attempts == []
        # a crash here loses nothing: a new start finds the interval
        assert DiskOutbox(state / "outbox", 1 << 20, 3600, clock=lambda: NOW).intervals == 1

    def test_echo_prints_only_what_is_already_stored(self, make_sink, state):
        seen = []

        class Witness(io.StringIO):
            def write(self, text):
                seen.append(outbox_bytes(state))
                return super().write(text)

        echo = Witness()
        sink = make_sink(echo=echo)
        sink.submit(points(NOW))
        assert echo.getvalue() == lines(NOW).decode()
        assert seen and all(disk == lines(NOW) for disk in seen)

    def test_delivers_oldest_first_and_forgets_what_a_server_took(self, make_sink, state,
                                                                  network):
        sink = make_sink()
        for k in range(3):
            sink.submit(points(NOW + k, value=k))
        assert sink.health()["queued_intervals"] == 3
        assert deliver_all(sink) == 1
        assert network.delivered == [(PRIMARY, lines(NOW, 0) + lines(NOW + 1, 1)
                                      + lines(NOW + 2, 2))]
        assert sink.health() == {"queued_intervals": 0, "dropped_intervals": 0,
                                 "send_failures": 0, "spool_errors": 0}
        assert list((state / "outbox").iterdir()) == []


class TestServers:
    def test_failover_to_the_next_server_and_back_to_the_first(self, make_sink, network, clock,
                                                               caplog):
        sink = make_sink(fallback_servers=(SECONDARY,))
        network.down = {PRIMARY}
        with caplog.at_level(logging.INFO):
            sink.submit(points(NOW))
            deliver_all(sink)
            clock.advance(0.5)
            sink.submit(points(NOW + 1))
            deliver_all(sink)  # the primary waits out its back-off: not even tried
            clock.advance(0.5)
            network.down = set()
            sink.submit(points(NOW + 2))
            deliver_all(sink)
        assert [(when, server, data, ok) for when, server, data, ok in network.attempts] == [
            (0.0, PRIMARY, lines(NOW), False), (0.0, SECONDARY, lines(NOW), True),
            (0.5, SECONDARY, lines(NOW + 1), True), (1.0, PRIMARY, lines(NOW + 2), True)]
        assert sink.health()["send_failures"] == 1
        assert messages(caplog) == [
            "sending 42 bytes to Graphite at primary:2003 failed: [Errno 111] Connection "
            "refused; next try in 1s",
            "Graphite at primary:2003 takes datapoints again"]

    def test_with_every_server_down_everything_waits(self, make_sink, network, clock):
        sink = make_sink(fallback_servers=(SECONDARY,))
        network.down = {PRIMARY, SECONDARY}
        sink.submit(points(NOW))
        deliver_all(sink)
        clock.advance(1)
        sink.submit(points(NOW + 1))
        network.down = set()
        deliver_all(sink)
        assert network.delivered == [(PRIMARY, lines(NOW) + lines(NOW + 1))]
        assert sink.health()["send_failures"] == 2

    @pytest.mark.parametrize("frequency, tries", [
        (5, [0, 1, 3, 7, 12, 17, 22, 27]),
        (120, [0, 1, 3, 7, 15, 31, 63, 123, 183]),
    ])
    def test_back_off_doubles_up_to_retry_max_seconds(self, make_sink, network, clock, caplog,
                                                      frequency, tries):
        sink = make_sink(frequency=frequency)
        network.down = {PRIMARY}
        sink.submit(points(NOW))
        with caplog.at_level(logging.WARNING):
            while clock.elapsed <= tries[-1]:
                sink.deliver_once()
                clock.advance(0.5)
        assert [when for when, _, _, _ in network.attempts] == tries
        waits = [b - a for a, b in zip(tries, tries[1:])]
        assert [m.rsplit(" ", 1)[1] for m in messages(caplog)] == [f"{w}s" for w in waits] + [
            f"{min(frequency, 60)}s"]
        assert sink.health()["send_failures"] == len(tries)

    def test_the_first_failure_after_a_success_sends_the_last_chunk_again(self, make_sink,
                                                                          network, clock):
        sink = make_sink()
        sink.submit(points(NOW))
        deliver_all(sink)
        sink.submit(points(NOW + 1))
        network.down = {PRIMARY}
        deliver_all(sink)
        clock.advance(1)
        deliver_all(sink)  # fails again: the repeat waits its turn, on disk, once
        clock.advance(2)
        network.down = set()
        deliver_all(sink)
        assert [(data, ok) for _, _, data, ok in network.attempts] == [
            (lines(NOW), True), (lines(NOW + 1), False),
            (lines(NOW + 1) + lines(NOW), False), (lines(NOW + 1) + lines(NOW), True)]
        sink.submit(points(NOW + 2))
        deliver_all(sink)
        assert network.delivered[-1] == (PRIMARY, lines(NOW + 2))
        assert len(network.attempts) == 5

    def test_a_chunk_is_at_most_chunk_bytes_of_whole_intervals(self, make_sink, network):
        sink = make_sink()
        batch = Interval(NOW, tuple(Datapoint(f"big.series{i:04d}", i) for i in range(1000)))
        for k in range(3):
            sink.submit(Interval(NOW + k, batch.points))
        assert deliver_all(sink) == 2
        sizes = [len(data) for _, data in network.delivered]
        one = len(encode(graphyte.Sender("localhost"), batch))
        assert sizes == [2 * one, one] and 2 * one <= sink_module.CHUNK_BYTES


class TestLimits:
    def test_drops_are_logged_once_per_outage_and_summed_when_graphite_is_back(
            self, make_sink, network, clock, caplog, monkeypatch):
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", 1)  # one interval per segment
        sink = make_sink(buffer_hours=0.01)  # 36 s
        network.down = {PRIMARY}
        with caplog.at_level(logging.WARNING):
            for k in range(41):  # an interval a second, kept for 36 s
                clock.elapsed = k
                sink.submit(points(NOW + k))
            assert sink.health()["dropped_intervals"] == 4
            network.down = set()
            deliver_all(sink)
            network.down = {PRIMARY}
            for k in range(41, 82):
                clock.elapsed = k
                sink.submit(points(NOW + k))
        notes = [m for m in messages(caplog) if "sending" not in m]
        assert notes == [
            "outbox full (160 MiB or 0.01 h): dropping the oldest intervals until Graphite is back",
            "Graphite is back; 4 intervals were dropped during the outage",
            "outbox full (160 MiB or 0.01 h): dropping the oldest intervals until Graphite is back"]
        delivered = b"".join(data for _, data in network.delivered)
        assert delivered == b"".join(lines(NOW + k) for k in range(4, 41))
        assert sink.health()["dropped_intervals"] == 4

    def test_memory_fallback_is_bounded_too(self, tmp_path, make_sink, network, monkeypatch):
        monkeypatch.setattr(outboxes_module, "MEMORY_FALLBACK_BYTES", 3 * len(lines(NOW)))
        (tmp_path / "file").write_text("in the way")
        sink = make_sink(state_directory=tmp_path / "file" / "state")
        network.down = {PRIMARY}
        for k in range(5):
            sink.submit(points(NOW + k))
        assert sink.health()["dropped_intervals"] == 2
        network.down = set()
        deliver_all(sink)
        assert [data for _, data in network.delivered] == [lines(NOW + k) for k in (2, 3, 4)]


def test_memory_held_does_not_grow_with_what_waits(make_sink, network, clock, monkeypatch):
    """Python's own count of its allocations after 1000 and after 5000 undelivered intervals.

    Each interval goes through what the agent does with it in an outage: submit, a failed
    delivery, health. Only the segment list may grow (one entry per 256 KiB segment); 0.1 KiB
    more per interval would fail."""
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)  # durability is tested above
    monkeypatch.setattr(sink_module, "CHUNK_BYTES", 2048)  # a chunk of a few intervals
    monkeypatch.setattr(logging.getLogger("gsender_bcc.sink"), "disabled", True)
    sink = make_sink(frequency=1)
    network.down = {PRIMARY}
    series = [f"memory.series{i:03d}" for i in range(20)]

    def intervals(first, last):
        for k in range(first, last):
            sink.submit(Interval(NOW + k, tuple(Datapoint(name, k + i / 8)
                                                for i, name in enumerate(series))))
            sink.deliver_once()
            sink.health()
            clock.advance(1)
            network.attempts.clear()  # the fake network's record is not the sink's memory

    def held():
        gc.collect()
        return tracemalloc.get_traced_memory()[0], len(sink._outboxes._disk._segments)
    intervals(0, 100)
    tracemalloc.start()
    try:
        intervals(100, 1000)
        at_1000, segments_1000 = held()
        intervals(1000, 5000)
        at_5000, segments_5000 = held()
    finally:
        tracemalloc.stop()
    grown = at_5000 - at_1000
    per_interval = (grown - (segments_5000 - segments_1000) * SEGMENT_ENTRY_BYTES) / 4000
    print(f"\n{grown} bytes more held by Python from 1000 to 5000 intervals waiting, "
          f"{segments_5000 - segments_1000} more segments")
    assert sink.health()["queued_intervals"] == 5000
    assert per_interval < 0.05 * 1024, f"{per_interval:.0f} bytes more held per interval waiting"
    network.down = set()
    clock.advance(10)
    deliver_all(sink, limit=100000)
    assert b"".join(data for _, data in network.delivered).count(b"\n") == 5000 * len(series)


def test_a_refused_retry_reads_and_builds_nothing_again(make_sink, network, clock, monkeypatch):
    """In an outage a retry hands out the chunk it holds, without reading, splitting and
    checking it again (garbage glibc would keep as the agent's RssAnon): what it allocates, at
    its peak, is far below a chunk."""
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    monkeypatch.setattr(logging.getLogger("gsender_bcc.sink"), "disabled", True)
    sink = make_sink(frequency=1)
    network.down = {PRIMARY}
    series = tuple(Datapoint(f"retry.series{i:03d}", i + 0.25) for i in range(40))

    def outage(first, last):
        for k in range(first, last):
            sink.submit(Interval(NOW + k, series))
            clock.advance(1)
            sink.deliver_once()
            network.attempts.clear()
    outage(0, 60)  # the chunk is full: 64 KiB of intervals wait before the newest
    assert len(sink._outboxes._disk.peek(sink_module.CHUNK_BYTES).data) > sink_module.CHUNK_BYTES - 2048
    tracemalloc.start()
    try:
        outage(60, 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < sink_module.CHUNK_BYTES // 4, f"{peak} bytes at the peak of 40 retries"


class TestStateDirectoryTrouble:
    def test_an_unusable_state_directory_falls_back_to_memory_with_one_line(
            self, tmp_path, make_sink, network, caplog):
        blocker = tmp_path / "file"
        blocker.write_text("in the way")
        with caplog.at_level(logging.WARNING):
            sink = make_sink(state_directory=blocker / "state")
            for k in range(3):
                sink.submit(points(NOW + k))
            health = sink.health()
            deliver_all(sink)
        assert health == {"queued_intervals": 3, "dropped_intervals": 0, "send_failures": 0,
                          "spool_errors": 4}
        assert [data for _, data in network.delivered] == [lines(NOW + k) for k in range(3)]
        assert messages(caplog) == [
            f"cannot use {blocker}/state/outbox for undelivered data (Not a directory): "
            f"measuring and delivering continue, but data cannot survive a Graphite outage "
            f"longer than a few hundred intervals, or a restart, until this is fixed"]
        caplog.clear()
        blocker.unlink()  # the operator fixes it
        with caplog.at_level(logging.WARNING):
            sink.submit(points(NOW + 3))
        assert outbox_bytes(blocker / "state") == lines(NOW + 3)
        assert messages(caplog) == [f"the outbox in {blocker}/state/outbox takes data again"]
        assert sink.health()["spool_errors"] == 0

    def test_a_failing_append_keeps_data_in_memory_with_one_line(self, make_sink, network,
                                                                 state, caplog, monkeypatch):
        sink = make_sink()
        network.down = {PRIMARY}
        sink.submit(points(NOW))

        def full(chunk):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(sink._outboxes._disk, "append_chunk", full)
        with caplog.at_level(logging.WARNING):
            for k in range(1, 4):
                sink.submit(points(NOW + k))
        assert sink.health() == {"queued_intervals": 4, "dropped_intervals": 0,
                                 "send_failures": 0, "spool_errors": 3}
        assert messages(caplog) == [
            f"cannot write undelivered data to {state}/outbox (No space left on device): it is "
            f"kept in memory meanwhile, so it cannot survive a restart or a long Graphite "
            f"outage until this is fixed"]
        caplog.clear()
        monkeypatch.undo()  # space again
        with caplog.at_level(logging.WARNING):
            sink.submit(points(NOW + 4))
        assert messages(caplog) == [f"the outbox in {state}/outbox takes data again"]
        network.down = set()
        deliver_all(sink)
        assert sorted(data for _, data in network.delivered) == sorted(
            [lines(NOW) + lines(NOW + 4)] + [lines(NOW + k) for k in (1, 2, 3)])


class TestReconfigure:
    def test_new_servers_take_what_waits(self, make_sink, network):
        sink = make_sink()
        network.down = {PRIMARY}
        sink.submit(points(NOW))
        sink.submit(points(NOW + 1))
        sink.reconfigure(config_for(sink._config.state_directory, server_address="secondary",
                                    port=SECONDARY.port))
        deliver_all(sink)
        assert network.delivered == [(SECONDARY, lines(NOW) + lines(NOW + 1))]

    def test_smaller_limits_drop_the_oldest_at_once(self, make_sink, network, clock, state):
        sink = make_sink()
        network.down = {PRIMARY}
        for k in range(3):
            sink.submit(points(NOW + k))
        clock.advance(100)
        sink.reconfigure(config_for(state, buffer_hours=0.01))
        assert sink.health()["dropped_intervals"] == 3
        network.down = set()
        assert deliver_all(sink) == 0

    def test_a_new_state_directory_keeps_what_waits(self, make_sink, network, tmp_path):
        sink = make_sink()
        network.down = {PRIMARY}
        sink.submit(points(NOW))
        sink.submit(points(NOW + 1))
        sink.reconfigure(config_for(tmp_path / "elsewhere"))
        sink.submit(points(NOW + 2))
        network.down = set()
        deliver_all(sink)
        assert b"".join(data for _, data in network.delivered) == (
            lines(NOW) + lines(NOW + 1) + lines(NOW + 2))
        assert sink.health()["queued_intervals"] == 0


class TestClose:
    def test_what_waits_stays_on_disk_for_the_next_start(self, make_sink, network, state, clock,
                                                         caplog):
        sink = make_sink()
        network.down = {PRIMARY}
        sink.submit(points(NOW))
        sink.submit(points(NOW + 1))
        deliver_all(sink)
        with caplog.at_level(logging.INFO):
            sink.close(seconds=5)
        assert clock.elapsed == 0  # nothing to wait for with no thread and the server down
        assert messages(caplog)[-1] == f"2 undelivered intervals wait in {state}/outbox for " \
                                       f"the next start"
        network.down = set()
        after = make_sink()
        deliver_all(after)
        assert network.delivered == [(PRIMARY, lines(NOW) + lines(NOW + 1))]

    def test_memory_fallback_is_written_to_disk_at_close(self, make_sink, network, state,
                                                         monkeypatch):
        sink = make_sink()
        network.down = {PRIMARY}
        monkeypatch.setattr(sink._outboxes._disk, "append",
                            lambda data, stamp, intervals=1: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
        sink.submit(points(NOW))
        monkeypatch.undo()
        sink.close(0)
        assert outbox_bytes(state) == lines(NOW)

    def test_memory_that_cannot_be_saved_is_reported_lost(self, tmp_path, make_sink, network,
                                                          caplog):
        (tmp_path / "file").write_text("in the way")
        sink = make_sink(state_directory=tmp_path / "file" / "state")
        network.down = {PRIMARY}
        sink.submit(points(NOW))
        with caplog.at_level(logging.WARNING):
            sink.close(0)
        assert messages(caplog)[-1] == ("1 undelivered intervals are lost: the state directory "
                                        "cannot take them")

    def test_close_waits_for_delivery_while_a_server_takes_data(self, state):
        received = []
        sink = GraphiteSink(config_for(state), send=lambda server, data: received.append(data))
        for k in range(3):
            sink.submit(points(int(time.time()) - 10 + k))
        sink.close(seconds=5)
        assert b"".join(received).count(b"\n") == 6
        assert not sink._thread.is_alive()

    def test_close_does_not_wait_for_servers_that_refuse(self, state):
        def refuse(server, data):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        sink = GraphiteSink(config_for(state), send=refuse)
        sink.submit(points(int(time.time())))
        started = time.monotonic()
        sink.close(seconds=5)
        assert time.monotonic() - started < 1.0
        assert not sink._thread.is_alive()


class TestDeliveryThread:
    def test_an_unexpected_exception_is_counted_logged_once_per_kind_and_survived(
            self, state, caplog, monkeypatch):
        monkeypatch.setattr(sink_module, "BACKOFF_FIRST", 0.01)
        network = Network()
        surprises = [RuntimeError("boom"), RuntimeError("boom again"), KeyError("k")]
        stamp = int(time.time()) - 10
        with caplog.at_level(logging.INFO):
            sink = GraphiteSink(config_for(state), send=network)
            peek = sink._outboxes._disk.peek

            def surprising_peek(max_bytes):
                if surprises:
                    raise surprises.pop(0)
                return peek(max_bytes)
            monkeypatch.setattr(sink._outboxes._disk, "peek", surprising_peek)
            try:
                sink.submit(points(stamp))
                wait_until(lambda: network.delivered, "the first delivery")
                sink.submit(points(stamp + 1))
                wait_until(lambda: len(network.delivered) == 2, "the second delivery")
                assert sink.alive()
                health = sink.health()
            finally:
                sink.close()
        assert network.delivered == [(PRIMARY, lines(stamp)), (PRIMARY, lines(stamp + 1))]
        assert health["send_failures"] == 3 and health["queued_intervals"] == 0
        assert messages(caplog, logging.ERROR) == [
            "delivery hit an unexpected RuntimeError: boom; it carries on",
            "delivery hit an unexpected KeyError: 'k'; it carries on"]

    def test_alive_tells_a_stuck_delivery_thread(self, state, clock):
        release = threading.Event()
        entered = threading.Event()

        def stuck(server, data):
            entered.set()
            release.wait(10)
        sink = GraphiteSink(config_for(state), send=stuck, clock=clock.monotonic)
        try:
            assert sink.alive()
            sink.submit(points(int(time.time())))
            assert entered.wait(5)
            clock.advance(1.0 * 2 + 10 - 0.1)  # timeout * (servers + 1) + 10, not quite
            assert sink.alive()
            clock.advance(0.2)
            assert not sink.alive()
            release.set()
            wait_until(sink.alive, "the thread to make progress again")
        finally:
            release.set()
            sink.close(0)
        assert not sink.alive()

    def test_an_unstarted_sink_is_not_alive(self, make_sink):
        assert not make_sink().alive()


def wait_until(predicate, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class TestFaultsOfIssue22:
    def test_a_reload_to_an_unusable_state_directory_keeps_the_outbox(self, make_sink, network,
                                                                     tmp_path, state, caplog):
        sink = make_sink()
        network.down = {PRIMARY}
        for k in range(200):
            sink.submit(points(NOW + k))
        before = outbox_bytes(state)
        (tmp_path / "file").write_text("in the way")
        with caplog.at_level(logging.WARNING):
            sink.reconfigure(config_for(tmp_path / "file" / "state"))
        assert outbox_bytes(state) == before
        assert sink.health() == {"queued_intervals": 200, "dropped_intervals": 0,
                                 "send_failures": 0, "spool_errors": 1}
        assert messages(caplog)[-1] == (f"keeping the outbox in {state}/outbox, with its 200 "
                                        f"intervals, until the new state directory can be used")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            sink.submit(points(NOW + 200))
            sink.submit(points(NOW + 201))
        assert messages(caplog) == []  # said once, at the reload
        (tmp_path / "file").unlink()  # the operator fixes it: the next interval moves all
        sink.submit(points(NOW + 202))
        assert outbox_bytes(state) == b"" and sink.health()["queued_intervals"] == 203
        network.down = set()
        deliver_all(sink)
        assert b"".join(data for _, data in network.delivered) == b"".join(
            lines(NOW + k) for k in range(203))
        assert sink.health()["dropped_intervals"] == 0

    def test_a_move_that_fails_half_way_delivers_the_rest_from_the_old_outbox(
            self, make_sink, network, tmp_path, state, monkeypatch):
        monkeypatch.setattr(sink_module, "CHUNK_BYTES", 200)
        sink = make_sink()
        network.down = {PRIMARY}
        for k in range(10):
            sink.submit(points(NOW + k))
        real_append, moved = DiskOutbox.append, []

        def append_twice(self, data, stamp, intervals=1):
            if len(moved) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            moved.append(data)
            return real_append(self, data, stamp, intervals)
        monkeypatch.setattr(DiskOutbox, "append", append_twice)
        sink.reconfigure(config_for(tmp_path / "elsewhere"))
        monkeypatch.undo()
        assert sink.health()["queued_intervals"] == 10
        sink.submit(points(NOW + 10))
        network.down = set()
        deliver_all(sink)
        assert sorted(b"".join(data for _, data in network.delivered).splitlines()) == sorted(
            b"".join(lines(NOW + k) for k in range(11)).splitlines())
        assert sink.health()["dropped_intervals"] == 0 and outbox_bytes(state) == b""

    def test_drops_from_memory_are_counted_in_intervals(self):
        box = outbox.MemoryOutbox(100)
        box.append_chunk(outbox.Chunk(b"x" * 60, 5, ((60, NOW),), 60, 0))
        assert box.append(b"y" * 60, NOW + 1) == 5 and box.dropped == 5 and box.intervals == 1

    def test_segments_removed_by_hand_are_skipped_with_one_line(self, make_sink, network, state,
                                                                clock, caplog, monkeypatch):
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", len(lines(NOW)) * 2)
        sink = make_sink()
        network.down = {PRIMARY}
        for k in range(6):
            sink.submit(points(NOW + k))
        for path in (state / "outbox").glob("*.txt"):
            path.unlink()  # all three, the one being written too
        sink.submit(points(NOW + 6))
        network.down = set()
        clock.advance(10)
        with caplog.at_level(logging.WARNING):
            deliver_all(sink)
        assert b"".join(data for _, data in network.delivered) == lines(NOW + 6)
        gone = [m for m in messages(caplog, logging.ERROR) if "removed by someone else" in m]
        assert len(gone) == 3 and gone[0].endswith("skipped it and the 2 intervals it held")
        assert sink.health()["dropped_intervals"] == 6

    def test_a_delivery_loop_failing_on_every_try_is_not_alive(self, state, clock, monkeypatch):
        monkeypatch.setattr(sink_module, "BACKOFF_FIRST", 0.01)
        tries = []

        def broken(max_bytes):
            tries.append(1)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        sink = GraphiteSink(config_for(state), send=Network(), clock=clock.monotonic)
        try:
            monkeypatch.setattr(sink._outboxes._disk, "peek", broken)
            sink.submit(points(int(time.time())))
            wait_until(lambda: len(tries) >= 2, "two tries")
            assert sink.alive()
            clock.advance(1.0 * 2 + 10 + 0.1)  # timeout * (servers + 1) + 10, and a bit
            seen = len(tries)
            wait_until(lambda: len(tries) >= seen + 3, "three tries more")  # none in progress
            assert not sink.alive()
        finally:
            sink.close(0)

    def test_any_exception_of_one_server_tries_the_next(self, make_sink, network):
        sink = make_sink(fallback_servers=(SECONDARY,))
        network.raises = [UnicodeError("label empty or too long")]
        sink.submit(points(NOW))
        deliver_all(sink)
        assert network.delivered == [(SECONDARY, lines(NOW))]
        assert sink.health()["send_failures"] == 1

    def test_a_server_trickling_bytes_back_cannot_hold_a_send_longer_than_the_timeout(self):
        server = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def trickle():
            connection, _ = server.accept()
            with connection:
                for _ in range(100):  # 5 s at most: a send bounded per recv only outlasts it
                    if stop.wait(0.05):
                        return
                    try:
                        connection.sendall(b".")
                    except OSError:
                        return
        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        send = sink_module.network_sender(Config(timeout=0.5))
        lateness = Lateness(os.getpid())
        started = time.monotonic()
        try:
            with pytest.raises(OSError):
                send(Server("127.0.0.1", server.getsockname()[1]), b"a.b 1 1\n")
            took = time.monotonic() - started
            late = lateness.update()
        finally:
            stop.set()
            thread.join(5)
            server.close()
        assert took <= 0.5 + late + TIMER_SLACK, f"{took:.3f}s, {late:.3f}s of CPU and waits"

    def test_a_stop_during_an_outage_is_bounded_whatever_the_timeout(self, state):
        release = threading.Event()
        entered = threading.Event()

        def black_hole(server, data):
            entered.set()
            release.wait(20)
            raise socket.timeout("timed out")
        sink = GraphiteSink(config_for(state, timeout=60.0), send=black_hole)
        try:
            sink.submit(points(int(time.time())))
            assert entered.wait(5)
            lateness = Lateness(os.getpid())
            started = time.monotonic()
            sink.close()
            took = time.monotonic() - started
            late = lateness.update()
        finally:
            release.set()
        promised = sink_module.CLOSE_SECONDS + sink_module.JOIN_SECONDS
        assert took <= promised + late + TIMER_SLACK, f"{took:.3f}s, {late:.3f}s of CPU and waits"
        assert b"".join(p.read_bytes() for p in (state / "outbox").glob("*.txt")).count(
            b"\n") == 2


# -- a TCP send counts once the server has read it --

class ReadingServer:
    """A TCP server on loopback that reads one connection until the sender's EOF, then closes
    its side, or with ``close=False`` keeps it open until the test ends."""

    def __init__(self, close=True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.close = close
        self.received = bytearray()
        self.saw_eof = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def server(self):
        return Server("127.0.0.1", self.listener.getsockname()[1])

    def _serve(self):
        self.listener.settimeout(10)
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(10)
            while True:
                data = connection.recv(1 << 16)
                if not data:
                    break
                self.received += data
            self.saw_eof.set()
            if not self.close:
                self.release.wait(10)

    def stop(self):
        self.release.set()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def reading_server():
    made = []

    def make(**kwargs):
        made.append(ReadingServer(**kwargs))
        return made[-1]
    yield make
    for server in made:
        server.stop()


class TestTcpSendCountsOnceTheServerHasReadIt:
    """After sending, the agent half-closes the connection and
    waits for the server to close its side."""

    DATA = b"".join(b"tcp.series%05d %d %d\n" % (i, i, NOW) for i in range(40000))  # ~1 MiB

    def test_a_send_returns_once_the_server_read_everything_and_closed(self, reading_server):
        server = reading_server()
        network_sender(Config(timeout=10.0))(server.server, self.DATA)
        # The server saw the sender's EOF (its half-close) before it closed, and the send
        # returned only after that close: so EOF was seen by the time it returned.
        assert server.saw_eof.is_set() and bytes(server.received) == self.DATA

    def test_a_server_that_read_everything_but_never_closes_fails_the_send(self,
                                                                        reading_server):
        """What a relay shutting down with the data unsent looks like from the sender: the
        send is not counted as delivered, so the interval stays in the outbox."""
        server = reading_server(close=False)
        with pytest.raises(OSError):
            network_sender(Config(timeout=0.3))(server.server, b"tcp.a 1 1800000000\n")
        assert server.saw_eof.wait(10) and bytes(server.received) == b"tcp.a 1 1800000000\n"


# -- the back-off after a success, and the memory fallback within buffer_megabytes --

def test_the_back_off_starts_again_from_one_second_after_a_success(make_sink, network, clock,
                                                                   caplog):
    sink = make_sink(frequency=60)
    network.down = {PRIMARY}
    sink.submit(points(NOW))
    for _ in range(30):  # 15 s of failures: the back-off grew to 16 s
        sink.deliver_once()
        clock.advance(0.5)
    network.down = set()
    for _ in range(100):
        if sink.deliver_once():
            break
        clock.advance(0.5)
    network.down = {PRIMARY}
    sink.submit(points(NOW + 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not sink.deliver_once()
    assert messages(caplog)[-1].endswith("failed: [Errno 111] Connection refused; next try in 1s")


def big_interval(stamp, megabytes):
    """One interval of ``megabytes`` MiB of lines (33 bytes each, as "mem.series0000000 1.5
    1800000000\\n")."""
    count = int(megabytes * (1 << 20)) // 33
    return Interval(stamp, tuple(Datapoint(f"mem.series{i:07d}", 1.5) for i in range(count)))


class TestMemoryFallbackWithinBufferMegabytes:
    """While the state directory cannot be used, what waits in memory is bounded by
    buffer_megabytes too (when that is below the fallback's own bound); the newest interval
    is kept however large."""

    @pytest.fixture
    def memory_sink(self, tmp_path, make_sink, network):
        (tmp_path / "file").write_text("in the way")
        network.down = {PRIMARY}
        return make_sink(state_directory=tmp_path / "file" / "state", buffer_megabytes=1)

    def test_older_intervals_are_dropped_past_buffer_megabytes(self, memory_sink):
        for k in range(6):
            memory_sink.submit(big_interval(NOW + k, 0.3))
        health = memory_sink.health()
        assert health["dropped_intervals"] == 3 and health["queued_intervals"] == 3

    def test_the_newest_interval_is_kept_even_if_larger(self, memory_sink, network):
        memory_sink.submit(big_interval(NOW, 1.5))
        assert memory_sink.health()["queued_intervals"] == 1
        assert memory_sink.health()["dropped_intervals"] == 0
        network.down = set()
        deliver_all(memory_sink)
        assert sum(data.count(b"\n") for _, data in network.delivered) == len(
            big_interval(NOW, 1.5).points)
