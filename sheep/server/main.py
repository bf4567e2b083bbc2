"""`sheep [OPTION]... [PATH]`: parse the original's command line, daemonize, run the node.

The parent returns only once the daemon holds its store lock, listens, and has joined the
cluster (exit 0), or has failed (exit 1, message on stderr) — so scripts can start three
sheep in a loop and talk to them at once.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
from importlib import import_module
from typing import NoReturn

import trio

from ..proto.constants import SD_LISTEN_PORT, Status
from ..proto.structs import MD_MAX_DISK
from . import logger, md_ops
from .cluster.base import JoinRejected
from .md import DiskError, load_dropped, open_disk, save_dropped
from .node import Node, Options

log = logging.getLogger("sheep")

VERSION = "1.0"
DRIVERS = ("local", "zookeeper", "corosync")

HELP = """Sheepdog daemon (version {version})
Usage: sheep [OPTION]... [PATH] (default: {tmp})
Options:
  -b, --bindaddr          specify IP address of interface to listen on
  -c, --cluster           specify the cluster driver (default: local)
  -D, --directio          use direct IO for backend store
  -f, --foreground        make the program run in foreground
  -g, --gateway           make the program run as a gateway mode
  -h, --help              display this help and exit
  -i, --ioaddr            use separate network card to handle IO requests (default: disabled)
  -j, --journal           use journal file to log all the write operations. (default: disabled)
  -l, --log               specify the log level, the log directory and the log format(log level default: 6 [SDOG_INFO])
  -n, --nosync            drop O_SYNC for write of backend
  -p, --port              specify the TCP port on which to listen (default: 7000)
  -P, --pidfile           create a pid file
  -R, --recovery          specify the recovery speed throttling
  -u, --upgrade           upgrade to the latest data layout
  -v, --version           show the version
  -V, --vnodes            set number of vnodes
  -w, --wq-threads        specify a number of threads for workqueue
  -W, --wildcard-recovery wildcard recovery for first time
  -x, --max-dynamic-threadsspecify the maximum number of threads for dynamic workqueue
  -y, --myaddr            specify the address advertised to other sheep
  -z, --zone              specify the zone id (default: determined by listen address)

Try 'sheep <option>', e.g., 'sheep -w', to get more detail about specific option
"""

VERSION_TEXT = f"""Sheepdog daemon version {VERSION}

Supported features:
\tCluster drivers: {' '.join(DRIVERS)}
\tMiscellaneous: none
"""

# short letter -> (long name, takes an argument)
OPTIONS = {
    "b": ("bindaddr", True), "c": ("cluster", True), "D": ("directio", False),
    "f": ("foreground", False), "g": ("gateway", False), "h": ("help", False), "i": ("ioaddr", True),
    "j": ("journal", True), "l": ("log", True), "n": ("nosync", False), "p": ("port", True),
    "P": ("pidfile", True), "R": ("recovery", True), "u": ("upgrade", False), "v": ("version", False),
    "V": ("vnodes", True), "w": ("wq-threads", True), "W": ("wildcard-recovery", False),
    "x": ("max-dynamic-threads", True), "y": ("myaddr", True), "z": ("zone", True),
}
_LONG = {name: letter for letter, (name, _) in OPTIONS.items()}


def die(msg: str, code: int = 1) -> NoReturn:
    sys.stderr.write(msg + "\n")
    sys.exit(code)


def getopt(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """GNU getopt_long for the table above (permuting, `--name=value`, clustered flags)."""
    opts: list[tuple[str, str]] = []
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args += argv[i + 1:]
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            if name not in _LONG:
                die(f"sheep: unrecognized option '{a}'\nTry 'sheep --help' for more information.")
            letter = _LONG[name]
            if OPTIONS[letter][1] and not eq:
                i += 1
                if i >= len(argv):
                    die(f"sheep: option '--{name}' requires an argument")
                value = argv[i]
            opts.append((letter, value))
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                letter = a[j]
                if letter not in OPTIONS:
                    die(f"sheep: invalid option -- '{letter}'\nTry 'sheep --help' for more information.")
                if OPTIONS[letter][1]:
                    value = a[j + 1:]
                    if not value:
                        i += 1
                        if i >= len(argv):
                            die(f"sheep: option requires an argument -- '{letter}'")
                        value = argv[i]
                    opts.append((letter, value))
                    break
                opts.append((letter, ""))
                j += 1
        else:
            args.append(a)
        i += 1
    return opts, args


def _kv(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip()
    return out


def _address(text: str) -> str:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        die(f"Bad address '{text}'")
    return text


def _int_in(text: str, lo: int, hi: int) -> int | None:
    return int(text) if text.isdigit() and lo <= int(text) <= hi else None


def _store_paths(store: str) -> tuple[str, list[str]]:
    """`PATH` or `META,DISK1,DISK2,...` (multi-disk): the store directory and the object
    directories (`PATH/obj` for a single path)."""
    meta_dir, *disks = store.split(",")
    if not meta_dir or any(not d for d in disks):
        die(f"Invalid store path '{store}': empty directory name in the list")
    paths = [os.path.abspath(d) for d in disks]
    if len(paths) > MD_MAX_DISK:
        die(f"Invalid store path '{store}': at most {MD_MAX_DISK} disks")
    for i, p in enumerate(paths):
        if p in paths[:i]:
            die(f"Invalid store path '{store}': disk {p} is given twice")
    return os.path.abspath(meta_dir), paths or [os.path.join(os.path.abspath(meta_dir), "obj")]


def parse(argv: list[str]) -> Options:
    opts, args = getopt(argv)
    store = args[0] if args else tempfile.gettempdir()
    store_dir, obj_dirs = _store_paths(store)
    o = Options(store_dir=store_dir, obj_dirs=obj_dirs)
    o.cluster = f"local:{os.path.join(tempfile.gettempdir(), 'sheepdog_local')}"
    for letter, value in opts:
        if letter == "h":
            sys.stdout.write(HELP.format(version=VERSION, tmp=tempfile.gettempdir()))
            sys.exit(0)
        if letter == "v":
            sys.stdout.write(VERSION_TEXT)
            sys.exit(0)
        if letter == "p":
            port = _int_in(value, 1, 65535)
            if port is None:
                die(f"Invalid port number '{value}'")
            o.port = port
        elif letter == "b":
            o.bind_addr = _address(value)
        elif letter == "y":
            o.advertise_addr = _address(value)
        elif letter == "c":
            driver, _, arg = value.partition(":")
            if driver not in DRIVERS:
                die(f"Invalid cluster driver '{driver}'\nSupported drivers: {' '.join(DRIVERS)}")
            if driver == "local":
                o.cluster = f"local:{os.path.abspath(arg)}" if arg else o.cluster
            else:  # each remote driver's module checks its own option syntax
                try:
                    import_module(f".cluster.{driver}", __package__).parse_option(arg)
                except ValueError as e:
                    die(f"Invalid cluster driver option '{value}': {e}")
                o.cluster = value
        elif letter == "z":
            zone = _int_in(value, 0, 0xFFFFFFFF)
            if zone is None:
                die(f"Invalid zone id '{value}': must be an integer between 0 and 4294967295")
            o.zone = zone
        elif letter == "V":
            vn = _int_in(value, 1, 65535)
            if vn is None:
                die(f"Invalid number of vnodes '{value}': must be an integer between 1 and 65535")
            o.vnodes = vn
        elif letter == "g":
            o.gateway = True
        elif letter == "n":
            o.nosync = True
        elif letter == "f":
            o.foreground = True
        elif letter == "P":
            o.pidfile = os.path.abspath(value)
        elif letter == "l":
            _parse_log(o, value)
        elif letter == "R":
            kv = _kv(value)
            mx, iv = kv.get("max", ""), kv.get("interval", "")
            if not (mx.isdigit() and iv.isdigit()):
                die(f"Invalid recovery throttling '{value}': use max=N,interval=MS")
            o.recovery_max, o.recovery_interval = int(mx), int(iv)
        # -D -i -j -u -w -W -x: accepted for compatibility; they tune the C implementation.
    if o.gateway and o.vnodes is not None:
        die("Options '-g' and '-V' can not be both specified")
    if o.bind_addr and o.advertise_addr == "127.0.0.1" and o.bind_addr not in ("0.0.0.0", "::"):
        o.advertise_addr = o.bind_addr
    return o


def _parse_log(o: Options, value: str) -> None:
    if "=" not in value:
        value = f"level={value}"
    for k, v in _kv(value).items():
        if k == "level":
            try:
                o.log_level = logger.level_from_name(v)
            except ValueError:
                die(f"Invalid log level '{v}'\nAvailable log levels:\n" +
                    "\n".join(f"    #\tlevel\n    {i}\t{n}" if i == 0 else f"    {i}\t{n}"
                              for i, n in enumerate(logger.LEVEL_NAMES)))
        elif k == "dir":
            o.log_dir = os.path.abspath(v)
        elif k == "format":
            o.log_format = v
        elif k == "dst":
            o.log_dst = v
            if v == "stdout":
                o.foreground = True


def make_driver(spec: str):
    name, _, arg = spec.partition(":")
    if name == "zookeeper":
        from .cluster.zookeeper import ZookeeperDriver
        return ZookeeperDriver(arg)
    if name == "corosync":
        from .cluster.corosync import CorosyncDriver
        return CorosyncDriver(arg)
    from .cluster.local import LocalDriver
    return LocalDriver(arg)


def lock_store(path: str) -> int:
    """One sheep per store; the lock file also names the holder's pid (handy for scripts)."""
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        die(f"locking directory: {path} failed")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def write_pidfile(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        die(f"failed to lock pid file {path}: is another sheep running?")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def daemonize() -> int:
    """Fork twice; the original parent waits for one status byte and exits with it."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        status = os.read(r, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return w


def detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")


async def run(opts: Options, listeners, ready) -> int:
    from .peers import PeerPool
    from .server import serve
    from .vdi_ops import scan_local_inodes

    node = Node(opts, make_driver(opts.cluster))
    node.lease.open(opts.store_dir)
    md_ops.attach(node)
    await trio.to_thread.run_sync(node.load_local_state)
    await trio.to_thread.run_sync(scan_local_inodes, node)
    log.info("sheep %s starting: %s, store %s, driver %s", VERSION, node.me.nid.log_str(),
             opts.store_dir, opts.cluster)
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        node.peers = PeerPool(nursery)
        try:
            await nursery.start(node.driver.run, node, node.me.encode(), node.join_opaque())
        except JoinRejected as e:
            log.error("failed to join Sheepdog: %s", e)
            sys.stderr.write(f"failed to join Sheepdog: {e}\n")
            nursery.cancel_scope.cancel()
            return 1
        await nursery.start(serve, node, listeners)
        nursery.start_soon(node.recovery.run)
        md_ops.start(node)
        ready()
        nursery.start_soon(_signals, node)
        await node.shutdown_event.wait()
        node.lease.bump()  # leaving: same-host clients stop using our files
        if node.status not in (Status.SHUTDOWN, Status.KILLED):
            node.status = Status.KILLED
        await trio.sleep(0.2)  # let replies in flight reach their clients
        with trio.move_on_after(5):
            await node.driver.leave()
        log.info("sheep exits")
        nursery.cancel_scope.cancel()
    return 0


async def _signals(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            if sig == signal.SIGHUP:
                continue  # WatchedFileHandler reopens a rotated sheep.log by itself
            log.info("got signal %d, exiting", sig)
            node.shutdown_event.set()


def _open_disks(opts: Options) -> list[str]:
    """Check every object directory here, on the terminal, rather than in the daemon.  A
    disk dropped while in use (md.py) may hold outdated copies: it is emptied."""
    dropped = load_dropped(opts.store_dir)
    emptied = [p for p in opts.obj_dirs if p in dropped]
    for path in opts.obj_dirs:
        try:
            open_disk(path, purge=path in dropped)
        except DiskError as e:
            die(str(e))
    if emptied:
        save_dropped(opts.store_dir, dropped - set(emptied))
    return emptied


def main(argv: list[str] | None = None) -> None:
    opts = parse(sys.argv[1:] if argv is None else argv)
    os.makedirs(opts.store_dir, exist_ok=True)
    emptied = _open_disks(opts)
    status_fd = None if opts.foreground else daemonize()
    lock_fd = lock_store(opts.store_dir)
    pid_fd = write_pidfile(opts.pidfile) if opts.pidfile else None
    log_path = os.path.join(opts.log_dir or opts.store_dir, "sheep.log")
    logger.setup(log_path, opts.log_level, opts.log_format, opts.log_dst)
    for path in emptied:
        log.warning("disk %s was dropped while in use (failed or unplugged): emptied", path)
    try:
        listeners = __import__("sheep.server.server", fromlist=["make_listeners"]).make_listeners(
            opts.bind_addr, opts.port, os.path.join(opts.store_dir, "sock"))
    except OSError as e:
        die(f"failed to listen on port {opts.port}: {e.strerror}")

    def ready() -> None:
        if status_fd is not None:
            os.write(status_fd, b"\0")
            os.close(status_fd)
            detach_stdio()

    try:
        code = trio.run(run, opts, listeners, ready)
    except BaseException as e:
        log.critical("sheep crashed", exc_info=True)
        sys.stderr.write(f"sheep: fatal error: {e!r} (see {log_path})\n")
        code = 1
    finally:
        if pid_fd is not None:
            try:
                os.unlink(opts.pidfile)  # type: ignore[arg-type]
            except OSError:
                pass
        os.close(lock_fd)
    sys.exit(code)


if __name__ == "__main__":
    main()

__all__ = ["SD_LISTEN_PORT"]
