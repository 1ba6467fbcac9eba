"""The on-disk outbox: segments of plain Graphite lines, limits, and what it finds at start.

No sockets and no sleeps: the outbox's wall clock is a fake, and segments are made small
where a test needs several of them.
"""

import json
import logging
import os
import time

import pytest

from gsender_bcc import outbox
from gsender_bcc.outbox import DiskOutbox, MemoryOutbox, Run, parse_line

NOW = 1_800_000_000
DAY = 86400


class Clock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, now=NOW):
        self.now = float(now)

    def __call__(self):
        return self.now


def interval(stamp, lines=3, value=1, prefix=b"box"):
    """One interval's plaintext: ``lines`` series, all stamped ``stamp``."""
    return b"".join(b"%s.s%d %d %d\n" % (prefix, i, value + i, stamp) for i in range(lines))


def segment_name(sequence):
    return f"{sequence:016d}.txt"


def files(*sequences):
    """What the outbox directory holds for these segments, sorted."""
    return sorted(segment_name(n) for n in sequences)


def drain(box, max_bytes=1 << 16):
    """Peek and consume until nothing waits; return the chunks' data in order."""
    sent = []
    for _ in range(10000):
        chunk = box.peek(max_bytes)
        if chunk is None:
            return sent
        sent.append(chunk.data)
        box.consume(chunk)
    raise AssertionError("the outbox never ran dry")


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "state" / "outbox"


@pytest.fixture
def one_interval_per_segment(monkeypatch):
    """Every interval (of the default size) fills a segment, so limits act on single intervals."""
    monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", len(interval(NOW)))


def open_box(folder, clock, max_bytes=1 << 20, max_age=3600.0):
    return DiskOutbox(folder, max_bytes, max_age, clock=clock)


def records(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


class TestParseLine:
    @pytest.mark.parametrize("line, parsed", [
        (b"a.b 1 1700000000", (b"a.b", 1.0, 1700000000)),
        (b"a-b_c.d 12.346 1", (b"a-b_c.d", 12.346, 1)),
        (b"cpu-lat.mean;host=web-01 2.5 1700000000", (b"cpu-lat.mean;host=web-01", 2.5,
                                                      1700000000)),
        (b"a.b -3e2 1700000000", (b"a.b", -300.0, 1700000000)),
    ])
    def test_accepts_the_agents_lines(self, line, parsed):
        assert parse_line(line) == parsed

    @pytest.mark.parametrize("line", [
        b"", b"a.b 1", b"a.b 1 1700000000 extra", b"a b 1 1700000000", b"a.b  1 1700000000",
        b"a.b abc 1700000000", b"a.b nan 1700000000", b"a.b inf 1700000000",
        b"a.b 1 -1700000000", b"a.b 1 17000000000000", b"a.b 1 1.5", b"\xc3\xa9.b 1 1700000000",
        b"a/b 1 1700000000", b"a.b\x00 1 1700000000", b"a.b 1 1700000000\r", b"x" * 1001 + b" 1 1",
    ])
    def test_refuses_anything_else(self, line):
        assert parse_line(line) is None


class TestAppendAndDeliver:
    def test_append_is_written_and_synced_before_it_returns(self, folder, clock, monkeypatch):
        synced = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.readlink(
            f"/proc/self/fd/{fd}")), real(fd)))
        box = open_box(folder, clock)
        assert box.append(interval(NOW), NOW) == 0
        assert synced == [str(folder / segment_name(1))]
        assert (folder / segment_name(1)).read_bytes() == interval(NOW)
        box.append(interval(NOW + 1), NOW + 1)
        assert synced == [str(folder / segment_name(1))] * 2
        assert (folder / segment_name(1)).read_bytes() == interval(NOW) + interval(NOW + 1)

    def test_oldest_first_and_consumed_lines_are_forgotten(self, folder, clock):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        assert (box.intervals, box.size) == (3, 3 * len(interval(NOW)))
        chunk = box.peek(1 << 16)
        assert chunk.data == interval(NOW) + interval(NOW + 1) + interval(NOW + 2)
        assert (chunk.intervals, chunk.last_stamp, chunk.length) == (3, NOW + 2, len(chunk.data))
        assert box.peek(1 << 16) == chunk  # peeking again changes nothing
        box.consume(chunk)
        assert (box.intervals, box.size, box.peek(1 << 16)) == (0, 0, None)
        assert list(folder.iterdir()) == []
        box.append(interval(NOW + 3), NOW + 3)
        assert drain(box) == [interval(NOW + 3)]

    def test_a_chunk_holds_whole_intervals(self, folder, clock):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        size = len(interval(NOW))
        chunk = box.peek(size + size // 2)
        assert (chunk.data, chunk.intervals) == (interval(NOW), 1)
        box.consume(chunk)
        assert box.intervals == 2
        chunk = box.peek(2 * size + size // 2)
        assert (chunk.data, chunk.intervals) == (interval(NOW + 1) + interval(NOW + 2), 2)
        box.consume(chunk)
        assert box.intervals == 0

    def test_an_interval_larger_than_a_chunk_goes_in_pieces_of_whole_lines(self, folder, clock):
        box = open_box(folder, clock)
        big = interval(NOW, lines=10)
        box.append(big, NOW)
        box.append(interval(NOW + 1), NOW + 1)
        line = len(big) // 10
        pieces = drain(box, max_bytes=3 * line + 5)
        assert b"".join(pieces) == big + interval(NOW + 1)
        assert all(piece.endswith(b"\n") and len(piece) <= 3 * line + 5 for piece in pieces)
        assert box.intervals == 0

    def test_a_line_longer_than_a_chunk_goes_whole(self, folder, clock):
        box = open_box(folder, clock)
        long_line = b"box." + b"x" * 900 + b" 1 %d\n" % NOW
        box.append(long_line, NOW)
        box.append(interval(NOW + 1), NOW + 1)
        assert drain(box, max_bytes=100) == [long_line, interval(NOW + 1)]

    def test_segments_roll_over_and_go_once_delivered(self, folder, clock, monkeypatch):
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", 2 * len(interval(NOW)))
        box = open_box(folder, clock)
        for stamp in range(NOW, NOW + 5):
            box.append(interval(stamp), stamp)
        assert sorted(p.name for p in folder.iterdir()) == files(1, 2, 3)
        assert (folder / segment_name(3)).read_bytes() == interval(NOW + 4)
        chunk = box.peek(1 << 16)
        assert chunk.data == interval(NOW) + interval(NOW + 1)  # never across segments
        box.consume(chunk)
        assert sorted(p.name for p in folder.iterdir()) == files(2, 3)
        assert drain(box) == [interval(NOW + 2) + interval(NOW + 3), interval(NOW + 4)]
        assert list(folder.iterdir()) == []

    def test_a_new_start_finds_what_waits(self, folder, clock, one_interval_per_segment):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        box.consume(box.peek(1 << 16))
        # no close: the process died here
        again = open_box(folder, clock)
        assert (again.intervals, again.dropped) == (2, 0)
        again.append(interval(NOW + 3), NOW + 3)
        assert sorted(p.name for p in folder.iterdir()) == files(2, 3, 4)
        assert drain(again) == [interval(NOW + 1), interval(NOW + 2), interval(NOW + 3)]

    def test_a_partly_delivered_segment_is_sent_again_after_a_restart(self, folder, clock):
        box = open_box(folder, clock)
        box.append(interval(NOW), NOW)
        box.append(interval(NOW + 1), NOW + 1)
        box.consume(box.peek(len(interval(NOW)) * 3 // 2))
        assert box.intervals == 1
        again = open_box(folder, clock)  # at least once: the read position is not kept
        assert again.intervals == 2
        assert drain(again) == [interval(NOW) + interval(NOW + 1)]


class TestLimits:
    def test_bytes_drop_the_oldest_and_count_them(self, folder, clock, one_interval_per_segment):
        size = len(interval(NOW))
        box = open_box(folder, clock, max_bytes=4 * size)
        dropped = [box.append(interval(stamp), stamp) for stamp in range(NOW, NOW + 10)]
        assert dropped == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
        assert (box.dropped, box.intervals, box.size) == (6, 4, 4 * size)
        assert drain(box) == [interval(stamp) for stamp in range(NOW + 6, NOW + 10)]

    def test_bytes_never_drop_the_only_segment(self, folder, clock):
        box = open_box(folder, clock, max_bytes=10)
        assert box.append(interval(NOW), NOW) == 0
        assert drain(box) == [interval(NOW)]

    def test_age_drops_segments_whose_newest_line_is_too_old(self, folder, clock,
                                                           one_interval_per_segment):
        box = open_box(folder, clock, max_age=100)
        box.append(interval(NOW), NOW)
        clock.now = NOW + 10
        box.append(interval(NOW + 10), NOW + 10)
        clock.now = NOW + 105
        assert box.append(interval(NOW + 105), NOW + 105) == 1
        assert (box.dropped, box.intervals) == (1, 2)
        box.set_limits(1 << 20, 50)  # a reload that shortens buffer_hours
        assert (box.dropped, box.intervals) == (2, 1)
        assert drain(box) == [interval(NOW + 105)]

    def test_shrinking_the_bytes_drops_at_once(self, folder, clock, one_interval_per_segment):
        box = open_box(folder, clock)
        for stamp in range(NOW, NOW + 5):
            box.append(interval(stamp), stamp)
        box.set_limits(2 * len(interval(NOW)), 3600)
        assert (box.dropped, box.intervals) == (3, 2)

    def test_old_lines_in_a_kept_segment_are_skipped_with_one_warning(self, folder, clock,
                                                                      caplog):
        box = open_box(folder, clock, max_age=100)
        for stamp, prefix in ((NOW - 200, b"box"), (NOW - 150, b"old"), (NOW, b"box")):
            clock.now = stamp
            box.append(interval(stamp, prefix=prefix), stamp)
        size = len(interval(NOW))
        with caplog.at_level(logging.WARNING):
            first = box.peek(size * 3 // 2)
            box.consume(first)
            rest = drain(box)
        assert first.data == b"" and first.intervals == 1
        assert rest == [interval(NOW)]
        assert records(caplog) == [f"{folder / segment_name(1)}: skipped 3 lines that are "
                                   f"malformed or older than the age limit"]

    def test_a_chunk_taken_before_a_drop_does_not_consume_newer_data(self, folder, clock):
        box = open_box(folder, clock, max_age=100)
        box.append(interval(NOW), NOW)
        chunk = box.peek(1 << 16)  # being sent ...
        clock.now = NOW + 200
        box.set_limits(1 << 20, 100)  # ... while a reload drops it for its age
        box.append(interval(NOW + 200), NOW + 200)
        box.consume(chunk)  # the send of the dropped chunk completes
        assert drain(box) == [interval(NOW + 200)]


class TestFoundAtStart:
    """Nothing on disk is trusted: damage is set aside with one log line, never sent."""

    @pytest.mark.parametrize("content, reason", [
        (interval(NOW) + b"\x00\xff\xfejunk\n" + interval(NOW + 1),
         "line 4 is not a Graphite line of this agent"),
        (b"box.a 1 %d\nbox b 1 %d\n" % (NOW, NOW), "line 2 is not a Graphite line of this agent"),
        (b"box.\xc3\xa9 1 %d\n" % NOW, "line 1 is not a Graphite line of this agent"),
        (b"box.a 1 %d\nbox.b abc %d\n" % (NOW, NOW), "line 2 is not a Graphite line of this agent"),
        (b"box.a nan %d\n" % NOW, "line 1 is not a Graphite line of this agent"),
        (b"box.a 1 %d\n" % (NOW + 2 * DAY), "line 1 has a timestamp in the future"),
        (b"[" * 100000 + b"\n", "line 1 is not a Graphite line of this agent"),
    ], ids=["junk", "space", "non-ascii", "non-numeric", "nan", "future", "nested"])
    def test_a_damaged_segment_is_set_aside(self, folder, clock, caplog, content, reason):
        folder.mkdir(parents=True)
        (folder / segment_name(1)).write_bytes(content)
        with caplog.at_level(logging.INFO):
            box = open_box(folder, clock)
        aside = folder / (segment_name(1) + ".damaged")
        assert records(caplog, logging.INFO) == [
            f"{folder / segment_name(1)} is damaged ({reason}): moved it to {aside}"]
        assert aside.read_bytes() == content
        assert (box.intervals, box.peek(1 << 16)) == (0, None)
        box.append(interval(NOW + 5), NOW + 5)
        assert drain(box) == [interval(NOW + 5)]

    def test_a_segment_too_large_for_this_agent_is_set_aside(self, folder, clock, caplog,
                                                             monkeypatch):
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", 20)
        folder.mkdir(parents=True)
        (folder / segment_name(1)).write_bytes(interval(NOW, lines=10))
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert len(records(caplog)) == 1 and "more than a segment ever holds" in caplog.text
        assert box.intervals == 0

    @pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "dangling-symlink"])
    def test_what_is_not_a_regular_file_is_set_aside(self, folder, clock, caplog, tmp_path,
                                                     kind):
        folder.mkdir(parents=True)
        path = folder / segment_name(1)
        target = tmp_path / "elsewhere.txt"
        target.write_bytes(interval(NOW, prefix=b"stolen"))
        {"directory": lambda: path.mkdir(), "fifo": lambda: os.mkfifo(path),
         "symlink": lambda: path.symlink_to(target),
         "dangling-symlink": lambda: path.symlink_to(tmp_path / "missing")}[kind]()
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert records(caplog) == [f"{path} is damaged (not a regular file): moved it to "
                                   f"{path}.damaged"]
        assert box.peek(1 << 16) is None
        assert target.read_bytes() == interval(NOW, prefix=b"stolen")
        box.append(interval(NOW), NOW)
        assert drain(box) == [interval(NOW)]

    def test_a_torn_last_line_is_ignored_and_the_complete_lines_kept(self, folder, clock,
                                                                     caplog):
        folder.mkdir(parents=True)
        (folder / segment_name(1)).write_bytes(interval(NOW) + b"box.torn 12")
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert records(caplog) == [f"{folder / segment_name(1)}: ignoring a torn last line "
                                   f"(11 bytes)"]
        assert box.intervals == 1
        box.append(interval(NOW + 1), NOW + 1)
        assert drain(box) == [interval(NOW), interval(NOW + 1)]
        assert len(caplog.records) == 1

    def test_segments_older_than_the_age_limit_are_dropped_with_one_line(self, folder, clock,
                                                                         caplog):
        folder.mkdir(parents=True)
        (folder / segment_name(1)).write_bytes(interval(NOW - DAY - 10))
        (folder / segment_name(2)).write_bytes(interval(NOW - 10))
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock, max_age=DAY)
        assert (box.dropped, box.intervals) == (1, 1)
        assert len(records(caplog)) == 1 and "1 intervals" in caplog.text
        assert drain(box) == [interval(NOW - 10)]

    def test_unknown_names_are_left_alone(self, folder, clock, caplog):
        folder.mkdir(parents=True)
        for name in ("notes.txt", "1.txt", segment_name(1) + ".damaged", "00000000000000001.txt"):
            (folder / name).write_bytes(b"box.x 1 %d\n" % NOW)
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert box.peek(1 << 16) is None and caplog.records == []

    def test_new_segments_never_reuse_the_name_of_one_left_in_place(self, folder, clock,
                                                                   monkeypatch, caplog):
        folder.mkdir(parents=True)
        (folder / segment_name(1)).mkdir()
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(
            PermissionError(1, "Operation not permitted")))
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert "left it there and ignore it" in caplog.text
        box.append(interval(NOW), NOW)
        assert drain(box) == [interval(NOW)]

    @pytest.mark.parametrize("make", [
        lambda p: p.write_text("a file"),
        lambda p: (p.parent / "real").mkdir() or p.symlink_to(p.parent / "real"),
    ], ids=["file", "symlink"])
    def test_an_outbox_that_is_not_a_directory_is_refused(self, folder, clock, make):
        folder.parent.mkdir(parents=True)
        make(folder)
        with pytest.raises(OSError):
            open_box(folder, clock)


HEADER = json.dumps({"format": "gsender-bcc spool", "version": 1}) + "\n"


def spool_line(stamp, prefix="old"):
    return json.dumps([[f"{prefix}.a", 1, stamp], [f"{prefix}.b", 2.5, stamp]]) + "\n"


class TestLegacySpool:
    """spool.jsonl of the previous version moves into the outbox, checked like the rest."""

    def test_it_is_moved_in_before_new_data_and_removed(self, folder, clock, caplog):
        folder.parent.mkdir(parents=True)
        spool = folder.parent / "spool.jsonl"
        spool.write_text(HEADER + spool_line(NOW - 20) + spool_line(NOW - 10))
        with caplog.at_level(logging.INFO):
            box = open_box(folder, clock)
        assert not spool.exists()
        assert records(caplog, logging.INFO) == [f"moved 2 intervals from {spool} into the outbox"]
        box.append(interval(NOW), NOW)
        assert b"".join(drain(box)) == (b"old.a 1 %d\nold.b 2.5 %d\n" % (NOW - 20, NOW - 20)
                                        + b"old.a 1 %d\nold.b 2.5 %d\n" % (NOW - 10, NOW - 10)
                                        + interval(NOW))

    @pytest.mark.parametrize("text", [
        "",
        HEADER + spool_line(NOW)[:-1],
        '{"format": "other"}\n' + spool_line(NOW),
        '{"format": ' + "[" * 100000 + "\n",
        HEADER + "[" * 100000 + "\n",
        HEADER + '[["old.a", 1, Infinity]]\n',
        HEADER + '[["old.a", 1, 1e400]]\n',
        HEADER + '[["old.a", 1, NaN]]\n',
        HEADER + '{"123": 0}\n',
        HEADER + '[["old.a", 1]]\n',
        HEADER + '[["old\\nevil.path", 1, %d]]\n' % NOW,
        HEADER + '[["old a", 1, %d]]\n' % NOW,
        HEADER + '[["old.\\ud800", 1, %d]]\n' % NOW,
        HEADER + '[["old.a", "abc", %d]]\n' % NOW,
        HEADER + '[["old.a", 1, %d]]\n' % (NOW + 2 * DAY),
        HEADER + "[]\n",
        HEADER + "7\n",
    ], ids=["empty", "truncated", "header", "nested-header", "nested-batch", "infinity",
            "overflow", "nan", "mapping", "short", "newline-in-path", "space-in-path",
            "surrogate", "non-numeric", "future", "empty-batch", "not-a-list"])
    def test_damage_is_set_aside_with_one_line_and_nothing_sent(self, folder, clock, caplog,
                                                                text):
        folder.parent.mkdir(parents=True)
        spool = folder.parent / "spool.jsonl"
        spool.write_text(text)
        with caplog.at_level(logging.INFO):
            box = open_box(folder, clock)
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert caplog.records[0].getMessage().startswith(f"{spool} is damaged (")
        assert caplog.records[0].getMessage().endswith(f"moved it to {spool}.damaged")
        assert (folder.parent / "spool.jsonl.damaged").read_text() == text
        assert not spool.exists() and box.peek(1 << 16) is None

    @pytest.mark.parametrize("kind", ["directory", "fifo", "dangling-symlink"])
    def test_what_is_not_a_file_is_set_aside(self, folder, clock, caplog, tmp_path, kind):
        folder.parent.mkdir(parents=True)
        spool = folder.parent / "spool.jsonl"
        {"directory": lambda: spool.mkdir(), "fifo": lambda: os.mkfifo(spool),
         "dangling-symlink": lambda: spool.symlink_to(tmp_path / "missing")}[kind]()
        with caplog.at_level(logging.INFO):
            box = open_box(folder, clock)
        assert records(caplog, logging.INFO) == [
            f"{spool} is damaged (not a regular file of a sane size): moved it to "
            f"{spool}.damaged"]
        assert box.peek(1 << 16) is None


class TestMemoryOutbox:
    def test_bounded_by_bytes_dropping_the_oldest(self):
        size = len(interval(NOW))
        box = MemoryOutbox(max_bytes=3 * size)
        assert [box.append(interval(s), s) for s in range(NOW, NOW + 5)] == [0, 0, 0, 1, 1]
        assert (box.dropped, box.intervals) == (2, 3)
        assert drain(box) == [interval(s) for s in range(NOW + 2, NOW + 5)]

    def test_consume_forgets_only_the_chunk_still_at_the_head(self):
        box = MemoryOutbox(max_bytes=2 * len(interval(NOW)))
        box.append(interval(NOW), NOW)
        chunk = box.peek(1 << 16)
        box.append(interval(NOW + 1), NOW + 1)
        box.append(interval(NOW + 2), NOW + 2)  # pushes the chunk being sent out
        box.consume(chunk)
        assert drain(box) == [interval(NOW + 1), interval(NOW + 2)]

    def test_drain_hands_everything_over(self):
        box = MemoryOutbox(max_bytes=1 << 20)
        box.append(interval(NOW), NOW)
        box.append(interval(NOW + 1), NOW + 1)
        assert [(c.data, c.last_stamp) for c in box.drain()] == [(interval(NOW), NOW),
                                                                 (interval(NOW + 1), NOW + 1)]
        assert box.intervals == 0 and box.peek(1 << 16) is None


class TestFaultsFoundOnDisk:
    def test_an_interval_larger_than_a_segment_is_read_back_whole_at_the_next_start(
            self, folder, clock, caplog):
        big = interval(NOW, lines=40000)  # about 1 MB, as with tags and 1000 services
        assert len(big) > outbox.recovery.CHECK_SEGMENTS * outbox.SEGMENT_BYTES
        box = open_box(folder, clock, max_bytes=8 << 20)
        box.append(interval(NOW - 1), NOW - 1)
        box.append(big, NOW)
        box.close()
        assert all(p.stat().st_size <= outbox.SEGMENT_BYTES for p in folder.glob("*.txt"))
        with caplog.at_level(logging.WARNING):
            again = open_box(folder, clock, max_bytes=8 << 20)
        assert records(caplog) == [] and not list(folder.glob("*.damaged"))
        assert again.intervals == 2
        assert b"".join(drain(again)) == interval(NOW - 1) + big

    def test_damaged_files_are_bounded_within_the_byte_limit(self, folder, clock, caplog):
        folder.mkdir(parents=True)
        for sequence in range(1, 6):
            damaged = folder / (segment_name(sequence) + ".damaged")
            damaged.write_bytes(b"x" * 300)
            os.utime(damaged, (time.time() - 100 + sequence,) * 2)  # set aside before
        (folder / segment_name(9)).write_bytes(b"not graphite\n")
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock, max_bytes=700)
        kept = sorted(p.name for p in folder.glob("*.damaged"))
        assert kept == [segment_name(k) + ".damaged" for k in (4, 5, 9)]
        assert box.intervals == 0
        assert records(caplog)[-1] == (f"{folder}: removed the 3 oldest *.damaged files, to stay "
                                       f"within 0 MiB with the outbox")

    def test_a_name_of_more_than_16_digits_is_no_segment_and_is_left_alone(self, folder, clock):
        folder.mkdir(parents=True)
        (folder / "10000000000000000.txt").write_bytes(interval(NOW))  # not a name it writes
        box = open_box(folder, clock)
        assert box.intervals == 0 and box.peek(1 << 16) is None
        box.append(interval(NOW + 1), NOW + 1)
        assert sorted(p.name for p in folder.iterdir()) == files(1) + ["10000000000000000.txt"]

    def test_a_segment_removed_by_hand_is_skipped_and_counted(self, folder, clock, caplog,
                                                              one_interval_per_segment):
        box = open_box(folder, clock)
        for k in range(3):
            box.append(interval(NOW + k), NOW + k)
        (folder / segment_name(2)).unlink()
        (folder / segment_name(3)).unlink()
        (folder / segment_name(3)).write_bytes(interval(NOW + 9))  # a planted replacement
        with caplog.at_level(logging.WARNING):
            assert drain(box) == [interval(NOW)]
        assert records(caplog) == [
            f"{folder / segment_name(2)} was removed by someone else: skipped it and the 1 "
            f"intervals it held",
            f"{folder / segment_name(3)} was replaced by someone else: skipped it and the 1 "
            f"intervals it held"]
        assert box.dropped == 2 and box.intervals == 0

    def test_appends_after_the_segment_was_removed_go_to_a_new_one(self, folder, clock):
        box = open_box(folder, clock)
        box.append(interval(NOW), NOW)
        (folder / segment_name(1)).unlink()
        box.append(interval(NOW + 1), NOW + 1)
        assert (folder / segment_name(2)).read_bytes() == interval(NOW + 1)
        assert drain(box) == [interval(NOW + 1)]

    @pytest.mark.parametrize("trouble, message", [
        ("others may write", "is writable by group or others (mode 0777): chmod go-w it"),
        ("another owner", "is owned by uid 12345, not by the agent's uid"),
    ])
    def test_a_state_directory_others_control_is_refused(self, folder, clock, trouble, message):
        folder.mkdir(parents=True)
        (folder / segment_name(1)).write_bytes(interval(NOW))  # planted
        if trouble == "others may write":
            os.chmod(folder.parent, 0o777)
        else:
            os.chown(folder, 12345, -1) if os.geteuid() == 0 else pytest.skip("needs root")
        with pytest.raises(OSError) as refused:
            open_box(folder, clock)
        assert message in refused.value.strerror


class TestPieces:
    @pytest.mark.parametrize("data, limit, expected", [
        (b"", 10, []),
        (b"a 1 1\nb 2 2\n", 12, [b"a 1 1\nb 2 2\n"]),
        (b"a 1 1\nb 2 2\n", 11, [b"a 1 1\n", b"b 2 2\n"]),
        (b"long line 1 1\nb 2 2\n", 6, [b"long line 1 1\n", b"b 2 2\n"]),
    ])
    def test_whole_lines_within_the_limit(self, data, limit, expected):
        assert list(outbox.pieces(data, limit)) == expected


class TestIntervalsAreReadFromTheirLines:
    """Where an interval ends is read from the stamps its lines carry; nothing is kept beside."""

    def test_chunks_are_cut_and_counted_on_interval_boundaries(self, folder, clock):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        assert sorted(p.name for p in folder.iterdir()) == files(1)
        size = len(interval(NOW))
        chunk = box.peek(2 * size + size // 2)
        assert (chunk.data, chunk.intervals, chunk.runs) == (
            interval(NOW) + interval(NOW + 1), 2, ((size, NOW), (2 * size, NOW + 1)))
        box.consume(chunk)
        assert [(c.intervals, c.last_stamp) for c in [box.peek(1 << 16)]] == [(1, NOW + 2)]

    def test_an_interval_larger_than_the_chunk_goes_in_pieces_counted_once(self, folder, clock):
        box = open_box(folder, clock)
        box.append(interval(NOW, lines=6), NOW)
        box.append(interval(NOW + 1), NOW + 1)
        size = len(interval(NOW, lines=6))
        first = box.peek(size // 2)
        assert first.intervals == 0 and first.data == interval(NOW, lines=6)[:first.length]
        assert first.data.endswith(b"\n") and 0 < first.length <= size // 2
        box.consume(first)
        rest = box.peek(size - first.length)
        assert (rest.data, rest.intervals) == (interval(NOW, lines=6)[first.length:], 1)
        box.consume(rest)
        assert box.intervals == 1 and drain(box) == [interval(NOW + 1)]

    def test_a_moved_chunk_keeps_its_intervals_stamps(self, folder, clock, tmp_path):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        other = open_box(tmp_path / "other" / "outbox", clock)
        other.append_chunk(box.peek(1 << 16))
        other.close()
        again = open_box(tmp_path / "other" / "outbox", clock)
        assert again.intervals == 3
        assert [(c.data, c.intervals, c.last_stamp) for c in [again.peek(2 * len(interval(NOW)))]
                ] == [(interval(NOW) + interval(NOW + 1), 2, NOW + 1)]

    def test_an_interval_split_over_two_segments_is_counted_once(self, folder, clock, caplog):
        folder.mkdir(parents=True)
        big = interval(NOW + 2, lines=6)
        (folder / segment_name(1)).write_bytes(interval(NOW) + interval(NOW + 1) + big[:60])
        (folder / segment_name(2)).write_bytes(big[60:] + interval(NOW + 3))
        assert big[:60].endswith(b"\n")
        with caplog.at_level(logging.WARNING):
            box = open_box(folder, clock)
        assert records(caplog) == [] and box.intervals == 4
        chunks = []
        while (chunk := box.peek(1 << 16)) is not None:
            box.consume(chunk)
            chunks.append((chunk.data, box.intervals))
        assert chunks == [(interval(NOW) + interval(NOW + 1) + big[:60], 1),
                          (big[60:] + interval(NOW + 3), 0)]
        assert list(folder.iterdir()) == []

    def test_the_index_an_earlier_version_kept_is_removed_at_start(self, folder, clock):
        box = open_box(folder, clock)
        box.append(interval(NOW), NOW)
        box.close()
        (folder / "0000000000000001.stamps").write_bytes(b"%07d %012d\n" % (5, NOW))
        (folder / "0000000000000007.stamps").write_bytes(b"%07d %012d\n" % (10, NOW))
        again = open_box(folder, clock)
        assert sorted(p.name for p in folder.iterdir()) == files(1) and again.intervals == 1
        assert drain(again) == [interval(NOW)]


class TestChunkRuns:
    A, B, C = NOW, NOW + 1, NOW + 2

    @pytest.mark.parametrize("runs, limit, taken", [
        ([(10, A), (20, B), (30, C)], 30, [(10, A), (20, B), (30, C)]),  # the segment's end
        ([(10, A), (20, B), (30, C)], 25, [(10, A), (20, B)]),
        ([(10, A), (20, A), (30, B)], 25, [(10, A), (20, A)]),  # A ends where B begins
        ([(10, A), (20, B), (30, B)], 25, [(10, A)]),  # B goes whole in the next chunk
        ([(10, A), (20, A), (30, A)], 25, [(10, A), (20, A)]),  # A alone passes: in pieces
        ([(40, A), (50, B)], 25, []),  # the oldest run alone passes: lines of it
    ])
    def test_whole_intervals_within_the_limit(self, runs, limit, taken):
        assert outbox.lines.chunk_runs([Run(*run) for run in runs], limit) == taken

    @pytest.mark.parametrize("runs, before, count", [
        ([], None, 0), ([(10, NOW)], None, 1), ([(10, NOW)], NOW, 0),
        ([(10, NOW), (20, NOW), (30, NOW + 1)], None, 2), ([(10, NOW), (20, NOW + 1)], NOW, 1),
    ])
    def test_intervals_begun(self, runs, before, count):
        assert outbox.lines.count_intervals([Run(*run) for run in runs], before) == count


class TestRetries:
    """A server refusing every try in an outage: the same chunk is handed out again without
    reading and checking its lines again, as long as reading would give the same."""

    @pytest.fixture
    def reads(self, monkeypatch):
        opened = []
        real = outbox.reading.open_segment
        monkeypatch.setattr(outbox.reading, "open_segment",
                            lambda segment: opened.append(segment.sequence) or real(segment))
        return opened

    def test_a_chunk_is_read_once_while_what_it_holds_does_not_change(self, folder, clock,
                                                                      reads):
        box = open_box(folder, clock)
        for stamp in (NOW, NOW + 1, NOW + 2):
            box.append(interval(stamp), stamp)
        size = len(interval(NOW))
        chunk = box.peek(2 * size)  # two of the three: newer lines change nothing in it
        box.append(interval(NOW + 3), NOW + 3)
        assert all(box.peek(2 * size) is chunk for _ in range(5)) and reads == [1]
        box.consume(chunk)
        assert box.peek(2 * size).data == interval(NOW + 2) + interval(NOW + 3)
        assert reads == [1, 1]

    def test_a_chunk_that_reached_the_end_of_its_segment_grows_with_it(self, folder, clock):
        box = open_box(folder, clock)
        box.append(interval(NOW), NOW)
        assert box.peek(1 << 16).data == interval(NOW)
        box.append(interval(NOW + 1), NOW + 1)
        assert box.peek(1 << 16).data == interval(NOW) + interval(NOW + 1)

    def test_lines_that_grew_too_old_meanwhile_are_not_handed_out_again(self, folder, clock):
        box = open_box(folder, clock, max_age=3600.0)
        box.append(interval(NOW), NOW)
        box.append(interval(NOW + 1000), NOW + 1000)
        assert box.peek(1 << 16).intervals == 2
        clock.now += 3601
        assert box.peek(1 << 16).data == interval(NOW + 1000)


# -- limits over segments partly delivered, and a state directory others may write --

def lines_of(stamp, count=3):
    return b"".join(b"box.s%d %d %d\n" % (i, i, stamp) for i in range(count))


class TestDroppingPartlyDeliveredSegments:
    def test_dropping_a_segment_counts_only_the_intervals_not_yet_delivered(self, tmp_path):
        now = [float(NOW)]
        box = DiskOutbox(tmp_path / "state" / "outbox", 1 << 20, 3600.0, clock=lambda: now[0])
        for stamp in (NOW - 30, NOW - 20, NOW - 10):  # three intervals in one segment
            box.append(lines_of(stamp), stamp)
        # A chunk of the first interval (and one line of the next, so it is known to end).
        chunk = box.peek(len(lines_of(NOW)) + 20)
        assert (chunk.intervals, chunk.data) == (1, lines_of(NOW - 30))
        box.consume(chunk)
        assert (box.intervals, box.dropped) == (2, 0)
        now[0] += 7200  # the segment's newest line is now older than the age limit
        box.set_limits(1 << 20, 3600.0)
        assert (box.intervals, box.dropped) == (0, 2)

    def test_bytes_past_the_limit_count_only_what_was_not_delivered(self, tmp_path,
                                                                     monkeypatch):
        monkeypatch.setattr(outbox.lines, "SEGMENT_BYTES", 2 * len(lines_of(NOW)))
        box = DiskOutbox(tmp_path / "state" / "outbox", 1 << 20, 3600.0, clock=lambda: NOW)
        for stamp in (NOW - 30, NOW - 20, NOW - 10):  # two in the first segment, one after
            box.append(lines_of(stamp), stamp)
        chunk = box.peek(len(lines_of(NOW)) + 20)
        assert chunk.intervals == 1
        box.consume(chunk)
        assert box.append(lines_of(NOW), NOW) == 0
        box.set_limits(len(lines_of(NOW)) * 2, 3600.0)  # room for the newest segment only
        assert (box.intervals, box.dropped) == (2, 1)


@pytest.mark.parametrize("mode", [0o720, 0o702, 0o770])
def test_a_state_directory_writable_by_group_or_others_is_refused(tmp_path, mode):
    folder = tmp_path / "state" / "outbox"
    folder.mkdir(parents=True)
    os.chmod(folder.parent, mode)
    with pytest.raises(OSError) as refused:
        DiskOutbox(folder, 1 << 20, 3600.0, clock=lambda: NOW)
    assert f"is writable by group or others (mode 0{mode:o}): chmod go-w it" in \
        refused.value.strerror
