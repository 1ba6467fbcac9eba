"""The .deb and `make install` on this machine: build, lint, install, run, score, remove.

These change the system (they install and purge packages), so they refuse to
run where gsender-bcc or an /etc/gsender.conf of the operator's is present.
"""

import glob
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FILES = ["/etc/gsender.conf", "/usr/bin/gsender-bcc",
                 "/lib/systemd/system/gsender-bcc.service",
                 "/usr/lib/python3/dist-packages/gsender_bcc", "/usr/share/doc/gsender-bcc",
                 "/usr/share/man/man1/gsender-bcc.1.gz", "/var/lib/gsender-bcc"]
INSTALL_FILES = ["/opt/gsender-bcc", "/usr/local/bin/gsender-bcc",
                 "/etc/systemd/system/gsender-bcc.service", "/etc/gsender.conf"]
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive",
               PATH="/usr/sbin:/usr/bin:/sbin:/bin")

pytestmark = [pytest.mark.bpf, pytest.mark.package]


def run(*command, check=True, timeout=900, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def installed(package):
    result = run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return "ok installed" in result.stdout


@pytest.fixture(scope="module")
def clean_machine():
    if installed("gsender-bcc") or os.path.exists("/etc/gsender.conf") \
            or os.path.exists("/opt/gsender-bcc"):
        reason = "gsender-bcc or /etc/gsender.conf is already on this machine: not touching it"
        if os.environ.get("GSENDER_REQUIRE_BPF") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def deb(clean_machine):
    run("make", "deb", cwd=ROOT)  # lintian runs inside and fails on any error or warning
    found = glob.glob(str(ROOT / "build" / "gsender-bcc_*_all.deb"))
    assert len(found) == 1
    return found[0]


def exposure(unit):
    out = run("systemd-analyze", "security", "--offline=true", unit).stdout
    return float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))


def package_paths():
    """What dpkg says the installed package owns, less the folders other packages share."""
    listed = run("dpkg", "-L", "gsender-bcc").stdout.split()
    return sorted(path for path in listed
                  if not os.path.isdir(path) or "gsender" in path)


def test_deb_installs_runs_and_purges_to_nothing(deb):
    run("apt-get", "install", "-y", "-q", deb, env=APT_ENV)
    try:
        assert installed("gsender-bcc")
        owned = package_paths()
        # The list is the package's, not a guess: its program, unit, tree and docs are in it.
        assert set(PACKAGE_FILES) - {"/var/lib/gsender-bcc"} <= set(owned)
        assert any("/gsender_bcc/bpf/kernel-stubs/include/linux/kconfig.h" in p for p in owned)
        check = run("/usr/bin/gsender-bcc", "--check")
        assert check.stdout.startswith("OK: BPF program attached")
        # --once's interval ends at the next 2 s boundary, which may come moments after the
        # attach and hold no sample (then no mean or p99 is sent): at most three tries.
        for _ in range(3):
            once = run("/usr/bin/gsender-bcc", "--once", "--stdout", "--frequency", "2")
            paths = {line.split()[0].split(".", 1)[1] for line in once.stdout.splitlines()}
            if "cpu-lat.mean" in paths:
                break
        assert {"cpu-lat.count", "cpu-lat.mean", "cpu-lat.p99"} <= paths
        vendored = run("/usr/bin/python3", "-c",
                       "import gsender_bcc.sink as s; print(s.graphyte.__file__)", cwd="/")
        assert vendored.stdout.strip() == \
            "/usr/lib/python3/dist-packages/gsender_bcc/_vendor/graphyte.py"
        assert Path("/usr/share/doc/gsender-bcc/carbon-storage.conf.example").read_text() == \
            (ROOT / "packaging" / "carbon-storage.conf.example").read_text()
        run("systemd-analyze", "verify", "/lib/systemd/system/gsender-bcc.service")
        assert exposure("/lib/systemd/system/gsender-bcc.service") <= 2.3  # test_claims.EXPOSURE
        # What a running agent leaves behind, which purge must remove too.
        os.makedirs("/var/lib/gsender-bcc", exist_ok=True)
        Path("/var/lib/gsender-bcc/spool.jsonl").write_text("")
    finally:
        run("apt-get", "purge", "-y", "-q", "gsender-bcc", env=APT_ENV)
    assert not installed("gsender-bcc")
    assert [path for path in owned + PACKAGE_FILES if os.path.lexists(path)] == []


def test_make_install_and_uninstall_remove_exactly_what_was_installed(clean_machine):
    run("make", "install", cwd=ROOT)
    try:
        assert all(os.path.lexists(path) for path in INSTALL_FILES)
        check = run("/usr/local/bin/gsender-bcc", "--check")
        assert check.stdout.startswith("OK: BPF program attached")
        unit = Path("/etc/systemd/system/gsender-bcc.service").read_text()
        assert "ExecStart=/usr/local/bin/gsender-bcc\n" in unit
        assert Path("/etc/gsender.conf").read_text() == \
            (ROOT / "packaging" / "gsender.conf").read_text()
        run("make", "install", cwd=ROOT)  # again: replaces itself, keeps the configuration
    finally:
        run("make", "uninstall", cwd=ROOT)
    assert [path for path in INSTALL_FILES if os.path.lexists(path)] == []


def test_uninstall_keeps_a_configuration_the_operator_changed(clean_machine):
    run("make", "install", cwd=ROOT)
    try:
        with open("/etc/gsender.conf", "a") as conf:
            conf.write("# changed by the operator\n")
    finally:
        result = run("make", "uninstall", cwd=ROOT)
    try:
        assert "/etc/gsender.conf was changed after install" in result.stdout
        assert os.path.exists("/etc/gsender.conf")
        assert [p for p in INSTALL_FILES if os.path.lexists(p) and p != "/etc/gsender.conf"] == []
    finally:
        os.remove("/etc/gsender.conf")
