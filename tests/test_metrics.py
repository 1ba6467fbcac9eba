import pytest

from gsender_bcc.blame import MAX_CULPRIT_CHARS, Blame
from gsender_bcc.config import Config
from gsender_bcc.histogram import IntervalStats
from gsender_bcc import metrics
from gsender_bcc.sink import encode, message_builder
from gsender_bcc.metrics import (Datapoint, Interval, ServiceStats, agent_points, check_prefix,
                                 default_prefix, short_hostname, summary, tag_value,
                                 to_datapoints)

STATS = IntervalStats(seconds=5.0, count=120, lost=0, mean_us=12.34567,
                      percentiles_us=((50, 8.5), (90, 21.0), (99, 34.0)), max_us=68.0,
                      log2_rates=((0, 0.0), (1, 0.2), (2, 1.0), (4, 3.0), (8, 12.0), (16, 6.0),
                                  (32, 1.6), (64, 0.2)), wait_ns=1481480)


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

    @pytest.mark.parametrize("prefix", ["", "a b", "a..b", ".a", "a.", "a\nb", "a;tag=1", "a/b",
                                        "web\n", "web.cpu-lat\n"])
    def test_unsafe_prefixes_are_refused(self, prefix):
        with pytest.raises(ValueError, match="dot-separated parts"):
            check_prefix(prefix)


class TestLongestSeries:
    """Every series fits the path limit the outbox checks lines against, whatever the prefix
    the configuration accepts: one too long is refused when the configuration is read."""

    @pytest.mark.parametrize("tags", [False, True])
    def test_every_line_fits_with_the_longest_prefix_name_and_host(self, monkeypatch, tags):
        from gsender_bcc.outbox import parse_line
        from gsender_bcc.sink import encode, message_builder
        monkeypatch.setattr(metrics.socket, "gethostname", lambda: "h" * 80 + ".example")
        prefix = check_prefix(".".join(["p" * 49] * 13)[:metrics.MAX_PREFIX_CHARS])
        assert len(prefix) == metrics.MAX_PREFIX_CHARS
        config = Config(prefix=prefix, tags=tags)
        stats = STATS.__class__(**{**STATS.__dict__, "log2_rates": ((1 << 32, 0.5),)})
        service = ServiceStats("s" * metrics.MAX_SERVICE_CHARS, stats,
                               {figure: 1.0 for figure in metrics.SERVICE_FIGURES},
                               Blame(1, 2, 3, (("c" * MAX_CULPRIT_CHARS, 4),), 5))
        figures = {name: 0 for name in ("queued_intervals", "dropped_intervals",
                                        "send_failures", "spool_errors", "services_overflow")}
        points = to_datapoints(stats, config, [service], {"untracked": 6})
        points += agent_points(config, figures)
        lines = encode(message_builder(), Interval(1700000010, tuple(points))).splitlines()
        assert [line for line in lines if parse_line(line) is None] == []
        longest = max(len(metrics.series_key(p)) for p in points)
        assert longest <= metrics.MAX_PATH_CHARS
        if tags:  # the tagged style is the longer one: it sets the limit
            assert longest == metrics.MAX_PATH_CHARS
            assert [p.path for p in points if len(metrics.series_key(p)) == longest] == [
                f"{prefix}.service.behind_ms"]  # a culprit's, with the longest names

    def test_a_culprit_name_is_cut_to_keep_the_limit(self):
        from gsender_bcc.blame import culprit_name
        assert len(culprit_name("c" * metrics.MAX_SERVICE_CHARS, ())) == MAX_CULPRIT_CHARS

    def test_one_character_more_is_refused(self):
        with pytest.raises(ValueError, match=f"at most {metrics.MAX_PREFIX_CHARS} leave room"):
            check_prefix("p" * (metrics.MAX_PREFIX_CHARS + 1))


class TestToDatapoints:
    def test_full_interval(self):
        points = to_datapoints(STATS, Config(prefix="h.cpu-lat"))
        assert [(p.path, p.value) for p in points] == [
            ("h.cpu-lat.count", 120), ("h.cpu-lat.wait_ms", 1.481), ("h.cpu-lat.mean", 12.346),
            ("h.cpu-lat.p50", 8.5),
            ("h.cpu-lat.p90", 21.0), ("h.cpu-lat.p99", 34.0), ("h.cpu-lat.max", 68.0),
            ("h.cpu-lat.0", 0.0), ("h.cpu-lat.1", 0.2), ("h.cpu-lat.2", 1.0), ("h.cpu-lat.4", 3.0),
            ("h.cpu-lat.8", 12.0), ("h.cpu-lat.16", 6.0), ("h.cpu-lat.32", 1.6),
            ("h.cpu-lat.64", 0.2), ("h.cpu-lat.agent.samples_lost", 0),
        ]

    def test_empty_interval_sends_count_zero_and_no_latencies(self):
        empty = IntervalStats(15.0, 0, 3, None, (), None, (), 0)
        assert to_datapoints(empty, Config(prefix="p")) == [
            Datapoint("p.count", 0), Datapoint("p.wait_ms", 0.0), Datapoint("p.agent.samples_lost", 3)]

    def test_without_bucket_series(self):
        points = to_datapoints(STATS, Config(prefix="p", bucket_series=False))
        assert [p.path for p in points] == ["p.count", "p.wait_ms", "p.mean", "p.p50", "p.p90", "p.p99",
                                            "p.max", "p.agent.samples_lost"]


SERVICE = ServiceStats("nginx", IntervalStats(5.0, 7, 0, 3.0, ((50, 2.5), (90, 3.5), (99, 5.0)),
                                              5.0, ((0, 0.2), (1, 0.4), (2, 0.8)), 21000),
                       {"pressure": 1.25, "throttled_ms": 40.0})


class TestServiceSeries:
    def test_hierarchical(self):
        points = to_datapoints(STATS, Config(prefix="h.cpu-lat", bucket_series=False), [SERVICE])
        assert [(p.path, p.value) for p in points if ".service." in p.path] == [
            ("h.cpu-lat.service.nginx.count", 7), ("h.cpu-lat.service.nginx.wait_ms", 0.021),
            ("h.cpu-lat.service.nginx.mean", 3.0),
            ("h.cpu-lat.service.nginx.p50", 2.5), ("h.cpu-lat.service.nginx.p90", 3.5),
            ("h.cpu-lat.service.nginx.p99", 5.0), ("h.cpu-lat.service.nginx.max", 5.0),
            ("h.cpu-lat.service.nginx.pressure", 1.25),
            ("h.cpu-lat.service.nginx.throttled_ms", 40.0)]

    def test_agent_points(self):
        assert agent_points(Config(prefix="p"), {"services_overflow": 2}) == [
            Datapoint("p.agent.services_overflow", 2)]


class TestTags:
    def test_tagged_series(self):
        host = short_hostname()
        points = to_datapoints(STATS, Config(tags=True), [SERVICE])
        named = {(p.path, p.tags) for p in points}
        assert ("cpu-lat.p99", (("host", host),)) in named
        assert ("cpu-lat.wait_ms", (("host", host),)) in named
        assert ("cpu-lat.service.wait_ms", (("host", host), ("service", "nginx"))) in named
        assert ("cpu-lat.bucket", (("host", host), ("lower_us", "16"))) in named
        assert ("cpu-lat.service.p99", (("host", host), ("service", "nginx"))) in named
        assert ("cpu-lat.agent.samples_lost", (("host", host),)) in named
        assert not any(".service.nginx" in p.path or p.path == "cpu-lat.16" for p in points)

    def test_tagged_lines_are_rendered_by_graphyte(self):
        from gsender_bcc.sink import encode, message_builder
        point = Datapoint("cpu-lat.service.p99", 5.0, (("service", "nginx"), ("host", "h")))
        assert encode(message_builder(), Interval(10, (point,))) == \
            b"cpu-lat.service.p99;host=h;service=nginx 5.0 10\n"

    @pytest.mark.parametrize("raw, clean", [("web 01", "web_01"), ("a;b", "a_b"), ("~x", "_x"),
                                            ("", "_"), ("ok-1_a", "ok-1_a")])
    def test_tag_values_follow_graphite_rules(self, raw, clean):
        assert tag_value(raw) == clean


def test_summary_line():
    assert summary(STATS) == ("120 samples in 5.0s, mean=12.3us p50=8.5us p90=21us p99=34us "
                              "max=68us")
    assert summary(IntervalStats(15.0, 0, 0, None, (), None, (), 0)) == "0 samples in 15.0s"


BLAMED = ServiceStats("nginx", SERVICE.stats, {}, Blame(
    behind_self_ns=4_000_000, behind_others_ns=17_000_000, caused_ns=2_500_000,
    culprits=(("batch", 12_000_000), ("nginx", 4_000_000)), rest_ns=5_000_000))
HOST_BEHIND = {"idle": 1_250_000, "migrated": 0, "untracked": 3}


class TestCulpritSeries:
    def lines(self, config):
        """The culprit lines ``--stdout`` prints for the interval (the StdoutSink's writes)."""
        import io
        from gsender_bcc.sink import StdoutSink
        printed = io.StringIO()
        StdoutSink(config, printed).submit(Interval(10, tuple(
            to_datapoints(STATS, config, [BLAMED], HOST_BEHIND))))
        return [line for line in printed.getvalue().splitlines()
                if "behind" in line or "caused" in line]

    def test_hierarchical_bytes(self):
        assert self.lines(Config(prefix="h.cpu-lat", bucket_series=False)) == [
            "h.cpu-lat.behind.idle_ms 1.25 10",
            "h.cpu-lat.behind.migrated_ms 0.0 10",
            "h.cpu-lat.behind.untracked_ms 0.0 10",
            "h.cpu-lat.service.nginx.behind_self_ms 4.0 10",
            "h.cpu-lat.service.nginx.behind_others_ms 17.0 10",
            "h.cpu-lat.service.nginx.caused_ms 2.5 10",
            "h.cpu-lat.service.nginx.behind.batch_ms 12.0 10",
            "h.cpu-lat.service.nginx.behind.nginx_ms 4.0 10",
            "h.cpu-lat.service.nginx.behind.other_ms 5.0 10"]

    def test_tagged_bytes(self, monkeypatch):
        monkeypatch.setattr(metrics.socket, "gethostname", lambda: "web-01.example")
        assert self.lines(Config(tags=True, bucket_series=False)) == [
            "cpu-lat.behind_ms;culprit=idle;host=web-01 1.25 10",
            "cpu-lat.behind_ms;culprit=migrated;host=web-01 0.0 10",
            "cpu-lat.behind_ms;culprit=untracked;host=web-01 0.0 10",
            "cpu-lat.service.behind_self_ms;host=web-01;service=nginx 4.0 10",
            "cpu-lat.service.behind_others_ms;host=web-01;service=nginx 17.0 10",
            "cpu-lat.service.caused_ms;host=web-01;service=nginx 2.5 10",
            "cpu-lat.service.behind_ms;culprit=batch;host=web-01;service=nginx 12.0 10",
            "cpu-lat.service.behind_ms;culprit=nginx;host=web-01;service=nginx 4.0 10",
            "cpu-lat.service.behind_ms;culprit=other;host=web-01;service=nginx 5.0 10"]

    def test_none_without_attribution(self):
        points = to_datapoints(STATS, Config(prefix="p"), [SERVICE])
        assert not [p for p in points if "behind" in p.path or "caused" in p.path]


WIRE_STATS = IntervalStats(5.0, 7, 0, 3.0, ((50, 2.5), (90, 3.5), (99, 5.0)), 5.0, ((0, 1.4),), 21000)


@pytest.mark.parametrize("name, value", [("web 01", "web_01"), ("a;b", "a_b"), ("~x", "_x")])
def test_a_tagged_service_name_is_made_a_valid_tag_value_on_the_wire(name, value):
    points = to_datapoints(WIRE_STATS, Config(tags=True, bucket_series=False),
                           [ServiceStats(name, WIRE_STATS, {"pressure": 1.5})])
    wire = encode(message_builder(),
                  Interval(10, tuple(p for p in points if p.path.startswith("cpu-lat.service."))))
    lines = wire.decode().splitlines()
    assert len(lines) == 8 and all(f";service={value} " in line for line in lines)
