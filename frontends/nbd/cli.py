"""`sheepdog-nbd`: export a VDI over NBD with nbdkit and print the NBD URI.

    sheepdog-nbd [-a HOST] [-p PORT | --sheep-socket PATH] [-s TAG|ID] [-r]
                 [-U SOCKET | --nbd-port PORT [--bind ADDR]] [-b | --run CMD] VDI

nbdkit embeds the system Python (Debian: /usr/bin/python3's libpython).  The plugin
must not inherit a virtualenv's PYTHONHOME/PYTHONPATH (a venv made from another Python
build would mix two standard libraries), so nbdkit runs with those removed; the project
is found by the plugin from its own tree and from ``$SHEEPDOG_NBD_SITE``, which lists
this interpreter's site directories when it is the same Python version as nbdkit's
(site.addsitedir honours their .pth files, i.e. editable installs; PYTHONPATH would not).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from . import PLUGIN
from .config import ConfigError, ExportConfig, parse_port

PROG = "sheepdog-nbd"
_DROP_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONUSERBASE",
             "VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "PYTHONSAFEPATH")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Export a Sheepdog VDI over NBD (nbdkit + the sheepdog Python "
        "plugin) and print its NBD URI.  Runs until interrupted unless -b or --run is given.",
        epilog="Example: qemu-system-x86_64 -drive "
        "file=nbd+unix:///?socket=/run/sheepdog-nbd/Alice.sock,format=raw,if=virtio ...")
    p.add_argument("vdi", metavar="VDI", help="the VDI to export")
    s = p.add_argument_group("the cluster")
    s.add_argument("-a", "--address", metavar="HOST", help="a sheep's address (default 127.0.0.1)")
    s.add_argument("-p", "--port", metavar="PORT", help="its port (default 7000)")
    s.add_argument("--sheep-socket", metavar="PATH", help="a sheep's unix socket instead")
    s.add_argument("-s", "--snapshot", metavar="TAG|ID",
                   help="export this snapshot (always read-only)")
    s.add_argument("-r", "--readonly", action="store_true", help="refuse writes")
    s.add_argument("--no-route", action="store_true",
                   help="send everything through the one sheep (as QEMU does) instead of "
                   "sending object I/O straight to a sheep that holds the object")
    s.add_argument("--no-shortcircuit", action="store_true",
                   help="never read or write the object files of sheep on this host directly")
    s.add_argument("--timeout", metavar="SECONDS",
                   help="fail a request with EIO after a sheep was silent this long (default 90)")
    n = p.add_argument_group("the NBD server")
    n.add_argument("-U", "--socket", metavar="PATH",
                   help="serve on this unix socket (default: $XDG_RUNTIME_DIR/sheepdog-nbd/"
                   "VDI.sock, or /run/sheepdog-nbd/VDI.sock for root)")
    n.add_argument("--nbd-port", metavar="PORT", help="serve on TCP instead (NBD's port is 10809)")
    n.add_argument("--bind", metavar="ADDR", help="with --nbd-port: the address to listen on "
                   "(default 127.0.0.1)")
    n.add_argument("-t", "--threads", type=int, metavar="N",
                   help="nbdkit threads per NBD connection, each with its own cluster "
                   "connection (default 16)")
    n.add_argument("-P", "--pidfile", metavar="PATH", help="write nbdkit's pid here")
    m = n.add_mutually_exclusive_group()
    m.add_argument("-b", "--background", action="store_true",
                   help="return once the export is served (stop it: kill $(cat PIDFILE))")
    m.add_argument("--run", metavar="CMD", help="run CMD (with $uri set) and stop when it exits")
    n.add_argument("-v", "--verbose", action="store_true", help="nbdkit debug messages")
    n.add_argument("--nbdkit", metavar="PATH", default="nbdkit", help="the nbdkit binary")
    n.add_argument("-n", "--dry-run", action="store_true",
                   help="print the environment and command that would run, and exit")
    p.add_argument("--plugin-path", action="store_true",
                   help="print the plugin's path (for `nbdkit python PATH ...`) and exit")
    return p


def default_socket(vdi: str, snapshot: str | None) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        d = Path(base) / "sheepdog-nbd"
    elif os.geteuid() == 0:
        d = Path("/run/sheepdog-nbd")
    else:
        d = Path(tempfile.gettempdir()) / f"sheepdog-nbd-{os.getuid()}"
    name = vdi.replace("/", "_") + (f"@{snapshot}" if snapshot else "")
    return d / f"{name}.sock"


def plugin_args(a: argparse.Namespace) -> list[str]:
    """key=value parameters, validated by the plugin's own rules before nbdkit starts."""
    args = [f"vdi={a.vdi}"]
    if a.snapshot:
        args.append(f"snapshot={a.snapshot}")
    if a.address:
        args.append(f"address={a.address}")
    if a.port:
        args.append(f"port={a.port}")
    if a.sheep_socket:
        args.append(f"socket={a.sheep_socket}")
    if a.readonly:
        args.append("readonly=true")
    if a.timeout:
        args.append(f"timeout={a.timeout}")
    if a.no_route:
        args.append("route=false")
    if a.no_shortcircuit and not a.no_route:
        args.append("shortcircuit=false")
    cfg = ExportConfig()
    for kv in args:
        k, v = kv.split("=", 1)
        cfg.set(k, v)
    cfg.complete()
    return args


def embedded_python(nbdkit: str) -> str | None:
    """nbdkit's embedded Python version (``3.11.2``), or None if unknown."""
    try:
        out = subprocess.run([nbdkit, "python", "--dump-plugin"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("python_version="):
            return line.split("=", 1)[1].strip()
    return None


def plugin_env(nbdkit: str) -> dict[str, str]:
    """The environment for nbdkit: ours without the virtualenv's Python variables, plus
    our site directories when nbdkit embeds the same Python version."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    version = embedded_python(nbdkit)
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version is not None and ".".join(version.split(".")[:2]) == mine:
        paths = sysconfig.get_paths()
        sites = [paths["purelib"], paths["platlib"]]
        env["SHEEPDOG_NBD_SITE"] = os.pathsep.join(dict.fromkeys(sites))
    return env


def uri_of(a: argparse.Namespace, sock: Path | None) -> str:
    if sock is not None:
        return f"nbd+unix:///?socket={sock}"
    host = a.bind or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"nbd://{host}:{a.nbd_port}/"


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    if "--plugin-path" in argv:
        print(PLUGIN)
        return 0
    a = parser.parse_args(argv)
    try:
        params = plugin_args(a)
    except ConfigError as e:
        parser.error(str(e))
    if a.nbd_port is not None:
        try:
            parse_port(a.nbd_port)
        except ConfigError:
            parser.error(f"--nbd-port {a.nbd_port!r}: expected a TCP port number (1-65535)")
    if a.nbd_port is not None and a.socket:
        parser.error("-U/--socket and --nbd-port exclude each other")
    if a.bind and a.nbd_port is None:
        parser.error("--bind needs --nbd-port")
    nbdkit = shutil.which(a.nbdkit)
    if nbdkit is None and not a.dry_run:
        print(f"{PROG}: {a.nbdkit} not found (Debian: apt-get install nbdkit "
              f"nbdkit-plugin-python)", file=sys.stderr)
        return 1
    nbdkit = nbdkit or a.nbdkit

    sock: Path | None = None
    # Debian's nbdkit arms PR_SET_PDEATHSIG even without --exit-with-parent, so a
    # foreground nbdkit dies with us: -b lets nbdkit daemonize itself instead.
    cmd = [nbdkit, "--log=stderr"] if a.background else \
        [nbdkit, "--foreground", "--exit-with-parent"]
    if a.nbd_port is not None:
        cmd += ["--port", a.nbd_port, "--ipaddr", a.bind or "127.0.0.1"]
    else:
        sock = Path(a.socket).absolute() if a.socket else default_socket(a.vdi, a.snapshot)
        cmd += ["--unix", str(sock)]
    pidfile = Path(a.pidfile).absolute() if a.pidfile else None
    if a.background and pidfile is None:
        pidfile = Path(f"{sock}.pid") if sock else \
            Path(tempfile.gettempdir()) / f"sheepdog-nbd-{a.nbd_port}.pid"
    if pidfile is not None:
        cmd += ["--pidfile", str(pidfile)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if a.verbose:
        cmd.append("--verbose")
    if a.run:
        cmd += ["--run", a.run]
    cmd += ["python", PLUGIN, *params]
    env = plugin_env(nbdkit)
    uri = uri_of(a, sock)

    if a.dry_run:
        words = ["env"] + [f"-u{k}" for k in _DROP_ENV if k in os.environ]
        if "SHEEPDOG_NBD_SITE" in env:
            words.append(f"SHEEPDOG_NBD_SITE={env['SHEEPDOG_NBD_SITE']}")
        print(shlex.join(words + cmd))
        return 0
    if sock is not None:
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if sock.is_socket():
            if _listening(sock):
                print(f"{PROG}: {sock} is already served", file=sys.stderr)
                return 1
            sock.unlink()  # left by a server that died; nbdkit would refuse to bind
    if a.run:
        print(uri, flush=True)
        os.execve(nbdkit, cmd, env)

    if a.background:
        return _background(cmd, env, pidfile, uri, a.vdi)
    return _foreground(cmd, env, pidfile, uri, a.vdi, sock)


def _wait_pidfile(pidfile: Path, alive, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pidfile.read_text().strip():
                return True
        except FileNotFoundError:
            pass
        if not alive():
            return False
        time.sleep(0.02)
    return False


def _background(cmd: list[str], env: dict[str, str], pidfile: Path, uri: str, vdi: str) -> int:
    """nbdkit daemonizes once it serves (after opening the VDI); its pidfile follows."""
    if pidfile.exists():
        pidfile.unlink()
    rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        print(f"{PROG}: nbdkit exited with status {rc} before serving {vdi}", file=sys.stderr)
        return rc
    if not _wait_pidfile(pidfile, lambda: True, timeout=30):
        print(f"{PROG}: nbdkit wrote no pidfile {pidfile}", file=sys.stderr)
        return 1
    print(uri, flush=True)
    print(f"{PROG}: nbdkit pid {pidfile.read_text().strip()}, pidfile {pidfile}", file=sys.stderr)
    return 0


def _foreground(cmd: list[str], env: dict[str, str], pidfile: Path | None, uri: str, vdi: str,
                sock: Path | None) -> int:
    """nbdkit as our child (it exits with us); the URI is printed once it serves."""
    private = None
    if pidfile is None:  # a private pidfile only to learn when nbdkit serves
        private = Path(tempfile.mkdtemp(prefix="sheepdog-nbd-"))
        pidfile = private / "nbdkit.pid"
        cmd[1:1] = ["--pidfile", str(pidfile)]
    elif pidfile.exists():
        pidfile.unlink()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        if not _wait_pidfile(pidfile, lambda: proc.poll() is None):
            if proc.poll() is None:
                print(f"{PROG}: nbdkit does not serve {vdi}", file=sys.stderr)
                return 1
            print(f"{PROG}: nbdkit exited with status {proc.returncode} before serving {vdi}",
                  file=sys.stderr)
            return proc.returncode or 1
        print(uri, flush=True)

        def forward(signum: int, _frame: object) -> None:
            proc.send_signal(signum)

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, forward)
        rc = proc.wait()
        return 0 if rc in (0, -signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP) else rc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        if sock is not None and sock.is_socket() and not _listening(sock):
            sock.unlink()  # nbdkit leaves its socket behind


if __name__ == "__main__":
    sys.exit(main())
