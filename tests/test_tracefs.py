import pytest

from gsender_bcc import tracefs
from gsender_bcc.errors import AgentError

# The prev_state part of sched_switch's print fmt as kernels of three eras print it.
FMT_6X = ('print fmt: "prev_state=%s%s", (REC->prev_state & ((((0x00000000 | 0x00000001 | '
          '0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1)'
          ' - 1)) ? __print_flags(...) : "R", REC->prev_state & (((0x00000000 | 0x00000001 | '
          '0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1)'
          ' ? "+" : "", REC->next_comm')
FMT_4_14 = ('print fmt: "...", (REC->prev_state & ((((0x0000 | 0x0001 | 0x0002 | 0x0004 | 0x0008 | '
            '0x0010 | 0x0020 | 0x0040) + 1) << 1) - 1)) ? __print_flags(...) : "R", REC->prev_state'
            ' & (((0x0000 | 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0020 | 0x0040) + 1) << 1)'  # noqa: E501 (the kernel's own text)
            ' ? "+" : "", REC->next_comm')
FMT_4_4 = ('print fmt: "...", REC->prev_state & (2048-1) ? __print_flags(...) : "R", '
           'REC->prev_state & 2048 ? "+" : "", REC->next_comm')


class TestPreemptedStateBit:
    @pytest.mark.parametrize("text, bit", [(FMT_6X, 0x100), (FMT_4_14, 0x100), (FMT_4_4, 2048)])
    def test_read_from_print_fmt(self, text, bit):
        assert tracefs.preempted_state_bit(text) == bit

    @pytest.mark.parametrize("text, message", [
        ('print fmt: "prev_state=%d", REC->prev_state', "has no"),
        ('REC->prev_state & (0x3) ? "+" : ""', "not a single bit"),
        ('REC->prev_state & (0) ? "+" : ""', "not a single bit"),
        ('REC->prev_state & (__import__("os")) ? "+" : ""', "unexpected Call"),
        ('REC->prev_state & (1.5) ? "+" : ""', "unexpected Constant"),
    ])
    def test_refuses_what_it_cannot_read(self, text, message):
        with pytest.raises(ValueError, match=message):
            tracefs.preempted_state_bit(text)

    def test_unreadable_format_is_one_agent_error(self, tmp_path):
        (tmp_path / "events/sched/sched_switch").mkdir(parents=True)
        with pytest.raises(AgentError, match="cannot tell how .*sched_switch/format marks"):
            tracefs.read_preempted_state_bit(tmp_path)


class TestMounts:
    def test_first_mounted_root_is_used(self, tmp_path):
        (tmp_path / "b/events").mkdir(parents=True)
        assert tracefs.tracefs_root([tmp_path / "a", tmp_path / "b"]) == tmp_path / "b"

    def test_unmounted_tracefs_says_how_to_mount(self, tmp_path):
        with pytest.raises(AgentError, match="mount -t tracefs nodev /sys/kernel/tracing") as error:
            tracefs.tracefs_root([tmp_path])
        assert error.value.exit_code == 69

    def test_missing_tracepoint_is_named(self, tmp_path):
        for name in ("sched_wakeup", "sched_switch"):
            (tmp_path / "events/sched" / name).mkdir(parents=True)
            (tmp_path / "events/sched" / name / "format").write_text("")
        with pytest.raises(AgentError, match="no tracepoint sched:sched_wakeup_new"):
            tracefs.check_tracepoints(tmp_path)
