"""Each setting is declared once, as a field of Config (gsender_bcc/config.py); the file's parser,
the flags, the --check-config printout, the reload rule, the sample file and the man page's
list and the README's table follow from the declaration, and they name every setting."""

import operator
import re
import signal
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

import settings_docs
from gsender_bcc import cli
from gsender_bcc.config import (Config, ConfigError, Flag, Retired, Setting, keys_of,
                                needing_restart, parse, render, setting, settings_of)

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MAN = settings_docs.MAN.read_text()


def _colour(text):
    if text not in ("red", "blue"):
        raise ValueError("must be red or blue")
    return text


@dataclass(frozen=True)
class WithColour(Config):
    """Config with one made-up setting more, declared as a real one is."""

    colour: str = setting("graphite", _colour, "red",
                          "The colour of the made-up series: red or blue. A change needs a\n"
                          "restart.",
                          flag=Flag("--colour", "series colour ({default})", "NAME"),
                          needs_restart=operator.ne)


class TestOneDeclarationMakesEveryPlace:
    """A setting declared once appears in each derived place, with nothing else written."""

    def test_the_file_parser_takes_it_and_names_it_among_the_known_keys(self):
        assert parse("[graphite]\ncolour = blue\n", "f", WithColour).colour == "blue"
        with pytest.raises(ConfigError) as refused:
            parse("[graphite]\ncolour = green\ncolor = red\n", "f", WithColour)
        assert refused.value.problems == [  # both problems at once, as for every setting
            "f: [graphite] colour = 'green': must be red or blue",
            "f: [graphite] color: unknown key (did you mean 'colour'?); known: server_address, "
            "port, fallback_servers, protocol, timeout, buffer_hours, buffer_megabytes, tags, "
            "colour"]

    def test_the_flag_parses_with_the_file_parser_and_overrides_the_file(self, tmp_path):
        conf = tmp_path / "gsender.conf"
        conf.write_text("[graphite]\ncolour = red\n")
        parser = cli.build_parser(WithColour)
        args = parser.parse_args(["--config", str(conf), "--colour", "blue"])
        assert cli.effective_config(args, WithColour).colour == "blue"
        assert cli.effective_config(parser.parse_args(["--config", str(conf)]),
                                    WithColour).colour == "red"
        assert re.search(r"--colour NAME +series colour \(default red\)", parser.format_help())
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(["--colour", "green"])
        assert refused.value.code == 64

    def test_the_printout_sample_man_list_and_reload_rule_have_it(self):
        assert render(WithColour(colour="blue")).endswith("tags = no\ncolour = blue\n")
        assert settings_docs.sample_text(WithColour).endswith(
            "tags = no\n\n# The colour of the made-up series: red or blue. A change needs a\n"
            "# restart.\ncolour = red\n")
        assert '.BR "colour" " = red"\nThe colour of the made-up series' in \
            settings_docs.man_list(WithColour)
        assert "| graphite | `colour` | `red` | `--colour` | The colour of the made-up series " \
            "(restart) |" in settings_docs.readme_table(WithColour)
        assert needing_restart(WithColour(), WithColour(colour="blue")) == ["colour"]

    def test_without_it_none_of_them_has_it(self):
        """The places above come from the declaration: the real Config has no colour."""
        assert "colour" not in render(Config()) + settings_docs.sample_text() + \
            settings_docs.man_list() + settings_docs.readme_table() + \
            cli.build_parser().format_help()


class TestDerivedFilesAreCurrent:
    def test_the_sample_file_is_what_the_declarations_give(self):
        """packaging/gsender.conf is the .deb's conffile: kept in git, byte for byte."""
        assert settings_docs.SAMPLE.read_text() == settings_docs.sample_text(), \
            "packaging/gsender.conf is stale: run `make settings-docs`"

    def test_the_man_page_list_is_what_the_declarations_give(self):
        assert MAN == settings_docs.man_page_with(MAN, settings_docs.man_list()), \
            "the man page's list of settings is stale: run `make settings-docs`"

    def test_the_readme_table_is_what_the_declarations_give(self):
        assert README == settings_docs.readme_with(README, settings_docs.readme_table()), \
            "the README's table of settings is stale: run `make settings-docs`"

    def test_the_check_command_names_a_stale_file(self, tmp_path, monkeypatch, capsys):
        stale = tmp_path / "gsender.conf"
        stale.write_text(settings_docs.sample_text().replace("frequency = 15", "frequency = 10"))
        monkeypatch.setattr(settings_docs, "SAMPLE", stale)
        assert settings_docs.main(["check"]) == 1
        assert "differs from the settings' declarations: run `make settings-docs`" in \
            capsys.readouterr().err

    def test_the_sample_file_gives_the_defaults(self):
        assert parse(settings_docs.SAMPLE.read_text(), "sample") == Config()


def _readme_table():
    """{(section, key): the row} of the README's table of settings."""
    table = README.split(settings_docs.README_BEGIN, 1)[1].split(settings_docs.README_END, 1)[0]
    rows = [line.split("|")[1:] for line in table.splitlines()[3:]]
    return {(where.strip(), key): row for where, keys, *row in rows
            for key in re.findall(r"`(\w+)`", keys)}


class TestEverySettingIsDocumented:
    def test_the_readme_table_has_every_setting_and_no_other(self):
        retired = {(k.section, k.key) for k in keys_of() if isinstance(k, Retired)}
        assert set(_readme_table()) == {(s.section, s.key) for s in settings_of()} | retired

    def test_the_man_page_names_every_retired_key(self):
        for key in keys_of():
            if isinstance(key, Retired):
                assert f'"{key.key}"' in MAN

    def test_the_readme_table_and_the_man_page_name_every_flag(self):
        man_lines = MAN.split(".SH CONFIGURATION")[0].splitlines()
        options = "\n".join(after for tp, after in zip(man_lines, man_lines[1:]) if tp == ".TP")
        table = _readme_table()
        for declared in settings_of():
            if declared.flag:
                assert declared.flag.name.replace("-", "\\-") in options, declared.flag.name
                assert f"`{declared.flag.name}`" in table[declared.section, declared.key][1]

    def test_the_readme_table_marks_the_keys_a_reload_cannot_change(self):
        marked = {key for (_, key), row in _readme_table().items() if "(restart)" in row[2]}
        assert marked == {s.key for s in settings_of() if s.needs_restart}


class TestDeclarations:
    @pytest.mark.parametrize("declared", keys_of(), ids=lambda key: key.key)
    def test_each_declaration_is_whole(self, declared):
        lines = declared.help.splitlines()
        assert all(len(line) <= 78 for line in lines)  # "# " + 78: the sample's 80 columns
        if isinstance(declared, Setting):
            assert declared.default == getattr(Config(), declared.key)
            # an example stands in where the sample cannot write the default
            assert (declared.example is None) == (declared.default not in (None, ()))
            assert ("restart" in declared.help) == (declared.needs_restart is not None)

    def test_a_key_described_with_the_one_before_shares_its_section(self):
        keys = keys_of()
        assert keys[0].help
        for before, key in zip(keys, keys[1:]):
            assert key.help or before.section == key.section

    def test_every_field_but_notices_is_a_setting(self):
        assert {s.key for s in settings_of()} == {f.name for f in fields(Config)} - {"notices"}


@pytest.mark.parametrize("running, new, restart", [
    (Config(), Config(), []),
    (Config(), Config(frequency=5, prefix="x", tags=True, protocol="udp"), []),
    (Config(max_services=20), Config(max_services=3), []),
    (Config(max_services=20), Config(max_services=0), ["max_services"]),
    (Config(max_services=0), Config(max_services=1), ["max_services"]),
    (Config(tracepoints="auto"), Config(tracepoints="raw"), ["tracepoints"]),
    (Config(max_services=0), Config(max_services=5, tracepoints="classic"),
     ["max_services", "tracepoints"]),
])
def test_the_reload_rule(running, new, restart):
    assert needing_restart(running, new) == restart


def test_a_reload_keeps_what_needs_a_restart(caplog):
    from test_daemon import FakeClock, run_daemon, stop_at
    new = Config(frequency=5, prefix="u", tracepoints="raw")
    clock = FakeClock(100.0, [(101, signal.SIGHUP), stop_at(106)])
    _, daemon = run_daemon(clock, reload=lambda: new, keep_unfinished=False)
    assert (daemon.config.prefix, daemon.config.tracepoints) == ("u", "auto")
    assert "changing tracepoints needs a restart: keeping the running setting" in caplog.text


@pytest.mark.parametrize("declared", [s for s in settings_of() if s.flag and not s.is_switch],
                         ids=lambda s: s.flag.name)
def test_each_flag_takes_and_refuses_what_the_file_does(declared, capsys):
    """A flag converts with its setting's parser: the same values, refused in the same words."""
    parser = cli.build_parser()
    text = declared.example or settings_docs.sample_value(declared.default)
    given = parser.parse_args([declared.flag.name, text])
    assert getattr(given, declared.key) == declared.parse(text)
    with pytest.raises(ValueError) as file_refuses:
        declared.parse("a b")
    with pytest.raises(SystemExit) as flag_refuses:
        parser.parse_args([declared.flag.name, "a b"])
    assert flag_refuses.value.code == 64
    assert f"argument {declared.flag.name}: 'a b' {file_refuses.value}" in capsys.readouterr().err
