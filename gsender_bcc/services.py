"""Which services are sent one by one: the cgroups' counts merged by service, and the services
with the most wait (with the attribution, wait plus caused) chosen, the rest summed as other."""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple

from .histogram import Counts, Layout, empty_counts, subtract_counts, sum_counts


def by_service(layout: Layout, cgroups: Mapping[int, Counts],
               service_of: Callable[[int], str]) -> Dict[str, Counts]:
    """Merge the cgroups' counts by the service each belongs to."""
    merged: Dict[str, List[Counts]] = {}
    for cgroup, counts in cgroups.items():
        merged.setdefault(service_of(cgroup), []).append(counts)
    return {name: parts[0] if len(parts) == 1 else sum_counts(layout, parts)
            for name, parts in merged.items()}


def top_services(layout: Layout, services: Mapping[str, Counts], limit: int,
                 other: str = "other", caused: Optional[Mapping[str, int]] = None,
                 total: Optional[Counts] = None) -> List[Tuple[str, Counts]]:
    """Return the ``limit`` services with the most total wait, then the rest summed as ``other``.

    With attribution, ``caused`` holds every service the culprit pairs name and the wait it
    caused other services: the ranking is by wait plus caused, and a service in it without
    samples of its own is ranked too (with empty counts). A service named ``other`` joins the
    rest; ``other`` is left out when nothing falls in it. Ties go by name, so the order is
    stable.

    ``total``, where given, must be the sum of every service's counts (an interval's host
    with the breakdown): ``other`` is then that less the services chosen, a few subtractions
    where summing the rest would take one addition per service.
    """
    caused = caused or {}
    candidates = dict(services)
    for name in caused.keys() - services.keys():
        candidates[name] = empty_counts(layout)

    def counted(name: str) -> bool:
        return name in caused or candidates[name].has_samples

    ranked = sorted(((name, counts) for name, counts in candidates.items()
                     if name != other and counted(name)),
                    key=lambda item: (-item[1].sum_ns - caused.get(item[0], 0), item[0]))
    rest = [counts for _, counts in ranked[limit:]]
    if other in candidates and counted(other):
        rest.append(candidates[other])
    chosen = ranked[:limit]
    if rest:
        if total is None:
            chosen.append((other, sum_counts(layout, rest)))
        else:
            shown = [counts for _, counts in chosen]
            chosen.append((other, subtract_counts(total, sum_counts(layout, shown))
                           if shown else total))
    return chosen
