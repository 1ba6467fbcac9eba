"""The gsender-bcc command line: flags and /etc/gsender.conf become a Config, then a Daemon."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__, carbon_storage, config as configuration
from .errors import EX_USAGE, AgentError

log = logging.getLogger("gsender_bcc")
CHECK_SECONDS = 1.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(EX_USAGE, f"{self.prog}: {message} (see --help)\n")


def _from_config_parser(setting: configuration.Setting):
    """Use the config file's parser for a flag, so both accept and refuse the same values."""
    def parse(text: str):
        try:
            return setting.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} {error}") from None
    return parse


def _flag_help(setting: configuration.Setting) -> Optional[str]:
    shown = f"default {configuration.show(setting.default)}"
    return setting.flag.help.replace("{default}", shown) if setting.flag.help else None


def build_parser(cls: type = configuration.Config) -> argparse.ArgumentParser:
    """The command line: --config, a flag for each setting that declares one, and the actions."""
    parser = _Parser(prog="gsender-bcc",
                     description="Measure CPU run-queue latency with BPF and send it to Graphite. "
                                 "Flags override the configuration file.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"configuration file (default {configuration.DEFAULT_PATH}; "
                             f"built-in defaults if that is missing)")
    for setting in configuration.settings_of(cls):
        if setting.flag is None:
            continue
        how = (dict(action="store_const", const=True) if setting.is_switch else
               dict(type=_from_config_parser(setting), metavar=setting.flag.metavar))
        parser.add_argument(setting.flag.name, dest=setting.key, help=_flag_help(setting), **how)
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
    action.add_argument("--carbon-config", action="store_true",
                        help="print carbon's storage-schemas.conf and storage-aggregation.conf "
                             "stanzas that fit these settings")
    action.add_argument("--dump-bpf", action="store_true",
                        help="print the C source that would be compiled, with its flags and include tree")
    action.add_argument("--top", action="store_true",
                        help="show run-queue latency live on this terminal (sends nothing)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def effective_config(args: argparse.Namespace,
                     cls: type = configuration.Config) -> configuration.Config:
    """Read the configuration file, then apply the flags over it."""
    loaded = configuration.load(args.config or configuration.DEFAULT_PATH,
                                required=args.config is not None, cls=cls)
    return configuration.with_overrides(loaded, **{
        setting.key: getattr(args, setting.key)
        for setting in configuration.settings_of(cls) if setting.flag})


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line; elsewhere we do.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, stream=sys.stderr, format=stamp + "%(levelname)s %(message)s")


def warn_about_local_schema(config: configuration.Config,
                            read: Callable[[str], str] = lambda path: Path(path).read_text()) -> None:
    """Log one line when this host's carbon and the frequency disagree (see carbon_storage.py)."""
    warning = carbon_storage.local_schema_warning(config, read)
    if warning:
        log.warning("%s", warning)


def _check(attached) -> str:
    from .daemon import SystemClock
    from .sampler import Sampler, cgroup_tree
    sampler = Sampler(attached, cgroup_tree(attached), SystemClock())
    sampler.start()
    time.sleep(CHECK_SECONDS)
    host, services = sampler.sample()
    breakdown = "per-service breakdown off" if services is None else \
        f"{len(services)} services seen"
    names = attached.settings.tracepoints
    where = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    return (f"OK: BPF program attached to the {attached.settings.kind} {where}; "
            f"{host.count} samples in {CHECK_SECONDS:g}s; {breakdown}; detached")


def _make_sink(args, config: configuration.Config):
    from . import sink
    if args.stdout:
        return sink.StdoutSink(config)
    return sink.GraphiteSink(config, echo=sys.stdout if args.echo else None)


def run(args: argparse.Namespace) -> int:
    config = effective_config(args)
    _setup_logging(config.logging_level)
    for notice in config.notices:
        log.info("%s", notice)
    if args.check_config:
        sys.stdout.write(configuration.render(config))
        return 0
    if args.carbon_config:
        sys.stdout.write(carbon_storage.render(config))
        return 0
    if args.check:
        warn_about_local_schema(config)

    from . import probe, program
    from .daemon import HANDLED_SIGNALS, Daemon, freeze_startup_heap
    from .notify import notifier_from_environment

    if args.dump_bpf:
        sys.stdout.write(program.render_source(program.compile_settings(config)))
        return 0
    if args.top:
        from . import top
        # The view refreshes every second unless --frequency says otherwise; the
        # configuration file's frequency is the service's interval, not the view's.
        return top.run(config, period=args.frequency or 1)
    notifier = notifier_from_environment()
    # Block the signals the daemon waits for before any thread starts, so none of them
    # is delivered to a thread (the delivery thread included) with the default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    with probe.Probe(config) as attached:
        if args.check:
            print(_check(attached))
            return 0
        out = _make_sink(args, config)
        log.info("attached; sending %s.* every %ds to %s", config.metric_prefix,
                 config.frequency, "stdout" if args.stdout else
                 ", ".join(map(str, config.servers)))
        from .sampler import cgroup_tree
        daemon = Daemon(attached, out, config, reload=lambda: effective_config(args),
                        notifier=notifier, cgroup_tree=cgroup_tree(attached),
                        keep_unfinished=not args.stdout)
        freeze_startup_heap()
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
