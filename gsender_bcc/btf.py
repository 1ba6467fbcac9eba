"""Read the few facts we need from the kernel's BTF (/sys/kernel/btf/vmlinux).

Raw tracepoints hand the program task_struct pointers, not fields. The offset
of the fields it reads, and the argument list of sched_switch, come from the
running kernel's own type information, so they are right whatever headers the
host has installed.
"""

from __future__ import annotations

import bisect
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

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
_ITEM = [_PER_ITEM.get(kind, 0) for kind in range(32)]
# In 4-byte words: a record's length before its items, or None for a kind not known.
_HEAD_WORDS = [3 + _FIXED_EXTRA.get(kind, 0) // 4 if kind in _KNOWN_KINDS else None
               for kind in range(32)]
_ITEM_WORDS = [width // 4 for width in _ITEM]


class _Positions:
    """Where each type starts, in words from the first (type id 0, void, is at -1), found by
    walking the records in order only as far as a lookup needs: the kernel has over 100000
    types, and the few read here come early on the kernels seen so far. A record of a kind not
    known, or running past the end, is refused when the walk reaches it."""

    def __init__(self, words: memoryview):
        self.starts = [-1]
        self._words, self._at = words, 0

    def _walk(self, done) -> None:
        """Walk on until done() or the end; each step does no more than it must."""
        starts, words, at, end = self.starts, self._words, self._at, len(self._words)
        append, head_words, item_words = starts.append, _HEAD_WORDS, _ITEM_WORDS
        while at < end and not done():
            for _ in range(256):  # done() is asked between batches, not at every record
                if at + 3 > end:
                    raise ValueError(f"BTF type {len(starts)} is cut short")
                info = words[at + 1]
                kind = (info >> 24) & 0x1F
                head = head_words[kind]
                if head is None:
                    raise ValueError(f"BTF type {len(starts)} has kind {kind}, which this "
                                     f"reader does not know; it cannot find the fields it needs")
                append(at)
                at += head + item_words[kind] * (info & 0xFFFF)
                if at >= end:
                    break
            self._at = at
        if at > end:
            raise ValueError(f"BTF type {len(starts) - 1} is cut short")

    def of(self, type_id: int) -> int:
        """Where type_id starts; LookupError if the BTF has no such type."""
        self._walk(lambda: len(self.starts) > type_id)
        if type_id >= len(self.starts):
            raise LookupError(f"BTF has no type {type_id}")
        return self.starts[type_id]

    def id_at(self, word: int) -> int:
        """The id of the type that starts at word, or -1 if none does."""
        self._walk(lambda: self.starts[-1] >= word)
        index = bisect.bisect_left(self.starts, word)
        return index if index < len(self.starts) and self.starts[index] == word else -1

    def count(self) -> int:
        """How many types there are, void included: the whole walk."""
        self._walk(lambda: False)
        return len(self.starts)


class Btf:
    """One BTF blob: its types found and decoded only when asked for."""

    def __init__(self, blob: bytes):
        if len(blob) < 24:
            raise ValueError("BTF data is too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != MAGIC:
            raise ValueError(f"not little-endian BTF data (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        if hdr_len + max(type_off + type_len, str_off + str_len) > len(blob):
            raise ValueError("BTF header points past the end of the data")
        if sys.byteorder != "little" or (hdr_len + type_off) % 4 or type_len % 4:
            raise ValueError("BTF types are not little-endian 4-byte words on this machine")
        self._blob = blob
        self._strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
        self._types_at, self._types_end = hdr_len + type_off, hdr_len + type_off + type_len
        self._positions = _Positions(memoryview(blob)[self._types_at:self._types_end].cast("I"))

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
        pos = self._types_at + 4 * self._positions.of(type_id)
        name_off, info, size_or_type = _HEADER.unpack_from(self._blob, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        width = _ITEM[kind]
        fmt = "<" + "I" * (width // 4)
        items = tuple(struct.unpack_from(fmt, self._blob, pos + 12 + i * width)
                      for i in range(vlen)) if width else ()
        return BtfType(kind, self.string(name_off), size_or_type, bool(info >> 31), items)

    def find(self, kind: int, name: str) -> BtfType:
        """Return the first type of this kind and name.

        Its record starts with the name's string offset: search the bytes for that, and keep
        the hits that are the start of a type of the right kind.
        """
        needle = struct.pack("<I", self._string_offset(name))
        at, end = self._types_at, self._types_end
        hit = self._blob.find(needle, at, end)
        while hit >= 0:
            index = self._positions.id_at((hit - at) // 4) if (hit - at) % 4 == 0 else -1
            if index >= 0:
                found = self.type(index)
                if found.kind == kind:
                    return found
            hit = self._blob.find(needle, hit + 1, end)
        raise LookupError(f"BTF has no {name}")

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

    def count(self) -> int:
        """How many types the blob holds, void included (a walk over all of them)."""
        return self._positions.count()

    def tracepoint_argument_sizes(self, event: str) -> List[int]:
        """Return the byte size of each argument of a raw tracepoint (btf_trace_<event>)."""
        pointer = self.type(self.find(KIND_TYPEDEF, f"btf_trace_{event}").size_or_type)
        proto = self.type(pointer.size_or_type)
        if pointer.kind != KIND_PTR or proto.kind != KIND_FUNC_PROTO:
            raise LookupError(f"btf_trace_{event} is not a function pointer")
        return [self.size_of(type_id) for _, type_id in proto.items[1:]]  # after void *__data


@dataclass(frozen=True)
class RawLayout:
    """What the raw-tracepoint program needs to know about this kernel's task_struct."""

    # Where the task's own state is (TASK_RUNNING is 0), and its width in bytes: 4 for
    # ``unsigned int __state`` (Linux 5.14 and later), 8 for ``long state`` before.
    state_offset: int
    state_size: int = 4
    # Whether sched_switch hands over prev's state as its fourth argument (Linux 5.18 and
    # later; ProgramSettings says where it can be trusted).
    switch_state_argument: bool = False


# Each hook's argument sizes after ``void *__data``: the program reads them as integers.
# sched_switch gained ``unsigned int prev_state`` in Linux 5.18.
RAW_ARGUMENTS = {
    "sched_wakeup": ([8],),
    "sched_wakeup_new": ([8],),
    "sched_switch": ([1, 8, 8], [1, 8, 8, 4]),
    "sched_process_free": ([8],),
    "sched_migrate_task": ([8, 4],),
}


def raw_layout(btf: Btf) -> RawLayout:
    """Work out the raw-tracepoint layout, or raise LookupError saying what is missing."""
    found = {}
    for event, accepted in RAW_ARGUMENTS.items():
        found[event] = btf.tracepoint_argument_sizes(event)
        if found[event] not in accepted:
            raise LookupError(f"{event}'s argument sizes are {found[event]}, not "
                              f"{' or '.join(map(str, accepted))}")
    for member in ("__state", "state"):
        try:
            offset, size = btf.member_offset("task_struct", member)
        except LookupError:
            continue
        if size not in (4, 8):
            raise LookupError(f"task_struct.{member} is {size} bytes, not 4 or 8")
        with_state = RAW_ARGUMENTS["sched_switch"][1]  # the hook's sizes since 5.18
        return RawLayout(offset, size, found["sched_switch"] == with_state)
    raise LookupError("struct task_struct has no member __state or state")


def read_raw_layout(path: Path = VMLINUX) -> RawLayout:
    return raw_layout(Btf(path.read_bytes()))
