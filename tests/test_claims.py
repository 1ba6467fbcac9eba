"""README figures that no other test computes, computed here from the agent's own code.

Each test reads the README's sentence (whitespace folded, so a re-wrapped line still
matches) and compares the figure it states with what the code gives for the inputs the
sentence names. A changed figure or a changed code path fails here, naming the sentence.
"""

import math
import os
import random
import re
import subprocess
import sys
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest

from gsender_bcc import carbon, metrics, program
from gsender_bcc.blame import Blame, culprit_name
from gsender_bcc.cgroups import MAX_NAMES_PER_USER, v2_mount
from gsender_bcc.config import Config
from gsender_bcc.histogram import (Counts, IntervalStats, add_counts, empty_counts,
                                   interval_stats, log2_counts, slot_of, slot_value)
from gsender_bcc.metrics import Interval, ServiceStats, agent_points, summary, to_datapoints
from gsender_bcc.probe import reserved_culprits
from gsender_bcc.sink import GraphiteSink

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = " ".join(README.read_text().split())
LAYOUT = program.installed_layout()
DAY = 86400


def stated(pattern: str) -> re.Match:
    """Return the README's match for ``pattern`` (on the whitespace-folded text), or fail."""
    found = re.search(pattern, TEXT)
    assert found, f"README no longer states what this test checks: /{pattern}/"
    return found


# -- one interval as the agent writes it --

def _histogram(rng: random.Random, samples: int, top_us: int) -> Counts:
    """``samples`` waits spread evenly over the log2 buckets up to the one holding ``top_us``
    (which gets one), each with a sub-microsecond part, as real sums have."""
    slots, total = array("q", bytes(8 * LAYOUT.slots)), 0
    for _ in range(samples - 1):
        us = min(int(2 ** rng.uniform(0, top_us.bit_length())), top_us)
        slots[slot_of(LAYOUT, us)] += 1
        total += us * 1000 + rng.randrange(1000)
    slots[slot_of(LAYOUT, top_us)] += 1
    return Counts(slots, total + top_us * 1000)


def _blame(config: Config, ns, culprits) -> Optional[Blame]:
    """A service's figures with attribution at ``config`` (None: off): ``max_culprits`` of
    ``culprits`` named, each charge ``ns(10**9)`` nanoseconds."""
    if not config.max_culprits:
        return None
    named = tuple((culprit_name(name, ()), ns(10**9)) for name in culprits[:config.max_culprits])
    return Blame(ns(10**9), ns(10**9), ns(10**9), named, ns(10**9))


def _host_behind(config: Config, ns) -> Optional[dict]:
    """The host's wait behind each reserved culprit, with attribution at ``config``."""
    return {name: ns(10**9) for name in reserved_culprits().values()} if config.max_culprits \
        else None


def interval_bytes(tmp_path: Path, monkeypatch, host: str, services: int, name_chars: int,
                   buckets: int, frequency: int = 15,
                   max_culprits: Optional[int] = None) -> bytes:
    """Return what the outbox holds after one interval: host ``host`` (the default prefix),
    ``services`` services named with ``name_chars`` characters, each with its cpu.pressure and
    throttling figures (and with ``max_culprits``, None for the default, whom it waited
    behind: that many of the other services), the rest as ``other``, and the host's log2
    buckets up to the ``buckets``-th. Its datapoints are built by the calls the daemon makes (to_datapoints,
    then agent_points with the sink's health) and stored by the real sink."""
    monkeypatch.setattr(metrics.socket, "gethostname", lambda: host)
    rng = random.Random(26)
    top_us = 1 << (buckets - 2)  # buckets 0, 1, 2, 4, ..., 2^(buckets - 2)
    config = Config(frequency=frequency, state_directory=tmp_path / "state")
    if max_culprits is not None:  # None: the default
        config = replace(config, max_culprits=max_culprits)
    names = [f"s{i:02d}".ljust(name_chars, "x") for i in range(services)]
    counted = [_histogram(rng, rng.randrange(100, 5000), top_us // 2) for _ in names]
    other = _histogram(rng, rng.randrange(100, 5000), top_us)
    host_counts = empty_counts(LAYOUT)
    for counts in counted + [other]:
        host_counts = add_counts(host_counts, counts)
    stats = interval_stats(LAYOUT, host_counts, frequency)
    assert len(stats.log2_rates) == buckets
    listed = [ServiceStats(name, interval_stats(LAYOUT, counts, frequency),
                           {"pressure": rng.uniform(0, 100), "throttled_ms": rng.uniform(0, 50)},
                           _blame(config, rng.randrange, names[i + 1:] + names[:i + 1]))
              for i, (name, counts) in enumerate(zip(names, counted))]
    listed.append(ServiceStats("other", interval_stats(LAYOUT, other, frequency), {},
                               _blame(config, rng.randrange, names)))
    sink = GraphiteSink(config, start=False)
    stamp = int(time.time()) // frequency * frequency
    points = to_datapoints(stats, config, listed, _host_behind(config, rng.randrange))
    points += agent_points(config, {"services_overflow": 0, **sink.health()})
    sink.submit(Interval(stamp, tuple(points)))
    sink.submit(Interval(stamp, tuple(points)))
    outbox = sink._disk
    stored = b"".join(path.read_bytes() for path in sorted(outbox.directory.glob("*.txt")))
    assert outbox.size == len(stored), "the byte limit counts other bytes than those on disk"
    sink.close(0)
    assert stored[:len(stored) // 2] == stored[len(stored) // 2:]
    return stored[:len(stored) // 2]


def test_an_interval_at_the_defaults_is_as_large_as_the_readme_says(tmp_path, monkeypatch):
    claim = stated(r"(\d+) MiB holds a day at the defaults with names of usual length: with the "
                   r"host `([^`]+)`, (\d+) services of (\d+)-character names and (\d+) log2 "
                   r"buckets, an interval is (\d+) lines, ([\d.]+) kB as the agent's code writes "
                   r"them, about (\d+) MB a day at frequency (\d+)")
    mib, host, services, chars, buckets, lines, kb, mb, frequency = claim.groups()
    config = Config()
    assert int(mib) == config.buffer_megabytes and int(frequency) == config.frequency
    assert int(services) == config.max_services
    data = interval_bytes(tmp_path, monkeypatch, host, int(services), int(chars), int(buckets))
    assert data.count(b"\n") == int(lines)
    assert len(data) / 1000 == pytest.approx(float(kb), rel=0.03)
    per_day = len(data) * DAY // config.frequency
    assert per_day / 1e6 == pytest.approx(int(mb), rel=0.03)
    # A day fits both limits: its bytes, and the age of its oldest interval.
    assert per_day <= config.buffer_bytes and DAY - config.frequency < config.buffer_seconds


def test_an_interval_with_the_attribution_is_as_large_as_the_readme_says(tmp_path, monkeypatch):
    host, services, chars, buckets = stated(
        r"with the host `([^`]+)`, (\d+) services of (\d+)-character names and (\d+) log2 buckets, "
        r"an interval is").groups()
    claim = stated(r"With the attribution on \(`max_culprits = (\d+)`, each service naming \1 "
                   r"culprits\) it is (\d+) lines, ([\d.]+) kB, about (\d+) MB a day, and (\d+) MiB "
                   r"holds about (\d+) hours")
    culprits, lines, kb, mb, mib, hours = claim.groups()
    config = Config()
    assert int(mib) == config.buffer_megabytes
    data = interval_bytes(tmp_path, monkeypatch, host, int(services), int(chars), int(buckets),
                          max_culprits=int(culprits))
    assert data.count(b"\n") == int(lines)
    assert len(data) / 1000 == pytest.approx(float(kb), rel=0.03)
    assert len(data) * DAY // config.frequency / 1e6 == pytest.approx(int(mb), rel=0.03)
    held = config.buffer_bytes // len(data) * config.frequency / 3600
    assert held == pytest.approx(int(hours), rel=0.05)


def test_the_longest_names_and_how_long_the_outbox_then_holds(tmp_path, monkeypatch):
    claim = stated(r"With the longest names \(a (\d+)-character host, (\d+)-character services\) "
                   r"an interval is about (\d+) kB and (\d+) MiB holds about (\d+) hours, with the "
                   r"attribution about (\d+) kB and (\d+) hours")
    host_chars, name_chars, kb, mib, hours, kb_blamed, hours_blamed = map(int, claim.groups())
    assert host_chars == metrics.MAX_HOST_CHARS and name_chars == metrics.MAX_SERVICE_CHARS
    config = Config()
    assert mib == config.buffer_megabytes
    culprits = int(stated(r"With the attribution on \(`max_culprits = (\d+)`").group(1))
    for max_culprits, size, held_hours in ((config.max_culprits, kb, hours),
                                           (culprits, kb_blamed, hours_blamed)):
        data = interval_bytes(tmp_path / str(max_culprits), monkeypatch, "h" * host_chars,
                              config.max_services, name_chars, 16, max_culprits=max_culprits)
        assert len(data) / 1000 == pytest.approx(size, rel=0.05)
        held = config.buffer_bytes // len(data) * config.frequency / 3600
        assert held == pytest.approx(held_hours, rel=0.1)


# -- series per host --

def _series(tmp_path: Path, config: Config, buckets: int, services: int, breakdown: bool):
    """Return the series of one full interval: every stat, the buckets up to the
    ``buckets``-th, ``services`` services with their figures and ``other``."""
    slots = array("q", bytes(8 * LAYOUT.slots))
    slots[slot_of(LAYOUT, (1 << (buckets - 2)))] = 1
    stats = interval_stats(LAYOUT, Counts(slots, 1), 1.0)
    names = [f"s{i}" for i in range(services)]
    listed = [ServiceStats(name, stats, {name: 1.0 for name in metrics.SERVICE_FIGURES},
                           _blame(config, lambda top: 1, names[i + 1:] + names[:i + 1]))
              for i, name in enumerate(names)]
    if breakdown:
        listed.append(ServiceStats("other", stats, {}, _blame(config, lambda top: 1, names)))
    health = GraphiteSink(Config(state_directory=tmp_path / "state"), start=False).health()
    extra = {"services_overflow": 0} if breakdown else {}
    behind = _host_behind(config, lambda top: 1) if breakdown else None
    return [p.path for p in to_datapoints(stats, config, listed, behind)
            + agent_points(config, {**extra, **health})]


def test_series_per_host_at_the_defaults(tmp_path):
    claim = stated(r"Series per host at the defaults:\*\* (\d+) host series .*? the log2 buckets "
                   r"`0 1 2 4 … 2\^k` up to the highest non-empty one, (\d+)–(\d+) in an interval "
                   r"\(whisper keeps one file for every bucket ever reached: (\d+) once a wait of "
                   r"a second is seen\); (\d+) agent series .*? for up to `max_services` = (\d+) "
                   r"services, plus the (\d+) stats of `other`: (\d+) × (\d+) \+ (\d+) = (\d+)\. "
                   r"About \*\*(\d+) series\*\* per interval; the whisper files grow by (\d+) for "
                   r"every service name .*? With `max_services = 0`, under (\d+)\.")
    (host, fewest, most, second, agent, services, other, per_service, services_again,
     other_again, service_total, about, grow, without) = map(int, claim.groups())
    config = Config(prefix="p")
    assert services == services_again == config.max_services
    paths = _series(tmp_path, config, most, services, breakdown=True)
    host_paths = [p for p in paths if re.fullmatch(r"p\.[a-z][a-z0-9_]*", p)]
    bucket_paths = [p for p in paths if re.fullmatch(r"p\.\d+", p)]
    agent_paths = [p for p in paths if p.startswith("p.agent.")]
    service_paths = [p for p in paths if p.startswith("p.service.")]
    assert (len(host_paths), len(bucket_paths), len(agent_paths)) == (host, most, agent)
    assert len([p for p in service_paths if p.startswith("p.service.s0.")]) == per_service == grow
    assert len([p for p in service_paths if p.startswith("p.service.other.")]) == other
    assert len(service_paths) == per_service * services + other == service_total
    assert other == other_again
    # "About" the total: between the fewest and the most buckets the sentence gives.
    assert len(paths) - most + fewest <= about <= len(paths)
    # A wait of one second reaches this many buckets.
    one_second = array("q", bytes(8 * LAYOUT.slots))
    one_second[slot_of(LAYOUT, 1_000_000)] = 1
    assert len(log2_counts(LAYOUT, one_second)) == second
    assert len(_series(tmp_path, config, most, 0, breakdown=False)) < without


def test_series_per_host_with_the_attribution(tmp_path):
    claim = stated(r"\*\*With the attribution on\*\* \(`max_culprits` = (\d+)\): (\d+) more host "
                   r"series, .*? up to \1 `behind\.<culprit>_ms` and `behind\.other_ms` \((\d+) in "
                   r"all; (\d+) for `other`, .*?\): \3 × (\d+) \+ \4 = (\d+), about (\d+) series per "
                   r"interval; the whisper files then grow by (\d+) for every service name .*?, and "
                   r"by (\d+) for every culprit that ever reaches one of its top \1\.")
    (culprits, reserved, per_service, other, services, service_total, about, grow,
     by_culprit) = map(int, claim.groups())
    config = Config(prefix="p", max_culprits=culprits)
    assert services == config.max_services and reserved == len(reserved_culprits())
    fewest, most = map(int, stated(r"up to the highest non-empty one, (\d+)–(\d+) in an "
                                   r"interval").groups())
    paths = _series(tmp_path, config, most, services, breakdown=True)
    assert len([p for p in paths if re.fullmatch(r"p\.behind\.[a-z]+_ms", p)]) == reserved
    service_paths = [p for p in paths if p.startswith("p.service.")]
    s0 = [p for p in service_paths if p.startswith("p.service.s0.")]
    named = [p for p in s0 if p.startswith("p.service.s0.behind.") and not p.endswith(".other_ms")]
    assert (len(s0), len(named), by_culprit) == (per_service, culprits, 1)
    assert grow == per_service - culprits
    assert len([p for p in service_paths if p.startswith("p.service.other.")]) == other
    assert len(service_paths) == per_service * services + other == service_total
    assert len(paths) - most + fewest <= about <= len(paths)


def test_series_a_user_can_take(tmp_path):
    claim = stated(r"A user gets at most (\d+) names from one start of the agent to the next "
                   r"\((\d+) series, with the catch-all (\d+)\)")
    names, series, with_catch_all = map(int, claim.groups())
    assert names == MAX_NAMES_PER_USER
    paths = _series(tmp_path, Config(prefix="p"), 16, names + 1, breakdown=False)
    per_service = len([p for p in paths if p.startswith("p.service.s0.")])
    assert (names * per_service, (names + 1) * per_service) == (series, with_catch_all)


# -- a fleet's first send --

def test_the_create_budget_arithmetic_for_a_fleet(tmp_path):
    whisper = pytest.importorskip("whisper")
    claim = stated(r"For \*\*(\d+) hosts\*\*: \1 × (\d+) = (\d+) new series at first send\. One "
                   r"cache at (\d+) a minute needs \3 / \4 = (\d+) minutes, (\d+) hours, .*? four "
                   r"caches behind the relay \((\d+) each\) still need (\d+) hours\. The files "
                   r"also take disk at once: ([\d.]+) MiB each with `retentions = ([^`]+)` \(what "
                   r"`--carbon-config` prints at frequency (\d+)\), (\d+) GiB for \3\. .*? "
                   r"`MAX_CREATES_PER_MINUTE = (\d+)` .*? which brings four caches to \3 / (\d+) ≈ "
                   r"(\d+) minutes, .*? four caches create (\d+) series a minute, about one host a "
                   r"minute")
    (hosts, per_host, total, rate, minutes, hours, each, four_hours, mib, retentions, frequency,
     gib, faster, four_faster, faster_minutes, slow_four) = claim.groups()
    hosts, per_host, total, rate = int(hosts), int(per_host), int(total), int(rate)
    about = int(stated(r"About \*\*(\d+) series\*\* per interval").group(1))
    assert per_host == about and total == hosts * per_host
    assert int(minutes) == total // rate and int(hours) == round(total / rate / 60)
    assert int(each) == total // 4 and int(four_hours) == round(total / 4 / rate / 60)
    assert int(four_faster) == 4 * int(faster)
    assert int(faster_minutes) == round(total / int(four_faster))
    assert int(slow_four) == 4 * rate and round(4 * rate / per_host) == 1
    assert retentions == carbon.retentions(int(frequency))
    whisper.create(str(tmp_path / "one.wsp"), [(precision, kept // precision)
                                               for precision, kept in
                                               carbon.archives(int(frequency))])
    size = os.path.getsize(tmp_path / "one.wsp")
    assert float(mib) == round(size / 2 ** 20, 2)
    assert int(gib) == round(size * total / 2 ** 30)


# -- the README's examples are the code's --

def _example_block(after: str) -> list:
    text = README.read_text()
    start = text.index(after)
    block = text[text.index("```\n", start) + 4:]
    return block[:block.index("```")].splitlines()


def test_the_stdout_example_is_what_the_code_prints():
    lines = [line for line in _example_block("`--stdout` prints exactly") if line != "..."]
    values = {}
    for line in lines:
        path, value, stamp = line.split(" ")
        values[path] = float(value)
        assert int(stamp) % 5 == 0, "make run's frequency is 5"
    seconds = float(stated(r"samples in ([\d.]+)s, mean=").group(1))
    prefix = "web-01.cpu-lat"
    for who in (prefix, f"{prefix}.service.nginx"):
        count, wait_ms = values[f"{who}.count"], values[f"{who}.wait_ms"]
        assert values[f"{who}.mean"] == round(wait_ms * 1000 / count, 3), who
    slot_values = {slot_value(LAYOUT, slot) for slot in range(LAYOUT.slots)}
    for stat in ("p50", "p90", "p99", "max"):
        assert values[f"{prefix}.{stat}"] in slot_values, stat
    for path, rate in values.items():
        if re.fullmatch(re.escape(prefix) + r"\.\d+", path):
            assert rate * seconds == pytest.approx(round(rate * seconds), abs=0.005), \
                f"{path}: {rate}/s is no whole number of samples in {seconds} s"
    # The paths come in the order the code sends them.
    slots = array("q", bytes(8 * LAYOUT.slots))
    slots[slot_of(LAYOUT, 2048)] = 1
    stats = interval_stats(LAYOUT, Counts(slots, 1), seconds)
    services = [ServiceStats("nginx", stats, {"pressure": 1.0, "throttled_ms": 1.0}),
                ServiceStats("other", stats)]
    config = Config(prefix=prefix)
    sent = [p.path for p in to_datapoints(stats, config, services)
            + agent_points(config, {"services_overflow": 0})]
    shown = [line.split(" ")[0] for line in lines]
    assert [p for p in sent if p in shown] == shown
    # The summary make run prints for the same interval.
    host = IntervalStats(seconds, int(values[f"{prefix}.count"]), 0, values[f"{prefix}.mean"],
                         tuple((p, values[f"{prefix}.p{p}"]) for p in (50, 90, 99)),
                         values[f"{prefix}.max"], (), 0)
    shown_summary = stated(r"Each interval's summary is printed \(`interval ending …: ([^…]+) …`")
    assert summary(host).startswith(shown_summary.group(1))


def test_the_top_example_adds_up():
    lines = _example_block("2-core VM, with two busy loops pinned to one CPU in `demo.service`")
    head = re.match(r"samples (\d+)/s +mean ([\d.]+)ms", lines[1])
    samples, mean_ms = int(head.group(1)), float(head.group(2))
    rows = [re.match(r" *\d+ -> \d+ +([\d.]+) \|", line) for line in lines]
    assert sum(float(row.group(1)) for row in rows if row) == pytest.approx(samples, abs=0.5)
    services = [line.split() for line in lines[lines.index(next(
        line for line in lines if line.startswith("SERVICE"))) + 1:] if line.strip()]
    counts = [float(s[1]) for s in services]
    waits = [float(s[2]) for s in services]
    assert sum(counts) == pytest.approx(samples, abs=0.5)
    assert sum(waits) / sum(counts) == pytest.approx(mean_ms, abs=0.005)
    for service, count, wait in zip(services, counts, waits):
        mean = service[3]
        shown = float(mean[:-2]) * (1000 if mean.endswith("ms") else 1)
        assert wait / count * 1000 == pytest.approx(shown, rel=0.01), service[0]


# -- cgroup v1 and the journal --

def without_cgroup_v2(command: list) -> list:
    """Return ``command`` run in a mount namespace of its own where no cgroup v2 is mounted
    (the v1 hierarchies of a hybrid host stay), as on a host with cgroup v1 only."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
              if line.split()[2] == "cgroup2"]
    hide = "".join(f"umount -l {m} && " for m in mounts)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide + 'exec "$@"',
            "sh", *command]


NOTICE = "cgroup v2 is not mounted (cgroup v1 only): the per-service breakdown is off"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_without_cgroup_v2_the_breakdown_is_off_with_one_notice():
    stated(r"On a host with cgroup v1 only the breakdown is off, with one notice")
    if v2_mount() is None:
        pytest.skip("cgroup v2 is not mounted here: nothing to compare with")
    command = [sys.executable, "-m", "gsender_bcc", "--config", "/dev/null", "--dump-bpf"]
    hidden = subprocess.run(without_cgroup_v2(command), capture_output=True, text=True,
                            timeout=60)
    assert hidden.returncode == 0, hidden.stderr
    assert hidden.stderr.count(NOTICE) == 1 and "-DPER_CGROUP=0" in hidden.stdout
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert NOTICE not in shown.stderr and "-DPER_CGROUP=1" in shown.stdout


def test_log_lines_carry_no_timestamp_under_systemd(tmp_path):
    stated(r"Under systemd, log lines carry no timestamp of their own")
    conf = tmp_path / "gsender.conf"
    conf.write_text("[default]\nscript_path = /opt/gsender/runqlat.bt\n")
    command = [sys.executable, "-m", "gsender_bcc", "--config", str(conf), "--check-config"]
    plain = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    for env, first in ((plain, r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO "),
                       ({**plain, "JOURNAL_STREAM": "8:1234"}, r"INFO ")):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
        notice = [line for line in done.stderr.splitlines() if "script_path" in line]
        assert len(notice) == 1 and re.match(first + r"\S", notice[0]), done.stderr


def test_the_map_of_cgroups_is_about_8_mib_whatever_the_cpus():
    claim = stated(r"updated atomically: (\d+) entries, about (\d+) MiB of kernel memory whatever "
                   r"the number of CPUs")
    entries, mib = map(int, claim.groups())
    assert entries == program.DEFAULT_MAX_CGROUPS
    text = (program.source_dir() / program.HEADER_NAME).read_text()
    fields = re.search(r"struct cgroup_stats \{(.*?)\};", text, re.S).group(1)
    assert re.findall(r"u64 (\w+)", fields) == ["slots", "sum_ns"]  # one entry: slots + sum
    value_bytes = (LAYOUT.slots + 1) * 8
    assert round(entries * value_bytes / 2 ** 20) == mib
    assert math.isclose(entries * value_bytes / 2 ** 20, mib, rel_tol=0.1)


def _constant(module: str, name: str):
    import importlib
    return getattr(importlib.import_module(f"gsender_bcc.{module}"), name)


@pytest.mark.parametrize("pattern, value", [
    # each README figure (the first group) and where the code declares it
    (r"Segments are Graphite plaintext lines \(`<sequence>\.txt`, (\d+) digits",
     lambda: _constant("outbox", "NAME_DIGITS")),
    (r"`<sequence>\.txt`, \d+ digits, up to (\d+) KiB each",
     lambda: _constant("outbox", "SEGMENT_BYTES") >> 10),
    (r"delivering from a small in-memory queue \((\d+) MiB\)",
     lambda: _constant("sink", "MEMORY_FALLBACK_BYTES") >> 20),
    (r"\*\*UDP\*\* datagrams carry whole lines, at most (\d+) bytes each, so they cross an IPv6 "
     r"path with a 1500-byte MTU", lambda: 1500 - 40 - 8),
    (r"\*\*UDP\*\* datagrams carry whole lines, at most (\d+) bytes each",
     lambda: _constant("sink", "DATAGRAM_BYTES")),
    (r"waiting intervals get up to (\d+) s to be delivered",
     lambda: _constant("sink", "CLOSE_SECONDS")),
    (r"a send still in progress (\d+) s more", lambda: _constant("sink", "JOIN_SECONDS")),
    (r"at most 2\^(\d+) samples a second of its length",
     lambda: _constant("carryover", "MAX_SAMPLES_PER_SECOND").bit_length() - 1),
    (r"sums under 2\^(\d+) ns", lambda: _constant("carryover", "MAX_SUM_NS").bit_length() - 1),
    (r"which must agree within (\d+) s, with the host up longer",
     lambda: _constant("carryover", "BOOT_TOLERANCE")),
    (r"repeats a timestamp \(its samples wait for the first boundary after the last stamp\) as "
     r"long as that takes at most an (hour)",
     lambda: {3600: "hour"}[_constant("daemon", "MAX_HOLD_SECONDS")]),
    (r"A user gets at most (\d+) names", lambda: MAX_NAMES_PER_USER),
    (r"is cut to (\d+) characters; names that collide are merged",
     lambda: metrics.MAX_SERVICE_CHARS),
    (r"samples of cgroups beyond the kernel map's (\d+) \(counted in `other`\)",
     lambda: program.DEFAULT_MAX_CGROUPS),
    (r"Latencies below (\d+) µs are counted per whole microsecond", lambda: LAYOUT.sub_count),
    (r"each power of two is split into (\d+) equal slots", lambda: LAYOUT.sub_count),
    (r"within 0\.5 µs below 8 µs and within ([\d.]+) % above it",
     lambda: 100 / (2 * LAYOUT.sub_count)),
    (r"Beyond 2\^(\d+) µs \(\d+ minutes\) all share one slot", lambda: LAYOUT.log2_max),
    (r"Beyond 2\^\d+ µs \((\d+) minutes\)", lambda: (1 << LAYOUT.log2_max) // 60_000_000),
])
def test_a_readme_figure_is_the_codes(pattern, value):
    shown = stated(pattern).group(1)
    expected = value()
    assert (float(shown) if isinstance(expected, (int, float)) else shown) == expected, pattern


def test_the_include_tree_is_eight_stub_headers_with_one_file_per_architecture():
    claim = stated(r"\(`bpf/kernel-stubs/`, (\w+) stub headers written for gsender-bcc: .*? The "
                   r"tree's only per-architecture file is `([^`]+)`, for (\w+) and (\w+);")
    count, per_arch, *arches = claim.groups()
    tree = program.include_tree()
    files = [path.relative_to(tree).as_posix() for path in program.include_tree_files(tree)]
    by_arch = [f for f in files if f.startswith("arch/")]
    assert sorted(by_arch) == sorted(f"arch/{a}/include/{per_arch}"
                                     for a in arches)
    words = {"six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
    assert len(files) - len(by_arch) + 1 == words[count], files  # what one compile sees


@pytest.mark.parametrize("required, outcome", [(False, pytest.skip.Exception),
                                               (True, pytest.fail.Exception)])
def test_bpf_tests_skip_without_root_unless_required(monkeypatch, required, outcome):
    stated(r"Outside CI, BPF tests skip with the reason when not root; with "
           r"`GSENDER_REQUIRE_BPF=1` \(as `\.ci/run` sets\) they fail instead")
    import conftest

    class Marked:
        @staticmethod
        def get_closest_marker(name):
            return object() if name == "bpf" else None
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(conftest, "REQUIRE_BPF", required)
    try:
        conftest.pytest_runtest_setup(Marked())
    except (pytest.skip.Exception, pytest.fail.Exception) as ended:
        assert type(ended) is outcome and "needs root" in str(ended)
    else:
        pytest.fail("a BPF test ran without root")
    assert "GSENDER_REQUIRE_BPF=1" in (Path(__file__).resolve().parent.parent / ".ci/run").read_text()


def _exposure(root: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "gsender-bcc.service"], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for gsender-bcc\.service: ([\d.]+)", done.stdout)
    assert score, done.stdout + done.stderr
    return float(score.group(1))


def test_the_shipped_units_exposure_is_the_stated_score(tmp_path):
    """systemd-analyze offline, on this host's systemd, scores the unit as shipped and with the
    README's drop-in (make test-vm checks the running service on each release)."""
    if subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True,
                      text=True).stdout.find("--offline") < 0:
        pytest.skip("this systemd-analyze has no --offline")
    plain = float(stated(r"is hardened to an exposure of ([\d.]+) by `systemd-analyze security`")
                  .group(1))
    before, after = map(float, stated(r"\(the exposure score rises from ([\d.]+) to ([\d.]+)\)")
                        .groups())
    drop_in = stated(r"printf '(\[Service\][^']*)' (?:\\ )?> /etc/systemd/system/"
                     r"gsender-bcc\.service\.d/classic\.conf").group(1)
    units = tmp_path / "etc/systemd/system"
    (units / "gsender-bcc.service.d").mkdir(parents=True)
    unit = Path(__file__).resolve().parent.parent / "packaging/gsender-bcc.service"
    (units / "gsender-bcc.service").write_text(unit.read_text())
    assert _exposure(tmp_path) == plain == before
    (units / "gsender-bcc.service.d/classic.conf").write_text(drop_in.replace("\\n", "\n"))
    assert _exposure(tmp_path) == after


def test_the_outbox_files_replay_by_hand_into_carbon(tmp_path, carbon_factory):
    """`cat <outbox>/*.txt | nc graphite 2003`: the files, in the shell's glob order, are a
    plaintext stream carbon stores as sent (this host has no nc: a socket stands in)."""
    stated(r"`cat /var/lib/gsender-bcc/outbox/\*\.txt \| nc graphite 2003` replays them by hand")
    carbon = carbon_factory().start()
    config = Config(frequency=1, prefix="replay.cpu-lat", state_directory=tmp_path / "state",
                    server_address="127.0.0.1", port=carbon.port)
    sink = GraphiteSink(config, start=False)  # nothing delivered: everything waits on disk
    now = int(time.time())
    sent = {}
    for age in (3, 2, 1):
        slots = array("q", bytes(8 * LAYOUT.slots))
        slots[slot_of(LAYOUT, 10 * age)] = age
        stats = interval_stats(LAYOUT, Counts(slots, age * 10_000), 1.0)
        points = to_datapoints(stats, config)
        sink.submit(Interval(now - age, tuple(points)))
        sent.update({(p.path, now - age): p.value for p in points})
    sink.close(0)
    folder = config.state_directory / "outbox"
    assert len(list(folder.glob("*.txt"))) >= 1
    replayed = subprocess.run(["sh", "-c", f"cat {folder}/*.txt"], capture_output=True,
                              check=True).stdout
    carbon.send_and_settle(replayed)
    stored = {(path, stamp): value for path, points in carbon.series().items()
              for stamp, value in points}
    assert stored == sent
