"""The daemon checked byte for byte by a client written from spec/wire.md alone.

Nothing from the project's codec is imported here: headers are packed by hand with the
offsets of wire.md §3-§4, so a mistake shared by our codec and our daemon cannot hide.
"""
from __future__ import annotations

import socket
import struct

import pytest

PROTO = 0x02
SHEEP_PROTO = 0x0A
WRITE = 0x0001
NEW_VDI, GET_VDI_INFO, READ_VDIS, READ_OBJ, WRITE_OBJ, CREATE_AND_WRITE_OBJ = 0x11, 0x14, 0x15, 0x02, 0x03, 0x01
GET_NODE_LIST, CLUSTER_INFO, GET_CLUSTER_DEFAULT = 0x82, 0xBE, 0x18


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def header(ver: int, opcode: int, flags: int, rid: int, dlen: int, union: bytes = b"") -> bytes:
    """sd_req: u8 proto_ver, u8 opcode, u16 flags, u32 epoch, u32 id, u32 data_length, 32-byte union."""
    assert len(union) <= 32
    return struct.pack("<BBHIII", ver, opcode, flags, 0, rid, dlen) + union.ljust(32, b"\0")


def exchange(s: socket.socket, req: bytes, payload: bytes = b"") -> tuple[dict, bytes]:
    s.sendall(req + payload)
    raw = recv_exact(s, 48)
    ver, opcode, flags, epoch, rid, dlen, result = struct.unpack_from("<BBHIIII", raw)
    body = recv_exact(s, dlen)
    return dict(raw=raw, opcode=opcode, epoch=epoch, id=rid, data_length=dlen, result=result), body


def name256(name: str) -> bytes:
    return name.encode().ljust(256, b"\0")


def test_vdi_lifecycle_bytes(cluster):
    port = cluster.nodes[1].port
    with connect(port) as s:
        # NEW_VDI: vdi union = u64 vdi_size @16, u32 base @24, u8 copies @28, policy, store, shift, u32 snapid @32
        union = struct.pack("<QIBBBBII", 1 << 30, 0, 0, 0, 0, 0, 0, 0)
        rsp, body = exchange(s, header(PROTO, NEW_VDI, WRITE, 7, 256, union), name256("Alice"))
        assert rsp["result"] == 0 and body == b""
        assert rsp["opcode"] == NEW_VDI and rsp["id"] == 7 and rsp["epoch"] == 1
        vid, = struct.unpack_from("<I", rsp["raw"], 24)  # rsp.vdi.vdi_id
        assert vid == 0x15D167
        assert rsp["raw"][32] == 3 and rsp["raw"][33] == 22  # copies, block_size_shift

        # same name again: VDI_EXIST, vdi_id must not be garbage on our server
        rsp, _ = exchange(s, header(PROTO, NEW_VDI, WRITE, 8, 256, union), name256("Alice"))
        assert rsp["result"] == 0x04
        assert struct.unpack_from("<I", rsp["raw"], 24)[0] == 0

        # GET_VDI_INFO with name + tag (512 bytes), proto_ver 1 as QEMU sends
        rsp, _ = exchange(s, header(0x01, GET_VDI_INFO, WRITE, 9, 512), name256("Alice") + bytes(256))
        assert rsp["result"] == 0 and struct.unpack_from("<I", rsp["raw"], 24)[0] == vid

        rsp, _ = exchange(s, header(PROTO, GET_VDI_INFO, WRITE, 10, 256), name256("Nobody"))
        assert rsp["result"] == 0x08  # SD_RES_NO_VDI

        # data object idx 2: create it, then point data_vdi_id[2] at it (4664 + 4*2)
        data_oid = (vid << 32) | 2
        inode_oid = (1 << 63) | (vid << 32)
        obj = struct.pack("<QQBBBxII", data_oid, 0, 0, 0, 0, 0, 100)
        rsp, _ = exchange(s, header(0, CREATE_AND_WRITE_OBJ, WRITE, 11, 5, obj), b"hello")
        assert rsp["result"] == 0 and rsp["data_length"] == 0
        obj = struct.pack("<QQBBBxII", inode_oid, 0, 0, 0, 0, 0, 4664 + 4 * 2)
        rsp, _ = exchange(s, header(0, WRITE_OBJ, WRITE, 12, 4, obj), struct.pack("<I", vid))
        assert rsp["result"] == 0

        # read the inode as QEMU does: 4,198,968 bytes from offset 0
        obj = struct.pack("<QQBBBxII", inode_oid, 0, 0, 0, 0, 0, 0)
        rsp, inode = exchange(s, header(0, READ_OBJ, 0, 13, 4198968, obj))
        assert rsp["result"] == 0 and len(inode) == 4198968
        assert inode[:6] == b"Alice\0"
        assert struct.unpack_from("<Q", inode, 536)[0] == 1 << 30  # vdi_size
        assert inode[554] == 3 and inode[555] == 22  # nr_copies, block_size_shift
        assert struct.unpack_from("<III", inode, 556) == (1, vid, 0)  # snap_id, vdi_id, parent
        assert struct.unpack_from("<3I", inode, 4664) == (0, 0, vid)  # data_vdi_id[0..2]

        obj = struct.pack("<QQBBBxII", data_oid, 0, 0, 0, 0, 0, 98)
        rsp, data = exchange(s, header(0, READ_OBJ, 0, 14, 9, obj))
        assert data == b"\0\0hello\0\0"

    # READ_VDIS from another node: exactly 2 MiB, bit 0x15d167 set LSB-first, nothing else
    with connect(cluster.nodes[2].port) as s:
        rsp, bitmap = exchange(s, header(PROTO, READ_VDIS, 0, 1, 2097152))
        assert rsp["result"] == 0 and len(bitmap) == 2097152
        assert bitmap[vid >> 3] == 1 << (vid & 7)
        assert bitmap.count(0) == 2097152 - 1
        rsp, _ = exchange(s, header(PROTO, READ_VDIS, 0, 2, 4096))
        assert rsp["result"] == 0x05 and rsp["data_length"] == 0  # wrong buffer size


def test_node_list_and_cluster_info_bytes(cluster):
    ports = sorted(s.port for s in cluster.nodes)
    with connect(cluster.nodes[0].port) as s:
        rsp, body = exchange(s, header(SHEEP_PROTO, GET_NODE_LIST, 0, 3, 6144 * 80))
        assert rsp["result"] == 0 and rsp["data_length"] == 240
        assert struct.unpack_from("<I", rsp["raw"], 20)[0] == 3  # node.nr_nodes
        for i in range(3):
            n = body[80 * i:80 * (i + 1)]
            assert n[24:40] == bytes(12) + bytes([127, 0, 0, 1])  # IPv4 in the last 4 bytes
            assert struct.unpack_from("<H", n, 40)[0] == ports[i]  # node order: address, then port
            assert struct.unpack_from("<H", n, 64)[0] == 128  # nr_vnodes
        rsp, ci = exchange(s, header(SHEEP_PROTO, CLUSTER_INFO, 0, 4, 491568))
        assert rsp["result"] == 0 and len(ci) == 491568
        assert ci[0] == 0x0A and struct.unpack_from("<hI", ci, 2) == (3, 1)  # nr_nodes, epoch
        assert struct.unpack_from("<H", ci, 16)[0] == 0x4 and ci[18] == 3 and ci[20] == 1 and ci[21] == 22
        assert ci[25:31] == b"plain\0"
        rsp, _ = exchange(s, header(0x01, GET_CLUSTER_DEFAULT, 0, 5, 0))
        assert rsp["raw"][20:23] == bytes([3, 0, 22])


def test_pipelined_replies_matched_by_id(cluster):
    with connect(cluster.nodes[0].port) as s:
        reqs = b"".join(header(SHEEP_PROTO, GET_NODE_LIST, 0, rid, 6144 * 80) for rid in (5, 6, 7))
        s.sendall(reqs)
        seen = set()
        for _ in range(3):
            raw = recv_exact(s, 48)
            rid, dlen = struct.unpack_from("<II", raw, 8)
            recv_exact(s, dlen)
            seen.add(rid)
        assert seen == {5, 6, 7}


@pytest.mark.parametrize("name", ["Bob", "WireVdi"])
def test_vid_is_fnv1a_of_name(cluster, name):
    expected = {"Bob": 0x0316B4, "WireVdi": 0x0EC359}[name]
    with connect(cluster.nodes[0].port) as s:
        union = struct.pack("<QIBBBBII", 64 << 20, 0, 0, 0, 0, 0, 0, 0)
        rsp, _ = exchange(s, header(PROTO, NEW_VDI, WRITE, 1, 256, union), name256(name))
        assert rsp["result"] == 0 and struct.unpack_from("<I", rsp["raw"], 24)[0] == expected
