import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

REQUIRE_BPF = os.environ.get("GSENDER_REQUIRE_BPF") == "1"
AGENT = [sys.executable, "-m", "gsender_bcc"]
LINE = re.compile(r"^(\S+) (\S+) (\d+)$")


def bpf_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root to load BPF programs (run 'sudo make test')"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python bindings are not importable (apt-get install python3-bpfcc)"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if REQUIRE_BPF:
        pytest.fail(f"GSENDER_REQUIRE_BPF=1 but this BPF test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


# A user-space loop is switched out at its return to user mode, with prev_state 0.
# A loop inside the kernel (long reads of /dev/zero) is preempted there, and classic
# sched_switch reports it with the preempted bit: only that kind proves the bit is read.
BUSY_LOOPS = {
    "user": "while True: pass",
    "kernel": ("import os\nzero = os.open('/dev/zero', os.O_RDONLY)\nbuf = bytearray(64 << 20)\n"
               "while True: os.readv(zero, [buf])"),
}


def spin_on_cpu(cpu: int, kind: str = "user") -> subprocess.Popen:
    """Start a process that burns one pinned CPU until killed."""
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOPS[kind]])
    os.sched_setaffinity(child.pid, {cpu})
    return child


@pytest.fixture(params=sorted(BUSY_LOOPS))
def busy_cpu(request):
    """Two busy processes pinned to CPU 0, so each waits while the other runs."""
    children = [spin_on_cpu(0, request.param) for _ in range(2)]
    time.sleep(0.2)
    yield 0
    for child in children:
        child.kill()
    for child in children:
        child.wait(timeout=5)


def loaded_programs():
    """Return bpftool's list of loaded BPF programs (each with the pids holding it)."""
    import json
    out = subprocess.run(["bpftool", "--json", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out or "[]")


def loaded_program_ids():
    """Return the ids of the BPF programs loaded in the kernel, as bpftool lists them."""
    return {p["id"] for p in loaded_programs()}


def thread_capabilities() -> int:
    """The calling thread's effective capabilities (they are per thread)."""
    from gsender_bcc.probe import effective_capabilities
    return effective_capabilities(Path("/proc/thread-self/status").read_text())


def program_fdinfo(pid="self"):
    """The fdinfo fields (name: text) of each BPF program file descriptor ``pid`` holds."""
    for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
        try:
            text = info.read_text()
        except OSError:
            continue  # closed meanwhile
        fields = dict((name, value.strip()) for name, _, value in
                      (line.partition(":") for line in text.splitlines()))
        if "prog_id" in fields:
            yield fields


def program_ids_of(pid):
    """Return the ids of the BPF programs that process ``pid`` holds, from its fdinfo."""
    return {int(fields["prog_id"]) for fields in program_fdinfo(pid)}


def agent_program_count():
    """Return how many BPF programs the agent attaches here by default (one per tracepoint)."""
    from gsender_bcc import program
    from gsender_bcc.config import Config
    return len(program.compile_settings(Config()).tracepoints)


def wait_for_programs_of(pid, count, timeout=30.0):
    """Poll until process ``pid`` holds ``count`` BPF programs; return their ids."""
    deadline = time.monotonic() + timeout
    while True:
        ids = program_ids_of(pid)
        if len(ids) >= count:
            return ids
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} never held {count} BPF programs (it holds {sorted(ids)})")
        time.sleep(0.02)


def assert_unloaded(ids, timeout=5.0):
    """Fail unless none of these programs is loaded, allowing for the kernel's deferred free."""
    deadline = time.monotonic() + timeout
    while loaded_program_ids() & set(ids):
        if time.monotonic() > deadline:
            pytest.fail(f"BPF programs {sorted(loaded_program_ids() & set(ids))} still loaded "
                        f"{timeout}s after exit")
        time.sleep(0.05)


def schedstat_sum(pids, field: int) -> int:
    """Sum one field of schedstat over the threads of the given processes."""
    total = 0
    for pid in pids:
        for path in Path(f"/proc/{pid}/task").glob("[0-9]*/schedstat"):
            total += int(path.read_text().split()[field])
    return total


def run_delay_of(pids) -> int:
    """Sum schedstat run_delay (ns) over the threads of the given processes."""
    return schedstat_sum(pids, 1)


def dispatches_of(pids) -> int:
    """Sum schedstat's count of runs after a wait (pcount) over the given processes' threads."""
    return schedstat_sum(pids, 2)


TIMER_SLACK = 0.05  # s: timers, clock reads and interrupts, which schedstat does not charge


class Lateness:
    """What can make the threads of some processes late, measured from now on: the CPU time
    they use and the time they wait for a CPU (schedstat fields 1 and 2), summed over them.

    A thread that sleeps S seconds, then works, ends no later than S plus these: a bound on an
    elapsed time derived from what the machine did meanwhile, not a guess of it. ``update()``
    reads every thread again (call it while they live: a thread that has exited is no longer
    listed, and counts with what was last read of it).
    """

    def __init__(self, *pids: int):
        self.pids = pids
        self._start = self._read()
        self._last = dict(self._start)

    def _read(self):
        found = {}
        for pid in self.pids:
            for path in Path(f"/proc/{pid}/task").glob("[0-9]*/schedstat"):
                try:
                    ran, waited = path.read_text().split()[:2]
                except (OSError, ValueError):
                    continue  # the thread exited while we looked
                found[path.parent.name] = int(ran) + int(waited)
        return found

    def update(self) -> float:
        """Read again; return the seconds measured so far."""
        self._last.update(self._read())
        return sum(ns - self._start.get(tid, 0) for tid, ns in self._last.items()) / 1e9


class Cgroup:
    """A cgroup v2 directory made for a test, and the busy processes put in it."""

    def __init__(self, mount: Path, name: str):
        self.path = mount / name
        self.path.mkdir(parents=True)
        self.id = os.stat(self.path).st_ino
        self.children = []

    def start(self, code: str, cpu: Optional[int] = None) -> subprocess.Popen:
        """Start a Python process running ``code`` inside this cgroup (pinned to ``cpu``)."""
        child = subprocess.Popen([sys.executable, "-c", "import sys\nsys.stdin.readline()\n"
                                  + code], stdin=subprocess.PIPE)
        (self.path / "cgroup.procs").write_text(str(child.pid))
        if cpu is not None:
            os.sched_setaffinity(child.pid, {cpu})
        child.stdin.write(b"go\n")  # it starts only once inside the cgroup
        child.stdin.flush()
        self.children.append(child)
        return child

    def spin(self, cpu: int, kind: str = "user") -> subprocess.Popen:
        """Start a busy process pinned to ``cpu`` inside this cgroup."""
        return self.start(BUSY_LOOPS[kind], cpu)

    @property
    def pids(self):
        return [child.pid for child in self.children]

    def pause(self):
        """Stop every process and wait until all are stopped, so no wait is left in progress.

        schedstat's run_delay grows only when a waiting task gets to run; once the tasks are
        stopped, it and the BPF counters have both taken every wait so far.
        """
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not all(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                      for pid in self.pids):
            assert time.monotonic() < deadline, "the busy processes did not stop"
            time.sleep(0.01)
        time.sleep(0.05)  # the CPUs switch away from the stopped tasks

    def resume(self):
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)

    def remove(self):
        for child in self.children:
            child.kill()
        for child in self.children:
            child.wait(timeout=5)
        self.children = []
        deadline = time.monotonic() + 5
        for folder in sorted(self.path.rglob("*"), reverse=True) + [self.path]:
            while folder.is_dir():
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.fixture(scope="session")
def stolen_ns():
    """stolen.stolen_ns, with debugfs mounted for it if it was not (and unmounted after)."""
    import stolen as module
    mounted = module.mount_debugfs()
    try:
        yield module.stolen_ns
    finally:
        if mounted:
            module.unmount_debugfs()


@pytest.fixture
def cgroup_factory():
    """Make cgroups in the v2 hierarchy (found in /proc/self/mounts); all removed afterwards."""
    from gsender_bcc.cgroups import v2_mount
    mount = v2_mount()
    if mount is None:
        pytest.fail("cgroup v2 is not mounted on this machine") if REQUIRE_BPF else \
            pytest.skip("cgroup v2 is not mounted")
    made = []

    def make(name):
        made.append(Cgroup(mount, f"gsender-test-{os.getpid()}/{name}"))
        return made[-1]
    yield make
    for cgroup in made:
        cgroup.remove()
    parent = mount / f"gsender-test-{os.getpid()}"
    if parent.exists():
        for folder in sorted((p for p in parent.rglob("*") if p.is_dir()), reverse=True):
            folder.rmdir()  # folders that named a cgroup's parents, now empty
        parent.rmdir()


def run_delay_ns() -> int:
    """Sum the kernel's run-queue wait (schedstat run_delay) over every thread alive now."""
    total = 0
    for path in Path("/proc").glob("[0-9]*/task/[0-9]*/schedstat"):
        try:
            total += int(path.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass  # the thread exited while we looked
    return total


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from local_carbon import CarbonCache, free_port  # noqa: E402, F401 (free_port: for the tests)


@pytest.fixture
def carbon_factory(tmp_path):
    """Make carbon-cache instances on free loopback ports; all are stopped afterwards."""
    made = []

    def make(name="carbon", port=None):
        made.append(CarbonCache(tmp_path / name, port))
        return made[-1]
    yield make
    for carbon in made:
        carbon.stop()


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` every 0.2 s until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


class Agent:
    """The agent as a child process whose stdout carries plaintext lines (--stdout or --echo)."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen(AGENT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.pending = []

    def _next_line(self, deadline):
        assert time.monotonic() < deadline, "the agent printed too little in time"
        line = self.proc.stdout.readline()
        assert line, f"the agent ended: {self.stop_and_read_stderr()}"
        match = LINE.match(line.strip())
        assert match, f"not a plaintext line: {line!r}"
        return match.group(1), float(match.group(2)), int(match.group(3))

    def stamps(self, count, timeout=30):
        """Return the timestamps of the next ``count`` intervals' count lines."""
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            path, _, stamp = self._next_line(deadline)
            if path.endswith(".count") and ".service." not in path:
                found.append(stamp)
        return found

    def intervals(self, count, timeout=30):
        """Return every line of the next ``count`` whole intervals as (path, value, stamp)."""
        deadline = time.monotonic() + timeout
        while len({p[2] for p in self.pending}) <= count:
            self.pending.append(self._next_line(deadline))
        stamps = sorted({p[2] for p in self.pending})[:count]
        taken = [p for p in self.pending if p[2] in stamps]
        self.pending = [p for p in self.pending if p[2] not in stamps]
        return taken

    def stop_and_read_stderr(self):
        self.proc.kill()
        return self.proc.communicate()[1]

    def stop(self, sig=signal.SIGTERM, timeout=5):
        """Signal the agent; return its exit code and what it wrote to stderr."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, self.proc.stderr.read()

    def rest(self):
        """After the agent ended: the lines it printed that were not read yet."""
        lines = [LINE.match(line.strip()) for line in self.proc.stdout.read().splitlines()]
        return self.pending + [(m.group(1), float(m.group(2)), int(m.group(3))) for m in lines]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_factory():
    """Start agents as child processes; every one still running is killed afterwards."""
    started = []

    def start(args, env=None):
        started.append(Agent(args, env))
        return started[-1]
    yield start
    for agent in started:
        agent.close()
