"""Read and validate /etc/gsender.conf into a frozen Config.

The original gsender's file loads unchanged: [default] frequency, script_path,
logging_level and [graphite] server_address, port. Every problem found is
reported on a line of its own naming file, section, key, value and what is allowed.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import EX_CONFIG, AgentError
from .metrics import TAGGED_PREFIX, check_prefix, default_prefix

DEFAULT_PATH = Path("/etc/gsender.conf")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRACEPOINT_MODES = ("auto", "raw", "classic")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_DOTTED_NUMBERS = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_LABEL_CHARS = 63    # RFC 1035: one label of a host name
MAX_HOST_CHARS = 253    # RFC 1035: the whole name, dots included, without the root's dot


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """Every setting, one field per configuration key (see SCHEMA), with its default."""

    frequency: int = 15
    logging_level: str = "INFO"
    prefix: Optional[str] = None
    bucket_series: bool = True
    state_directory: Path = Path("/var/lib/gsender-bcc")
    max_services: int = 20
    tracepoints: str = "auto"
    server_address: str = "localhost"
    port: int = 2003
    fallback_servers: Tuple[Server, ...] = ()
    protocol: str = "tcp"
    timeout: float = 5.0
    buffer_hours: float = 24.0
    buffer_megabytes: int = 128
    tags: bool = False
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


class ConfigError(AgentError):
    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems), EX_CONFIG)
        self.problems = problems


# Parsers: text -> value, raising ValueError with what is allowed.

def _whole(low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"must be a whole number of {unit} from {low} to {high}")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high} {unit}")
        return value
    return parse


def _decimal(low: float, high: float, unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number of {unit} from {low:g} to {high:g}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"must be from {low:g} to {high:g} {unit}")
        return value
    return parse


def _choice(options: Tuple[str, ...], fold: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if fold(text) not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return fold(text)
    return parse


def _boolean(text: str) -> bool:
    states = configparser.ConfigParser.BOOLEAN_STATES
    if text.lower() not in states:
        raise ValueError("must be yes or no")
    return states[text.lower()]


def _address(text: str, kind: Callable[[str], object], name: str) -> str:
    try:
        kind(text)
    except ValueError:
        raise ValueError(f"must be a valid {name} address") from None
    return text


def _host(text: str) -> str:
    """Return a host name or an IPv4 or IPv6 address, checked label by label."""
    if not text:
        raise ValueError("must not be empty: give a host name or address")
    if ":" in text:
        return _address(text, ipaddress.IPv6Address, "IPv6")
    name = text[:-1] if text.endswith(".") else text  # a fully qualified name's root dot
    if _DOTTED_NUMBERS.fullmatch(name):
        return _address(text, ipaddress.IPv4Address, "IPv4")
    if len(name) > MAX_HOST_CHARS:
        raise ValueError(f"is {len(name)} characters long: a host name has at most "
                         f"{MAX_HOST_CHARS}")
    for number, label in enumerate(name.split("."), 1):
        if not label:
            raise ValueError(f"has an empty label (number {number}): a host name is labels "
                             f"joined by single dots")
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"has a label of {len(label)} characters ({label[:12]}...): at most "
                             f"{MAX_LABEL_CHARS}")
        if not _LABEL.fullmatch(label):
            raise ValueError(f"has a label {label!r} that is not letters, digits, '-' and '_' "
                             f"(not beginning or ending with '-')")
    return text


def _server(text: str) -> Server:
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError("must be host:port")
    return Server(_host(host.strip("[]")), _whole(1, 65535, "(port)")(port))


def _server_list(text: str) -> Tuple[Server, ...]:
    try:
        return tuple(_server(item) for item in text.split(",") if item.strip())
    except ValueError as error:
        raise ValueError(f"must be a comma-separated list of host:port ({error})") from None


def _directory(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("must not hold control characters (a newline, a tab, ...)")
    return Path(text)


# section -> key -> parser; each key is the name of its Config field. None marks a key
# of the original tool that is accepted and ignored.
SCHEMA: Dict[str, Dict[str, Optional[Callable[[str], object]]]] = {
    "default": {
        "frequency": _whole(1, 3600, "seconds"),
        "logging_level": _choice(LEVELS, str.upper),
        "script_path": None,
        "prefix": check_prefix,
        "bucket_series": _boolean,
        "state_directory": _directory,
        "max_services": _whole(0, 1000, "services"),
        "tracepoints": _choice(TRACEPOINT_MODES, str.lower),
    },
    "graphite": {
        "server_address": _host,
        "port": _whole(1, 65535, "(port)"),
        "fallback_servers": _server_list,
        "protocol": _choice(("tcp", "udp"), str.lower),
        "timeout": _decimal(0.1, 60, "seconds"),
        "buffer_hours": _decimal(0.01, 720, "hours"),
        "buffer_megabytes": _whole(1, 1 << 20, "MiB"),
        "tags": _boolean,
    },
}


def default_of(key: str):
    """Return the built-in default of a configuration key."""
    return getattr(Config(), key)


def _suggest(word: str, options) -> str:
    by_folded = {option.lower(): option for option in options}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1)
    return f" (did you mean '{by_folded[close[0]]}'?)" if close else ""


def parse(text: str, source: str) -> Config:
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
    for section in parser.sections():
        if section not in SCHEMA:
            problems.append(f"{source}: unknown section [{section}]{_suggest(section, SCHEMA)}; "
                            f"known: {', '.join(f'[{s}]' for s in SCHEMA)}")
            continue
        for key, raw in parser.items(section):
            where = f"{source}: [{section}] {key}"
            if key not in SCHEMA[section]:
                problems.append(f"{where}: unknown key{_suggest(key, SCHEMA[section])}; known: "
                                f"{', '.join(SCHEMA[section])}")
                continue
            if "\n" in raw:
                problems.append(f"{where} = {raw!r}: must be on one line")
                continue
            convert = SCHEMA[section][key]
            if convert is None:
                notices.append(f"{where} = {raw} is ignored: the tracer is now built in")
                continue
            try:
                values[key] = convert(raw.strip())
            except ValueError as error:
                problems.append(f"{where} = {raw!r}: {error}")
    if problems:
        raise ConfigError(problems)
    return Config(notices=tuple(notices), **values)


def load(path: Path = DEFAULT_PATH, required: bool = False) -> Config:
    """Read the file at ``path``; a missing optional file means built-in defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([f"{path}: no such file: give an existing file to "
                               f"--config"]) from None
        return Config(notices=(f"{path} not found: using built-in defaults",))
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([f"{path}: cannot read it: {reason}"]) from None
    return parse(text, str(path))


def with_overrides(config: Config, **overrides) -> Config:
    """Return ``config`` with every override that is not None applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def render(config: Config) -> str:
    """Return the effective configuration as the INI text that would produce it."""
    def show(value) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, tuple):
            return ", ".join(map(str, value))
        return "" if value is None else str(value)

    effective = replace(config, prefix=config.metric_prefix)
    lines: List[str] = []
    for section, keys in SCHEMA.items():
        lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        lines += [f"{key} = {show(getattr(effective, key))}"
                  for key, convert in keys.items() if convert is not None]
    return "\n".join(lines) + "\n"
