"""The BTF reader against small BTF blobs built here, byte by byte, and against this kernel's."""

import struct

import pytest

from gsender_bcc.btf import VMLINUX, Btf, RawLayout, raw_layout

INT, PTR, STRUCT, TYPEDEF, FUNC_PROTO = 1, 2, 4, 8, 13


class BlobBuilder:
    """Assemble a little-endian BTF blob: types are added in order, ids start at 1."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def name(self, text):
        if not text:
            return 0
        known = self.strings.find(b"\0" + text.encode() + b"\0")
        if known >= 0:  # each string once, as in the kernel's deduplicated BTF
            return known + 1
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(self, kind, name, size_or_type, items=(), extra=b"", vlen=None):
        info = (kind << 24) | (len(items) if vlen is None else vlen)
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        for item in items:
            self.types += struct.pack("<" + "I" * len(item), *item)
        self.count += 1
        return self.count

    def integer(self, name, size):
        return self.add(INT, name, size, extra=struct.pack("<I", size * 8))

    def struct(self, name, size, members):
        return self.add(STRUCT, name, size,
                        [(self.name(m), t, bits) for m, t, bits in members])

    def tracepoint(self, event, argument_types):
        void_pointer = self.add(PTR, "", 0)
        proto = self.add(FUNC_PROTO, "", 0, [(0, void_pointer)] +
                         [(0, t) for t in argument_types])
        return self.add(TYPEDEF, f"btf_trace_{event}", self.add(PTR, "", proto))

    def blob(self):
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                             len(self.strings))
        return header + self.types + self.strings


def kernel_like(switch_has_state=True, state=("__state", 4), free_argument="task", first=None):
    """A blob with what raw_layout reads: the five hooks and task_struct's state, at byte 24;
    ``first(builder)`` adds types before them."""
    b = BlobBuilder()
    if first is not None:
        first(b)
    u8, u32, s64 = b.integer("_Bool", 1), b.integer("unsigned int", 4), b.integer("long", 8)
    state_type = {4: u32, 8: s64, 2: b.integer("short", 2)}[state[1]]
    task = b.struct("task_struct", 4096, [("thread_info", s64, 0), (state[0], state_type, 192),
                                          ("pid", b.integer("int", 4), 8 * 2456)])
    task_pointer = b.add(PTR, "", task)
    b.tracepoint("sched_wakeup", [task_pointer])
    b.tracepoint("sched_wakeup_new", [task_pointer])
    b.tracepoint("sched_switch", [u8, task_pointer, task_pointer] + ([u32] if switch_has_state else []))
    b.tracepoint("sched_process_free", [task_pointer if free_argument == "task" else u32])
    b.tracepoint("sched_migrate_task", [task_pointer, b.integer("int", 4)])
    return b


class TestSyntheticBlobs:
    def test_a_current_kernel_layout(self):
        assert raw_layout(Btf(kernel_like().blob())) == RawLayout(state_offset=24, state_size=4,
                                                                  switch_state_argument=True)

    def test_a_kernel_before_5_14_has_a_long_state(self):
        assert raw_layout(Btf(kernel_like(state=("state", 8)).blob())) == RawLayout(24, 8, True)

    def test_a_kernel_before_5_18_has_no_prev_state_argument(self):
        assert raw_layout(Btf(kernel_like(switch_has_state=False).blob())) == RawLayout(24, 4)

    def test_a_state_of_another_width_is_refused(self):
        with pytest.raises(LookupError, match="task_struct.__state is 2 bytes, not 4 or 8"):
            raw_layout(Btf(kernel_like(state=("__state", 2)).blob()))

    def test_sched_process_free_must_take_a_task(self):
        with pytest.raises(LookupError, match=r"sched_process_free's argument sizes are \[4\]"):
            raw_layout(Btf(kernel_like(free_argument="int").blob()))

    def test_an_unknown_kind_before_what_is_read_is_refused_by_name(self):
        b = kernel_like(first=lambda b: b.add(25, "future", 0))
        with pytest.raises(ValueError, match=r"BTF type 1 has kind 25, which this reader does "
                                             r"not know"):
            raw_layout(Btf(b.blob()))

    def test_types_after_what_is_read_are_never_walked(self):
        # A kind this reader does not know, then a record running past the end: both well
        # after what raw_layout reads (the walk reads ahead a few hundred records at a time),
        # so it reads the layout; walking on to them refuses them.
        def far(b):
            for n in range(1000):
                b.integer(f"filler{n}", 4)
            return b

        b = far(kernel_like())
        b.add(25, "future", 0)
        assert raw_layout(Btf(b.blob())) == RawLayout(24, 4, True)
        with pytest.raises(ValueError, match=r"BTF type 1029 has kind 25"):
            Btf(b.blob()).find(STRUCT, "future")
        cut = far(kernel_like())
        cut.add(STRUCT, "cut", 8, vlen=3)  # three members announced, none written
        assert raw_layout(Btf(cut.blob())) == RawLayout(24, 4, True)
        with pytest.raises(ValueError, match="BTF type 1029 is cut short"):
            Btf(cut.blob()).count()

    def test_a_blob_cut_short_is_refused(self):
        with pytest.raises(ValueError, match="points past the end"):
            Btf(kernel_like().blob()[:-40])

    def test_wrong_magic_is_refused(self):
        with pytest.raises(ValueError, match="not little-endian BTF"):
            Btf(b"\xeb\x9f" + kernel_like().blob()[2:])

    def test_a_missing_field_is_named(self):
        with pytest.raises(LookupError, match="struct task_struct has no member __state or state"):
            raw_layout(Btf(kernel_like(state=("stat", 4)).blob()))

    def test_a_missing_tracepoint_is_named(self):
        b = BlobBuilder()
        b.struct("task_struct", 64, [("__state", b.integer("unsigned int", 4), 0)])
        with pytest.raises(LookupError, match="BTF has no btf_trace_sched_wakeup"):
            raw_layout(Btf(b.blob()))

    def test_a_name_found_inside_another_record_is_not_a_type(self):
        # "pid" names a member: its string offset is found inside task_struct's record, and the
        # struct that follows it is not taken for a struct named pid.
        b = kernel_like()
        b.add(TYPEDEF, "task_struct", 1)
        b.struct("after", 4, [])
        blob = Btf(b.blob())
        assert blob.find(STRUCT, "task_struct").size_or_type == 4096
        assert blob.find(TYPEDEF, "task_struct").size_or_type == 1
        b2 = BlobBuilder()
        b2.struct("outer", 4, [("pid", b2.integer("int", 4), 0)])
        b2.struct("next_one", 8, [])
        with pytest.raises(LookupError, match="BTF has no pid"):
            Btf(b2.blob()).find(STRUCT, "pid")

    def test_an_unexpected_switch_signature_is_refused(self):
        b = BlobBuilder()
        u32 = b.integer("unsigned int", 4)
        task_pointer = b.add(PTR, "", b.struct("task_struct", 8, []))
        b.tracepoint("sched_wakeup", [task_pointer])
        b.tracepoint("sched_wakeup_new", [task_pointer])
        b.tracepoint("sched_switch", [u32, u32])
        with pytest.raises(LookupError, match=r"sched_switch's argument sizes are \[4, 4\]"):
            raw_layout(Btf(b.blob()))


@pytest.mark.skipif(not VMLINUX.exists(), reason="this kernel has no BTF")
def test_this_kernel_btf_is_read_without_error():
    layout = raw_layout(Btf(VMLINUX.read_bytes()))
    assert 0 < layout.state_offset < 8192 and layout.state_size in (4, 8)
    # The types after what raw_layout reads are walked only on demand; all of them read too.
    assert Btf(VMLINUX.read_bytes()).count() > 1000
