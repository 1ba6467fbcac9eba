"""carbon's storage rules for our series (gsender_bcc/carbon_storage.py): pure table tests.

The proofs with a real carbon-cache and graphite-web are in test_carbon_storage.py.
"""

import re
import subprocess
from pathlib import Path

import pytest

from conftest import AGENT
from gsender_bcc import carbon_storage
from gsender_bcc.blame import Blame
from gsender_bcc.config import Config
from gsender_bcc.histogram import IntervalStats
from gsender_bcc.metrics import Interval, ServiceStats, agent_points, to_datapoints
from gsender_bcc.sink import GraphiteSink, encode, message_builder

STATS = IntervalStats(5.0, 120, 0, 12.5, ((50, 8.5), (90, 21.0), (99, 34.0)), 68.0,
                      ((0, 0.0), (1, 0.2), (2, 1.0), (4, 3.0)), 1_500_000)
SERVICE = ServiceStats("nginx", STATS, {"pressure": 1.25, "throttled_ms": 40.0},
                       Blame(1, 2, 3, (("batch", 4),), 5))
BEHIND = {"idle": 1, "migrated": 0, "untracked": 0}  # the host's wait behind reserved culprits

# Debian's graphite-carbon /etc/carbon/storage-schemas.conf, without its comments.
DEBIAN_SCHEMAS = """[carbon]
pattern = ^carbon\\.
retentions = 60:90d

[default]
pattern = .*
retentions = 60s:1d,5m:30d,1h:3y
"""


def sent_names(config, tmp_path):
    """Every series name carbon receives from the agent for one full interval, as graphyte
    writes it: host, buckets, a service with its figures, and every agent series."""
    health = GraphiteSink(Config(state_directory=tmp_path), start=False).health()
    points = to_datapoints(STATS, config, [SERVICE], BEHIND)
    points += agent_points(config, {"services_overflow": 0, **health})
    interval = Interval(100, tuple(points))
    return [line.split(" ")[0] for line in encode(message_builder(), interval).decode().splitlines()]


def roll_up(config, name):
    """The aggregationMethod carbon picks for ``name``: the first stanza whose pattern matches."""
    for stanza in carbon_storage.aggregation_stanzas(config).split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in stanza.splitlines() if " = " in line)
        if re.search(fields["pattern"], name):
            assert fields["xFilesFactor"] == "0"
            return fields["aggregationMethod"]
    return None


def kind(name):
    """What we promise for each series, by its stat (plain or tagged)."""
    stat = name.split(";")[0].rsplit(".", 1)[1]
    if stat == "bucket" or stat.isdigit():
        return "average"  # samples per second in a log2 bucket
    if stat.endswith("_ms"):
        return "sum"  # a total in ms: wait, throttling, the wait behind a culprit, caused
    return {"count": "sum", "wait_ms": "sum", "throttled_ms": "sum", "samples_lost": "sum",
            "dropped_intervals": "sum", "send_failures": "sum", "spool_errors": "sum",
            "services_overflow": "sum", "p50": "max", "p90": "max", "p99": "max", "max": "max",
            "queued_intervals": "max", "mean": "average", "pressure": "average"}[stat]


@pytest.mark.parametrize("config", [Config(), Config(prefix="dc1.web-01.cpu-lat"),
                                    Config(tags=True), Config(tags=True, prefix="lat")],
                         ids=["default", "prefix", "tagged", "tagged-prefix"])
def test_every_series_sent_gets_its_roll_up(config, tmp_path):
    names = sent_names(config, tmp_path)
    # host stats, buckets, the host's behind reserved culprits, agent, service, its culprits
    assert len(names) == 7 + 4 + 3 + 6 + 9 + 3 + 2
    assert {name: roll_up(config, name) for name in names} == {name: kind(name) for name in names}
    schema_pattern = carbon_storage.schema_stanzas(config).split("pattern = ")[1].split("\n")[0]
    assert all(re.search(schema_pattern, name) for name in names)


@pytest.mark.parametrize("config, name", [
    (Config(), "carbon.agents.h-a.creates"),
    (Config(), "web-01.other.count"),
    (Config(), "dc1.web-01.cpu-lat.count"),  # a prefix of three parts is not the default's
    (Config(prefix="a.b"), "a.bc.count"),
    (Config(prefix="a.b"), "x.a.b.count"),
    (Config(tags=True), "cpu-latency.count;host=h"),
    (Config(tags=True), "web-01.cpu-lat.count"),
])
def test_patterns_leave_other_series_alone(config, name):
    assert roll_up(config, name) is None
    schema_pattern = carbon_storage.schema_stanzas(config).split("pattern = ")[1].split("\n")[0]
    assert not re.search(schema_pattern, name)


def test_a_service_named_like_a_stat_rolls_up_by_its_own_stat():
    assert roll_up(Config(), "h.cpu-lat.service.count.max") == "max"
    assert roll_up(Config(), "h.cpu-lat.service.behind.max") == "max"
    assert roll_up(Config(), "h.cpu-lat.service.behind.mean") == "average"
    assert roll_up(Config(), "h.cpu-lat.service.max.behind.max_ms") == "sum"
    assert roll_up(Config(), "h.cpu-lat.service.max.count") == "sum"
    assert roll_up(Config(), "h.cpu-lat.service.max.mean") == "average"


@pytest.mark.parametrize("frequency, retentions", [
    (1, "1s:7d,1m:30d,10m:1y"),
    (5, "5s:7d,1m:30d,10m:1y"),
    (15, "15s:7d,1m:30d,10m:1y"),
    (7, "7s:7d,63s:30d,630s:1y"),
    (45, "45s:7d,90s:30d,630s:1y"),
    (60, "1m:30d,10m:1y"),
    (90, "90s:30d,630s:1y"),
    (600, "10m:1y"),
    (900, "15m:1y"),
    (3600, "1h:1y"),
])
def test_retentions(frequency, retentions):
    assert carbon_storage.retentions(frequency) == retentions


def test_every_frequency_gives_archives_whisper_accepts_with_the_finest_at_the_frequency():
    whisper = pytest.importorskip("whisper")
    for frequency in range(1, 3601):
        parsed = [whisper.parseRetentionDef(part)
                  for part in carbon_storage.retentions(frequency).split(",")]
        whisper.validateArchiveList(parsed)
        assert parsed[0][0] == frequency
        assert parsed[-1][0] * parsed[-1][1] >= 365 * 86400 - parsed[-1][0]


@pytest.mark.parametrize("seconds, text", [(1, "1s"), (59, "59s"), (60, "1m"), (630, "630s"),
                                           (3600, "1h"), (86400, "1d"), (7 * 86400, "7d"),
                                           (365 * 86400, "1y")])
def test_durations_read_back(seconds, text):
    assert carbon_storage.duration(seconds) == text
    assert carbon_storage.seconds_of(text) == seconds


@pytest.mark.parametrize("text, seconds", [("60", 60), ("60s", 60), ("1min", 60), ("5m", 300),
                                           ("2minutes", 120), ("1h", 3600), ("3hours", 10800),
                                           ("7d", 604800), ("1w", 604800), ("3y", 94608000),
                                           (" 10S ", 10)])
def test_carbon_durations(text, seconds):
    assert carbon_storage.seconds_of(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5mo", "1x", "-5s", "1.5m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        carbon_storage.seconds_of(text)


def test_printed_text_splits_into_the_two_files():
    text = carbon_storage.render(Config(frequency=5))
    schemas, aggregation = carbon_storage.split_rendered(text)
    assert schemas + aggregation == text
    assert schemas.startswith("# storage-schemas.conf:") and "[gsender-bcc]" in schemas
    assert aggregation.startswith("# storage-aggregation.conf:")
    assert "retentions" not in aggregation and "aggregationMethod" not in schemas
    with pytest.raises(ValueError, match="not the output of gsender-bcc --carbon-config"):
        carbon_storage.split_rendered(schemas)


class TestSchemaWarning:
    @pytest.mark.parametrize("config, schemas, precision, stanza", [
        (Config(), DEBIAN_SCHEMAS, 60, "default"),
        (Config(prefix="carbon.x"), DEBIAN_SCHEMAS, 60, "carbon"),
        (Config(frequency=5), carbon_storage.schema_stanzas(Config(frequency=5)) + DEBIAN_SCHEMAS, 5,
         "gsender-bcc"),
        (Config(tags=True), carbon_storage.schema_stanzas(Config(tags=True)) + DEBIAN_SCHEMAS, 15,
         "gsender-bcc"),
        (Config(), "[x]\npattern = ^nothing\nretentions = 1s:1d\n", 60, ""),
        (Config(), "", 60, ""),
        (Config(), "[x]\nretentions = 1s:1d\n[y]\npattern = .*\nretentions = 1h:1y\n", 3600, "y"),
    ])
    def test_finest_precision(self, config, schemas, precision, stanza):
        sent = carbon_storage.sent_name(config)
        assert carbon_storage.finest_precision(schemas, sent) == (precision, stanza)

    def test_debian_stock_schema_at_the_default_frequency(self):
        warning = carbon_storage.schema_warning(Config(prefix="web-01.cpu-lat"), DEBIAN_SCHEMAS, "S")
        assert warning == (
            "carbon here stores web-01.cpu-lat.count at one point per 60 s ([default] in S), but "
            "the agent sends every 15 s: intervals in the same 60 s overwrite each other and only "
            "the last is kept; gsender-bcc --carbon-config prints stanzas that fit")

    def test_a_finer_schema_leaves_empty_points(self):
        schemas = "[all]\npattern = .*\nretentions = 10s:1d\n"
        warning = carbon_storage.schema_warning(Config(frequency=30), schemas, "S")
        assert "at one point per 10 s ([all] in S)" in warning
        assert "2 of every 3 points stay empty and a roll-up with xFilesFactor above 0.33" \
            in warning

    def test_no_stanza_means_carbons_default(self):
        warning = carbon_storage.schema_warning(Config(frequency=1), "", "S")
        assert "one point per 60 s (carbon's default (nothing in S matches))" in warning

    @pytest.mark.parametrize("frequency", [1, 5, 15, 60, 3600])
    def test_the_printed_stanzas_agree(self, frequency):
        config = Config(frequency=frequency)
        schemas = carbon_storage.render(config) + DEBIAN_SCHEMAS
        assert carbon_storage.schema_warning(config, schemas, "S") is None

    def test_a_matching_stock_schema_agrees(self):
        assert carbon_storage.schema_warning(Config(frequency=60), DEBIAN_SCHEMAS, "S") is None

    @pytest.mark.parametrize("schemas", ["not ini", "[x]\npattern = (\nretentions = 1s:1d\n",
                                         "[x]\npattern = .*\nretentions = 1q:1d\n"])
    def test_an_unreadable_schema_is_said_once(self, schemas):
        warning = carbon_storage.schema_warning(Config(), schemas, "S")
        assert warning.startswith("S could not be read as carbon's schema (")
        assert warning.endswith("); not checked") and "\n" not in warning


class TestLocalSchema:
    @pytest.mark.parametrize("host, local", [
        ("localhost", True), ("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
        ("ip6-localhost", True), ("graphite.example.com", False), ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False), ("localhost.example.com", False)])
    def test_only_a_server_on_this_host_is_checked(self, host, local):
        read = []

        def reader(path):
            read.append(path)
            return DEBIAN_SCHEMAS
        warning = carbon_storage.local_schema_warning(Config(server_address=host), reader)
        assert (warning is not None, read) == (local, ["/etc/carbon/storage-schemas.conf"] * local)

    def test_no_schema_file_means_nothing_to_tell(self):
        def missing(path):
            raise FileNotFoundError(path)
        assert carbon_storage.local_schema_warning(Config(), missing) is None


def test_the_deb_and_the_command_show_the_same_default_stanzas():
    """The .deb ships `--carbon-config`'s text for the default configuration as
    /usr/share/doc/gsender-bcc/carbon-storage.conf.example."""
    root = Path(__file__).resolve().parent.parent
    printed = subprocess.run(AGENT + ["--config", "/dev/null", "--carbon-config"],
                             capture_output=True, text=True, check=True).stdout
    assert printed == carbon_storage.render(Config())
    assert (root / "packaging" / "carbon-storage.conf.example").read_text() == printed
    assert "packaging/carbon-storage.conf.example" in \
        (root / "packaging" / "debian" / "gsender-bcc.docs").read_text().split()
