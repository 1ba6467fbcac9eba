import logging
import socket

import pytest

from gsender_bcc.notify import Notifier


@pytest.fixture
def environment(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_notify_socket_nothing_is_sent(environment):
    notifier = Notifier()
    assert notifier.watchdog_seconds is None
    notifier.ready("x")  # no socket, no error


def test_messages_and_watchdog_interval(environment, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        environment.setenv("NOTIFY_SOCKET", path)
        environment.setenv("WATCHDOG_USEC", "3000000")
        notifier = Notifier()
        notifier.ready("attached")
        notifier.watchdog()
        assert listener.recv(100) == b"READY=1\nSTATUS=attached"
        assert listener.recv(100) == b"WATCHDOG=1"
    assert notifier.watchdog_seconds == 1.5


def test_watchdog_meant_for_another_process_is_ignored(environment, tmp_path):
    environment.setenv("NOTIFY_SOCKET", str(tmp_path / "s"))
    environment.setenv("WATCHDOG_USEC", "3000000")
    environment.setenv("WATCHDOG_PID", "1")
    assert Notifier().watchdog_seconds is None


def test_a_vanished_socket_is_reported_once_and_never_raises(environment, tmp_path, caplog):
    environment.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = Notifier()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            notifier.status("still running")
    assert caplog.text.count("cannot notify systemd") == 1
