"""The zookeeper cluster driver against a real ZooKeeper server."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from sheep.client.sync import SheepError
from sheep.client.volume import Volume
from sheep.proto.oid import vid_to_data_oid
from tests.cluster.harness import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = 60.0  # no harness call may wait forever: a hang is a failure


def zk_cluster(tmp_path, zk, n=3, timeout_ms=2000, cid=None, hosts=None, zk_addr="127.0.0.1") -> Cluster:
    cid = cid or f"t{uuid.uuid4().hex[:8]}"
    c = Cluster(tmp_path / cid, n, driver=f"zookeeper:{zk_addr}:{zk.port}/{cid},timeout={timeout_ms}",
                hosts=hosts, client_timeout=CLIENT_TIMEOUT)
    return c


def epoch(c: Cluster, i: int) -> int:
    with c.client(i) as cl:
        return cl.cluster_info().epoch


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()




def views(c: Cluster, idx: list[int]) -> list[tuple[int, list[int]]]:
    """(epoch, member ports) as each of the given nodes sees it."""
    out = []
    for i in idx:
        with c.client(i) as cl:
            ci = cl.cluster_info()
            out.append((ci.epoch, sorted(n.nid.port for n in ci.nodes)))
    return out


def test_cluster_over_zookeeper(tmp_path, zookeeper):
    c = zk_cluster(tmp_path, zookeeper).start()
    try:
        c.format(3)
        data = c.write_volume("Z", 16 << 20)
        assert c.read_volume("Z", 2) == data
        c.nodes[2].kill9()
        t = time.monotonic()
        c.wait_members(2, timeout=20)  # the session expires after the 2 s timeout
        assert time.monotonic() - t < 10
        assert epoch(c, 0) == epoch(c, 1) == 2
        assert c.read_volume("Z", 1) == data
        c.nodes[2].start()
        c.wait_members(3, timeout=20)
        c.wait_redundant()
        assert c.read_volume("Z", 2) == data
    finally:
        c.stop()


def test_several_clusters_share_one_ensemble(tmp_path, zookeeper):
    a = zk_cluster(tmp_path, zookeeper, n=2, cid="alpha").start()
    b = zk_cluster(tmp_path, zookeeper, n=1, cid="beta").start()
    try:
        a.format(2)
        b.format(1)
        with a.client() as cl:
            assert len(cl.get_node_list()) == 2
        with b.client() as cl:
            assert [n.nid.port for n in cl.get_node_list()] == [b.nodes[0].port]
    finally:
        a.stop()
        b.stop()


class Writer(threading.Thread):
    """Writes distinct 64 KiB blocks round the volume through one node until stopped;
    records every acknowledged write (in order) and every failure."""

    BLOCK = 64 << 10

    def __init__(self, c: Cluster, name: str, via: int, size: int) -> None:
        super().__init__(daemon=True)
        self.c, self.vdi, self.via, self.size = c, name, via, size
        self.acked: list[tuple[int, bytes, float]] = []
        self.failed: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        with self.c.client(self.via) as cl:
            vol = Volume(cl, cl.read_inode(cl.get_vdi_info(self.vdi).vdi_id))
            while not self.halt.is_set():
                off = (n * 7 * self.BLOCK) % self.size
                block = os.urandom(self.BLOCK)
                try:
                    vol.write(off, block)
                    self.acked.append((off, block, time.monotonic()))
                except Exception as e:
                    self.failed.append((time.monotonic(), f"{type(e).__name__}: {e}"))
                    return  # the connection may be unusable: a failure ends this writer
                n += 1

    def apply(self, data: bytes) -> bytes:
        buf = bytearray(data)
        for off, block, _ in self.acked:
            buf[off:off + len(block)] = block
        return bytes(buf)

    def acked_after(self, t: float) -> int:
        return sum(1 for _, _, at in self.acked if at > t)


class VdiMaker(threading.Thread):
    """Cluster ops (NEW_VDI: the op lock, the log) in a loop through one node until stopped.
    A failure must be a clear error (an error code, not a dropped connection or a hang)."""

    def __init__(self, c: Cluster, via: int) -> None:
        super().__init__(daemon=True)
        self.c, self.via = c, via
        self.acked: list[tuple[str, float]] = []
        self.failed: list[tuple[str, float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        with self.c.client(self.via) as cl:
            while not self.halt.is_set():
                name = f"op{n}"
                try:
                    cl.new_vdi(name, 1 << 20)
                    self.acked.append((name, time.monotonic()))
                except SheepError as e:  # an error code: the connection is still usable
                    self.failed.append((name, time.monotonic(), str(e)))
                    time.sleep(0.2)
                except Exception as e:  # e.g. the connection dropped or timed out
                    self.failed.append((name, time.monotonic(), f"{type(e).__name__}: {e}"))
                    return
                n += 1


def test_zookeeper_restart_loses_nothing(tmp_path, zookeeper):
    """ZooKeeper stopped (by pid) under I/O and restarted on the same data dir and port:
    sessions survive (20 s timeout), writes wait and resume, nothing acknowledged is lost,
    membership and epoch are unchanged, cluster ops work again."""
    c = zk_cluster(tmp_path, zookeeper, timeout_ms=20000).start()
    try:
        c.format(3)
        size = 8 << 20
        data = c.write_volume("Z", size)
        before = views(c, [0, 1, 2])
        assert len({v for v in map(repr, before)}) == 1 and len(before[0][1]) == 3
        writer = Writer(c, "Z", 1, size)
        maker = VdiMaker(c, 2)
        writer.start()
        maker.start()
        wait_until("I/O before the outage",
                   lambda: len(writer.acked) >= 20 and len(maker.acked) >= 3 or writer.failed, 30)
        zookeeper.stop()
        stopped = time.monotonic()
        time.sleep(3)
        zookeeper.start()
        restarted = time.monotonic()
        wait_until("I/O after ZooKeeper is back",
                   lambda: writer.acked_after(restarted) >= 20 and
                   sum(1 for _, t in maker.acked if t > restarted) >= 3 or writer.failed or maker.failed, 90)
        writer.halt.set()
        maker.halt.set()
        writer.join(CLIENT_TIMEOUT + 10)
        maker.join(CLIENT_TIMEOUT + 10)
        assert not writer.is_alive() and not maker.is_alive(), "I/O is stuck"
        assert writer.failed == [], writer.failed
        assert writer.acked_after(stopped) >= 20
        # cluster ops wait out the outage: none failed
        assert maker.failed == [], maker.failed
        c.wait_members(3, timeout=30)
        assert views(c, [0, 1, 2]) == before  # same nodes, same epoch: nobody was evicted
        with c.client(2) as cl:  # cluster ops (ZooKeeper locks and log) work again
            cl.new_vdi("after", 1 << 20)
        expected = md5(writer.apply(data))
        for i in range(3):
            assert md5(c.read_volume("Z", i)) == expected, f"node {i}"
            with c.client(i) as cl:
                for name in ["after"] + [name for name, _ in maker.acked]:
                    assert cl.get_vdi_info(name).vdi_id, (i, name)
    finally:
        c.stop()


def ns_write(hosts, i: int, c: Cluster, oid: int, data: bytes, timeout: float) -> str:
    """A WRITE_OBJ to node ``i`` from inside its own network namespace."""
    r = subprocess.run(["ip", "netns", "exec", hosts.names[i], sys.executable, "-m", "tests.zk.nsclient",
                        c.nodes[i].host, str(c.nodes[i].port), f"{oid:016x}", data.hex(), str(timeout)],
                       cwd=REPO, capture_output=True, timeout=timeout + 30)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().strip()


def test_cut_link_stops_acks_then_rejoins(tmp_path, zookeeper, hosts):
    """Host 2's link is cut: it acknowledges nothing; the other two carry on at a new epoch
    once its session expires; when the link is back it rejoins, recovers, and every
    acknowledged write reads back from every node."""
    c = zk_cluster(tmp_path, zookeeper, timeout_ms=2000, zk_addr=hosts.gateway,
                   hosts=list(zip(hosts.addrs, hosts.names)))
    c.start()
    try:
        c.format(3)
        size = 8 << 20
        data = bytearray(c.write_volume("Z", size))
        with c.client(0) as cl:
            vid = cl.get_vdi_info("Z").vdi_id
        first = views(c, [0, 1, 2])
        assert len({repr(v) for v in first}) == 1 and len(first[0][1]) == 3
        e0 = first[0][0]

        hosts.cut(2)  # host 2 reaches neither ZooKeeper nor the other sheep
        refused = ns_write(hosts, 2, c, vid_to_data_oid(vid, 0), b"must-not-ack", 90)
        assert refused.startswith("FAILED") and "SheepError" in refused, refused  # an error code

        wait_until("nodes 0 and 1 to drop node 2",
                   lambda: all(len(m) == 2 for _, m in views(c, [0, 1])), 30)
        two = views(c, [0, 1])
        assert two[0] == two[1] and two[0][0] == e0 + 1, two
        with c.client(0) as cl:
            Volume(cl, cl.read_inode(vid)).write(0, b"carry-on")
        data[0:8] = b"carry-on"
        with c.client(1) as cl:
            Volume(cl, cl.read_inode(vid)).write(5 << 20, b"second-node")
        data[5 << 20:(5 << 20) + 11] = b"second-node"
        # still cut off: host 2 keeps refusing
        refused = ns_write(hosts, 2, c, vid_to_data_oid(vid, 1), b"must-not-ack-either", 90)
        assert refused.startswith("FAILED") and "SheepError" in refused, refused

        hosts.restore(2)
        wait_until("node 2 to rejoin",
                   lambda: all(len(m) == 3 for _, m in views(c, [0, 1, 2])), 60, interval=0.5)
        c.wait_members(3, timeout=30)
        back = views(c, [0, 1, 2])
        assert back[0][0] == e0 + 2, back
        c.wait_redundant(timeout=90)
        with c.client(2) as cl:  # a member again: it acknowledges writes again
            Volume(cl, cl.read_inode(vid)).write(6 << 20, b"back-again")
        data[6 << 20:(6 << 20) + 10] = b"back-again"
        expected = md5(bytes(data))
        for i in range(3):
            assert md5(c.read_volume("Z", i)) == expected, f"node {i}"
        assert "rejoin" in c.nodes[2].log()
    finally:
        c.stop()
