"""Naming cgroups after their services, finding the v2 mount, and pressure figures."""

import os

import pytest

from gsender_bcc.cgroups import (CgroupTree, PressureReader, service_name, v2_mount)


@pytest.mark.parametrize("path, name", [
    ("/system.slice/nginx.service", "nginx"),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3_scope"),
    ("/system.slice/docker-ab12.scope", "docker-ab12_scope"),
    ("/batch/worker", "batch"),
    ("/", "root"),
    ("", "root"),
    ("/system.slice/nginx.service/worker/deeper", "nginx"),
    ("/system.slice/app.service/box.scope", "box_scope"),
    ("/system.slice/system-getty.slice/getty@tty1.service", "getty_tty1"),
    ("/kubepods/pod 1:a", "kubepods"),
    ("/we ird.name!", "we_ird_name_"),
    ("/system.slice", "system_slice"),
])
def test_service_names(path, name):
    assert service_name(path) == name


@pytest.mark.parametrize("mounts, found", [
    ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n", "/sys/fs/cgroup"),
    ("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
     "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "/sys/fs/cgroup/unified"),
    ("cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n", "/mnt/my cgroups"),
    ("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n", None),
])
def test_v2_mount_from_proc_mounts(mounts, found):
    result = v2_mount(mounts)
    assert (str(result) if result else None) == found


def test_this_machine_has_a_v2_mount_in_its_mounts():
    mount = v2_mount()
    assert mount is None or (mount / "cgroup.procs").exists()


@pytest.fixture
def tree(tmp_path):
    for path in ("system.slice/nginx.service/worker", "system.slice/nginx.service/helper",
                 "system.slice/cron.service", "batch/job-1", "odd;name x"):
        (tmp_path / path).mkdir(parents=True)
    return tmp_path


def inode(path):
    return os.stat(path).st_ino


class TestCgroupTree:
    def test_ids_resolve_to_their_service(self, tree):
        walker = CgroupTree(tree)
        ids = {p: inode(tree / p) for p in ("system.slice/nginx.service/worker",
                                            "system.slice/nginx.service", "batch/job-1",
                                            "odd;name x", "system.slice")}
        resolved = walker.resolve(list(ids.values()) + [inode(tree)])
        assert {p: resolved.service_of(i) for p, i in ids.items()} == {
            "system.slice/nginx.service/worker": "nginx", "system.slice/nginx.service": "nginx",
            "batch/job-1": "batch", "odd;name x": "odd_name_x", "system.slice": "system_slice"}
        assert resolved.service_of(inode(tree)) == "root"
        assert resolved.gone == set()

    def test_an_unknown_id_is_other_and_gone(self, tree):
        resolved = CgroupTree(tree).resolve([123456789])
        assert resolved.service_of(123456789) == "other" and resolved.gone == {123456789}

    def test_a_removed_cgroup_is_gone_once_it_stops_counting_then_forgotten(self, tree):
        walker = CgroupTree(tree)
        job = inode(tree / "batch/job-1")
        walker.resolve([job])
        (tree / "batch/job-1").rmdir()
        # Its last samples still count under its name: a cgroup that counted is not looked at.
        resolved = walker.resolve([job], present=[job])
        assert resolved.service_of(job) == "batch" and resolved.gone == set()
        resolved = walker.resolve([], present=[job])
        assert resolved.gone == {job} and job not in walker._names
        assert walker.resolve([], present=[job]).gone == {job}

    def test_present_but_unchanged_live_cgroups_are_kept(self, tree):
        walker = CgroupTree(tree)
        live = inode(tree / "system.slice/cron.service")
        assert walker.resolve([], present=[live]).gone == set()

    def test_the_map_is_bounded_by_the_walk(self, tree):
        walker = CgroupTree(tree, limit=3)
        walker.walk()
        assert len(walker) == 3

    def test_service_directories_are_those_naming_the_service(self, tree):
        walker = CgroupTree(tree)
        walker.walk()
        assert walker.directories("nginx") == [tree / "system.slice/nginx.service"]
        assert walker.directories("batch") == [tree / "batch"]


class TestPressure:
    def test_differences_between_readings(self, tree):
        service = tree / "system.slice/nginx.service"
        walker = CgroupTree(tree)
        walker.walk()
        reader = PressureReader(walker)

        def write(total, throttled):
            (service / "cpu.pressure").write_text(
                f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total}\n"
                f"full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
            (service / "cpu.stat").write_text(f"usage_usec 5\nnr_throttled 3\n"
                                              f"throttled_usec {throttled}\n")
        write(1_000_000, 20_000)
        assert reader.read(["nginx", "cron"], 5.0) == {}  # a figure needs two readings
        write(1_250_000, 65_000)
        assert reader.read(["nginx", "cron"], 5.0) == {"nginx": {"pressure": 5.0,
                                                                 "throttled_ms": 45.0}}
