"""A throwaway carbon-cache on loopback, for the tests and for `make run`.

As a module: CarbonCache(folder).start() runs Debian's carbon-cache in the
foreground on free loopback ports with one-second retention, and .series()
reads the whisper files back. As a script:

    local_carbon.py run FOLDER PORT -- COMMAND...

starts carbon-cache on PORT unless something already listens there, runs
COMMAND, and stops carbon-cache when COMMAND ends (Ctrl-C included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CARBON = "/usr/bin/carbon-cache"

CONFIG = """[cache]
STORAGE_DIR = {folder}/storage/
LOCAL_DATA_DIR = {folder}/storage/whisper/
WHITELISTS_DIR = {folder}/storage/lists/
CONF_DIR = {folder}/
LOG_DIR = {folder}/log/
PID_DIR = {folder}/
USER =
DATABASE = whisper
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
MIN_TIMESTAMP_RESOLUTION = 1
LINE_RECEIVER_INTERFACE = {interface}
LINE_RECEIVER_PORT = {port}
ENABLE_UDP_LISTENER = True
UDP_RECEIVER_INTERFACE = {interface}
UDP_RECEIVER_PORT = {port}
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {pickle_port}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {query_port}
USE_FLOW_CONTROL = True
LOG_UPDATES = False
LOG_CREATES = False
CACHE_WRITE_STRATEGY = sorted
WHISPER_AUTOFLUSH = True
WHISPER_FALLOCATE_CREATE = False
"""

SCHEMAS = """[all]
pattern = .*
retentions = 1s:2h
"""

AGGREGATION = """[all]
pattern = .*
xFilesFactor = 0
aggregationMethod = average
"""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` (IPv4 or IPv6 loopback) that was free a moment ago."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class CarbonCache:
    """One carbon-cache process with its own folder and ports; ``interface`` is where it
    takes plaintext lines over TCP and UDP (127.0.0.1, or ::1 for IPv6)."""

    def __init__(self, folder: Path, port: Optional[int] = None, interface: str = "127.0.0.1"):
        self.folder = Path(folder).resolve()
        self.interface = interface
        self.port = port or free_port(interface)
        self.process: Optional[subprocess.Popen] = None
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "carbon.conf").write_text(CONFIG.format(
            folder=self.folder, interface=interface, port=self.port, pickle_port=free_port(), query_port=free_port()))
        (self.folder / "storage-schemas.conf").write_text(SCHEMAS)
        (self.folder / "storage-aggregation.conf").write_text(AGGREGATION)

    @property
    def whisper_dir(self) -> Path:
        return self.folder / "storage" / "whisper"

    def start(self, timeout: float = 30.0) -> "CarbonCache":
        (self.folder / "carbon-cache-a.pid").unlink(missing_ok=True)
        log = open(self.folder / "carbon-cache.out", "ab")
        self.process = subprocess.Popen(
            [CARBON, f"--config={self.folder / 'carbon.conf'}", "--debug", "start"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # the terminal's Ctrl-C is for the agent; we stop carbon after it
        deadline = time.monotonic() + timeout
        while not listening(self.port, self.interface):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.folder / "carbon-cache.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"carbon-cache did not start on port {self.port}:\n{tail}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop carbon-cache; it writes out its cache before it exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def series(self) -> Dict[str, List[Tuple[int, float]]]:
        """Return every stored series as {dotted.path: [(timestamp, value), ...]} (non-null only)."""
        import whisper
        found = {}
        now = int(time.time()) + 60
        for path in sorted(self.whisper_dir.rglob("*.wsp")):
            name = ".".join(path.relative_to(self.whisper_dir).with_suffix("").parts)
            (start, _end, step), values = whisper.fetch(str(path), now - 7000, now)
            found[name] = [(start + i * step, v) for i, v in enumerate(values) if v is not None]
        return found

    def __enter__(self) -> "CarbonCache":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_beside(folder: Path, port: int, command: List[str]) -> int:
    """Run ``command`` with a local carbon-cache on ``port`` unless one is already there."""
    if listening(port):
        print(f"local_carbon: something already listens on 127.0.0.1:{port}; using it",
              file=sys.stderr)
        return subprocess.call(command)
    carbon = CarbonCache(folder, port).start()
    print(f"local_carbon: started carbon-cache on 127.0.0.1:{port}, whisper files in "
          f"{carbon.whisper_dir}", file=sys.stderr)
    agent = subprocess.Popen(command)
    try:
        while True:
            try:
                return agent.wait()
            except KeyboardInterrupt:
                agent.send_signal(signal.SIGINT)  # the agent may have missed the terminal's Ctrl-C
    finally:
        carbon.stop()
        print("local_carbon: stopped carbon-cache", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "run" or sys.argv[4] != "--":
        sys.exit("usage: local_carbon.py run FOLDER PORT -- COMMAND...")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_beside(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[5:]))
