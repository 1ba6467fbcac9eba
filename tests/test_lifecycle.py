"""The running agent: reload on SIGHUP, systemd notifications, stalls, stop."""

import os
import re
import signal
import socket
import time

import pytest

from conftest import TIMER_SLACK, Lateness, agent_program_count, program_ids_of

pytestmark = pytest.mark.bpf


def write_config(path, frequency, extra=""):
    path.write_text(f"[default]\nfrequency = {frequency}\nprefix = life.cpu-lat\n{extra}")


def test_sighup_changes_the_frequency_without_detaching(tmp_path, agent_factory):
    config = tmp_path / "gsender.conf"
    write_config(config, 1)
    agent = agent_factory(["--config", str(config), "--stdout"])
    first = agent.stamps(2)
    assert first[1] - first[0] == 1
    programs = program_ids_of(agent.proc.pid)
    assert len(programs) == agent_program_count()
    write_config(config, 3)
    agent.proc.send_signal(signal.SIGHUP)
    later = agent.stamps(3)
    assert all(stamp % 3 == 0 for stamp in later)
    assert [b - a for a, b in zip(later, later[1:])] == [3, 3]
    assert program_ids_of(agent.proc.pid) == programs  # the same programs stayed attached
    code, stderr = agent.stop()
    assert code == 0
    assert "configuration reloaded: frequency 3s, prefix life.cpu-lat" in stderr


def test_invalid_reload_keeps_the_running_configuration(tmp_path, agent_factory):
    config = tmp_path / "gsender.conf"
    write_config(config, 1)
    agent = agent_factory(["--config", str(config), "--stdout"])
    agent.stamps(1)
    config.write_text("[default]\nfrequency = often\n")
    agent.proc.send_signal(signal.SIGHUP)
    stamps = agent.stamps(3)
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [1, 1]
    code, stderr = agent.stop()
    assert code == 0
    assert (f"reload refused, keeping the running configuration: {config}: [default] frequency = "
            f"'often': must be a whole number of seconds from 1 to 3600") in stderr


def test_systemd_notifications_arrive_on_notify_socket(tmp_path, agent_factory):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(20)
        # Frequency 3 and a 0.4 s watchdog: pings once an interval would not do.
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        env.pop("WATCHDOG_PID", None)
        agent = agent_factory(["--stdout", "--frequency", "3"], env=env)
        messages, pings = [], []
        lateness = None

        def receive():
            nonlocal lateness
            for message in listener.recv(4096).decode().split("\n"):
                messages.append(message)
                if message == "READY=1" and lateness is None:  # attached: from here on the
                    lateness = Lateness(agent.proc.pid, os.getpid())  # agent waits and measures
                if message == "WATCHDOG=1":
                    pings.append(time.monotonic())
        while sum(m.startswith("STATUS=last interval ending") for m in messages) < 2:
            receive()
        agent.proc.send_signal(signal.SIGHUP)
        while "RELOADING=1" not in messages:
            receive()
        while messages.count("READY=1") < 2:  # the reload's end
            receive()
        late = lateness.update()  # before the stop: pings read after it are not counted
        timed = list(pings)
        code, _ = agent.stop()
        while "STOPPING=1" not in messages:
            receive()
    assert code == 0
    assert messages[0] == "READY=1"
    assert messages[1].startswith("STATUS=attached; first interval ends at ")
    status = next(m for m in messages if m.startswith("STATUS=last interval ending"))
    assert re.fullmatch(r"STATUS=last interval ending \d+: \d+ samples in \d+\.\ds.*", status)
    gaps = [b - a for a, b in zip(timed, timed[1:])]
    # Every 0.2 s (half of WATCHDOG_USEC) of waiting: a ping is late only by what the agent
    # did meanwhile (an interval, the reload) and by waits for a CPU, its own or ours.
    assert len(timed) >= 10 and max(gaps) <= 0.2 + late + TIMER_SLACK, \
        f"longest gap {max(gaps):.3f}s; {late:.3f}s of CPU time and waits for a CPU"


def test_a_stall_gives_one_interval_not_a_burst(agent_factory):
    agent = agent_factory(["--stdout", "--frequency", "1"])
    before = agent.stamps(2)
    agent.proc.send_signal(signal.SIGSTOP)
    time.sleep(3.5)
    agent.proc.send_signal(signal.SIGCONT)
    after = agent.stamps(3)
    stamps = before + after
    assert stamps == sorted(set(stamps))  # strictly increasing: nothing repeated
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) >= 3  # the stall became one longer interval ...
    assert gaps.count(1) >= len(gaps) - 2  # ... not a burst of empty ones


def test_stop_mid_interval_sends_nothing_with_a_future_timestamp(agent_factory):
    agent = agent_factory(["--stdout", "--frequency", "4"])
    first = agent.stamps(1)[0]
    time.sleep(1.5)
    code, stderr = agent.stop()
    assert code == 0
    assert {stamp for _, _, stamp in agent.rest()} <= {first}  # the rest of the first interval only
    assert re.search(r"the unfinished interval \(\d\.\ds, \d+ samples\) is not sent", stderr)
