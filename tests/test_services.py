"""The services sent one by one: cgroups merged by service, the top ones by wait, the rest other."""

import pytest

from gsender_bcc.histogram import sum_counts
from gsender_bcc.services import by_service, top_services
from test_histogram import SMALL, c


class TestServices:
    def test_cgroups_merge_by_service_name(self):
        merged = by_service(SMALL, {1: c(SMALL, [(1, 1)], 100), 2: c(SMALL, [(2, 2)], 200),
                                    3: c(SMALL, [(3, 3)], 300)},
                            {1: "nginx", 2: "nginx", 3: "batch"}.get)
        assert merged == {"nginx": c(SMALL, [(1, 1), (2, 2)], 300), "batch": c(SMALL, [(3, 3)], 300)}

    def test_top_services_by_total_wait_then_other(self):
        services = {"a": c(SMALL, [(1, 10)], 100), "b": c(SMALL, [(2, 1)], 900),
                    "c": c(SMALL, [(3, 2)], 500), "d": c(SMALL, [(4, 3)], 50),
                    "idle": c(SMALL, [], 0)}
        top = top_services(SMALL, services, 2)
        assert top == [("b", c(SMALL, [(2, 1)], 900)), ("c", c(SMALL, [(3, 2)], 500)),
                       ("other", c(SMALL, [(1, 10), (4, 3)], 150))]
        assert sum(counts.count for _, counts in top) == \
            sum(counts.count for counts in services.values())

    def test_no_other_when_everything_fits(self):
        assert [name for name, _ in top_services(SMALL, {"a": c(SMALL, [(1, 1)], 5)}, 20)] == ["a"]

    def test_unattributed_samples_join_other(self):
        top = top_services(SMALL, {"a": c(SMALL, [(1, 1)], 5), "other": c(SMALL, [(2, 1)], 900)}, 5)
        assert top == [("a", c(SMALL, [(1, 1)], 5)), ("other", c(SMALL, [(2, 1)], 900))]

    def test_zero_services_is_all_other(self):
        top = top_services(SMALL, {"a": c(SMALL, [(1, 1)], 5), "b": c(SMALL, [(1, 2)], 6)}, 0)
        assert top == [("other", c(SMALL, [(1, 3)], 11))]


CASES = [
    ({"a": c(SMALL, [(1, 10)], 100), "b": c(SMALL, [(2, 1)], 900), "c": c(SMALL, [(3, 2)], 500),
      "d": c(SMALL, [(4, 3)], 50), "idle": c(SMALL, [], 0)}, 2, None),
    ({"a": c(SMALL, [(1, 1)], 5)}, 20, None),
    ({"a": c(SMALL, [(1, 1)], 5), "other": c(SMALL, [(2, 1)], 900)}, 5, None),
    ({"a": c(SMALL, [(1, 1)], 5), "other": c(SMALL, [(2, 1)], 900)}, 0, None),
    ({"a": c(SMALL, [(1, 1)], 5), "b": c(SMALL, [(1, 2)], 6)}, 0, None),
    # With attribution: a service that only caused wait is ranked, with empty counts.
    ({"a": c(SMALL, [(1, 1)], 5), "b": c(SMALL, [(1, 2)], 6)}, 1, {"z": 10**6, "a": 1}),
]


@pytest.mark.parametrize("services, limit, caused", CASES)
def test_other_from_the_total_less_the_chosen_is_the_rest_summed(services, limit, caused):
    total = sum_counts(SMALL, services.values())
    assert top_services(SMALL, services, limit, caused=caused, total=total) == \
        top_services(SMALL, services, limit, caused=caused)
