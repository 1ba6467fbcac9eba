"""How a setting's text becomes its value: whole and decimal numbers within bounds, choices,
yes or no, host names and addresses, servers, directories. Each parser takes the text and
returns the value, or raises ValueError saying what is allowed."""

from __future__ import annotations

import configparser
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Tuple

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


# Parsers: text -> value, raising ValueError with what is allowed.

def whole(low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"must be a whole number of {unit} from {low} to {high}")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high} {unit}")
        return value
    return parse


def decimal(low: float, high: float, unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number of {unit} from {low:g} to {high:g}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"must be from {low:g} to {high:g} {unit}")
        return value
    return parse


def choice(options: Tuple[str, ...], fold: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if fold(text) not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return fold(text)
    return parse


def boolean(text: str) -> bool:
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


def host(text: str) -> str:
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
    name, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError("must be host:port")
    return Server(host(name.strip("[]")), whole(1, 65535, "(port)")(port))


def server_list(text: str) -> Tuple[Server, ...]:
    try:
        return tuple(_server(item) for item in text.split(",") if item.strip())
    except ValueError as error:
        raise ValueError(f"must be a comma-separated list of host:port ({error})") from None


def directory(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueError("must be an absolute path")
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("must not hold control characters (a newline, a tab, ...)")
    return Path(text)
