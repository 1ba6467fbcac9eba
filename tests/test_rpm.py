"""The .rpm (`make rpm`): built, linted, the same files as the .deb, installed into a Debian root.

No RPM distribution is reachable from here. The closest honest proof: rpmbuild and rpmlint
from Debian's rpm and rpmlint packages (BuildRequires not checked: --nodeps), the package's
file list and files compared with the .deb's, and the package installed with
`rpm --root --nodeps` (Debian's python3-bpfcc stands in for Fedora's python3-bcc) into a
throwaway Debian root file system unpacked from the VM test's bookworm base, where
`gsender-bcc --check` runs under chroot (docs/testing.md).
"""

import glob
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_packaging import run

ROOT = Path(__file__).resolve().parent.parent
SEED_CONF = ROOT / "tests" / "vm" / "old-gsender" / "gsender.conf"
# Where each package puts the Python package: Debian's dist-packages, the python3_sitelib of
# the Python that built the .rpm; and where each puts its docs.
PYTHON_DIRS = (r"^/usr/lib/python3/dist-packages/", r"^/usr/lib/python3\.\d+/site-packages/")
# The Debian-only and RPM-only files, by design: Debian's changelog and copyright, the RPM's
# %license.
DEB_ONLY = {"/usr/share/doc/gsender-bcc/changelog.gz", "/usr/share/doc/gsender-bcc/copyright"}
RPM_ONLY = {"/usr/share/licenses/gsender-bcc/LICENSE"}

# Building the packages (and the root file system) is a package test; the rest is fast.
package = pytest.mark.package




def common_path(path):
    """A packaged path as both packages should have it: merged /usr, one Python folder, the
    docs folder without the RPM's version, compressed docs by their plain name."""
    path = re.sub(r"^/lib/systemd/", "/usr/lib/systemd/", path)
    for pattern in PYTHON_DIRS:
        path = re.sub(pattern, "PYTHON/", path)
    path = re.sub(r"^/usr/share/(doc|licenses)/gsender-bcc-[^/]+/", r"/usr/share/\1/gsender-bcc/", path)
    return re.sub(r"^(/usr/share/doc/gsender-bcc/README\.md)\.gz$", r"\1", path)


@pytest.fixture(scope="module")
def packages():
    run("make", "rpm", cwd=ROOT)  # rpmlint runs inside and fails on anything not waived
    run("make", "deb", cwd=ROOT)
    rpm, = glob.glob(str(ROOT / "build" / "rpm" / "gsender-bcc-*.noarch.rpm"))
    deb, = glob.glob(str(ROOT / "build" / "gsender-bcc_*_all.deb"))
    return deb, rpm


def deb_files(deb):
    listing = run("dpkg-deb", "-c", deb).stdout.splitlines()
    return {line.split()[5][1:] for line in listing if not line.startswith("d")}


def rpm_files(rpm):
    listing = run("rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", rpm).stdout
    return {line.split(" ", 1)[1] for line in listing.splitlines() if not line.startswith("d")}


def test_common_path_maps_each_layout_onto_one():
    assert common_path("/lib/systemd/system/gsender-bcc.service") == \
        common_path("/usr/lib/systemd/system/gsender-bcc.service")
    assert common_path("/usr/lib/python3/dist-packages/gsender_bcc/cli.py") == \
        common_path("/usr/lib/python3.12/site-packages/gsender_bcc/cli.py") == "PYTHON/gsender_bcc/cli.py"
    assert common_path("/usr/share/doc/gsender-bcc/README.md.gz") == \
        common_path("/usr/share/doc/gsender-bcc-0.1.0/README.md")
    assert common_path("/usr/lib/python3/dist-packages/other/x.py") != "PYTHON/gsender_bcc/x.py"


@package
def test_the_rpm_holds_the_debs_files(packages):
    deb, rpm = packages
    in_deb = {common_path(p) for p in deb_files(deb)}
    in_rpm = {common_path(p) for p in rpm_files(rpm)}
    assert in_deb - in_rpm == DEB_ONLY
    assert in_rpm - in_deb == RPM_ONLY
    assert any(p.endswith("/bpf/kernel-stubs/include/linux/kconfig.h") for p in in_rpm)


@package
def test_the_unit_configuration_man_page_and_helper_are_the_debs(packages, tmp_path):
    deb, rpm = packages
    run("dpkg-deb", "-x", deb, str(tmp_path / "deb"))
    (tmp_path / "rpm").mkdir()
    cpio = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=tmp_path / "rpm", check=True)
    for in_deb, in_rpm in (("lib/systemd/system/gsender-bcc.service",
                            "usr/lib/systemd/system/gsender-bcc.service"),
                           ("etc/gsender.conf", "etc/gsender.conf"),
                           ("usr/share/man/man1/gsender-bcc.1.gz", "usr/share/man/man1/gsender-bcc.1.gz"),
                           ("usr/libexec/gsender-bcc/replace-gsender",
                            "usr/libexec/gsender-bcc/replace-gsender")):
        deb_bytes = (tmp_path / "deb" / in_deb).read_bytes()
        rpm_bytes = (tmp_path / "rpm" / in_rpm).read_bytes()
        if in_deb.endswith(".gz"):  # compressed by each tool with its own header
            deb_bytes = subprocess.run(["zcat"], input=deb_bytes, capture_output=True).stdout
            rpm_bytes = subprocess.run(["zcat"], input=rpm_bytes, capture_output=True).stdout
        assert deb_bytes == rpm_bytes, in_deb
    sitelib, = glob.glob(str(tmp_path / "rpm" / "usr/lib/python3.*/site-packages"))
    deb_tree = tmp_path / "deb" / "usr/lib/python3/dist-packages/gsender_bcc"
    for path in deb_tree.rglob("*.py"):
        assert (Path(sitelib) / "gsender_bcc" / path.relative_to(deb_tree)).read_bytes() == \
            path.read_bytes(), path


@package
def test_dependencies_and_scriptlets_are_fedoras(packages):
    _, rpm = packages
    requires = set(run("rpm", "-qp", "--requires", rpm).stdout.split("\n"))
    assert {"python3-bcc", "python3-systemd"} <= requires
    assert not [r for r in requires if "bpfcc" in r or "graphyte" in r], requires
    assert "bundled(python3-graphyte) = 1.7.1" in run("rpm", "-qp", "--provides", rpm).stdout
    assert "noarch" == run("rpm", "-qp", "--qf", "%{ARCH}", rpm).stdout
    scripts = run("rpm", "-qp", "--scripts", rpm).stdout
    post, preun, postun = re.split(r"^(?:preuninstall|postuninstall) scriptlet.*$", scripts, flags=re.M)
    assert "systemctl --no-reload preset gsender-bcc.service" in post  # presets, first install
    assert "/usr/libexec/gsender-bcc/replace-gsender gsender-bcc.service" in post
    assert "systemctl --no-reload disable --now gsender-bcc.service" in preun  # last erase only
    assert "[ $1 -eq 0 ]" in preun
    assert "systemctl try-restart gsender-bcc.service" in postun  # upgrade only
    assert "[ $1 -ge 1 ]" in postun
    assert "%config(noreplace)" in (ROOT / "packaging" / "gsender-bcc.spec").read_text()


@pytest.fixture
def debian_root(tmp_path):
    """A bookworm root file system from the VM test's base (built and cached by run-vm.sh
    if this machine has none yet), with python3-bpfcc installed from the packages the base
    carries (no network)."""
    run("scripts/setup-host.sh", "debootstrap", cwd=ROOT)
    base = run(str(ROOT / "tests" / "vm" / "run-vm.sh"), "--base", str(tmp_path / "vm"),
               "bookworm", timeout=1800).stdout.strip().splitlines()[-1]
    root = tmp_path / "root"
    root.mkdir()
    run("tar", "-C", str(root), "-xf", base)
    mounted = []

    def mount(*args):
        run("mount", *args)
        mounted.append(args[-1])
    try:
        mount("-t", "proc", "proc", str(root / "proc"))
        mount("--rbind", "/sys", str(root / "sys"))
        mount("--rbind", "/dev", str(root / "dev"))
        debs = [str(Path(p).relative_to(root)) for p in glob.glob(str(root / "var/cache/apt/archives/*.deb"))]
        run("chroot", str(root), "dpkg", "-i", *["/" + d for d in debs],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"})
        yield root
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", path], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@package
@pytest.mark.bpf
def test_the_rpm_installed_into_a_debian_root_passes_its_check(packages, debian_root):
    _, rpm = packages
    root = debian_root
    # The original gsender's configuration is there first: %config(noreplace) keeps it.
    shutil.copy(SEED_CONF, root / "etc" / "gsender.conf")
    run("rpm", "--root", str(root), "-i", "--nodeps", rpm)
    assert (root / "etc" / "gsender.conf").read_bytes() == SEED_CONF.read_bytes()
    assert (root / "etc" / "gsender.conf.rpmnew").exists()
    assert run("rpm", "--root", str(root), "-q", "gsender-bcc").stdout.startswith("gsender-bcc-")
    sitelib, = [str(Path(p).relative_to(root))
                for p in glob.glob(str(root / "usr/lib/python3.*/site-packages"))]
    # Debian's python3 does not search Fedora's site-packages: PYTHONPATH shows it the tree.
    check = run("chroot", str(root), "/usr/bin/gsender-bcc", "--check", timeout=600,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": "/" + sitelib})
    assert check.stdout.startswith("OK: BPF program attached"), check.stdout
    run("rpm", "--root", str(root), "-e", "--nodeps", "gsender-bcc")
    assert not (root / "usr" / "bin" / "gsender-bcc").exists()
    # rpm's way with a %config file that differs from the package's: kept as .rpmsave.
    assert (root / "etc" / "gsender.conf.rpmsave").read_bytes() == SEED_CONF.read_bytes()


def test_the_spec_is_at_the_packages_version():
    version = re.search(r'__version__ = "(.*)"', (ROOT / "gsender_bcc" / "__init__.py").read_text())[1]
    spec = (ROOT / "packaging" / "gsender-bcc.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(version)}$", spec, re.M)
    assert re.search(rf"^\* .* - {re.escape(version)}-1$", spec, re.M)
