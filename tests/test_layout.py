"""The source tree's shape as the build sees it."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_agent_is_listed_for_the_build():
    """setup.cfg names the packages one by one: a package left out is missing from the .deb."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "gsender_bcc").rglob("__init__.py")
             if "_vendor" not in init.parts}
    assert found and found <= listed, sorted(found - listed)

