"""What an operator reads back from Graphite (docs/operations.md: storage, and fleet queries).

A real carbon-cache (and graphite-web) on loopback is fed the exact plaintext lines the agent's
own metrics and sink code build for crafted intervals, so the numbers are known and no BPF is
needed:
- Debian's stock schema at frequency 15 loses intervals: a documented demonstration, which
  asserts the loss, so that a change in carbon shows up here;
- the stanzas `--carbon-config` prints roll series up exactly;
- every fleet query of docs/operations.md, rendered by graphite-web, gives the numbers worked out by hand.
"""

import json
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

import local_carbon
from conftest import AGENT
from gsender_bcc.carbon_storage import split_rendered
from gsender_bcc.config import Config
from gsender_bcc.histogram import IntervalStats
from gsender_bcc.metrics import Interval, ServiceStats, to_datapoints
from gsender_bcc.sink import encode, message_builder
from local_carbon import CarbonCache, LocalGraphite

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
DEBIAN_SCHEMAS = Path("/etc/carbon/storage-schemas.conf")


def interval(count, wait_ms, p99=None, top=None, rates=(), seconds=1.0):
    """An interval's statistics as the agent computes them, with these figures."""
    if not count:
        return IntervalStats(seconds, 0, 0, None, (), None, (), 0)
    return IntervalStats(seconds, count, 0, wait_ms * 1000 / count,
                         ((50, p99 / 2), (90, p99 / 2), (99, p99)), top if top else p99,
                         tuple(rates), round(wait_ms * 1e6))


def lines(config, stamp, stats, services=()):
    """The plaintext lines the agent sends for one interval."""
    return encode(message_builder(), Interval(stamp, tuple(to_datapoints(stats, config, services))))


def fetch(carbon, name, precision, start, end):
    """{stamp: value} of one archive of a series, non-null, start <= stamp < end."""
    import whisper
    path = carbon.whisper_dir / (name.replace(".", "/") + ".wsp")
    (first, _, step), values = whisper.fetch(str(path), start - 1, end, archiveToSelect=precision)
    return {first + i * step: v for i, v in enumerate(values)
            if v is not None and start <= first + i * step < end}


@pytest.fixture
def carbon_with(tmp_path):
    started = []

    def start(schemas, aggregation):
        started.append(CarbonCache(tmp_path / f"carbon{len(started)}", schemas=schemas,
                                   aggregation=aggregation).start())
        return started[-1]
    yield start
    for carbon in started:
        carbon.stop()


def test_debian_stock_schema_keeps_one_interval_a_minute_at_frequency_15(carbon_with):
    """Documented demonstration of the loss (docs/operations.md, Graphite storage): Debian's
    storage-schemas.conf (60s:1d,5m:30d,1h:3y) and no storage-aggregation.conf (carbon's
    average, xFilesFactor 0.5). Two minutes of intervals 15 s apart, a spike of 1000 us in
    the first of each minute."""
    carbon = carbon_with(DEBIAN_SCHEMAS.read_text(), "")
    config = Config(prefix="web-01.cpu-lat", frequency=15)
    minute = (int(time.time()) // 300 - 3) * 300  # a 5-minute boundary 15 to 20 minutes ago
    sent = {}
    for i in range(8):
        stamp = minute + 15 * i
        sent[stamp] = interval(100 + i, 2.0 * (i + 1), p99=9.0 if i % 4 else 900.0,
                               top=10.0 if i % 4 else 1000.0, seconds=15)
    carbon.send_and_settle(b"".join(lines(config, stamp, stats) for stamp, stats in sent.items()))

    counts = fetch(carbon, "web-01.cpu-lat.count", 60, minute, minute + 120)
    maxima = fetch(carbon, "web-01.cpu-lat.max", 60, minute, minute + 120)
    waits = fetch(carbon, "web-01.cpu-lat.wait_ms", 60, minute, minute + 120)
    totals = {m: sum(s.count for t, s in sent.items() if m <= t < m + 60)
              for m in (minute, minute + 60)}
    assert totals == {minute: 406, minute + 60: 422}
    # Each minute keeps the last of its four intervals, about frequency/60 of the samples sent.
    assert counts == {minute: 103.0, minute + 60: 107.0}
    assert all(counts[m] / totals[m] == pytest.approx(15 / 60, abs=0.01) for m in totals)
    assert waits == {minute: 8.0, minute + 60: 16.0}  # of 20.0 and 52.0 ms sent
    assert maxima == {minute: 10.0, minute + 60: 10.0}  # both 1000 us spikes are gone
    # 2 of the 5 minutes of a 5-minute point are known, under xFilesFactor 0.5: nothing.
    assert fetch(carbon, "web-01.cpu-lat.count", 300, minute, minute + 300) == {}


def printed_storage(*flags):
    """(storage-schemas.conf, storage-aggregation.conf) as `gsender-bcc --carbon-config` prints
    them for these flags."""
    printed = subprocess.run(AGENT + ["--config", "/dev/null", "--carbon-config", *flags],
                             capture_output=True, text=True, check=True).stdout
    return split_rendered(printed)


def test_printed_stanzas_roll_up_exactly(carbon_with):
    """Frequency 1, the printed stanzas with two archives, 1s:10m and 5s:1h: each 5 s point
    of the coarse archive from the five 1 s points under it."""
    schemas, aggregation = printed_storage("--frequency", "1", "--prefix", "t.cpu-lat")
    schemas = re.sub(r"(?m)^retentions = .*$", "retentions = 1s:10m,5s:1h", schemas)
    carbon = carbon_with(schemas + "\n" + local_carbon.SCHEMAS,
                         aggregation + "\n" + local_carbon.AGGREGATION)
    config = Config(prefix="t.cpu-lat", frequency=1)
    start = (int(time.time()) // 5 - 12) * 5  # a minute ago: inside the 1 s archive
    sent = {}
    for i in range(10):
        steady = ServiceStats("steady", interval(5 + i, 0.25 * (i + 1), p99=20.0 + (i * 7) % 5))
        services = [steady]
        if i == 2:  # in 1 of the 5 points of the first coarse one: in and out of the top list
            services.append(ServiceStats("brief", interval(3, 1.5, p99=70.0, top=90.0)))
        sent[start + i] = (interval(10 + 3 * i, 0.5 * (i + 1) + 0.25, p99=100.0 + (i * 37) % 11,
                                    top=500.0 if i == 3 else 200.0 + i,
                                    rates=((0, 1.5 * i), (1, 0.25), (2, 4.0 - i / 4))), services)
    carbon.send_and_settle(b"".join(lines(config, stamp, stats, services)
                                    for stamp, (stats, services) in sent.items()))

    def coarse_and_fine(name):
        return (fetch(carbon, f"t.cpu-lat.{name}", 5, start, start + 10),
                fetch(carbon, f"t.cpu-lat.{name}", 1, start, start + 10))

    def under(fine, window):
        return [fine[t] for t in range(window, window + 5) if t in fine]

    windows = (start, start + 5)
    for name, rolled in (("count", sum), ("wait_ms", sum), ("service.steady.count", sum),
                         ("service.steady.wait_ms", sum), ("max", max), ("p99", max),
                         ("service.steady.p99", max),
                         ("mean", lambda v: sum(v) / len(v)), ("0", lambda v: sum(v) / len(v))):
        coarse, fine = coarse_and_fine(name)
        assert len(fine) == 10, name
        assert coarse == {w: rolled(under(fine, w)) for w in windows}, name
    # The sums are the hand-made ones, exactly (values with binary fractions only).
    assert coarse_and_fine("count")[0] == {start: 80.0, start + 5: 155.0}
    assert coarse_and_fine("wait_ms")[0] == {start: 8.75, start + 5: 21.25}
    assert coarse_and_fine("max")[0] == {start: 500.0, start + 5: 209.0}
    # The brief service's one point of five still has its coarse point, as it was.
    for name, value in (("count", 3.0), ("wait_ms", 1.5), ("max", 90.0), ("p99", 70.0),
                        ("mean", 500.0)):
        assert coarse_and_fine(f"service.brief.{name}") == ({start: value}, {start + 2: value})


def test_carbon_matches_the_printed_tagged_stanzas(tmp_path):
    """With tags, carbon sees `cpu-lat.<stat>;host=...;service=...`: each file gets the printed
    archives and its kind's roll-up."""
    import whisper
    from carbon.util import TaggedSeries
    schemas, aggregation = printed_storage("--frequency", "5", "--tags")
    config = Config(tags=True, frequency=5)
    stats = interval(10, 2.0, p99=30.0, rates=((0, 1.0), (1, 1.0)))
    sent = lines(config, int(time.time()) // 5 * 5 - 30, stats,
                 [ServiceStats("nginx", stats, {"pressure": 2.5})])
    carbon = CarbonCache(tmp_path / "carbon", schemas=schemas, aggregation=aggregation,
                         extra_config="ENABLE_TAGS = False\n").start()  # no tag database here
    try:
        carbon.send_and_settle(sent)
    finally:
        carbon.stop()
    methods = {}
    for line in sent.decode().splitlines():
        name = line.split(" ")[0]
        info = whisper.info(str(carbon.whisper_dir / (TaggedSeries.encode(
            TaggedSeries.parse(name).path, "/", hash_only=True) + ".wsp")))
        assert [(a["secondsPerPoint"], a["retention"]) for a in info["archives"]] == [
            (5, 7 * 86400), (60, 30 * 86400), (600, 365 * 86400)], name
        assert info["xFilesFactor"] == 0, name
        methods[re.sub(r";host=[^;]*", "", name)] = info["aggregationMethod"]
    assert methods == {
        "cpu-lat.count": "sum", "cpu-lat.wait_ms": "sum", "cpu-lat.mean": "average",
        "cpu-lat.p50": "max", "cpu-lat.p90": "max", "cpu-lat.p99": "max", "cpu-lat.max": "max",
        "cpu-lat.bucket;lower_us=0": "average", "cpu-lat.bucket;lower_us=1": "average",
        "cpu-lat.agent.samples_lost": "sum", "cpu-lat.service.count;service=nginx": "sum",
        "cpu-lat.service.wait_ms;service=nginx": "sum",
        "cpu-lat.service.mean;service=nginx": "average",
        "cpu-lat.service.p50;service=nginx": "max", "cpu-lat.service.p90;service=nginx": "max",
        "cpu-lat.service.p99;service=nginx": "max", "cpu-lat.service.max;service=nginx": "max",
        "cpu-lat.service.pressure;service=nginx": "average"}


# ---- the fleet queries, rendered by graphite-web --- -------------------------------------

def fleet_queries():
    """{target: what it is for} from the example block fleet-queries of docs/operations.md."""
    text = OPERATIONS.read_text()
    block = text.split("<!-- example: fleet-queries -->\n```\n", 1)[1].split("```\n", 1)[0]
    recipes, about = {}, None
    for line in block.splitlines():
        if line.startswith("# "):
            about = line[2:]
        elif line.strip():
            recipes[line.strip()] = about
    return recipes


# Six hosts, two intervals (s0, s1): (count, wait_ms, p99, bucket rates), and nginx on two.
HOSTS = {
    "h1": [(100, 5.0, 20.0, {0: 1.0, 1: 2.0, 2: 0.5}), (200, 30.0, 25.0, {0: 2.0, 1: 1.0})],
    "h2": [(350, 45.0, 900.0, {0: 3.0, 1: 0.0, 2: 1.5, 4: 0.25}), (50, 10.0, 30.0, {0: 1.0})],
    "h3": [(0, 0.0, None, {}), (0, 0.0, None, {})],  # nothing waited: count and wait_ms only
    "h4": [(50, 2.5, 40.0, {0: 1.0}), (50, 2.5, 45.0, {0: 1.0})],
    "h5": [(50, 2.5, 60.0, {0: 1.0}), (50, 2.5, 50.0, {0: 1.0})],
    "h6": [(50, 5.0, 10.0, {0: 1.0}), (50, 5.0, 5000.0, {0: 1.0})],
}
NGINX = {"h1": [(40, 2.0, 30.0), (60, 6.0, 80.0)], "h2": [(160, 14.0, 700.0), (40, 4.0, 20.0)]}

# By hand, for each fleet query: {series name as graphite-web names it: (s0, s1)}.
EXPECTED = {
    # (5 + 45 + 2.5 + 2.5 + 5) ms / 600 samples; (30 + 10 + 2.5 + 2.5 + 5) ms / 400 samples
    "alias(scale(divideSeries(sumSeries(*.cpu-lat.wait_ms),sumSeries(*.cpu-lat.count)),1000),"
    "'fleet mean us')": {"fleet mean us": (100.0, 125.0)},
    # each bucket's rate summed over the hosts that sent it
    "groupByNode(*.cpu-lat.[0-9]*,2,'sumSeries')": {
        "0": (7.0, 6.0), "1": (2.0, 1.0), "2": (2.0, None), "4": (0.25, None)},
    # the largest p99 in the window: h6 5000, h2 900, h5 60 (h4 45 and h1 25 are left out)
    "aliasByNode(highestMax(consolidateBy(*.cpu-lat.p99,'max'),3),0)": {
        "h6": (10.0, 5000.0), "h2": (900.0, 30.0), "h5": (60.0, 50.0)},
    # (2 + 14) ms / 200 samples; (6 + 4) ms / 100 samples
    "alias(scale(divideSeries(sumSeries(*.cpu-lat.service.nginx.wait_ms),"
    "sumSeries(*.cpu-lat.service.nginx.count)),1000),'nginx mean us')": {
        "nginx mean us": (80.0, 100.0)},
    "aliasByNode(consolidateBy(*.cpu-lat.service.nginx.p99,'max'),0)": {
        "h1": (30.0, 80.0), "h2": (700.0, 20.0)},
}


def fleet_lines(stamps):
    sent = b""
    for host, intervals in HOSTS.items():
        config = Config(prefix=f"{host}.cpu-lat", frequency=1)
        for k, (count, wait_ms, p99, rates) in enumerate(intervals):
            services = [ServiceStats("nginx", interval(*NGINX[host][k][:2], p99=NGINX[host][k][2]))
                        ] if host in NGINX else []
            stats = interval(count, wait_ms, p99=p99, rates=sorted(rates.items()))
            sent += lines(config, stamps[k], stats, services)
    return sent


def test_every_fleet_query_gives_the_numbers_worked_out_by_hand(tmp_path):
    recipes = fleet_queries()
    assert sorted(recipes) == sorted(EXPECTED)  # a recipe without its check fails here
    stamps = (int(time.time()) - 20, int(time.time()) - 19)
    with LocalGraphite(tmp_path / "graphite") as graphite:
        graphite.carbon.send_and_settle(fleet_lines(stamps))
        for target, expected in EXPECTED.items():
            status, kind, body = graphite.web.get("/render?" + urlencode(
                {"target": target, "from": stamps[0] - 1, "until": stamps[1], "format": "json"}))
            assert (status, kind) == (200, "application/json"), (target, body[:500])
            drawn = {}
            for series in json.loads(body):
                values = dict((t, v) for v, t in series["datapoints"])
                drawn[series["target"]] = tuple(None if values.get(t) is None
                                                else round(values[t], 9) for t in stamps)
            assert drawn == expected, recipes[target]


@pytest.mark.bpf
def test_the_agent_into_the_printed_stanzas_rolls_up_exactly(carbon_with, agent_factory, tmp_path):
    """The real agent at frequency 1 into carbon-cache with the printed stanzas and the archives
    1s:10m,5s:1h: every 5 s point is the sum (count, wait_ms) or the maximum (max, p99) of the
    1 s points under it, for the host and each service, also where a service sent only some."""
    schemas, aggregation = printed_storage("--frequency", "1", "--prefix", "agent.cpu-lat")
    schemas = re.sub(r"(?m)^retentions = .*$", "retentions = 1s:10m,5s:1h", schemas)
    carbon = carbon_with(schemas + "\n" + local_carbon.SCHEMAS,
                         aggregation + "\n" + local_carbon.AGGREGATION)
    agent = agent_factory(["--echo", "--config", "/dev/null", "--frequency", "1", "--prefix",
                           "agent.cpu-lat", "--graphite-host", "127.0.0.1", "--graphite-port",
                           str(carbon.port), "--state-directory", str(tmp_path / "state")])
    stamps = agent.stamps(13, timeout=60)
    code, _ = agent.stop()
    assert code == 0
    carbon.send_and_settle(b"")  # everything the agent sent is written
    windows = [w for w in range(stamps[0] // 5 * 5 + 5, stamps[-1] - 4, 5)]
    assert len(windows) >= 1
    names = [name for name in carbon.series() if name.endswith((".count", ".wait_ms", ".max",
                                                                ".p99"))]
    checked = 0
    for name in names:
        rolled = max if name.endswith((".max", ".p99")) else sum
        coarse = fetch(carbon, name, 5, windows[0], windows[-1] + 5)
        fine = fetch(carbon, name, 1, windows[0], windows[-1] + 5)
        for window in windows:
            under = [fine[t] for t in range(window, window + 5) if t in fine]
            assert coarse.get(window) == (rolled(under) if under else None), (name, window)
            checked += bool(under)
    assert checked >= 4 * len(windows)  # the host's four series at least
