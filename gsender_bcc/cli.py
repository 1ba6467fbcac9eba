"""The gsender-bcc command line: flags and /etc/gsender.conf become a Config, then a Daemon."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__, config as configuration
from .errors import AgentError

EX_USAGE = 64
log = logging.getLogger("gsender_bcc")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EX_USAGE, f"{self.prog}: {message} (see --help)\n")


def _from_config_parser(key: str, section: str = "default"):
    """Use the config file's parser for a flag, so both accept and refuse the same values."""
    convert = configuration.SCHEMA[section][key][1]

    def parse(text: str):
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} {error}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gsender-bcc",
                     description="Measure CPU run-queue latency with BPF and send it to Graphite. "
                                 "Flags override the configuration file.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"configuration file (default {configuration.DEFAULT_PATH}; "
                             f"built-in defaults if that is missing)")
    parser.add_argument("--frequency", metavar="SECONDS",
                        type=_from_config_parser("frequency"),
                        help="interval length; timestamps are multiples of it (default 15)")
    parser.add_argument("--prefix", type=_from_config_parser("prefix"),
                        help="metric path prefix (default <short hostname>.cpu-lat)")
    parser.add_argument("--graphite-host", type=_from_config_parser("server_address", "graphite"),
                        help="Graphite server (default localhost)")
    parser.add_argument("--graphite-port", type=_from_config_parser("port", "graphite"),
                        help="Graphite plaintext port (default 2003)")
    parser.add_argument("--protocol", choices=("tcp", "udp"))
    parser.add_argument("--state-directory", type=_from_config_parser("state_directory"),
                        metavar="DIR", help="where undelivered data is spooled at stop "
                                            "(default /var/lib/gsender-bcc)")
    parser.add_argument("--log-level", choices=configuration.LEVELS, type=str.upper)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--stdout", action="store_true",
                        help="print Graphite plaintext lines instead of sending them")
    output.add_argument("--echo", action="store_true",
                        help="print Graphite plaintext lines as well as sending them")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--once", action="store_true", help="deliver one interval, then exit")
    action.add_argument("--check", action="store_true",
                        help="load, attach, read once, detach, and report")
    action.add_argument("--check-config", action="store_true",
                        help="validate the configuration and print the effective settings")
    action.add_argument("--dump-bpf", action="store_true",
                        help="print the C source that would be compiled, with its flags")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def effective_config(args: argparse.Namespace) -> configuration.Config:
    """Read the configuration file, then apply the flags over it."""
    loaded = configuration.load(args.config or configuration.DEFAULT_PATH,
                                required=args.config is not None)
    server = None
    if args.graphite_host or args.graphite_port:
        server = configuration.Server(args.graphite_host or loaded.server.host,
                                      args.graphite_port or loaded.server.port)
    return configuration.with_overrides(
        loaded, frequency=args.frequency, prefix=args.prefix, server=server,
        protocol=args.protocol, state_directory=args.state_directory,
        logging_level=args.log_level)


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, stream=sys.stderr, format=stamp + "%(levelname)s %(message)s")


def _check(probe) -> str:
    first = probe.read_snapshot()
    time.sleep(0.25)
    counted = probe.read_snapshot().count - first.count
    return (f"OK: BPF program attached to the {probe.settings.kind} sched_wakeup, "
            f"sched_wakeup_new and sched_switch; {counted} samples in 0.25s; detached")


def _prefix_for(config: configuration.Config) -> str:
    from .metrics import default_prefix
    return config.prefix or default_prefix()


def _make_sink(args, config: configuration.Config):
    from . import sink
    if args.stdout:
        return sink.StdoutSink()
    return sink.GraphiteSink(config.servers, config.protocol, config.timeout,
                             config.buffer_intervals, spool_dir=config.state_directory,
                             echo=sys.stdout if args.echo else None,
                             backoff_max=_backoff_max(config))


def _backoff_max(config: configuration.Config) -> float:
    """Retry a failed server at least once an interval, and at least once a minute."""
    from .sink import BACKOFF_MAX
    return min(float(config.frequency), BACKOFF_MAX)


def run(args: argparse.Namespace) -> int:
    config = effective_config(args)
    _setup_logging(config.logging_level)
    for notice in config.notices:
        log.info("%s", notice)
    if args.check_config:
        sys.stdout.write(configuration.render(config))
        return 0

    from . import probe
    from .daemon import HANDLED_SIGNALS, Daemon
    from .notify import Notifier

    if args.dump_bpf:
        sys.stdout.write(probe.render_source(probe.compile_settings()))
        return 0
    notifier = Notifier()
    # Block the signals the daemon waits for before any thread starts, so none of them
    # is delivered to a thread (the delivery thread included) with the default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    with probe.Probe() as attached:
        if args.check:
            print(_check(attached))
            return 0
        out = _make_sink(args, config)

        def apply(new: configuration.Config) -> None:
            logging.getLogger().setLevel(new.logging_level)
            if hasattr(out, "reconfigure"):
                out.reconfigure(new.servers, new.protocol, new.timeout, new.buffer_intervals,
                                spool_dir=new.state_directory, backoff_max=_backoff_max(new))

        log.info("attached; sending %s.* every %ds to %s", _prefix_for(config), config.frequency,
                 "stdout" if args.stdout else ", ".join(map(str, config.servers)))
        daemon = Daemon(attached, out, config, _prefix_for, reload=lambda: effective_config(args),
                        apply=apply, notifier=notifier)
        try:
            return daemon.run(once=args.once)
        finally:
            out.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except AgentError as error:
        for line in str(error).splitlines():
            print(f"gsender-bcc: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
