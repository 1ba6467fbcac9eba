"""Pre-flight checks, and the capabilities the compile runs with."""

import threading

import pytest

from conftest import thread_capabilities
from gsender_bcc import probe

ROOT_STATUS = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"


@pytest.mark.parametrize("status, mask", [
    (ROOT_STATUS, 0x1FFFFFFFFFF),
    ("CapEff:\t0000000000000000\n", 0),
    ("Name:\tx\n", 0),
])
def test_effective_capabilities(status, mask):
    assert probe.effective_capabilities(status) == mask


@pytest.mark.parametrize("caps, allowed", [
    (0, False),
    (1 << 21, True),                 # CAP_SYS_ADMIN
    (1 << 39, False),                # CAP_BPF alone
    (1 << 38, False),                # CAP_PERFMON alone
    ((1 << 39) | (1 << 38), True),   # CAP_BPF + CAP_PERFMON
])
def test_can_load_bpf(caps, allowed):
    assert probe.can_load_bpf(caps) is allowed


def test_compiling_against_sets_the_tree_and_restores_the_environment(monkeypatch, tmp_path):
    import os
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/lib/modules/x/build")
    with probe.compiling_against(tmp_path):
        assert os.environ["BCC_KERNEL_SOURCE"] == str(tmp_path)
    assert os.environ["BCC_KERNEL_SOURCE"] == "/lib/modules/x/build"
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    with pytest.raises(RuntimeError), probe.compiling_against(tmp_path):
        raise RuntimeError
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_captured_stderr_collects_c_level_output():
    import os
    with probe.captured_stderr() as lines:
        os.write(2, b"first\nsecond line\n")
    assert lines == ["first", "second line"]
    assert probe._last_useful_line(["x", "last words", "processed 5 insns", ""]) == "last words"


def test_a_header_the_tree_lacks_names_bcc_and_the_file(tmp_path):
    settings = probe.program.ProgramSettings(raw=probe.program.RawLayout(1008),
                                             include_tree=tmp_path)
    messages = ["In file included from <built-in>:2:",
                "/virtual/include/bcc/helpers.h:60:10: fatal error: 'linux/new_thing.h' file not found",
                "1 error generated."]
    error = probe.load_failure(Exception("Failed to compile BPF module"), messages, settings,
                               paranoid=2, bcc_release="0.99.0")
    assert error.exit_code == 69
    assert str(error) == (f"BCC 0.99.0 wants the header linux/new_thing.h, which gsender-bcc's "
                          f"include tree ({tmp_path}) does not have: this BCC is newer than this "
                          f"gsender-bcc; upgrade gsender-bcc (kernel headers do not help, they "
                          f"are never used)")
    assert "\n" not in str(error)


CLASSIC = probe.program.ProgramSettings(preempted_state=0x100)
RAW = probe.program.ProgramSettings(raw=probe.program.RawLayout(1008))
ATTACH = Exception("Failed to attach BPF program b'tracepoint__sched__sched_switch' to "
                   "tracepoint b'sched:sched_switch'")
REFUSED_LINES = ["perf_event_open(/sys/kernel/tracing/events/sched/sched_switch/id): "
                 "Permission denied"]


def test_classic_tracepoints_refused_are_a_missing_privilege_that_names_the_fix():
    error = probe.load_failure(ATTACH, REFUSED_LINES, CLASSIC, 3)
    assert error.exit_code == 77
    assert str(error) == (
        "attaching the classic tracepoints was refused (perf_event_open(/sys/kernel/tracing/"
        "events/sched/sched_switch/id): Permission denied; kernel.perf_event_paranoid is 3): "
        "they need CAP_SYS_ADMIN where perf_event_paranoid is 3 (Debian); use tracepoints = raw, "
        "or give the agent CAP_SYS_ADMIN (README: 'Classic tracepoints under systemd')")


@pytest.mark.parametrize("failure, lines, settings", [
    (ATTACH, REFUSED_LINES, RAW),  # raw tracepoints are not attached with perf_event_open
    (ATTACH, ["perf_event_open(/x/id): No such file or directory"], CLASSIC),
    (Exception("Failed to compile BPF module"), ["error: unknown type name 'u99'"], CLASSIC),
])
def test_other_load_failures_are_a_missing_feature(failure, lines, settings):
    error = probe.load_failure(failure, lines, settings, 3)
    assert error.exit_code == 69
    assert str(error) == f"compiling or loading the BPF program failed: {failure} ({lines[-1]})"


def syslog_held() -> bool:
    return bool(thread_capabilities() >> probe.CAP_SYSLOG & 1)


def test_a_capability_is_left_out_only_inside_and_only_for_this_thread():
    if not syslog_held():
        pytest.skip("needs CAP_SYSLOG in the effective set (root)")
    inside, go_on, other = threading.Event(), threading.Event(), []

    def look():  # started before the capability is left out, as any other thread would be
        inside.wait(10)
        other.append(syslog_held())
        go_on.set()

    looker = threading.Thread(target=look)
    looker.start()
    with probe.without_effective(probe.CAP_SYSLOG) as taken_out:
        assert taken_out and not syslog_held()
        inside.set()
        go_on.wait(10)
    looker.join()
    assert syslog_held() and other == [True]


def test_a_capability_not_held_is_left_as_it_is():
    if not syslog_held():
        pytest.skip("needs CAP_SYSLOG in the effective set (root)")
    with probe.without_effective(probe.CAP_SYSLOG):
        with probe.without_effective(probe.CAP_SYSLOG) as taken_out:
            assert not taken_out
        assert not syslog_held()  # the inner one put back nothing it did not take
    assert syslog_held()


def test_a_c_library_without_the_capability_calls_changes_nothing():
    """musl and glibc have capget and capset; a C library without them leaves the compile
    with the capability it has, not a traceback."""
    held = syslog_held()
    with probe.without_effective(probe.CAP_SYSLOG, libc=object()) as taken_out:
        assert not taken_out and syslog_held() == held
    assert syslog_held() == held
