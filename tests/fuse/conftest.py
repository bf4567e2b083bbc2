"""sheepfs fixtures: a real FUSE mount over a real 3-node cluster, torn down by pid.

Every mount lives in the test's tmp dir.  Teardown always runs ``fusermount3 -u`` and then
kills the sheepfs process by pid if it is still there.  A watchdog kills sheepfs (which
aborts the FUSE connection, so no syscall of the test can hang) if a test runs too long.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.harness import BIN, pid_gone, read_log

SHEEPFS = str(BIN / "sheepfs")
WATCHDOG = 240.0  # seconds

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3 (apt: fuse3)", allow_module_level=True)
pytest.importorskip("pyfuse3", reason="needs pyfuse3 (pip install -e '.[fuse]')")


def mounted(path: Path) -> bool:
    """Whether ``path`` is a sheepfs mount, from /proc/self/mountinfo (never touches it)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target \
                    and right.split()[0] == "fuse.sheepfs":
                return True
    return False


def find_pids(mountpoint: Path) -> list[int]:
    """sheepfs processes serving ``mountpoint`` (for the daemonized case)."""
    pids = []
    want = str(mountpoint).encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"sheepfs") for a in argv[:2]) and want in argv:
            pids.append(int(d))
    return pids


class SheepFs:
    """One sheepfs process and its mount point."""

    def __init__(self, root: Path, port: int, *extra: str, foreground: bool = True,
                 name: str = "mnt") -> None:
        self.mnt = root / name
        self.mnt.mkdir(exist_ok=True)
        self.logfile = root / f"{name}.log"
        self.port = port
        self.extra = extra
        self.foreground = foreground
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self._watchdog: threading.Timer | None = None

    def start(self, timeout: float = 20) -> "SheepFs":
        cmd = [SHEEPFS, "-p", str(self.port), "--log", str(self.logfile), *self.extra]
        if self.foreground:
            cmd.append("-f")
        cmd.append(str(self.mnt))
        if self.foreground:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            self.pid = self.proc.pid
        else:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout)
            assert r.returncode == 0, r.stderr.decode()
            assert mounted(self.mnt), "sheepfs returned before the mount was in place"
            pids = find_pids(self.mnt)
            assert len(pids) == 1, pids
            self.pid = pids[0]
        deadline = time.monotonic() + timeout
        while not mounted(self.mnt):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sheepfs exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise TimeoutError("sheepfs did not mount")
            time.sleep(0.02)
        self._watchdog = threading.Timer(WATCHDOG, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def path(self, rel: str) -> Path:
        return self.mnt / rel

    def log(self) -> str:
        return read_log(self.logfile)

    def mount_vdi(self, name: str) -> Path:
        self.path("vdi/mount").write_text(name + "\n")
        return self.path(f"volume/{name}")

    @property
    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        return not pid_gone(self.pid, 0)

    def wait_exit(self, timeout: float = 20) -> int | None:
        if self.proc is not None:
            return self.proc.wait(timeout)
        assert self.pid is not None
        assert pid_gone(self.pid, timeout)
        return None

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, timeout=30)

    def kill(self) -> None:
        if self.pid is not None and self.alive:
            os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if mounted(self.mnt):
            self.unmount()
        if self.alive:
            try:
                self.wait_exit(10)
            except (subprocess.TimeoutExpired, AssertionError):
                pass
        if self.alive:
            self.kill()
            try:
                self.wait_exit(10)
            except (subprocess.TimeoutExpired, AssertionError):
                pass
        if mounted(self.mnt):  # killed: the kernel side needs a (lazy) unmount too
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True,
                           timeout=30)


@pytest.fixture
def make_fs(tmp_path):
    """Start sheepfs processes (``-f`` unless ``foreground=False``) on the sheep ``port``."""
    started: list[SheepFs] = []

    def make(port: int, *extra: str, foreground: bool = True, name: str = "mnt") -> SheepFs:
        fs = SheepFs(tmp_path, port, *extra, foreground=foreground, name=name)
        started.append(fs)
        return fs.start()

    yield make
    for fs in started:
        fs.stop()


@pytest.fixture
def fs(make_fs, cluster):
    """sheepfs -f on node 0 of `cluster`."""
    return make_fs(cluster.nodes[0].port)


@pytest.fixture
def lfs(make_fs, lock_cluster):
    """sheepfs -f on node 0 of `lock_cluster`."""
    return make_fs(lock_cluster.nodes[0].port)
