"""Framing, outbox and spool, without a Graphite server (that is test_delivery.py)."""

import io
import json
import logging

import graphyte
import pytest

from gsender_bcc.metrics import Datapoint
from gsender_bcc.sink import (SPOOL_NAME, Outbox, StdoutSink, encode, parse_spool, take_spool,
                              write_spool)

POINTS = [Datapoint("h.cpu-lat.count", 120, 1700000010), Datapoint("h.cpu-lat.mean", 12.346, 1700000010)]
LINES = b"h.cpu-lat.count 120 1700000010\nh.cpu-lat.mean 12.346 1700000010\n"


def batch(stamp, n=2):
    return tuple(Datapoint(f"p.s{i}", i + 0.5, stamp) for i in range(n))


class TestFraming:
    def test_encode_builds_plaintext_lines(self):
        assert encode(graphyte.Sender("localhost"), POINTS) == LINES

    def test_stdout_sink_prints_the_same_lines(self):
        out = io.StringIO()
        StdoutSink(out).submit(POINTS)
        assert out.getvalue() == LINES.decode()


class TestOutbox:
    def test_keeps_order_and_drops_the_oldest_past_the_limit(self):
        box = Outbox(limit=3)
        assert [box.put(batch(t)) for t in (10, 20, 30, 40, 50)] == [0, 0, 0, 1, 1]
        assert [b[0].timestamp for b in box.all()] == [30, 40, 50]
        assert box.dropped == 2

    def test_replayed_batches_go_first(self):
        box = Outbox(limit=10)
        box.put(batch(30))
        box.put_oldest([batch(10), batch(20)])
        assert [b[0].timestamp for b in box.all()] == [10, 20, 30]

    def test_replay_beyond_the_limit_drops_the_oldest_replayed(self):
        box = Outbox(limit=2)
        box.put(batch(30))
        assert box.put_oldest([batch(10), batch(20)]) == 1
        assert [b[0].timestamp for b in box.all()] == [20, 30]

    def test_head_takes_whole_batches_up_to_the_line_budget(self):
        box = Outbox(limit=10)
        for t in (10, 20, 30):
            box.put(batch(t, n=3))
        assert [b[0].timestamp for b in box.head(max_lines=7)] == [10, 20]
        assert [b[0].timestamp for b in box.head(max_lines=1)] == [10]

    def test_remove_head_forgets_only_what_is_still_at_the_head(self):
        box = Outbox(limit=2)
        sent = box.head(100)
        box.put(batch(10))
        box.put(batch(20))
        sent = box.head(100)
        box.put(batch(30))  # pushes out batch 10 while 10 and 20 were being sent
        box.remove_head(sent)
        assert [b[0].timestamp for b in box.all()] == [30]

    def test_shrinking_drops_the_oldest(self):
        box = Outbox(limit=5)
        for t in range(5):
            box.put(batch(t))
        assert box.resize(2) == 3
        assert [b[0].timestamp for b in box.all()] == [3, 4]


class TestSpool:
    def test_round_trip(self, tmp_path):
        batches = [batch(10), batch(20, n=3), (Datapoint("x.count", 0, 30),)]
        write_spool(tmp_path / SPOOL_NAME, batches)
        assert parse_spool((tmp_path / SPOOL_NAME).read_text()) == batches
        assert not (tmp_path / (SPOOL_NAME + ".tmp")).exists()

    def test_take_reads_and_removes(self, tmp_path):
        write_spool(tmp_path / SPOOL_NAME, [batch(10)])
        assert take_spool(tmp_path) == [batch(10)]
        assert list(tmp_path.iterdir()) == []

    def test_no_spool_is_nothing(self, tmp_path):
        assert take_spool(tmp_path) == []

    HEADER = json.dumps({"format": "gsender-bcc spool", "version": 1}) + "\n"

    @pytest.mark.parametrize("text, message", [
        ("", "it is empty"),
        (HEADER + '[["p.a", 1, 10]', "truncated"),
        ('{"format": "other"}\n', "line 1 is not a gsender-bcc spool header"),
        ("garbage\n", "line 1 is not JSON"),
        (HEADER + '[["p.a", 1, 10]]\n{oops\n', "line 3 is not JSON"),
        (HEADER + '[["p.a", 1]]\n', "line 2 is not a list of [path, value, timestamp]"),
        (HEADER + '[["p a", 1, 10]]\n', "line 2 holds an empty or malformed batch"),
        (HEADER + '[["p.a", "1", 10]]\n', "line 2 holds an empty or malformed batch"),
        (HEADER + "[]\n", "line 2 holds an empty or malformed batch"),
    ])
    def test_damage_is_named(self, text, message):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_spool(text)

    def test_damaged_spool_is_set_aside_and_reported(self, tmp_path, caplog):
        (tmp_path / SPOOL_NAME).write_text(self.HEADER + "{oops\n")
        with caplog.at_level(logging.ERROR):
            assert take_spool(tmp_path) == []
        aside = list(tmp_path.glob(SPOOL_NAME + ".corrupt-*"))
        assert len(aside) == 1 and aside[0].read_text() == self.HEADER + "{oops\n"
        assert not (tmp_path / SPOOL_NAME).exists()
        assert "is damaged: line 2 is not JSON; moved it to" in caplog.text
