"""A real Debian host: our .deb and unit under systemd in a qemu guest (tests/vm/).

The guest runs its checks against the installed service and prints one
"VMCHECK <name> PASS|FAIL <detail>" line each on its serial console; every
check below passes only on the guest's own PASS, and fails with its words.
"""

import glob
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "vm"
CHECKS = ["active", "ready", "no-restarts", "series-arrived", "reload", "security-score",
          "clean-stop", "config-error", "config-error-message", "purge"]

pytestmark = [pytest.mark.bpf, pytest.mark.vm]


@pytest.fixture(scope="module")
def console():
    subprocess.run(["make", "deb"], cwd=ROOT, check=True, capture_output=True, timeout=900)
    deb = glob.glob(str(ROOT / "build" / "gsender-bcc_*_all.deb"))[0]
    subprocess.run(["scripts/setup-host.sh", "debootstrap", "qemu-system-x86", "e2fsprogs"],
                   cwd=ROOT, check=True, capture_output=True, timeout=900)
    run = subprocess.run([str(ROOT / "tests" / "vm" / "run-vm.sh"), deb, str(WORK)],
                         capture_output=True, text=True, timeout=3000)
    log = WORK / "console.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    if run.returncode != 0 or "VMCHECK-START" not in text:
        pytest.fail(f"the VM did not run its checks (run-vm.sh exited {run.returncode}):\n"
                    f"{run.stderr[-3000:]}\n--- console ---\n{text[-4000:]}")
    return text


def guest_says(console_text, name):
    found = re.findall(rf"^VMCHECK {re.escape(name)} (PASS|FAIL) ?(.*?)\r?$", console_text,
                       re.MULTILINE)
    return found[-1] if found else None


@pytest.mark.parametrize("name", CHECKS)
def test_guest_check(console, name):
    said = guest_says(console, name)
    journal = "\n".join(re.findall(r"^VMLOG (.*?)\r?$", console, re.MULTILINE))
    assert said is not None, f"the guest never reported '{name}'; console ends:\n{console[-3000:]}"
    verdict, detail = said
    assert verdict == "PASS", f"guest: {name}: {detail}\nagent's journal:\n{journal}"


def test_guest_finished_and_powered_off(console):
    assert "VMCHECK-DONE" in console
