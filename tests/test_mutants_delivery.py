"""Plausible bugs in delivery that passed the other fast tests (issue 26, part 2).

The TCP sender against a real server on loopback; the outbox with a fake wall clock.
"""

import logging
import os
import socket
import threading

import pytest

from gsender_bcc.config import Config, Server
from gsender_bcc.metrics import Datapoint, Interval
from gsender_bcc.outbox import DiskOutbox
from gsender_bcc.sink import network_sender
from test_sink import (PRIMARY, clock, deliver_all, make_sink, messages, network,  # noqa: F401
                       points, state)

NOW = 1_800_000_000


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


def lines_of(stamp, count=3):
    return b"".join(b"box.s%d %d %d\n" % (i, i, stamp) for i in range(count))


class TestDroppingPartlyDeliveredSegments:
    def test_dropping_a_segment_counts_only_the_intervals_not_yet_delivered(self, tmp_path):
        now = [float(NOW)]
        box = DiskOutbox(tmp_path / "state" / "outbox", 1 << 20, 3600.0, clock=lambda: now[0])
        for stamp in (NOW - 30, NOW - 20, NOW - 10):  # three intervals in one segment
            box.append(lines_of(stamp), stamp)
        # A chunk of the first interval (and one line of the next, so it is known to end).
        chunk = box.peek(len(lines_of(NOW)) + 20)
        assert (chunk.intervals, chunk.data) == (1, lines_of(NOW - 30))
        box.consume(chunk)
        assert (box.intervals, box.dropped) == (2, 0)
        now[0] += 7200  # the segment's newest line is now older than the age limit
        box.set_limits(1 << 20, 3600.0)
        assert (box.intervals, box.dropped) == (0, 2)

    def test_bytes_past_the_limit_count_only_what_was_not_delivered(self, tmp_path,
                                                                     monkeypatch):
        from gsender_bcc import outbox
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", 2 * len(lines_of(NOW)))
        box = DiskOutbox(tmp_path / "state" / "outbox", 1 << 20, 3600.0, clock=lambda: NOW)
        for stamp in (NOW - 30, NOW - 20, NOW - 10):  # two in the first segment, one after
            box.append(lines_of(stamp), stamp)
        chunk = box.peek(len(lines_of(NOW)) + 20)
        assert chunk.intervals == 1
        box.consume(chunk)
        assert box.append(lines_of(NOW), NOW) == 0
        box.set_limits(len(lines_of(NOW)) * 2, 3600.0)  # room for the newest segment only
        assert (box.intervals, box.dropped) == (2, 1)


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o770])
def test_a_state_directory_writable_by_group_or_others_is_refused(tmp_path, mode):
    folder = tmp_path / "state" / "outbox"
    folder.mkdir(parents=True)
    os.chmod(folder.parent, mode)
    with pytest.raises(OSError) as refused:
        DiskOutbox(folder, 1 << 20, 3600.0, clock=lambda: NOW)
    assert f"is writable by group or others (mode 0{mode:o}): chmod go-w it" in \
        refused.value.strerror


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
