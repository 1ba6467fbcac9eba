"""Deliver datapoints: Graphite plaintext built by graphyte, to a server or to stdout."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TextIO

import graphyte

from .metrics import Datapoint

log = logging.getLogger(__name__)


def encode(sender: graphyte.Sender, points: Iterable[Datapoint]) -> bytes:
    """Return the plaintext-protocol bytes for ``points``, one line each."""
    return b"".join(sender.build_message(p.path, p.value, p.timestamp) for p in points)


class StdoutSink:
    """Write each interval's lines to a stream instead of sending them."""

    def __init__(self, stream: TextIO = sys.stdout):
        self._stream = stream
        self._builder = graphyte.Sender("localhost")

    def send(self, points: Iterable[Datapoint]) -> None:
        self._stream.write(encode(self._builder, points).decode("utf-8"))
        self._stream.flush()

    def close(self) -> None:
        pass


class GraphiteSink:
    """Send each interval's lines to one Graphite server in one connection."""

    def __init__(self, host: str, port: int, protocol: str = "tcp", timeout: float = 5.0):
        self._sender = graphyte.Sender(host, port, timeout=timeout, protocol=protocol,
                                       raise_send_errors=True)
        self._where = f"{host}:{port}/{protocol}"

    def send(self, points: Iterable[Datapoint]) -> None:
        message = encode(self._sender, points)
        try:
            self._sender.send_message(message)
        except OSError as error:
            log.warning("sending %d lines to Graphite at %s failed: %s",
                        message.count(b"\n"), self._where, error)

    def close(self) -> None:
        pass
