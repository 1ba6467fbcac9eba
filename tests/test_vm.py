"""Real Debian hosts: our .deb and unit under systemd in qemu guests (tests/vm/).

One guest per Debian release operators run: bullseye (Linux 5.10, BCC 0.18, Python 3.9),
bookworm (6.1, BCC 0.26) and trixie (6.12, BCC 0.31), each with the .deb built here.
Each guest runs its checks against the installed service and prints one
"VMCHECK <name> PASS|FAIL <detail>" line each on its serial console; every check below
passes only on the guest's own PASS, and fails with its words. GSENDER_VM_RELEASES
(e.g. "bookworm") limits the releases booted; the others skip.

The arithmetic of the checks (tests/vm/guest_checks.py) is also tested here without a
guest, with wrong values, so that each of those checks is shown able to fail.
"""

import glob
import importlib.util
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "vm"
# guest: (Debian release, the release whose cloud kernel it boots, that kernel's version prefix)
GUESTS = {"bullseye": ("bullseye", None, "5.10."), "bookworm": ("bookworm", None, "6.1."),
          "trixie": ("trixie", None, "6.12."),
          # A kernel for which the release has no headers package: bookworm's, under trixie.
          "trixie+bookworm-kernel": ("trixie", "bookworm", "6.1."),
          # The operator's day (tests/vm/guest-operator.sh): the original gsender replaced by
          # `make install` and by the .deb, an upgrade over it, remove and purge.
          "bookworm-operator": ("bookworm", None, "6.1.")}
RELEASES = list(GUESTS)
OPERATOR = "bookworm-operator"
OPERATOR_CHECKS = ["old-running"] + [
    f"{path}-{what}" for path in ("install", "deb")
    for what in ("ours-running", "old-stopped", "one-agent", "conf-unchanged", "continuity")] + [
    "rollback", "deb-no-prompt", "upgrade-version", "upgrade-restarted-once", "upgrade-conf-kept",
    "upgrade-outbox-waiting", "upgrade-all-arrived", "remove-kept", "remove-resumed",
    "purge-removed"]
CHECKS = ["active", "ready", "check-default", "check-classic", "unavailable-69", "no-headers",
          "series-arrived",
          "service-series", "accuracy", "physics", "culprit", "peer", "series-stamps",
          "series-order", "series-rates",
          "series-slots", "reload",
          "reload-frequency", "security-score", "no-restarts", "watchdog", "bpf-programs",
          "clean-stop", "config-error", "config-error-message", "missing-header-69",
          "service-classic-refused", "security-score-classic", "service-classic", "purge"]
# The container checks (tests/vm/guest-containers.sh) run in the bookworm guest alone, which
# gets podman and docker.io (GSENDER_VM_CONTAINERS=1): one more boot would cost the suite more than they do.
CONTAINERS = "bookworm"
CONTAINER_CHECKS = ["containers-podman", "containers-podman-restart", "containers-podman-recreate",
                    "containers-docker", "containers-docker-restart", "containers-docker-recreate",
                    "containers-rootless", "containers-adversarial", "containers-k8s",
                    "containers-files"]
SELECTED = os.environ.get("GSENDER_VM_RELEASES", "").split() or RELEASES
BOOTED = [r for r in RELEASES if r in SELECTED]

vm = [pytest.mark.bpf, pytest.mark.vm]


class Guest:
    def __init__(self, release, console, error, seconds):
        self.release, self.console, self.error, self.seconds = release, console, error, seconds


@pytest.fixture(scope="session")
def boot():
    """Boot each release once, on first use; a failed boot fails that release's tests."""
    subprocess.run(["make", "deb"], cwd=ROOT, check=True, capture_output=True, timeout=900)
    deb = glob.glob(str(ROOT / "build" / "gsender-bcc_*_all.deb"))[0]
    subprocess.run(["scripts/setup-host.sh", "debootstrap", "qemu-system-x86", "e2fsprogs"],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    guests = {}

    def run_guest(release):
        work = WORK / release
        started = time.monotonic()
        distro, kernel_from, _ = GUESTS[release]
        # The operator guest runs longer (two installs that compile the program, a pip build
        # and several apt runs under TCG): its own time limit.
        env = dict(os.environ, GSENDER_VM_OPERATOR=operator_files(deb),
                   GSENDER_VM_TIMEOUT=os.environ.get("GSENDER_VM_TIMEOUT", "2700")) \
            if release == OPERATOR else \
            dict(os.environ, GSENDER_VM_CONTAINERS="1") if release == CONTAINERS else None
        run = subprocess.run([str(ROOT / "tests" / "vm" / "run-vm.sh"), deb, str(work), distro]
                             + ([kernel_from] if kernel_from else []),
                             capture_output=True, text=True, timeout=3000 if env is None else 3600,
                             env=env)
        log = work / "console.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        error = None
        if run.returncode != 0 or "VMCHECK-START" not in text:
            # A kernel's report starts long before the panic that ends the console: keep its head.
            crashed = re.search(r"^.*\b(?:Oops|BUG):.*$", text, re.MULTILINE)
            head = (f"\n--- kernel report ---\n{text[crashed.start():crashed.start() + 1500]}"
                    if crashed else "")
            error = (f"the {release} VM did not run its checks (run-vm.sh exited "
                     f"{run.returncode}):\n{run.stderr[-3000:]}{head}\n--- console ---\n"
                     f"{text[-4000:]}")
        return Guest(release, text, error, time.monotonic() - started)

    def guest(release):
        if release not in SELECTED:
            pytest.skip(f"{release} not in GSENDER_VM_RELEASES")
        if release not in guests:
            guests[release] = run_guest(release)
            crash = emulated_patching_crash(guests[release].console)
            if crash:
                # Seen once under qemu's TCG, at the agent's stop (README: VM test).
                saved = WORK / release / "console-crashed.log"
                saved.write_text(guests[release].console)
                warnings.warn(f"the {release} guest's kernel crashed while patching its own code "
                              f"({crash}); its console is in {saved}; booting it once more",
                              stacklevel=2)
                guests[release] = run_guest(release)
        if guests[release].error:
            pytest.fail(guests[release].error, pytrace=False)
        return guests[release]
    return guest


def operator_files(deb):
    """What the operator guest installs (tests/vm/operator-prepare.sh): the .deb, the same tree
    at a higher package version, the source tree and graphyte's sdist; returns their folder."""
    files = WORK / "operator-files"
    subprocess.run(["rm", "-rf", str(files)], check=True)
    (files / "src").mkdir(parents=True)
    version = re.search(r'__version__ = "(.*)"', (ROOT / "gsender_bcc" / "__init__.py").read_text())[1]
    newer = WORK / "operator-deb"
    subprocess.run(["make", "deb", f"DEB_VERSION={version}+upgrade1", f"DEB_DIR={newer}", "wheelhouse"],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    subprocess.run(["cp", deb, str(files / "older.deb")], check=True)
    subprocess.run(["cp", f"{newer}/gsender-bcc_{version}+upgrade1_all.deb", str(files / "newer.deb")],
                   check=True)
    (files / "wheelhouse").mkdir()
    subprocess.run(["cp", "-t", str(files / "wheelhouse")]
                   + glob.glob(str(ROOT / "build" / "graphyte" / "*.tar.gz")), check=True)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["cp", "--parents", "-t", str(files / "src")] + listed.decode().split("\0")[:-1],
                   cwd=ROOT, check=True)
    return str(files)


def emulated_patching_crash(console_text):
    """Name the guest kernel's crash in its own code patching, or return None.

    Switching a static key or call on or off patches kernel text, with an int3 breakpoint
    guarding the site while it changes: at the agent's stop (the last program detached from a
    tracepoint) and at boot (systemd's first device-cgroup program turns a cgroup-BPF key on).
    Under qemu's TCG a vCPU has been seen to take that breakpoint after the patch completed
    ("Oops: int3"), which the kernel takes as fatal; real CPUs honour the sync the kernel does.
    The kernel's own report must show it: the patching in the call trace, or a code dump in
    which the byte that trapped (the one before the marked RIP) is no longer a breakpoint.
    The same breakpoint has also held a vCPU in the int3 handler while the CPU that patched
    waited for it to sync: a soft lockup whose stuck task is in text_poke_bp. Nothing else is
    excused.
    """
    if re.search(r"BUG: soft lockup\b.*?\btext_poke_bp", console_text, re.DOTALL):
        return "a soft lockup while patching kernel text (text_poke_bp)"
    oops = re.search(r"Oops: int3\b(.*)", console_text, re.DOTALL)
    if oops is None:
        return None
    report = oops.group(1)
    if re.search(r"tracepoint_probe_unregister|text_poke|static_call", report):
        return "Oops: int3 during tracepoint unregistration"
    code = re.search(r"Code:[^\n]*?\b([0-9a-f]{2}) <[0-9a-f]{2}>", report)
    if code and code.group(1) != "cc":
        return f"Oops: int3 at a site already patched: its breakpoint is now {code.group(1)}"
    return None


def guest_says(console_text, name):
    found = re.findall(rf"^VMCHECK {re.escape(name)} (PASS|FAIL) ?(.*?)\r?$", console_text,
                       re.MULTILINE)
    return found[-1] if found else None


@pytest.mark.parametrize("release,name", [pytest.param(r, n, id=f"{r}-{n}", marks=vm)
                                          for r in RELEASES if r != OPERATOR for n in CHECKS]
                         + [pytest.param(CONTAINERS, n, id=f"{CONTAINERS}-{n}", marks=vm)
                            for n in CONTAINER_CHECKS]
                         + [pytest.param(OPERATOR, n, id=f"{OPERATOR}-{n}", marks=vm)
                            for n in OPERATOR_CHECKS if OPERATOR in BOOTED])
def test_guest_check(boot, release, name):
    console = boot(release).console
    said = guest_says(console, name)
    journal = "\n".join(re.findall(r"^VMLOG (.*?)\r?$", console, re.MULTILINE))
    assert said is not None, (f"the {release} guest never reported '{name}'; console ends:\n"
                              f"{console[-3000:]}")
    verdict, detail = said
    assert verdict == "PASS", f"{release} guest: {name}: {detail}\nagent's journal:\n{journal}"


@pytest.mark.parametrize("release", [pytest.param(r, marks=vm) for r in RELEASES
                                     if r != OPERATOR or OPERATOR in BOOTED])
def test_guest_is_the_release(boot, release):
    start = re.search(r"^VMCHECK-START (.*?)\r?$", boot(release).console, re.MULTILINE).group(1)
    distro, _, kernel = GUESTS[release]
    assert f"release {distro} " in start and f" kernel {kernel}" in start, start


@pytest.mark.parametrize("release", [pytest.param(r, marks=vm) for r in RELEASES
                                     if r != OPERATOR or OPERATOR in BOOTED])
def test_guest_finished_and_powered_off(boot, release):
    console = boot(release).console
    assert "VMCHECK-DONE" in console, f"the {release} guest did not finish its checks"
    after = console[console.index("VMCHECK-DONE"):]
    # The kernel's own last words when the guest powers itself off.
    assert re.search(r"reboot: Power down\r?$", after, re.MULTILINE), (
        f"the {release} guest did not power off after its checks; console ends:\n{after[-2000:]}")


# ---- the checks' arithmetic, fed right and wrong values (no guest, no privileges) ------------

def _load_guest_checks():
    spec = importlib.util.spec_from_file_location("guest_checks",
                                                  ROOT / "tests" / "vm" / "guest_checks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["guest_checks"] = module
    spec.loader.exec_module(module)
    return module


gc = _load_guest_checks()


def _slot(us):
    """[low, high) µs of the slot holding ``us`` (the README's error bound: whole µs below 8,
    then 8 slots per power of two), independent of the agent's own code."""
    if us < 8:
        return us, us + 1
    width = 1 << (us.bit_length() - 4)
    low = us // width * width
    return low, low + width


def _interval(stamp, latencies_ns, seconds):
    """An interval as the metric contract says the agent sends it, from latencies in ns."""
    us = sorted(ns // 1000 for ns in latencies_ns)
    count = len(us)

    def reported(value):  # percentiles and max: their slot's midpoint
        low, high = _slot(value)
        return (low + high) / 2

    pct = {p: reported(us[max(1, math.ceil(count * p / 100)) - 1]) for p in (50, 90, 99)}
    buckets = {}
    for value in us:
        bucket = 0 if value == 0 else 1 << (value.bit_length() - 1)
        buckets[bucket] = buckets.get(bucket, 0) + 1
    top = max(buckets)
    rates = {b: round(buckets.get(b, 0) / seconds, 3)
             for b in [0] + [1 << e for e in range(top.bit_length())]}
    return gc.Interval(stamp, count, round(sum(latencies_ns) / count / 1000, 3), pct[50], pct[90],
                       pct[99], reported(us[-1]), rates)


def _run(f=2, n=8, seconds=None, first=1000):
    rng = random.Random(7)
    out = []
    for k in range(n):
        samples = [int(rng.lognormvariate(math.log(20_000), 1.5)) for _ in range(rng.randint(50, 900))]
        out.append(_interval(first + k * f, samples, seconds or f))
    return out


def test_series_checks_pass_on_the_agents_own_numbers():
    run = _run()
    assert gc.check_stamps(run, 2)[0]
    assert gc.check_order(run)[0]
    assert gc.check_rates(run, 2)[0]
    assert gc.check_slots(run)[0], gc.check_slots(run)[1]


def test_series_stamps_fail_on_a_gap_or_an_off_stamp():
    run = _run()
    assert not gc.check_stamps(run[:3] + run[4:], 2)[0]
    run[2].stamp += 1
    assert not gc.check_stamps(run, 2)[0]


def test_series_order_fails_when_percentiles_are_out_of_order():
    run = _run()
    run[3].p90, run[3].p99 = run[3].p99 + 100, run[3].p90
    assert not gc.check_order(run)[0]
    run = _run()
    run[1].max = run[1].p99 - 1
    assert not gc.check_order(run)[0]


def test_series_rates_fail_when_rates_do_not_add_up_to_count():
    run = _run()
    run[4].rates = {b: r * 1.5 for b, r in run[4].rates.items()}  # one interval's rates off
    assert not gc.check_rates(run, 2)[0]
    run = _run(seconds=2.3)  # every interval's rates over a longer time than the frequency
    assert not gc.check_rates(run, 2)[0]
    # A late read lengthens one interval and shortens the next: that passes.
    run = _run()
    for k, seconds in ((3, 2.4), (4, 1.6)):
        run[k].rates = {b: round(r * 2 / seconds, 3) for b, r in run[k].rates.items()}
    assert gc.check_rates(run, 2)[0], gc.check_rates(run, 2)[1]
    run = _run()
    del run[2].rates[1]  # a bucket below the highest left out
    assert not gc.check_rates(run, 2)[0]


def test_series_slots_fail_on_a_mean_or_percentile_outside_its_buckets():
    run = _run()
    low = sum(gc.bucket_bounds(b)[0] * c for b, c in gc.bucket_counts(run[2])[0].items())
    run[2].mean = 0.9 * low / run[2].count
    assert not gc.check_slots(run)[0]
    for name in ("p50", "p90", "p99", "max"):
        run = _run()
        setattr(run[5], name, getattr(run[5], name) * 2.01)  # the next log2 bucket up
        assert not gc.check_slots(run)[0], name
    run = _run()
    run[3].count += 5  # count and buckets disagree
    assert not gc.check_slots(run)[0]


def test_accuracy_fails_outside_five_percent_or_on_a_missing_interval():
    window = [gc.Interval(1000 + 2 * k, 100, 10_000.0) for k in range(5)]  # 5 s of wait
    assert gc.check_accuracy(window, 1000, 1008, 2, 5_000_000_000)[0]
    assert gc.check_accuracy(window, 1000, 1008, 2, 5_200_000_000)[0]
    assert not gc.check_accuracy(window, 1000, 1008, 2, 5_300_000_000)[0]
    assert not gc.check_accuracy(window, 1000, 1008, 2, 4_700_000_000)[0]
    assert not gc.check_accuracy(window[:2] + window[3:], 1000, 1008, 2, 5_000_000_000)[0]
    # The other services' series count on the kernel's side: 4 s of busy unit + 1 s of others.
    assert gc.check_accuracy(window, 1000, 1008, 2, 4_000_000_000, others_us=1e6)[0]
    assert not gc.check_accuracy(window, 1000, 1008, 2, 4_000_000_000)[0]


def test_physics_fails_outside_three_percent():
    window = [gc.Interval(1000 + 2 * k, 100, 10_000.0) for k in range(5)]  # 5 s of wait
    physics = gc.loops_wait_ns([4_000_000_000] * 2, [1_500_000_000] * 2)  # 2 × (4 − 1.5) s
    assert physics == 5_000_000_000
    assert gc.check_physics(window, 1000, 1008, 2, physics, 2)[0]
    assert gc.check_physics(window, 1000, 1008, 2, 5_140_000_000, 2)[0]
    assert not gc.check_physics(window, 1000, 1008, 2, 5_170_000_000, 2)[0]
    assert not gc.check_physics(window, 1000, 1008, 2, 4_840_000_000, 2)[0]
    assert not gc.check_physics(window + [gc.Interval(1010, 1, 1.0)], 1000, 1008, 2, physics, 2)[0]
    assert not gc.check_physics(window, 1000, 1008, 2, 0, 2)[0]


def test_a_process_lifetime_and_cpu_from_proc(tmp_path):
    folder = tmp_path / "42"
    folder.mkdir()
    ticks = os.sysconf("SC_CLK_TCK")
    rest = " ".join(["0"] * 17)
    (folder / "stat").write_text(f"42 (sh (busy)) R 1 {rest} {5 * ticks} 0 0\n")
    (folder / "schedstat").write_text("1500000000 2000 30\n")
    assert gc.process_lifetime_and_cpu(42, 9.0, proc=str(tmp_path)) == (4_000_000_000, 1_500_000_000)


def test_reload_fails_unless_the_new_frequency_shows():
    assert gc.check_reload([1002, 1005, 1008, 1011], 3, 4)[0]
    assert not gc.check_reload([1002, 1004, 1006, 1008], 3, 4)[0]
    assert not gc.check_reload([1005, 1008, 1011], 3, 4)[0]
    assert not gc.check_reload([1005, 1008, 1014, 1017], 3, 4)[0]


def test_programs_are_matched_by_owning_pid():
    listing = [{"id": 5, "pids": [{"pid": 10, "comm": "gsender-bcc"}]},
               {"id": 6, "pids": [{"pid": 11, "comm": "other"}]}, {"id": 7}]
    assert gc.programs_of(listing, 10) == [5]
    assert gc.programs_of(listing, 12) == []


OOPS_AT_DETACH = """[  103.117782] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[  103.119063] RIP: 0010:__schedule+0x343/0xbe0
[  103.121491]  __static_call_update+0x55/0x1f0
[  103.121553]  tracepoint_probe_unregister+0x181/0x370
[  103.121581]  bpf_raw_tp_link_release+0x19/0x30
"""


# At boot (trixie, 6.12): the breakpoint was at +0x14, where the patched jump (eb 57) is now.
# The lines from RIP on are the kernel's; CI's log had cut the oops line, written here as the
# kernel words it for a trap at a breakpoint.
OOPS_AT_BOOT = """[    9.030012] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    9.031088] RIP: 0010:devcgroup_check_permission+0x15/0xc0
[    9.031341] Code: 1e fa 0f 1f 44 00 00 41 55 41 54 41 89 d4 55 89 f5 53 eb <57> 0f bf d9 44 0f bf ef
[    9.031719] Call Trace:
[    9.032438]  inode_permission+0x146/0x190
[    9.032513]  may_open+0x7b/0x140
[    9.033810] Kernel panic - not syncing: Fatal exception in interrupt
"""


# The classic tracepoints' attach (trixie guest, bookworm's 6.1 kernel): CPU 0 patches and
# waits for CPU 1, which spins in the int3 handler.
LOCKUP_AT_ATTACH = """[  240.784206] watchdog: BUG: soft lockup - CPU#0 stuck for 45s! [gsender-bcc:877]
[  240.785321] Call Trace:
[  240.785321]  on_each_cpu_cond_mask+0x20/0x40
[  240.785321]  text_poke_bp_batch+0xb7/0x300
[  240.785321]  text_poke_bp+0x55/0x80
[  240.785321]  __static_call_transform+0xbc/0x1d0
"""


@pytest.mark.parametrize("console, excused", [
    (OOPS_AT_DETACH, True),
    (LOCKUP_AT_ATTACH, True),
    (LOCKUP_AT_ATTACH.replace("text_poke_bp", "htab_map_update_elem"), False),
    (OOPS_AT_BOOT, True),
    # A breakpoint still in the code is a real one: not excused.
    (OOPS_AT_BOOT.replace("53 eb <57>", "53 cc <57>"), False),
    (OOPS_AT_BOOT.replace("int3", "invalid opcode"), False),
    (OOPS_AT_BOOT.replace("Code:", "Cod:"), False),
    (OOPS_AT_DETACH.replace("int3", "general protection fault"), False),
    (OOPS_AT_DETACH.replace("tracepoint_probe_unregister", "bpf_prog_run")
     .replace("__static_call_update", "htab_map_update_elem"), False),
    ("VMCHECK clean-stop PASS\n", False),
])
def test_only_the_emulated_patching_crash_earns_a_second_boot(console, excused):
    assert (emulated_patching_crash(console) is not None) is excused


@pytest.mark.parametrize("console, ended", [
    (LOCKUP_AT_ATTACH, True),
    (LOCKUP_AT_ATTACH.replace("text_poke_bp", "htab_map_update_elem"), False),
    (OOPS_AT_BOOT, False),  # a panic ends the guest itself
])
def test_the_console_watcher_ends_a_guest_stuck_patching_its_code(tmp_path, console, ended):
    """tests/vm/watch-console.sh ends qemu (here a sleep) at a soft lockup in text_poke_bp, and
    leaves any other guest to its end; it returns within seconds of that end either way."""
    log = tmp_path / "console.log"
    log.write_text("[    1.0] booting\n")
    guest, watcher = subprocess.Popen(["sleep", "8"]), None
    try:
        watcher = subprocess.Popen([str(ROOT / "tests" / "vm" / "watch-console.sh"), str(log),
                                    str(guest.pid)], stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        log.write_text(log.read_text() + console)
        code = guest.wait(timeout=20)
        assert watcher.wait(timeout=5) == 0
    finally:
        for process in (guest, watcher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert (code == -signal.SIGTERM) is ended, watcher.stderr.read()


def test_scheduler_clock_from_proc(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    (folder / "sched").write_text("sh (7, #threads: 1)\n----\nse.exec_start     :    "
                                  "   123456.789000\nse.vruntime  :  1.0\n")
    assert gc.sched_clock_s(7, proc=str(tmp_path)) == 123.456789
    assert gc.sched_clock_s(8, proc=str(tmp_path)) is None


def test_continuity_fails_on_a_hole_of_a_whole_interval():
    old = [1001, 1003, 1005, 1007]  # the original's stamps, not on multiples of the frequency
    ours = [1008, 1010, 1012]
    assert gc.check_continuity(old + ours, 1000, 1012, 2)[0]
    assert gc.check_continuity(old[:-1] + ours, 1000, 1012, 2)[0]  # 1005 -> 1008: 3 s
    assert not gc.check_continuity(old[:-2] + ours, 1000, 1012, 2)[0]  # 1003 -> 1008
    assert gc.check_continuity(old + ours[1:], 1000, 1012, 2)[0]  # 1007 -> 1010: 3 s
    assert not gc.check_continuity(old + ours, 1000, 1016, 2)[0]  # nothing after 1012
    assert not gc.check_continuity(old[2:] + ours, 1000, 1012, 2)[0]  # nothing before 1005
    assert not gc.check_continuity([], 1000, 1012, 2)[0]


def test_arrived_counts_only_what_was_measured_and_allows_one_in_flight():
    measured = [1002, 1004, 1006, 1014, 1016]  # 1008-1012: the service restarting
    assert gc.check_arrived(measured, measured, 1001, 1016, 2)[0]
    assert "not measured (no agent running): 3" in gc.check_arrived(measured, measured, 1001, 1016, 2)[1]
    assert gc.check_arrived([1002, 1004, 1014, 1016], measured, 1001, 1016, 2)[0]  # one in flight
    assert not gc.check_arrived([1002, 1014, 1016], measured, 1001, 1016, 2)[0]
    assert not gc.check_arrived([1002, 1004], [], 1001, 1016, 2)[0]  # nothing measured: no proof


def test_culprit_check_wants_the_burner_on_top_and_can_fail():
    totals = {"gsender-vm-burn": 5200.0, "gsender-vm-busy": 900.0, "other": 9000.0, "idle": 1.0}
    ok, detail = gc.check_culprit(totals, "gsender-vm-burn")
    assert ok, detail
    assert detail.startswith("top culprit gsender-vm-burn (expected gsender-vm-burn): "
                             "gsender-vm-burn 5200.0 ms, gsender-vm-busy 900.0 ms")
    # The rest (other) never counts as the top culprit; the busy unit itself on top fails.
    assert not gc.check_culprit({**totals, "gsender-vm-busy": 5300.0}, "gsender-vm-burn")[0]
    assert not gc.check_culprit({"other": 10.0}, "gsender-vm-burn")[0]
    assert not gc.check_culprit({"gsender-vm-burn": 0.0}, "gsender-vm-burn")[0]


def test_named_check_wants_every_name_counted_and_none_by_id():
    counts = {"podman_burn1": 120.0, "podman_burn2": 80.0, "nginx": 3.0, "init_scope": 1.0}
    assert gc.check_named(counts, ["podman_burn1", "podman_burn2"])[0]
    assert not gc.check_named(counts, ["podman_burn1", "podman_burn3"])[0]
    assert not gc.check_named(dict(counts, podman_burn2=0.0), ["podman_burn2"])[0]
    assert not gc.check_named(counts, [])[0]
    for by_id in ("podman_3f2a1b4c5d6e", "libpod-" + "a" * 64 + "_scope", "user-1000_podman_"
                  + "0123456789ab", "crio-conmon-" + "b" * 64 + "_scope"):
        assert not gc.check_named(dict(counts, **{by_id: 5.0}), ["podman_burn1"])[0], by_id
        # Named by id with no samples since the step began: an earlier step's series.
        assert gc.check_named(dict(counts, **{by_id: 0.0}), ["podman_burn1"])[0], by_id


def test_named_check_takes_expected_short_ids_and_wants_the_absent_empty():
    counts = {"docker_cccccccccccc": 40.0, "docker_dddddddddddd": 30.0, "docker_burn1": 0.0,
              "docker_burn2": 0.0, "nginx": 3.0}
    ids = ["docker_cccccccccccc", "docker_dddddddddddd"]
    assert gc.check_named(counts, ids, ["docker_burn1", "docker_burn2", "docker_gone"]) == (
        True, "samples: docker_cccccccccccc 40, docker_dddddddddddd 30; without samples: none; "
              "samples where none belong: none; series named by id: none")
    assert gc.check_named(dict(counts, docker_burn2=2.0), ids, ["docker_burn1", "docker_burn2"]) == (
        False, "samples: docker_cccccccccccc 40, docker_dddddddddddd 30; without samples: none; "
               "samples where none belong: docker_burn2; series named by id: none")
    assert not gc.check_named(counts, ids[:1], ["docker_burn1"])[0]  # another id named series
