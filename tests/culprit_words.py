"""Culprit counters as the program keeps them, built from cumulative pairs: for fakes of the
probe and for tables."""

from typing import Dict, Mapping, Tuple

from gsender_bcc import program
from gsender_bcc.probe import culprit_words
from gsender_bcc.readings import Culprits, CulpritWords

WORDS = culprit_words(program.installed_constants())


def words_of(victim: int, behind: Mapping[int, int], words: CulpritWords = WORDS) -> Tuple[int, ...]:
    """A cgroup's words holding what it waited behind each culprit, cumulative: itself, the
    reserved ones and ``words.other`` in their counters, every other culprit in a slot of its
    own, in the order given (at most ``words.slots`` of them)."""
    fixed = (victim, *words.reserved, words.other)
    out = [behind.get(culprit, 0) for culprit in fixed]
    held = [(culprit, ns) for culprit, ns in behind.items() if culprit not in fixed]
    if len(held) > words.slots:
        raise ValueError(f"{len(held)} culprits for {words.slots} slots")
    for culprit, ns in held + [(0, 0)] * (words.slots - len(held)):
        out += [culprit, ns, 0, 0]
    return tuple(out)


def by_victim(pairs: Mapping[Tuple[int, int], int]) -> Dict[int, Dict[int, int]]:
    """(victim, culprit) -> ns as an interval holds them: by victim, by culprit."""
    nested: Dict[int, Dict[int, int]] = {}
    for (victim, culprit), ns in pairs.items():
        nested.setdefault(victim, {})[culprit] = ns
    return nested


def culprits_of(pairs: Mapping[Tuple[int, int], int], words: CulpritWords = WORDS) -> Culprits:
    """Every victim's words from cumulative (victim, culprit) -> ns pairs."""
    return Culprits(words, {victim: words_of(victim, behind, words)
                            for victim, behind in by_victim(pairs).items()})
