"""What carbon-cache's MAX_CREATES_PER_MINUTE does to a fleet's first datapoints (docs/operations.md).

Debian ships MAX_CREATES_PER_MINUTE = 50. A datapoint of a series that has no whisper file yet,
arriving when the create budget is spent, is dropped: not kept until the file exists.
"""

import time

from local_carbon import CarbonCache

SERIES = 120
PER_SECOND = 50 / 60  # the bucket's refill rate


def lines(value, stamp):
    return "".join(f"fleet.h{i:03d}.cpu-lat.count {value} {stamp}\n"
                   for i in range(SERIES)).encode()


def test_datapoints_beyond_the_create_budget_are_dropped_not_kept(tmp_path):
    carbon = CarbonCache(tmp_path / "carbon", max_creates_per_minute=50).start()
    try:
        started = time.monotonic()
        first = int(time.time()) - 100
        # Each returns once carbon has written or dropped every datapoint sent: no settle window.
        carbon.send_and_settle(lines(1, first))
        created = set(carbon.series())
        # The bucket holds 50 creates and refills at 50 a minute (0.83 a second).
        assert 50 <= len(created) <= 50 + (time.monotonic() - started) * PER_SECOND + 1

        time.sleep(3 / PER_SECOND)  # the bucket refills three creates, at its configured rate
        carbon.send_and_settle(lines(2, first + 1))
        series = carbon.series()
        later = set(series) - created
        elapsed = time.monotonic() - started
    finally:
        carbon.stop()
    assert len(later) >= 1 and len(created) + len(later) <= 50 + elapsed * PER_SECOND + 1
    assert len(created) + len(later) < SERIES  # the rest have no file at all yet
    for name in created:
        assert series[name] == [(first, 1.0), (first + 1, 2.0)]
    for name in later:  # created by the second datapoint: the first one was not kept
        assert series[name] == [(first + 1, 2.0)]
