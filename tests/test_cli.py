"""The command line as an operator meets it, run as a real process."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (AGENT, agent_program_count, assert_unloaded, program_ids_of,
                      wait_for_programs_of)
from gsender_bcc import __version__

LINE = re.compile(r"^(\S+) (\S+) (\d+)$")


def agent(*args, timeout=60):
    return subprocess.run(AGENT + list(args), capture_output=True, text=True, timeout=timeout)


class TestUsage:
    def test_version(self):
        result = agent("--version")
        assert (result.returncode, result.stdout) == (0, f"gsender-bcc {__version__}\n")

    @pytest.mark.parametrize("args, message", [
        (["--frequency", "abc"], "argument --frequency: 'abc' must be a whole number of seconds "
                                 "from 1 to 3600"),
        (["--frequency", "0"], "argument --frequency: '0' must be from 1 to 3600 seconds"),
        (["--graphite-port", "70000"], "argument --graphite-port: '70000' must be from 1 to 65535"),
        (["--graphite-host", ""], "argument --graphite-host: '' must not be empty"),
        (["--state-directory", "var"], "argument --state-directory: 'var' must be an absolute path"),
        (["--once", "--check"], "argument --check: not allowed with argument --once"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ])
    def test_bad_arguments_get_one_line_and_exit_64(self, args, message):
        result = agent(*args)
        assert result.returncode == 64
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and message in result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_prefix_is_one_line(self):
        result = agent("--prefix", "a b", "--once")
        assert result.returncode == 64
        assert result.stderr == ("gsender-bcc: argument --prefix: 'a b' must be dot-separated "
                                 "parts of letters, digits, '_' and '-' (see --help)\n")


class TestCarbonSchemaWarning:
    """--check warns in one line, before it loads anything, when this host's carbon would store
    the series at another resolution than the frequency (gsender_bcc/carbon_storage.py decides)."""

    STOCK = "[default]\npattern = .*\nretentions = 60s:1d,5m:30d,1h:3y\n"

    def test_check_warns_first_then_loads_the_program(self, tmp_path, monkeypatch, capsys,
                                                       caplog):
        from gsender_bcc import carbon_storage, cli, probe
        from gsender_bcc.errors import AgentError
        schemas = tmp_path / "storage-schemas.conf"
        schemas.write_text(self.STOCK)
        monkeypatch.setattr(carbon_storage, "LOCAL_SCHEMAS", str(schemas))
        warned_before_loading = []

        class Refused:
            def __init__(self, config):
                warned_before_loading.append(len(caplog.records))
                raise AgentError("no BPF in this test", 69)
        monkeypatch.setattr(probe, "Probe", Refused)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        try:
            with caplog.at_level("WARNING", logger="gsender_bcc"):
                assert cli.main(["--check", "--config", "/dev/null", "--prefix", "h.cpu-lat"]) \
                    == 69
        finally:  # run() blocks the daemon's signals, and children would inherit that
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        assert capsys.readouterr().err == "gsender-bcc: no BPF in this test\n"
        assert warned_before_loading == [1]
        assert [r.getMessage() for r in caplog.records] == [
            f"carbon here stores h.cpu-lat.count at one point per 60 s ([default] in {schemas}), "
            f"but the agent sends every 15 s: intervals in the same 60 s overwrite each other and "
            f"only the last is kept; gsender-bcc --carbon-config prints stanzas that fit"]

    @pytest.mark.parametrize("host, schema, warned", [
        ("localhost", STOCK, True), ("127.0.0.1", STOCK, True),
        ("graphite.example.com", STOCK, False),
        ("localhost", "[all]\npattern = .*\nretentions = 15s:7d\n", False)])
    def test_only_a_disagreeing_local_schema_is_reported(self, host, schema, warned, caplog):
        from gsender_bcc import cli
        from gsender_bcc.config import Config
        with caplog.at_level("WARNING", logger="gsender_bcc"):
            cli.warn_about_local_schema(Config(server_address=host), read=lambda path: schema)
        assert len(caplog.records) == warned


@pytest.mark.bpf
class TestWithBpf:
    def test_once_stdout_prints_every_series_for_one_interval(self, busy_cpu):
        started = time.monotonic()
        result = agent("--once", "--stdout", "--frequency", "2", "--prefix", "t.cpu-lat")
        lived = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        lines = [LINE.match(line) for line in result.stdout.splitlines()]
        assert all(lines), result.stdout
        values = {m.group(1): float(m.group(2)) for m in lines}
        stamps = {int(m.group(3)) for m in lines}
        assert len(stamps) == 1 and stamps.pop() % 2 == 0
        for name in ("count", "mean", "p50", "p90", "p99", "max", "0", "agent.samples_lost",
                     "agent.services_overflow", "service.root.count", "service.root.p99"):
            assert f"t.cpu-lat.{name}" in values
        assert values["t.cpu-lat.count"] > 0
        assert 0 < values["t.cpu-lat.p50"] <= values["t.cpu-lat.p90"] <= values["t.cpu-lat.p99"] \
            <= values["t.cpu-lat.max"]
        service_counts = [v for k, v in values.items() if re.fullmatch(r"t\.cpu-lat\.service\.[^.]+"
                                                                       r"\.count", k)]
        assert sum(service_counts) == values["t.cpu-lat.count"]
        buckets = [v for k, v in values.items() if re.fullmatch(r"t\.cpu-lat\.\d+", k)]
        # Rates are per second of the interval, which runs from the attach to the next
        # boundary (2 s away at most, later if the agent is late to read it): the count over the
        # rates gives the length the agent logs (to 0.1 s; rates are rounded to 0.001/s), and
        # that lies within the agent's life.
        seconds = values["t.cpu-lat.count"] / sum(buckets)
        logged = float(re.search(r"samples in ([0-9.]+)s", result.stderr).group(1))
        assert seconds == pytest.approx(logged, abs=0.05, rel=0.01), result.stderr
        assert 0 < logged <= lived

    def test_check_attaches_reads_and_detaches(self):
        proc = subprocess.Popen(AGENT + ["--check"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            ours = wait_for_programs_of(proc.pid, agent_program_count())  # seen while attached
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, err
        assert re.fullmatch(r"OK: BPF program attached to the raw tracepoints sched_wakeup, "
                            r"sched_wakeup_new, sched_switch, sched_process_free and sched_migrate_task; "
                            r"\d+ samples in 1s; \d+ services seen; detached\n", out)
        assert_unloaded(ours)

    @pytest.mark.parametrize("mode, attached", [
        ("classic", "tracepoints sched_wakeup, sched_wakeup_new, sched_switch and "
                    "sched_process_free"),
        ("raw", "raw tracepoints sched_wakeup, sched_wakeup_new, sched_switch and "
                "sched_process_free")])
    def test_check_in_a_forced_mode(self, mode, attached):
        result = agent("--check", "--tracepoints", mode, "--max-services", "0")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"OK: BPF program attached to the {attached}; ")
        assert "per-service breakdown off" in result.stdout

    def test_dump_bpf_shows_source_and_flags(self):
        result = agent("--dump-bpf")
        assert result.returncode == 0
        assert re.search(r"compile flags: -I\S+/bpf -DSTART_ENTRIES=\d+ -DPER_CGROUP=1 "
                         r"-DMAX_CGROUPS=4096 -DCULPRITS=1 "
                         r"-DLINUX_VERSION_CODE=\d+ -DGSENDER_PAGE_SIZE=\d+ "
                         r"-DRAW_TRACEPOINTS -DSTATE_OFFSET=\d+ -DSTATE_SIZE=[48] "
                         r"-DPREV_STATE_ARGUMENT=[01] "
                         r"\*/", result.stdout)
        assert re.search(r"include tree \(BCC_KERNEL_SOURCE\): \S+/bpf/kernel-stubs; no kernel "
                         r"headers are read", result.stdout)
        assert re.search(r"---- \S+/kernel-stubs/include/linux/kconfig.h ----", result.stdout)
        assert "#define CONFIG_BPF_SYSCALL 1" in result.stdout
        assert "RAW_TRACEPOINT_PROBE(sched_switch)" in result.stdout
        assert "#define HIST_SLOTS 241" in result.stdout

    @pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
    def test_stop_signal_detaches_and_exits_0_promptly(self, stop):
        proc = subprocess.Popen(AGENT + ["--stdout", "--frequency", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()
            assert LINE.match(first.strip()), first
            ours = program_ids_of(proc.pid)
            assert len(ours) == agent_program_count()
            proc.send_signal(stop)
            sent = time.monotonic()
            assert proc.wait(timeout=10) == 0
            # A stop takes a couple of seconds at most (sink.CLOSE_SECONDS + JOIN_SECONDS).
            assert time.monotonic() - sent < 3.0
        finally:
            proc.kill()
            proc.wait()
        assert_unloaded(ours)


@pytest.mark.bpf
class TestHostProblems:
    """Each missing prerequisite gets one line naming it and the fix; nothing stays attached."""

    def run_in_private_mounts(self, shell_setup):
        """Run --check in a private mount namespace after ``shell_setup`` hides something."""
        command = f"{shell_setup} && exec {' '.join(AGENT)} --check"
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               command], capture_output=True, text=True, timeout=60)

    def assert_one_line(self, result, code, text):
        assert result.returncode == code, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("gsender-bcc: ")]
        assert len(errors) == 1 and text in errors[0], result.stderr
        assert "Traceback" not in result.stderr

    def test_not_root(self):
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "--inh-caps=-all"] + AGENT + ["--check"],
                                capture_output=True, text=True, timeout=60)
        self.assert_one_line(result, 77, "needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")

    def test_bcc_not_installed(self):
        # -S leaves out site-packages and dist-packages, so bcc cannot be imported.
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        result = subprocess.run(["/usr/bin/python3", "-S", "-m", "gsender_bcc", "--check"],
                                capture_output=True, text=True, timeout=60, env=env)
        self.assert_one_line(result, 69, "BCC's Python bindings are missing: run 'apt-get install "
                                         "python3-bpfcc'")

    # Kernel trees where BCC would look for headers without the package's own: each one that
    # exists is hidden under an empty tmpfs (a missing one is absent already).
    HIDE_KERNEL_TREES = " && ".join(f"{{ ! [ -d {tree} ] || mount -t tmpfs none {tree}; }}"
                                    for tree in ("/lib/modules", "/usr/src"))

    @pytest.mark.parametrize("mode", ["raw", "classic"])
    def test_no_kernel_headers_are_needed(self, mode, monkeypatch):
        # A BCC_KERNEL_SOURCE left in the environment is overridden, not used.
        monkeypatch.setenv("BCC_KERNEL_SOURCE", "/nonexistent/kernel")
        command = (f"{self.HIDE_KERNEL_TREES} && ! [ -e /sys/kernel/kheaders.tar.xz ] && "
                   f"! ls /lib/modules/* /usr/src/* 2>/dev/null && exec {' '.join(AGENT)} "
                   f"--check --tracepoints {mode}")
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                 command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        counted = re.search(r"; (\d+) samples in 1s;", result.stdout)
        assert counted and int(counted.group(1)) > 0, result.stdout

    @pytest.mark.parametrize("mode", ["raw", "classic"])
    def test_the_arm64_include_tree_compiles(self, mode):
        # BCC takes the architecture from ARCH where set: the arm64 part of the tree is
        # compiled here, and the program (no architecture-specific code) loads and counts.
        result = subprocess.run(AGENT + ["--check", "--tracepoints", mode],
                                env=dict(os.environ, ARCH="arm64"), capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: BPF program attached"), result.stdout

    HIDE_TRACEFS = ("mount -t tmpfs none /sys/kernel/tracing && { ! [ -d /sys/kernel/debug/tracing ]"
                    " || mount -t tmpfs none /sys/kernel/debug/tracing; }")
    HIDE_BTF = "mount -t tmpfs none /sys/kernel/btf"

    def test_raw_tracepoints_need_no_tracefs(self):
        result = self.run_in_private_mounts(self.HIDE_TRACEFS)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: BPF program attached to the raw tracepoints")

    def test_without_btf_classic_tracepoints_are_used(self):
        result = self.run_in_private_mounts(self.HIDE_BTF)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: BPF program attached to the tracepoints")
        assert "using classic tracepoints: cannot use raw ones (/sys/kernel/btf/vmlinux: " \
            in result.stderr

    def test_tracefs_not_mounted_without_btf(self):
        result = self.run_in_private_mounts(f"{self.HIDE_BTF} && {self.HIDE_TRACEFS}")
        self.assert_one_line(result, 69, "tracefs is not mounted: run 'mount -t tracefs nodev "
                                         "/sys/kernel/tracing'")
