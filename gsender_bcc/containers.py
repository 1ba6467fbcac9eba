"""Containers and Kubernetes pods named from the runtimes' own files, with no API call.

A cgroup path is a container's when one of its components is a runtime's container cgroup:
``docker-<id>.scope`` or ``/docker/<id>`` (docker), ``libpod-<id>.scope``,
``libpod-conmon-<id>.scope`` or ``libpod-<id>`` (podman), ``cri-containerd-<id>.scope``
(containerd), ``crio-<id>.scope`` or ``crio-conmon-<id>.scope`` (CRI-O), ``<id>`` being 64 hex
digits; it is a pod's when a component is a Kubernetes pod cgroup:
``kubepods[-<qos>]-pod<uid>.slice`` (systemd driver) or ``pod<uid>`` below ``kubepods``
(cgroupfs driver). The deepest container component names the cgroup and everything below it.

Names (a contract, see the README), in one path component of ``[A-Za-z0-9_-]``:

- ``docker_<name>``: ``Name`` of ``/var/lib/docker/containers/<id>/config.v2.json``;
- ``podman_<name>``: the first of ``names`` in containers-storage's ``containers.json`` (or
  ``volatile-containers.json``), under ``/var/lib/containers/storage/*-containers/``, or for a
  rootless container under its user's ``~/.local/share/containers/storage/`` (the user prefix
  rule then makes it ``user-<uid>_podman_<name>``);
- ``containerd_<id12>``, ``crio_<id12>``, or ``<runtime>_<id12>`` where no file names the
  container: the short id, the id's first 12 hex digits;
- ``k8s_<namespace>_<workload>_<container>``: the pod's namespace and name from
  ``/var/log/pods/<namespace>_<pod>_<uid>``, the container's from the kubelet's
  ``/var/log/containers/<pod>_<namespace>_<container>-<id>.log``; ``<workload>`` is the pod
  name without the ReplicaSet hash and pod suffixes (``web-7d4b9c8f6d-x2x9k`` -> ``web``,
  ``agent-x2x9k`` -> ``agent``, CronJob ``backup-28391220-x2x9k`` -> ``backup``), and the pod's
  own cgroups (the pod slice, the pause container: no log) are ``<container>`` = ``POD``;
  an unknown pod is ``k8s_pod-<uid12>``.

The fields of a Kubernetes name are lower-cased with every character other than letters,
digits and ``-`` replaced by ``-``, so ``_`` separates exactly four fields and ``POD`` is no
container's. A docker or podman name has every other character than ``[A-Za-z0-9_-]``
replaced by ``_``; ``other`` and 12 hex digits (the catch-all, the short ids) are given a
leading ``_``. A field longer than MAX_FIELD_CHARS is cut and ends in 8 hex digits of its
hash. A runtime names at most MAX_NAMES_PER_RUNTIME containers from one start of the agent to
the next; the others count as ``<runtime>_other``.

Files are read only for an id not seen before; an id's name is kept until its cgroup is gone.
A file that is not a regular file, is larger than its limit, or does not parse is skipped
with one warning per runtime and kind of problem; names of log entries are read, never their
targets (a symlink loop there is only a name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

log = logging.getLogger(__name__)

RUNTIMES = ("docker", "podman", "containerd", "crio", "k8s")
MAX_NAMES_PER_RUNTIME = 1000
MAX_FIELD_CHARS = 63
MAX_CONFIG_BYTES = 1 << 20  # a docker config.v2.json
MAX_STORE_BYTES = 16 << 20  # a containers.json, all of a storage's containers
MAX_LOG_ENTRIES = 65536  # entries read from /var/log/pods or /var/log/containers
POD = "POD"

Tags = Tuple[Tuple[str, str], ...]

_ID = r"([0-9a-f]{64})"
_CONTAINER = [(re.compile(pattern), runtime) for pattern, runtime in (
    (rf"docker-{_ID}\.scope", "docker"),
    (rf"libpod-(?:conmon-)?{_ID}(?:\.scope)?", "podman"),
    (rf"cri-containerd-{_ID}\.scope", "containerd"),
    (rf"crio-(?:conmon-)?{_ID}\.scope", "crio"),
)]
_BARE_ID = re.compile(_ID)
_POD_SLICE = re.compile(r"kubepods(?:-[a-z]+)?-pod([0-9a-f_]{32,36})\.slice")
_POD_DIR = re.compile(r"pod([0-9a-f-]{32,36})")
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' generated suffixes
_WORKLOAD = [re.compile(rf"(.+)-[{_SAFE}]{{1,10}}-[{_SAFE}]{{5}}"),  # Deployment
             re.compile(rf"(.+)-[0-9]{{8,}}-[{_SAFE}]{{5}}"),  # CronJob
             re.compile(rf"(.+)-[{_SAFE}]{{5}}")]  # ReplicaSet, DaemonSet, Job
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_UNSAFE_FIELD = re.compile(r"[^a-z0-9-]")
_SHORT_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class Found:
    """A container's or pod's cgroup: its runtime (``k8s`` in a pod), ids, and the depth
    (1-based) of the component naming it."""

    runtime: str
    container: Optional[str]
    pod: Optional[str]
    depth: int


def recognise(relative: str) -> Optional[Found]:
    """Return the container or pod a cgroup path (relative to the mount) belongs to, or None."""
    parts = [part for part in relative.split("/") if part]
    pod: Optional[Tuple[str, int]] = None
    container: Optional[Tuple[str, str, int]] = None
    for depth, part in enumerate(parts, 1):
        if container is not None:
            break  # everything below a container is the container's
        match = _POD_SLICE.fullmatch(part)
        if match is None and "kubepods" in parts[:depth - 1]:
            match = _POD_DIR.fullmatch(part)
        if match is not None:
            pod = (match.group(1).replace("_", "-"), depth)
            continue
        for pattern, runtime in _CONTAINER:
            match = pattern.fullmatch(part)
            if match is not None:
                container = (runtime, match.group(1), depth)
                break
        else:
            bare = _BARE_ID.fullmatch(part)
            if bare is not None and (pod is not None or parts[depth - 2:depth - 1] == ["docker"]):
                container = ("docker" if pod is None else "k8s", bare.group(1), depth)
    if pod is not None:
        depth = container[2] if container is not None else pod[1]
        return Found("k8s", container[1] if container else None, pod[0], depth)
    if container is not None:
        return Found(container[0], container[1], None, container[2])
    return None


def workload(pod: str) -> str:
    """Return a pod's name without the suffixes its controller generated."""
    for pattern in _WORKLOAD:
        match = pattern.fullmatch(pod)
        if match is not None:
            return match.group(1)
    return pod


def _cut(text: str) -> str:
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return text[:MAX_FIELD_CHARS - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def k8s_field(text: str) -> str:
    """One field of a Kubernetes name: lower case, letters, digits and ``-``, cut."""
    return _cut(_UNSAFE_FIELD.sub("-", text.lower())) or "-"


def container_field(text: str) -> str:
    """A docker or podman container's name as it appears in its series name."""
    name = _cut(_UNSAFE.sub("_", text))
    if not name or name == "other" or _SHORT_ID.fullmatch(name):
        name = "_" + name
    return name


def k8s_name(namespace: str, pod: str, container: str) -> str:
    return f"k8s_{k8s_field(namespace)}_{k8s_field(workload(pod))}_" + (
        POD if container == POD else k8s_field(container))


def name_tags(name: str) -> Tags:
    """The tags a container's series name carries under ``--tags`` (none for other names)."""
    runtime, _, rest = name.partition("_")
    if runtime not in RUNTIMES or not rest:
        return ()
    fields = rest.split("_")
    if runtime == "k8s":
        return (("runtime", runtime), ("namespace", fields[0]), ("workload", fields[1]),
                ("container", fields[2])) if len(fields) == 3 else (("runtime", runtime),)
    return (("runtime", runtime), ("container", rest[:MAX_FIELD_CHARS]))


def read_json(path: str, limit: int, uid: Optional[int] = None):
    """Return a file's parsed JSON; raise ValueError saying why it cannot be read. It must be
    a regular file (not followed if a symlink) of at most ``limit`` bytes, owned by ``uid`` if
    given."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ValueError(f"cannot open {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if uid is not None and info.st_uid != uid:
            raise ValueError(f"{path} is not owned by uid {uid}")
        if info.st_size > limit:
            raise ValueError(f"{path} is larger than {limit} bytes")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(f"{path} is not valid JSON") from None


def _home(uid: int) -> Optional[str]:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


@dataclass
class Roots:
    """Where the runtimes keep their files (other places in tests)."""

    docker: str = "/var/lib/docker/containers"
    podman: str = "/var/lib/containers/storage"
    podman_user: str = ".local/share/containers/storage"  # below a user's home
    pods: str = "/var/log/pods"
    container_logs: str = "/var/log/containers"
    home: Callable[[int], Optional[str]] = field(default=_home)


class ContainerNames:
    """Name containers and pods from the runtimes' files, caching names by id."""

    def __init__(self, roots: Optional[Roots] = None,
                 limit: int = MAX_NAMES_PER_RUNTIME):
        self.roots = roots or Roots()
        self.limit = limit
        self._names: Dict[Tuple[Optional[int], str, str], str] = {}  # (uid, runtime, id)
        self._given: Dict[str, Set[str]] = {}  # runtime -> names given since the start
        self._pods: Dict[str, Tuple[str, str]] = {}  # uid -> (namespace, pod)
        self._logs: Dict[str, Tuple[str, str, str]] = {}  # id -> (pod, namespace, container)
        self._podman: Dict[Optional[int], Dict[str, str]] = {}  # uid -> {id: name}
        self._read: Set[str] = set()  # what was read since the last begin()
        self._seen: Set[Tuple[Optional[int], str, str]] = set()
        self._pods_named: Dict[str, Set[str]] = {}  # name -> its pods, in the last walk
        self._warned: Set[str] = set()

    def begin(self) -> None:
        """Start a walk: each index is read again at most once, and only for an unknown id."""
        self._read, self._seen, self._pods_named = set(), set(), {}

    def end(self) -> None:
        """End a walk: forget the ids of containers it did not find."""
        self._names = {key: name for key, name in self._names.items() if key in self._seen}

    def tags(self, name: str) -> Tags:
        """A container's tags under ``--tags`` (``name`` without a user prefix): its name's,
        and for a pod's its pod, ``_many`` where several pods share the name."""
        pods = self._pods_named.get(name, set())
        extra = (("pod", k8s_field(next(iter(pods))) if len(pods) == 1 else "_many"),) \
            if pods else ()
        return name_tags(name) + extra

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: such containers are named by their short id", message)

    def name(self, relative: str, uid: Optional[int] = None) -> Optional[Tuple[str, int, bool]]:
        """Return a cgroup path's container name, the depth of the component naming it, and
        whether that is a container's (not a pod's: a pod's children are named each), or
        None if the path is no container's. ``uid``: the path is in the subtree delegated
        to that user, relative to its top (the caller adds ``user-<uid>_``; the user's own
        allowance of names bounds these)."""
        found = recognise(relative)
        if found is None:
            return None
        key = (uid, found.runtime, f"{found.pod}/{found.container}")
        known = self._names.get(key)
        if known is None:
            known = self._bounded(found.runtime, self._lookup(found, uid), uid)
            self._names[key] = known
        self._seen.add(key)
        if found.pod in self._pods:
            self._pods_named.setdefault(known, set()).add(self._pods[found.pod][1])
        return known, found.depth, found.container is not None

    def _bounded(self, runtime: str, name: str, uid: Optional[int]) -> str:
        if uid is not None:
            return name
        given = self._given.setdefault(runtime, set())
        if name in given:
            return name
        if len(given) >= self.limit:
            self._warn(f"{runtime}:limit", f"{self.limit} {runtime} containers are named "
                       f"already: the others count as '{runtime}_other'")
            return f"{runtime}_other"
        given.add(name)
        return name

    def _lookup(self, found: Found, uid: Optional[int]) -> str:
        if found.runtime == "k8s":
            return self._k8s(found)
        assert found.container is not None
        named = None
        if found.runtime == "docker" and uid is None:
            named = self._docker(found.container)
        elif found.runtime == "podman":
            named = self._podman_name(found.container, uid)
        if named is None:
            return f"{found.runtime}_{found.container[:12]}"
        return f"{found.runtime}_{container_field(named)}"

    def _docker(self, container: str) -> Optional[str]:
        path = os.path.join(self.roots.docker, container, "config.v2.json")
        try:
            config = read_json(path, MAX_CONFIG_BYTES)
        except FileNotFoundError:
            return None
        except ValueError as error:
            self._warn("docker:file", str(error))
            return None
        name = config.get("Name") if isinstance(config, dict) else None
        if not isinstance(name, str) or not name.strip("/"):
            self._warn("docker:name", f"{path} has no Name")
            return None
        return name.lstrip("/")

    def _podman_name(self, container: str, uid: Optional[int]) -> Optional[str]:
        names = self._podman.get(uid, {})
        if container not in names and f"podman:{uid}" not in self._read:
            self._read.add(f"podman:{uid}")
            names = self._podman[uid] = self._read_podman(uid)
        return names.get(container)

    def _read_podman(self, uid: Optional[int]) -> Dict[str, str]:
        if uid is None:
            storage = self.roots.podman
        else:
            home = self.roots.home(uid)
            if home is None:
                return {}
            storage = os.path.join(home, self.roots.podman_user)
        names: Dict[str, str] = {}
        try:
            stores = sorted(entry.path for entry in os.scandir(storage)
                            if entry.name.endswith("-containers"))
        except OSError:
            return names
        for store in stores:
            for kind in ("containers.json", "volatile-containers.json"):
                try:
                    listed = read_json(os.path.join(store, kind), MAX_STORE_BYTES, uid)
                except FileNotFoundError:
                    continue
                except ValueError as error:
                    self._warn(f"podman:{uid}:file", str(error))
                    continue
                for item in listed if isinstance(listed, list) else ():
                    if not isinstance(item, dict):
                        continue
                    ident, given = item.get("id"), item.get("names")
                    if isinstance(ident, str) and isinstance(given, list) and given \
                            and isinstance(given[0], str):
                        names[ident] = given[0]
        return names

    def _scan(self, kind: str, root: str) -> List[str]:
        """The entry names of a log directory, once per walk (its entries are not followed)."""
        if kind in self._read:
            return []
        self._read.add(kind)
        try:
            with os.scandir(root) as entries:
                listed = []
                for entry in entries:
                    if len(listed) >= MAX_LOG_ENTRIES:
                        self._warn(f"{kind}:many", f"{root} has more than {MAX_LOG_ENTRIES} "
                                   f"entries")
                        break
                    listed.append(entry.name)
                return listed
        except OSError:
            return []

    def _k8s(self, found: Found) -> str:
        assert found.pod is not None
        if found.pod not in self._pods:
            for entry in self._scan("pods", self.roots.pods):
                fields = entry.split("_")
                if len(fields) == 3 and all(fields):
                    self._pods[fields[2]] = (fields[0], fields[1])
        if found.pod not in self._pods:
            return f"k8s_pod-{found.pod.replace('-', '')[:12]}"
        namespace, pod = self._pods[found.pod]
        container = POD
        if found.container is not None:
            if found.container not in self._logs:
                for entry in self._scan("logs", self.roots.container_logs):
                    fields = entry[:-len(".log")].split("_") if entry.endswith(".log") else []
                    if len(fields) != 3:
                        continue
                    name, _, ident = fields[2].rpartition("-")
                    if name and _BARE_ID.fullmatch(ident):
                        self._logs[ident] = (fields[0], fields[1], name)
            logged = self._logs.get(found.container)
            # A log of another pod never names this one's container.
            if logged is not None and logged[:2] == (pod, namespace):
                container = logged[2]
        return k8s_name(namespace, pod, container)
