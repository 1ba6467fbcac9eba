"""Naming cgroups after their services, finding the v2 mount, and pressure figures."""

import os

import pytest

from gsender_bcc.cgroups import (MAX_NAMES_PER_USER, CgroupTree, PressureReader, service_name,
                                  user_service_name, v2_mount)


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
    # The form user-<digits> followed by '_' or nothing belongs to delegated subtrees alone.
    ("/system.slice/user-1000_nginx.service", "_user-1000_nginx"),
    ("/system.slice/user-5.service", "_user-5"),
    ("/system.slice/user-runtime-dir@1000.service", "user-runtime-dir_1000"),
    ("/system.slice/user@1000.service", "user_1000"),
    ("/system.slice/user-12x.service", "user-12x"),
    ("/system.slice/" + "n" * 300 + ".service", "n" * 255),
])
def test_service_names(path, name):
    assert service_name(path) == name


@pytest.mark.parametrize("below, name", [
    ("", "user-1000"),
    ("/app.slice/nginx.service", "user-1000_nginx"),
    ("/init.scope", "user-1000_init_scope"),
    ("/app.slice/root.service", "user-1000_root"),
    ("/other", "user-1000_other"),
    ("/app.slice/app-podman.slice/libpod-ab12.scope/container", "user-1000_libpod-ab12_scope"),
    ("/" + "n" * 300 + ".service", "user-1000_" + "n" * 245),
])
def test_user_service_names(below, name):
    assert user_service_name(1000, below) == name


USER_TOP = "user.slice/user-1000.slice/user@1000.service"


@pytest.fixture
def shared(tmp_path):
    """A system nginx and cron, and a user's subtree (delegated: owned by uid 1000) with
    services that take their names and the reserved ones."""
    for path in ("system.slice/nginx.service", "system.slice/cron.service",
                 "user.slice/user-1000.slice/session-3.scope", f"{USER_TOP}/init.scope",
                 f"{USER_TOP}/app.slice/nginx.service", f"{USER_TOP}/app.slice/root.service",
                 f"{USER_TOP}/app.slice/other.service", f"{USER_TOP}/app.slice/x/y"):
        (tmp_path / path).mkdir(parents=True)
    return tmp_path


def delegated_to_1000(tree):
    """The owner of each directory as systemd leaves it: user@1000.service and below are 1000's."""
    top = str(tree / USER_TOP)
    return lambda path: 1000 if path == top or path.startswith(top + "/") else 0


class TestDelegatedSubtrees:
    def test_a_user_never_shares_a_system_or_reserved_name(self, shared):
        walker = CgroupTree(shared, owner=delegated_to_1000(shared))
        paths = ["system.slice/nginx.service", "system.slice/cron.service",
                 "user.slice/user-1000.slice/session-3.scope", USER_TOP,
                 f"{USER_TOP}/init.scope", f"{USER_TOP}/app.slice/nginx.service",
                 f"{USER_TOP}/app.slice/root.service", f"{USER_TOP}/app.slice/other.service",
                 f"{USER_TOP}/app.slice/x/y"]
        resolved = walker.resolve([inode(shared / p) for p in paths])
        assert [resolved.service_of(inode(shared / p)) for p in paths] == [
            "nginx", "cron", "session-3_scope", "user-1000", "user-1000_init_scope",
            "user-1000_nginx", "user-1000_root", "user-1000_other", "user-1000_app_slice"]
        # Its cpu.pressure and cpu.stat are not read as the system nginx's either.
        assert walker.directories("nginx") == [shared / "system.slice/nginx.service"]
        assert walker.directories("user-1000_nginx") == [
            shared / f"{USER_TOP}/app.slice/nginx.service"]

    def test_a_user_gets_a_bounded_number_of_names(self, shared, caplog):
        for k in range(MAX_NAMES_PER_USER + 5):
            (shared / f"{USER_TOP}/app.slice/s{k:02d}.service").mkdir()
        walker = CgroupTree(shared, owner=delegated_to_1000(shared))
        walker.walk()
        user = {name for name, _ in walker._names.values() if name.startswith("user-1000")}
        assert len(user) == MAX_NAMES_PER_USER + 1 and "user-1000" in user
        # Names are kept from one walk to the next, and new ones still are not given.
        (shared / f"{USER_TOP}/app.slice/late.service").mkdir()
        walker.walk()
        assert {name for name, _ in walker._names.values()
                if name.startswith("user-1000")} == user
        assert caplog.text.count("user 1000 has 10 services named already") == 1

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to a user")
    def test_ownership_is_read_from_the_file_system(self, shared):
        for folder, _, _ in os.walk(shared / USER_TOP):
            os.chown(folder, 1000, 1000)
        walker = CgroupTree(shared)
        nginx = inode(shared / f"{USER_TOP}/app.slice/nginx.service")
        assert walker.resolve([nginx]).service_of(nginx) == "user-1000_nginx"


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
