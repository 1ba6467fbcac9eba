"""Who each service waited behind (gsender_bcc/blame.py): pure table tests, and the
conservation laws checked exactly, in nanoseconds, on made-up pairs."""

import random

import pytest

from gsender_bcc.blame import (MAX_CULPRIT_CHARS, Blame, Charges, Ledger, blame, charges,
                               culprit_name, pair_cgroups, reserved_totals)
from gsender_bcc.cgroups import OTHER
from gsender_bcc.probe import overflow_cgroup, reserved_culprits

from culprit_words import WORDS, by_victim, culprits_of
from gsender_bcc.readings import CulpritPairs

RESERVED = reserved_culprits()
IDLE, MIGRATED, UNTRACKED = (next(i for i, n in RESERVED.items() if n == name)
                             for name in ("idle", "migrated", "untracked"))
OVERFLOW = overflow_cgroup()
NAMES = {1: "web", 2: "web", 3: "db", 4: "batch"}  # any other id (the overflow, 9) is other


def service_of(cgroup):
    return NAMES.get(cgroup, OTHER)


PAIRS = by_victim({
    (1, 2): 100,        # web behind web
    (1, 3): 50,         # web behind db
    (2, 4): 30,         # web behind batch
    (1, IDLE): 7,
    (1, OVERFLOW): 9,   # web behind other (beyond the map's capacity)
    (3, 4): 200,        # db behind batch
    (3, 3): 10,         # db behind db
    (3, MIGRATED): 5,
    (OVERFLOW, 4): 20,  # other behind batch
    (4, 1): 1,          # batch behind web
    (9, 1): 4,          # other (an unnamed cgroup) behind web
})

CHARGES = {
    "web": Charges({"web": 100, "db": 50, "batch": 30, "idle": 7, OTHER: 9}, 100, 1 + 4),
    "db": Charges({"batch": 200, "db": 10, "migrated": 5}, 10, 50),
    "batch": Charges({"web": 1}, 0, 30 + 200 + 20),
    OTHER: Charges({"batch": 20, "web": 4}, 0, 9),
}


def test_pairs_merged_by_service():
    assert charges(PAIRS, service_of, RESERVED) == CHARGES


def test_a_service_that_only_causes_wait_is_named():
    assert charges({3: {4: 8}}, service_of, RESERVED) == {
        "db": Charges({"batch": 8}, 0, 0), "batch": Charges({}, 0, 8)}


@pytest.mark.parametrize("limit, culprits, rest", [
    (None, (("web", 100), ("db", 50), ("batch", 30), ("idle", 7)), 9),  # other is never named
    (2, (("web", 100), ("db", 50)), 30 + 7 + 9),
    (0, (), 196),
])
def test_a_rows_top_culprits_and_the_rest(limit, culprits, rest):
    assert blame(CHARGES["web"], limit) == Blame(100, 96, 5, culprits, rest)


def test_ties_go_by_name():
    assert blame(Charges({"b": 3, "a": 3, "c": 1}), 2).culprits == (("a", 3), ("b", 3))


def test_other_sums_its_members_own_figures():
    ledger = Ledger(PAIRS, service_of, RESERVED)
    assert ledger.rest(["web", "db"]) == Charges({"web": 5, "batch": 20}, 0, 250 + 9)
    assert ledger.rest(CHARGES) == Charges()
    assert ledger.rest([]) == sum_of(CHARGES.values())


def sum_of(parts):
    """Services' charges summed one by one: what Ledger.rest must equal."""
    behind, own, caused = {}, 0, 0
    for part in parts:
        for name, ns in part.behind.items():
            behind[name] = behind.get(name, 0) + ns
        own, caused = own + part.self_ns, caused + part.caused_ns
    return Charges(behind, own, caused)


@pytest.mark.parametrize("service, name", [
    ("web", "web"),
    ("idle", "_idle"), ("migrated", "_migrated"), ("untracked", "_untracked"),
    ("s" * 255, "s" * MAX_CULPRIT_CHARS),
])
def test_culprit_names(service, name):
    assert culprit_name(service, RESERVED.values()) == name


def test_a_service_named_like_a_reserved_culprit_is_not_merged_with_it():
    named = {**NAMES, 5: "idle"}
    got = charges({1: {5: 3, IDLE: 2}, 5: {5: 4}}, lambda c: named.get(c, OTHER), RESERVED)
    assert got == {"web": Charges({"_idle": 3, "idle": 2}, 0, 0),
                   "idle": Charges({"_idle": 4}, 4, 3)}


def test_reserved_totals_name_every_reserved_culprit():
    assert reserved_totals(PAIRS, RESERVED) == {"idle": 7, "migrated": 5, "untracked": 0}


def test_the_cgroups_the_pairs_name():
    assert pair_cgroups(PAIRS, RESERVED) == {1, 2, 3, 4, 9, OVERFLOW}
    assert pair_cgroups(None, RESERVED) == set()


def random_pairs(seed):
    rng = random.Random(seed)
    victims = [1, 2, 3, 4, 9, OVERFLOW]
    culprits = victims + [IDLE, MIGRATED, UNTRACKED]
    return by_victim({(rng.choice(victims), rng.choice(culprits)): rng.randrange(1, 10**9)
                      for _ in range(rng.randrange(1, 40))})


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("limit", [None, 0, 1, 3])
def test_conservation(seed, limit):
    """Per service: self + others = Σ named culprits + rest = its wait (Σ of its pairs).
    Over every service: Σ caused + Σ reserved = Σ behind_others."""
    pairs = random_pairs(seed)
    rows = {name: blame(part, limit) for name, part in charges(pairs, service_of,
                                                               RESERVED).items()}
    for name, row in rows.items():
        wait = sum(sum(row.values()) for victim, row in pairs.items()
                   if service_of(victim) == name)
        assert row.behind_self_ns + row.behind_others_ns == wait
        assert sum(ns for _, ns in row.culprits) + row.rest_ns == wait
        assert limit is None or len(row.culprits) <= limit
    assert sum(r.caused_ns for r in rows.values()) + sum(
        reserved_totals(pairs, RESERVED).values()) == sum(r.behind_others_ns
                                                          for r in rows.values())


@pytest.mark.parametrize("seed", range(20))
def test_the_rest_is_the_sum_of_the_services_not_shown(seed):
    """Ledger.rest subtracts the shown from the host's totals: it equals adding up the
    others' charges, whichever are shown (the service other, with two cgroups, among them)."""
    pairs = random_pairs(seed)
    every = charges(pairs, service_of, RESERVED)
    rng = random.Random(seed)
    shown = rng.sample(sorted(every), rng.randrange(len(every) + 1))
    assert Ledger(pairs, service_of, RESERVED).rest(shown) == sum_of(
        part for name, part in every.items() if name not in shown)


@pytest.mark.parametrize("seed", range(20))
def test_the_kept_totals_give_what_the_rows_give(seed):
    """Pairs read from culprit words keep each culprit's total and each victim's own wait:
    a Ledger on them gives what one on the same rows as plain dicts gives."""
    words = culprits_of({(victim, culprit): ns for victim, row in random_pairs(seed).items()
                         for culprit, ns in row.items()}).words
    kept = CulpritPairs({}, words, WORDS)
    plain = {victim: dict(row) for victim, row in kept.items()}
    assert charges(kept, service_of, RESERVED) == charges(plain, service_of, RESERVED)
    assert reserved_totals(kept, RESERVED) == reserved_totals(plain, RESERVED)
    assert pair_cgroups(kept, RESERVED) == pair_cgroups(plain, RESERVED)
