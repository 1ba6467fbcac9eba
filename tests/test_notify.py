import logging
import socket

import pytest

from gsender_bcc.notify import NullNotifier, notifier_from_environment


@pytest.fixture
def environment(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield path, sock


def received(sock):
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


def say_everything(notifier):
    notifier.ready("attached")
    notifier.status("x")
    notifier.reloading()
    notifier.reloaded("y")
    notifier.watchdog()
    notifier.stopping()


def test_without_notify_socket_nothing_is_sent(environment, listener):
    path, sock = listener
    notifier = notifier_from_environment()
    assert type(notifier) is NullNotifier and notifier.watchdog_seconds is None
    say_everything(notifier)
    assert received(sock) == []
    # The control: the same calls with NOTIFY_SOCKET set do reach the listener.
    environment.setenv("NOTIFY_SOCKET", path)
    say_everything(notifier_from_environment())
    assert received(sock) == [b"READY=1\nSTATUS=attached", b"STATUS=x", b"RELOADING=1",
                              b"READY=1\nSTATUS=y", b"WATCHDOG=1", b"STOPPING=1"]


def test_messages_and_watchdog_interval(environment, listener):
    path, sock = listener
    environment.setenv("NOTIFY_SOCKET", path)
    environment.setenv("WATCHDOG_USEC", "3000000")
    notifier = notifier_from_environment()
    notifier.ready("attached")
    notifier.watchdog()
    assert received(sock) == [b"READY=1\nSTATUS=attached", b"WATCHDOG=1"]
    assert notifier.watchdog_seconds == 1.5


def test_watchdog_meant_for_another_process_is_ignored(environment, tmp_path):
    environment.setenv("NOTIFY_SOCKET", str(tmp_path / "s"))
    environment.setenv("WATCHDOG_USEC", "3000000")
    environment.setenv("WATCHDOG_PID", "1")
    assert notifier_from_environment().watchdog_seconds is None


def test_a_vanished_socket_is_reported_once_and_never_raises(environment, tmp_path, caplog):
    environment.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = notifier_from_environment()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            notifier.status("still running")
    assert caplog.text.count("cannot notify systemd") == 1
