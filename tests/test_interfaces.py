"""The real parts and the tests' fakes have the shape gsender_bcc.interfaces writes down.

Each Protocol member must be there, and each method must take every call the Protocol
allows: the same parameters by name and kind, a default wherever the Protocol has one, and
nothing more that a caller would have to give.
"""

import inspect
import io
import re
from typing import List, Protocol, runtime_checkable

import pytest

import test_daemon
import test_sampler
import test_top
from gsender_bcc import interfaces
from gsender_bcc.cgroups import CgroupTree
from gsender_bcc.daemon import SystemClock
from gsender_bcc.probe import Probe
from gsender_bcc.sink import GraphiteSink, StdoutSink


def members(protocol) -> List[str]:
    """The names a Protocol declares, its bases' included: attributes and methods."""
    names: List[str] = []
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        names += [name for name in cls.__dict__.get("__annotations__", {}) if name not in names]
        names += [name for name, value in vars(cls).items()
                  if callable(value) and not name.startswith("_") and name not in names]
    return names


def parameters(owner, name) -> List[inspect.Parameter]:
    """A method's parameters as a caller sees them (without self)."""
    cls = owner if isinstance(owner, type) else type(owner)
    found = inspect.getattr_static(cls, name)
    listed = list(inspect.signature(getattr(cls, name)).parameters.values())
    return listed if isinstance(found, staticmethod) else listed[1:]


def has_attribute(subject, name) -> bool:
    """An instance has it; a class has it, declares it, or its __init__ sets it."""
    if hasattr(subject, name):
        return True
    if not isinstance(subject, type):
        return False
    for cls in subject.__mro__:
        if name in vars(cls).get("__annotations__", {}):
            return True
        try:
            source = inspect.getsource(vars(cls)["__init__"])
        except (KeyError, TypeError, OSError):  # none of its own, a builtin, or no file
            continue
        if re.search(rf"\bself\.{name}\s*(:[^=]*)?=", source):
            return True
    return False


def mismatches(protocol, subject) -> List[str]:
    """Say how ``subject`` (a class or an instance) differs from ``protocol``; [] if it does not."""
    problems = []
    for name in members(protocol):
        if not has_attribute(subject, name):
            problems.append(f"no {name}")
            continue
        if not callable(getattr(protocol, name, None)):
            continue
        wanted = {p.name: p for p in parameters(protocol, name)}
        given = {p.name: p for p in parameters(subject, name)}
        for p in wanted.values():
            q = given.get(p.name)
            if q is None:
                problems.append(f"{name}() lacks {p.name}")
            elif q.kind != p.kind:
                problems.append(f"{name}() takes {p.name} as {q.kind.description}")
            elif p.default is not p.empty and q.default is q.empty:
                problems.append(f"{name}() needs {p.name}, which callers may leave out")
        if list(given)[:len(wanted)] != list(wanted):
            problems.append(f"{name}() has its parameters in another order: {list(given)}")
        problems += [f"{name}() needs {q.name}, which callers never give"
                     for q in given.values() if q.name not in wanted and q.default is q.empty
                     and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
    if not isinstance(subject, type) and not isinstance(subject, protocol):
        problems.append(f"not an instance of {protocol.__name__}")
    return problems


def subjects():
    """(protocol, what must have its shape): the real classes, then the fakes."""
    return [
        (interfaces.Probe, Probe),
        (interfaces.Probe, test_daemon.FakeProbe()),
        (interfaces.Probe, test_top.FakeProbe()),
        (interfaces.Probe, test_sampler.FakeMap()),
        (interfaces.CgroupNames, CgroupTree),
        (interfaces.CgroupNames, test_sampler.FakeTree()),
        (interfaces.Clock, SystemClock()),
        (interfaces.Clock, test_daemon.FakeClock(0.0)),
        (interfaces.Clock, test_daemon.MonotonicEventsClock(0.0)),
        (interfaces.Monotonic, test_sampler.FakeClock()),
        (interfaces.Sink, StdoutSink(stream=io.StringIO())),
        (interfaces.Sink, GraphiteSink),
        (interfaces.Sink, test_daemon.RecordingSink()),
    ]


@pytest.mark.parametrize("protocol, subject", subjects(),
                         ids=lambda x: getattr(x, "__name__", None) or type(x).__qualname__)
def test_has_the_shape_the_protocol_writes_down(protocol, subject):
    assert mismatches(protocol, subject) == []


@runtime_checkable
class Shaped(Protocol):
    size: int

    def put(self, item, timeout=None) -> None: ...


@pytest.mark.parametrize("body, problem", [
    ("size = 1\ndef take(self, item, timeout=None): pass", "no put"),
    ("def put(self, item, timeout=None): pass", "no size"),
    ("size = 1\ndef put(self, thing, timeout=None): pass", "put() lacks item"),
    ("size = 1\ndef put(self, item, timeout): pass", "put() needs timeout, which callers"),
    ("size = 1\ndef put(self, item, *, timeout=None): pass", "put() takes timeout as keyword"),
    ("size = 1\ndef put(self, item, timeout=None, *, block): pass", "put() needs block, which"),
    ("size = 1\ndef put(self, timeout=None, item=None): pass", "another order"),
])
def test_a_difference_is_named(body, problem):
    namespace: dict = {}
    exec("class Unlike:\n" + "".join(f"    {line}\n" for line in body.splitlines()), namespace)
    assert any(problem in found for found in mismatches(Shaped, namespace["Unlike"]))


def test_a_class_alike_has_no_difference():
    class Alike:
        size = 0

        def put(self, item, timeout=None, block=True):
            pass
    assert mismatches(Shaped, Alike) == mismatches(Shaped, Alike()) == []


def test_an_attribute_its_init_sets_counts_and_a_longer_name_does_not():
    class SetsIt:
        def __init__(self):
            self.size = 1

        def put(self, item, timeout=None):
            pass

    class SetsAnother:
        def __init__(self):
            self.sizes = 1

        def put(self, item, timeout=None):
            pass
    assert mismatches(Shaped, SetsIt) == [] and mismatches(Shaped, SetsAnother) == ["no size"]
