"""Phase 5: the agent's BPF map memory computed from the map definitions, beside what
bpftool reads while it runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common import Check

from gsender_bcc import program

# Kernel structure sizes (bytes) used below, as in Linux 6.x on x86-64; read from the running
# kernel's BTF where bpftool can.
KERNEL_STRUCTS = {"htab_elem": 48, "bucket": 16, "bpf_htab": 832, "bpf_array": 312,
                  "bpf_lru_locallist": 32, "pcpu_freelist_head": 16}
HASHTAB_MAP_LOCK_COUNT = 8  # per-CPU int counters of a hash map (before rqspinlock, 6.15)


def kernel_struct_sizes() -> Tuple[Dict[str, int], str]:
    sizes, source = dict(KERNEL_STRUCTS), "Linux 6.x x86-64 defaults"
    try:
        dump = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux",
                               "format", "raw"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sizes, source
    found = dict(re.findall(r"STRUCT '(\w+)' size=(\d+)", dump))
    for name in sizes:
        if name in found:
            sizes[name] = int(found[name])
    return sizes, "the running kernel's BTF"


def round8(n: int) -> int:
    return (n + 7) // 8 * 8


def pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def agent_maps(cpus: int, sizes: Dict[str, int], per_cgroup: bool = True,
               lock_counters: bool = True) -> List[Tuple[str, int, int, str]]:
    """Return (map, bytes the kernel counts in bytes_memlock, bytes in all, how) per map.

    The kernel's figure (htab_map_mem_usage, array_map_mem_usage) leaves out a few per-CPU
    structures; "in all" adds them.
    """
    slots = program.header_constants(
        (program.source_dir() / program.HEADER_NAME).read_text())["HIST_SLOTS"]
    stats_value = 8 * (slots + 4)   # struct latency_stats
    cgroup_value = 8 * (slots + 1)  # struct cgroup_stats
    elem, bucket = sizes["htab_elem"], sizes["bucket"]
    locks = 4 * HASHTAB_MAP_LOCK_COUNT * cpus if lock_counters else 0
    rows = []
    # last_seen: LRU hash u64 -> struct dispatches (two u64), preallocated, one LRU shared
    # by all CPUs (raw tracepoints, the default here).
    entries = program.DEFAULT_START_ENTRIES
    counted = sizes["bpf_htab"] + bucket * pow2(entries) + locks + (elem + 8 + 16) * entries
    rows.append(("last_seen", counted, counted + sizes["bpf_lru_locallist"] * cpus,
                 f"{entries} x ({elem} B htab_elem + 8 B key + 16 B value) + {pow2(entries)} "
                 f"buckets x {bucket} B; LRU lists of {sizes['bpf_lru_locallist']} B per CPU"))
    # stats: per-CPU array of one struct latency_stats.
    counted = sizes["bpf_array"] + 8 + round8(stats_value) * cpus
    rows.append(("stats", counted, counted,
                 f"{round8(stats_value)} B struct latency_stats per CPU"))
    if per_cgroup:
        # cgroup_counts: preallocated hash, plus one spare element per CPU for updates.
        entries = program.DEFAULT_MAX_CGROUPS
        element = elem + 8 + round8(cgroup_value)
        counted = (sizes["bpf_htab"] + bucket * pow2(entries) + locks
                   + element * (entries + cpus) + 8 * cpus)
        rows.append(("cgroup_counts", counted, counted + sizes["pcpu_freelist_head"] * cpus,
                     f"({entries} + 1 per CPU) x ({elem} B htab_elem + 8 B key + "
                     f"{round8(cgroup_value)} B value), shared by all CPUs; free-list heads of "
                     f"{sizes['pcpu_freelist_head']} B per CPU"))
        counted = sizes["bpf_array"] + round8(cgroup_value)
        rows.append(("zero_cgroup_stats", counted, counted, "one struct cgroup_stats"))
    return rows


def possible_cpus() -> int:
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def fmt_mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.3f} MiB"


def map_memory_lines(idle: list, checks: List[Check]) -> List[str]:
    """The map memory part of the report's memory section; its target is added to checks."""
    lines: List[str] = []
    sizes, source = kernel_struct_sizes()
    here = possible_cpus()
    measured = next((run["gsender"].maps for run in reversed(idle)
                     if run["gsender"].maps), {})
    measured_host = next((run["host_only"].maps for run in reversed(idle)
                          if run["host_only"].maps), {})
    # Kernels with rqspinlock (6.15 and later) no longer have the per-CPU lock counters: take
    # the variant that matches what this kernel reports, and count them at 256 CPUs anyway.
    lock_counters = next((flag for flag in (True, False) if measured and sum(
        r[1] for r in agent_maps(here, sizes, lock_counters=flag)) == sum(measured.values())),
        True)
    computed_here = agent_maps(here, sizes, lock_counters=lock_counters)
    computed_256 = agent_maps(256, sizes, lock_counters=True)
    lines += ["", f"BPF maps of gsender-bcc default, computed from the map definitions "
                     f"(structure sizes from {source}) and read with `bpftool map show --json` "
                     f"while it ran (bytes_memlock):", "",
                     f"| map | computed, {here} CPUs (as the kernel counts) | measured here | "
                     f"computed, 256 CPUs, in all | how |", "|---|---:|---:|---:|---|"]
    for (name, counted, _, how), (_, _, all_256, _) in zip(computed_here, computed_256):
        seen = next((v for k, v in measured.items() if name.startswith(k) or k.startswith(name)),
                    None)
        lines.append(f"| {name} | {counted / 2**20:.3f} MiB | "
                            f"{fmt_mib(seen)} | {all_256 / 2**20:.2f} MiB | {how} |")
    total_256 = sum(r[2] for r in computed_256)
    host_256 = sum(r[2] for r in agent_maps(256, sizes, per_cgroup=False))
    lines.append(f"| total | {sum(r[1] for r in computed_here) / 2**20:.3f} MiB | "
                        f"{fmt_mib(sum(measured.values()) if measured else None)} | "
                        f"{total_256 / 2**20:.2f} MiB | |")
    lines += ["", f"Host-only mode has last_seen and stats only: "
                     f"{host_256 / 2**20:.2f} MiB at 256 CPUs computed, "
                     f"{fmt_mib(sum(measured_host.values()) if measured_host else None)} measured "
                     f"here. The programs' own images and the verifier's memory are not maps "
                     f"and are left out; so is the per-CPU allocator's slack."]
    checks.append(Check("BPF map memory at 256 CPUs (computed), MiB", [total_256 / 2**20], 16,
                        " MiB"))
    return lines
