"""sheep.client.vdi.VdiClient against real clusters: QEMU's open/read/write/snapshot/branch
flows, checked through a recording proxy (what goes on the wire), dog and raw inodes."""
from __future__ import annotations

import struct
import time

import pytest

from sheep.client.api import Client
from sheep.client.sync import SheepError
from sheep.client.vdi import VdiClient
from sheep.proto.constants import FLAG_CMD_CONN_LOCK, Flag, Op, Res
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid

from .recorder import Recorder

MB = 1 << 20
OBJ = 4 * MB


def create(cluster, name: str = "Alice", size: int = 64 * MB) -> int:
    with cluster.client() as c:
        return c.new_vdi(name, size).vdi_id


def open_(cluster, name: str = "Alice", i: int = 0, **kw) -> VdiClient:
    return VdiClient.open(name, port=cluster.nodes[i].port, **kw)


def pat(byte: int, n: int) -> bytes:
    return bytes([byte]) * n


def dog_read(cluster, name: str, offset: int, length: int, *snap: str) -> bytes:
    args = ["vdi", "read", *(["-s", snap[0]] if snap else []), name, str(offset), str(length)]
    return cluster.dog(*args).stdout


def snapshot_behind(cluster, name: str, tag: str, vid: int) -> int:
    """What `dog vdi snapshot -s TAG NAME` sends: the tag into the working inode, then
    NEW_VDI(snapid=1, base=working)."""
    with cluster.client(1) as c:
        h = c.read_inode(vid, header_only=True).header
        c.write_object(vid_to_vdi_oid(vid), tag.encode().ljust(256, b"\0"), 256)
        return c.new_vdi(name, h.vdi_size, base_vid=vid, snapid=1).vdi_id


def wait_open(cluster, name: str, deadline: float = 10, **kw) -> VdiClient:
    """Open, retrying while VDI_LOCKED: a lock dropped by a closed connection is released
    by the server after it notices the close."""
    end = time.monotonic() + deadline
    while True:
        try:
            return open_(cluster, name, **kw)
        except SheepError as e:
            if e.result != Res.VDI_LOCKED or time.monotonic() > end:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------- I/O


def test_read_write_extents_and_dog(cluster):
    vid = create(cluster)
    with open_(cluster) as h:
        assert (h.vid, h.size, h.object_size, h.is_snapshot) == (vid, 64 * MB, OBJ, False)
        assert h.flags == Flag.CMD_CACHE
        assert h.read(0, 100) == bytes(100)
        h.write(OBJ - 10, pat(0xAB, 20))  # two objects
        h.write(5 * OBJ, pat(0xCD, OBJ))  # one whole object
        assert h.read(OBJ - 12, 24) == bytes(2) + pat(0xAB, 20) + bytes(2)
        assert list(h.extents()) == [(0, 2 * OBJ, True), (2 * OBJ, 3 * OBJ, False),
                                     (5 * OBJ, OBJ, True), (6 * OBJ, 10 * OBJ, False)]
        with pytest.raises(ValueError):
            h.write(64 * MB - 1, b"xy")
        h.flush()
    assert dog_read(cluster, "Alice", OBJ - 10, 20) == pat(0xAB, 20)
    with cluster.client(2) as c:
        ino = c.read_inode(vid)
        assert [ino.get_vid(i) for i in range(7)] == [vid, vid, 0, 0, 0, vid, 0]
    with open_(cluster, i=1, readonly=True) as ro:  # another gateway, a fresh inode read
        assert ro.read(5 * OBJ, OBJ) == pat(0xCD, OBJ)
        with pytest.raises(PermissionError):
            ro.write(0, b"x")


def test_wire_sequence_open_write_discard_close(cluster):
    vid = create(cluster)
    rec = Recorder(cluster.nodes[0].port)
    rec.hold_first_reply(4)  # the I/O socket: inode read + 3 creates must be in flight together
    h = VdiClient.open("Alice", port=rec.port)
    h.write(OBJ // 2, pat(1, 2 * OBJ + 5))  # objects 0, 1, 2, all new
    h.write(OBJ, pat(2, 8))  # object 1 is ours: plain write, no index update
    assert h.discard(0, 3 * OBJ) == 3
    h.flush()
    h.close()
    io, lock = rec.requests()[:2]
    inode = vid_to_vdi_oid(vid)
    assert [(r.opcode, r.flags, r.dlen, r.copies) for r in lock] == [
        (Op.LOCK_VDI, Flag.CMD_WRITE | FLAG_CMD_CONN_LOCK, 512, 0),
        (Op.RELEASE_VDI, Flag.CMD_WRITE, 6, 0)]
    assert lock[0].payload[:6] == b"Alice\0" and lock[1].payload == b"Alice\0"
    assert lock[1].base_vdi_id == vid
    first = io[0]
    assert (first.opcode, first.oid, first.offset, first.dlen, first.copies) == (
        Op.READ_OBJ, inode, 0, 4198968, 0)
    summary = [(r.opcode, r.oid, r.offset, r.dlen) for r in io[1:]]
    assert summary == [
        (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, 0), OBJ // 2, OBJ // 2),
        (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, 1), 0, OBJ),
        (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, 2), 0, OBJ // 2 + 5),
        (Op.WRITE_OBJ, inode, 4664, 12),  # ONE index update for the range
        (Op.WRITE_OBJ, vid_to_data_oid(vid, 1), 0, 8),
        (Op.WRITE_OBJ, inode, 4664, 4), (Op.WRITE_OBJ, inode, 4668, 4), (Op.WRITE_OBJ, inode, 4672, 4),
        (Op.FLUSH_VDI, inode, 0, 0)]
    assert io[4].payload == struct.pack("<3I", vid, vid, vid)
    assert all(r.payload == bytes(4) for r in io[6:9])
    assert all(r.flags & Flag.CMD_CACHE and r.copies == 3 for r in io[1:])
    ids = [r.id for r in io]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert rec.conns[0].max_outstanding >= 3  # pipelined
    assert all(r.result == 0 for conn in rec.requests() for r in conn)
    rec.close()


def test_discard_reclaims_whole_objects_only(cluster):
    vid = create(cluster)
    with open_(cluster) as h:
        h.write(0, pat(7, 3 * OBJ))
        assert h.discard(OBJ // 2, 2 * OBJ) == 1  # only object 1 is wholly inside
        assert h.discard(8 * OBJ, OBJ) == 0  # unallocated: nothing sent
        assert h.read(0, 3 * OBJ) == pat(7, OBJ) + bytes(OBJ) + pat(7, OBJ)
    for node in cluster.nodes:
        with Client("127.0.0.1", node.port) as c:
            assert not c.exist(vid_to_data_oid(vid, 1))
            assert c.exist(vid_to_data_oid(vid, 0))
    assert dog_read(cluster, "Alice", OBJ, 16) == bytes(16)


def test_resize_and_flush(cluster):
    create(cluster, size=8 * MB)
    with open_(cluster) as h:
        with pytest.raises(ValueError, match="shrinking"):
            h.resize(4 * MB)
        with pytest.raises(ValueError, match="too big"):
            h.resize(OBJ * (1 << 20) + 1)
        h.resize(16 * MB)
        h.write(15 * MB, b"tail")
        h.flush()
    with open_(cluster, i=2) as h:
        assert h.size == 16 * MB and h.read(15 * MB, 4) == b"tail"


def test_unix_socket_and_direct_mode(cluster):
    create(cluster)
    sock = str(cluster.nodes[1].store / "sock")
    with VdiClient.open("Alice", unix_path=sock, direct=True, lock=False) as h:
        assert h.flags == Flag.CMD_DIRECT
        h.write(0, b"unix")
        h.flush()  # nothing to send in DIRECT mode
    assert dog_read(cluster, "Alice", 0, 4) == b"unix"


def test_open_errors_use_qemu_text(cluster):
    with pytest.raises(SheepError) as e:
        open_(cluster, "Nobody")
    assert e.value.result == Res.NO_VDI
    assert str(e.value) == "cannot get vdi info, No VDI found, Nobody 0 "
    create(cluster)
    with pytest.raises(SheepError) as e:
        open_(cluster, tag="nosuch")
    assert e.value.result == Res.NO_TAG
    h = open_(cluster)
    h.close()
    h.close()  # idempotent
    assert h.closed and repr(h) == "<VdiClient 'Alice' closed>"
    with pytest.raises(ValueError, match="closed"):
        h.read(0, 1)


# ---------------------------------------------------------------- snapshots and branches


def test_snapshot_then_cow(cluster):
    create(cluster, "Bob")
    with open_(cluster, "Bob") as h:
        h.write(0, pat(1, 2 * OBJ))
        old = h.vid
        assert h.snapshot("snap1", vm_state_size=123) == old
        new = h.vid
        assert new == old + 1 and h.inode.get_vid(0) == old  # index kept in memory
        h.write(10, b"cow")
    with cluster.client(1) as c:
        snap, work = c.read_inode(old), c.read_inode(new)
    assert snap.header.tag == "snap1" and snap.header.snap_ctime and snap.header.vm_state_size == 123
    assert snap.gref_of(0) == (0, 1) and snap.gref_of(1) == (0, 1)
    assert (work.header.parent_vdi_id, work.header.snap_id, work.header.snap_ctime) == (old, 2, 0)
    assert work.header.create_time == snap.header.snap_ctime
    assert [work.get_vid(0), work.get_vid(1)] == [new, old]
    assert work.gref_of(0) == (0, 0) and work.gref_of(1) == (1, 0)  # COW released entry 0
    assert dog_read(cluster, "Bob", 8, 6) == b"\x01\x01cow\x01"
    assert dog_read(cluster, "Bob", 8, 6, "snap1") == pat(1, 6)
    with open_(cluster, "Bob", tag="snap1", readonly=True) as s1, \
            open_(cluster, "Bob", snapid=1, readonly=True) as s2:
        assert s1.is_snapshot and s1.vid == s2.vid == old
        assert s1.read(0, 16) == pat(1, 16)
    with open_(cluster, "Bob", tag="snap1") as s:
        with pytest.raises(PermissionError, match="snapshot of a snapshot"):
            s.snapshot("again")


def test_write_to_snapshot_handle_creates_branch(cluster):
    vid = create(cluster)
    with open_(cluster) as h:
        h.write(0, pat(1, OBJ))
        h.snapshot("s1")
        h.write(0, pat(2, 8))
        working = h.vid
    with open_(cluster, tag="s1") as s:
        assert s.is_snapshot and s.vid == vid
        s.write(4, b"br")  # DEL_VDI(working) + NEW_VDI(base=s1) + inode read, then COW
        assert not s.is_snapshot and s.vid == working + 1
        assert s.read(0, 8) == b"\x01" * 4 + b"br\x01\x01"
        branch = s.vid
    with cluster.client(2) as c:
        assert c.get_vdi_info("Alice").vdi_id == branch
        b = c.read_inode(branch)
        assert (b.header.parent_vdi_id, b.header.snap_id) == (vid, 2)  # highest remaining + 1
        assert c.read_inode(working, header_only=True).header.name == ""  # deleted
    assert dog_read(cluster, "Alice", 0, 8, "s1") == pat(1, 8)


def test_goto_and_vmstate(cluster):
    create(cluster)
    with open_(cluster) as h:
        h.write(0, pat(1, 16))
        h.save_vmstate(0, b"state-one")
        h.save_vmstate(9, b"+more")
        snap = h.snapshot("vm1", vm_state_size=14)
        h.write(0, pat(2, 16))
        new = h.goto(tag="vm1")
        assert h.inode.header.parent_vdi_id == snap and h.read(0, 16) == pat(1, 16)
        assert h.load_vmstate(0, 14) == b"state-one+more"
        with pytest.raises(SheepError):
            h.goto(tag="missing")
        assert h.vid == new  # unchanged after a failed goto
    with cluster.client() as c:
        oid = (1 << 62) | (snap << 32)
        assert bytes(c.read_object(oid, 0, 14)) == b"state-one+more"
    assert dog_read(cluster, "Alice", 0, 4) == pat(1, 4)


def test_readonly_retry_follows_a_snapshot_taken_behind_us(cluster):
    vid = create(cluster)
    rec = Recorder(cluster.nodes[0].port)
    with VdiClient.open("Alice", port=rec.port) as h:
        h.write(0, pat(1, 2 * OBJ))
        snapshot_behind(cluster, "Alice", "behind", vid)
        h.write(OBJ - 2, b"abcd")  # both objects are now the snapshot's: READONLY, retarget
        assert h.vid == vid + 1 and not h.is_snapshot
        assert h.read(OBJ - 4, 8) == b"\x01\x01abcd\x01\x01"
    io = rec.requests()[0]
    ro = [r for r in io if r.result == Res.READONLY]
    assert ro and all(r.oid >> 32 == vid for r in ro)
    cow = [r for r in io if r.opcode == Op.CREATE_AND_WRITE_OBJ and r.flags & Flag.CMD_COW]
    assert [(r.oid, r.cow_oid) for r in cow] == [
        (vid_to_data_oid(vid + 1, i), vid_to_data_oid(vid, i)) for i in (0, 1)]
    idx = [r for r in io if r.oid == vid_to_vdi_oid(vid + 1)]
    assert [(r.offset, r.payload) for r in idx] == [(4664, struct.pack("<2I", vid + 1, vid + 1))]
    assert dog_read(cluster, "Alice", OBJ - 2, 4, "behind") == pat(1, 4)
    assert dog_read(cluster, "Alice", OBJ - 2, 4) == b"abcd"
    rec.close()


# ---------------------------------------------------------------- locks (USE_LOCK clusters)


def test_lock_excludes_and_close_releases(lock_cluster):
    create(lock_cluster)
    h = open_(lock_cluster)
    for i in range(3):
        with pytest.raises(SheepError) as e:
            open_(lock_cluster, i=i, readonly=True)
        assert e.value.result == Res.VDI_LOCKED
        assert str(e.value) == "cannot get vdi info, VDI is already locked, Alice 0 "
    with open_(lock_cluster, lock=False, readonly=True) as peek:
        assert peek.vid == h.vid
    h.close()
    open_(lock_cluster, i=1).close()


def test_lock_dies_with_the_connection(lock_cluster):
    create(lock_cluster)
    h = open_(lock_cluster)
    h._disconnect()  # a client that dies: no RELEASE_VDI is sent
    wait_open(lock_cluster, "Alice").close()


def test_lock_follows_snapshot_and_snapshots_are_shared(lock_cluster):
    vid = create(lock_cluster)
    h = open_(lock_cluster)
    h.write(0, b"data")
    assert h.snapshot("s1") == vid
    with pytest.raises(SheepError) as e:
        open_(lock_cluster, i=2)
    assert e.value.result == Res.VDI_LOCKED  # the lock moved to the new working VDI
    with open_(lock_cluster, tag="s1") as r1, open_(lock_cluster, snapid=1, i=1) as r2:
        assert r1.read(0, 4) == r2.read(0, 4) == b"data"
    h.close()  # RELEASE of the current vid frees it
    open_(lock_cluster, i=1).close()


def test_conn_lock_that_moved_dies_with_the_connection(lock_cluster):
    create(lock_cluster)
    h = open_(lock_cluster)
    h.snapshot("s1")  # lock: vid -> vid + 1; the connection still remembers vid
    h._disconnect()
    wait_open(lock_cluster, "Alice", deadline=3).close()


def test_goto_keeps_the_working_vdi_locked(lock_cluster):
    create(lock_cluster)
    with open_(lock_cluster) as h:
        h.snapshot("s1")
        h.goto(tag="s1")
        with pytest.raises(SheepError) as e:
            open_(lock_cluster, i=1)
        assert e.value.result == Res.VDI_LOCKED
