"""Phase 5: the agent's BPF map memory computed from the map definitions, beside what
bpftool reads while it runs.

The definitions are read from bpf/runqlat.c itself, run through the C preprocessor with the
flags the agent compiles it with for each build (host-only, the default, culprit attribution
on): every map declaration (BPF_HASH, BPF_TABLE, BPF_ARRAY, BPF_PERCPU_ARRAY) and the size of
every structure its keys and values are. No size is copied here from the source by hand.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common import Check

from gsender_bcc import btf, program

# Kernel structure sizes (bytes) used below, as in Linux 6.x on x86-64; read from the running
# kernel's BTF where bpftool can.
KERNEL_STRUCTS = {"htab_elem": 48, "bucket": 16, "bpf_htab": 832, "bpf_array": 312,
                  "bpf_lru_locallist": 32, "pcpu_freelist_head": 16}
HASHTAB_MAP_LOCK_COUNT = 8  # per-CPU int counters of a hash map (before rqspinlock, 6.15)

# The agent's builds whose maps are computed: (tracer key, label, ProgramSettings keywords).
# The bench runs the agent on raw tracepoints, as it runs on this kernel.
BUILDS = [("host_only", "host-only (--max-services 0)", {"per_cgroup": False}),
          ("breakdown", "breakdown without attribution (--max-culprits 0)", {"per_cgroup": True}),
          ("gsender", "default (breakdown and culprit attribution on)",
           {"per_cgroup": True, "culprits": True})]
LIMITS_MIB = {"breakdown": 16, "gsender": 24}  # attribution on stays within 24 MiB

SCALARS = {"u64": 8}  # the only field type the program's map structures use (no padding)


@dataclass(frozen=True)
class MapDefinition:
    name: str
    kind: str        # as BCC names the map type: hash, lru_hash, array, percpu_array
    key: int         # bytes
    value: int       # bytes
    value_type: str
    entries: int


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


def build_settings(**keywords) -> program.ProgramSettings:
    # The offset only tells the program where task_struct's state is: no map depends on it.
    # The map of start times at its bound, whatever this host's pid_max.
    keywords.setdefault("start_entries", program.MAX_START_ENTRIES)
    return program.ProgramSettings(raw=btf.RawLayout(state_offset=0), **keywords)


def preprocessed(settings: program.ProgramSettings) -> str:
    """Return bpf/runqlat.c after the C preprocessor, as the agent compiles it with settings."""
    folder = program.source_dir()
    return subprocess.run(["cpp", "-P", *settings.cflags(folder),
                           str(folder / program.SOURCE_NAME)],
                          capture_output=True, text=True, check=True).stdout


_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{([^{}]*)\}\s*;")
_FIELD = re.compile(r"^(struct\s+\w+|\w+)\s+\w+\s*(?:\[\s*([\d\s+*/()-]+?)\s*\])?$")


def array_length(expression: str) -> int:
    """The length of an array field: a number, or integer arithmetic the preprocessor left
    (``16 / 8 + 1``), evaluated as C does (integer division)."""
    if not re.fullmatch(r"[\d\s+*/()-]+", expression):
        raise ValueError(f"map memory: cannot evaluate the array length {expression!r}")
    return int(eval(expression.replace("/", "//"), {"__builtins__": {}}))  # digits and + - * /


def type_size(name: str, structs: Dict[str, int]) -> int:
    name = " ".join(name.split())
    if name in SCALARS:
        return SCALARS[name]
    if name.startswith("struct ") and name[7:] in structs:
        return structs[name[7:]]
    raise ValueError(f"map memory: no size known for {name!r} (only u64 and structures of "
                     f"them are summed without padding): extend SCALARS")


def struct_sizes(text: str) -> Dict[str, int]:
    """Return {structure: bytes} for the structures defined in preprocessed C text."""
    structs: Dict[str, int] = {}
    for name, body in _STRUCT.findall(text):
        size = 0
        for declaration in filter(None, (part.strip() for part in body.split(";"))):
            match = _FIELD.match(" ".join(declaration.split()))
            if not match:
                raise ValueError(f"map memory: cannot read the field {declaration!r} of "
                                 f"struct {name}")
            size += type_size(match.group(1), structs) * array_length(match.group(2) or "1")
        structs[name] = size
    return structs


_ARGS = r"\(\s*([^()]*?)\s*\)\s*;"
_DECLARATIONS = [  # (pattern, the map type, and where its name, key, value, entries are)
    (re.compile(r"\bBPF_TABLE" + _ARGS), None, (3, 1, 2, 4)),
    (re.compile(r"\bBPF_HASH" + _ARGS), "hash", (0, 1, 2, 3)),
    (re.compile(r"\bBPF_PERCPU_ARRAY" + _ARGS), "percpu_array", (0, None, 1, 2)),
    (re.compile(r"\bBPF_ARRAY" + _ARGS), "array", (0, None, 1, 2)),
]
ARRAY_KEY = 4  # an array's key is its u32 index


def map_definitions(text: str) -> List[MapDefinition]:
    """Return the maps declared in preprocessed C text, in the order declared."""
    structs = struct_sizes(text)
    found: List[Tuple[int, MapDefinition]] = []
    for pattern, kind, (name, key, value, entries) in _DECLARATIONS:
        for match in pattern.finditer(text):
            args = [a.strip() for a in match.group(1).split(",")]
            map_kind = kind or args[0].strip('"')
            found.append((match.start(), MapDefinition(
                name=args[name], kind=map_kind,
                key=ARRAY_KEY if key is None else type_size(args[key], structs),
                value=type_size(args[value], structs), value_type=" ".join(args[value].split()),
                entries=int(args[entries]))))
    return [definition for _, definition in sorted(found, key=lambda item: item[0])]


def round8(n: int) -> int:
    return (n + 7) // 8 * 8


def pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def map_bytes(m: MapDefinition, cpus: int, sizes: Dict[str, int],
              lock_counters: bool = True) -> Tuple[int, int, str]:
    """Return (bytes the kernel counts in bytes_memlock, bytes in all, how) for one map.

    The kernel's figure (htab_map_mem_usage, array_map_mem_usage) leaves out a few per-CPU
    structures; "in all" adds them. Hash maps are preallocated (BCC's default flags), with
    one LRU list shared by all CPUs for lru_hash.
    """
    what = f"{m.value} B {m.value_type}"
    if m.kind in ("hash", "lru_hash"):
        elem, bucket = sizes["htab_elem"], sizes["bucket"]
        element = elem + round8(m.key) + round8(m.value)
        counted = (sizes["bpf_htab"] + bucket * pow2(m.entries)
                   + (4 * HASHTAB_MAP_LOCK_COUNT * cpus if lock_counters else 0))
        parts = f"({elem} B htab_elem + {m.key} B key + {what})"
        buckets = f"{pow2(m.entries)} buckets x {bucket} B"
        if m.kind == "lru_hash":
            counted += element * m.entries
            extra = sizes["bpf_lru_locallist"] * cpus
            return counted, counted + extra, (
                f"{m.entries} x {parts} + {buckets}; LRU lists of "
                f"{sizes['bpf_lru_locallist']} B per CPU")
        # One spare element per CPU for updates, and a pointer to it per CPU.
        counted += element * (m.entries + cpus) + 8 * cpus
        extra = sizes["pcpu_freelist_head"] * cpus
        return counted, counted + extra, (
            f"({m.entries} + 1 per CPU) x {parts} + {buckets}, shared by all CPUs; free-list "
            f"heads of {sizes['pcpu_freelist_head']} B per CPU")
    if m.kind == "percpu_array":
        counted = sizes["bpf_array"] + 8 * m.entries + round8(m.value) * m.entries * cpus
        return counted, counted, f"{m.entries} x {what} per CPU"
    if m.kind == "array":
        counted = sizes["bpf_array"] + round8(m.value) * m.entries
        return counted, counted, f"{m.entries} x {what}"
    raise ValueError(f"map memory: map {m.name} is a {m.kind}, whose memory is not worked out "
                     f"here")


def agent_maps(definitions: List[MapDefinition], cpus: int, sizes: Dict[str, int],
               lock_counters: bool = True) -> List[Tuple[str, int, int, str]]:
    """Return (map, bytes the kernel counts, bytes in all, how) per map of one build."""
    return [(m.name, *map_bytes(m, cpus, sizes, lock_counters)) for m in definitions]


def possible_cpus() -> int:
    count = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def fmt_mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.3f} MiB"


def measured_for(name: str, measured: Dict[str, int]) -> Optional[int]:
    """bytes_memlock of a map as bpftool names it (cut to 15 characters)."""
    return next((v for k, v in measured.items() if name.startswith(k) or k.startswith(name)),
                None)


def lock_counters_here(definitions: List[MapDefinition], here: int, sizes: Dict[str, int],
                       measured: Dict[str, int]) -> bool:
    """Kernels with rqspinlock (6.15 and later) no longer have the per-CPU lock counters: the
    variant that matches what this kernel reports (with them if nothing was measured)."""
    return next((flag for flag in (True, False) if measured and sum(
        r[1] for r in agent_maps(definitions, here, sizes, flag)) == sum(measured.values())),
        True)


def build_table(label: str, definitions: List[MapDefinition], measured: Dict[str, int],
                here: int, sizes: Dict[str, int], source: str) -> Tuple[List[str], int]:
    """The table of one build's maps, and its total at 256 CPUs (in all)."""
    lock_counters = lock_counters_here(definitions, here, sizes, measured)
    computed_here = agent_maps(definitions, here, sizes, lock_counters)
    computed_256 = agent_maps(definitions, 256, sizes, lock_counters=True)
    lines = ["", f"BPF maps of gsender-bcc {label}, computed from the map definitions "
                 f"(structure sizes from {source}) and read with `bpftool map show --json` "
                 f"while it ran (bytes_memlock):", "",
             f"| map | computed, {here} CPUs (as the kernel counts) | measured here | "
             f"computed, 256 CPUs, in all | how |", "|---|---:|---:|---:|---|"]
    for (name, counted, _, how), (_, _, all_256, _) in zip(computed_here, computed_256):
        lines.append(f"| {name} | {counted / 2**20:.3f} MiB | "
                     f"{fmt_mib(measured_for(name, measured))} | {all_256 / 2**20:.2f} MiB | "
                     f"{how} |")
    total_256 = sum(r[2] for r in computed_256)
    lines.append(f"| total | {sum(r[1] for r in computed_here) / 2**20:.3f} MiB | "
                 f"{fmt_mib(sum(measured.values()) if measured else None)} | "
                 f"{total_256 / 2**20:.2f} MiB | |")
    return lines, total_256


def map_memory_lines(measured: Dict[str, Dict[str, int]], checks: List[Check]) -> List[str]:
    """The map memory part of the report's memory section; its targets are added to checks.

    ``measured`` holds, per tracer key (host_only, breakdown, gsender), the bytes_memlock of
    each map read while that build of the agent ran, where it ran."""
    lines: List[str] = []
    sizes, source = kernel_struct_sizes()
    here = possible_cpus()
    texts = {key: preprocessed(build_settings(**keywords)) for key, _, keywords in BUILDS}
    structs = {name: size for text in texts.values() for name, size in struct_sizes(text).items()}
    lines += ["", "Structures the maps hold, as bpf/runqlat.c defines them (after the "
                  "preprocessor, with each build's flags): " + ", ".join(
                      f"struct {name} {size} B" for name, size in structs.items()) + "."]
    totals: Dict[str, int] = {}
    for key, label, _ in BUILDS:
        definitions = map_definitions(texts[key])
        if key == "host_only":
            totals[key] = sum(r[2] for r in agent_maps(definitions, 256, sizes))
            continue
        table, totals[key] = build_table(label, definitions, measured.get(key, {}), here, sizes,
                                         source)
        lines += table
    host = measured.get("host_only")
    lines += ["", f"Host-only mode has start_times and stats only: "
                  f"{totals['host_only'] / 2**20:.2f} MiB at 256 CPUs computed, "
                  f"{fmt_mib(sum(host.values()) if host else None)} measured here. The programs' "
                  f"own images and the verifier's memory are not maps and are left out; so is "
                  f"the per-CPU allocator's slack."]
    checks.append(Check("BPF map memory at 256 CPUs, default (attribution on; computed), MiB",
                        [totals["gsender"] / 2**20], LIMITS_MIB["gsender"], " MiB"))
    checks.append(Check("BPF map memory at 256 CPUs, attribution off (computed), MiB",
                        [totals["breakdown"] / 2**20], LIMITS_MIB["breakdown"], " MiB"))
    return lines
