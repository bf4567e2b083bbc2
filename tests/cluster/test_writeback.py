"""Writeback (sheep/server/writeback.py): CMD_CACHE writes are made durable by FLUSH_VDI,
which every node carries out as FLUSH_PEER, whichever sheep the writes went through."""
from __future__ import annotations

import os
import re

from sheep.client.api import Client
from sheep.client.vdi import VdiClient
from sheep.proto.constants import Flag, Op, Res
from sheep.proto.oid import vid_to_vdi_oid

MB = 1 << 20


def flushed(sheep) -> int:
    """Objects this sheep has fdatasynced for flushes so far (its debug log says)."""
    return sum(int(n) for n in re.findall(r"flushed (\d+) objects", sheep.log()))


def flush_vdi(cluster, vid: int, via: int) -> int:
    with cluster.client(via) as c:
        req = Client.obj_request(Op.FLUSH_VDI, vid_to_vdi_oid(vid), 0, flags=Flag.CMD_CACHE)
        rsp, _ = c.conn.call(req)
        return rsp.result


def cluster_with_vdi(make_cluster, copies: int, size: int, **open_args):
    """A 3-node cluster with copies ``copies``, the VDI Alice and a QEMU-style handle on it."""
    cluster = make_cluster(3)
    cluster.format(copies)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", size).vdi_id
    return cluster, vid, VdiClient.open("Alice", port=cluster.nodes[0].port, **open_args)


def test_flush_reaches_every_node_that_holds_cached_writes(make_cluster):
    cluster, vid, h = cluster_with_vdi(make_cluster, 3, 32 * MB)
    data = os.urandom(12 * MB)
    try:
        assert h.flags & Flag.CMD_CACHE  # QEMU's default writeback mode
        h.write(0, data)
        before = [flushed(s) for s in cluster.nodes]
        # the flush goes through another sheep than the writes: it must still cover them
        assert flush_vdi(cluster, vid, via=1) == Res.SUCCESS
        after = [flushed(s) for s in cluster.nodes]
        # copies=3 on 3 nodes: every node holds all 3 data objects and the inode
        assert all(a - b >= 3 for a, b in zip(after, before)), (before, after)
        # a second flush has nothing left to do
        assert flush_vdi(cluster, vid, via=2) == Res.SUCCESS
        assert [flushed(s) for s in cluster.nodes] == after
        h.flush()  # the client's own flush answers SUCCESS and keeps CACHE mode
        assert h.flags & Flag.CMD_CACHE
    finally:
        h.close()
    assert cluster.dog("vdi", "read", "Alice", "0", str(len(data))).stdout == data


def test_direct_writes_leave_nothing_to_flush(make_cluster):
    cluster, vid, h = cluster_with_vdi(make_cluster, 2, 16 * MB, direct=True)
    try:
        assert h.flags & Flag.CMD_DIRECT and not h.flags & Flag.CMD_CACHE
        h.write(0, os.urandom(6 * MB))
    finally:
        h.close()
    before = [flushed(s) for s in cluster.nodes]
    assert flush_vdi(cluster, vid, via=0) == Res.SUCCESS
    assert [flushed(s) for s in cluster.nodes] == before  # synchronous writes: none dirty


def test_flush_after_a_node_died_succeeds_without_it(make_cluster):
    cluster, vid, h = cluster_with_vdi(make_cluster, 3, 16 * MB)
    data = os.urandom(8 * MB)
    try:
        h.write(0, data)
        cluster.nodes[2].kill9()  # its cached writes are its page cache's: still replicated
        assert flush_vdi(cluster, vid, via=0) == Res.SUCCESS
    finally:
        h.close()
    cluster.wait_members(2)
    assert cluster.dog("vdi", "read", "Alice", "0", str(len(data))).stdout == data


def test_dog_vdi_write_w_flushes(make_cluster):
    """`dog vdi write -w` writes with CMD_CACHE, so it must flush before it exits."""
    cluster = make_cluster(3)
    cluster.format(3)
    cluster.dog("vdi", "create", "Alice", "16M")
    data = os.urandom(5 * MB)
    before = [flushed(s) for s in cluster.nodes]
    cluster.dog("vdi", "write", "-w", "Alice", "0", str(len(data)), input=data)
    after = [flushed(s) for s in cluster.nodes]
    assert all(a - b >= 2 for a, b in zip(after, before)), (before, after)
    assert cluster.dog("vdi", "read", "Alice", "0", str(len(data))).stdout == data
