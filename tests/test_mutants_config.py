"""Every numeric setting's bounds, both ends: the bound itself is allowed, one step past it is not.

Issue 26 (part 2): an exclusive upper bound (3600, 65535, 1000 refused) passed every other test.
"""

import pytest

from gsender_bcc.config import ConfigError, parse

# (section, key, lowest allowed, highest allowed, one step below, one step above)
BOUNDS = [
    ("default", "frequency", "1", "3600", "0", "3601"),
    ("default", "max_services", "0", "1000", "-1", "1001"),
    ("graphite", "port", "1", "65535", "0", "65536"),
    ("graphite", "buffer_megabytes", "1", str(1 << 20), "0", str((1 << 20) + 1)),
    ("graphite", "timeout", "0.1", "60", "0.09", "60.01"),
    ("graphite", "buffer_hours", "0.01", "720", "0.009", "720.01"),
]


def setting(section, key, text):
    return parse(f"[{section}]\n{key} = {text}\n", "test.conf")


@pytest.mark.parametrize("section, key, low, high, below, above", BOUNDS,
                         ids=[b[1] for b in BOUNDS])
def test_both_bounds_are_allowed(section, key, low, high, below, above):
    for text in (low, high):
        assert getattr(setting(section, key, text), key) == float(text)


@pytest.mark.parametrize("section, key, low, high, below, above", BOUNDS,
                         ids=[b[1] for b in BOUNDS])
def test_one_step_past_either_bound_is_one_problem_naming_the_range(section, key, low, high,
                                                                    below, above):
    for text in (below, above):
        with pytest.raises(ConfigError) as raised:
            setting(section, key, text)
        assert len(raised.value.problems) == 1
        problem = raised.value.problems[0]
        assert problem.startswith(f"test.conf: [{section}] {key} = '{text}': must be from ")
        assert f"from {low} to {high}" in problem


def test_a_fallback_servers_port_has_the_same_bounds():
    assert [s.port for s in setting("graphite", "fallback_servers", "a:1, b:65535").fallback_servers
            ] == [1, 65535]
    with pytest.raises(ConfigError, match="from 1 to 65535"):
        setting("graphite", "fallback_servers", "a:65536")


@pytest.mark.parametrize("frequency, most", [(1, 1.0), (15, 15.0), (60, 60.0), (3600, 60.0)])
def test_a_failed_server_is_retried_once_an_interval_and_at_least_once_a_minute(frequency, most):
    assert setting("default", "frequency", str(frequency)).retry_max_seconds == most


@pytest.mark.parametrize("character", ["\t", "\x00", "\x1f", "\x7f"])
def test_a_state_directory_with_a_control_character_is_refused(character):
    with pytest.raises(ConfigError, match="must not hold control characters"):
        setting("default", "state_directory", f"/srv/a{character}b")
