"""Load, read and detach the BPF program; the only module that touches bcc."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

from . import program
from .config import Config
from .errors import EX_NOPERM, EX_UNAVAILABLE, AgentError
from .histogram import Counts, Layout, empty_counts, sum_counts
from .readings import Culprits, CulpritWords, Snapshot

log = logging.getLogger(__name__)

CAP_SYS_ADMIN = 21
CAP_SYSLOG = 34
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


@contextlib.contextmanager
def compiling_against(tree: Path) -> Iterator[None]:
    """Point BCC at the package's include tree for one compile, whatever the environment says.

    BCC reads BCC_KERNEL_SOURCE when it compiles; without it, it would look in
    /lib/modules/<release>/build, which a host without kernel headers lacks.
    """
    saved = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ["BCC_KERNEL_SOURCE"] = str(tree)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["BCC_KERNEL_SOURCE"]
        else:
            os.environ["BCC_KERNEL_SOURCE"] = saved


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapSet(ctypes.Structure):  # one 32-bit word of each set; version 3 has two
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAPABILITY_VERSION_3 = 0x20080522


@contextlib.contextmanager
def without_effective(cap: int, libc: Optional[object] = None) -> Iterator[bool]:
    """Leave one capability out of this thread's effective set, and put it back after; yield
    whether it was taken out (False: not held, or the calls failed or are missing from the C
    library; nothing changed).

    The permitted set keeps it, so raising it again needs no privilege. Capabilities are
    per thread: other threads keep theirs."""
    libc = ctypes.CDLL(None) if libc is None else libc
    capget, capset = getattr(libc, "capget", None), getattr(libc, "capset", None)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    sets = (_CapSet * 2)()
    word, bit = divmod(cap, 32)
    held = capget is not None and capset is not None and \
        capget(ctypes.byref(header), sets) == 0 and sets[word].effective >> bit & 1
    if held:
        sets[word].effective &= ~(1 << bit)
        held = capset(ctypes.byref(header), sets) == 0
    try:
        yield bool(held)
    finally:
        if held:
            sets[word].effective |= 1 << bit
            capset(ctypes.byref(header), sets)


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


REFUSED = ("Permission denied", "Operation not permitted")


def perf_event_paranoid() -> Optional[int]:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return None


_MISSING_FILE = re.compile(r"fatal error: '([^']+)' file not found")


def bcc_version(bcc) -> str:
    return str(getattr(bcc, "__version__", "") or "of unknown version")


def load_failure(failure: Exception, messages: list, settings: program.ProgramSettings,
                 paranoid: Optional[int], bcc_release: str = "of unknown version") -> AgentError:
    """Turn bcc's failure to compile, load or attach into the error that names the fix.

    Classic tracepoints are attached with perf_event_open, which Debian's kernels at
    perf_event_paranoid 3 allow only with CAP_SYS_ADMIN: a hardened unit without it is refused.
    That will not fix itself, so it is a missing privilege (77), not a missing feature (69).
    """
    detail = _last_useful_line(messages)
    for line in messages:
        missing = _MISSING_FILE.search(line)
        if missing:
            return AgentError(f"BCC {bcc_release} wants the header "
                              f"{missing.group(1)}, which gsender-bcc's include tree "
                              f"({settings.include_tree}) does not have: this BCC is newer than "
                              f"this gsender-bcc; upgrade gsender-bcc (kernel headers do not help, "
                              f"they are never used)", EX_UNAVAILABLE)
    refused = any("perf_event_open" in line and any(r in line for r in REFUSED)
                  for line in messages)
    if settings.raw is None and refused:
        level = f"kernel.perf_event_paranoid is {paranoid}" if paranoid is not None else ""
        return AgentError(f"attaching the classic tracepoints was refused ({detail}"
                          + (f"; {level}" if level else "") + "): they need CAP_SYS_ADMIN "
                          "where perf_event_paranoid is 3 (Debian); use tracepoints = raw, or "
                          "give the agent CAP_SYS_ADMIN (README: 'Classic tracepoints under "
                          "systemd')", EX_NOPERM)
    return AgentError(f"compiling or loading the BPF program failed: {failure}"
                      + (f" ({detail})" if detail else ""), EX_UNAVAILABLE)


def release_compiler_memory() -> None:
    """Give the heap that clang and LLVM freed after compiling back to the kernel (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


BATCH_ENTRIES = 256


@functools.cache
def overflow_cgroup() -> int:
    """Return the key the program counts the samples of cgroups beyond its map's capacity
    under: OVERFLOW_CGROUP of the shared header, read from the installed header."""
    return program.installed_constants()["OVERFLOW_CGROUP"]


RESERVED_CULPRITS = (("CULPRIT_IDLE", "idle"), ("CULPRIT_MIGRATED", "migrated"),
                     ("CULPRIT_UNTRACKED", "untracked"))


@functools.cache
def reserved_culprits() -> Dict[int, str]:
    """Return the culprit ids that name no cgroup (the header's CULPRIT_*), with the name
    each is sent under: idle, migrated and untracked."""
    constants = program.installed_constants()
    return {constants[define]: name for define, name in RESERVED_CULPRITS}


def culprit_words(constants: Dict[str, int]) -> CulpritWords:
    """Where the culprit counters sit in a cgroup's entry: the header's reserved counter i
    is culprit CULPRIT_IDLE - i."""
    reserved = tuple(constants["CULPRIT_IDLE"] - i for i in range(constants["RESERVED_CULPRITS"]))
    named = {constants[define] for define, _ in RESERVED_CULPRITS}
    if set(reserved) != named:
        raise ValueError(f"{program.HEADER_NAME}: the reserved culprits are not CULPRIT_IDLE "
                         f"and the {len(reserved) - 1} ids below it")
    return CulpritWords(reserved, constants["CULPRIT_SLOTS"], constants["OVERFLOW_CGROUP"])


def _batches(map_fd: int, keys, values) -> Iterator[tuple]:
    """Yield a hash map's (key, the value's bytes), in batches of len(keys) (kernel 5.6 and
    later); the bytes are the batch buffer's, valid until the next entry is asked for."""
    size = ctypes.sizeof(values) // len(values)
    raw = memoryview(values).cast("B")  # overwritten by the next batch
    for count in _batch_counts(map_fd, keys, values):
        for i in range(count):
            yield keys[i], raw[i * size:(i + 1) * size]


def _batch_counts(map_fd: int, keys, values) -> Iterator[int]:
    """Fill ``keys`` and ``values`` with a hash map's entries, batch after batch (kernel 5.6
    and later), and yield how many each batch holds."""
    from bcc.libbcc import lib
    call = lib.bpf_lookup_batch
    token, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
    first, done = True, False
    while not done:
        count.value = len(keys)
        result = call(map_fd, None if first else ctypes.byref(token), ctypes.byref(token),
                      ctypes.byref(keys), ctypes.byref(values), ctypes.byref(count))
        code = ctypes.get_errno()
        if result != 0:
            if code != errno.ENOENT:
                raise OSError(code, os.strerror(code))
            done = True  # ENOENT: this batch is the last
        first = False
        yield count.value


class Probe:
    """The loaded and attached BPF program."""

    layout: Layout

    def __init__(self, config: Config, settings: Optional[program.ProgramSettings] = None):
        check_privileges()
        bcc = import_bcc()
        self.settings = settings or program.compile_settings(config)
        self.layout = program.installed_layout()
        folder = program.source_dir()
        # Without CAP_SYSLOG, as under the packaged unit. BCC's compile reads /proc/kallsyms
        # whole only to learn whether bpf_probe_read_kernel exists; without CAP_SYSLOG the
        # kernel hides the addresses, BCC skips every line and takes the older
        # bpf_probe_read, which reads kernel memory alike on x86-64 and arm64.
        with captured_stderr() as messages, compiling_against(self.settings.include_tree), \
                without_effective(CAP_SYSLOG):
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
            raise load_failure(failure, messages, self.settings, perf_event_paranoid(),
                               bcc_version(bcc))
        release_compiler_memory()
        self._stats = self._bpf[b"stats"]
        # Read the per-CPU stats raw into one buffer: bcc's own reader builds every field.
        self._stats_key, self._stats_value = self._stats.Key(0), self._stats.Leaf()
        per_cpu = self._stats.sLeaf
        self._stats_stride = ctypes.sizeof(per_cpu)
        self._stats_offsets = (per_cpu.slots.offset, per_cpu.sum_ns.offset, per_cpu.lost.offset)
        self._cgroups = None
        if self.settings.per_cgroup:
            self._cgroups = self._bpf[b"cgroup_counts"]
            self._cgroups[self._cgroups.Key(overflow_cgroup())] = self._cgroups.Leaf()
            self._batch_keys = (self._cgroups.Key * BATCH_ENTRIES)()
            self._batch_values = (self._cgroups.Leaf * BATCH_ENTRIES)()
            # libbcc before 0.20 (bullseye's 0.18) has no bpf_lookup_batch: read entry by entry.
            self._batch_works = hasattr(bcc.libbcc.lib, "bpf_lookup_batch")
            self._counts_cache: Dict[int, Counts] = {}
        self._culprits: Optional[CulpritWords] = None
        if self.settings.culprits:
            # Moved on at each reading: a slot the program did not charge since may change hands.
            self._epoch_map, self._epoch = self._bpf[b"culprit_epoch"], 0
            self._culprits = culprit_words(program.installed_constants())

    def read_snapshot(self) -> Snapshot:
        """Return the cumulative counters: the per-CPU ones summed over CPUs, and per cgroup
        (with attribution, each cgroup's culprit counters too)."""
        from bcc.libbcc import lib
        if self._culprits is not None:
            self._epoch += 1
            self._epoch_map[self._epoch_map.Key(0)] = self._epoch_map.Leaf(self._epoch)
        if lib.bpf_lookup_elem(self._stats.map_fd, ctypes.byref(self._stats_key),
                               ctypes.byref(self._stats_value)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"reading the BPF stats map: {os.strerror(code)}")
        raw = ctypes.string_at(ctypes.addressof(self._stats_value),
                               ctypes.sizeof(self._stats_value))
        stride, (slots_at, sum_at, lost_at) = self._stats_stride, self._stats_offsets
        width, order = self.layout.slots, sys.byteorder
        lost, per_cpu = 0, []
        for base in range(0, len(raw), stride):
            lost += int.from_bytes(raw[base + lost_at:base + lost_at + 8], order)
            if not self.settings.per_cgroup:
                per_cpu.append(Counts.from_packed(
                    int.from_bytes(raw[base + slots_at:base + slots_at + 8 * width], order),
                    width, int.from_bytes(raw[base + sum_at:base + sum_at + 8], order)))
        host = sum_counts(self.layout, per_cpu) if per_cpu else empty_counts(self.layout)
        cgroups, culprits = self._read_cgroups() if self._cgroups is not None else ({}, None)
        return Snapshot(host, lost, cgroups, culprits)

    def _read_cgroups(self) -> Tuple[Dict[int, Counts], Optional[Culprits]]:
        """Read every cgroup's counters, and with attribution its culprit counters; an entry
        unchanged since the last read is reused.

        Each entry's slots are kept packed into one integer (histogram.Counts.from_packed):
        they are unpacked only for the few services whose histograms are sent.
        """
        size = ctypes.sizeof(self._cgroups.Leaf)
        width, order = self.layout.slots, sys.byteorder
        slots_bytes = 8 * width
        words = self._culprits
        culprits_at = slots_bytes + 8
        culprits_end = culprits_at + 8 * words.size if words else culprits_at
        cache, fresh = self._counts_cache, {}
        blames: Dict[int, tuple] = {}
        for cgroup, raw in self._cgroup_entries(size):
            sum_ns = int.from_bytes(raw[slots_bytes:slots_bytes + 8], order)
            packed = int.from_bytes(raw[:slots_bytes], order)
            known = cache.get(cgroup)
            if known is not None and known.sum_ns == sum_ns and known.packed == packed:
                fresh[cgroup] = known
            else:
                fresh[cgroup] = Counts.from_packed(packed, width, sum_ns)
            if words:
                blames[cgroup] = tuple(raw[culprits_at:culprits_end].cast("Q"))
        self._counts_cache = fresh
        return dict(fresh), (Culprits(words, blames) if words else None)

    def _cgroup_entries(self, size: int) -> Iterator[tuple]:
        """Yield (cgroup id, the value's bytes as a memoryview, valid until the next entry is
        asked for), in batches where the kernel can (5.6 and later)."""
        if self._batch_works:
            try:
                yield from _batches(self._cgroups.map_fd, self._batch_keys, self._batch_values)
                return
            except (OSError, AttributeError) as error:  # an old kernel, or an old libbcc
                log.info("reading the cgroup map in batches failed (%s): reading it entry by "
                         "entry", getattr(error, "strerror", None) or error)
                self._batch_works = False
        for key, value in self._cgroups.items():
            yield key.value, memoryview(ctypes.string_at(ctypes.addressof(value), size))

    def forget(self, cgroups: Iterable[int]) -> None:
        """Delete the entries of removed cgroups, after their last counts were read."""
        if self._cgroups is None:
            return
        for cgroup in set(cgroups):
            try:
                del self._cgroups[self._cgroups.Key(cgroup)]
            except KeyError:
                pass
            self._counts_cache.pop(cgroup, None)

    def close(self) -> None:
        """Detach the tracepoints and unload the program."""
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
