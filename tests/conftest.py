import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REQUIRE_BPF = os.environ.get("GSENDER_REQUIRE_BPF") == "1"
AGENT = [sys.executable, "-m", "gsender_bcc"]


def bpf_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root to load BPF programs (run 'sudo make test')"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python bindings are not importable (apt-get install python3-bpfcc)"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"GSENDER_REQUIRE_BPF=1 but this BPF test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# A user-space loop is switched out at its return to user mode, with prev_state 0.
# A loop inside the kernel (long reads of /dev/zero) is preempted there, and
# sched_switch reports it with the preempted bit: only that kind proves the bit is read.
BUSY_LOOPS = {
    "user": "while True: pass",
    "kernel": ("import os\nzero = os.open('/dev/zero', os.O_RDONLY)\nbuf = bytearray(64 << 20)\n"
               "while True: os.readv(zero, [buf])"),
}


def spin_on_cpu(cpu: int, kind: str = "user") -> subprocess.Popen:
    """Start a process that burns one pinned CPU until killed."""
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOPS[kind]])
    os.sched_setaffinity(child.pid, {cpu})
    return child


@pytest.fixture(params=sorted(BUSY_LOOPS))
def busy_cpu(request):
    """Two busy processes pinned to CPU 0, so each waits while the other runs."""
    children = [spin_on_cpu(0, request.param) for _ in range(2)]
    time.sleep(0.2)
    yield 0
    for child in children:
        child.kill()
    for child in children:
        child.wait(timeout=5)


def loaded_program_ids():
    """Return the ids of the BPF programs loaded in the kernel, as bpftool lists them."""
    import json
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def run_delay_ns() -> int:
    """Sum the kernel's run-queue wait (schedstat run_delay) over every thread alive now."""
    total = 0
    for path in Path("/proc").glob("[0-9]*/task/[0-9]*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # the thread exited while we looked
    return total
