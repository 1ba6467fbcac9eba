"""The configuration file: the original loads as is; every mistake gets one line and exit 78."""

import subprocess
from pathlib import Path

import pytest

from conftest import AGENT
from gsender_bcc.config import Config, ConfigError, Server, load, parse, render, with_overrides
from gsender_bcc.metrics import default_prefix

ORIGINAL = """[default]
frequency       = 15
script_path     = /opt/gsender/cpu_latency.bt
# One of the following: DEBUG, INFO, WARNING, ERROR or CRITICAL
logging_level   = INFO


[graphite]
server_address  = localhost
port            = 2003
"""

FULL = """[default]
frequency = 10
logging_level = debug
prefix = servers.web-01.cpu-lat
bucket_series = no
state_directory = /srv/gsender
max_services = 5
tracepoints = classic

[graphite]
server_address = graphite-a.example
port = 2103
fallback_servers = graphite-b.example:2003, [::1]:2004
protocol = UDP
timeout = 2.5
buffer_hours = 48
buffer_megabytes = 16
tags = yes
"""


class TestValidFiles:
    def test_original_file_loads_unchanged(self):
        config = parse(ORIGINAL, "/etc/gsender.conf")
        assert config == Config(frequency=15, logging_level="INFO", server_address="localhost",
                                port=2003)
        assert config.notices == ("/etc/gsender.conf: [default] script_path = "
                                  "/opt/gsender/cpu_latency.bt is ignored: the tracer is now built in",)

    def test_every_setting(self):
        config = parse(FULL, "f")
        assert config == Config(frequency=10, logging_level="DEBUG",
                                prefix="servers.web-01.cpu-lat", bucket_series=False,
                                state_directory=Path("/srv/gsender"), max_services=5,
                                tracepoints="classic", server_address="graphite-a.example",
                                port=2103, buffer_megabytes=16, tags=True,
                                fallback_servers=(Server("graphite-b.example", 2003),
                                                  Server("::1", 2004)),
                                protocol="udp", timeout=2.5, buffer_hours=48.0)
        assert [str(s) for s in config.servers] == ["graphite-a.example:2103",
                                                    "graphite-b.example:2003", "[::1]:2004"]

    def test_empty_file_is_all_defaults(self):
        assert parse("", "f") == Config()

    def test_port_alone_keeps_default_host(self):
        assert parse("[graphite]\nport = 2103\n", "f").server == Server("localhost", 2103)

    def test_buffer_limits_by_default(self):
        assert (Config().buffer_seconds, Config().buffer_bytes) == (86400, 160 << 20)

    @pytest.mark.parametrize("tags, prefix, expected", [
        (False, None, default_prefix()), (True, None, "cpu-lat"), (True, "ops.lat", "ops.lat")])
    def test_the_prefix_is_computed_once_in_config(self, tags, prefix, expected):
        assert Config(tags=tags, prefix=prefix).metric_prefix == expected

    def test_render_reads_back_as_the_same_config(self):
        config = parse(FULL, "f")
        assert parse(render(config), "rendered") == config

    def test_render_shows_the_effective_default_prefix(self):
        rendered = parse(render(Config()), "rendered")
        assert rendered == Config(prefix=default_prefix())

    def test_overrides_replace_only_what_is_given(self):
        config = with_overrides(Config(), frequency=5, prefix=None, protocol="udp")
        assert (config.frequency, config.prefix, config.protocol) == (5, None, "udp")


class TestLoad:
    def test_missing_default_file_means_defaults_with_a_notice(self, tmp_path):
        config = load(tmp_path / "gsender.conf")
        assert config == Config()
        assert config.notices == (f"{tmp_path}/gsender.conf not found: using built-in defaults",)

    def test_missing_explicit_file_is_an_error(self, tmp_path):
        with pytest.raises(ConfigError, match="no such file: give an existing file to --config"):
            load(tmp_path / "nope.conf", required=True)

    def test_unreadable_file(self, tmp_path):
        with pytest.raises(ConfigError, match=r"cannot read it: Is a directory"):
            load(tmp_path, required=True)

    def test_not_utf8(self, tmp_path):
        path = tmp_path / "bad.conf"
        path.write_bytes(b"[default]\nprefix = \xff\n")
        with pytest.raises(ConfigError, match="cannot read it: 'utf-8' codec can't decode"):
            load(path)


# (file text, the one problem line after "gsender-bcc: <file>: ")
BAD = [
    ("[default]\nfrequency = abc\n", "[default] frequency = 'abc': must be a whole number of "
                                     "seconds from 1 to 3600"),
    ("[default]\nfrequency = 0\n", "[default] frequency = '0': must be from 1 to 3600 seconds"),
    ("[default]\nfrequency = -15\n", "[default] frequency = '-15': must be from 1 to 3600 seconds"),
    ("[default]\nfrequency = 1e9\n", "[default] frequency = '1e9': must be a whole number of "
                                     "seconds from 1 to 3600"),
    ("[default]\nfrequency = 86400\n", "[default] frequency = '86400': must be from 1 to 3600 "
                                       "seconds"),
    ("[default]\nfrequency = 15 # every 15 s\n", "[default] frequency = '15 # every 15 s': must "
                                                 "be a whole number of seconds from 1 to 3600"),
    ("[graphite]\nport = 0\n", "[graphite] port = '0': must be from 1 to 65535 (port)"),
    ("[graphite]\nport = 65536\n", "[graphite] port = '65536': must be from 1 to 65535 (port)"),
    ("[graphite]\nport = http\n", "[graphite] port = 'http': must be a whole number of (port) "
                                  "from 1 to 65535"),
    ("[default]\nlogging_level = LOUD\n", "[default] logging_level = 'LOUD': must be one of "
                                          "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("[default]\nfrequncy = 15\n", "[default] frequncy: unknown key (did you mean 'frequency'?); "
                                   "known: frequency, logging_level, script_path, prefix, "
                                   "bucket_series, state_directory, max_services, max_culprits, tracepoints"),
    ("[graphit]\nport = 2003\n", "unknown section [graphit] (did you mean 'graphite'?); known: "
                                 "[default], [graphite]"),
    ("[DEFAULT]\nfrequency = 15\n", "unknown section [DEFAULT] (did you mean 'default'?); known: "
                                    "[default], [graphite]"),
    ("[graphite]\nserver_address =\n", "[graphite] server_address = '': must not be empty: give "
                                       "a host name or address"),
    ("[graphite]\nserver_address = graphite host\n", "[graphite] server_address = 'graphite "
                                                     "host': has a label 'graphite host' that is "
                                                     "not letters, digits, '-' and '_' (not "
                                                     "beginning or ending with '-')"),
    ("[graphite]\nserver_address = graphite..example.com\n",
     "[graphite] server_address = 'graphite..example.com': has an empty label (number 2): a "
     "host name is labels joined by single dots"),
    (f"[graphite]\nserver_address = {'g' * 64}.example\n",
     f"[graphite] server_address = '{'g' * 64}.example': has a label of 64 characters "
     f"(gggggggggggg...): at most 63"),
    (f"[graphite]\nserver_address = {'g.' * 126}gg\n",
     f"[graphite] server_address = '{'g.' * 126}gg': is 254 characters long: a host name has "
     f"at most 253"),
    ("[graphite]\nserver_address = -graphite.example\n",
     "[graphite] server_address = '-graphite.example': has a label '-graphite' that is not "
     "letters, digits, '-' and '_' (not beginning or ending with '-')"),
    ("[graphite]\nserver_address = 10.0.0.256\n",
     "[graphite] server_address = '10.0.0.256': must be a valid IPv4 address"),
    ("[graphite]\nserver_address = fe80::g\n",
     "[graphite] server_address = 'fe80::g': must be a valid IPv6 address"),
    ("[graphite]\nfallback_servers = b.example:2003, c..example:2003\n",
     "[graphite] fallback_servers = 'b.example:2003, c..example:2003': must be a comma-separated "
     "list of host:port (has an empty label (number 2): a host name is labels joined by single "
     "dots)"),
    (f"[default]\nprefix = {'p' * 512}\n",
     f"[default] prefix = '{'p' * 512}': is 512 characters long: at most 511 leave room for the "
     f"longest series under the 1000-character path limit"),
    ("[default]\nstate_directory = /var/lib/gsender\x00\n",
     "[default] state_directory = '/var/lib/gsender\\x00': must not hold control characters (a "
     "newline, a tab, ...)"),
    ("[default]\nprefix = my host.cpu\n", "[default] prefix = 'my host.cpu': must be "
                                          "dot-separated parts of letters, digits, '_' and '-'"),
    ("[default]\nprefix = a.b\n  c.d 1 0\n", "[default] prefix = 'a.b\\nc.d 1 0': must be on one "
                                             "line"),
    ("[default]\nprefix = a;tag=x\n", "[default] prefix = 'a;tag=x': must be dot-separated parts "
                                      "of letters, digits, '_' and '-'"),
    ("[default]\nbucket_series = maybe\n", "[default] bucket_series = 'maybe': must be yes or no"),
    ("[default]\nstate_directory = var/lib\n", "[default] state_directory = 'var/lib': must be "
                                               "an absolute path"),
    ("[graphite]\nprotocol = http\n", "[graphite] protocol = 'http': must be one of tcp, udp"),
    ("[graphite]\ntimeout = nan\n", "[graphite] timeout = 'nan': must be from 0.1 to 60 seconds"),
    ("[graphite]\nbuffer_hours = 0\n", "[graphite] buffer_hours = '0': must be from 0.01 to 720 "
                                       "hours"),
    ("[graphite]\nbuffer_megabytes = 0\n", "[graphite] buffer_megabytes = '0': must be from 1 to "
                                           "1048576 MiB"),
    ("[default]\nmax_services = -1\n", "[default] max_services = '-1': must be from 0 to 1000 "
                                       "services"),
    ("[default]\nmax_services = lots\n", "[default] max_services = 'lots': must be a whole "
                                         "number of services from 0 to 1000"),
    ("[default]\ntracepoints = fast\n", "[default] tracepoints = 'fast': must be one of auto, "
                                        "raw, classic"),
    ("[graphite]\ntags = sometimes\n", "[graphite] tags = 'sometimes': must be yes or no"),
    ("[graphite]\nfallback_servers = b.example\n", "[graphite] fallback_servers = 'b.example': "
                                                   "must be a comma-separated list of host:port "
                                                   "(must be host:port)"),
    ("[graphite]\nfallback_servers = b.example:99999\n", "[graphite] fallback_servers = "
                                                         "'b.example:99999': must be a "
                                                         "comma-separated list of host:port (must "
                                                         "be from 1 to 65535 (port))"),
    ("[default]\nfrequency = 15\nfrequency = 30\n", "[default] frequency is set twice (line 3): "
                                                    "keep one"),
    ("[default]\n[graphite]\n[default]\n", "section [default] appears twice (line 3): merge them"),
    ("frequency = 15\n", "not valid INI: File contains no section headers"),
    ("[default]\nfrequency\n", "not valid INI: Source contains parsing errors: 'FILE'"),
]


def write(tmp_path, text):
    path = tmp_path / "gsender.conf"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, problem", BAD)
def test_bad_file_parse(text, problem):
    with pytest.raises(ConfigError) as error:
        parse(text, "FILE")
    assert error.value.problems == [f"FILE: {problem}"]
    assert error.value.exit_code == 78


@pytest.mark.parametrize("text, problem", BAD)
def test_bad_file_on_the_command_line(tmp_path, text, problem):
    path = write(tmp_path, text)
    result = subprocess.run(AGENT + ["--config", str(path), "--check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert result.stdout == ""
    expected = f"gsender-bcc: {path}: {problem}".replace("'FILE'", repr(str(path)))
    assert result.stderr.splitlines() == [expected]


def test_every_problem_gets_its_own_line(tmp_path):
    path = write(tmp_path, "[default]\nfrequency = 0\nlogging_level = LOUD\n[graphite]\nport = x\n")
    result = subprocess.run(AGENT + ["--config", str(path), "--check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert [line.split(": ", 2)[2].split(" =")[0] for line in result.stderr.splitlines()] == [
        "[default] frequency", "[default] logging_level", "[graphite] port"]


@pytest.mark.parametrize("host", [
    "localhost", "graphite-a.example", "graphite.example.", "relay_1.example", "127.0.0.1",
    "::1", "2001:db8::2003", "g" * 63 + ".example", ".".join(["g" * 63] * 3) + ".ggggggggg",
])
def test_host_names_and_addresses_that_resolve_are_accepted(host):
    assert parse(f"[graphite]\nserver_address = {host}\n", "f").server_address == host
    host.encode("idna")  # what the resolver does with it, where a bad label raises


@pytest.mark.parametrize("flag, value, problem", [
    ("--prefix", "web\n", "must be dot-separated parts"),
    ("--graphite-host", "graphite.example\n", "has a label 'example\\n'"),
    ("--state-directory", "/var/lib/x\n", "must not hold control characters"),
])
def test_a_flag_ending_in_a_newline_is_refused(flag, value, problem):
    """`$` matches before a final newline: every check of a path or host is a full match."""
    result = subprocess.run(AGENT + [flag, value, "--check-config"], capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout) == (64, "")
    assert result.stderr.count("\n") == 1 and problem in result.stderr


class TestCheckConfig:
    def test_original_file_prints_effective_settings(self, tmp_path):
        path = write(tmp_path, ORIGINAL)
        result = subprocess.run(AGENT + ["--config", str(path), "--check-config", "--prefix", "x.y",
                                         "--graphite-port", "2103"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        assert result.stdout == (
            "[default]\nfrequency = 15\nlogging_level = INFO\nprefix = x.y\nbucket_series = yes\n"
            "state_directory = /var/lib/gsender-bcc\nmax_services = 20\nmax_culprits = 3\n"
            "tracepoints = auto\n\n"
            "[graphite]\nserver_address = localhost\nport = 2103\nfallback_servers = \n"
            "protocol = tcp\ntimeout = 5.0\nbuffer_hours = 24.0\nbuffer_megabytes = 160\n"
            "tags = no\n")
        assert "script_path = /opt/gsender/cpu_latency.bt is ignored: the tracer is now built in" \
            in result.stderr

    def test_missing_explicit_file_exits_78(self, tmp_path):
        result = subprocess.run(AGENT + ["--config", str(tmp_path / "none.conf"), "--check-config"],
                                capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stderr) == (
            78, f"gsender-bcc: {tmp_path}/none.conf: no such file: give an existing file to "
                f"--config\n")


# -- every numeric setting's bounds, both ends: the bound itself is allowed, one step past it
# is not (an exclusive upper bound would refuse 3600, 65535 or 1000) --

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
