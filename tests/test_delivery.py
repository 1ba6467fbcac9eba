"""Delivery to a real carbon-cache on loopback: every interval arrives, whatever Graphite does."""

import logging
import socket
import time

import pytest

from conftest import free_port, wait_for
from gsender_bcc.config import Server
from gsender_bcc.metrics import Datapoint
from gsender_bcc.sink import SPOOL_NAME, GraphiteSink

PREFIX = "deliv.cpu-lat"


def agent_args(port, state_dir, frequency=1):
    return ["--echo", "--frequency", str(frequency), "--prefix", PREFIX, "--graphite-host",
            "127.0.0.1", "--graphite-port", str(port), "--state-directory", str(state_dir),
            "--config", "/dev/null"]


def stored(carbon, lines):
    """Return whether carbon holds exactly the (path, value, stamp) lines given, per series."""
    series = carbon.series()
    expected = {}
    for path, value, stamp in lines:
        expected.setdefault(path, []).append((stamp, value))
    return all(sorted(points) == series.get(path) for path, points in expected.items())


def assert_stored_exactly(carbon, lines, timeout=30):
    wait_for(lambda: stored(carbon, lines), timeout, "carbon to hold every interval sent")


@pytest.mark.bpf
class TestAgentToCarbon:
    def test_every_series_and_timestamp_printed_is_stored(self, carbon_factory, agent_factory,
                                                          tmp_path):
        carbon = carbon_factory().start()
        agent = agent_factory(agent_args(carbon.port, tmp_path / "state"))
        sent = agent.intervals(3)
        names = {path[len(PREFIX) + 1:] for path, _, _ in sent}
        assert {"count", "mean", "p50", "p90", "p99", "max", "0", "1", "agent.samples_lost",
                "agent.queued_intervals", "agent.dropped_intervals", "agent.send_failures"} <= names
        assert len({stamp for _, _, stamp in sent}) == 3
        assert_stored_exactly(carbon, sent)
        assert agent.stop()[0] == 0
        assert not (tmp_path / "state" / SPOOL_NAME).exists()

    def test_outage_every_interval_arrives_with_its_timestamp(self, carbon_factory, agent_factory,
                                                              tmp_path):
        carbon = carbon_factory().start()
        agent = agent_factory(agent_args(carbon.port, tmp_path / "state"))
        sent = agent.intervals(2)
        carbon.stop()
        sent += agent.intervals(4)
        carbon.start()
        sent += agent.intervals(2)
        stamps = sorted({stamp for _, _, stamp in sent})
        assert stamps == list(range(stamps[0], stamps[0] + 8))
        queued = [v for p, v, _ in sent if p.endswith(".agent.queued_intervals")]
        assert max(queued) >= 3  # the outage was felt
        assert_stored_exactly(carbon, sent)
        code, stderr = agent.stop()
        assert code == 0 and "failed" in stderr

    def test_restart_during_outage_replays_the_spool(self, carbon_factory, agent_factory,
                                                     tmp_path):
        carbon = carbon_factory()  # not started: nothing listens on its port yet
        state = tmp_path / "state"
        first = agent_factory(agent_args(carbon.port, state))
        spooled = first.intervals(3)
        code, stderr = first.stop()
        assert code == 0
        spooled += first.rest()
        assert "spooled" in stderr and (state / SPOOL_NAME).exists()
        carbon.start()
        second = agent_factory(agent_args(carbon.port, state))
        later = second.intervals(1)
        assert min(s for _, _, s in later) > max(s for _, _, s in spooled)
        assert_stored_exactly(carbon, spooled + later)
        assert second.stop()[0] == 0
        assert not (state / SPOOL_NAME).exists()

    def test_black_hole_does_not_shift_interval_timestamps(self, agent_factory, tmp_path):
        with socket.socket() as hole:  # accepts nothing and reads nothing: connects hang
            hole.bind(("127.0.0.1", 0))
            hole.listen(0)
            agent = agent_factory(agent_args(hole.getsockname()[1], tmp_path / "state"))
            stamps = agent.stamps(8)
            assert stamps == list(range(stamps[0], stamps[0] + 8))
            started = time.monotonic()
            code, _ = agent.stop()
            assert code == 0 and time.monotonic() - started < 4.5


def batch(stamp, value=1.0):
    return [Datapoint("sink.a", value, stamp), Datapoint("sink.b", value * 2, stamp)]


def past_stamps(count):
    now = int(time.time())
    return list(range(now - 100, now - 100 + count))


class TestSinkToCarbon:
    def test_failover_and_return_to_the_primary(self, carbon_factory):
        primary, secondary = carbon_factory("primary"), carbon_factory("secondary").start()
        stamps = past_stamps(2)
        sink = GraphiteSink([Server("127.0.0.1", primary.port), Server("127.0.0.1", secondary.port)],
                            timeout=1)
        try:
            sink.submit(batch(stamps[0]))
            wait_for(lambda: secondary.series().get("sink.a"), 10, "the secondary to take over")
            primary.start()
            time.sleep(1.5)  # the primary's first back-off is one second
            sink.submit(batch(stamps[1]))
            wait_for(lambda: primary.series().get("sink.a"), 10, "the return to the primary")
            assert sink.health() == {"queued_intervals": 0, "dropped_intervals": 0,
                                     "send_failures": 1}
        finally:
            sink.close()
        assert primary.series() == {"sink.a": [(stamps[1], 1.0)], "sink.b": [(stamps[1], 2.0)]}
        assert secondary.series() == {"sink.a": [(stamps[0], 1.0)], "sink.b": [(stamps[0], 2.0)]}

    def test_overflow_drops_the_oldest_and_says_so(self, carbon_factory, caplog):
        carbon = carbon_factory()
        stamps = past_stamps(5)
        with caplog.at_level(logging.WARNING):
            sink = GraphiteSink([Server("127.0.0.1", carbon.port)], timeout=1, limit=3)
            try:
                for i, stamp in enumerate(stamps):
                    sink.submit(batch(stamp, float(i)))
                health = sink.health()
                assert (health["queued_intervals"], health["dropped_intervals"]) == (3, 2)
                carbon.start()
                wait_for(lambda: len(carbon.series().get("sink.a", [])) == 3, 20,
                         "the three newest intervals")
                wait_for(lambda: "2 intervals were dropped during the outage" in caplog.text, 5,
                         "the outage summary")
            finally:
                sink.close()
        assert carbon.series()["sink.a"] == [(stamps[2], 2.0), (stamps[3], 3.0), (stamps[4], 4.0)]
        assert caplog.text.count("outbox full (3 intervals): dropping the oldest") == 1

    def test_udp(self, carbon_factory):
        carbon = carbon_factory().start()
        stamp = past_stamps(1)[0]
        sink = GraphiteSink([Server("127.0.0.1", carbon.port)], protocol="udp")
        try:
            sink.submit(batch(stamp, 7.0))
            wait_for(lambda: carbon.series().get("sink.b"), 10, "the UDP datagram")
        finally:
            sink.close()
        assert carbon.series() == {"sink.a": [(stamp, 7.0)], "sink.b": [(stamp, 14.0)]}

    def test_stop_with_graphite_down_spools_and_next_start_replays(self, carbon_factory,
                                                                   tmp_path):
        carbon = carbon_factory()
        stamps = past_stamps(2)
        sink = GraphiteSink([Server("127.0.0.1", carbon.port)], timeout=1, spool_dir=tmp_path)
        for stamp in stamps:
            sink.submit(batch(stamp))
        sink.close(seconds=0.5)
        assert (tmp_path / SPOOL_NAME).exists()
        carbon.start()
        replay = GraphiteSink([Server("127.0.0.1", carbon.port)], timeout=1, spool_dir=tmp_path)
        try:
            wait_for(lambda: len(carbon.series().get("sink.b", [])) == 2, 10, "the replay")
        finally:
            replay.close()
        assert carbon.series()["sink.b"] == [(stamps[0], 2.0), (stamps[1], 2.0)]
        assert not (tmp_path / SPOOL_NAME).exists()
