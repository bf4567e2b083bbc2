"""A real single-node corosync (Debian's `corosync`, in the foreground) on loopback, with
its own configuration, state directory and UDP port in the test's temp dir; torn down by
pid.

Corosync's IPC endpoints (libqb abstract unix sockets such as ``@cpg``) have fixed names
per network namespace, so two corosyncs cannot serve one machine at a time: the fixture
holds a machine-wide lock file while its corosync runs, and refuses to start when some
other corosync already owns ``@cpg``.
"""
from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster.harness import read_log, stop_process

LOCK_PATH = "/tmp/sheepdog-tests-corosync.lock"
CONF = """\
totem {{
    version: 2
    cluster_name: {name}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
    interface {{
        linknumber: 0
        mcastport: {port}
    }}
}}
nodelist {{
    node {{
        ring0_addr: 127.0.0.1
        nodeid: 1
        name: {name}-n1
    }}
}}
quorum {{
    provider: corosync_votequorum
    expected_votes: 1
}}
logging {{
    to_stderr: yes
    to_logfile: no
    to_syslog: no
    timestamp: on
}}
system {{
    state_dir: {state}
    qb_ipc_type: {ipc}
    sched_rr: no
    allow_knet_handle_fallback: yes
}}
"""


def cpg_socket_owned() -> bool:
    """Is the abstract socket ``@cpg`` (corosync's CPG service) bound in our namespace?"""
    with open("/proc/net/unix") as f:
        return any(line.split()[-1].rstrip("@") == "@cpg" for line in f)  # NULs print as '@'


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Corosync:
    def __init__(self, root: Path, ipc: str = "native") -> None:
        self.root = root
        self.name = f"sdt{uuid.uuid4().hex[:10]}"
        self.conf = root / "corosync.conf"
        self.out = root / "corosync.out"
        self.proc: subprocess.Popen | None = None
        (root / "state").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONF.format(name=self.name, port=free_udp_port(), state=root / "state", ipc=ipc))

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(["corosync", "-f", "-c", str(self.conf)],
                                     stdout=open(self.out, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corosync exited {self.proc.returncode}:\n{self.log()}")
            if "ready to provide service" in self.log() and cpg_socket_owned():
                return
            time.sleep(0.1)
        raise TimeoutError(f"corosync did not become ready:\n{self.log()}")

    def log(self) -> str:
        return read_log(self.out)

    def stop(self) -> None:
        stop_process(self.proc, 20)


@contextmanager
def running_corosync(root: Path, ipc: str = "native"):
    if shutil.which("corosync") is None:
        pytest.fail("corosync is not installed: scripts/bootstrap installs Debian's corosync and libcpg4")
    with open(LOCK_PATH, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one test corosync per machine at a time
        if cpg_socket_owned():
            pytest.fail("another corosync (not this test's) serves @cpg on this machine; "
                        "the corosync tests need it stopped")
        cs = Corosync(root, ipc)
        try:
            cs.start()
            yield cs
        finally:
            cs.stop()


@pytest.fixture
def corosync(tmp_path):
    """Corosync with its default IPC (shared memory, a descriptor that wakes on disconnect)."""
    with running_corosync(tmp_path / "corosync") as cs:
        yield cs


@pytest.fixture
def corosync_socket_ipc(tmp_path):
    """Corosync with socket IPC: its descriptor never wakes when corosync dies."""
    with running_corosync(tmp_path / "corosync", "socket") as cs:
        yield cs
