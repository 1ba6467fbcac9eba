"""What dpkg does with /etc/gsender.conf, as docs/operations.md says (replacing the original,
upgrades), shown with a throwaway package in a throwaway dpkg root (no privileges, no
maintainer scripts; our own preinst and postinst run in the VM test's operator guest).

- A first install over a file no package owns asks (the original gsender's configuration):
  with no terminal the prompt reads end of file and the install fails, which is why our
  preinst sets the operator's file aside and the postinst puts it back.
- An upgrade whose packaged file did not change keeps a local edit without asking.
- An upgrade whose packaged file changed asks, DEBIAN_FRONTEND=noninteractive or not; with
  --force-confold it keeps the edit and leaves the package's file as .dpkg-dist.
"""

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg")


@pytest.fixture
def dpkg(tmp_path):
    root = tmp_path / "root"
    for folder in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"):
        (root / folder).mkdir(parents=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).write_text("")

    def package(version, value):
        tree = tmp_path / f"tree-{version}"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "etc").mkdir()
        (tree / "DEBIAN" / "control").write_text(
            f"Package: conftest\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: t <t@example.invalid>\nDescription: t\n")
        (tree / "DEBIAN" / "conffiles").write_text("/etc/conftest.conf\n")
        (tree / "etc" / "conftest.conf").write_text(f"value = {value}\n")
        deb = tmp_path / f"conftest_{version}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)], check=True,
                       capture_output=True)
        return deb

    def install(deb, *options):
        return subprocess.run(["dpkg", f"--root={root}", "--force-not-root",
                               "--force-script-chrootless", *options, "-i", str(deb)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return root / "etc" / "conftest.conf", package, install


def test_a_first_install_over_a_file_no_package_owns_asks(dpkg):
    conf, package, install = dpkg
    conf.write_text("the original's\n")
    result = install(package("1.0", "a"))
    assert result.returncode != 0
    assert "end of file on stdin at conffile prompt" in result.stdout + result.stderr
    assert conf.read_text() == "the original's\n"


def test_upgrades_keep_an_edit_silently_unless_the_packaged_file_changed(dpkg):
    conf, package, install = dpkg
    assert install(package("1.0", "a")).returncode == 0
    conf.write_text("value = edited\n")
    assert install(package("1.1", "a")).returncode == 0  # the packaged file did not change
    assert conf.read_text() == "value = edited\n"
    changed = package("1.2", "b")
    asked = install(changed)
    assert asked.returncode != 0
    assert "end of file on stdin at conffile prompt" in asked.stdout + asked.stderr
    assert install(changed, "--force-confold").returncode == 0
    assert conf.read_text() == "value = edited\n"
    assert (conf.parent / "conftest.conf.dpkg-dist").read_text() == "value = b\n"
