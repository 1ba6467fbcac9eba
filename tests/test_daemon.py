import pytest

from gsender_bcc.daemon import next_boundary


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
