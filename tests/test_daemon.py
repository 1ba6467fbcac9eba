import pytest

from gsender_bcc.daemon import interval_stamp, next_boundary


@pytest.mark.parametrize("now, frequency, shortest, boundary", [
    (100.0, 15, 0, 105),
    (104.999, 15, 0, 105),
    (105.0, 15, 0, 120),
    (1700000001.5, 5, 0, 1700000005),
    (101.0, 15, 7.5, 120),
    (96.0, 15, 7.5, 105),
    (0.0, 1, 0, 1),
])
def test_next_boundary_is_a_later_multiple(now, frequency, shortest, boundary):
    assert next_boundary(now, frequency, shortest) == boundary


@pytest.mark.parametrize("boundary, now, frequency, last, stamp", [
    (105, 105.001, 15, 90, 105),     # on time
    (105, 119.9, 15, 90, 105),       # late, but within the interval
    (105, 151.0, 15, 90, 150),       # stalled past two boundaries: one interval, latest boundary
    (105, 104.0, 15, 90, 105),       # read a moment early (stop at a boundary)
    (105, 300.0, 15, 300, None),     # the latest boundary was already stamped
    (90, 91.0, 15, 105, None),       # the wall clock went back: never repeat a timestamp
])
def test_interval_stamp(boundary, now, frequency, last, stamp):
    assert interval_stamp(boundary, now, frequency, last) == stamp
