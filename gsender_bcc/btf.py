"""Read the few facts we need from the kernel's BTF (/sys/kernel/btf/vmlinux).

Raw tracepoints hand the program task_struct pointers, not fields. The offsets
of the fields it reads, and the argument list of sched_switch, come from the
running kernel's own type information, so they are right whatever headers the
host has installed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = 8, 13, 14, 15
KIND_DECL_TAG, KIND_ENUM64 = 17, 19
# Bytes that follow the 12-byte common header: fixed, or per vlen item.
_FIXED_EXTRA = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
_PER_ITEM = {KIND_STRUCT: 12, KIND_UNION: 12, KIND_ENUM: 8, KIND_FUNC_PROTO: 8,
             KIND_DATASEC: 12, KIND_ENUM64: 12}


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int
    kflag: bool
    # members (name_off, type, offset), params (name_off, type), ...
    items: Tuple[Tuple[int, ...], ...]


# Kinds with nothing after the common header: PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT,
# FUNC, FLOAT, TYPE_TAG. Any kind not listed here or above is refused, never skipped blindly.
_KNOWN_KINDS = frozenset({2, 7, 8, 9, 10, 11, 12, 16, 18}) | set(_FIXED_EXTRA) | set(_PER_ITEM)
_HEADER = struct.Struct("<III")
_EXTRA = [_FIXED_EXTRA.get(kind, 0) for kind in range(32)]
_ITEM = [_PER_ITEM.get(kind, 0) for kind in range(32)]


class Btf:
    """One BTF blob: every type's position, decoded only when asked for."""

    def __init__(self, blob: bytes):
        if len(blob) < 24:
            raise ValueError("BTF data is too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != MAGIC:
            raise ValueError(f"not little-endian BTF data (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        if hdr_len + max(type_off + type_len, str_off + str_len) > len(blob):
            raise ValueError("BTF header points past the end of the data")
        self._blob = blob
        self._strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
        self._positions = [0]  # type id 0 is void
        self._by_name: Dict[Tuple[int, int], int] = {}
        unpack, extra, item = _HEADER.unpack_from, _EXTRA, _ITEM
        positions, by_name = self._positions, self._by_name
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            if pos + 12 > end:
                raise ValueError(f"BTF type {len(positions)} is cut short")
            name_off, info, _ = unpack(blob, pos)
            kind = (info >> 24) & 0x1F
            if kind not in _KNOWN_KINDS:
                raise ValueError(f"BTF type {len(positions)} has kind {kind}, which this reader "
                                 f"does not know; it cannot find the fields it needs")
            if name_off:
                by_name.setdefault((kind, name_off), len(positions))
            positions.append(pos)
            pos += 12 + extra[kind] + item[kind] * (info & 0xFFFF)

    def string(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _string_offset(self, name: str) -> int:
        needle = b"\0" + name.encode() + b"\0"
        found = self._strings.find(needle)
        if found < 0:
            raise LookupError(f"BTF has no {name}")
        return found + 1

    def type(self, type_id: int) -> BtfType:
        pos = self._positions[type_id]
        name_off, info, size_or_type = _HEADER.unpack_from(self._blob, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        width = _ITEM[kind]
        fmt = "<" + "I" * (width // 4)
        items = tuple(struct.unpack_from(fmt, self._blob, pos + 12 + i * width)
                      for i in range(vlen)) if width else ()
        return BtfType(kind, self.string(name_off), size_or_type, bool(info >> 31), items)

    def find(self, kind: int, name: str) -> BtfType:
        try:
            return self.type(self._by_name[(kind, self._string_offset(name))])
        except KeyError:
            raise LookupError(f"BTF has no {name}") from None

    def member_offset(self, struct_name: str, member: str) -> Tuple[int, int]:
        """Return the byte offset and byte size of a struct's member."""
        found = self.find(KIND_STRUCT, struct_name)
        for name_off, type_id, offset in found.items:
            if self.string(name_off) == member:
                bit_offset = offset & 0xFFFFFF if found.kflag else offset
                if bit_offset % 8:
                    raise LookupError(f"{struct_name}.{member} is a bit field")
                return bit_offset // 8, self.size_of(type_id)
        raise LookupError(f"struct {struct_name} has no member {member}")

    def size_of(self, type_id: int) -> int:
        for _ in range(32):  # typedef, const and volatile chains are short
            t = self.type(type_id)
            if t.kind in (KIND_INT, KIND_ENUM, KIND_STRUCT, KIND_UNION, KIND_ENUM64):
                return t.size_or_type
            if t.kind == KIND_PTR:
                return 8
            type_id = t.size_or_type
        raise LookupError("type chain too long")

    def tracepoint_argument_sizes(self, event: str) -> List[int]:
        """Return the byte size of each argument of a raw tracepoint (btf_trace_<event>)."""
        pointer = self.type(self.find(KIND_TYPEDEF, f"btf_trace_{event}").size_or_type)
        proto = self.type(pointer.size_or_type)
        if pointer.kind != KIND_PTR or proto.kind != KIND_FUNC_PROTO:
            raise LookupError(f"btf_trace_{event} is not a function pointer")
        return [self.size_of(type_id) for _, type_id in proto.items[1:]]  # after void *__data


@dataclass(frozen=True)
class RawLayout:
    """What the raw-tracepoint program needs to know about this kernel."""

    task_pid_offset: int
    switch_has_prev_state: bool
    task_state_offset: int
    task_state_size: int


def raw_layout(btf: Btf) -> RawLayout:
    """Work out the raw-tracepoint layout, or raise LookupError saying what is missing."""
    pid_offset, pid_size = btf.member_offset("task_struct", "pid")
    if pid_size != 4:
        raise LookupError(f"task_struct.pid is {pid_size} bytes, not 4")
    # sched_switch is (bool preempt, task *prev, task *next) and, since Linux 5.18
    # (commit fa2c3254d7cf), (..., unsigned int prev_state); sched_wakeup[_new] is (task *p).
    switch = btf.tracepoint_argument_sizes("sched_switch")
    if switch[:3] != [1, 8, 8] or switch[3:] not in ([], [4]):
        raise LookupError(f"sched_switch's argument sizes are {switch}, not 1, 8, 8[, 4]")
    for wakeup in ("sched_wakeup", "sched_wakeup_new"):
        if btf.tracepoint_argument_sizes(wakeup) != [8]:
            raise LookupError(f"{wakeup} does not take one task pointer")
    try:  # renamed from "state" (a long) in Linux 5.14, commit 2f064a59a11f
        state_offset, state_size = btf.member_offset("task_struct", "__state")
    except LookupError:
        state_offset, state_size = btf.member_offset("task_struct", "state")
    return RawLayout(pid_offset, len(switch) == 4, state_offset, state_size)


def read_raw_layout(path: Path = VMLINUX) -> RawLayout:
    return raw_layout(Btf(path.read_bytes()))
