"""The bench's map memory arithmetic: structure sizes read from the preprocessed program."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import map_memory  # noqa: E402


@pytest.mark.parametrize("text, sizes", [
    ("struct a { u64 x; u64 y; };", {"a": 16}),
    ("struct a { u64 x[3]; }; struct b { struct a one; u64 words[16 / 8 + 1]; };",
     {"a": 24, "b": 48}),
])
def test_struct_sizes(text, sizes):
    assert map_memory.struct_sizes(text) == sizes


@pytest.mark.parametrize("expression, length", [("4", 4), ("16 / 8 + 1", 3), ("32/8+1", 5),
                                                ("3 * 2 - 1", 5), ("(32 + 2)", 34)])
def test_array_length_is_c_integer_arithmetic(expression, length):
    assert map_memory.array_length(expression) == length


@pytest.mark.parametrize("text", ["struct a { u32 x; };", "struct a { u64 x[N]; };"])
def test_an_unknown_field_stops_it_with_one_line(text):
    with pytest.raises(ValueError, match="map memory: "):
        map_memory.struct_sizes(text)


def test_the_program_as_built_by_default_is_read():
    import shutil

    from gsender_bcc import btf, program
    if shutil.which("cpp") is None:
        pytest.skip("the bench preprocesses the program with cpp, which is not installed")
    try:
        raw = btf.read_raw_layout()
    except (OSError, LookupError, ValueError):
        raw = btf.RawLayout(24, 4)
    text = map_memory.preprocessed(program.ProgramSettings(raw=raw, per_cgroup=True, culprits=True))
    sizes = map_memory.struct_sizes(text)
    slots = program.installed_constants()
    assert sizes["timeline"] == 8 * 5 + 16 * slots["TIMELINE_SLOTS"] + 16 * (slots["TIMELINE_SLOTS"] + 2)
    assert sizes["culprit_slot"] == 32 and sizes["start_time"] == 16
    assert sizes["cgroup_stats"] == 8 * (slots["HIST_SLOTS"] + 1 + 2 + slots["RESERVED_CULPRITS"]) \
        + 32 * slots["CULPRIT_SLOTS"]
