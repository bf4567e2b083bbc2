"""Every sequence QEMU's sheepdog driver sends (qemu-driver.md), replayed byte for byte by
the hand-written client in qemu_wire.py, against a real 3-node cluster.

Results are checked with `dog vdi read`, raw inode fields (objects.md §3, §6, §8) and
EXIST on every node.  Each step uses the gateway a separate qemu-img run could use.
"""
from __future__ import annotations

import time

import pytest

from .qemu_wire import (
    CACHE, COW, CREATE_AND_WRITE_OBJ, DEL_VDI, GET_VDI_INFO, HDR, NO_VDI, READ_OBJ, READONLY,
    NO_TAG, SUCCESS, VDI_EXIST, VDI_LOCKED, WRITE, WRITE_OBJ, QemuError, QemuImage, data_oid, do_req,
    get_cluster_default, held_by, inode_oid, name_tag, obj_union, qemu_create, qemu_snapshot_list,
    read_entries, read_gref, read_header, rsp_vid, vdi_union, vmstate_oid,
)

MB = 1 << 20
OBJ = 4 * MB
ALICE = 0x15D167


def pat(byte: int, n: int) -> bytes:
    return bytes([byte]) * n


def ports(cluster) -> list[int]:
    return [n.port for n in cluster.nodes]


def dog_read(cluster, name: str, offset: int, length: int, snap: str | None = None) -> bytes:
    snap_opt = ["-s", snap] if snap else []
    return cluster.dog("vdi", "read", *snap_opt, name, str(offset), str(length)).stdout


def get_vdi_info(port: int, name: str, snapid: int = 0, tag: str = "") -> tuple[int, int]:
    rsp, _ = do_req(port, 0x01, GET_VDI_INFO, WRITE, 512, vdi_union(snapid=snapid), name_tag(name, tag))
    return rsp["result"], rsp_vid(rsp)


# ---------------------------------------------------------------- create / open / I/O / close


def test_create(cluster):
    p0, p1, p2 = ports(cluster)
    assert get_cluster_default(p0) == (3, 0, 22)
    before = int(time.time())
    assert qemu_create(p0, "Alice", 64 * MB) == ALICE
    with pytest.raises(QemuError) as e:  # `VDI exists already, Alice`
        qemu_create(p1, "Alice", 64 * MB)
    assert e.value.result == VDI_EXIST
    h = read_header(p2, ALICE)
    assert (h["name"], h["tag"], h["vdi_size"], h["nr_copies"], h["block_size_shift"]) == (
        "Alice", "", 64 * MB, 3, 22)
    assert (h["snap_id"], h["vdi_id"], h["parent_vdi_id"], h["snap_ctime"]) == (1, ALICE, 0, 0)
    assert before <= h["create_time"] >> 32 <= time.time()
    # -o redundancy=2,object_size=1M sends copies=2 shift=20 and no GET_CLUSTER_DEFAULT
    small = qemu_create(p1, "Small", 8 * MB, copies=2, shift=20)
    h = read_header(p0, small)
    assert (h["nr_copies"], h["block_size_shift"], h["copy_policy"]) == (2, 20, 0)
    # -o redundancy=2:1 sends copies = 2+1 and copy_policy = ((2/2)<<4)+1 = 17
    ec = qemu_create(p2, "EcVdi", 8 * MB, copies=3, policy=17)
    assert ec == 0xA12A16
    h = read_header(p0, ec)
    assert (h["copy_policy"], h["nr_copies"]) == (17, 3)


def test_open_write_read_close(cluster):
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p1, "Alice")
    assert (img.vid, img.size, img.copies, img.shift, img.is_snapshot) == (vid, 64 * MB, 3, 22, False)
    data = bytes(range(256)) * ((OBJ + 1024) // 256)  # objects 0, 1 and 2
    assert img.write(OBJ - 512, data) == {0: SUCCESS, 1: SUCCESS, 2: SUCCESS}
    sent = [(r["id"], r["opcode"], r["oid"], r["offset"], r["dlen"]) for r in img.sent]
    assert sent == [  # observed: 3 CREATE_AND_WRITE_OBJ, then ONE 12-byte index write at 4664
        (0, CREATE_AND_WRITE_OBJ, data_oid(vid, 0), OBJ - 512, 512),
        (1, CREATE_AND_WRITE_OBJ, data_oid(vid, 1), 0, OBJ),
        (2, CREATE_AND_WRITE_OBJ, data_oid(vid, 2), 0, 512),
        (3, WRITE_OBJ, inode_oid(vid), HDR, 12)]
    assert all(r["flags"] == WRITE | CACHE and r["copies"] == 3 for r in img.sent)
    assert sorted(img.reply_order) == [0, 1, 2, 3] and img.reply_order[3] == 3
    assert read_entries(p2, vid, 0, 4) == [vid, vid, vid, 0]
    assert [read_gref(p0, vid, i) for i in range(3)] == [(0, 0)] * 3

    img.write(OBJ, b"plain")  # object 1 is ours: WRITE_OBJ, no index update
    assert [(r["opcode"], r["oid"]) for r in img.sent[4:]] == [(WRITE_OBJ, data_oid(vid, 1))]
    n = len(img.sent)
    expect = data[:512] + b"plain" + data[517:]
    assert img.read(OBJ - 512, len(data)) == expect
    assert [r["opcode"] for r in img.sent[n:]] == [READ_OBJ] * 3
    n = len(img.sent)
    assert img.read(10 * OBJ, 4096) == bytes(4096) and len(img.sent) == n  # hole: nothing sent
    assert dog_read(cluster, "Alice", OBJ - 512, 16) == data[:16]
    assert dog_read(cluster, "Alice", OBJ, 8) == b"plain" + data[517:520]
    assert img.close() == SUCCESS
    # a second opener of a cluster without --lock is not refused
    again, other = QemuImage(p2, "Alice"), QemuImage(p0, "Alice")
    assert again.index(2) == vid and other.read(OBJ, 5) == b"plain"
    assert again.close() == other.close() == SUCCESS


def test_discard_flush_and_resize(cluster):
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 8 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(3, 2 * OBJ))
    # discard: a zero index entry per wholly covered, allocated object (§5.6)
    assert img.discard(0, OBJ + 100) == [0]
    r = img.sent[-1]
    assert (r["opcode"], r["flags"], r["oid"], r["offset"], r["payload"]) == (
        WRITE_OBJ, WRITE | CACHE, inode_oid(vid), HDR, bytes(4))
    assert held_by(ports(cluster), data_oid(vid, 0)) == [False] * 3  # reclaimed
    assert held_by(ports(cluster), data_oid(vid, 1)) == [True] * 3
    assert read_entries(p1, vid, 0, 2) == [0, vid] and read_gref(p1, vid, 0) == (0, 0)
    assert dog_read(cluster, "Alice", 0, 16) == bytes(16)
    assert dog_read(cluster, "Alice", OBJ, 16) == pat(3, 16)
    # flush: FLUSH_VDI flags=CACHE, dlen 0, on the I/O socket; SUCCESS keeps CACHE mode
    assert img.flush() == SUCCESS
    r = img.sent[-1]
    assert (r["flags"], r["oid"], r["dlen"], r["copies"]) == (CACHE, inode_oid(vid), 0, 3)
    img.write(5, b"after-flush")
    assert img.sent[-2]["flags"] == WRITE | CACHE
    # resize: the whole 4664-byte header rewritten with the new size (§5.7)
    img.truncate(16 * MB)
    h = read_header(p2, vid)
    assert (h["vdi_size"], h["name"], h["snap_id"]) == (16 * MB, "Alice", 1)
    img.write(12 * MB, b"grown")
    assert img.close() == SUCCESS
    reopened = QemuImage(p1, "Alice")
    assert reopened.size == 16 * MB and reopened.read(12 * MB, 5) == b"grown"
    assert reopened.read(0, 16) == pat(0, 5) + b"after-flush"
    reopened.close()
    assert dog_read(cluster, "Alice", 12 * MB, 5) == b"grown"


# ---------------------------------------------------------------- snapshots


def test_cow_after_snapshot(cluster):
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(0x11, 2 * OBJ))
    new = img.snapshot_create("snap1", vm_state_size=0, vm_clock_nsec=0)
    assert new == vid + 1 and img.vid == new and img.index(0) == vid  # header only, index kept
    snap, work = read_header(p1, vid), read_header(p1, new)
    assert snap["snap_ctime"] and snap["tag"] == "snap1" and snap["snap_id"] == 1
    assert (work["parent_vdi_id"], work["snap_id"], work["snap_ctime"], work["tag"]) == (vid, 2, 0, "")
    assert work["create_time"] == snap["snap_ctime"]
    assert read_entries(p2, new, 0, 3) == [vid, vid, 0]
    assert [read_gref(p2, vid, i) for i in (0, 1)] == [(0, 1)] * 2
    assert [read_gref(p2, new, i) for i in (0, 1)] == [(1, 0)] * 2

    n = len(img.sent)
    assert img.write(100, b"cow!") == {0: SUCCESS}
    c, idx = img.sent[n], img.sent[n + 1]
    assert (c["opcode"], c["flags"], c["oid"], c["cow_oid"], c["offset"], c["dlen"]) == (
        CREATE_AND_WRITE_OBJ, WRITE | COW | CACHE, data_oid(new, 0), data_oid(vid, 0), 100, 4)
    assert (idx["oid"], idx["offset"], idx["payload"]) == (inode_oid(new), HDR, new.to_bytes(4, "little"))
    assert read_entries(p1, new, 0, 2) == [new, vid]
    assert read_gref(p1, new, 0) == (0, 0)  # the inherited reference was released
    assert held_by(ports(cluster), data_oid(vid, 0)) == [True] * 3  # the snapshot keeps its object
    assert dog_read(cluster, "Alice", 96, 12) == pat(0x11, 4) + b"cow!" + pat(0x11, 4)
    assert dog_read(cluster, "Alice", 96, 12, "snap1") == pat(0x11, 12)
    assert dog_read(cluster, "Alice", 96, 12, "1") == pat(0x11, 12)
    # writing the snapshot's object directly: READONLY (plain write and create alike)
    img.submit(WRITE_OBJ, WRITE | CACHE, 4, obj_union(data_oid(vid, 1), 0, 3, 0), b"nope")
    img.submit(CREATE_AND_WRITE_OBJ, WRITE | CACHE, 4, obj_union(data_oid(vid, 1), 0, 3, 0), b"nope")
    assert sorted(img.collect().values()) == [(READONLY, b"")] * 2
    assert img.close() == SUCCESS


def test_readonly_retry_after_snapshot_behind_our_back(cluster):
    """§5.12: a second client snapshots the VDI while the first has it open."""
    p0, p1, _ = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    a = QemuImage(p0, "Alice")
    a.write(0, pat(1, OBJ))
    b = QemuImage(p1, "Alice")
    b.snapshot_create("behind")
    b.close()
    assert a.write(10, b"retry") == {0: READONLY}  # a still believes vid is the working VDI
    assert a.sent[-1]["oid"] == data_oid(vid, 0)
    a.reload_inode(0, "")  # GET_VDI_INFO(name, snapid 0) + header; the index stays
    assert a.vid == vid + 1 and a.index(0) == vid
    assert a.write(10, b"retry") == {0: SUCCESS}  # resent as a COW create
    c = a.sent[-2]
    assert (c["opcode"], c["flags"] & COW, c["oid"], c["cow_oid"]) == (
        CREATE_AND_WRITE_OBJ, COW, data_oid(vid + 1, 0), data_oid(vid, 0))
    assert a.close() == SUCCESS
    assert dog_read(cluster, "Alice", 8, 9) == pat(1, 2) + b"retry" + pat(1, 2)
    assert dog_read(cluster, "Alice", 8, 9, "behind") == pat(1, 9)


def test_snapshot_list(cluster):
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    qemu_create(p0, "Bob", 64 * MB)
    t0 = int(time.time())
    img = QemuImage(p1, "Alice")
    img.write(0, b"one")
    img.snapshot_create("snap1")
    img.write(0, b"two")
    img.snapshot_create("snap2", vm_state_size=780 * 1024, vm_clock_nsec=123456789)
    img.close()
    listed = qemu_snapshot_list(p2, "Alice")
    assert [(s["snap_id"], s["tag"], s["vdi_id"]) for s in listed] == [(1, "snap1", vid), (2, "snap2", vid + 1)]
    assert (listed[1]["vm_state_size"], listed[1]["vm_clock_nsec"]) == (780 * 1024, 123456789)
    assert all(t0 <= s["snap_ctime"] >> 32 <= time.time() for s in listed)
    assert qemu_snapshot_list(p0, "Bob") == []
    assert get_vdi_info(p0, "Alice") == (SUCCESS, vid + 2)


def test_clone_with_backing_file(cluster):
    """qemu-img create -b sheepdog:…:Alice:base -F sheepdog sheepdog:…:Bob (§5.1)."""
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(0x22, OBJ + 10))
    img.snapshot_create("base")
    img.close()
    sizes = []
    for port in (p1, p2):  # the backing image is opened twice, each open locks and releases
        backing = QemuImage(port, "Alice", tag="base")
        assert backing.vid == vid and backing.snap_ctime != 0  # else: cannot clone from a non snapshot vdi
        sizes.append(backing.size)
        assert backing.close() == SUCCESS
    bob = qemu_create(p1, "Bob", sizes[0], base=vid)
    assert bob == 0x0316B4
    h = read_header(p2, bob)
    assert (h["name"], h["parent_vdi_id"], h["snap_id"], h["snap_ctime"], h["vdi_size"]) == (
        "Bob", vid, 1, 0, 64 * MB)
    assert read_entries(p2, bob, 0, 3) == [vid, vid, 0]
    assert read_gref(p0, bob, 0) == (1, 0) and read_gref(p0, vid, 0) == (0, 2)  # working Alice + Bob
    clone = QemuImage(p2, "Bob")
    assert clone.read(0, 8) == pat(0x22, 8)
    assert clone.sent[-1]["oid"] == data_oid(vid, 0)  # read through the base's object
    clone.write(0, b"bob")
    assert (clone.sent[-2]["oid"], clone.sent[-2]["cow_oid"]) == (data_oid(bob, 0), data_oid(vid, 0))
    clone.close()
    assert dog_read(cluster, "Bob", 0, 8) == b"bob" + pat(0x22, 5)
    assert dog_read(cluster, "Bob", OBJ, 12) == pat(0x22, 10) + bytes(2)
    assert dog_read(cluster, "Alice", 0, 8, "base") == pat(0x22, 8)


def test_snapshot_goto(cluster):
    """qemu-img snapshot -a (§5.10).  sheep 1.0 answers the NEW_VDI with VDI_EXIST (bug A)."""
    p0, p1, p2 = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(1, 2 * OBJ))
    working = img.snapshot_create("s1")
    img.write(0, pat(2, 8))  # the working VDI's own object 0
    img.close()
    g = QemuImage(p1, "Alice")
    g.reload_inode(0, "s1")  # GET_VDI_INFO(name+tag) + header: the snapshot's header in memory
    assert g.vid == vid and g.index(0) == working  # the index is still the working VDI's
    assert g.sd_delete()  # DEL_VDI of the working VDI, index NOT zeroed first
    rsp, _ = do_req(p2, 0, DEL_VDI, WRITE, 256, vdi_union(base=vid), name_tag("Alice")[:256])
    assert rsp["result"] == NO_VDI  # QEMU: `Alice was already deleted`, counted as success
    new = g.do_sd_create(0)  # NEW_VDI(snapid 0, base = snapshot): the branch
    assert new == working + 1
    rsp, body = do_req(p1, 0, READ_OBJ, CACHE, 4198968, obj_union(inode_oid(new), 0, 3))
    assert rsp["result"] == SUCCESS and len(body) == 4198968
    g.inode = bytearray(body)
    assert (g.vid, g.parent, g.index(0), g.index(1)) == (new, vid, vid, vid)
    h = read_header(p2, new)
    assert (h["name"], h["snap_id"], h["parent_vdi_id"], h["snap_ctime"]) == ("Alice", 2, vid, 0)
    gone = read_header(p2, working)  # the old working VDI is really deleted
    assert (gone["name"], gone["vdi_size"]) == ("", 0)
    assert held_by(ports(cluster), data_oid(working, 0)) == [False] * 3  # its own object is freed
    assert held_by(ports(cluster), data_oid(vid, 0)) == [True] * 3
    assert get_vdi_info(p0, "Alice") == (SUCCESS, new)
    # counts only grow (snapshot child, then the branch); releases go to the ledger
    assert read_gref(p0, vid, 0) == (0, 2)
    assert g.read(0, 8) == pat(1, 8)
    g.write(0, b"new")
    assert (g.sent[-2]["oid"], g.sent[-2]["cow_oid"]) == (data_oid(new, 0), data_oid(vid, 0))
    g.close()
    assert dog_read(cluster, "Alice", 0, 8) == b"new" + pat(1, 5)
    assert [s["tag"] for s in qemu_snapshot_list(p0, "Alice")] == ["s1"]
    # goto again through the helper: DEL_VDI / NEW_VDI / full inode read
    g2 = QemuImage(p2, "Alice")
    assert g2.goto(tag="s1") == new + 1 and g2.read(0, 8) == pat(1, 8)
    g2.close()


def test_first_write_to_snapshot_opened_image_branches(cluster):
    p0, p1, _ = ports(cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(1, OBJ))
    working = img.snapshot_create("s1")
    img.close()
    s = QemuImage(p1, "Alice", tag="s1")
    assert s.is_snapshot and s.vid == vid
    assert s.read(0, 4) == pat(1, 4)
    assert s.write(8, b"branch") == {0: SUCCESS}  # DEL/NEW/READ first, then the COW create
    assert not s.is_snapshot and s.vid == working + 1 and s.parent == vid
    s.close()
    assert dog_read(cluster, "Alice", 6, 10) == pat(1, 2) + b"branch" + pat(1, 2)
    assert dog_read(cluster, "Alice", 6, 10, "s1") == pat(1, 10)
    by_id = QemuImage(p0, "Alice", snapid=1)
    assert by_id.vid == vid and by_id.read(8, 6) == pat(1, 6)
    by_id.close()


def test_snapshot_delete_and_qemu_bug_b(cluster):
    """qemu-img snapshot -d (§5.11).  QEMU zeroes the index of the OPEN image (the working
    VDI), not the snapshot's (bug B): a wire-compatible server must honour those writes like
    any discard, so the working VDI's zeroed entries are released and it reads zeros.  The
    snapshot itself is deleted for real and the data of every OTHER VDI stays intact."""
    p0, p1, p2 = ports(cluster)
    a0 = qemu_create(p0, "Alice", 64 * MB)
    img = QemuImage(p0, "Alice")
    img.write(0, pat(1, 2 * OBJ))  # a0 owns objects 0 and 1
    w1 = img.snapshot_create("s1")
    img.write(0, pat(2, 8))  # w1 owns object 0
    w2 = img.snapshot_create("s2")
    img.close()
    bob = qemu_create(p1, "Bob", 64 * MB, base=a0)  # a clone of s1
    assert [s["tag"] for s in qemu_snapshot_list(p2, "Alice")] == ["s1", "s2"]

    d = QemuImage(p1, "Alice")  # qemu-img snapshot -d 1 Alice
    assert d.vid == w2 and d.snapshot_delete("1") == SUCCESS
    assert d.close() == SUCCESS
    assert [s["tag"] for s in qemu_snapshot_list(p2, "Alice")] == ["s2"]
    assert (read_header(p0, a0)["name"], get_vdi_info(p0, "Alice", snapid=1)[0]) == ("", NO_TAG)
    # bug B: the working VDI's entries were zeroed and released
    assert read_entries(p0, w2, 0, 2) == [0, 0]
    assert dog_read(cluster, "Alice", 0, 16) == bytes(16)
    # the other VDIs are intact
    assert dog_read(cluster, "Alice", 0, 16, "s2") == pat(2, 8) + pat(1, 8)
    assert dog_read(cluster, "Alice", OBJ, 16, "s2") == pat(1, 16)
    assert dog_read(cluster, "Bob", 0, 16) == pat(1, 16)
    assert dog_read(cluster, "Bob", OBJ, 16) == pat(1, 16)
    for oid in (data_oid(a0, 0), data_oid(a0, 1), data_oid(w1, 0)):
        assert held_by(ports(cluster), oid) == [True] * 3

    # the working index is now all zeros: remove_objects sends one 0-byte WRITE_OBJ
    d = QemuImage(p2, "Alice")
    assert d.snapshot_delete("s2") == SUCCESS
    d.close()
    assert qemu_snapshot_list(p0, "Alice") == []
    assert held_by(ports(cluster), data_oid(w1, 0)) == [False] * 3  # only s2 referenced it
    assert dog_read(cluster, "Bob", 0, 8) == pat(1, 8)
    assert dog_read(cluster, "Bob", OBJ, 8) == pat(1, 8)
    assert held_by(ports(cluster), data_oid(a0, 0)) == [True] * 3  # Bob still needs s1's objects
    assert read_header(p0, bob)["parent_vdi_id"] == a0


def test_vmstate_save_and_load(cluster):
    """HMP savevm / loadvm (§5.13, §5.8, §5.10), with 1 MiB objects to cross boundaries."""
    p0, p1, _ = ports(cluster)
    vid = qemu_create(p0, "Vm", 16 * MB, shift=20)
    img = QemuImage(p0, "Vm")
    img.write(0, b"disk-before")
    state = bytes((i * 7 + i // 251) & 0xFF for i in range(2 * MB + 300000))
    pos = 0
    for n in [18, 144840] + [300000] * 7 + [len(state) - 18 - 144840 - 2100000]:
        img.vmstate(pos, state[pos:pos + n])  # one fresh socket per chunk
        pos += n
    assert pos == len(state)
    img.snapshot_create("vm1", vm_state_size=len(state), vm_clock_nsec=42)
    rsp, body = do_req(p1, 0, READ_OBJ, 0, 100, obj_union(vmstate_oid(vid, 2)))
    assert rsp["result"] == SUCCESS and body == state[2 * MB:2 * MB + 100]
    img.write(0, b"disk-after!")
    img.goto(tag="vm1")  # loadvm: branch from the snapshot, VM state from the parent
    assert img.parent == vid
    assert img.vmstate(0, length=len(state)) == state
    assert img.read(0, 11) == b"disk-before"
    img.close()
    vm1, = qemu_snapshot_list(p1, "Vm")
    assert (vm1["tag"], vm1["vm_state_size"], vm1["vm_clock_nsec"]) == ("vm1", len(state), 42)


# ---------------------------------------------------------------- locks (--lock clusters)


def test_lock_semantics(lock_cluster):
    p0, p1, p2 = ports(lock_cluster)
    vid = qemu_create(p0, "Alice", 64 * MB)
    a = QemuImage(p0, "Alice")
    for port in (p0, p1, p2):  # `VDI is already locked`, whatever the gateway
        with pytest.raises(QemuError) as e:
            QemuImage(port, "Alice")
        assert e.value.result == VDI_LOCKED
    a.write(0, pat(5, 16))
    assert a.snapshot_create("s1") == vid + 1
    with pytest.raises(QemuError) as e:  # the lock moved to the new working VDI
        QemuImage(p1, "Alice")
    assert e.value.result == VDI_LOCKED
    r1, r2 = QemuImage(p1, "Alice", tag="s1"), QemuImage(p2, "Alice", snapid=1)  # shared readers
    assert r1.read(0, 16) == r2.read(0, 16) == pat(5, 16)
    assert r1.close() == r2.close() == SUCCESS
    assert qemu_create(p2, "Bob", 64 * MB, base=vid) == 0x0316B4  # create -b works
    assert a.close() == SUCCESS  # RELEASE of the vid current at close frees it
    b = QemuImage(p2, "Alice")
    assert b.vid == vid + 1 and b.close() == SUCCESS
    # snapshot -d: its LOCK on the snapshot is never released, DEL_VDI drops it
    d = QemuImage(p1, "Alice")
    assert d.snapshot_delete("s1") == SUCCESS and d.close() == SUCCESS
    QemuImage(p0, "Alice").close()
    rsp, _ = do_req(p0, 0, DEL_VDI, WRITE, 512, vdi_union(snapid=1), name_tag("Alice"))
    assert rsp["result"] == NO_TAG  # the name exists, the snapshot does not
    assert dog_read(lock_cluster, "Bob", 0, 16) == pat(5, 16)
