"""A hand-written replay of QEMU 5.2/6.0 block/sheepdog.c on the wire (qemu-driver.md).

Headers are packed with struct at the offsets QEMU uses (§2): proto_ver 0x01 for LOCK_VDI,
GET_VDI_INFO and GET_CLUSTER_DEFAULT, 0x00 for everything else; epoch 0; id 0 on the
short-lived sockets, ``aioreq_seq_num++`` on the one pipelined I/O socket whose replies are
matched by id in whatever order they come (§3).  Nothing from ``sheep.*`` is used, so a
mistake shared by the project's codec and its daemon cannot hide.
"""
from __future__ import annotations

import socket
import struct

from .test_wire_spec import connect, exchange, header, name256, recv_exact

QEMU_VER = 0x01  # SD_PROTO_VER in block/sheepdog.c
WRITE, COW, CACHE, DIRECT = 0x01, 0x02, 0x04, 0x08
CREATE_AND_WRITE_OBJ, READ_OBJ, WRITE_OBJ = 0x01, 0x02, 0x03
NEW_VDI, LOCK_VDI, RELEASE_VDI, GET_VDI_INFO, READ_VDIS, FLUSH_VDI, DEL_VDI, GET_CLUSTER_DEFAULT = \
    range(0x11, 0x19)
EXIST = 0xBD
SUCCESS, NO_OBJ, VDI_EXIST, VDI_LOCKED, NO_VDI, NO_TAG, READONLY = 0x00, 0x02, 0x04, 0x07, 0x08, 0x0E, 0x1A

HDR = 4664  # SD_INODE_HEADER_SIZE
QEMU_INODE = 4198968  # sizeof(SheepdogInode): header + data_vdi_id[2^20]
GREF = QEMU_INODE  # gref[] follows in sheep's inode (objects.md §3)
NR_BATCHED_DISCARD = 128


class QemuError(Exception):
    def __init__(self, result: int, what: str) -> None:
        self.result = result
        super().__init__(f"{what}: result {result:#x}")


def inode_oid(vid: int) -> int:
    return (1 << 63) | (vid << 32)


def data_oid(vid: int, idx: int) -> int:
    return (vid << 32) | idx


def vmstate_oid(vid: int, idx: int) -> int:
    return (1 << 62) | (vid << 32) | idx


def obj_union(oid: int, cow_oid: int = 0, copies: int = 0, offset: int = 0) -> bytes:
    """QEMU's SheepdogObjReq tail: oid, cow_oid, copies, copy_policy, reserved[6], u64 offset."""
    return struct.pack("<QQBB6xQ", oid, cow_oid, copies, 0, offset)


def vdi_union(size: int = 0, base: int = 0, copies: int = 0, policy: int = 0, shift: int = 0,
              snapid: int = 0, type_: int = 0) -> bytes:
    """SheepdogVdiReq tail: vdi_size, base_vdi_id, copies, copy_policy, store_policy,
    block_size_shift, snapid, type."""
    return struct.pack("<QIBBBBII", size, base, copies, policy, 0, shift, snapid, type_)


def name_tag(name: str, tag: str = "") -> bytes:
    return name256(name) + tag.encode().ljust(256, b"\0")


def rsp_vid(rsp: dict) -> int:
    return struct.unpack_from("<I", rsp["raw"], 24)[0]


def do_req(port: int, ver: int, opcode: int, flags: int, dlen: int, union: bytes = b"",
           payload: bytes = b"", s: socket.socket | None = None) -> tuple[dict, bytes]:
    """`do_req` on a fresh socket (or ``s``), id 0."""
    if s is not None:
        return exchange(s, header(ver, opcode, flags, 0, dlen, union), payload)
    with connect(port) as fresh:
        return exchange(fresh, header(ver, opcode, flags, 0, dlen, union), payload)


def parse_header(buf: bytes) -> dict:
    """The 4664-byte inode header (objects.md §3)."""
    name, tag, ctime, snap_ctime, clock, size, vmsize, policy, store, copies, shift, snap_id, \
        vid, parent = struct.unpack_from("<256s256sQQQQQBBBBIII", buf)
    return dict(name=name.rstrip(b"\0").decode(), tag=tag.rstrip(b"\0").decode(), create_time=ctime,
                snap_ctime=snap_ctime, vm_clock_nsec=clock, vdi_size=size, vm_state_size=vmsize,
                copy_policy=policy, store_policy=store, nr_copies=copies, block_size_shift=shift,
                snap_id=snap_id, vdi_id=vid, parent_vdi_id=parent)


def read_header(port: int, vid: int) -> dict:
    rsp, body = do_req(port, 0, READ_OBJ, 0, HDR, obj_union(inode_oid(vid)))
    assert rsp["result"] == SUCCESS and len(body) == HDR
    return parse_header(body)


def read_entries(port: int, vid: int, start: int, n: int) -> list[int]:
    rsp, body = do_req(port, 0, READ_OBJ, 0, 4 * n, obj_union(inode_oid(vid), offset=HDR + 4 * start))
    assert rsp["result"] == SUCCESS
    return list(struct.unpack(f"<{n}I", body))


def read_gref(port: int, vid: int, idx: int) -> tuple[int, int]:
    """(generation, count) of ``gref[idx]`` (objects.md §8)."""
    rsp, body = do_req(port, 0, READ_OBJ, 0, 8, obj_union(inode_oid(vid), offset=GREF + 8 * idx))
    assert rsp["result"] == SUCCESS
    return struct.unpack("<ii", body)


def held_by(ports: list[int], oid: int) -> list[bool]:
    """EXIST (0xBD, proto 0x0a) on each node: does that node store ``oid``?"""
    out = []
    for port in ports:
        rsp, _ = do_req(port, 0x0A, EXIST, 0, 0, obj_union(oid))
        assert rsp["result"] in (SUCCESS, NO_OBJ)
        out.append(rsp["result"] == SUCCESS)
    return out


def get_cluster_default(port: int) -> tuple[int, int, int]:
    rsp, _ = do_req(port, QEMU_VER, GET_CLUSTER_DEFAULT, 0, 0)
    assert rsp["result"] == SUCCESS
    return rsp["raw"][20], rsp["raw"][21], rsp["raw"][22]


def qemu_create(port: int, name: str, size: int, *, base: int = 0, copies: int = 0,
                policy: int = 0, shift: int = 0) -> int:
    """`sd_co_create` (§5.1): GET_CLUSTER_DEFAULT unless object_size was given, then NEW_VDI."""
    if shift == 0:
        shift = get_cluster_default(port)[2]
    rsp, body = do_req(port, 0, NEW_VDI, WRITE, 256, vdi_union(size, base, copies, policy, shift),
                       name256(name))
    if rsp["result"] != SUCCESS:
        raise QemuError(rsp["result"], f"NEW_VDI {name}")
    assert body == b""
    return rsp_vid(rsp)


def qemu_snapshot_list(port: int, name: str) -> list[dict]:
    """`sd_snapshot_list` (§5.9): READ_VDIS, then every vid from the raw name hash up to the
    first clear bit, 4664-byte headers on one socket; snapshots of ``name`` are listed."""
    rsp, bitmap = do_req(port, 0, READ_VDIS, 0, 2097152)
    assert rsp["result"] == SUCCESS and len(bitmap) == 2097152
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & (2**64 - 1)
    vid = h & 0xFFFFFF
    found = []
    with connect(port) as s:
        while bitmap[vid >> 3] & (1 << (vid & 7)):
            rsp, body = do_req(port, 0, READ_OBJ, 0, HDR, obj_union(inode_oid(vid)), s=s)
            if rsp["result"] == SUCCESS:
                hdr = parse_header(body)
                if hdr["name"] == name and hdr["snap_ctime"]:
                    found.append(hdr)
            vid = (vid + 1) % (1 << 24)
    return found


class QemuImage:
    """One `sd_open`ed image: the in-memory inode QEMU keeps, and its I/O socket."""

    def __init__(self, port: int, name: str, snapid: int = 0, tag: str = "",
                 cache: int = CACHE) -> None:
        self.port, self.name, self.cache = port, name, cache
        self.io = connect(port)  # get_sheep_fd comes first
        self.seq = 0
        self.pending: dict[int, int] = {}
        self.reply_order: list[int] = []
        self.sent: list[dict] = []  # every request on the I/O socket
        try:
            vid = self.find_vdi(snapid, tag, lock=True)
            rsp, body = do_req(port, 0, READ_OBJ, cache, QEMU_INODE, obj_union(inode_oid(vid)))
            if rsp["result"] != SUCCESS:
                raise QemuError(rsp["result"], "Can't read snapshot inode")
        except BaseException:
            self.io.close()
            raise
        assert len(body) == QEMU_INODE  # exactly header + data_vdi_id[2^20]
        self.inode = bytearray(body)
        self.is_snapshot = bool(snapid or tag)

    # -- the in-memory inode
    def _u(self, fmt: str, off: int) -> int:
        return struct.unpack_from(fmt, self.inode, off)[0]

    vid = property(lambda self: self._u("<I", 560))
    parent = property(lambda self: self._u("<I", 564))
    size = property(lambda self: self._u("<Q", 536))
    copies = property(lambda self: self.inode[554])
    shift = property(lambda self: self.inode[555])
    snap_ctime = property(lambda self: self._u("<Q", 520))

    def index(self, idx: int) -> int:
        return self._u("<I", HDR + 4 * idx)

    def set_index(self, idx: int, vid: int) -> None:
        struct.pack_into("<I", self.inode, HDR + 4 * idx, vid)

    def nr_objs(self) -> int:
        return -(-self.size // (1 << self.shift))

    # -- short-lived sockets
    def find_vdi(self, snapid: int, tag: str, lock: bool) -> int:
        """`find_vdi_name`: LOCK_VDI or GET_VDI_INFO, ver 1, name+tag."""
        rsp, _ = do_req(self.port, QEMU_VER, LOCK_VDI if lock else GET_VDI_INFO, WRITE, 512,
                        vdi_union(snapid=snapid), name_tag(self.name, tag))
        if rsp["result"] != SUCCESS:
            raise QemuError(rsp["result"], "cannot get vdi info")
        return rsp_vid(rsp)

    def do_sd_create(self, snapshot: int) -> int:
        """NEW_VDI from the in-memory inode: base = its vid."""
        h = self.inode
        rsp, _ = do_req(self.port, 0, NEW_VDI, WRITE, 256,
                        vdi_union(self.size, self.vid, h[554], h[552], h[555], snapid=snapshot),
                        name256(self.name))
        if rsp["result"] != SUCCESS:
            raise QemuError(rsp["result"], f"NEW_VDI {self.name}")
        return rsp_vid(rsp)

    def snapshot_create(self, tag: str, vm_state_size: int = 0, vm_clock_nsec: int = 0) -> int:
        """`sd_snapshot_create` (§5.8); returns the new working vid."""
        assert not self.is_snapshot, "You can't create a snapshot of a snapshot VDI"
        self.inode[256:512] = tag.encode().ljust(256, b"\0")
        struct.pack_into("<Q", self.inode, 544, vm_state_size)
        struct.pack_into("<Q", self.inode, 528, vm_clock_nsec)
        with connect(self.port) as fd:
            rsp, _ = do_req(self.port, 0, WRITE_OBJ, WRITE | self.cache, HDR,
                            obj_union(inode_oid(self.vid), 0, self.copies), bytes(self.inode[:HDR]), s=fd)
            assert rsp["result"] == SUCCESS and rsp["data_length"] == 0
            new = self.do_sd_create(1)
            rsp, body = do_req(self.port, 0, READ_OBJ, self.cache, HDR,
                               obj_union(inode_oid(new), 0, self.copies), s=fd)
            assert rsp["result"] == SUCCESS and len(body) == HDR
        self.inode[:HDR] = body
        return new

    def reload_inode(self, snapid: int, tag: str) -> None:
        vid = self.find_vdi(snapid, tag, lock=False)
        rsp, body = do_req(self.port, 0, READ_OBJ, self.cache, HDR,
                           obj_union(inode_oid(vid), 0, self.copies))
        assert rsp["result"] == SUCCESS
        if parse_header(body)["vdi_id"] != self.vid:
            self.inode[:HDR] = body

    def sd_delete(self) -> bool:
        """DEL_VDI of the working VDI: name only, snapid 0, base = in-memory vid."""
        rsp, _ = do_req(self.port, 0, DEL_VDI, WRITE, 256, vdi_union(base=self.vid), name256(self.name))
        return rsp["result"] in (SUCCESS, NO_VDI)

    def create_branch(self) -> int:
        """`sd_create_branch` (§5.10)."""
        deleted = self.sd_delete()
        vid = self.do_sd_create(0 if deleted else 1)
        rsp, body = do_req(self.port, 0, READ_OBJ, self.cache, QEMU_INODE,
                           obj_union(inode_oid(vid), 0, self.copies))
        assert rsp["result"] == SUCCESS and len(body) == QEMU_INODE
        self.inode = bytearray(body)
        self.is_snapshot = False
        return vid

    def goto(self, snapid: int = 0, tag: str = "") -> int:
        """`sd_snapshot_goto`: reload_inode + create_branch."""
        self.reload_inode(snapid, tag)
        return self.create_branch()

    def truncate(self, size: int) -> None:
        """`sd_co_truncate` (§5.7): the header with the new size."""
        struct.pack_into("<Q", self.inode, 536, size)
        rsp, _ = do_req(self.port, 0, WRITE_OBJ, WRITE | self.cache, HDR,
                        obj_union(inode_oid(self.vid), 0, self.copies), bytes(self.inode[:HDR]))
        assert rsp["result"] == SUCCESS

    def vmstate(self, pos: int, data: bytes | None = None, length: int = 0) -> bytes:
        """`do_load_save_vmstate` (§5.13): save ``data`` into the current vid, or load
        ``length`` bytes from the parent's vmstate objects; one socket per call."""
        load = data is None
        vid = self.parent if load else self.vid
        size = 1 << self.shift
        out, remaining, done = bytearray(), length if load else len(data), 0
        with connect(self.port) as fd:
            while remaining:
                idx, off = divmod(pos, size)
                n = min(remaining, size - off)
                u = obj_union(vmstate_oid(vid, idx), 0, self.copies, off)
                if load:
                    rsp, body = do_req(self.port, 0, READ_OBJ, self.cache, n, u, s=fd)
                    out += body
                else:
                    op = CREATE_AND_WRITE_OBJ if off == 0 else WRITE_OBJ
                    rsp, _ = do_req(self.port, 0, op, WRITE | self.cache, n, u, data[done:done + n], s=fd)
                assert rsp["result"] == SUCCESS
                pos, done, remaining = pos + n, done + n, remaining - n
        return bytes(out)

    def snapshot_delete(self, snapshot_id: str) -> int:
        """`sd_snapshot_delete` (§5.11) with bug B: zero the OPEN image's index, LOCK, DEL."""
        with connect(self.port) as fd:  # remove_objects
            i, nr = 0, self.nr_objs()
            while i < nr:
                while i < nr and not self.index(i):
                    i += 1
                start, filled = i, 0
                while i < nr and filled < NR_BATCHED_DISCARD:
                    if self.index(i):
                        self.set_index(i, 0)
                        filled += 1
                    i += 1
                payload = bytes(self.inode[HDR + 4 * start:HDR + 4 * i])
                rsp, _ = do_req(self.port, 0, WRITE_OBJ, WRITE | self.cache, len(payload),
                                obj_union(inode_oid(self.vid), 0, self.copies, HDR + 4 * start),
                                payload, s=fd)
                assert rsp["result"] == SUCCESS, "failed to discard snapshot inode."
        snapid = int(snapshot_id) if snapshot_id.isdigit() else 0
        tag = "" if snapid else snapshot_id
        self.find_vdi(snapid, tag, lock=True)
        rsp, _ = do_req(self.port, 0, DEL_VDI, WRITE, 512, vdi_union(snapid=snapid),
                        name_tag(self.name, tag))
        return rsp["result"]

    def close(self) -> int:
        """`sd_close` (§5.3): RELEASE_VDI with the vid current now, name\\0 payload."""
        payload = self.name.encode() + b"\0"
        rsp, _ = do_req(self.port, 0, RELEASE_VDI, WRITE, len(payload), vdi_union(base=self.vid),
                        payload)
        self.io.close()
        return rsp["result"]

    # -- the I/O socket
    def submit(self, opcode: int, flags: int, dlen: int, union: bytes, payload: bytes = b"") -> int:
        rid = self.seq
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.io.sendall(header(0, opcode, flags, rid, dlen, union) + payload)
        self.pending[rid] = opcode
        oid, cow, copies, offset = struct.unpack_from("<QQB7xQ", union)
        self.sent.append(dict(id=rid, opcode=opcode, flags=flags, dlen=dlen, oid=oid, cow_oid=cow,
                              copies=copies, offset=offset, payload=payload))
        return rid

    def collect(self) -> dict[int, tuple[int, bytes]]:
        """Every pending reply, in the order the server sends them (`aio_read_response`)."""
        out = {}
        while self.pending:
            raw = recv_exact(self.io, 48)
            _, opcode, _, epoch, rid, dlen, result = struct.unpack_from("<BBHIIII", raw)
            assert opcode == self.pending.pop(rid)  # an unknown id would make QEMU reconnect
            if opcode == READ_OBJ:
                body = recv_exact(self.io, dlen)  # read whatever the result
            else:
                assert dlen == 0, "QEMU reads no payload for writes and flushes"
                body = b""
            out[rid] = (result, body)
            self.reply_order.append(rid)
        return out

    def chunks(self, offset: int, length: int):
        size = 1 << self.shift
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, size)
            n = min(end - pos, size - off)
            yield idx, off, pos - offset, n
            pos += n

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        where = {}
        for idx, off, pos, n in self.chunks(offset, length):
            v = self.index(idx)
            if v:  # holes are zero-filled locally, nothing is sent
                rid = self.submit(READ_OBJ, self.cache, n, obj_union(data_oid(v, idx), 0, self.copies, off))
                where[rid] = pos
        for rid, (result, body) in self.collect().items():
            assert result == SUCCESS
            out[where[rid]:where[rid] + len(body)] = body
        return bytes(out)

    def write(self, offset: int, data: bytes) -> dict[int, int]:
        """§4.3: create / COW / write per object, then ONE index update of min..max."""
        if self.is_snapshot:
            self.create_branch()
        me, reqs = self.vid, {}
        for idx, off, pos, n in self.chunks(offset, len(data)):
            v = self.index(idx)
            piece = data[pos:pos + n]
            if v == me:
                rid = self.submit(WRITE_OBJ, WRITE | self.cache, n,
                                  obj_union(data_oid(me, idx), 0, self.copies, off), piece)
            elif v == 0:
                rid = self.submit(CREATE_AND_WRITE_OBJ, WRITE | self.cache, n,
                                  obj_union(data_oid(me, idx), 0, self.copies, off), piece)
            else:
                rid = self.submit(CREATE_AND_WRITE_OBJ, WRITE | COW | self.cache, n,
                                  obj_union(data_oid(me, idx), data_oid(v, idx), self.copies, off), piece)
            reqs[rid] = (idx, v != me)
        results = {}
        dirty = []
        for rid, (result, _) in self.collect().items():
            idx, create = reqs[rid]
            results[idx] = result
            if create and result == SUCCESS:
                self.set_index(idx, me)
                dirty.append(idx)
        if dirty:
            self.update_index(min(dirty), max(dirty))
        return results

    def update_index(self, mn: int, mx: int) -> None:
        """`sd_write_done`: data_vdi_id[mn..mx] from memory, on the I/O socket."""
        payload = bytes(self.inode[HDR + 4 * mn:HDR + 4 * (mx + 1)])
        self.submit(WRITE_OBJ, WRITE | self.cache, len(payload),
                    obj_union(inode_oid(self.vid), 0, self.copies, HDR + 4 * mn), payload)
        assert list(self.collect().values()) == [(SUCCESS, b"")]

    def discard(self, offset: int, length: int) -> list[int]:
        """§5.6: a zero index entry per wholly covered, allocated object."""
        size = 1 << self.shift
        idxs = [i for i in range(-(-offset // size), (offset + length) // size) if self.index(i)]
        for i in idxs:
            self.set_index(i, 0)
            self.submit(WRITE_OBJ, WRITE | self.cache, 4,
                        obj_union(inode_oid(self.vid), 0, self.copies, HDR + 4 * i), bytes(4))
        assert all(r == (SUCCESS, b"") for r in self.collect().values())
        return idxs

    def flush(self) -> int:
        """§4.4: FLUSH_VDI flags=CACHE, only in CACHE mode; INVALID_PARMS switches to DIRECT."""
        if self.cache != CACHE:
            return SUCCESS
        self.submit(FLUSH_VDI, CACHE, 0, obj_union(inode_oid(self.vid), 0, self.copies))
        (result, _), = self.collect().values()
        if result == 0x05:
            self.cache = DIRECT
        return result
