"""Read and validate /etc/gsender.conf into a frozen Config.

The original gsender's file loads unchanged: [default] frequency, script_path,
logging_level and [graphite] server_address, port. Every problem found is
reported on a line of its own naming file, section, key, value and what is allowed.
Each setting is declared once, as a field of Config (see setting()).
"""

from __future__ import annotations

import configparser
import difflib
import functools
import operator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Tuple, Union

from .errors import EX_CONFIG, AgentError
from .metrics import TAGGED_PREFIX, check_prefix, default_prefix
from .setting_values import (Server, boolean, choice, decimal, directory, host, server_list,
                             whole)

DEFAULT_PATH = Path("/etc/gsender.conf")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRACEPOINT_MODES = ("auto", "raw", "classic")


class ConfigError(AgentError):
    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems), EX_CONFIG)
        self.problems = problems


# -- the settings: each declared once, as a field of Config ------------------------------------
#
# A field made by setting() is a key of the configuration file: its name is the key, and its
# declaration holds everything else about it. The file's parser, the command-line flags, the
# --check-config printout, the reload rule, the sample file packaging/gsender.conf and the man
# page's list (scripts/settings_docs.py writes both) are all derived from these declarations.

SETTING = "gsender_bcc.setting"  # the key of a setting's declaration in its field's metadata


@dataclass(frozen=True)
class Flag:
    """A setting's command-line flag. ``help`` may say ``{default}``: the default, as a flag
    would give it."""

    name: str
    help: Optional[str] = None
    metavar: Optional[str] = None


@dataclass(frozen=True)
class Setting:
    """One key of the configuration file and the Config field it sets."""

    key: str  # "" until keys_of() names it after its field
    section: str
    parse: Callable[[str], object]  # text -> value, or ValueError saying what is allowed
    default: object
    # The sample file's comment, broken into lines as it prints there; "" when the setting is
    # described together with the one declared before it.
    help: str
    example: Optional[str] = None  # shown commented out in the sample when there is no default
    flag: Optional[Flag] = None
    # (running value, new value) -> True when a reload cannot apply the change and the running
    # value is kept until a restart; None: a reload applies every change.
    needs_restart: Optional[Callable[[object, object], bool]] = None

    @property
    def is_switch(self) -> bool:
        """A yes/no setting's flag takes no value: it turns the setting on."""
        return self.parse is boolean


@dataclass(frozen=True)
class Retired:
    """A key of the original tool's file: accepted, ignored with a notice, set nowhere."""

    section: str
    example: str
    help: str
    why: str  # ends the notice "<where> = <value> is ignored: <why>"
    key: str = ""  # named by keys_of() after its class attribute


def setting(section: str, parse: Callable[[str], object], default: object, help: str, **more):
    """Declare a Config field as a key of [section] of the configuration file; ``more`` are
    Setting's example, flag and needs_restart. The field's name becomes the key."""
    return field(default=default,
                 metadata={SETTING: Setting("", section, parse, default, help, **more)})


def _services_on_off(running: object, new: object) -> bool:
    return (running == 0) != (new == 0)  # 0 compiles the program without the per-cgroup map


_culprits_on_off = _services_on_off  # 0 compiles the program without the occupant timeline


@dataclass(frozen=True)
class Config:
    """Every setting, one field per configuration key, with its default and its declaration."""

    # The declarations below share one shape (section, parser, default, comment, flag,
    # reload rule) and no logic: each is the one place its setting is described.
    frequency: int = setting(
        "default", whole(1, 3600, "seconds"), 15,
        "Interval length in seconds, 1 to 3600. Each interval's datapoints carry its\n"
        "end time, a multiple of the frequency.",
        flag=Flag("--frequency", "interval length; timestamps are multiples of it ({default})",
                  "SECONDS"))
    logging_level: str = setting(
        "default", choice(LEVELS, str.upper), "INFO",
        "DEBUG, INFO, WARNING, ERROR or CRITICAL.",
        flag=Flag("--log-level", f"{', '.join(LEVELS)} ({{default}})", "LEVEL"))
    # Listed here among the keys of [default], as the original tool's file has it; the sample
    # file shows it last, under the keys that do something.
    script_path: ClassVar[Retired] = Retired(
        "default", "/opt/gsender/cpu_latency.bt",
        "Accepted for compatibility with the original gsender and ignored: the tracer\n"
        "is now built in.", why="the tracer is now built in")
    prefix: Optional[str] = setting(
        "default", check_prefix, None,
        "Metric path prefix: dot-separated parts of letters, digits, '_' and '-'.\n"
        "Default: <short hostname>.cpu-lat",
        example="web-01.cpu-lat",
        flag=Flag("--prefix", f"metric path prefix (default <short hostname>.cpu-lat, "
                              f"or {TAGGED_PREFIX} with --tags)", "PATH"))
    bucket_series: bool = setting(
        "default", boolean, True,
        "Send the per-bucket series <prefix>.0, .1, .2, .4, ... (samples per second in\n"
        "each log2 microsecond bucket), as the original did: yes or no.")
    state_directory: Path = setting(
        "default", directory, Path("/var/lib/gsender-bcc"),
        "Where undelivered intervals wait for Graphite (outbox/, plain Graphite lines\n"
        "in segment files) and where a stopping agent leaves its unfinished interval\n"
        "for the next start (unfinished.json).",
        flag=Flag("--state-directory", "where undelivered data waits ({default})", "DIR"))
    max_services: int = setting(
        "default", whole(0, 1000, "services"), 20,
        "Run-queue latency per service (cgroup v2): <prefix>.service.<name>.* for the\n"
        "services with the most total wait in each interval, the rest summed as\n"
        "<prefix>.service.other.*. 0 to 1000; 0 sends the host series only. A change\n"
        "between 0 and more needs a restart.",
        flag=Flag("--max-services", "services sent one by one, the rest as 'other'; 0 sends "
                                    "the host only ({default})", "N"),
        needs_restart=_services_on_off)
    max_culprits: int = setting(
        "default", whole(0, 100, "culprits"), 3,
        "Who each service waited behind: <prefix>.service.<name>.behind.<culprit>_ms\n"
        "for the culprits (services, or idle, migrated, untracked) its tasks waited\n"
        "behind the longest, the rest summed as .behind.other_ms, beside\n"
        ".behind_self_ms, .behind_others_ms and .caused_ms. 0 to 100; 0 turns the\n"
        "attribution off. The kernel keeps 8 culprit cgroups per cgroup an interval,\n"
        "the first to make it wait; the rest count as other. What it costs is recorded\n"
        "by make bench (docs/benchmarks.md). Needs the per-service breakdown\n"
        "(max_services above 0). A change between 0 and more needs a restart.",
        flag=Flag("--max-culprits", "culprits sent per service, the rest as 'other'; 0 turns "
                                    "the attribution off ({default})", "N"),
        needs_restart=_culprits_on_off)
    tracepoints: str = setting(
        "default", choice(TRACEPOINT_MODES, str.lower), "auto",
        "Which tracepoints to attach to: auto (raw ones where the kernel's BTF\n"
        "describes task_struct, else classic), raw, or classic. Both time the same\n"
        "wait; raw ones cost less. A change needs a restart.",
        flag=Flag("--tracepoints", "raw tracepoints (needs the kernel's BTF), classic ones, or "
                                   "the best available ({default})", "|".join(TRACEPOINT_MODES)),
        needs_restart=operator.ne)
    server_address: str = setting(
        "graphite", host, "localhost",
        "The Graphite (carbon) server receiving the plaintext protocol.",
        flag=Flag("--graphite-host", "Graphite server ({default})", "HOST"))
    port: int = setting(
        "graphite", whole(1, 65535, "(port)"), 2003, "",
        flag=Flag("--graphite-port", "Graphite plaintext port ({default})", "PORT"))
    fallback_servers: Tuple[Server, ...] = setting(
        "graphite", server_list, (),
        "Servers to use, in order, while the one above does not answer: host:port,\n"
        "comma-separated. Delivery returns to the first one as soon as it answers.",
        example="graphite-b.example.net:2003, graphite-c.example.net:2003")
    protocol: str = setting(
        "graphite", choice(("tcp", "udp"), str.lower), "tcp",
        "tcp, or udp (fire and forget: no retry is possible).",
        flag=Flag("--protocol", "({default})", "tcp|udp"))
    timeout: float = setting(
        "graphite", decimal(0.1, 60, "seconds"), 5.0,
        "Seconds to wait for a server to connect or take data, 0.1 to 60.")
    buffer_hours: float = setting(
        "graphite", decimal(0.01, 720, "hours"), 24.0,
        "How long undelivered intervals are kept on disk while Graphite is away, in\n"
        "hours (0.01 to 720), and how much disk they may take, in MiB (1 to 1048576).\n"
        "Past either, the oldest are dropped and counted in\n"
        "<prefix>.agent.dropped_intervals. At the defaults a day takes about 140 MB\n"
        "(20 services with their culprits, short names); what one interval takes on\n"
        "disk: docs/design.md.")
    buffer_megabytes: int = setting("graphite", whole(1, 1 << 20, "MiB"), 160, "")
    tags: bool = setting(
        "graphite", boolean, False,
        "Send Graphite 1.1 tagged series (cpu-lat.p99;host=web-01) instead of paths\n"
        "(web-01.cpu-lat.p99): yes or no. With tags the prefix defaults to cpu-lat.",
        flag=Flag("--tags", "send Graphite 1.1 tagged series instead of hierarchical paths"))
    notices: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def server(self) -> Server:
        return Server(self.server_address, self.port)

    @property
    def servers(self) -> Tuple[Server, ...]:
        return (self.server,) + self.fallback_servers

    @property
    def metric_prefix(self) -> str:
        """The prefix set, or the default: ``cpu-lat`` with tags, else ``<short host>.cpu-lat``."""
        if self.prefix:
            return self.prefix
        return TAGGED_PREFIX if self.tags else default_prefix()

    @property
    def buffer_seconds(self) -> float:
        return self.buffer_hours * 3600

    @property
    def buffer_bytes(self) -> int:
        return self.buffer_megabytes << 20

    @property
    def retry_max_seconds(self) -> float:
        """Retry a failed server at least once an interval, and at least once a minute."""
        return float(min(self.frequency, 60))


Key = Union[Setting, Retired]


@functools.cache
def keys_of(cls: type = Config) -> Tuple[Key, ...]:
    """Every key of the configuration file that ``cls`` declares, in declaration order."""
    by_field = {f.name: f for f in fields(cls)}
    keys: List[Key] = []
    for name in dict.fromkeys(n for klass in reversed(cls.__mro__)
                              for n in vars(klass).get("__annotations__", {})):
        declared = by_field.get(name)
        if declared is not None and SETTING in declared.metadata:
            keys.append(replace(declared.metadata[SETTING], key=name))
        elif isinstance(getattr(cls, name, None), Retired):
            keys.append(replace(getattr(cls, name), key=name))
    return tuple(keys)


def settings_of(cls: type = Config) -> Tuple[Setting, ...]:
    """The keys of ``cls`` that set something, in declaration order."""
    return tuple(key for key in keys_of(cls) if isinstance(key, Setting))


def schema(cls: type = Config) -> Dict[str, Dict[str, Key]]:
    """section -> key -> its declaration, in declaration order."""
    sections: Dict[str, Dict[str, Key]] = {}
    for key in keys_of(cls):
        sections.setdefault(key.section, {})[key.key] = key
    return sections


def needing_restart(running: Config, new: Config) -> List[str]:
    """The keys whose change from ``running`` to ``new`` a reload cannot apply."""
    return [s.key for s in settings_of(type(running))
            if s.needs_restart and s.needs_restart(getattr(running, s.key), getattr(new, s.key))]


def _suggest(word: str, options) -> str:
    by_folded = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1)
    return f" (did you mean '{by_folded[close[0]]}'?)" if close else ""


def parse(text: str, source: str, cls: type = Config) -> Config:
    """Return the Config that ``text`` describes, or raise ConfigError listing every problem."""
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section="\0none", inline_comment_prefixes=None)
    try:
        parser.read_string(text, source=source)
    except configparser.DuplicateOptionError as error:
        raise ConfigError([f"{source}: [{error.section}] {error.option} is set twice "
                           f"(line {error.lineno}): keep one"]) from None
    except configparser.DuplicateSectionError as error:
        raise ConfigError([f"{source}: section [{error.section}] appears twice "
                           f"(line {error.lineno}): merge them"]) from None
    except configparser.Error as error:
        first = str(error).splitlines()[0].rstrip(".")
        raise ConfigError([f"{source}: not valid INI: {first}"]) from None

    problems: List[str] = []
    notices: List[str] = []
    values: Dict[str, object] = {}
    known = schema(cls)
    for section in parser.sections():
        if section not in known:
            problems.append(f"{source}: unknown section [{section}]{_suggest(section, known)}; "
                            f"known: {', '.join(f'[{s}]' for s in known)}")
            continue
        for key, raw in parser.items(section):
            where = f"{source}: [{section}] {key}"
            if key not in known[section]:
                problems.append(f"{where}: unknown key{_suggest(key, known[section])}; known: "
                                f"{', '.join(known[section])}")
                continue
            if "\n" in raw:
                problems.append(f"{where} = {raw!r}: must be on one line")
                continue
            declared = known[section][key]
            if isinstance(declared, Retired):
                notices.append(f"{where} = {raw} is ignored: {declared.why}")
                continue
            try:
                values[key] = declared.parse(raw.strip())
            except ValueError as error:
                problems.append(f"{where} = {raw!r}: {error}")
    if problems:
        raise ConfigError(problems)
    return cls(notices=tuple(notices), **values)


def load(path: Path = DEFAULT_PATH, required: bool = False, cls: type = Config) -> Config:
    """Read the file at ``path``; a missing optional file means built-in defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([f"{path}: no such file: give an existing file to "
                               f"--config"]) from None
        return cls(notices=(f"{path} not found: using built-in defaults",))
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([f"{path}: cannot read it: {reason}"]) from None
    return parse(text, str(path), cls)


def with_overrides(config: Config, **overrides) -> Config:
    """Return ``config`` with every override that is not None applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def show(value) -> str:
    """Return a setting's value as the configuration file writes it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def render(config: Config) -> str:
    """Return the effective configuration as the INI text that would produce it."""
    effective = replace(config, prefix=config.metric_prefix)
    lines: List[str] = []
    for section, keys in schema(type(config)).items():
        lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        lines += [f"{key} = {show(getattr(effective, key))}"
                  for key, declared in keys.items() if isinstance(declared, Setting)]
    return "\n".join(lines) + "\n"
