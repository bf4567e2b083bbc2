"""The zookeeper cluster driver against a real ZooKeeper server."""
from __future__ import annotations

import time
import uuid

from tests.cluster.harness import Cluster


def zk_cluster(tmp_path, zk, n=3, timeout_ms=2000, cid=None, hosts=None, zk_addr="127.0.0.1") -> Cluster:
    cid = cid or f"t{uuid.uuid4().hex[:8]}"
    c = Cluster(tmp_path / cid, n, driver=f"zookeeper:{zk_addr}:{zk.port}/{cid},timeout={timeout_ms}",
                hosts=hosts)
    return c


def epoch(c: Cluster, i: int) -> int:
    with c.client(i) as cl:
        return cl.cluster_info().epoch


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
