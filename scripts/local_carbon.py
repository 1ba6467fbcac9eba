"""A throwaway Graphite on loopback, for the tests, `make run` and `make docs-graph`.

As a module:

- CarbonCache(folder).start() runs Debian's carbon-cache in the foreground on free
  loopback ports with one-second retention (or the storage rules given); .series() reads
  the whisper files back.
- GraphiteWeb(folder, carbon).start() runs Debian's graphite-web (Django's
  development server) on 127.0.0.1, reading that carbon-cache's whisper files and,
  through carbonlink, what it has not written yet.
- LocalGraphite(folder, port, web_port) is the pair, started and stopped together;
  graph_url() is the render-API URL of the latency graph.

As a script:

    local_carbon.py run FOLDER PORT [--web-port N] [--carbon-config FILE] -- COMMAND...

starts carbon-cache on PORT and graphite-web beside it, unless something already
listens on PORT; prints the graph's URL, runs COMMAND, and stops both when COMMAND
ends (Ctrl-C included). With --carbon-config, carbon-cache stores the series by the
stanzas `gsender-bcc --carbon-config` printed into FILE.

    local_carbon.py record PNG [--seconds N] [--busy-from S --busy-for N] -- COMMAND...

runs COMMAND (with "{port}" in its arguments replaced by the throwaway carbon-cache's
port) for N seconds, keeping the CPUs busy for a while in the middle, then renders the
graph of that run to PNG through graphite-web's render API.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

CARBON = "/usr/bin/carbon-cache"
# graphite-web and Django are Debian packages for Debian's own Python.
SYSTEM_PYTHON = "/usr/bin/python3"
GRAPHITE_STATIC = "/usr/share/graphite-web/static"
DEFAULT_WEB_PORT = 8080

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
MAX_CREATES_PER_MINUTE = {max_creates}
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
WHISPER_SPARSE_CREATE = True
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


def port_free(port: int) -> bool:
    """Return whether a TCP port on 127.0.0.1 can be listened on now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(process: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaped."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"


BARRIER = "local_carbon.barrier"  # CarbonCache.send_and_settle's series, left out of .series()


def wait_started(server, name: str, ready: Callable[[], bool], log: Path, timeout: float) -> None:
    """Poll ``ready`` until it is true; if ``server.process`` ends first or ``timeout`` passes,
    stop the server and raise RuntimeError with the tail of its log."""
    deadline = time.monotonic() + timeout
    while not ready():
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{name} did not start on port {server.port}:\n{log_tail(log)}")
        time.sleep(0.1)


def complete(path: Path) -> bool:
    """Whether a whisper file is whole: carbon-cache writes a new file's header, then its
    archives, in place, and graphite-web answers 500 to a render that reads it meanwhile."""
    import whisper
    try:
        last = whisper.info(str(path))["archives"][-1]
        return path.stat().st_size >= last["offset"] + last["size"]
    except (OSError, whisper.WhisperException, struct.error, IndexError, KeyError):
        return False


def stored_series(whisper_dir: Path, seconds: int = 7000) -> Dict[str, List[Tuple[int, float]]]:
    """Every whole whisper file under ``whisper_dir`` as {dotted.path: [(timestamp, value), ...]},
    the non-null points of the last ``seconds`` (from the finest archive that holds them)."""
    import whisper
    found = {}
    now = int(time.time()) + 60
    for path in sorted(whisper_dir.rglob("*.wsp")):
        if not complete(path):
            continue  # still being created: not a series yet
        name = ".".join(path.relative_to(whisper_dir).with_suffix("").parts)
        (start, _end, step), values = whisper.fetch(str(path), now - seconds, now)
        found[name] = [(start + i * step, v) for i, v in enumerate(values) if v is not None]
    return found


class CarbonCache:
    """One carbon-cache process with its own folder and ports; ``interface`` is where it
    takes plaintext lines over TCP and UDP (127.0.0.1, or ::1 for IPv6)."""

    def __init__(self, folder: Path, port: Optional[int] = None, interface: str = "127.0.0.1",
                 max_creates_per_minute: float = float("inf"), extra_config: str = "",
                 schemas: str = SCHEMAS, aggregation: str = AGGREGATION):
        self.folder = Path(folder).resolve()
        self.interface = interface
        self.port = port or free_port(interface)
        self.query_port = free_port()  # carbonlink: graphite-web asks for unwritten points here
        self.process: Optional[subprocess.Popen] = None
        self._barriers = itertools.count(1)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "carbon.conf").write_text(CONFIG.format(
            folder=self.folder, interface=interface, port=self.port, pickle_port=free_port(),
            query_port=self.query_port, max_creates=max_creates_per_minute) + extra_config)
        (self.folder / "storage-schemas.conf").write_text(schemas)
        (self.folder / "storage-aggregation.conf").write_text(aggregation)

    @property
    def whisper_dir(self) -> Path:
        return self.folder / "storage" / "whisper"

    def start(self, timeout: float = 30.0) -> CarbonCache:
        (self.folder / "carbon-cache-a.pid").unlink(missing_ok=True)
        self.whisper_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "carbon-cache.out", "ab")
        self.process = subprocess.Popen(
            [CARBON, f"--config={self.folder / 'carbon.conf'}", "--debug", "start"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # Ctrl-C is for the agent; carbon is stopped after it
        log.close()
        wait_started(self, "carbon-cache", lambda: listening(self.port, self.interface),
                     self.folder / "carbon-cache.out", timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop carbon-cache; it writes out its cache before it exits."""
        stop_process(self.process, timeout)
        self.process = None

    def series(self) -> Dict[str, List[Tuple[int, float]]]:
        """Return every stored series as {dotted.path: [(timestamp, value), ...]}, non-null."""
        found = stored_series(self.whisper_dir)
        found.pop(BARRIER, None)
        return found

    def cached(self, metrics: Sequence[str]) -> Dict[str, list]:
        """Ask carbon-cache (carbonlink's cache-query-bulk) for the points of ``metrics`` it
        holds in memory, not yet written or dropped."""
        request = pickle.dumps({"type": "cache-query-bulk", "metrics": list(metrics)}, protocol=2)
        with socket.create_connection(("127.0.0.1", self.query_port), timeout=10) as query:
            query.sendall(struct.pack("!L", len(request)) + request)
            reply = query.makefile("rb")
            (size,) = struct.unpack("!L", reply.read(4))
            return pickle.loads(reply.read(size))["datapointsByMetric"]

    def send_and_settle(self, lines: bytes, timeout: float = 30.0) -> None:
        """Send plaintext ``lines`` and return once carbon-cache has handled every one of them:
        written to its whisper file, or dropped (as MAX_CREATES_PER_MINUTE drops), so no
        settle window is guessed. Behind them on the same connection comes a point of a
        series whose file exists already; once it has reached carbon's cache, all the lines
        before it have too. Once none of them is in the cache any more, the single writer
        thread has taken each one; a second such point written to its file means the writer
        has also finished whatever it took before."""
        import whisper
        barrier = self.whisper_dir / (BARRIER.replace(".", "/") + ".wsp")
        if not barrier.exists():
            barrier.parent.mkdir(parents=True, exist_ok=True)
            whisper.create(str(barrier), [(1, 7200)])
        metrics = sorted({line.split(b" ", 1)[0].decode() for line in lines.splitlines()})
        deadline = time.monotonic() + timeout

        def barrier_point() -> Tuple[int, float, bytes]:
            stamp, value = int(time.time()) - 1, float(next(self._barriers))
            return stamp, value, f"{BARRIER} {value} {stamp}\n".encode()

        def received(stamp: int, value: float) -> bool:
            return (stamp, value) in self.cached([BARRIER])[BARRIER] or written(stamp, value)

        def written(stamp: int, value: float) -> bool:
            (start, _, step), values = whisper.fetch(str(barrier), stamp - 1, stamp + 1)
            return dict((start + i * step, v) for i, v in enumerate(values)).get(stamp) == value

        def poll(done: Callable[[], bool], what: str) -> None:
            while not done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"carbon-cache did not {what} within {timeout}s")
                time.sleep(0.05)

        stamp, value, line = barrier_point()
        with socket.create_connection((self.interface, self.port)) as connection:
            connection.sendall(lines + line)
        poll(lambda: received(stamp, value), "receive the lines")
        poll(lambda: not any(self.cached(metrics + [BARRIER]).values()), "take the lines")
        stamp, value, line = barrier_point()
        with socket.create_connection((self.interface, self.port)) as connection:
            connection.sendall(line)
        poll(lambda: written(stamp, value), "finish writing")

    def __enter__(self) -> CarbonCache:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- graphite-web ---------------------------------------------------------------------------

# Read by graphite.settings (GRAPHITE_SETTINGS_MODULE) in place of /etc/graphite/local_settings.py.
WEB_SETTINGS = """# Written by scripts/local_carbon.py for a throwaway graphite-web, at each start.
SECRET_KEY = {secret!r}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TIME_ZONE = {time_zone!r}
STORAGE_DIR = {folder!r}
WHISPER_DIR = {whisper!r}
STANDARD_DIRS = [{whisper!r}]
CONF_DIR = {folder!r}
LOG_DIR = {log_dir!r}
INDEX_FILE = {index!r}
STATIC_ROOT = {static!r}
CARBONLINK_HOSTS = ["127.0.0.1:{query_port}"]
CLUSTER_SERVERS = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"  # as its migrations have it; silences models.W042
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {database!r}}}}}
"""

# graphite-web's colours when a URL names none: on white, for the README too; blue and red
# are left to the mean and p99, which graph_url() colours itself.
GRAPH_TEMPLATES = """[default]
background = white
foreground = black
majorLine = #b0b0b0
minorLine = #e4e4e4
lineColors = #2ca02c,#ff7f0e,#9467bd,#8c564b,#e377c2,#17becf,#bcbd22,#7f7f7f
fontName = DejaVu Sans
fontSize = 10
fontBold = False
fontItalic = False
"""


def local_time_zone() -> str:
    """The host's time zone name (for the graph's time axis), or UTC."""
    try:
        name = Path("/etc/timezone").read_text().strip()
    except OSError:
        name = ""
    if not name:
        try:
            name = os.readlink("/etc/localtime").split("zoneinfo/", 1)[1]
        except (OSError, IndexError):
            name = "UTC"
    return name


def http_get(url: str, timeout: float = 30.0) -> Tuple[int, str, bytes]:
    """GET ``url``: (status, content type, body), errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


class GraphiteWeb:
    """Debian's graphite-web under Django's development server, on 127.0.0.1 only."""

    def __init__(self, folder: Path, carbon: CarbonCache, port: Optional[int] = None,
                 time_zone: Optional[str] = None):
        self.folder = Path(folder).resolve()
        self.carbon = carbon
        self.port = port or free_port()
        self.time_zone = time_zone or local_time_zone()
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "graphite-web.out"

    def _environment(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO"))}
        env.update(PYTHONPATH=str(self.folder), DJANGO_SETTINGS_MODULE="graphite.settings",
                   GRAPHITE_SETTINGS_MODULE="throwaway_graphite_settings",
                   PYTHONDONTWRITEBYTECODE="1")
        return env

    def _configure(self) -> None:
        (self.folder / "log").mkdir(parents=True, exist_ok=True)
        # graphite-web looks for the whisper directory once, when it starts
        self.carbon.whisper_dir.mkdir(parents=True, exist_ok=True)
        secret_file = self.folder / "secret_key"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(40))
            secret_file.chmod(0o600)
        (self.folder / "throwaway_graphite_settings.py").write_text(WEB_SETTINGS.format(
            secret=secret_file.read_text().strip(), time_zone=self.time_zone,
            folder=str(self.folder), whisper=str(self.carbon.whisper_dir) + "/",
            log_dir=str(self.folder / "log"), index=str(self.folder / "index"),
            static=GRAPHITE_STATIC, query_port=self.carbon.query_port,
            database=str(self.folder / "graphite.db")))
        (self.folder / "graphTemplates.conf").write_text(GRAPH_TEMPLATES)

    def _django(self, *args: str) -> List[str]:
        return [SYSTEM_PYTHON, "-m", "django", *args]

    def start(self, timeout: float = 60.0) -> GraphiteWeb:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._configure()
        env = self._environment()
        with open(self.log, "ab") as out:
            if not (self.folder / "graphite.db").exists():  # sessions, users, tags: once per folder
                done = subprocess.run(self._django("migrate", "--run-syncdb", "--noinput",
                                                   "--verbosity", "0"),
                                      stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=self.folder,
                                      start_new_session=True, timeout=timeout)
                if done.returncode != 0:
                    (self.folder / "graphite.db").unlink(missing_ok=True)
                    raise RuntimeError(f"graphite-web's database migration failed:\n"
                                       f"{log_tail(self.log)}")
            self.process = subprocess.Popen(
                self._django("runserver", "--noreload", f"127.0.0.1:{self.port}"),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.folder, start_new_session=True)
        wait_started(self, "graphite-web", self._answers, self.log, timeout)
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/version/", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def get(self, url: str, timeout: float = 30.0) -> Tuple[int, str, bytes]:
        """GET a URL (absolute, or relative to this server): (status, content type, body)."""
        return http_get(self.url + url if url.startswith("/") else url, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)
        self.process = None


def graph_url(base: str, prefix: str, minutes: int = 10, fmt: Optional[str] = None,
              start: Optional[int] = None, end: Optional[int] = None,
              services: int = 5, width: int = 900, height: int = 450) -> str:
    """The render-API URL of the latency graph: mean, p99 and the ``services`` worst services' p99.

    The per-service target matches nothing (and draws nothing) while no service series
    exist. ``start``/``end`` (epoch seconds) replace the default window of the last
    ``minutes``.
    """
    service_node = len(prefix.split(".")) + 1  # <prefix>.service.<name>.p99
    params = [  # drawn in this order: the host's lines over the services' dashed ones
        ("target", f"aliasByNode(dashed(highestMax({prefix}.service.*.p99,{services})),"
                   f"{service_node},{service_node + 1})"),
        ("target", f"color(alias({prefix}.p99,'p99'),'d62728')"),
        ("target", f"color(alias({prefix}.mean,'mean'),'1f77b4')"),
        ("from", str(start) if start is not None else f"-{minutes}min"),
    ]
    if end is not None:
        params.append(("until", str(end)))
    if fmt:
        params.append(("format", fmt))
    else:
        params += [("title", f"run-queue latency of {prefix.split('.')[0]} (µs, log scale)"),
                   ("logBase", "10"), ("width", str(width)), ("height", str(height)),
                   ("lineWidth", "2"), ("hideLegend", "false"),
                   ("lineMode", "connected")]  # at frequency 5 there are 4 nulls between points
    return f"{base}/render?" + urlencode(params, safe="(),*'")


class LocalGraphite:
    """A throwaway carbon-cache with a graphite-web beside it, reading its whisper files."""

    def __init__(self, folder: Path, port: Optional[int] = None, web_port: Optional[int] = None,
                 time_zone: Optional[str] = None, **carbon_options):
        self.folder = Path(folder).resolve()
        self.carbon = CarbonCache(self.folder, port, **carbon_options)
        self.web = GraphiteWeb(self.folder / "web", self.carbon, web_port, time_zone)

    def start(self) -> LocalGraphite:
        self.carbon.start()
        try:
            self.web.start()
        except BaseException:
            self.carbon.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.web.stop()
        finally:
            self.carbon.stop()

    def graph_url(self, prefix: str, **kwargs) -> str:
        return graph_url(self.web.url, prefix, **kwargs)

    def __enter__(self) -> LocalGraphite:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the command line -------------------------------------------------------------------------

def say(message: str) -> None:
    print(f"local_carbon: {message}", file=sys.stderr, flush=True)


def prefix_of(command: Sequence[str]) -> str:
    """The metric prefix the agent command will use: its --prefix, else the agent's default."""
    for i, arg in enumerate(command):
        if arg == "--prefix" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--prefix="):
            return arg.split("=", 1)[1]
    try:
        from gsender_bcc.metrics import default_prefix
        return default_prefix()
    except ImportError:
        return "*.cpu-lat"


def pick_web_port(wanted: int) -> int:
    """``wanted`` if it is free (0: any), else a free port."""
    if wanted and port_free(wanted):
        return wanted
    if wanted:
        say(f"127.0.0.1:{wanted} is taken; graphite-web takes another port")
    return free_port()


def wait_child(child: subprocess.Popen) -> int:
    """Wait for ``child``, passing Ctrl-C on to it (it may have missed the terminal's); return its
    exit status as a shell reports it (128 + the signal that ended it)."""
    while True:
        try:
            code = child.wait()
            return 128 - code if code < 0 else code
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)


def storage_rules(printed: Path) -> Dict[str, str]:
    """carbon-cache's storage files from what `gsender-bcc --carbon-config` printed into
    ``printed``, each followed by this script's catch-all stanza for every other series."""
    from gsender_bcc.carbon_storage import split_rendered
    schemas, aggregation = split_rendered(printed.read_text())
    return {"schemas": f"{schemas}\n{SCHEMAS}", "aggregation": f"{aggregation}\n{AGGREGATION}"}


def run_beside(folder: Path, port: int, command: List[str],
               web_port: int = DEFAULT_WEB_PORT, storage: Optional[Path] = None) -> int:
    """Run ``command`` with a local carbon-cache and graphite-web, unless Graphite is there.

    ``storage``: a file holding `gsender-bcc --carbon-config`'s output, for carbon-cache's
    storage rules. Ctrl-C goes to the command; so does a SIGTERM sent to this process. Either
    way carbon-cache and graphite-web (in sessions of their own) are stopped once the command
    has ended.
    """
    if listening(port):
        say(f"something already listens on 127.0.0.1:{port}; using it (no graphite-web started)")
        return subprocess.call(command)
    graphite = LocalGraphite(folder, port, pick_web_port(web_port),
                             **(storage_rules(storage) if storage else {}))
    agent: Optional[subprocess.Popen] = None

    def on_sigterm(signum, _frame):
        if agent is None:
            raise SystemExit(128 + signum)  # still starting: stop what has started, and leave
        agent.send_signal(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        graphite.carbon.start()
        say(f"started carbon-cache on 127.0.0.1:{port}, whisper files in "
            f"{graphite.carbon.whisper_dir}")
        try:
            graphite.web.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            say(f"graphite-web did not start, so no graph (the agent runs anyway): {error}")
        else:
            say(f"started graphite-web on {graphite.web.url}")
            say(f"latency graph (reload to refresh): {graphite.graph_url(prefix_of(command))}")
        agent = subprocess.Popen(command)
        return wait_child(agent)
    finally:
        graphite.stop()
        say("stopped graphite-web and carbon-cache")


def busy_loops(count: int) -> List[subprocess.Popen]:
    """Spinners at the lowest priority until killed: they wait for the CPUs, and for each other."""
    return [subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])
            for _ in range(count)]


def record(png: Path, command: List[str], seconds: float, busy_from: float, busy_for: float,
           prefix: Optional[str] = None) -> int:
    """Run ``command`` against a throwaway Graphite for ``seconds``; render its graph to ``png``."""
    folder = Path("build/graph-run").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    prefix = prefix or prefix_of(command)
    with LocalGraphite(folder, time_zone="UTC") as graphite:
        command = [arg.replace("{port}", str(graphite.carbon.port)) for arg in command]
        start = int(time.time())
        agent = subprocess.Popen(command, start_new_session=True)
        spinners: List[subprocess.Popen] = []
        try:
            while time.time() < start + seconds:
                if agent.poll() is not None:
                    say(f"the command ended early with {agent.returncode}")
                    return 1
                elapsed = time.time() - start
                if not spinners and busy_from <= elapsed < busy_from + busy_for:
                    spinners = busy_loops(2 * (os.cpu_count() or 1))
                    say(f"{len(spinners)} busy loops for {busy_for:.0f} s")
                elif spinners and elapsed >= busy_from + busy_for:
                    for spinner in spinners:
                        stop_process(spinner, 5)
                    spinners = []
                time.sleep(0.2)
        finally:
            for spinner in spinners:
                stop_process(spinner, 5)
            agent.send_signal(signal.SIGINT)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        end = int(time.time())
        time.sleep(2)  # the last interval reaches the whisper files
        status, _, body = graphite.web.get(graphite.graph_url(prefix, fmt="json", start=start,
                                                              end=end))
        means = [v for s in json.loads(body) if s["target"] == "mean" for v, _ in s["datapoints"]
                 if v is not None] if status == 200 else []
        if len(means) < seconds / 10:
            say(f"too little data to draw (status {status}, {len(means)} means)")
            return 1
        status, kind, body = graphite.web.get(graphite.graph_url(prefix, start=start, end=end))
        if status != 200 or not body.startswith(b"\x89PNG"):
            say(f"graphite-web answered {status} {kind}: {body[:300]!r}")
            return 1
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(body)
        say(f"wrote {png} ({len(body)} bytes): {len(means)} intervals of {prefix}")
    return 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if "--" not in argv:
        sys.exit("usage: local_carbon.py run FOLDER PORT [--web-port N] [--carbon-config FILE] "
                 "-- COMMAND...\n"
                 "       local_carbon.py record PNG [--seconds N] [--busy-from S] [--busy-for N] "
                 "[--prefix P] -- COMMAND...")
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(prog="local_carbon.py")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run")
    run.add_argument("folder", type=Path)
    run.add_argument("port", type=int)
    run.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT,
                     help="graphite-web's port (another if taken; 0: any)")
    run.add_argument("--carbon-config", type=Path, metavar="FILE",
                     help="carbon's storage rules from what `gsender-bcc --carbon-config` printed")
    rec = sub.add_parser("record")
    rec.add_argument("png", type=Path)
    rec.add_argument("--seconds", type=float, default=150)
    rec.add_argument("--busy-from", type=float, default=60)
    rec.add_argument("--busy-for", type=float, default=40)
    rec.add_argument("--prefix")
    args = parser.parse_args(own)
    if not command:
        parser.error("no COMMAND after --")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.action == "run":
        return run_beside(args.folder, args.port, command, args.web_port, args.carbon_config)
    return record(args.png, command, args.seconds, args.busy_from, args.busy_for, args.prefix)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
