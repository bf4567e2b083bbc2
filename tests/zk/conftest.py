"""A real ZooKeeper server (Debian's `zookeeper`, in the foreground) and network namespaces
made by the test itself, all torn down by pid / by name of what we created."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.harness import free_ports

ZK_SERVER = "/usr/share/zookeeper/bin/zkServer.sh"


class ZooKeeper:
    def __init__(self, root: Path, bind: str = "0.0.0.0") -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.bind = bind
        self.proc: subprocess.Popen | None = None
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "zoo.cfg").write_text(
            f"tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={root / 'data'}\nclientPort={self.port}\n"
            f"clientPortAddress={bind}\nmaxClientCnxns=0\nadmin.enableServer=false\n"
            "maxSessionTimeout=60000\n4lw.commands.whitelist=ruok\n")

    def start(self) -> None:
        env = dict(os.environ, ZOOCFGDIR=str(self.root), ZOO_LOG_DIR=str(self.root))
        self.proc = subprocess.Popen([ZK_SERVER, "start-foreground", str(self.root / "zoo.cfg")],
                                     stdout=open(self.root / "zk.out", "ab"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"ruok")
                    if s.recv(4) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("zookeeper did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the script and its java child, by our pid
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def zookeeper(tmp_path):
    if not os.path.exists(ZK_SERVER):
        pytest.fail("zookeeper is not installed: scripts/bootstrap installs Debian's zookeeper package")
    zk = ZooKeeper(tmp_path / "zk")
    zk.start()
    yield zk
    zk.stop()


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class Hosts:
    """N network namespaces on one bridge of ours: host i is 10.213.<k>.(10+i), the bridge
    (where ZooKeeper and the test listen) is .1.  Cutting a host downs its veth's bridge end."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.k = os.getpid() % 200 + 20
        self.bridge = f"sdbr{tag}"
        self.gateway = f"10.213.{self.k}.1"
        self.names = [f"sd{tag}h{i}" for i in range(n)]
        self.addrs = [f"10.213.{self.k}.{10 + i}" for i in range(n)]
        self.links = [f"sd{tag}v{i}" for i in range(n)]

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for name, addr, link in zip(self.names, self.addrs, self.links):
            sh("ip", "netns", "add", name)
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
            sh("ip", "link", "set", f"{link}p", "netns", name)
            sh("ip", "link", "set", link, "master", self.bridge)
            sh("ip", "link", "set", link, "up")
            sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{addr}/24", "dev", f"{link}p")
            sh("ip", "netns", "exec", name, "ip", "link", "set", f"{link}p", "up")
            sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        sh("ip", "link", "set", self.links[i], "down")

    def restore(self, i: int) -> None:
        sh("ip", "link", "set", self.links[i], "up")

    def down(self) -> None:
        for name, link in zip(self.names, self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)


@pytest.fixture
def hosts():
    h = Hosts(3)
    try:
        h.up()
    except subprocess.CalledProcessError as e:
        h.down()
        pytest.fail(f"cannot create network namespaces here: {e.stderr.decode().strip()}")
    yield h
    h.down()
