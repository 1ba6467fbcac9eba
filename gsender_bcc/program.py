"""The BPF program as installed with the package: its files, its constants, its compile flags,
and which of them this host gets."""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from . import btf, cgroups, tracefs
from .btf import RawLayout
from .config import Config
from .errors import EX_UNAVAILABLE, AgentError
from .histogram import Layout

log = logging.getLogger(__name__)

SOURCE_NAME = "runqlat.c"
HEADER_NAME = "runqlat.h"
# BCC compiles against a kernel tree. The program needs no kernel type, so the package
# carries its own small tree (bpf/kernel-stubs/, written for gsender-bcc) with just what BCC's
# own helpers.h includes, and BCC is pointed at it: no kernel headers are read or needed.
INCLUDE_TREE_NAME = "kernel-stubs"

# The map of start times holds one entry per live task that has been runnable since the
# attach (an entry goes when its task is freed). Every task has a pid of its own, so a map of
# pid_max entries can never be full; it is sized so, up to MAX_START_ENTRIES (about 5 MiB of
# kernel memory, preallocated, whatever the number of CPUs). On a host with a larger pid_max
# and more live tasks than that, a task the map cannot take is counted (agent.samples_lost).
MAX_START_ENTRIES = 65536
PID_MAX = Path("/proc/sys/kernel/pid_max")


def start_entries(pid_max_file: Path = PID_MAX) -> int:
    """Size the map of start times: the kernel's pid_max, at most MAX_START_ENTRIES."""
    try:
        pid_max = int(pid_max_file.read_text())
    except (OSError, ValueError):
        return MAX_START_ENTRIES
    return max(1, min(pid_max, MAX_START_ENTRIES))


# The per-cgroup map holds one entry per cgroup that had a sample since it was created
# (user space deletes the entries of removed cgroups). Each entry is a histogram of
# HIST_SLOTS u64 plus the sum, about 1.9 KiB, shared by all CPUs: 4096 entries are
# about 8 MiB of kernel memory whatever the number of CPUs. Culprit attribution adds its
# counters to each entry (37 u64 with 8 culprit slots, about 0.3 KiB).
DEFAULT_MAX_CGROUPS = 4096

_DEFINE = re.compile(r"^#define\s+([A-Z_][A-Z0-9_]*)\s+(\d+)\s*$", re.MULTILINE)


def source_dir() -> Path:
    """Return the folder holding the installed BPF source and header."""
    return Path(str(importlib.resources.files("gsender_bcc.bpf")))


def include_tree() -> Path:
    """Return the installed include tree that BCC compiles against (BCC_KERNEL_SOURCE)."""
    return source_dir() / INCLUDE_TREE_NAME


def include_tree_files(tree: Path) -> Tuple[Path, ...]:
    """Return the tree's headers, sorted by their path inside it."""
    return tuple(sorted(tree.rglob("*.h"), key=lambda path: path.relative_to(tree).parts))


_RELEASE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def linux_version_code(release: str) -> int:
    """Return LINUX_VERSION_CODE for a kernel release string such as ``6.1.0-50-cloud-amd64``.

    One byte each for the minor and the patch level below the major; the patch saturates
    at 255 as the kernel's own KERNEL_VERSION() does. An unreadable release gives 0.
    """
    match = _RELEASE.match(release)
    if match is None:
        return 0
    major, minor, patch = (int(part or 0) for part in match.groups())
    return (major << 16) | (min(minor, 255) << 8) | min(patch, 255)


def running_version_code() -> int:
    return linux_version_code(os.uname().release)


def running_page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


# The first release whose sched_switch hands over the state prev really leaves with: before
# it (from 5.18), a task that went to sleep with a signal pending stayed runnable while the
# argument still said it slept ("sched: Fix trace_sched_switch(.prev_state)"). Stable kernels
# that took the fix are not told apart: they read the state from task_struct, as older ones.
PREV_STATE_FIXED = "6.16"


def include_tree_flags(version_code: int, page_size: int) -> Tuple[str, ...]:
    """The -D flags the include tree needs: what kernel headers would have told helpers.h."""
    return f"-DLINUX_VERSION_CODE={version_code}", f"-DGSENDER_PAGE_SIZE={page_size}"


def header_constants(header_text: str) -> Dict[str, int]:
    """Return the ``#define NAME number`` constants of the shared header."""
    return {name: int(value) for name, value in _DEFINE.findall(header_text)}


def layout_from_constants(constants: Dict[str, int]) -> Layout:
    """Build the histogram layout, checking the header's constants agree with each other."""
    try:
        layout = Layout(sub_bits=constants["HIST_SUB_BITS"], log2_max=constants["HIST_LOG2_MAX"])
        declared = (constants["HIST_SUB_COUNT"], constants["HIST_SLOTS"])
    except KeyError as missing:
        raise ValueError(f"{HEADER_NAME} does not define {missing.args[0]}") from None
    if declared != (layout.sub_count, layout.slots):
        raise ValueError(f"{HEADER_NAME}: HIST_SUB_COUNT/HIST_SLOTS {declared} do not match "
                         f"HIST_SUB_BITS/HIST_LOG2_MAX, which give "
                         f"{(layout.sub_count, layout.slots)}")
    return layout


def installed_constants() -> Dict[str, int]:
    """Return the ``#define NAME number`` constants of the installed shared header."""
    return header_constants((source_dir() / HEADER_NAME).read_text())


def installed_layout() -> Layout:
    """Return the layout of the installed program."""
    return layout_from_constants(installed_constants())


@dataclass(frozen=True)
class ProgramSettings:
    """What the BPF program is compiled with: raw tracepoints if ``raw`` is known, else classic."""

    raw: Optional[RawLayout] = None
    preempted_state: Optional[int] = None
    start_entries: int = field(default_factory=start_entries)
    per_cgroup: bool = False
    max_cgroups: int = DEFAULT_MAX_CGROUPS
    culprits: bool = False  # split each wait by who ran meanwhile (needs per_cgroup)
    # What kernel headers would have told BCC's helpers.h, taken from the running kernel.
    version_code: int = field(default_factory=running_version_code)
    page_size: int = field(default_factory=running_page_size)
    include_tree: Path = field(default_factory=include_tree)

    def __post_init__(self):
        if (self.raw is None) == (self.preempted_state is None):
            raise ValueError("give either the raw-tracepoint layout or the preempted state bit")
        if self.culprits and not self.per_cgroup:
            raise ValueError("culprit attribution needs the per-cgroup breakdown")

    @property
    def kind(self) -> str:
        return "raw tracepoints" if self.raw else "tracepoints"

    @property
    def prev_state_argument(self) -> bool:
        """Whether the raw sched_switch's prev_state argument tells if prev stays runnable:
        it is there and this kernel sets it right (PREV_STATE_FIXED); else the program reads
        the state from task_struct, a helper call at every switch."""
        return (self.raw is not None and self.raw.switch_state_argument
                and self.version_code >= linux_version_code(PREV_STATE_FIXED))

    @property
    def tracepoints(self) -> Tuple[str, ...]:
        """Name the tracepoints the program attaches to, one program each, of either kind:
        the three that start and end each wait, the one that forgets a freed task, and with
        culprit attribution the one that sees a waiting task move CPU."""
        return tracefs.TRACEPOINTS + (("sched_migrate_task",) if self.culprits else ())

    def cflags(self, include_dir: Path) -> Tuple[str, ...]:
        flags = [f"-I{include_dir}", f"-DSTART_ENTRIES={self.start_entries}",
                 f"-DPER_CGROUP={int(self.per_cgroup)}", f"-DMAX_CGROUPS={self.max_cgroups}",
                 f"-DCULPRITS={int(self.culprits)}",
                 *include_tree_flags(self.version_code, self.page_size)]
        if self.raw is not None:
            flags += ["-DRAW_TRACEPOINTS", f"-DSTATE_OFFSET={self.raw.state_offset}",
                      f"-DSTATE_SIZE={self.raw.state_size}",
                      f"-DPREV_STATE_ARGUMENT={int(self.prev_state_argument)}"]
        else:
            flags.append(f"-DPREEMPTED_STATE={self.preempted_state:#x}")
        return tuple(flags)


def _classic_settings(**common) -> ProgramSettings:
    root = tracefs.tracefs_root()
    tracefs.check_tracepoints(root)
    return ProgramSettings(preempted_state=tracefs.read_preempted_state_bit(root), **common)


def breakdown_possible(config: Config) -> bool:
    """Tell whether the per-cgroup breakdown can run: asked for, and cgroup v2 mounted."""
    if config.max_services == 0:
        return False
    if cgroups.v2_mount() is None:
        log.info("cgroup v2 is not mounted (cgroup v1 only): the per-service breakdown is off; "
                 "the host series are unchanged")
        return False
    return True


def compile_settings(config: Config) -> ProgramSettings:
    """Use raw tracepoints where the kernel's BTF describes task_struct, else classic ones.

    Both time the same wait with the same handlers; raw ones cost less. ``config.tracepoints``
    may force either kind; a forced kind that cannot work here is an AgentError naming why.
    """
    per_cgroup = breakdown_possible(config)
    common = {"per_cgroup": per_cgroup, "culprits": per_cgroup and config.max_culprits > 0}
    if config.tracepoints == "classic":
        return _classic_settings(**common)
    try:
        return ProgramSettings(raw=btf.read_raw_layout(), **common)
    except (OSError, ValueError, LookupError) as error:
        why = f"{btf.VMLINUX}: {error}"
    if config.tracepoints == "raw":
        raise AgentError(f"raw tracepoints need the kernel's BTF ({why}): use --tracepoints "
                         f"auto or classic", EX_UNAVAILABLE)
    log.info("using classic tracepoints: cannot use raw ones (%s)", why)
    return _classic_settings(**common)


def render_source(settings: ProgramSettings) -> str:
    """Return the C text that would be compiled, with its flags, for --dump-bpf."""
    folder, tree = source_dir(), settings.include_tree
    flags = " ".join(settings.cflags(folder))
    parts = [f"/* compile flags: {flags} */",
             f"/* include tree (BCC_KERNEL_SOURCE): {tree}; no kernel headers are read */"]
    files = [*include_tree_files(tree), folder / HEADER_NAME,
             folder / SOURCE_NAME]
    for path in files:
        parts.append(f"/* ---- {path} ---- */")
        parts.append(path.read_text())
    return "\n".join(parts)
