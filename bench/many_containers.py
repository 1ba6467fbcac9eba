"""The many-services phase over docker containers: one interval with COUNT of them named.

Makes COUNT cgroups ``gsender-bench-<pid>.slice/docker-<id>.scope`` (docker's systemd driver;
``<id>`` the index's four digits and 60 more hex digits), each with its ``config.v2.json``
naming the container ``bench-NNNN`` in a docker root of its own (a temporary directory the
agent's ContainerNames is pointed at instead of /var/lib/docker/containers), and times the
default build's intervals over them as many_services does over services: the first walks the
tree and reads every config.v2.json, the others name the containers from what it read.

bench/run.py runs it in a process of its own and reads the JSON it prints. Every cgroup,
process and file made here is removed before returning. Needs root and the BPF toolchain; run
it under the bench lock, as bench/run.py does.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List

import many_services
from many_services import Cgroups, measure_build

ID_TAIL = "e" * 60  # after the index's four digits: a 64-hex-digit id
LIMIT_MS = 25  # as one interval with COUNT services at the defaults (attribution on)


def config(ident: str, name: str) -> dict:
    """A config.v2.json as docker writes one for a running container, about 2 KB."""
    sha = "5d" * 32
    folder = f"/var/lib/docker/containers/{ident}"
    return {
        "StreamConfig": {}, "State": {
            "Running": True, "Paused": False, "Restarting": False, "OOMKilled": False,
            "RemovalInProgress": False, "Dead": False, "Pid": 4242, "ExitCode": 0, "Error": "",
            "StartedAt": "2026-12-07T01:00:00.123456789Z", "FinishedAt": "0001-01-01T00:00:00Z",
            "Health": None},
        "ID": ident, "Created": "2026-12-07T00:59:59.987654321Z", "Managed": False,
        "Path": "/bin/sh", "Args": ["-c", "while :; do sleep 1; done"],
        "Config": {"Hostname": ident[:12], "Domainname": "", "User": "", "AttachStdin": False,
                   "AttachStdout": False, "AttachStderr": False, "Tty": False,
                   "OpenStdin": False, "StdinOnce": False,
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["/bin/sh", "-c", "while :; do sleep 1; done"], "Image": "busybox",
                   "Volumes": None, "WorkingDir": "", "Entrypoint": None, "OnBuild": None,
                   "Labels": {"com.example.bench": "yes"}},
        "Image": f"sha256:{sha}",
        "NetworkSettings": {"Bridge": "", "SandboxID": sha, "HairpinMode": False,
                            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
                            "Networks": {"none": {"NetworkID": sha, "EndpointID": sha}},
                            "Ports": {}, "SandboxKey": f"/var/run/docker/netns/{sha[:12]}"},
        "LogPath": f"{folder}/{ident}-json.log", "Name": f"/{name}", "Driver": "overlay2",
        "OS": "linux", "MountLabel": "", "ProcessLabel": "", "RestartCount": 0,
        "HasBeenStartedBefore": True, "HasBeenManuallyStopped": False, "MountPoints": {},
        "AppArmorProfile": "docker-default", "HostnamePath": f"{folder}/hostname",
        "HostsPath": f"{folder}/hosts", "ShmPath": f"{folder}/mounts/shm",
        "ResolvConfPath": f"{folder}/resolv.conf", "SeccompProfile": "",
        "NoNewPrivileges": False, "LocalLogCacheMeta": {"HaveNotifyEnabled": False}}


def measure(count: int = 1000, repeats: int = 9, progress=print) -> dict:
    """Return the default build's timings (ms) of one interval with ``count`` docker
    containers, as many_services.measure_build gives them, with what the files held."""
    sys.path.insert(0, str(many_services.ROOT))
    from gsender_bcc import cgroups
    from gsender_bcc.containers import ContainerNames, Roots

    many_services.build_ticker()
    mount = cgroups.v2_mount()
    if mount is None:
        raise RuntimeError("cgroup v2 is not mounted")
    docker = Path(tempfile.mkdtemp(prefix="gsender-bench-docker-"))
    made = None
    try:
        size = 0
        for i in range(count):
            ident = f"{i:04d}{ID_TAIL}"
            (docker / ident).mkdir()
            text = json.dumps(config(ident, f"bench-{i:04d}"), separators=(",", ":"))
            (docker / ident / "config.v2.json").write_text(text)
            size = max(size, len(text))
        made = Cgroups(mount, count, "docker-", ID_TAIL + ".scope")
        progress(f"{count} docker-<id>.scope cgroups made under {made.parent}, their "
                 f"config.v2.json in {docker}; loading the probe")
        result = measure_build(made, mount, {}, repeats, False, progress,
                               ContainerNames(Roots(docker=str(docker))))
        result.update(count=count, repeats=repeats, config_bytes=size)
    finally:
        left = made.remove() if made is not None else []
        shutil.rmtree(docker, ignore_errors=True)
        if left:
            progress(f"could not remove {len(left)} cgroups, e.g. {left[0]}")
    return result


def report_lines(result: dict, checks: list, services_ms: List[float]) -> List[str]:
    """The phase's lines for the containers (``result`` from measure()), beside the services'
    all-changed readings of the same run; its target is added to checks."""
    from common import Check, spread
    every = result.get("all_changed")
    what = f"one interval with {result.get('count', '-')} docker containers, all changed, ms"
    checks.append(Check(what, every["ms"] if every else [], LIMIT_MS, " ms", ".1f"))
    if not every:
        return [f"- docker containers: FAILED: {result.get('failure', 'not measured')}"]
    named, low, high = result["names"]
    return [
        f"- {result['count']} cgroups as docker containers (`docker-<id>.scope`, each "
        f"with a config.v2.json of {result['config_bytes']} bytes in a docker root of "
        f"the bench's own), at the defaults (attribution on): {named} names, "
        f"{low} to {high}; all changed {spread(every['ms'], '.1f')} ms (the services', "
        f"in the same run: {spread(services_ms, '.1f')} ms), none changed "
        f"{spread(result['few_changed']['ms'], '.1f')} ms, the first interval (the walk, "
        f"which reads every config.v2.json) {result['first_ms']:.1f} ms; all changed, by stage "
        f"(medians, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result["stages_ms"].items()),
        "- docker containers, profile (ms per interval): " + "; ".join(result.get("profile", [])),
    ]


def main() -> int:
    return many_services.command_line("many_containers", __doc__.splitlines()[0], measure,
                                      False)


if __name__ == "__main__":
    sys.exit(main())
