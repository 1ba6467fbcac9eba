"""Who each service waited behind: the kernel's (victim cgroup, culprit) pairs merged by
service, and each service's figures. Pure: pairs and names in, figures out.

A pair's nanoseconds are wait of a task in the victim cgroup while the culprit ran on its CPU:
a cgroup id, or a reserved culprit (``idle``, ``migrated``, ``untracked``: ids that name no
cgroup). Every sample's wait is split over its culprits exactly, so a service's charges add
up to its wait. Per service:

- ``behind_self_ns``: wait behind a task of the same service;
- ``behind_others_ns``: the rest, the reserved culprits included;
- ``caused_ns``: wait of *other* services' tasks charged to this service;
- ``culprits``: the ``limit`` culprits with the most charge (the service itself may be one),
  and ``rest_ns``, the others summed (sent as ``behind.other``).

So per service behind_self + behind_others = Σ culprits + rest = its wait, and over every
service Σ caused + Σ reserved = Σ behind_others, exactly. The ``other`` row of the breakdown
gets the sums of its member services' own figures (each member's self is behind itself).
The service ``other`` (cgroups the tree cannot name, the map's overflow) is one service as
victim; as a culprit it is never named and always joins the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

Pairs = Mapping[Tuple[int, int], int]
# A culprit's name in the series is cut to this: the longest series must fit the path limit
# with the longest prefix (metrics.MAX_PREFIX_CHARS), and a name that long names no real unit.
MAX_CULPRIT_CHARS = 128


@dataclass(frozen=True)
class Charges:
    """One service's wait by culprit name (itself included), and the wait it caused others."""

    behind: Mapping[str, int] = field(default_factory=dict)
    self_ns: int = 0
    caused_ns: int = 0

    @property
    def wait_ns(self) -> int:
        return sum(self.behind.values())


@dataclass(frozen=True)
class Blame:
    """One row's figures, in nanoseconds: see the module's docstring."""

    behind_self_ns: int
    behind_others_ns: int
    caused_ns: int
    culprits: Tuple[Tuple[str, int], ...]  # by charge, biggest first; ties by name
    rest_ns: int


def culprit_name(service: str, reserved: Iterable[str]) -> str:
    """Name a culprit service in the series: as the service, cut to MAX_CULPRIT_CHARS, with a
    leading ``_`` where it would read as a reserved culprit (a unit called idle.service)."""
    return ("_" + service if service in reserved else service)[:MAX_CULPRIT_CHARS]


def pair_cgroups(pairs: Optional[Pairs], reserved: Mapping[int, str]) -> Set[int]:
    """The cgroup ids the pairs name, as victims or culprits (the reserved ids are none)."""
    if not pairs:
        return set()
    return {victim for victim, _ in pairs} | ({culprit for _, culprit in pairs} - reserved.keys())


def charges(pairs: Pairs, service_of: Callable[[int], str],
            reserved: Mapping[int, str]) -> Dict[str, Charges]:
    """Merge the pairs by service: every service they name, as victim or culprit. One pass
    over the pairs, each cgroup named once (a thousand services meet some ten thousand pairs
    an interval)."""
    names = set(reserved.values())
    service: Dict[int, str] = {}
    # Each culprit id once: its name in the series, and its service (None: a reserved one).
    culprits: Dict[int, Tuple[str, Optional[str]]] = {}
    behind: Dict[str, Dict[str, int]] = {}
    own: Dict[str, int] = defaultdict(int)
    caused: Dict[str, int] = defaultdict(int)
    for (victim, culprit), ns in pairs.items():
        waiter = service.get(victim)
        if waiter is None:
            waiter = service[victim] = service_of(victim)
        named = culprits.get(culprit)
        if named is None:
            if culprit in reserved:
                named = (reserved[culprit], None)
            else:
                holder = service.get(culprit)
                if holder is None:
                    holder = service[culprit] = service_of(culprit)
                named = (culprit_name(holder, names), holder)
            culprits[culprit] = named
        name, holder = named
        row = behind.get(waiter)
        if row is None:
            row = behind[waiter] = {}
        row[name] = row.get(name, 0) + ns
        if holder == waiter:
            own[waiter] += ns
        elif holder is not None:
            caused[holder] += ns
    return {name: Charges(behind.get(name, {}), own.get(name, 0), caused.get(name, 0))
            for name in behind.keys() | caused.keys()}


def merged(parts: Iterable[Charges]) -> Charges:
    """Sum services' charges (the ``other`` row): each keeps its own self."""
    behind: Dict[str, int] = defaultdict(int)
    own = caused = 0
    for part in parts:
        for name, ns in part.behind.items():
            behind[name] += ns
        own += part.self_ns
        caused += part.caused_ns
    return Charges(dict(behind), own, caused)


def blame(charged: Charges, limit: Optional[int], other: str = "other") -> Blame:
    """Return a row's figures: the ``limit`` culprits with the most charge (None: every one),
    never ``other``, and the rest summed."""
    ranked = sorted(((name, ns) for name, ns in charged.behind.items() if ns and name != other),
                    key=lambda item: (-item[1], item[0]))
    named = tuple(ranked if limit is None else ranked[:limit])
    total = charged.wait_ns
    return Blame(charged.self_ns, total - charged.self_ns, charged.caused_ns, named,
                 total - sum(ns for _, ns in named))


def reserved_totals(pairs: Pairs, reserved: Mapping[int, str]) -> Dict[str, int]:
    """The host's wait behind each reserved culprit, every one named (0 where none)."""
    totals = {name: 0 for name in reserved.values()}
    for (_, culprit), ns in pairs.items():
        if culprit in reserved:
            totals[reserved[culprit]] += ns
    return totals
