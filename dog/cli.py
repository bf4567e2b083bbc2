"""`dog` entry point: command lookup, option parsing and dispatch (dog/dog.c ``main``).

click provides the console-script plumbing and the test runner, but the command line itself
is parsed by dog.getopt, because dog must behave exactly like the C tool's glibc getopt_long
(see that module).  Each command group lives in its own module exposing ``Options`` (a
dataclass of its private options), ``parse_option(opts, key, optarg)`` and ``HANDLERS``
(subcommand name -> function(ctx, operands) -> exit code).  A subcommand without a handler
exists (help, options) but reports "not implemented yet".
"""
from __future__ import annotations

import os
import signal
import sys
import time
from types import ModuleType

import click

from sheep.client.sync import SheepConnectionError

from . import benchmark, cluster, node, upgrade, vdi
from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context, DogExit, err, is_numeric, out,
    report_conn_error, resolve_host,
)
from .getopt import Getopt, GetoptError, LongOpt
from .helptext import (
    NEED_ARG, NEED_NODELIST, PROGRAM, command_list, find_command, find_sub, sub_options, top_usage,
)

GROUPS: dict[str, ModuleType] = {
    "vdi": vdi, "node": node, "cluster": cluster, "upgrade": upgrade, "benchmark": benchmark,
}

# Extension: listings that also accept ``--format json`` (default ``text``, the original output).
# The option is long-only and deliberately absent from the verbatim --help texts.
JSON_SUBCOMMANDS = {("vdi", "list"), ("node", "list"), ("node", "info"), ("cluster", "info")}

TRY_HELP = f"Try '{PROGRAM} --help' for more information."


def _log_operation(argv0: str, argv: list[str]) -> None:
    """SHEEPDOG_DOG_LOG: log the command line to syslog or SHEEPDOG_DOG_LOG_PATH."""
    if os.environ.get("SHEEPDOG_DOG_LOG") is None:
        return
    msg = "".join(" " + a for a in [argv0, *argv])
    path = os.environ.get("SHEEPDOG_DOG_LOG_PATH")
    if path is None:
        try:
            import syslog
            syslog.openlog("sheepdog admin operation", syslog.LOG_PID, syslog.LOG_USER)
            syslog.syslog(syslog.LOG_INFO, msg)
            syslog.closelog()
        except (ImportError, OSError):
            pass
        return
    tm = time.localtime()
    stamp = time.strftime("%Y %b ", tm) + f"{tm.tm_mday:2d}" + time.strftime(" %H:%M:%S ", tm)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:
        sys.stderr.write(f"error at opening log file of dog({path}): {e.strerror}\n")
        return
    try:
        os.write(fd, f"{stamp}: {msg}\n".encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _valid_port(text: str) -> int | None:
    if not is_numeric(text) or not 1 <= int(text) <= 65535:
        return None
    return int(text)


def run(argv: list[str], argv0: str = PROGRAM) -> int:
    """Run one dog command line (``argv`` without the program name); returns the exit code."""
    start = time.monotonic()
    _log_operation(argv0, argv)
    if not argv:
        out(top_usage())
        return EXIT_SUCCESS
    cmd = find_command(argv[0])
    if cmd is None:
        if argv[0] not in ("help", "--help", "-h"):
            err(f"Invalid command '{argv[0]}'")
            err(TRY_HELP)
            return EXIT_USAGE
        out(top_usage())
        return EXIT_SUCCESS
    subname = argv[1] if len(argv) > 1 else None
    sub = find_sub(cmd, subname)
    if sub is None:
        if subname is not None and subname not in ("help", "--help", "-h"):
            err(f"Invalid command '{cmd.name} {subname}'")
        sys.stderr.write(command_list(cmd))
        return EXIT_USAGE

    group = GROUPS[cmd.name]
    ctx = Context(cmd, sub, group.Options())
    try:
        return _run_sub(ctx, group, argv[2:], start)
    finally:
        ctx.close()


def _run_sub(ctx: Context, group: ModuleType, args: list[str], start: float) -> int:
    cmd, sub = ctx.cmd, ctx.sub
    env = os.environ.get("SHEEPDOG_DOG_ADDR")
    if env is not None:
        host = resolve_host(env)
        if host is None:
            err(f"Invalid ip address {env}")
            return EXIT_FAILURE
        ctx.host = host
    env = os.environ.get("SHEEPDOG_DOG_PORT")
    if env is not None:
        port = _valid_port(env)
        if port is None:
            err(f"Invalid port number '{env}'")
            return EXIT_USAGE
        ctx.port = port

    opts = sub_options(cmd, sub)
    longopts = [LongOpt(o.name, o.ch, o.has_arg) for o in opts]
    if (cmd.name, sub.name) in JSON_SUBCOMMANDS:
        longopts.append(LongOpt("format", "format", True))
    parser = Getopt(args, {o.ch: o.has_arg for o in opts}, longopts, PROGRAM)
    try:
        for key, optarg in parser:
            if key == "a":
                host = resolve_host(optarg or "")
                if host is None:
                    err(f"Invalid ip address {optarg}")
                    return EXIT_FAILURE
                ctx.host = host
            elif key == "p":
                port = _valid_port(optarg or "")
                if port is None:
                    err(f"Invalid port number '{optarg}'")
                    return EXIT_USAGE
                ctx.port = port
            elif key == "r":
                ctx.raw = True
            elif key == "v":
                ctx.verbose = True
            elif key == "h":
                out(ctx.usage())
                return EXIT_SUCCESS
            elif key == "T":
                ctx.elapsed = True
            elif key == "format":
                if optarg not in ("text", "json"):
                    err(f"Invalid output format '{optarg}', expected 'text' or 'json'")
                    return EXIT_USAGE
                ctx.json = optarg == "json"
            else:
                group.parse_option(ctx.opts, key, optarg or "")
    except GetoptError as e:
        err(str(e))
        err(TRY_HELP)
        return EXIT_USAGE
    operands = parser.operands

    handler = group.HANDLERS.get(sub.name)
    if handler is None:
        err(f"{cmd.name} {sub.name}: not implemented yet")
        return EXIT_FAILURE
    if sub.flags & NEED_NODELIST:
        ctx.update_node_list()
    if sub.flags & NEED_ARG and not operands:
        out(ctx.usage())
        return EXIT_USAGE
    try:
        ret = handler(ctx, operands)
    except SheepConnectionError as e:
        report_conn_error(e)
        ret = EXIT_SYSFAIL
    if ret == EXIT_USAGE:
        out(ctx.usage())
        return EXIT_USAGE
    if ctx.elapsed:
        out(f"\nElapsed time: {time.monotonic() - start:.3f} seconds\n")
    return ret


def run_safely(argv: list[str], argv0: str = PROGRAM) -> int:
    """``run`` plus the process-level outcomes: exit() from helpers, a closed stdout."""
    try:
        code = run(argv, argv0)
        sys.stdout.flush()
        return code
    except DogExit as e:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            pass
        return e.code
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_SYSFAIL
    except KeyboardInterrupt:
        return 130


class _RawArgsCommand(click.Command):
    """A click command that hands its arguments over untouched (no click parsing at all)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["dog.argv"] = list(args)
        return []


@click.command(cls=_RawArgsCommand, name=PROGRAM, add_help_option=False,
               context_settings={"help_option_names": []})
def main() -> None:
    """Sheepdog administrator utility."""
    ctx = click.get_current_context()
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else PROGRAM
    if sys.stdout is sys.__stdout__ and hasattr(signal, "SIGPIPE"):
        # like the C tool: a reader that goes away (``dog vdi read ... | head``) ends dog quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctx.exit(run_safely(ctx.meta["dog.argv"], argv0))


if __name__ == "__main__":  # pragma: no cover
    main()
