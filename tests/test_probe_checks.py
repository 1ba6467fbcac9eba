"""Pre-flight checks that need no privileges."""

import pytest

from gsender_bcc import probe
from gsender_bcc.errors import AgentError

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


def test_missing_headers_name_the_package(monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    with pytest.raises(AgentError, match=r"kernel headers for 0\.0-none not found at "
                                         r"/lib/modules/0\.0-none/build: install "
                                         r"linux-headers-0\.0-none") as error:
        probe.check_kernel_headers("0.0-none")
    assert error.value.exit_code == 69


def test_captured_stderr_collects_c_level_output():
    import os
    with probe.captured_stderr() as lines:
        os.write(2, b"first\nsecond line\n")
    assert lines == ["first", "second line"]
    assert probe._last_useful_line(["x", "last words", "processed 5 insns", ""]) == "last words"


def test_unreadable_headers_are_one_line(monkeypatch, tmp_path):
    import pathlib
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(pathlib.Path, "is_dir", denied)
    with pytest.raises(AgentError, match=r"kernel headers at /lib/modules/x/build cannot be read: "
                                         r"Permission denied; if this runs under systemd, drop "
                                         r"ProtectKernelModules="):
        probe.check_kernel_headers("x")
