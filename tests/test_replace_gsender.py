"""packaging/replace-gsender, the hand-over from the original gsender, against a fake systemctl.

The real thing runs in the VM test's operator guest (tests/vm/guest-operator.sh); here each
branch of the script is shown, with the systemctl calls it makes.
"""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "packaging" / "replace-gsender"
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$1" in
	is-active) [ "$FAKE_OURS" = active ] ;;
	show) echo "$FAKE_STATUS" ;;
	*) exit 0 ;;
esac
"""
FAKE_DPKG_QUERY = """#!/bin/sh
[ "$FAKE_OWNED" = yes ]
"""


def hand_over(tmp_path, old_unit=True, owned=False, systemd=True, ours="active",
              status="last interval ending 1000: count 5"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("dpkg-query", FAKE_DPKG_QUERY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    unit = tmp_path / "gsender.service"
    if old_unit:
        unit.write_text("[Service]\nExecStart=/opt/gsender/gsender.py\n")
    run_dir = tmp_path / "run-systemd"
    if systemd:
        run_dir.mkdir()
    log = tmp_path / "calls"
    log.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "FAKE_OURS": ours,
           "FAKE_STATUS": status, "FAKE_OWNED": "yes" if owned else "no",
           "GSENDER_OLD_UNIT": str(unit), "GSENDER_SYSTEMD_RUN": str(run_dir),
           "GSENDER_HANDOVER_TIMEOUT": "1"}
    result = subprocess.run([str(SCRIPT), "gsender-bcc.service"], capture_output=True, text=True,
                            env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    disables = [c for c in log.read_text().splitlines() if c.startswith("disable")]
    return disables, result.stdout


@pytest.mark.parametrize("case, expected_disable, says", [
    (dict(), "disable --quiet --now gsender.service", "stopped and disabled the original"),
    (dict(old_unit=False), None, ""),
    (dict(owned=True), None, "belongs to a package: left alone"),
    (dict(systemd=False), "disable --quiet gsender.service", "disabled the original"),
    (dict(ours="failed"), None, "gsender-bcc.service is not running: the original"),
    (dict(status="started"), "disable --quiet --now gsender.service", "stopping gsender.service anyway"),
])
def test_the_original_is_stopped_only_once_ours_measures(tmp_path, case, expected_disable, says):
    disables, said = hand_over(tmp_path, **case)
    assert disables == ([expected_disable] if expected_disable else [])
    assert says in said
    if expected_disable:  # the way back is part of what it says
        assert "systemctl disable --now gsender-bcc.service && systemctl enable --now" in said


def test_the_script_is_the_one_both_packages_and_make_install_run():
    assert "/usr/libexec/gsender-bcc/replace-gsender gsender-bcc.service" in \
        (ROOT / "packaging" / "debian" / "gsender-bcc.postinst").read_text()
    assert "%{_libexecdir}/gsender-bcc/replace-gsender gsender-bcc.service" in \
        (ROOT / "packaging" / "gsender-bcc.spec").read_text()
    assert "packaging/replace-gsender gsender-bcc.service" in (ROOT / "scripts" / "install.sh").read_text()
    assert os.access(SCRIPT, os.X_OK)
