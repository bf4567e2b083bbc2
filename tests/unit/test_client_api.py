"""Client wrappers and Volume I/O against an in-test peer that records what it is sent.

The peer is a framing partner with a dict of objects, not a model of sheep: it lets the
tests check the exact request sequence (opcodes, oids, cow_oids, offsets, flags).
"""
from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable

import pytest

from sheep.client.api import Client
from sheep.client.sync import SheepError
from sheep.client.volume import Volume
from sheep.proto.constants import (
    EPOCH_LOG_SIZE, SD_INODE_HEADER_SIZE, SD_INODE_SIZE, SD_NODE_SIZE, SD_PROTO_VER,
    SD_SHEEP_PROTO_VER, VDI_BITMAP_SIZE, Flag, Op, Res,
)
from sheep.proto.header import (
    HEADER_SIZE, ClusterDefaultRsp, NodeRsp, Request, Response, VdiRsp,
)
from sheep.proto.inode import Inode, InodeHeader
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.structs import ClusterInfo, EpochLog, NodeId, SdNode, cstr

SHIFT = 20  # 1 MiB objects keep the tests small
OBJ = 1 << SHIFT


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


@dataclass
class Seen:
    opcode: int
    oid: int
    cow_oid: int
    offset: int
    length: int
    flags: int
    payload: bytes


class FakeSheep:
    """One-connection peer.  Object ops act on ``objects``; others go to ``handler``.

    Requests that arrive together are answered in reverse order, so pipelined clients
    must match replies by id.
    """

    def __init__(self, handler: Callable[[Request, bytes], tuple[int, bytes, object]] | None = None):
        self.objects: dict[int, bytearray] = {}
        self.fail: set[int] = set()
        self.seen: list[Seen] = []
        self.max_batch = 0
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.listener.accept()
        try:
            while True:
                batch = [self._read(sock)]
                while select.select([sock], [], [], 0.02)[0]:
                    batch.append(self._read(sock))
                self.max_batch = max(self.max_batch, len(batch))
                for req, payload in batch:  # recorded in arrival order
                    if req.opcode in (Op.READ_OBJ, Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ):
                        a = req.args
                        self.seen.append(Seen(req.opcode, a.oid, a.cow_oid, a.offset,
                                              req.data_length, req.flags, payload))
                for req, payload in reversed(batch):
                    result, data, args = self._answer(req, payload)
                    rsp = Response(req.opcode, result, len(data), req.id, 5, args)
                    sock.sendall(rsp.encode() + data)
        except EOFError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            sock.close()
            self.listener.close()

    @staticmethod
    def _read(sock):
        req = Request.decode(recv_exact(sock, HEADER_SIZE))
        return req, (recv_exact(sock, req.data_length) if req.has_payload else b"")

    def _size(self, oid: int) -> int:
        return SD_INODE_SIZE if oid >> 63 else OBJ

    def _answer(self, req: Request, payload: bytes):
        a = req.args
        if req.opcode in (Op.READ_OBJ, Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ):
            assert req.proto_ver == SD_PROTO_VER
            if a.oid in self.fail:
                return Res.EIO, b"", None
            if req.opcode == Op.READ_OBJ:
                obj = self.objects.get(a.oid)
                if obj is None:
                    return Res.NO_OBJ, b"", None
                return Res.SUCCESS, bytes(obj[a.offset:a.offset + req.data_length]), None
            if req.opcode == Op.CREATE_AND_WRITE_OBJ:
                if req.flags & Flag.CMD_COW:
                    if a.cow_oid not in self.objects:
                        return Res.NO_OBJ, b"", None
                    self.objects[a.oid] = bytearray(self.objects[a.cow_oid])
                else:
                    self.objects[a.oid] = bytearray(self._size(a.oid))
            obj = self.objects.get(a.oid)
            if obj is None:
                return Res.NO_OBJ, b"", None
            obj[a.offset:a.offset + len(payload)] = payload
            return Res.SUCCESS, b"", None
        assert self.handler is not None, f"unexpected opcode {req.opcode:#x}"
        return self.handler(req, payload)

    def data_ops(self) -> list[Seen]:
        return [s for s in self.seen if not s.oid >> 63]

    def join(self) -> None:
        self.thread.join(10)
        if self.error:
            raise self.error


# ---------------------------------------------------------------- Client wrappers


def test_vdi_requests_and_errors():
    got: list[tuple[Request, bytes]] = []

    def handler(req, payload):
        got.append((req, payload))
        if req.opcode == Op.GET_VDI_INFO and cstr(payload[:256]) == "nosuch":
            return Res.NO_VDI, b"", None
        return Res.SUCCESS, b"", VdiRsp(vdi_id=0xABC, copies=3, block_size_shift=22)

    peer = FakeSheep(handler)
    with Client("127.0.0.1", peer.port) as c:
        rsp = c.get_vdi_info("Alice", "snap1", 2)
        assert (rsp.vdi_id, rsp.copies, rsp.block_size_shift) == (0xABC, 3, 22)
        with pytest.raises(SheepError) as info:
            c.get_vdi_info("nosuch")
        assert info.value.result == Res.NO_VDI and str(info.value) == "No VDI found"
        assert c.new_vdi("Bob", 1 << 30, copies=2, block_size_shift=23).vdi_id == 0xABC
        c.del_vdi("Bob", snapid=1)
        c.lock_vdi("Bob")
        c.release_vdi(0x123)
        assert c.epoch == 5
    peer.join()
    req, payload = got[0]
    assert req.flags == Flag.CMD_WRITE and req.data_length == 512 and req.proto_ver == SD_PROTO_VER
    assert payload == b"Alice".ljust(256, b"\0") + b"snap1".ljust(256, b"\0")
    assert req.args.snapid == 2
    new, new_payload = got[2]
    assert new.opcode == Op.NEW_VDI and new.data_length == 256 and new_payload == b"Bob".ljust(256, b"\0")
    assert (new.args.vdi_size, new.args.copies, new.args.block_size_shift) == (1 << 30, 2, 23)
    assert got[3][0].opcode == Op.DEL_VDI and got[3][0].args.snapid == 1
    assert got[4][0].opcode == Op.LOCK_VDI
    rel = got[5][0]
    assert rel.opcode == Op.RELEASE_VDI and rel.args.base_vdi_id == 0x123 and not rel.has_payload


def node(port: int) -> SdNode:
    return SdNode(NodeId.from_host("127.0.0.1", port), 128, port - 7000, 1 << 40)


def test_cluster_requests():
    nodes = [node(7000), node(7001), node(7002)]
    got: list[Request] = []

    def handler(req, payload):
        got.append(req)
        assert req.proto_ver == (SD_SHEEP_PROTO_VER if req.opcode >= 0x80 else SD_PROTO_VER)
        if req.opcode == Op.GET_NODE_LIST:
            return Res.SUCCESS, b"".join(n.encode() for n in nodes), NodeRsp(nr_nodes=3)
        if req.opcode == Op.CLUSTER_INFO:
            ci = ClusterInfo(epoch=3, ctime=77, nr_copies=3, status=1, block_size_shift=22,
                             default_store="plain", nodes=nodes)
            return Res.SUCCESS, ci.encode(), None
        if req.opcode == Op.STAT_SHEEP:
            return Res.SUCCESS, b"", NodeRsp(store_size=100, store_free=40)
        if req.opcode == Op.GET_CLUSTER_DEFAULT:
            return Res.SUCCESS, b"", ClusterDefaultRsp(3, 0, 22)
        if req.opcode in (Op.READ_VDIS, Op.READ_DEL_VDIS):
            return Res.SUCCESS, b"\x02" + bytes(req.data_length - 1), None
        if req.opcode == Op.GET_STORE_LIST:
            return Res.SUCCESS, b"plain tree ", None
        if req.opcode == Op.EXIST:
            return (Res.SUCCESS if req.args.oid == 1 else Res.NO_OBJ), b"", None
        return Res.SUCCESS, b"", None

    peer = FakeSheep(handler)
    with Client("127.0.0.1", peer.port) as c:
        assert [str(n) for n in c.get_node_list()] == ["127.0.0.1:7000", "127.0.0.1:7001",
                                                       "127.0.0.1:7002"]
        ci = c.cluster_info()
        assert (ci.epoch, ci.default_store, len(ci.nodes)) == (3, "plain", 3)
        assert c.stat_sheep() == (100, 40)
        assert c.get_cluster_default().block_size_shift == 22
        assert len(c.read_vdis()) == VDI_BITMAP_SIZE and c.read_vdis()[0] == 2
        assert len(c.read_del_vdis()) == VDI_BITMAP_SIZE
        assert c.get_store_list() == "plain tree "
        assert c.exist(1) and not c.exist(2)
        c.make_fs(2, 0, 0x4, 12345, 22, "tree")
        c.shutdown()
        c.kill_node()
    peer.join()
    assert got[0].data_length == 6144 * SD_NODE_SIZE and got[1].data_length == 491568
    mk = [r for r in got if r.opcode == Op.MAKE_FS][0]
    assert mk.flags == Flag.CMD_WRITE and mk.data_length == len(b"tree\0")
    assert (mk.args.copies, mk.args.flags, mk.args.ctime, mk.args.block_size_shift) == (2, 4, 12345, 22)


def test_stat_cluster_probe_and_buffer_small():
    logs = [EpochLog(ctime=9, epoch=e, nodes=[node(7000 + i) for i in range(e)]) for e in (3, 2, 1)]
    got: list[Request] = []

    def handler(req, payload):
        got.append(req)
        n = req.args.nodes_nr
        entry = EpochLog.size(n)
        out = b""
        for log in logs[:req.data_length // entry]:
            if n and log.nr_nodes > n:
                return Res.BUFFER_SMALL, b"", None
            out += EpochLog(log.ctime, epoch=log.epoch, nodes=log.nodes if n else []).encode(n)
        return Res.WAIT_FOR_JOIN, out, None

    peer = FakeSheep(handler)
    with Client("127.0.0.1", peer.port) as c:
        result, got_logs = c.stat_cluster(0, max_epochs=1)  # dog's 48-byte probe
        assert result == Res.WAIT_FOR_JOIN and got_logs[0].epoch == 3 and got_logs[0].nodes == []
        result, got_logs = c.stat_cluster(1)
    peer.join()
    assert got[0].data_length == EPOCH_LOG_SIZE
    assert result == Res.WAIT_FOR_JOIN  # returned, not raised
    assert [g.epoch for g in got_logs] == [3, 2, 1]
    assert [len(g.nodes) for g in got_logs] == [3, 2, 1]
    # probe (nodes_nr 0), then 1 -> BUFFER_SMALL, 2 -> BUFFER_SMALL, 4 -> fits
    assert [r.args.nodes_nr for r in got[1:]] == [0, 1, 2, 4]
    assert got[-1].data_length == 5 * EpochLog.size(4)  # the probe's reply epoch was 5


def test_read_inode_header_and_full():
    hdr = InodeHeader(name="Alice", vdi_size=8 * OBJ, nr_copies=3, block_size_shift=SHIFT,
                      snap_id=1, vdi_id=0x10)
    ino = Inode(hdr)
    ino.set_vid(5, 0x10)
    peer = FakeSheep()
    peer.objects[vid_to_vdi_oid(0x10)] = bytearray(ino.encode())
    with Client("127.0.0.1", peer.port) as c:
        h = c.read_inode(0x10, header_only=True)
        full = c.read_inode(0x10)
        assert c.read_object(vid_to_vdi_oid(0x10), 0, 4)[:4] == b"Alic"
        with pytest.raises(SheepError):
            c.read_object(0x99, 0, 8)
    peer.join()
    assert h.header.name == "Alice" and h.get_vid(5) == 0
    assert full.header.vdi_id == 0x10 and full.get_vid(5) == 0x10
    assert [s.length for s in peer.seen[:2]] == [SD_INODE_HEADER_SIZE, SD_INODE_SIZE]
    assert all(s.flags & Flag.CMD_DIRECT for s in peer.seen[:2])


# ---------------------------------------------------------------- Volume

ME, PARENT = 0x10, 0x0F


def pattern(tag: int, n: int) -> bytes:
    return (struct.pack("<I", tag) * (n // 4 + 1))[:n]


def make_volume(peer: FakeSheep, client: Client, entries: dict[int, int], **kw) -> Volume:
    """A working VDI ``ME`` (8 objects) whose index holds ``entries``; objects are seeded."""
    ino = Inode(InodeHeader(name="v", vdi_size=8 * OBJ, nr_copies=2, block_size_shift=SHIFT,
                            snap_id=2, vdi_id=ME, parent_vdi_id=PARENT))
    for idx, v in entries.items():
        ino.set_vid(idx, v)
        peer.objects[vid_to_data_oid(v, idx)] = bytearray(pattern(v << 8 | idx, OBJ))
    peer.objects[vid_to_vdi_oid(ME)] = bytearray(ino.encode(full=False))
    return Volume(client, ino, **kw)


def test_volume_cow_write_sequence():
    peer = FakeSheep()
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {1: PARENT, 2: ME, 3: PARENT, 5: ME})
        start, end = OBJ // 2, 5 * OBJ + 1000
        data = pattern(0xDEADBEEF, end - start)
        vol.write(start, data)
        ops = peer.data_ops()
        summary = [(s.opcode, s.oid, s.cow_oid, s.offset, s.length, bool(s.flags & Flag.CMD_COW))
                   for s in ops]
        assert summary == [
            (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(ME, 0), 0, OBJ // 2, OBJ // 2, False),
            (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(ME, 1), vid_to_data_oid(PARENT, 1), 0, OBJ, True),
            (Op.WRITE_OBJ, vid_to_data_oid(ME, 2), 0, 0, OBJ, False),
            (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(ME, 3), vid_to_data_oid(PARENT, 3), 0, OBJ, True),
            (Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(ME, 4), 0, 0, OBJ, False),
            (Op.WRITE_OBJ, vid_to_data_oid(ME, 5), 0, 0, 1000, False),
        ]
        assert all(s.flags & Flag.CMD_WRITE for s in ops)
        assert peer.max_batch > 1  # the data requests were pipelined
        # one coalesced index write on our own inode: entries 0..4 (2 was already ours)
        idx_writes = [s for s in peer.seen if s.oid == vid_to_vdi_oid(ME)]
        assert [(s.opcode, s.offset, s.payload) for s in idx_writes] == [
            (Op.WRITE_OBJ, 4664, struct.pack("<5I", *[ME] * 5))]
        assert [vol.inode.get_vid(i) for i in range(8)] == [ME, ME, ME, ME, ME, ME, 0, 0]
        stored = Inode.decode(peer.objects[vid_to_vdi_oid(ME)])
        assert [stored.get_vid(i) for i in range(8)] == [ME, ME, ME, ME, ME, ME, 0, 0]

        # read everything back: untouched parts of COW'd objects keep the parent's bytes
        peer.seen.clear()
        whole = vol.read(0, 8 * OBJ)
        expect = bytearray(8 * OBJ)
        expect[OBJ:2 * OBJ] = pattern(PARENT << 8 | 1, OBJ)
        expect[3 * OBJ:4 * OBJ] = pattern(PARENT << 8 | 3, OBJ)
        expect[5 * OBJ:6 * OBJ] = pattern(ME << 8 | 5, OBJ)
        expect[start:end] = data
        assert whole == expect
        assert [s.oid for s in peer.seen] == [vid_to_data_oid(ME, i) for i in range(6)]
    peer.join()


def test_volume_read_holes_and_ancestors():
    peer = FakeSheep()
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {2: PARENT})
        assert vol.read(0, 2 * OBJ) == bytes(2 * OBJ)
        assert vol.read(6 * OBJ + 5, 100) == bytes(100)
        assert peer.seen == []  # holes cost no request
        got = vol.read(2 * OBJ + 10, 20)
        assert got == pattern(PARENT << 8 | 2, OBJ)[10:30]
        assert [(s.opcode, s.oid, s.offset, s.length) for s in peer.seen] == [
            (Op.READ_OBJ, vid_to_data_oid(PARENT, 2), 10, 20)]
        # spans a hole and an object without over-reading either
        peer.seen.clear()
        got = vol.read(2 * OBJ - 4, 8)
        assert got == bytes(4) + pattern(PARENT << 8 | 2, 4)
        assert [(s.offset, s.length) for s in peer.seen] == [(0, 4)]
    peer.join()


def test_volume_large_pipelined_read():
    peer = FakeSheep()
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {i: ME for i in range(8)}, window=8)
        assert vol.read(0, 8 * OBJ) == b"".join(pattern(ME << 8 | i, OBJ) for i in range(8))
    peer.join()
    assert peer.max_batch > 1


def test_volume_write_failure_keeps_index_honest():
    peer = FakeSheep()
    peer.fail.add(vid_to_data_oid(ME, 3))
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {1: PARENT, 3: PARENT, 5: ME})
        with pytest.raises(SheepError) as info:
            vol.write(0, bytes(6 * OBJ))
        assert info.value.result == Res.EIO
        idx_writes = [(s.offset, s.payload) for s in peer.seen if s.oid == vid_to_vdi_oid(ME)]
        # entry 3 failed: runs 0..2 and 4 (5 was ours already); never a stale value for 3
        assert idx_writes == [(4664, struct.pack("<3I", ME, ME, ME)),
                              (4664 + 16, struct.pack("<I", ME))]
        assert [vol.inode.get_vid(i) for i in range(6)] == [ME, ME, ME, PARENT, ME, ME]
        assert c.read_object(vid_to_data_oid(ME, 0), 0, 4) == bytes(4)  # connection still in step
    peer.join()


def test_volume_bounds_readonly_and_flags():
    peer = FakeSheep()
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {}, flags=Flag.CMD_CACHE)
        with pytest.raises(ValueError):
            vol.read(8 * OBJ - 1, 2)
        with pytest.raises(ValueError):
            vol.write(8 * OBJ, b"x")
        assert vol.read(8 * OBJ, 0) == b""
        vol.write(8 * OBJ - 3, b"end")
        assert all(s.flags & Flag.CMD_CACHE for s in peer.seen)
        assert peer.seen[0].opcode == Op.CREATE_AND_WRITE_OBJ and peer.seen[0].offset == OBJ - 3
        ro = Volume(c, vol.inode, readonly=True)
        with pytest.raises(PermissionError):
            ro.write(0, b"x")
        hyper = Inode(InodeHeader(vdi_size=OBJ, store_policy=1, vdi_id=ME))
        with pytest.raises(NotImplementedError):
            Volume(c, hyper)
    peer.join()


def test_volume_qemu_style_passes_and_index_range():
    """send_writes reports what was written and what is left; update_index_range writes
    ONE range min..max from memory (QEMU's sd_write_done)."""
    peer = FakeSheep()
    peer.fail.add(vid_to_data_oid(ME, 3))
    with Client("127.0.0.1", peer.port) as c:
        vol = make_volume(peer, c, {1: PARENT, 2: ME, 3: PARENT}, window=1)
        data = memoryview(bytes(5 * OBJ))
        result = vol.send_writes(list(vol.chunks(0, 5 * OBJ)), data)
        assert result.error == Res.EIO
        assert sorted(result.done) == [(0, 0), (1, PARENT), (2, ME)]
        assert [c_[0] for c_ in result.left] == [3, 4]  # the failure, then what was never sent
        assert vol.inode.get_vid(0) == 0  # memory follows only the index write
        assert not [s for s in peer.seen if s.oid == vid_to_vdi_oid(ME)]
        vol.update_index_range({0: ME, 1: ME})
        vol.update_index_range({0: ME, 4: ME})  # 1..3 rewritten from memory
        writes = [(s.offset, s.payload) for s in peer.seen if s.oid == vid_to_vdi_oid(ME)]
        assert writes == [(4664, struct.pack("<2I", ME, ME)),
                          (4664, struct.pack("<5I", ME, ME, ME, PARENT, ME))]
        assert [vol.inode.get_vid(i) for i in range(5)] == [ME, ME, ME, PARENT, ME]
    peer.join()


def test_lock_flags_and_release_payload():
    got: list[tuple[Request, bytes]] = []

    def handler(req, payload):
        got.append((req, payload))
        return Res.SUCCESS, b"", VdiRsp(vdi_id=0xABC)

    peer = FakeSheep(handler)
    with Client("127.0.0.1", peer.port) as c:
        c.lock_vdi("Bob", flags=0x0800)
        c.release_vdi(0xABC, name="Bob")
    peer.join()
    (lock, _), (rel, payload) = got
    assert lock.flags == Flag.CMD_WRITE | 0x0800
    assert rel.flags == Flag.CMD_WRITE and rel.data_length == 4 and payload == b"Bob\0"
