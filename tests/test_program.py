"""The shared header, read by Python and compiled as C, describes one layout."""

import random
import shutil
import subprocess

import pytest

from conftest import REQUIRE_BPF

from gsender_bcc import probe, program
from gsender_bcc.btf import RawLayout
from gsender_bcc.histogram import Layout, slot_of

HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
typedef uint64_t u64;
typedef uint32_t u32;
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#include "runqlat.h"
int main(int argc, char **argv)
{
	char line[64];
	if (argc > 1 && argv[1][0] == 'c') {
		/* The constants as C sees them, for Python to compare with its reading of the header. */
		printf("HIST_SUB_BITS %llu\n", (unsigned long long)HIST_SUB_BITS);
		printf("HIST_SUB_COUNT %llu\n", (unsigned long long)HIST_SUB_COUNT);
		printf("HIST_LOG2_MAX %llu\n", (unsigned long long)HIST_LOG2_MAX);
		printf("HIST_SLOTS %llu\n", (unsigned long long)HIST_SLOTS);
		printf("OVERFLOW_CGROUP %llu\n", (unsigned long long)OVERFLOW_CGROUP);
		return 0;
	}
	while (fgets(line, sizeof line, stdin))
		printf("%u\n", latency_slot(strtoull(line, NULL, 10)));
	return 0;
}
"""


def edge_values():
    values = {0, 1, 2, 3, 2**64 - 1}
    for e in range(64):
        values.update({(1 << e) - 1, 1 << e, (1 << e) + 1})
    rng = random.Random(7)
    values.update(rng.getrandbits(rng.randint(1, 64)) for _ in range(3000))
    return sorted(values)


@pytest.fixture(scope="module")
def compiled_slot_function(tmp_path_factory):
    if shutil.which("gcc") is None:
        if REQUIRE_BPF:
            pytest.fail("GSENDER_REQUIRE_BPF=1 but gcc, needed to check the header's C, is missing",
                        pytrace=False)
        pytest.skip("gcc is not installed")
    folder = tmp_path_factory.mktemp("harness")
    (folder / "harness.c").write_text(HARNESS)
    binary = folder / "harness"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{program.source_dir()}",
                    "-o", str(binary), str(folder / "harness.c")], check=True)
    return binary


def test_c_and_python_put_every_value_in_the_same_slot(compiled_slot_function):
    values = edge_values()
    result = subprocess.run([str(compiled_slot_function)], input="\n".join(map(str, values)) + "\n",
                            capture_output=True, text=True, check=True)
    c_slots = [int(x) for x in result.stdout.split()]
    layout = program.installed_layout()
    assert len(c_slots) == len(values)
    mismatches = [(v, c, slot_of(layout, v)) for v, c in zip(values, c_slots)
                  if c != slot_of(layout, v)]
    assert mismatches == []


def test_c_and_python_read_the_same_constants(compiled_slot_function):
    """Every constant C is compiled with is the one Python takes from the header: the layout's,
    and the overflow key the Sampler keeps (probe.overflow_cgroup)."""
    result = subprocess.run([str(compiled_slot_function), "constants"], capture_output=True,
                            text=True, check=True)
    in_c = {name: int(value) for name, value in (line.split() for line in result.stdout.splitlines())}
    header = program.installed_constants()
    assert {name: header.get(name) for name in in_c} == in_c
    assert probe.overflow_cgroup() == in_c["OVERFLOW_CGROUP"]


def test_installed_header_gives_the_documented_layout():
    assert program.installed_layout() == Layout(sub_bits=3, log2_max=32)


class TestHeaderConstants:
    def test_reads_plain_defines_only(self):
        text = "#define A 1\n#define B_2 240\n#define C (1 << 3)\n  #define D 4\n#define e 5\n"
        assert program.header_constants(text) == {"A": 1, "B_2": 240}

    def test_inconsistent_constants_are_refused(self):
        constants = {"HIST_SUB_BITS": 3, "HIST_SUB_COUNT": 8, "HIST_LOG2_MAX": 32,
                     "HIST_SLOTS": 240}
        with pytest.raises(ValueError, match=r"\(8, 240\) do not match .* \(8, 241\)"):
            program.layout_from_constants(constants)

    def test_missing_constant_is_named(self):
        with pytest.raises(ValueError, match="does not define HIST_SLOTS"):
            program.layout_from_constants({"HIST_SUB_BITS": 3, "HIST_SUB_COUNT": 8,
                                           "HIST_LOG2_MAX": 32})


class TestSettings:
    def test_classic_flags(self, tmp_path):
        settings = program.ProgramSettings(preempted_state=0x100, start_entries=4096,
                                           version_code=0x60100, page_size=4096)
        assert settings.cflags(tmp_path) == (f"-I{tmp_path}", "-DSTART_ENTRIES=4096",
                                             "-DPER_CGROUP=0", "-DMAX_CGROUPS=4096",
                                             "-DCULPRITS=0",
                                             "-DLINUX_VERSION_CODE=393472",
                                             "-DGSENDER_PAGE_SIZE=4096",
                                             "-DPREEMPTED_STATE=0x100")
        assert settings.kind == "tracepoints"

    def test_raw_flags(self, tmp_path):
        settings = program.ProgramSettings(raw=RawLayout(24), per_cgroup=True,
                                           max_cgroups=100, culprits=True,
                                           start_entries=32768, version_code=1, page_size=65536)
        assert settings.cflags(tmp_path) == (
            f"-I{tmp_path}", "-DSTART_ENTRIES=32768", "-DPER_CGROUP=1", "-DMAX_CGROUPS=100",
            "-DCULPRITS=1", "-DLINUX_VERSION_CODE=1", "-DGSENDER_PAGE_SIZE=65536",
            "-DRAW_TRACEPOINTS", "-DSTATE_OFFSET=24", "-DSTATE_SIZE=4",
            "-DPREV_STATE_ARGUMENT=0")
        assert settings.kind == "raw tracepoints"
        # With culprits, migrations too.
        assert settings.tracepoints == ("sched_wakeup", "sched_wakeup_new", "sched_switch",
                                        "sched_process_free", "sched_migrate_task")

    @pytest.mark.parametrize("argument, release, used", [
        (True, "6.16.0", True), (True, "6.18.44-fc-v1300", True), (True, "7.0.1", True),
        # 6.15 and older may report a task that stays runnable (a signal pending) as asleep.
        (True, "6.15.9", False), (True, "6.1.0-50-cloud-amd64", False),
        (False, "6.18.0", False),  # a BTF without the argument
    ])
    def test_the_prev_state_argument_where_the_kernel_sets_it_right(self, tmp_path, argument,
                                                                     release, used):
        settings = program.ProgramSettings(raw=RawLayout(24, 4, argument),
                                           version_code=program.linux_version_code(release))
        assert settings.prev_state_argument is used
        assert f"-DPREV_STATE_ARGUMENT={int(used)}" in settings.cflags(tmp_path)
        classic = program.ProgramSettings(preempted_state=0x100)
        assert not classic.prev_state_argument
        assert not any("PREV_STATE" in flag for flag in classic.cflags(tmp_path))

    @pytest.mark.parametrize("pid_max, entries", [("32768\n", 32768), ("4194304\n", 65536),
                                                  ("", 65536), ("0\n", 1)])
    def test_the_start_time_map_follows_pid_max_up_to_its_bound(self, tmp_path, pid_max,
                                                                entries):
        (tmp_path / "pid_max").write_text(pid_max)
        assert program.start_entries(tmp_path / "pid_max") == entries
        assert program.start_entries(tmp_path / "missing") == program.MAX_START_ENTRIES

    def test_the_running_kernel_is_described(self):
        import os
        settings = program.ProgramSettings(preempted_state=0x100)
        assert settings.version_code == program.linux_version_code(os.uname().release) > 0
        assert settings.page_size == os.sysconf("SC_PAGE_SIZE")
        assert settings.include_tree == program.source_dir() / "kernel-stubs"

    def test_culprits_need_the_per_cgroup_breakdown(self):
        with pytest.raises(ValueError, match="per-cgroup"):
            program.ProgramSettings(preempted_state=0x100, culprits=True)

    @pytest.mark.parametrize("raw, bit", [(RawLayout(8), None), (None, 0x100)])
    def test_both_kinds_attach_to_the_same_tracepoints(self, raw, bit):
        assert program.ProgramSettings(raw=raw, preempted_state=bit).tracepoints == (
            "sched_wakeup", "sched_wakeup_new", "sched_switch", "sched_process_free")

    @pytest.mark.parametrize("raw, bit", [(None, None), (RawLayout(8), 0x100)])
    def test_exactly_one_mode(self, raw, bit):
        with pytest.raises(ValueError, match="either"):
            program.ProgramSettings(raw=raw, preempted_state=bit)


@pytest.mark.parametrize("release, code", [
    ("6.1.0-50-cloud-amd64", (6 << 16) | (1 << 8)),
    ("5.10.0-35-amd64", (5 << 16) | (10 << 8)),
    ("6.12.38+deb13-cloud-amd64", (6 << 16) | (12 << 8) | 38),
    ("6.18.44-fc-v1045", (6 << 16) | (18 << 8) | 44),
    ("4.19.300", (4 << 16) | (19 << 8) | 255),   # the patch level saturates, as in the kernel
    ("5.4", (5 << 16) | (4 << 8)),
    ("6.1.0", 0x60100),
    ("weird", 0),
])
def test_linux_version_code(release, code):
    assert program.linux_version_code(release) == code


class TestIncludeTree:
    """The tree BCC compiles against instead of kernel headers: ours, small, and packaged whole."""

    def files(self):
        tree = program.include_tree()
        return {path.relative_to(tree).as_posix(): path.read_text()
                for path in program.include_tree_files(tree)}

    def test_every_file_is_a_stub_written_for_gsender_bcc(self):
        files = self.files()
        assert files, "the include tree is empty"
        for name, text in files.items():
            assert text.startswith("/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */\n"), name
            assert "gsender-bcc" in text, name
        assert sum(len(text) for text in files.values()) < 8192

    def test_each_architecture_bcc_may_be_built_for_has_its_page_header(self):
        assert {"arch/x86/include/asm/page.h", "arch/arm64/include/asm/page.h"} <= set(self.files())

    def test_the_package_data_globs_take_every_file(self):
        import configparser
        import glob
        from pathlib import Path
        parser = configparser.ConfigParser()
        parser.read(Path(__file__).resolve().parent.parent / "setup.cfg")
        folder = str(program.source_dir())
        packaged = {Path(hit).relative_to(program.include_tree()).as_posix()
                    for pattern in parser["options.package_data"]["gsender_bcc.bpf"].split()
                    for hit in glob.glob(f"{folder}/{pattern}")
                    if hit.startswith(f"{program.include_tree()}/")}
        assert packaged == set(self.files())
