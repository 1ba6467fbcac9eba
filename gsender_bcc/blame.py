"""Who each service waited behind: what each victim cgroup waited behind each culprit (the
interval's pairs, by victim) merged by service, and each service's figures. Pure: pairs and
names in, figures out.

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
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from .readings import CulpritPairs

# By victim cgroup, by culprit: ns waited.
Pairs = Mapping[int, Mapping[int, int]]
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


def culprit_totals(pairs: Pairs) -> Mapping[int, int]:
    """The host's wait behind each culprit id, every victim's together: as the interval's
    pairs keep it (readings.CulpritPairs), else added up, one addition per pair."""
    if isinstance(pairs, CulpritPairs):
        return pairs.totals
    totals: Dict[int, int] = {}
    for row in pairs.values():
        for culprit, ns in row.items():
            totals[culprit] = totals.get(culprit, 0) + ns
    return totals


def pair_cgroups(pairs: Optional[Pairs], reserved: Mapping[int, str]) -> Set[int]:
    """The cgroup ids the pairs name, as victims or culprits (the reserved ids are none)."""
    if not pairs:
        return set()
    return set(pairs) | (culprit_totals(pairs).keys() - reserved.keys())


class Ledger:
    """An interval's pairs merged by service as far as the breakdown needs them: the wait each
    service caused others (every service the pairs name, to rank them), one service's charges
    on request, and the ``other`` row as what every service has less the ones shown.

    A thousand services meet some ten thousand pairs an interval, and a breakdown shows some
    twenty. What a service caused is the wait behind its cgroups (culprit_totals) less what
    its own tasks waited behind them; a victim's row is read only where that needs it (a
    service of several cgroups) or its service's charges are asked for."""

    def __init__(self, pairs: Pairs, service_of: Callable[[int], str],
                 reserved: Mapping[int, str]):
        self._pairs = pairs
        by_culprit = culprit_totals(pairs)
        # What a victim waited behind its own cgroup, without reading its row where the pairs
        # keep it.
        own_of = pairs.own if isinstance(pairs, CulpritPairs) else \
            (lambda victim: pairs[victim].get(victim, 0))
        names = set(reserved.values())
        # Each culprit id once: its name in the series, and its service (None: a reserved one).
        self._named: Dict[int, Tuple[str, Optional[str]]] = {}
        held: Dict[str, List[int]] = defaultdict(list)  # by service, the culprit ids in it
        self._totals: Dict[str, int] = defaultdict(int)  # the host's wait, by culprit name
        caused: Dict[str, int] = defaultdict(int)
        for culprit, ns in by_culprit.items():
            if culprit in reserved:
                named = self._named[culprit] = (reserved[culprit], None)
            else:
                holder = service_of(culprit)
                named = self._named[culprit] = (culprit_name(holder, names), holder)
                held[holder].append(culprit)
                caused[holder] += ns
            self._totals[named[0]] += ns
        self._victims: Dict[str, List[int]] = defaultdict(list)
        self._self: Dict[str, int] = defaultdict(int)
        for victim in pairs:
            service = service_of(victim)
            self._victims[service].append(victim)
            own = held.get(service)
            if own is None:
                continue
            if own == [victim]:  # most services: one cgroup
                self._self[service] += own_of(victim)
                continue
            row = pairs[victim]
            if len(own) <= len(row):
                self._self[service] += sum(row.get(culprit, 0) for culprit in own)
            else:  # the service other, say: many cgroups, few of them in this row
                self._self[service] += sum(ns for culprit, ns in row.items()
                                           if self._named[culprit][1] == service)
        for service in self._victims:
            caused[service] -= self._self.get(service, 0)
        self.caused: Dict[str, int] = dict(caused)  # every service named, victim or culprit

    def charges(self, service: str) -> Charges:
        """One service's charges (empty where the pairs do not name it)."""
        behind: Dict[str, int] = defaultdict(int)
        for victim in self._victims.get(service, ()):
            for culprit, ns in self._pairs[victim].items():
                behind[self._named[culprit][0]] += ns
        return Charges(dict(behind), self._self.get(service, 0), self.caused.get(service, 0))

    def rest(self, shown: Iterable[str]) -> Charges:
        """The charges of every service but those ``shown``, summed (the ``other`` row): each
        keeps its own self."""
        behind = dict(self._totals)
        own, caused = sum(self._self.values()), sum(self.caused.values())
        for service in set(shown):
            part = self.charges(service)
            for name, ns in part.behind.items():
                behind[name] -= ns
            own -= part.self_ns
            caused -= part.caused_ns
        return Charges({name: ns for name, ns in behind.items() if ns}, own, caused)


def charges(pairs: Pairs, service_of: Callable[[int], str],
            reserved: Mapping[int, str]) -> Dict[str, Charges]:
    """Every service the pairs name, as victim or culprit, with its charges."""
    ledger = Ledger(pairs, service_of, reserved)
    return {service: ledger.charges(service) for service in ledger.caused}


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
    totals = culprit_totals(pairs)
    return {name: totals.get(culprit, 0) for culprit, name in reserved.items()}
