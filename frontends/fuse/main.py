"""``sheepfs [OPTION]... MOUNTPOINT``: command line, daemon, logging, the event loop.

Daemonizing happens before any thread exists: the parent forks, the child mounts and then
reports success (or the error) through a pipe, so the parent returns only once the mount
is in place, with exit status 0 or 1, as fuse_main(3) does for the original.  SIGTERM,
SIGINT and SIGHUP end the loop and unmount; ``fusermount3 -u MOUNTPOINT`` ends it too.
Mounted VDIs are released (their locks dropped) on the way out.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
from dataclasses import dataclass

from dog.common import c_strtol, resolve_host
from dog.getopt import Getopt, GetoptError, LongOpt

PROGRAM = "sheepfs"

HELP = """\
Usage: sheepfs [OPTION]... MOUNTPOINT
Options:
  -a, --address           specify the sheep address (default: 127.0.0.1)
  -d, --debug             enable debug output (implies -f)
  -f, --foreground        sheepfs run in the foreground
  -k, --pagecache         use local kernel's page cache to access volume
  -o, --objectcache       enable object cache of the connected sheep daemon
  -p, --port              specify the sheep port (default: 7000)
  -h, --help              display this help and exit
"""
TRY_HELP = "Try 'sheepfs --help' for help."

SHORT = {"a": True, "d": False, "f": False, "k": False, "o": False, "p": True, "h": False}
LONG = [LongOpt("address", "a", True), LongOpt("debug", "d", False),
        LongOpt("foreground", "f", False), LongOpt("pagecache", "k", False),
        LongOpt("objectcache", "o", False), LongOpt("port", "p", True),
        LongOpt("help", "h", False),
        # extension, deliberately absent from the verbatim --help (see sheepfs(8))
        LongOpt("log", "log", True)]

log = logging.getLogger("sheepfs")


class UsageExit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 7000
    debug: bool = False
    foreground: bool = False
    page_cache: bool = False
    object_cache: bool = False
    log_file: str | None = None
    mountpoint: str = ""


def parse_args(argv: list[str]) -> Options:
    """The original's getopt loop; UsageExit carries the exit status and message."""
    o = Options()
    parser = Getopt(argv, SHORT, LONG, PROGRAM)
    try:
        for key, arg in parser:
            if key == "a":
                o.host = arg or ""
            elif key == "d":
                o.debug = o.foreground = True
            elif key == "f":
                o.foreground = True
            elif key == "k":
                o.page_cache = True
            elif key == "o":
                o.object_cache = True
            elif key == "p":
                value, used = c_strtol(arg or "")
                if not used or not 1 <= value <= 65535:
                    raise UsageExit(1, f"Invalid port number '{arg}'")
                o.port = value
            elif key == "h":
                raise UsageExit(0)
            elif key == "log":
                o.log_file = arg
    except GetoptError as e:
        raise UsageExit(1, f"{e}\n{TRY_HELP}") from None
    if not parser.operands:
        raise UsageExit(1, TRY_HELP)
    o.mountpoint = parser.operands[0]
    return o


# ---------------------------------------------------------------- logging


class _SyslogHandler(logging.Handler):
    """syslog(3) as the original daemon logs (ident sheepfs, LOG_DAEMON); never fails."""

    def __init__(self) -> None:
        super().__init__()
        import syslog
        self._syslog = syslog
        syslog.openlog(PROGRAM, syslog.LOG_PID | syslog.LOG_CONS, syslog.LOG_DAEMON)

    def emit(self, record: logging.LogRecord) -> None:
        s = self._syslog
        prio = {logging.DEBUG: s.LOG_DEBUG, logging.INFO: s.LOG_INFO,
                logging.WARNING: s.LOG_WARNING}.get(record.levelno, s.LOG_ERR)
        try:
            s.syslog(prio, self.format(record))
        except Exception:  # noqa: BLE001
            pass


def setup_logging(o: Options, stderr) -> None:
    if o.log_file:
        handler: logging.Handler = logging.FileHandler(o.log_file)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s sheepfs[%(process)d] %(levelname)s %(message)s"))
    elif o.foreground:
        handler = logging.StreamHandler(stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        handler = _SyslogHandler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if o.debug else logging.INFO)
    if not o.debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


# ---------------------------------------------------------------- running


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def check(o: Options) -> str:
    """Checks made before mounting; returns the absolute mount point."""
    if resolve_host(o.host) is None:
        raise UsageExit(1, f"Invalid ip address {o.host}")
    mountpoint = os.path.abspath(o.mountpoint)
    if not os.path.isdir(mountpoint):
        raise UsageExit(1, f"cannot mount on {o.mountpoint}: not a directory")
    if o.log_file:
        o.log_file = os.path.abspath(o.log_file)
        # writing the log from the event loop thread into our own mount would deadlock
        if _inside(o.log_file, mountpoint):
            raise UsageExit(1, f"the log file {o.log_file} must not be inside the mount point")
    return mountpoint


def _preload() -> None:
    """Import everything a request may need now: nothing is imported lazily later (an
    import that looked into the mount point from the event loop thread would hang)."""
    import encodings.idna  # noqa: F401  (getaddrinfo of a host name)
    import logging.handlers  # noqa: F401

    from . import fs, render  # noqa: F401
    render.install_capture()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
READ_AHEAD_KB = 1024  # one request's worth (libfuse's 1 MiB max_read/max_write)


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def tune_readahead(mountpoint: str) -> None:
    """Page cache mode: let the kernel read ahead 1 MiB per request instead of 128 KiB.

    The mount's backing device is found in /proc/self/mountinfo and its readahead set in
    /sys/class/bdi (root only; otherwise the default stays).  Neither touches the mount.
    Must run after FUSE_INIT was answered, which sets the readahead too.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            devs = [fields[2] for fields in (line.split() for line in f)
                    if len(fields) > 4 and _unescape(fields[4]) == mountpoint]
        if not devs:
            return
        with open(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
        log.debug("readahead of %s (bdi %s): %d KiB", mountpoint, devs[-1], READ_AHEAD_KB)
    except OSError as e:
        log.debug("readahead left as it is: %s", e)


def serve(o: Options, mountpoint: str, notify=None) -> int:
    """Mount, (tell the waiting parent,) run the loop until unmounted or signalled."""
    import pyfuse3
    import trio

    from .fs import SheepFs
    from .volume import Settings

    settings = Settings(host=o.host, port=o.port, page_cache=o.page_cache,
                        object_cache=o.object_cache)
    ops = SheepFs(settings)
    options = {"fsname=sheepfs", "subtype=sheepfs", "default_permissions"}
    if o.debug:
        options.add("debug")
    early: list[int] = []  # a signal before the loop runs must still unmount cleanly
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda n, _f: early.append(n))
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        msg = f"failed to mount {mountpoint}: {e}"
        if notify:
            notify(msg)
        else:
            sys.stderr.write(msg + "\n")
        return 1
    if notify:
        notify(None)
    log.info("sheepfs daemon started (pid %d) on %s, sheep %s:%d", os.getpid(), mountpoint,
             o.host, o.port)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            nursery.start_soon(_after_init)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _after_init() -> None:
        # the kernel sets the readahead from FUSE_INIT's reply: only change it afterwards
        await ops.initialized.wait()
        await trio.to_thread.run_sync(tune_readahead, mountpoint)

    async def _watch_signals(scope) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as sigs:
            signum = early[0] if early else None
            if signum is None:
                async for signum in sigs:
                    break
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            await trio.sleep(10)  # requests still running get this long to finish
            scope.cancel()

    ret = 0
    failure: BaseException | None = None
    try:
        trio.run(main)
    except BaseException as e:  # noqa: BLE001
        failure, ret = e, 1
    finally:
        pyfuse3.close(unmount=True)  # closes /dev/fuse first: never waits on ourselves
        if failure is not None:  # (a traceback reads files: only once unmounted)
            log.error("event loop failed", exc_info=failure)
        ops.volumes.close_all_blocking()
        log.info("sheepfs daemon exited %d (largest read %d bytes, largest write %d bytes)",
                 ret, ops.max_read, ops.max_write)
    return ret


def _daemonize(o: Options, mountpoint: str) -> int:
    """fork; the parent waits for the child's word that the mount is up."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        chunks = []
        while True:
            b = os.read(rfd, 4096)
            if not b:
                break
            chunks.append(b)
        msg = b"".join(chunks).decode(errors="replace")
        if msg == "ok":
            return 0
        sys.stderr.write((msg or "sheepfs: the daemon exited before mounting") + "\n")
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        return 1
    os.close(rfd)
    os.setsid()
    code = 1
    told = False
    try:
        setup_logging(o, None)

        def notify(error: str | None) -> None:
            nonlocal told
            told = True
            if error is None:  # detach first: the parent returns as soon as it reads "ok"
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(null)
                os.chdir("/")
            os.write(wfd, b"ok" if error is None else error.encode())
            os.close(wfd)

        code = serve(o, mountpoint, notify)
    except BaseException as e:  # noqa: BLE001
        if not told:
            os.write(wfd, f"sheepfs: {type(e).__name__}: {e}".encode())
        log.exception("sheepfs failed")
    finally:
        logging.shutdown()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(argv)
        mountpoint = check(o)
    except UsageExit as e:
        if e.code == 0:
            sys.stdout.write(HELP)
        else:
            sys.stderr.write(e.message + "\n")
        return e.code
    _preload()
    if not o.foreground:
        return _daemonize(o, mountpoint)
    setup_logging(o, sys.__stderr__)
    return serve(o, mountpoint)


def console() -> None:  # the console script
    sys.exit(main())


__all__ = ["HELP", "Options", "main", "parse_args"]
