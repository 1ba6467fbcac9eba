"""Containers and pods named from the runtimes' files, on real on-disk layouts built here."""

import json
import logging
import os
import time

import pytest

from gsender_bcc import metrics
from gsender_bcc.cgroups import CgroupTree, PressureReader
from gsender_bcc.containers import ContainerNames, Found, Roots, k8s_field, recognise, workload
from gsender_bcc.metrics import ServiceStats, to_datapoints
from gsender_bcc.histogram import IntervalStats

A, B, C, D, E, F = (c * 64 for c in "abcdef")
P1 = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
P2 = "11111111-2222-3333-4444-555555555555"
UNDERSCORED = P1.replace("-", "_")


@pytest.mark.parametrize("path, found", [
    (f"/system.slice/docker-{A}.scope", Found("docker", A, None, 2)),
    (f"/docker/{A}", Found("docker", A, None, 2)),
    (f"/docker/{A}/child", Found("docker", A, None, 2)),
    (f"/machine.slice/libpod-{B}.scope/container", Found("podman", B, None, 2)),
    (f"/machine.slice/libpod-conmon-{B}.scope", Found("podman", B, None, 2)),
    (f"/libpod_parent/libpod-{B}", Found("podman", B, None, 2)),
    (f"/user.slice/libpod-{B}.scope/container/system.slice/nginx.service",
     Found("podman", B, None, 2)),
    (f"/system.slice/cri-containerd-{C}.scope", Found("containerd", C, None, 2)),
    (f"/system.slice/crio-conmon-{C}.scope", Found("crio", C, None, 2)),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice/"
     f"cri-containerd-{C}.scope", Found("k8s", C, P1, 4)),
    (f"/kubepods.slice/kubepods-pod{UNDERSCORED}.slice/crio-{C}.scope",
     Found("k8s", C, P1, 3)),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDERSCORED}.slice",
     Found("k8s", None, P1, 3)),
    (f"/kubepods/burstable/pod{P1}/{C}", Found("k8s", C, P1, 4)),
    (f"/kubepods/pod{P1}/{C}", Found("k8s", C, P1, 3)),
    (f"/kubepods/pod{P1}", Found("k8s", None, P1, 2)),
    ("/system.slice/docker-ab12.scope", None),
    (f"/batch/{A}", None),
    (f"/system.slice/pod{P1}", None),
    ("/system.slice/docker.service", None),
])
def test_recognised_cgroups(path, found):
    assert recognise(path) == found


@pytest.mark.parametrize("pod, name", [
    ("web-7d4b9c8f6d-x2x9k", "web"),
    ("api-v2-5c7b9d8f4-bq2zt", "api-v2"),
    ("fluentd-x2x9k", "fluentd"),
    ("backup-28391220-x2x9k", "backup"),
    ("db-0", "db-0"),
    ("my-app-store", "my-app-store"),
    ("kube-apiserver-node1", "kube-apiserver-node1"),
])
def test_workload_drops_generated_suffixes(pod, name):
    assert workload(pod) == name


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def docker_config(root, ident, name):
    """A config.v2.json as dockerd writes it (the fields around Name abridged)."""
    write_json(root / "docker" / ident / "config.v2.json", {
        "StreamConfig": {}, "State": {"Running": True, "Pid": 4242}, "ID": ident,
        "Created": "2026-12-07T01:00:00.000000000Z", "Path": "sh", "Args": ["-c", "yes"],
        "Config": {"Hostname": ident[:12], "Image": "busybox", "Cmd": ["sh"]},
        "Image": "sha256:" + "9" * 64, "Name": "/" + name, "Driver": "overlay2",
        "RestartCount": 0, "HostnamePath": f"/var/lib/docker/containers/{ident}/hostname"})


def podman_store(storage, containers):
    """containers-storage's overlay-containers/containers.json: one object per container."""
    write_json(storage / "overlay-containers" / "containers.json", [
        {"id": ident, "names": [name], "image": "7" * 64, "layer": "8" * 64,
         "metadata": json.dumps({"image-name": "localhost/busybox:latest", "name": name}),
         "created": "2026-12-07T01:00:00Z", "flags": {"MountLabel": "", "ProcessLabel": ""}}
        for ident, name in containers])


def kubelet_logs(root, pods):
    """/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log, and the kubelet's symlinks to them,
    /var/log/containers/<pod>_<ns>_<container>-<id>.log."""
    (root / "containers").mkdir(parents=True, exist_ok=True)
    for namespace, pod, uid, containers in pods:
        for container, ident in containers:
            log_dir = root / "pods" / f"{namespace}_{pod}_{uid}" / container
            log_dir.mkdir(parents=True)
            (log_dir / "0.log").write_text("2026-12-07T01:00:00Z stdout F hello\n")
            (root / "containers" / f"{pod}_{namespace}_{container}-{ident}.log").symlink_to(
                log_dir / "0.log")


USER_TOP = "user.slice/user-1000.slice/user@1000.service"


@pytest.fixture
def host(tmp_path):
    """A host's cgroup tree with containers of every runtime, and their runtimes' files."""
    cgroups, files = tmp_path / "cgroup", tmp_path / "files"
    for path in (f"system.slice/docker-{A}.scope", f"docker/{B}",
                 f"machine.slice/libpod-{C}.scope/container", f"machine.slice/libpod-conmon-{C}.scope",
                 f"{USER_TOP}/user.slice/libpod-{D}.scope/container",
                 f"system.slice/cri-containerd-{E}.scope",
                 f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice"
                 f"/cri-containerd-{A[:63]}1.scope",
                 f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice"
                 f"/cri-containerd-{F}.scope",
                 f"kubepods/besteffort/pod{P2}/{E[:63]}2",
                 "system.slice/nginx.service", "system.slice/docker_web.service"):
        (cgroups / path).mkdir(parents=True)
    docker_config(files, A, "web")
    docker_config(files, B, "db")
    podman_store(files / "storage", [(C, "cache")])
    podman_store(files / "home" / ".local/share/containers/storage", [(D, "toolbox")])
    if os.geteuid() == 0:  # the user's store is the user's own
        for folder, _, listed in os.walk(files / "home"):
            for entry in [folder] + [os.path.join(folder, name) for name in listed]:
                os.chown(entry, 1000, 1000)
    kubelet_logs(files, [("shop", "web-7d4b9c8f6d-x2x9k", P1, [("nginx", F)]),
                         ("kube-system", "coredns-5d78c9869d-bq2zt", P2, [("coredns", E[:63] + "2")])])
    roots = Roots(docker=str(files / "docker"), podman=str(files / "storage"),
                  pods=str(files / "pods"), container_logs=str(files / "containers"),
                  home=lambda uid: str(files / "home") if uid == 1000 else None)
    top = str(cgroups / USER_TOP)
    owner = lambda path: 1000 if path == top or path.startswith(top + "/") else 0  # noqa: E731
    return cgroups, files, CgroupTree(cgroups, owner=owner, containers=ContainerNames(roots))


def names_of(tree, mount):
    tree.walk()
    return {os.path.relpath(directory, mount): name for name, directory in tree._names.values()}


def test_every_runtime_named_from_its_files(host):
    mount, _, tree = host
    names = names_of(tree, mount)
    pod = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice"
    assert {path: names[path] for path in (
        f"system.slice/docker-{A}.scope", f"docker/{B}",
        f"machine.slice/libpod-{C}.scope", f"machine.slice/libpod-{C}.scope/container",
        f"machine.slice/libpod-conmon-{C}.scope", f"{USER_TOP}/user.slice/libpod-{D}.scope",
        f"{USER_TOP}/user.slice/libpod-{D}.scope/container",
        f"system.slice/cri-containerd-{E}.scope", pod, f"{pod}/cri-containerd-{A[:63]}1.scope",
        f"{pod}/cri-containerd-{F}.scope", f"kubepods/besteffort/pod{P2}",
        f"kubepods/besteffort/pod{P2}/{E[:63]}2", "system.slice/nginx.service",
        "system.slice/docker_web.service")} == {
        f"system.slice/docker-{A}.scope": "docker_web",
        f"docker/{B}": "docker_db",
        f"machine.slice/libpod-{C}.scope": "podman_cache",
        f"machine.slice/libpod-{C}.scope/container": "podman_cache",
        f"machine.slice/libpod-conmon-{C}.scope": "podman_cache",
        f"{USER_TOP}/user.slice/libpod-{D}.scope": "user-1000_podman_toolbox",
        f"{USER_TOP}/user.slice/libpod-{D}.scope/container": "user-1000_podman_toolbox",
        f"system.slice/cri-containerd-{E}.scope": "containerd_" + E[:12],
        pod: "k8s_shop_web_POD",  # the pod's own overhead
        f"{pod}/cri-containerd-{A[:63]}1.scope": "k8s_shop_web_POD",  # the pause container
        f"{pod}/cri-containerd-{F}.scope": "k8s_shop_web_nginx",
        f"kubepods/besteffort/pod{P2}": "k8s_kube-system_coredns_POD",
        f"kubepods/besteffort/pod{P2}/{E[:63]}2": "k8s_kube-system_coredns_coredns",
        "system.slice/nginx.service": "nginx",
        "system.slice/docker_web.service": "_docker_web",  # a container's name is not a unit's
    }
    # cpu.pressure is read from the directories naming the container, not their children.
    assert tree.directories("podman_cache") == sorted(
        [mount / f"machine.slice/libpod-{C}.scope", mount / f"machine.slice/libpod-conmon-{C}.scope"],
        key=lambda p: tree.directories("podman_cache").index(p))
    assert tree.directories("docker_web") == [mount / f"system.slice/docker-{A}.scope"]
    assert tree.tags("k8s_shop_web_nginx") == (
        ("runtime", "k8s"), ("namespace", "shop"), ("workload", "web"), ("container", "nginx"),
        ("pod", "web-7d4b9c8f6d-x2x9k"))
    assert tree.tags("user-1000_podman_toolbox") == (
        ("runtime", "podman"), ("container", "toolbox"), ("user", "1000"))
    assert tree.tags("nginx") == () and tree.tags("_docker_web") == ()
    assert tree.tags("k8s_pod-0f1e2d3c4b5a") == (("runtime", "k8s"),)
    assert tree.tags("docker_my_app") == (("runtime", "docker"), ("container", "my_app"))


def test_names_survive_restart_and_recreation_and_files_are_read_for_new_ids(host):
    mount, files, tree = host
    assert names_of(tree, mount)[f"system.slice/docker-{A}.scope"] == "docker_web"
    # A known id is not read again: its file may go, its name stays.
    os.remove(files / "docker" / A / "config.v2.json")
    (mount / "system.slice/late.service").mkdir()
    assert names_of(tree, mount)[f"system.slice/docker-{A}.scope"] == "docker_web"
    # `docker rm web` + `docker run --name web`: a new id, the same series.
    (mount / f"system.slice/docker-{A}.scope").rmdir()
    (mount / f"system.slice/docker-{F}.scope").mkdir()
    docker_config(files, F, "web")
    assert names_of(tree, mount)[f"system.slice/docker-{F}.scope"] == "docker_web"
    # podman the same, from containers.json read again for the unknown id.
    for path in (f"machine.slice/libpod-{C}.scope/container", f"machine.slice/libpod-{C}.scope"):
        (mount / path).rmdir()
    (mount / f"machine.slice/libpod-{A}.scope").mkdir()
    podman_store(files / "storage", [(A, "cache")])
    assert names_of(tree, mount)[f"machine.slice/libpod-{A}.scope"] == "podman_cache"


def test_the_services_series_carry_the_container_tags():
    class Config:
        metric_prefix, tags, bucket_series = "cpu-lat", True, False
    stats = IntervalStats(5.0, 7, 0, 3.0, ((99, 5.0),), 9.0, (), 21_000)
    row = ServiceStats("k8s_shop_web_nginx", stats, tags=(
        ("runtime", "k8s"), ("namespace", "shop"), ("workload", "web"), ("container", "nginx"),
        ("pod", "web-7d4b9c8f6d-x2x9k")))
    point = next(p for p in to_datapoints(stats, Config(), [row]) if p.path == "cpu-lat.service.p99")
    assert dict(point.tags) == {"host": dict(point.tags)["host"], "service": "k8s_shop_web_nginx",
                                "runtime": "k8s", "namespace": "shop", "workload": "web",
                                "container": "nginx", "pod": "web-7d4b9c8f6d-x2x9k"}
    # The tags a series has no room for are left off it: never a key over the limit.
    long = ServiceStats("s" * metrics.MAX_SERVICE_CHARS, stats, tags=(("pod", "p" * 300),) * 6)
    Config.metric_prefix = "p" * metrics.MAX_PREFIX_CHARS
    assert max(len(metrics.series_key(p)) for p in to_datapoints(stats, Config(), [long])) \
        <= metrics.MAX_PATH_CHARS


class TestAdversarial:
    @pytest.mark.parametrize("given, name", [
        ("nginx", "docker_nginx"), ("root", "docker_root"), ("other", "docker__other"),
        ("../x", "docker____x"), ("a\nb", "docker_a_b"), ("", None), (A[:12], "docker__" + A[:12]),
        ("n" * 300, None),
    ])
    def test_names_stay_in_their_runtime_and_component(self, host, given, name):
        mount, files, tree = host
        docker_config(files, A, given)
        got = names_of(tree, mount)[f"system.slice/docker-{A}.scope"]
        if given == "":
            assert got == "docker_" + A[:12]  # no name: the short id
        elif name is None:  # cut, with a hash of the whole: two long names stay apart
            assert got.startswith("docker_" + "n" * 54 + "-") and len(got) == 7 + 63
        else:
            assert got == name
        assert "nginx" in names_of(tree, mount).values()  # the system unit keeps its own

    @pytest.mark.parametrize("content", [b"{" * 100_000, b"\xff\xfe not json", b"[1, 2]",
                                         b'{"Name": 7}'])
    def test_malformed_config_one_warning_short_id(self, host, caplog, content):
        mount, files, tree = host
        (files / "docker" / A / "config.v2.json").write_bytes(content)
        (files / "docker" / B / "config.v2.json").write_bytes(content)
        with caplog.at_level(logging.WARNING):
            names = names_of(tree, mount)
        assert names[f"system.slice/docker-{A}.scope"] == "docker_" + A[:12]
        assert names[f"docker/{B}"] == "docker_" + B[:12]
        assert len(caplog.records) == 1

    def test_a_50_mb_config_is_not_read(self, host, caplog):
        mount, files, tree = host
        with open(files / "docker" / A / "config.v2.json", "wb") as big:
            big.write(b'{"Name": "/big", "pad": "')
            big.truncate(50 << 20)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert names_of(tree, mount)[f"system.slice/docker-{A}.scope"] == "docker_" + A[:12]
        assert time.monotonic() - started < 2 and len(caplog.records) == 1
        assert "larger than" in caplog.text

    def test_a_users_store_pointing_elsewhere_is_refused(self, host, caplog, tmp_path):
        mount, files, tree = host
        store = files / "home/.local/share/containers/storage/overlay-containers/containers.json"
        store.unlink()
        store.symlink_to(files / "storage/overlay-containers/containers.json")
        with caplog.at_level(logging.WARNING):
            names = names_of(tree, mount)
        assert names[f"{USER_TOP}/user.slice/libpod-{D}.scope"] == "user-1000_podman_" + D[:12]
        assert len(caplog.records) == 1

    def test_a_fifo_store_does_not_block(self, host):
        mount, files, tree = host
        store = files / "storage/overlay-containers/containers.json"
        store.unlink()
        os.mkfifo(store)
        assert names_of(tree, mount)[f"machine.slice/libpod-{C}.scope"] == "podman_" + C[:12]

    def test_a_symlink_loop_in_the_container_logs(self, host, caplog):
        mount, files, tree = host
        logs = files / "containers"
        (logs / f"loop_shop_x-{B}.log").symlink_to(logs / f"loop_shop_y-{B}.log")
        (logs / f"loop_shop_y-{B}.log").symlink_to(logs / f"loop_shop_x-{B}.log")
        (logs / "dir-loop").symlink_to(logs)
        with caplog.at_level(logging.WARNING):
            names = names_of(tree, mount)
        pod = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDERSCORED}.slice"
        assert names[f"{pod}/cri-containerd-{F}.scope"] == "k8s_shop_web_nginx"
        assert caplog.records == []

    def test_a_log_of_another_pod_never_names_this_ones_container(self, host):
        mount, files, tree = host
        # A container log claiming the coredns container's id for the shop pod.
        os.remove(next((files / "containers").glob("coredns-*")))
        (files / "containers" / f"web-7d4b9c8f6d-x2x9k_shop_nginx-{E[:63]}2.log").symlink_to(
            "/dev/null")
        assert names_of(tree, mount)[f"kubepods/besteffort/pod{P2}/{E[:63]}2"] == \
            "k8s_kube-system_coredns_POD"

    @pytest.mark.parametrize("text, field", [("Web.Front", "web-front"), ("a_b", "a-b"),
                                             ("POD", "pod"), ("", "-")])
    def test_k8s_fields_have_no_separator(self, text, field):
        assert k8s_field(text) == field

    def test_a_runtime_gets_a_bounded_number_of_names(self, tmp_path, caplog):
        mount, files = tmp_path / "cgroup", tmp_path / "files"
        for k in range(8):
            ident = f"{k:064x}"
            (mount / f"system.slice/docker-{ident}.scope").mkdir(parents=True)
            docker_config(files, ident, f"c{k}")
        tree = CgroupTree(mount, owner=lambda path: 0, containers=ContainerNames(
            Roots(docker=str(files / "docker")), limit=5))
        with caplog.at_level(logging.WARNING):
            names = set(names_of(tree, mount).values())
        assert len([n for n in names if n.startswith("docker_c")]) == 5
        assert "docker_other" in names and len(caplog.records) == 1
        # A named container keeps its name across walks, and no new one is given.
        (mount / f"system.slice/docker-{9:064x}.scope").mkdir()
        docker_config(files, f"{9:064x}", "late")
        assert set(names_of(tree, mount).values()) == names


def test_a_thousand_containers_are_named_and_read_quickly(tmp_path):
    """The walk naming 1000 containers, and each interval's read of their 1000 services'
    cpu.pressure and cpu.stat, stay well within an interval."""
    mount, files = tmp_path / "cgroup", tmp_path / "files"
    for k in range(1000):
        ident = f"{k:064x}"
        scope = mount / f"system.slice/docker-{ident}.scope"
        scope.mkdir(parents=True)
        (scope / "cpu.pressure").write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={k}\n")
        (scope / "cpu.stat").write_text(f"usage_usec 9\nthrottled_usec {k}\n")
        docker_config(files, ident, f"app{k}")
    tree = CgroupTree(mount, owner=lambda path: 0,
                      containers=ContainerNames(Roots(docker=str(files / "docker"))))
    started = time.monotonic()
    names = {n for n in names_of(tree, mount).values() if n.startswith("docker_app")}
    assert time.monotonic() - started < 5 and len(names) == 1000
    reader = PressureReader(tree)
    reader.read(names, 5.0)
    started = time.monotonic()
    figures = reader.read(names, 5.0)
    assert time.monotonic() - started < 1 and len(figures) == 1000


def test_top_shows_the_container_names():
    from gsender_bcc.top import render
    stats = IntervalStats(1.0, 50, 0, 30.0, ((50, 30.0), (90, 40.0), (99, 50.0)), 60.0, (),
                          1_500_000)
    rows = [ServiceStats(name, stats) for name in ("k8s_shop_web_nginx", "podman_burn1",
                                                   "user-1000_podman_rburn")]
    screen = "\n".join("".join(text for text, _ in line)
                       for line in render(stats, rows, 100, 24, "name"))
    assert all(row.name in screen for row in rows)
