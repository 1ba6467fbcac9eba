"""The figures and examples the documents show, checked against the agent's own code.

The figures come from one place: scripts/docs_figures.py computes them from the code and
writes them into the tables of docs/ (`make settings-docs`). These tests fail while a table is
stale, and check the computations behind the tables. The examples (the README's `--stdout`
lines, the `--top` screen, the classic drop-in) are read from the block under their
`<!-- example: NAME -->` line, never from the sentences around them.
"""

import math
import os
import re
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

import docs_figures
from gsender_bcc import metrics, program, sink
from gsender_bcc.cgroups import v2_mount
from gsender_bcc.config import Config
from gsender_bcc.histogram import Counts, IntervalStats, interval_stats, slot_of, slot_value
from gsender_bcc.metrics import Interval, ServiceStats, agent_points, summary, to_datapoints
from gsender_bcc.probe import reserved_culprits
from gsender_bcc.sink import GraphiteSink

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = program.installed_layout()
DAY = 86400


def example(page: str, name: str) -> list:
    """The lines of the fenced block under ``<!-- example: name -->`` in ``page``."""
    text = (ROOT / page).read_text()
    marker = f"<!-- example: {name} -->\n"
    assert marker in text, f"{page} has no example named {name}"
    block = text.split(marker, 1)[1]
    assert block.startswith("```"), f"{page}: the example {name} is not a fenced block"
    return block.split("\n", 1)[1].split("```", 1)[0].splitlines()


# -- the tables of figures --

def test_every_table_of_figures_is_what_the_code_gives(capsys):
    assert docs_figures.main(["check"]) == 0, capsys.readouterr().err


def test_a_stale_table_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    page = tmp_path / "design.md"
    page.write_text(docs_figures.PAGES[0].read_text().replace("| 256 KiB |", "| 255 KiB |"))
    assert page.read_text() != docs_figures.PAGES[0].read_text()
    monkeypatch.setattr(docs_figures, "PAGES", [page])
    assert docs_figures.main(["check"]) == 1
    assert "differs from the code's figures: run `make settings-docs`" in capsys.readouterr().err


def test_every_table_a_page_names_is_filled():
    for page in docs_figures.PAGES:
        names = re.findall(r"<!-- figures: ([\w-]+) ", page.read_text())
        assert names and set(names) <= set(docs_figures.blocks()), page


# -- what one interval takes in the outbox --

@pytest.mark.parametrize("culprits", [0, docs_figures.USUAL_CULPRITS])
def test_an_interval_is_stored_as_its_datapoints_and_counted_as_stored(tmp_path, culprits):
    stored = docs_figures.stored_interval(tmp_path, docs_figures.USUAL_HOST, 20,
                                          docs_figures.USUAL_NAME_CHARS,
                                          docs_figures.USUAL_BUCKETS, max_culprits=culprits)
    assert stored.counted == len(stored.data), "the byte limit counts other bytes than on disk"
    lines = stored.data.decode().splitlines()
    assert all(line.startswith(f"{docs_figures.USUAL_HOST}.cpu-lat.") for line in lines)
    assert len({line.split(" ")[2] for line in lines}) == 1  # one stamp for the interval
    paths = docs_figures.series_paths(Config(prefix="p", max_culprits=culprits),
                                      docs_figures.USUAL_BUCKETS, 20, breakdown=True)
    assert len(lines) == len(paths)


def test_a_day_at_the_defaults_fits_the_default_buffer(tmp_path):
    config = Config()
    data = docs_figures.stored_interval(tmp_path, docs_figures.USUAL_HOST, config.max_services,
                                        docs_figures.USUAL_NAME_CHARS,
                                        docs_figures.USUAL_BUCKETS).data
    assert len(data) * DAY // config.frequency <= config.buffer_bytes
    assert DAY - config.frequency < config.buffer_seconds


def test_the_longest_names_make_the_largest_interval(tmp_path):
    usual, longest = (docs_figures.stored_interval(tmp_path / name, host, 20, chars, 16).data
                      for name, host, chars in (
                          ("usual", docs_figures.USUAL_HOST, docs_figures.USUAL_NAME_CHARS),
                          ("longest", "h" * metrics.MAX_HOST_CHARS, metrics.MAX_SERVICE_CHARS)))
    assert usual.count(b"\n") == longest.count(b"\n") and len(longest) > 4 * len(usual)
    assert max(len(line.split(b" ")[0]) for line in longest.splitlines()) <= \
        metrics.MAX_PATH_CHARS


# -- series per host --

@pytest.mark.parametrize("culprits", [0, docs_figures.USUAL_CULPRITS])
def test_the_series_add_up(culprits):
    counts = docs_figures.series_counts(culprits)
    assert counts["total"] == counts["host"] + counts["behind"] + counts["buckets"] + \
        counts["agent"] + counts["per service"] * counts["services"] + counts["other"]
    assert counts["buckets"] == docs_figures.USUAL_BUCKETS
    assert counts["behind"] == (len(reserved_culprits()) if culprits else 0)
    per_culprit = counts["per service"] - docs_figures.series_counts(0)["per service"]
    blame = len(metrics.BLAME_FIGURES) + culprits + 1  # behind.<each>_ms, behind.other_ms
    assert per_culprit == (blame if culprits else 0)
    # other has every figure of a service but cpu.pressure and throttling
    assert counts["other"] == counts["per service"] - len(metrics.SERVICE_FIGURES)


def test_a_wait_of_a_second_reaches_the_bucket_of_2_to_the_19_us():
    assert docs_figures.bucket_count(1_000_000) == 2 + (1_000_000).bit_length() - 1


# -- the examples are the code's --

def test_the_stdout_example_is_what_the_code_prints():
    lines = [line for line in example("README.md", "stdout") if line != "..."]
    values = {}
    for line in lines:
        path, value, stamp = line.split(" ")
        values[path] = float(value)
        assert int(stamp) % 5 == 0, "make run's frequency is 5"
    seconds = 5.0  # make run's frequency
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
    # The summary make run prints for the same interval names the same figures.
    host = IntervalStats(seconds, int(values[f"{prefix}.count"]), 0, values[f"{prefix}.mean"],
                         tuple((p, values[f"{prefix}.p{p}"]) for p in (50, 90, 99)),
                         values[f"{prefix}.max"], (), 0)
    assert summary(host).startswith(f"{int(values[prefix + '.count'])} samples in {seconds}s, "
                                    f"mean={values[prefix + '.mean']:.1f}us")


def test_the_top_example_adds_up():
    lines = example("docs/operations.md", "top")
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
    conf = tmp_path / "gsender.conf"
    conf.write_text("[default]\nscript_path = /opt/gsender/runqlat.bt\n")
    command = [sys.executable, "-m", "gsender_bcc", "--config", str(conf), "--check-config"]
    plain = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    for env, first in ((plain, r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO "),
                       ({**plain, "JOURNAL_STREAM": "8:1234"}, r"INFO ")):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
        notice = [line for line in done.stderr.splitlines() if "script_path" in line]
        assert len(notice) == 1 and re.match(first + r"\S", notice[0]), done.stderr


def test_a_cgroups_entry_is_its_slots_its_sum_and_its_culprit_counters():
    """The limits table computes the cgroup map's memory as entries × (slots + 1 + the culprit
    counters) × 8 bytes: one entry is the histogram's slots, the exact sum and, with the
    attribution (the default), its culprit counters; nothing per CPU."""
    text = (program.source_dir() / program.HEADER_NAME).read_text()
    fields = re.search(r"struct cgroup_stats \{(.*?)\};", text, re.S).group(1)
    assert re.findall(r"(?:u64|struct culprit_slot) (\w+)", fields) == [
        "slots", "sum_ns", "self_ns", "reserved_ns", "other_ns", "culprits"]
    slot = re.search(r"struct culprit_slot \{(.*?)\};", text, re.S).group(1)
    assert re.findall(r"u64 (\w+)", slot) == ["culprit", "ns", "claimed_at", "epoch"]
    constants = program.installed_constants()
    words = LAYOUT.slots + 1 + 2 + constants["RESERVED_CULPRITS"] + 4 * constants["CULPRIT_SLOTS"]
    mib = program.DEFAULT_MAX_CGROUPS * words * 8 / 2 ** 20
    assert math.isclose(mib, 8.7, rel_tol=0.05)


def test_a_udp_datagram_crosses_an_ipv6_path_with_a_1500_byte_mtu_unfragmented():
    assert sink.DATAGRAM_BYTES == 1500 - 40 - 8  # the MTU less the IPv6 and UDP headers


def test_the_include_trees_only_per_architecture_file_is_the_page_size():
    tree = program.include_tree()
    files = [path.relative_to(tree).as_posix() for path in program.include_tree_files(tree)]
    by_arch = [f for f in files if f.startswith("arch/")]
    assert sorted(by_arch) == [f"arch/{a}/include/asm/page.h" for a in ("arm64", "x86")]


@pytest.mark.parametrize("required, outcome", [(False, pytest.skip.Exception),
                                               (True, pytest.fail.Exception)])
def test_bpf_tests_skip_without_root_unless_required(monkeypatch, required, outcome):
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


EXPOSURE = 2.3  # the bound tests/vm holds the running unit to, as shipped
EXPOSURE_CLASSIC = 2.6  # and with the classic drop-in


def _security(root: Path) -> str:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "gsender-bcc.service"], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _exposure(root: Path) -> float:
    text = _security(root)
    score = re.search(r"Overall exposure level for gsender-bcc\.service: ([\d.]+)", text)
    assert score, text
    return float(score.group(1))


@pytest.fixture
def unit_root(tmp_path):
    """A root holding the shipped unit, scored offline by this host's systemd-analyze."""
    if subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True,
                      text=True).stdout.find("--offline") < 0:
        pytest.skip("this systemd-analyze has no --offline")
    units = tmp_path / "etc/systemd/system"
    (units / "gsender-bcc.service.d").mkdir(parents=True)
    (units / "gsender-bcc.service").write_text((ROOT / "packaging/gsender-bcc.service").read_text())
    return tmp_path


def test_the_shipped_units_exposure_is_within_its_bound(unit_root):
    """systemd-analyze offline, on this host's systemd, scores the unit as shipped and with the
    drop-in of docs/operations.md (make test-vm checks the running service on each release)."""
    drop_in = re.search(r"printf '(\[Service\][^']*)'",
                        "\n".join(example("docs/operations.md", "classic-drop-in"))).group(1)
    plain = _exposure(unit_root)
    assert plain <= EXPOSURE
    drop_ins = unit_root / "etc/systemd/system/gsender-bcc.service.d"
    (drop_ins / "classic.conf").write_text(drop_in.replace("\\n", "\n"))
    assert plain < _exposure(unit_root) <= EXPOSURE_CLASSIC


def test_the_man_pages_no_home_drop_in_takes_the_homes_away(unit_root):
    """The shipped unit reads the homes (rootless podman's stores); the man page's drop-in
    hides them and drops the capability, and the score falls back by what they cost."""
    shipped = _security(unit_root)
    page = (ROOT / "packaging/gsender-bcc.1").read_text()
    drop_in = re.search(r"no-home\.conf.*?\n\.nf\n(.*?)\.fi\n", page, re.S).group(1)
    assert drop_in == "[Service]\nProtectHome=yes\nCapabilityBoundingSet=~CAP_DAC_READ_SEARCH\n"
    (unit_root / "etc/systemd/system/gsender-bcc.service.d/no-home.conf").write_text(drop_in)
    hidden = _security(unit_root)
    for check in ("ProtectHome=", "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)"):
        assert f"✗ {check} " in shipped and f"✓ {check} " in hidden, check
    assert _exposure(unit_root) < EXPOSURE


def test_the_outbox_files_replay_by_hand_into_carbon(tmp_path, carbon_factory):
    """`cat <outbox>/*.txt | nc graphite 2003`: the files, in the shell's glob order, are a
    plaintext stream carbon stores as sent (this host has no nc: a socket stands in)."""
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
