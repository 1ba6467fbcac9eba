"""Framing against exact bytes; delivery to a real carbon-cache is tested with the sink issue."""

import io
import socket
import threading

import graphyte

from gsender_bcc.metrics import Datapoint
from gsender_bcc.sink import GraphiteSink, StdoutSink, encode

POINTS = [Datapoint("h.cpu-lat.count", 120, 1700000010), Datapoint("h.cpu-lat.mean", 12.346, 1700000010)]
LINES = b"h.cpu-lat.count 120 1700000010\nh.cpu-lat.mean 12.346 1700000010\n"


def test_encode_builds_plaintext_lines():
    assert encode(graphyte.Sender("localhost"), POINTS) == LINES


def test_stdout_sink_prints_the_same_lines():
    out = io.StringIO()
    StdoutSink(out).send(POINTS)
    assert out.getvalue() == LINES.decode()


def test_graphite_sink_sends_one_connection_per_interval():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        received = []

        def accept_one():
            conn, _ = server.accept()
            with conn:
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                received.append(b"".join(chunks))

        thread = threading.Thread(target=accept_one)
        thread.start()
        GraphiteSink("127.0.0.1", server.getsockname()[1]).send(POINTS)
        thread.join(5)
    assert received == [LINES]


def test_refused_connection_is_logged_not_raised(caplog):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    GraphiteSink("127.0.0.1", port, timeout=1).send(POINTS)
    assert "sending 2 lines to Graphite at 127.0.0.1:%d/tcp failed" % port in caplog.text
