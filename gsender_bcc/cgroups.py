"""cgroup v2: where it is mounted, which service each cgroup id belongs to, and its pressure.

A cgroup's id, as bpf_get_current_cgroup_id() returns it, is the inode number of
its directory in the cgroup v2 file system. Ids are mapped to services by
walking that tree; the map is rebuilt whole by each walk, so it holds only
cgroups that exist and forgets removed ones.

Naming (a contract, see the README): take the cgroup's path relative to the
mount. Its service is the deepest component ending in ``.service`` or
``.scope``, else the first component; the root cgroup is ``root``. The name
drops a trailing ``.service`` and has every character other than letters,
digits, ``_`` and ``-`` replaced by ``_``.

A directory owned by another user than the mount's (root) is the top of a
subtree delegated to that user (systemd's ``user@<uid>.service``, a rootless
container): everything under it is named ``user-<uid>_<name>``, by the same rule
applied below the top, and the top itself ``user-<uid>``. Only those names begin
with ``user-<digits>`` followed by ``_`` or nothing: a system name that would is
given a leading ``_``. So a user can neither write into a system service's series
nor take ``root`` or ``other``. A user gets at most MAX_NAMES_PER_USER names
from one start of the agent to the next; the services it starts beyond them
count as ``user-<uid>``. Names are cut to MAX_SERVICE_CHARS.

A container's or Kubernetes pod's cgroup, and everything below it, is named by the
containers module (``docker_<name>``, ``podman_<name>``, ``k8s_<namespace>_<workload>_<container>``,
...; in a delegated subtree ``user-<uid>_`` before it). Only those names begin with a runtime
(``docker``, ``podman``, ``containerd``, ``crio``, ``k8s``) followed by ``_``: a system or user
service whose name would is given a leading ``_``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

from .containers import RUNTIMES, ContainerNames, Tags
from .metrics import MAX_SERVICE_CHARS

log = logging.getLogger(__name__)

ROOT = "root"
OTHER = "other"
MAX_CGROUPS_WALKED = 65536
MAX_NAMES_PER_USER = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_USER_NAME = re.compile(r"user-[0-9]+(_|$)")
_CONTAINER_NAME = re.compile(r"(%s)_" % "|".join(RUNTIMES))
_USER_PREFIX = re.compile(r"user-([0-9]+)_")


def unescape_mount_field(text: str) -> str:
    """Undo the octal escapes (\\040 for a space, ...) of /proc/self/mounts."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def v2_mount(mounts_text: Optional[str] = None) -> Optional[Path]:
    """Return where cgroup v2 is mounted, from /proc/self/mounts, or None."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(unescape_mount_field(fields[1]))
    return None


def service_component(relative: str) -> Tuple[str, int]:
    """Return the component of a cgroup path that names its service, and its depth (1-based).

    The root cgroup gives (``root``, 0).
    """
    parts = [part for part in relative.split("/") if part]
    if not parts:
        return ROOT, 0
    for depth in range(len(parts), 0, -1):
        if parts[depth - 1].endswith((".service", ".scope")):
            return parts[depth - 1], depth
    return parts[0], 1


def _series_name(component: str) -> str:
    if component.endswith(".service") and component != ".service":
        component = component[: -len(".service")]
    name = _UNSAFE.sub("_", component)
    if _CONTAINER_NAME.match(name):  # that form is the containers' alone
        name = "_" + name
    return name


def service_name(relative: str) -> str:
    """Return the series name of the service a system cgroup path (relative to the mount)
    belongs to."""
    name = _series_name(service_component(relative)[0])
    if _USER_NAME.match(name):  # that form is the delegated subtrees' alone
        name = "_" + name
    return name[:MAX_SERVICE_CHARS]


def user_service_name(uid: int, below: str) -> str:
    """Return the series name for a cgroup in a subtree delegated to ``uid``; ``below`` is its
    path relative to the subtree's top (empty for the top itself)."""
    component, depth = service_component(below)
    if depth == 0:
        return f"user-{uid}"
    return f"user-{uid}_{_series_name(component)}"[:MAX_SERVICE_CHARS]


def _names_service(relative: str) -> bool:
    """Tell whether the last component of a path is the one that names its service."""
    return service_component(relative)[1] == relative.count("/")


def owner_uid(path: str) -> int:
    return os.lstat(path).st_uid


@dataclass
class Resolved:
    """Names for the cgroup ids of one interval, and which of them are gone."""

    names: Dict[int, str]
    gone: Set[int] = field(default_factory=set)

    def service_of(self, cgroup: int) -> str:
        return self.names.get(cgroup, OTHER)


class CgroupTree:
    """Map cgroup ids to service names and directories by walking the v2 hierarchy."""

    def __init__(self, mount: Path, limit: int = MAX_CGROUPS_WALKED,
                 owner: Callable[[str], int] = owner_uid,
                 containers: Optional[ContainerNames] = None):
        self.mount = mount
        self.containers = containers or ContainerNames()
        self.limit = limit
        self._owner = owner
        self._names: Dict[int, Tuple[str, str]] = {}  # id -> (service, directory)
        self._directories: Dict[str, List[Path]] = {}
        self._user_names: Dict[int, Set[str]] = {}  # uid -> its names since the start
        self._warned_limit = False

    def __len__(self) -> int:
        return len(self._names)

    def _user_name(self, uid: int, name: str) -> str:
        """Give a cgroup of a delegated subtree its name, within the user's allowance."""
        catch_all = f"user-{uid}"
        known = self._user_names.setdefault(uid, set())
        if name == catch_all or name in known:
            return name
        if len(known) >= MAX_NAMES_PER_USER:
            if catch_all not in known:  # warn once per user
                log.warning("user %d has %d services named already: its others count as '%s'",
                            uid, MAX_NAMES_PER_USER, catch_all)
                known.add(catch_all)
            return catch_all
        known.add(name)
        return name

    def walk(self) -> None:
        """Rebuild the maps from the tree as it is now."""
        names: Dict[int, Tuple[str, str]] = {}
        directories: Dict[str, List[Path]] = {}
        try:
            names[os.stat(self.mount).st_ino] = (ROOT, str(self.mount))
            directories[ROOT] = [self.mount]
            system_uid = self._owner(str(self.mount))
        except OSError:
            system_uid = 0
        # (directory, its path from the mount, (uid, path of the top) if delegated, the
        # container's name if the directory is in a container's cgroup)
        pending: List[Tuple[Path, str, Optional[Tuple[int, str]], Optional[str]]] = [
            (self.mount, "", None, None)]
        self.containers.begin()
        while pending:
            folder, relative, delegated, container = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # removed while we looked
            for entry in entries:
                path = f"{relative}/{entry.name}"
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    inode = entry.inode()
                    uid = self._owner(entry.path) \
                        if delegated is None and container is None else None
                except OSError:
                    continue
                if len(names) >= self.limit:
                    if not self._warned_limit:
                        log.warning("more than %d cgroups: the others count as '%s'",
                                    self.limit, OTHER)
                        self._warned_limit = True
                    pending = []
                    break
                within = delegated or ((uid, path) if uid not in (system_uid, None) else None)
                inside = container
                if container is not None:  # below a system container: its name, whoever owns it
                    name, naming = container, False
                elif within is None:
                    named = self.containers.name(path)
                    if named is None:
                        name, naming = service_name(path), _names_service(path)
                    else:
                        name, naming = named[0], named[1] == path.count("/")
                        inside = name if naming and named[2] else None
                else:
                    below = path[len(within[1]):]
                    named = self.containers.name(below, within[0])
                    if named is None:
                        name = self._user_name(within[0], user_service_name(within[0], below))
                        naming = _names_service(below)
                    else:
                        name = self._user_name(within[0],
                                               f"user-{within[0]}_{named[0]}"[:MAX_SERVICE_CHARS])
                        naming = named[1] == below.count("/")
                names[inode] = (name, entry.path)
                if naming:  # this directory is the one naming the service
                    directories.setdefault(name, []).append(Path(entry.path))
                pending.append((Path(entry.path), path, within, inside))
        self.containers.end()
        self._names, self._directories = names, directories

    def _exists(self, cgroup: int) -> bool:
        try:
            return os.stat(self._names[cgroup][1]).st_ino == cgroup
        except OSError:
            return False

    def resolve(self, cgroups: Iterable[int], present: Iterable[int] = (),
                keep: Iterable[int] = ()) -> Resolved:
        """Name the ids of ``cgroups``, walking the tree once if any is unknown.

        ``present`` are all the ids the kernel has entries for: those whose directory is
        gone are returned as ``gone`` (after keeping their name for this interval) and
        forgotten. Ids in ``keep`` are never gone.
        """
        changed, keep = set(cgroups), set(keep)
        listed = (changed | set(present)) - keep
        if listed - self._names.keys():
            self.walk()
        # A cgroup that counted samples this interval had a task in it: its directory is
        # looked at once it stops counting, which keeps a busy interval's checks few.
        gone = {cgroup for cgroup in listed if cgroup not in self._names
                or (cgroup not in changed and not self._exists(cgroup))}
        names = {cgroup: self._names[cgroup][0] if cgroup in self._names else OTHER
                 for cgroup in changed}
        for cgroup in gone:
            self._names.pop(cgroup, None)
        return Resolved(names, gone)

    def directories(self, service: str) -> List[Path]:
        return self._directories.get(service, [])

    def tags(self, service: str) -> Tags:
        """A service's tags beside ``service`` under ``--tags``: a container's runtime, name
        (Kubernetes: namespace, workload, container, pod), and ``user`` in a user's subtree."""
        user = _USER_PREFIX.match(service)
        inner = service[user.end():] if user else service
        tags = self.containers.tags(inner) if _CONTAINER_NAME.match(inner) else ()
        return tags + (("user", user.group(1)),) if user and tags else tags


def _read_small(path: str) -> Optional[bytes]:
    """Return a small kernel file's contents, or None if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_pressure_total(directory: Path) -> Optional[int]:
    """Return the "some" total of a cgroup's cpu.pressure, in microseconds, or None."""
    text = _read_small(f"{directory}/cpu.pressure")
    if text is None or not text.startswith(b"some "):
        return None
    start = text.find(b"total=")
    if start < 0:
        return None
    end = text.find(b"\n")
    return int(text[start + 6:end if end > start else None])


def read_throttled_usec(directory: Path) -> Optional[int]:
    """Return a cgroup's cpu.stat throttled_usec, or None where the cpu controller is off."""
    text = _read_small(f"{directory}/cpu.stat")
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"throttled_usec":
            return int(value)
    return None


class PressureReader:
    """Per-service cpu.pressure and throttling, as differences between two readings."""

    def __init__(self, tree: CgroupTree):
        self._tree = tree
        self._last: Dict[Tuple[str, str], int] = {}

    def read(self, services: Iterable[str], seconds: float) -> Dict[str, Dict[str, float]]:
        """Return {service: {"pressure": % of the interval, "throttled_ms": ms}} where known.

        A figure needs two readings: a service is reported from its second interval on.
        Baselines are kept for the services asked about this time only.
        """
        current: Dict[Tuple[str, str], int] = {}
        result: Dict[str, Dict[str, float]] = {}
        for service in services:
            figures: Dict[str, float] = {}
            for what, reader in (("pressure", read_pressure_total),
                                 ("throttled_ms", read_throttled_usec)):
                values = [v for v in (reader(d) for d in self._tree.directories(service))
                          if v is not None]
                if not values:
                    continue
                # Several directories with one name: the worst pressure, the summed throttling.
                total = max(values) if what == "pressure" else sum(values)
                current[(service, what)] = total
                before = self._last.get((service, what))
                if before is None or total < before:
                    continue
                if what == "pressure":
                    figures[what] = min(100.0, (total - before) / (seconds * 1e6) * 100)
                else:
                    figures[what] = (total - before) / 1000
            if figures:
                result[service] = figures
        self._last = current
        return result

