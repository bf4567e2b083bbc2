"""LOCAL_OBJ (sheep/server/shortcircuit.py) on real sheep: who grants what, what a grant
names, and when the lease generation moves."""
from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from frontends.nbd.routing import RoutedConnection, Router
from sheep.client.api import Client
from sheep.client.shortcircuit import ShortCircuit
from sheep.client.sync import Connection
from sheep.client.volume import Volume
from sheep.proto.constants import Op, Res
from sheep.proto.header import ObjArgs, Request
from sheep.proto.oid import (
    data_vid_offset, oid_str, vid_to_attr_oid, vid_to_data_oid, vid_to_vdi_oid,
)
from sheep.proto.placement import Ring
from sheep.proto.shortcircuit import (
    GRANT_CREATE, GRANT_DIR, GRANT_WRITE, LEASE_NAME, MAX_GRANT, Grant, decode_lease,
)

from .harness import wait_until

MB = 1 << 20


def ask(cluster, node: int, oid: int, flags: int = 0, copies: int = 0, length: int = MAX_GRANT):
    with cluster.client(node) as c:
        return c.call(Request(Op.LOCAL_OBJ, flags, length, args=ObjArgs(oid=oid, copies=copies)))


def owners(cluster, oid: int, copies: int) -> list[int]:
    """Indexes of the nodes that own ``oid``."""
    with cluster.client() as c:
        ports = [n.nid.port for n in Ring(c.get_node_list()).oid_to_nodes(oid, copies)]
    return [i for i, s in enumerate(cluster.nodes) if s.port in ports]


def lease_gen(sheep) -> int:
    return decode_lease((sheep.store / LEASE_NAME).read_bytes())[0]


def test_grants_only_what_the_node_could_serve(cluster):
    cluster.format(2)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", 16 * MB).vdi_id
    cluster.wait_quiet()  # (a recovering sheep grants nothing)
    oid = vid_to_data_oid(vid, 1)
    mine = owners(cluster, oid, 2)
    other = next(i for i in range(3) if i not in mine)

    # a hole: not without GRANT_CREATE; created (zeros, object size) with it
    assert ask(cluster, mine[0], oid, GRANT_WRITE)[0].result == Res.NO_OBJ
    rsp, data = ask(cluster, mine[0], oid, GRANT_WRITE | GRANT_CREATE)
    assert rsp.result == Res.SUCCESS
    g = Grant.decode(data)
    assert os.path.getsize(g.path) == 4 * MB and g.owners == 2
    with open(g.path, "rb") as f:
        assert f.read() == bytes(4 * MB)
    gen, token, pid = decode_lease(open(g.lease_path, "rb").read())
    assert (gen, token, pid) == (g.gen, g.token, cluster.nodes[mine[0]].pid)

    # not an owner; neither a data object nor an inode; a reply buffer too small
    assert ask(cluster, other, oid, GRANT_WRITE | GRANT_CREATE)[0].result == Res.NO_OBJ
    assert ask(cluster, mine[0], vid_to_attr_oid(vid, 0))[0].result == Res.INVALID_PARMS
    assert ask(cluster, mine[0], oid, length=8)[0].result == Res.BUFFER_SMALL

    # a snapshot's objects are granted for reading only (once the node has applied the
    # snapshot: dog hears from node 0, the others apply the cluster operation in turn)
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    wait_until("the owner refuses writes", lambda: ask(
        cluster, mine[0], oid, GRANT_WRITE)[0].result == Res.READONLY)
    assert ask(cluster, mine[0], oid)[0].result == Res.SUCCESS


def test_generation_moves_before_objects_can(cluster):
    cluster.format(3)
    cluster.wait_quiet()  # from here on, only what the test does moves the generations
    before = [lease_gen(s) for s in cluster.nodes]
    cluster.dog("vdi", "create", "Bob", "4M")  # a cluster operation, on every node
    after = [lease_gen(s) for s in cluster.nodes]
    assert all(a > b for a, b in zip(after, before))

    victim = cluster.nodes[2]
    lease = open(victim.store / LEASE_NAME, "rb")
    try:  # held while the sheep lives, free the moment it dies (kill -9 included)
        try:
            fcntl.flock(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
            raise AssertionError("the lease of a live sheep is not locked")
        except BlockingIOError:
            pass
        victim.kill9()
        fcntl.flock(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        lease.close()
    wait_until("the others see the death", lambda: all(
        lease_gen(s) > a for s, a in zip(cluster.nodes[:2], after)))

    old_token = decode_lease((victim.store / LEASE_NAME).read_bytes())[1]
    victim.start()
    cluster.wait_members(3)
    assert decode_lease((victim.store / LEASE_NAME).read_bytes())[1] != old_token


def test_directory_grant_names_the_object_directory(cluster):
    """GRANT_DIR: any node hands out its object directory, at its epoch, for a VDI that
    is not a snapshot; nothing is created by the grant itself."""
    cluster.format(2)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", 16 * MB).vdi_id
    cluster.wait_quiet()
    oid = vid_to_data_oid(vid, 1)
    flags = GRANT_WRITE | GRANT_CREATE | GRANT_DIR
    for i, node in enumerate(cluster.nodes):
        rsp, data = ask(cluster, i, oid, flags)
        assert rsp.result == Res.SUCCESS
        g = Grant.decode(data)
        assert Path(g.path) == node.obj_dirs[0]
        assert (g.owners, g.epoch, g.gen) == (3, rsp.epoch, lease_gen(node))
        assert not os.path.exists(os.path.join(g.path, oid_str(oid)))
    # a directory grant is for creating objects: asked without GRANT_CREATE, refused
    assert ask(cluster, 0, oid, GRANT_DIR | GRANT_WRITE)[0].result == Res.INVALID_PARMS
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    assert ask(cluster, 0, oid, flags)[0].result == Res.READONLY  # (dog asked node 0)


def test_client_creates_new_objects_under_directory_grants(cluster):
    """ShortCircuit makes new objects itself in every owner's directory (one LOCAL_OBJ
    per sheep, not one per object); indexed, they are what the cluster serves.  A file
    already where a hole's object goes is used, never replaced (it may hold writes of
    ours whose grant was dropped after they passed their checks)."""
    cluster.format(2)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", 16 * MB).vdi_id
    cluster.wait_quiet()
    home = cluster.nodes[0]
    addr = (home.host, home.port)
    sc = ShortCircuit()
    routes = RoutedConnection(Connection(*addr, timeout=10), Router(addr, 10))
    kept = b"\xee" * 4096  # written at offset 0 of object 0 before the client makes it
    for s in cluster.nodes:
        (s.obj_dirs[0] / oid_str(vid_to_data_oid(vid, 0))).write_bytes(kept.ljust(4 * MB, b"\0"))
    try:
        for i in range(4):
            piece = memoryview(bytes([0x41 + i]) * 4096)
            assert sc.write(routes, vid_to_data_oid(vid, i), 2, 8192, piece, lambda: None, 4 * MB)
        assert sc.created_here == 4
        for i in range(4):
            oid = vid_to_data_oid(vid, i)
            with cluster.client() as c:
                ports = {n.nid.port for n in Ring(c.get_node_list()).oid_to_nodes(oid, 2)}
            files = [d / oid_str(oid) for s in cluster.nodes for d in s.obj_dirs
                     if (d / oid_str(oid)).exists() and s.port in ports]
            assert {f.parent for f in files} == {s.obj_dirs[0] for s in cluster.nodes
                                                 if s.port in ports}
            assert all(os.path.getsize(f) == 4 * MB for f in files)
        sc.flush()  # the files and the names made here
        with Client(*addr) as c:
            vol = Volume(c, c.read_inode(vid))
            vol.index_new_objects([0, 1])  # through the sheep
            written = []

            def direct(oid: int, offset: int, entries: bytes) -> bool:
                written.append(sc.write(routes, oid, 2, offset, memoryview(entries)))
                return written[-1]
            vol.index_new_objects([2, 3], direct)  # into the inode's files, under a grant
            assert written == [True]
            sc.flush()
            assert list(c.read_inode(vid).data_vdi_id[:5]) == [vid] * 4 + [0]
            for s in cluster.nodes:  # every copy of the inode holds the entries
                inode = s.obj_dirs[0] / oid_str(vid_to_vdi_oid(vid))
                if inode.exists():
                    entries = inode.read_bytes()[data_vid_offset(0):data_vid_offset(4)]
                    assert struct.unpack("<4I", entries) == (vid,) * 4
            for i in range(4):
                got = bytes(vol.read(i * 4 * MB, 16384))
                head = kept if i == 0 else bytes(4096)
                assert got == head + bytes(4096) + bytes([0x41 + i]) * 4096 + bytes(4096)
    finally:
        sc.close()
        routes.close()


def test_inode_grant_for_index_entries(cluster):
    """LOCAL_OBJ on an inode: its owners grant the file (for a short-circuit client's
    index entries); never created, never a directory; READONLY once it is a snapshot's."""
    cluster.format(2)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", 16 * MB).vdi_id
    cluster.wait_quiet()
    oid = vid_to_vdi_oid(vid)
    mine = owners(cluster, oid, 2)
    other = next(i for i in range(3) if i not in mine)
    for i in mine:
        rsp, data = ask(cluster, i, oid, GRANT_WRITE)
        assert rsp.result == Res.SUCCESS
        g = Grant.decode(data)
        assert Path(g.path) == cluster.nodes[i].obj_dirs[0] / oid_str(oid)
        assert (g.owners, g.gen) == (2, lease_gen(cluster.nodes[i]))
    assert ask(cluster, other, oid, GRANT_WRITE)[0].result == Res.NO_OBJ
    assert ask(cluster, mine[0], oid, GRANT_WRITE | GRANT_CREATE)[0].result == Res.INVALID_PARMS
    flags = GRANT_WRITE | GRANT_CREATE | GRANT_DIR
    assert ask(cluster, mine[0], oid, flags)[0].result == Res.INVALID_PARMS
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    wait_until("every owner knows the snapshot",
               lambda: all(ask(cluster, i, oid, GRANT_WRITE)[0].result == Res.READONLY
                           for i in mine))
    assert ask(cluster, mine[0], oid)[0].result == Res.SUCCESS  # reading it is harmless


def test_snapshot_index_takes_no_new_entries(cluster):
    """An index entry pointed at a new object in a VDI that became a snapshot meanwhile
    is refused (READONLY): the writer must follow to the new working VDI, or the write
    would be acknowledged into the snapshot only.  Clearing entries (dog vdi delete of a
    snapshot) stays allowed."""
    cluster.format(1)
    with cluster.client() as c:
        vid = c.new_vdi("Alice", 16 * MB).vdi_id
        Volume(c, c.read_inode(vid)).write(0, b"x" * 4096)
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    with cluster.client() as c:
        def entry(idx: int, value: int) -> int:
            req = Client.obj_request(Op.WRITE_OBJ, vid_to_vdi_oid(vid), 4, data_vid_offset(idx),
                                     copies=1)
            return c.call(req, struct.pack("<I", value))[0].result
        assert entry(1, vid) == Res.READONLY
        # unchanged, too: it may be a short-circuit client's entry that reached the file
        # just as the snapshot came and is missing from the new working VDI
        assert entry(0, vid) == Res.READONLY
        assert entry(1, 0) == Res.SUCCESS  # clearing stays allowed
        assert c.read_inode(vid).get_vid(1) == 0
    cluster.dog("vdi", "delete", "-s", "s1", "Alice")
    out = cluster.dog("vdi", "list", "-r").stdout
    assert b"s1" not in out
