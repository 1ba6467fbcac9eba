"""What carbon-cache's MAX_CREATES_PER_MINUTE does to a fleet's first datapoints (README "Fleet").

Debian ships MAX_CREATES_PER_MINUTE = 50. A datapoint of a series that has no whisper file yet,
arriving when the create budget is spent, is dropped: not kept until the file exists.
"""

import socket
import time

from conftest import wait_for
from local_carbon import CarbonCache

SERIES = 120


def send(carbon, value, stamp):
    lines = "".join(f"fleet.h{i:03d}.cpu-lat.count {value} {stamp}\n" for i in range(SERIES))
    with socket.create_connection(("127.0.0.1", carbon.port)) as connection:
        connection.sendall(lines.encode())


def files_settled(carbon, seconds=2.0):
    """The whisper files once their number has not changed for ``seconds``."""
    seen = {}

    def settled():
        names = frozenset(carbon.series())
        now = time.monotonic()
        if seen.get("names") != names:
            seen.update(names=names, since=now)
        return names if names and now - seen["since"] >= seconds else None
    return wait_for(settled, 20, "carbon-cache to stop creating files")


def test_datapoints_beyond_the_create_budget_are_dropped_not_kept(tmp_path):
    carbon = CarbonCache(tmp_path / "carbon", max_creates_per_minute=50).start()
    try:
        started = time.monotonic()
        first = int(time.time()) - 100
        send(carbon, 1, first)
        created = files_settled(carbon)
        # The bucket holds 50 creates and refills at 50 a minute (0.83 a second).
        assert 50 <= len(created) <= 50 + (time.monotonic() - started) * 50 / 60 + 1

        send(carbon, 2, first + 1)
        later = files_settled(carbon) - created
        series = carbon.series()
    finally:
        carbon.stop()
    assert 1 <= len(later) <= 10
    assert len(created) + len(later) < SERIES  # the rest have no file at all yet
    for name in created:
        assert series[name] == [(first, 1.0), (first + 1, 2.0)]
    for name in later:  # created by the second datapoint: the first one was not kept
        assert series[name] == [(first + 1, 2.0)]
