"""The zookeeper cluster driver against a real ZooKeeper server."""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from sheep.client.sync import SheepError
from sheep.client.volume import Volume
from tests.cluster.harness import Cluster


def zk_cluster(tmp_path, zk, n=3, timeout_ms=2000, cid=None, hosts=None, zk_addr="127.0.0.1") -> Cluster:
    cid = cid or f"t{uuid.uuid4().hex[:8]}"
    c = Cluster(tmp_path / cid, n, driver=f"zookeeper:{zk_addr}:{zk.port}/{cid},timeout={timeout_ms}",
                hosts=hosts)
    return c


def write(c: Cluster, name: str, size: int, via: int = 0) -> bytes:
    data = os.urandom(size)
    with c.client(via) as cl:
        cl.new_vdi(name, size)
        Volume(cl, cl.read_inode(cl.get_vdi_info(name).vdi_id)).write(0, data)
    return data


def read(c: Cluster, name: str, via: int) -> bytes:
    with c.client(via) as cl:
        vol = Volume(cl, cl.read_inode(cl.get_vdi_info(name).vdi_id))
        return bytes(vol.read(0, vol.inode.header.vdi_size))


def epoch(c: Cluster, i: int) -> int:
    with c.client(i) as cl:
        return cl.cluster_info().epoch


def test_cluster_over_zookeeper(tmp_path, zookeeper):
    c = zk_cluster(tmp_path, zookeeper).start()
    try:
        c.format(3)
        data = write(c, "Z", 16 << 20)
        assert read(c, "Z", 2) == data
        c.nodes[2].kill9()
        t = time.monotonic()
        c.wait_members(2, timeout=20)  # the session expires after the 2 s timeout
        assert time.monotonic() - t < 10
        assert epoch(c, 0) == epoch(c, 1) == 2
        assert read(c, "Z", 1) == data
        c.nodes[2].start()
        c.wait_members(3, timeout=20)
        c.wait_redundant()
        assert read(c, "Z", 2) == data
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


def test_zookeeper_restart_loses_nothing(tmp_path, zookeeper):
    c = zk_cluster(tmp_path, zookeeper, timeout_ms=20000).start()
    try:
        c.format(3)
        data = write(c, "Z", 8 << 20)
        before = epoch(c, 0)
        zookeeper.stop()
        done: list[bytes] = []
        with c.client(1) as cl:  # I/O while ZooKeeper is away waits instead of failing
            vol = Volume(cl, cl.read_inode(cl.get_vdi_info("Z").vdi_id))
            writer = threading.Thread(target=lambda: (vol.write(0, b"during-outage"), done.append(b"ok")))
            writer.start()
            time.sleep(1)
            zookeeper.start()
            writer.join(60)
        assert done == [b"ok"]
        c.wait_members(3, timeout=30)
        assert epoch(c, 2) == before
        assert read(c, "Z", 2) == b"during-outage" + data[13:]
    finally:
        c.stop()


def test_cut_link_stops_acks_then_rejoins(tmp_path, zookeeper, hosts):
    c = zk_cluster(tmp_path, zookeeper, timeout_ms=2000, zk_addr=hosts.gateway,
                   hosts=list(zip(hosts.addrs, hosts.names)))
    c.start()
    try:
        c.format(3)
        data = write(c, "Z", 8 << 20)
        hosts.cut(2)  # host 2 can no longer reach ZooKeeper nor the others
        with pytest.raises((SheepError, OSError)):
            with c.client(2) as cl:  # (its own address is unreachable from here too)
                cl.conn.sock.settimeout(5)
                Volume(cl, cl.read_inode(cl.get_vdi_info("Z").vdi_id)).write(0, b"must-not-ack")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with c.client(0) as cl:
                if len(cl.get_node_list()) == 2:
                    break
            time.sleep(0.2)
        with c.client(0) as cl:
            assert len(cl.get_node_list()) == 2
            Volume(cl, cl.read_inode(cl.get_vdi_info("Z").vdi_id)).write(0, b"carry-on")
        hosts.restore(2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with c.client(0) as cl:
                if len(cl.get_node_list()) == 3:
                    break
            time.sleep(0.3)
        c.wait_members(3, timeout=30)
        c.wait_redundant(timeout=60)
        assert read(c, "Z", 2) == b"carry-on" + data[8:]
    finally:
        c.stop()
