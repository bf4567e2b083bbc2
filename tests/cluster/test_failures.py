"""Nodes dying under load: the gateway retries at the next epoch, nothing acknowledged is lost."""
from __future__ import annotations

import os
import threading
import time

from sheep.client.volume import Volume


def test_kill9_during_writes_loses_nothing(cluster):
    with cluster.client(0) as c:
        c.new_vdi("A", 256 << 20)
        vol = Volume(c, c.read_inode(c.get_vdi_info("A").vdi_id))
        killer = threading.Timer(0.5, cluster.nodes[2].kill9)
        killer.start()
        acknowledged: dict[int, bytes] = {}
        n = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            off = (n % 60) * (4 << 20) + 65536 * (n % 7)  # non-overlapping slots, objects reused
            data = os.urandom(65536)
            vol.write(off, data)  # raises if the cluster ever refuses a write
            acknowledged[off] = data
            n += 1
        killer.join()
        assert cluster.nodes[2].proc.poll() is not None
        assert n > 100
        bad = [off for off, data in acknowledged.items() if vol.read(off, len(data)) != data]
        assert bad == []
    with cluster.client(1) as c:  # and through another gateway
        vol = Volume(c, c.read_inode(c.get_vdi_info("A").vdi_id))
        assert all(vol.read(off, len(d)) == d for off, d in acknowledged.items())


def test_leave_is_seen_quickly_and_bumps_epoch(cluster):
    with cluster.client(0) as c:
        assert c.cluster_info().epoch == 1
    cluster.nodes[1].kill9()
    t = time.monotonic()
    cluster.wait_members(2, timeout=5)
    assert time.monotonic() - t < 2.0
    with cluster.client(0) as c:
        ci = c.cluster_info()
        assert ci.epoch == 2 and [n.nid.port for n in ci.nodes] == sorted(
            s.port for i, s in enumerate(cluster.nodes) if i != 1)
    with cluster.client(2) as c:
        assert c.cluster_info().epoch == 2
    epochs = sorted(os.listdir(cluster.nodes[0].store / "epoch"))
    assert epochs == ["00000001", "00000002"]


def test_clean_exit_and_rejoin(cluster):
    cluster.nodes[2].stop()
    cluster.wait_members(2)
    cluster.nodes[2].start()
    cluster.wait_members(3)
    for i in range(3):
        with cluster.client(i) as c:
            assert c.cluster_info().epoch == 3
            assert len(c.get_node_list()) == 3
