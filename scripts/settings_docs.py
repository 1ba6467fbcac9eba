"""The texts derived from the settings' declarations (gsender_bcc/config.py's Config):

- packaging/gsender.conf, the commented sample file the packages install as /etc/gsender.conf;
- the list of settings in the man page packaging/gsender-bcc.1, between MAN_BEGIN and MAN_END;
- the table of settings in README.md, between README_BEGIN and README_END.

All are kept in git (the .deb treats the sample as a conffile: its bytes are a promise), and
tests/test_settings.py fails when either differs from what the declarations give.

    settings_docs.py write    rewrite them from the declarations (`make settings-docs`)
    settings_docs.py check    exit 1, naming the stale file, when one differs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gsender_bcc import config as configuration  # noqa: E402

SAMPLE = ROOT / "packaging" / "gsender.conf"
MAN = ROOT / "packaging" / "gsender-bcc.1"
MAN_BEGIN = '.\\" The settings, written by scripts/settings_docs.py from gsender_bcc/config.py:'
MAN_END = '.\\" End of the settings.'
README = ROOT / "README.md"
README_BEGIN = ("<!-- settings (written by scripts/settings_docs.py from gsender_bcc/config.py: "
                "do not edit) -->")
README_END = "<!-- end of settings -->"

HEADER = """\
/etc/gsender.conf: configuration of gsender-bcc, the run-queue latency agent.

The agent reads this file at start and again on SIGHUP (systemctl reload
gsender-bcc). Command-line flags override it. Every key is optional: what is
left out takes the default shown. A file of the original gsender loads as is."""


def _comment(text: str) -> List[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def sample_value(value) -> str:
    """A default as the sample writes it: as the file would, whole numbers without '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return configuration.show(value)


def _in_order(cls: type) -> Iterable[List[configuration.Key]]:
    """Each section's keys as the documents list them: the settings in declaration order,
    each with those described together with it, then the retired keys."""
    for keys in configuration.schema(cls).values():
        ordered = [k for k in keys.values() if isinstance(k, configuration.Setting)] + \
                  [k for k in keys.values() if isinstance(k, configuration.Retired)]
        groups: List[List[configuration.Key]] = []
        for key in ordered:
            if key.help or not groups:
                groups.append([key])
            else:
                groups[-1].append(key)
        yield groups


def _assignment(key: configuration.Key) -> str:
    if isinstance(key, configuration.Setting) and key.example is None:
        return f"{key.key} = {sample_value(key.default)}"
    return f"#{key.key} = {key.example}"


def sample_text(cls: type = configuration.Config) -> str:
    """The sample configuration file: every key, its comment, and its default or an example."""
    lines = _comment(HEADER)
    for section, groups in zip(configuration.schema(cls), _in_order(cls)):
        lines += ["", f"[{section}]"]
        for number, group in enumerate(groups):
            lines += ([""] if number else []) + _comment(group[0].help)
            lines += [_assignment(key) for key in group]
    return "\n".join(lines) + "\n"


def _roff(line: str) -> str:
    line = line.replace("\\", "\\e")
    return "\\&" + line if line.startswith((".", "'")) else line


def _man_tag(key: configuration.Key) -> List[str]:
    if isinstance(key, configuration.Retired):
        return [key.key, " (ignored)"]
    if key.example is not None:
        return [key.key, f" (unset by default; for example {key.example})"]
    return [key.key, f" = {sample_value(key.default)}"]


def man_list(cls: type = configuration.Config) -> str:
    """The man page's list of settings, by section, as roff (between MAN_BEGIN and MAN_END)."""
    lines = [MAN_BEGIN]
    for section, groups in zip(configuration.schema(cls), _in_order(cls)):
        lines.append(f'.SS "[{section}]"')
        for group in groups:
            words = [word for key in group for word in _man_tag(key)]
            words[1:-1:2] = [word + ", " for word in words[1:-1:2]]
            lines += [".TP", ".BR " + " ".join(f'"{word}"' for word in words)]
            lines += [_roff(line) for line in group[0].help.splitlines()]
    return "\n".join(lines + [MAN_END]) + "\n"


def replaced_between(text: str, begin: str, end: str, new: str, where: Path) -> str:
    """Return ``text`` with what lies between the lines ``begin`` and ``end`` replaced by
    ``new`` (which carries both lines)."""
    before, found_begin, rest = text.partition(begin + "\n")
    _, found_end, after = rest.partition(end + "\n")
    if not (found_begin and found_end):
        raise ValueError(f"{where}: the lines {begin!r} and {end!r} are missing")
    return before + new + after


def man_page_with(page: str, listed: str) -> str:
    """Return the man page ``page`` with its list of settings replaced by ``listed``."""
    return replaced_between(page, MAN_BEGIN, MAN_END, listed, MAN)


def _summary(text: str) -> str:
    """A declaration's comment up to its first colon or full stop outside brackets, as a
    table cell (<...> in code)."""
    folded, depth = " ".join(text.split()) + " ", 0
    for at, char in enumerate(folded[:-1]):
        depth += {"(": 1, ")": -1}.get(char, 0)
        after = folded[at + 1:at + 3]
        if depth == 0 and (char == ":" and after[:1] == " " or
                           char == "." and after[:1] == " " and after[1:].isalnum()):
            folded = folded[:at]
            break
    first = folded.strip().rstrip(".")
    return re.sub(r"(\S*<[^>]*>[^\s,]*)", r"`\1`", first).replace("|", "\\|")


def _readme_default(key: configuration.Key) -> str:
    if isinstance(key, configuration.Retired):
        return "ignored"
    if key.example is not None:
        named = re.search(r"Default: (.+)", key.help)  # a default computed at start
        return f"`{named.group(1)}`" if named else "(none)"
    return f"`{sample_value(key.default)}`"


def readme_table(cls: type = configuration.Config) -> str:
    """The README's table of settings: one row per group of keys described together."""
    lines = [README_BEGIN, "| section | key | default | flag | meaning |", "|---|---|---|---|---|"]
    for section, groups in zip(configuration.schema(cls), _in_order(cls)):
        for group in groups:
            keys = ", ".join(f"`{key.key}`" for key in group)
            defaults = ", ".join(_readme_default(key) for key in group)
            flags = ", ".join(f"`{key.flag.name}`" for key in group
                              if isinstance(key, configuration.Setting) and key.flag)
            meaning = _summary(group[0].help)
            if any(isinstance(key, configuration.Setting) and key.needs_restart for key in group):
                meaning += " (restart)"
            lines.append(f"| {section} | {keys} | {defaults} | {flags} | {meaning} |")
    return "\n".join(lines + [README_END]) + "\n"


def readme_with(text: str, table: str) -> str:
    """Return the README ``text`` with its table of settings replaced by ``table``."""
    return replaced_between(text, README_BEGIN, README_END, table, README)


def expected() -> dict:
    """{file: the text the declarations give it}."""
    return {SAMPLE: sample_text(), MAN: man_page_with(MAN.read_text(), man_list()),
            README: readme_with(README.read_text(), readme_table())}


def write_or_check(argv: List[str], program: str, expected: Dict[Path, str], source: str) -> int:
    """``write``: rewrite each file of ``expected`` that differs; ``check``: name each such file
    with the fix and return 1. ``source`` says what the texts come from."""
    if argv not in (["write"], ["check"]):
        print(f"usage: {program} write|check", file=sys.stderr)
        return 64
    stale = {path: text for path, text in expected.items() if path.read_text() != text}
    for path, text in stale.items():
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if argv == ["write"]:
            path.write_text(text)
            print(f"{shown}: rewritten from {source}")
        else:
            print(f"{shown} differs from {source}: run `make settings-docs`", file=sys.stderr)
    return 1 if stale and argv == ["check"] else 0


def main(argv: List[str]) -> int:
    return write_or_check(argv, "settings_docs.py", expected(), "the settings' declarations")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
