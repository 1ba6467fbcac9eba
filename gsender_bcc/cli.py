"""The gsender-bcc command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import List, Optional

from . import __version__
from .errors import AgentError

EX_USAGE = 64
log = logging.getLogger("gsender_bcc")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EX_USAGE, f"{self.prog}: {message} (see --help)\n")


def _frequency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..3600 seconds")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gsender-bcc",
                     description="Measure CPU run-queue latency with BPF and send it to Graphite.")
    parser.add_argument("--frequency", type=_frequency, default=15, metavar="SECONDS",
                        help="interval length; timestamps are multiples of it (default 15)")
    parser.add_argument("--prefix", help="metric path prefix (default <short hostname>.cpu-lat)")
    parser.add_argument("--graphite-host", default="localhost", help="default localhost")
    parser.add_argument("--graphite-port", type=_port, default=2003, help="default 2003")
    parser.add_argument("--protocol", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("--stdout", action="store_true",
                        help="print Graphite plaintext lines instead of sending them")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--once", action="store_true", help="deliver one interval, then exit")
    action.add_argument("--check", action="store_true",
                        help="load, attach, read once, detach, and report")
    action.add_argument("--dump-bpf", action="store_true",
                        help="print the C source that would be compiled, with its flags")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, stream=sys.stderr, format=stamp + "%(levelname)s %(message)s")


def _check(probe) -> str:
    first = probe.read_snapshot()
    time.sleep(0.25)
    counted = probe.read_snapshot().count - first.count
    return (f"OK: BPF program attached to sched:sched_wakeup, sched:sched_wakeup_new and "
            f"sched:sched_switch; {counted} samples in 0.25s; detached")


def run(args: argparse.Namespace) -> int:
    from . import metrics, probe, sink, tracefs
    from .daemon import Daemon

    if args.dump_bpf:
        sys.stdout.write(probe.render_source(probe.compile_settings(tracefs.tracefs_root())))
        return 0
    try:
        prefix = metrics.check_prefix(args.prefix) if args.prefix else metrics.default_prefix()
    except ValueError as error:
        raise AgentError(f"--prefix: {error}", EX_USAGE) from None
    with probe.Probe() as attached:
        if args.check:
            print(_check(attached))
            return 0
        out = sink.StdoutSink() if args.stdout else sink.GraphiteSink(
            args.graphite_host, args.graphite_port, args.protocol)
        log.info("attached; sending %s.* every %ds to %s", prefix, args.frequency,
                 "stdout" if args.stdout else f"{args.graphite_host}:{args.graphite_port}")
        try:
            return Daemon(attached, out, prefix, args.frequency).run(once=args.once)
        finally:
            out.close()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return run(args)
    except AgentError as error:
        print(f"gsender-bcc: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
