import pytest

from gsender_bcc.histogram import IntervalStats
from gsender_bcc.metrics import Datapoint, check_prefix, default_prefix, summary, to_datapoints

STATS = IntervalStats(seconds=5.0, count=120, lost=0, mean_us=12.34567,
                      percentiles_us=((50, 8.5), (90, 21.0), (99, 34.0)), max_us=68.0,
                      log2_rates=((0, 0.0), (1, 0.2), (2, 1.0), (4, 3.0), (8, 12.0), (16, 6.0),
                                  (32, 1.6), (64, 0.2)))


class TestPrefix:
    @pytest.mark.parametrize("hostname, prefix", [
        ("web-01", "web-01.cpu-lat"),
        ("web-01.example.com", "web-01.cpu-lat"),
        ("db_2", "db_2.cpu-lat"),
        ("caf\u00e9 box", "caf__box.cpu-lat"),
        ("a:b/c", "a_b_c.cpu-lat"),
        ("", "unknown.cpu-lat"),
    ])
    def test_default_from_short_hostname(self, hostname, prefix):
        assert default_prefix(hostname) == prefix

    @pytest.mark.parametrize("prefix", ["a", "servers.web-01.cpu_lat", "x.y.z"])
    def test_safe_prefixes_pass(self, prefix):
        assert check_prefix(prefix) == prefix

    @pytest.mark.parametrize("prefix", ["", "a b", "a..b", ".a", "a.", "a\nb", "a;tag=1", "a/b"])
    def test_unsafe_prefixes_are_refused(self, prefix):
        with pytest.raises(ValueError, match="dot-separated parts"):
            check_prefix(prefix)


class TestToDatapoints:
    def test_full_interval(self):
        points = to_datapoints(STATS, "h.cpu-lat", 1700000010)
        assert [(p.path, p.value) for p in points] == [
            ("h.cpu-lat.count", 120), ("h.cpu-lat.mean", 12.346), ("h.cpu-lat.p50", 8.5),
            ("h.cpu-lat.p90", 21.0), ("h.cpu-lat.p99", 34.0), ("h.cpu-lat.max", 68.0),
            ("h.cpu-lat.0", 0.0), ("h.cpu-lat.1", 0.2), ("h.cpu-lat.2", 1.0), ("h.cpu-lat.4", 3.0),
            ("h.cpu-lat.8", 12.0), ("h.cpu-lat.16", 6.0), ("h.cpu-lat.32", 1.6),
            ("h.cpu-lat.64", 0.2), ("h.cpu-lat.agent.samples_lost", 0),
        ]
        assert {p.timestamp for p in points} == {1700000010}

    def test_empty_interval_sends_count_zero_and_no_latencies(self):
        empty = IntervalStats(15.0, 0, 3, None, (), None, ())
        assert to_datapoints(empty, "p", 30) == [Datapoint("p.count", 0, 30),
                                                  Datapoint("p.agent.samples_lost", 3, 30)]


def test_summary_line():
    assert summary(STATS) == ("120 samples in 5.0s, mean=12.3us p50=8.5us p90=21us p99=34us "
                              "max=68us")
    assert summary(IntervalStats(15.0, 0, 0, None, (), None, ())) == "0 samples in 15.0s"
