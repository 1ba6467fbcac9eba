"""Load, read and detach the BPF program; the only module that touches bcc."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from . import btf, program, tracefs
from .errors import EX_NOPERM, EX_UNAVAILABLE, AgentError
from .histogram import Layout, Snapshot

log = logging.getLogger(__name__)

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_capabilities(status_text: str) -> int:
    """Return the CapEff mask from the text of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def can_load_bpf(capabilities: int) -> bool:
    """Tell whether a capability mask allows loading tracing programs."""
    def has(cap: int) -> bool:
        return bool(capabilities >> cap & 1)
    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def check_privileges() -> None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if not can_load_bpf(effective_capabilities(status)):
        raise AgentError("loading BPF programs needs root (or CAP_BPF and CAP_PERFMON): "
                         "run it with sudo", EX_NOPERM)


def check_kernel_headers(release: Optional[str] = None) -> None:
    release = release or os.uname().release
    build = Path("/lib/modules") / release / "build"
    if os.environ.get("BCC_KERNEL_SOURCE") or Path("/sys/kernel/kheaders.tar.xz").exists():
        return
    try:
        if (build / "include").is_dir():
            return
    except OSError as error:  # e.g. a sandbox (systemd ProtectKernelModules=) hides /lib/modules
        raise AgentError(f"kernel headers at {build} cannot be read: {error.strerror}; if this "
                         f"runs under systemd, drop ProtectKernelModules= from the unit",
                         EX_UNAVAILABLE) from None
    raise AgentError(f"kernel headers for {release} not found at {build}: install "
                     f"linux-headers-{release}, or run 'make setup' to link the distro's "
                     f"generic headers there", EX_UNAVAILABLE)


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise AgentError("BCC's Python bindings are missing: run 'apt-get install python3-bpfcc' "
                         "and use /usr/bin/python3 or a venv made with --system-site-packages",
                         EX_UNAVAILABLE) from None
    return bcc


@contextlib.contextmanager
def captured_stderr() -> Iterator[list]:
    """Collect what C code writes to file descriptor 2 (clang and verifier logs)."""
    lines: list = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def _last_useful_line(lines: list) -> str:
    for line in reversed(lines):
        line = line.strip()
        if line and not line.startswith(("processed ", "HINT:", "Traceback")):
            return line
    return ""


def release_compiler_memory() -> None:
    """Give the heap that clang and LLVM freed after compiling back to the kernel (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def compile_settings() -> program.ProgramSettings:
    """Use raw tracepoints where the kernel's BTF describes them, classic ones otherwise."""
    try:
        return program.ProgramSettings(raw=btf.read_raw_layout())
    except (OSError, ValueError, LookupError) as error:
        log.info("using classic tracepoints: cannot use raw ones (%s: %s)", btf.VMLINUX, error)
    root = tracefs.tracefs_root()
    tracefs.check_tracepoints(root)
    return program.ProgramSettings(preempted_state=tracefs.read_preempted_state_bit(root))


def render_source(settings: program.ProgramSettings) -> str:
    """Return the C text that would be compiled, with its flags, for --dump-bpf."""
    folder = program.source_dir()
    flags = " ".join(settings.cflags(folder))
    parts = [f"/* compile flags: {flags} */"]
    for name in (program.HEADER_NAME, program.SOURCE_NAME):
        parts.append(f"/* ---- {folder / name} ---- */")
        parts.append((folder / name).read_text())
    return "\n".join(parts)


class Probe:
    """The loaded and attached BPF program."""

    def __init__(self, settings: Optional[program.ProgramSettings] = None):
        check_privileges()
        bcc = import_bcc()
        self.settings = settings or compile_settings()
        check_kernel_headers()
        self.layout: Layout = program.installed_layout()
        folder = program.source_dir()
        with captured_stderr() as messages:
            try:
                self._bpf = bcc.BPF(src_file=str(folder / program.SOURCE_NAME).encode(),
                                    cflags=list(self.settings.cflags(folder)))
            except Exception as error:  # bcc raises bare Exception for compile and load failures
                failure = error
            else:
                failure = None
        for line in messages:
            log.debug("bcc: %s", line)
        if failure is not None:
            detail = _last_useful_line(messages)
            raise AgentError(f"compiling or loading the BPF program failed: {failure}"
                             + (f" ({detail})" if detail else ""), EX_UNAVAILABLE)
        release_compiler_memory()
        self._stats = self._bpf[b"stats"]

    def read_snapshot(self) -> Snapshot:
        """Return the cumulative counters, summed over CPUs."""
        per_cpu = self._stats[self._stats.Key(0)]
        slots = [0] * self.layout.slots
        sum_ns = lost = 0
        for cpu in per_cpu:
            for i, n in enumerate(cpu.slots):
                slots[i] += n
            sum_ns += cpu.sum_ns
            lost += cpu.lost
        return Snapshot(tuple(slots), sum_ns, lost)

    def close(self) -> None:
        """Detach the tracepoints and unload the program."""
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
