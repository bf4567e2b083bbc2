"""Real `sheep` processes on loopback for tests and benchmarks: own ports, own temp dir,
torn down by pid (never by name)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sheep.client.api import Client
from sheep.client.volume import Volume
from sheep.proto.constants import ClusterFlag
from sheep.proto.placement import Ring
from sheep.proto.shortcircuit import LEASE_NAME, decode_lease
from sheep.client.sync import SheepConnectionError

BIN = Path(sys.executable).parent
SHEEP = str(BIN / "sheep")
DOG = str(BIN / "dog")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM our child, SIGKILL it after ``grace`` seconds; by pid, never by name."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def read_log(path: Path) -> str:
    """A log file's text so far ('' before it exists)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_until(what: str, cond, timeout: float = 30, interval: float = 0.1) -> None:
    """Poll ``cond`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to disappear (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


class Sheep:
    def __init__(self, cluster: "Cluster", idx: int, port: int, host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
        self.cluster = cluster
        self.idx = idx
        self.port = port
        self.host = host
        self.netns = netns
        self.store = cluster.root / str(idx)
        self.disks: list[Path] = []  # multi-disk: `sheep STORE,DISK1,DISK2,...`
        self.proc: subprocess.Popen | None = None

    @property
    def obj_dirs(self) -> list[Path]:
        """The object directories the command line names (STORE/obj without disks)."""
        return list(self.disks) or [self.store / "obj"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *extra: str, wait: bool = True) -> None:
        cmd = [SHEEP, "-f", "-c", self.cluster.driver, "-z", str(self.idx),
               "-p", str(self.port), "-l", "level=debug", *extra, ",".join(map(str, [self.store, *self.disks]))]
        if self.netns:  # a host of its own: listen on and advertise its address
            cmd = ["ip", "netns", "exec", self.netns, *cmd[:1], "-b", self.host, "-y", self.host, *cmd[1:]]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sheep {self.idx} exited: {self.proc.stderr.read().decode()}")
            try:
                with Client(self.host, self.port, timeout=self.cluster.client_timeout) as c:
                    c.get_node_list()
                    return
            except (SheepConnectionError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"sheep {self.idx} on port {self.port} did not start")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return read_log(self.store / "sheep.log")


class Cluster:
    def __init__(self, root: Path, n: int, driver: str | None = None,
                 hosts: list[tuple[str, str | None]] | None = None,
                 client_timeout: float | None = None) -> None:
        """``driver``: the ``-c`` argument (default: a local driver dir of our own);
        ``hosts``: (address, network namespace) per node (default: loopback);
        ``client_timeout``: socket timeout of the harness's clients (None: wait forever)."""
        self.root = root
        self.client_timeout = client_timeout
        self.driver_dir = root / "cluster"
        self.driver = driver or f"local:{self.driver_dir}"
        hosts = hosts or [("127.0.0.1", None)] * n
        self.nodes = [Sheep(self, i, p, *hosts[i]) for i, p in enumerate(free_ports(n))]

    def start(self) -> "Cluster":
        for s in self.nodes:
            s.start()
        self.wait_members(len(self.nodes))
        return self

    def holdings(self) -> dict[int, set[int]]:
        """oid -> ports of the live nodes that store it in obj/."""
        held: dict[int, set[int]] = {}
        for s in self.alive():
            for d in s.obj_dirs:
                for name in os.listdir(d) if d.is_dir() else ():
                    if len(name) == 16:
                        held.setdefault(int(name, 16), set()).add(s.port)
        return held

    def misplaced(self, copies: int = 3) -> list[int]:
        """Objects not stored exactly on the nodes placement names."""
        first = self.alive()[0]
        with Client(first.host, first.port, timeout=self.client_timeout) as c:
            ring = Ring(c.get_node_list())
        return [oid for oid, ports in self.holdings().items()
                if ports != {n.nid.port for n in ring.oid_to_nodes(oid, copies)}]

    def stale_count(self) -> int:
        return sum(len(os.listdir(d / ".stale")) for s in self.alive() for d in s.obj_dirs
                   if (d / ".stale").is_dir())

    def wait_redundant(self, timeout: float = 60, copies: int = 3) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.misplaced(copies) and self.stale_count() == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"not redundant: {len(self.misplaced(copies))} misplaced, "
                             f"{self.stale_count()} stale")

    def client(self, i: int = 0) -> Client:
        return Client(self.nodes[i].host, self.nodes[i].port, timeout=self.client_timeout)

    def write_volume(self, name: str, size: int, via: int = 0) -> bytes:
        """Create VDI ``name`` full of random bytes (returned)."""
        data = os.urandom(size)
        with self.client(via) as c:
            c.new_vdi(name, size)
            Volume(c, c.read_inode(c.get_vdi_info(name).vdi_id)).write(0, data)
        return data

    def read_volume(self, name: str, via: int = 0) -> bytes:
        with self.client(via) as c:
            vol = Volume(c, c.read_inode(c.get_vdi_info(name).vdi_id))
            return bytes(vol.read(0, vol.inode.header.vdi_size))

    def alive(self) -> list[Sheep]:
        return [s for s in self.nodes if s.proc is not None and s.proc.poll() is None]

    def wait_quiet(self, timeout: float = 30, quiet: float = 0.5) -> None:
        """Wait until no live sheep has bumped its lease for ``quiet`` seconds: a fresh or
        changed cluster recovers and reports it (cluster operations, which bump it), and
        a recovering sheep grants no short-circuit I/O (sheep/server/shortcircuit.py)."""
        def gens() -> list[int]:
            return [decode_lease((n.store / LEASE_NAME).read_bytes())[0] for n in self.alive()]
        last = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = gens()
            if now == last:
                return
            last = now
            time.sleep(quiet)
        raise AssertionError("the sheep keep bumping their leases")

    def wait_members(self, n: int, timeout: float = 10) -> None:
        """Until every live node sees ``n`` members at the same epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = []
            for s in self.alive():
                with Client(s.host, s.port, timeout=self.client_timeout) as c:
                    ci = c.cluster_info()
                    views.append((len(ci.nodes), ci.epoch))
            if views and all(v == (n, views[0][1]) for v in views):
                return
            time.sleep(0.05)
        raise TimeoutError(f"cluster did not reach {n} members")

    def dog(self, *args: str, port: int | None = None, input: bytes | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        cmd = [DOG, *args]
        if port is not False:
            cmd += ["-p", str(port or self.nodes[0].port)]
        r = subprocess.run(cmd, input=input, capture_output=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} exited {r.returncode}: {r.stderr.decode()}")
        return r

    def format(self, copies: int = 3) -> None:
        t = time.time()
        with self.client() as c:
            c.make_fs(copies, 0, ClusterFlag.AUTO_VNODES, (int(t) << 32) | (int(t % 1 * 1e6) * 1000))

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


