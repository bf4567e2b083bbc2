"""vdi/node/cluster commands against an in-memory sheep at the Connection level.

The real api.Client runs on top of ``FakeConn``, which answers the raw requests dog sends and
records them, so these tests check the wire behaviour (opcodes, flags, offsets, lengths) of
dog's flows (dog.md §4, objects.md §6.6) without a daemon.  End-to-end behaviour against the
real sheep is covered by the cluster tests.
"""
from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner

import dog.common
from dog.cli import main
from sheep.client.api import Client
from sheep.client.sync import Connection
from sheep.proto.constants import (
    SD_INODE_HEADER_SIZE, SD_MAX_VDI_LEN, VDI_BITMAP_SIZE, ClusterFlag, Flag, Op, Res,
)
from sheep.proto.header import NodeRsp, Request, Response, VdiRsp
from sheep.proto.inode import Inode, InodeHeader, index_offset
from sheep.proto.oid import is_vdi_obj, oid_to_vid, vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.structs import ClusterInfo, EpochLog, NodeId, SdNode, cstr, encode_nodes

NODES = [SdNode(NodeId.from_host("127.0.0.1", 7000 + i), 128, i, 80 << 30) for i in range(3)]


class FakeConn(Connection):
    """Just enough of a sheep for dog's VDI flows; ``log`` keeps every request."""

    def __init__(self) -> None:  # no socket: Connection.__init__ is deliberately not called
        self.objects: dict[int, bytearray] = {}
        self.vdis: dict[int, str] = {}  # vid -> name of live VDIs
        self.deleted: set[int] = set()
        self.snapshots: set[int] = set()
        self.next_vid = 0x15D167
        self.log: list[tuple[Request, bytes]] = []
        self.opened: list[tuple[str, int]] = []  # (host, port) of every Client dog created

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def call(self, req: Request, payload=None, *, into=None):
        self.log.append((req, bytes(payload or b"")))
        result, data, args = self._handle(req, bytes(payload or b""))
        rsp = Response(req.opcode, result, len(data), req.id, 1, args)
        if into is not None:
            view = memoryview(into).cast("B")
            view[:len(data)] = data
            return rsp, view[:len(data)]
        return rsp, bytearray(data)

    def iter_many(self, items, *, window=16):
        for req, payload, into in items:
            yield self.call(req, payload, into=into)

    def call_many(self, items, *, window=16):
        return [self.call(r, p) for r, p in items]

    def _vid_of(self, name: str) -> int | None:
        return next((v for v, n in self.vdis.items()
                     if n == name and v not in self.deleted and v not in self.snapshots), None)

    def _handle(self, req: Request, payload: bytes):
        a = req.args
        op = req.opcode
        if op == Op.GET_NODE_LIST:
            return Res.SUCCESS, encode_nodes(NODES), NodeRsp(nr_nodes=3)
        if op == Op.STAT_CLUSTER:
            log = EpochLog(ctime=1 << 32, time=1, epoch=1, nr_copies=3,
                           flags=ClusterFlag.AUTO_VNODES, drv_name="plain", nodes=NODES)
            if a.nodes_nr < len(NODES):  # dog's 48-byte probe, or a too small buffer
                if req.data_length > EpochLog.HEADER_SIZE:
                    return Res.BUFFER_SMALL, b"", None
                return Res.SUCCESS, log.encode(len(NODES))[:EpochLog.HEADER_SIZE], None
            return Res.SUCCESS, log.encode(a.nodes_nr)[:req.data_length], None
        if op == Op.CLUSTER_INFO:
            info = ClusterInfo(epoch=1, ctime=1 << 32, flags=ClusterFlag.AUTO_VNODES,
                               nr_copies=3, status=1, block_size_shift=22,
                               default_store="plain", nodes=NODES)
            return Res.SUCCESS, info.encode(), None
        if op in (Op.READ_VDIS, Op.READ_DEL_VDIS):
            bm = bytearray(VDI_BITMAP_SIZE)
            for v in (self.vdis if op == Op.READ_VDIS else self.deleted):
                bm[v >> 3] |= 1 << (v & 7)
            return Res.SUCCESS, bm, None
        if op == Op.NEW_VDI:
            name = cstr(payload[:SD_MAX_VDI_LEN])
            old = self._vid_of(name)
            if old is not None and not a.snapid:
                return Res.VDI_EXIST, b"", None
            if a.snapid:  # snapshot: the working VDI leaves the name lookup
                self.snapshots.add(old)
            vid, self.next_vid = self.next_vid, self.next_vid + 1
            h = InodeHeader(name=name, create_time=1 << 32, vdi_size=a.vdi_size,
                            copy_policy=a.copy_policy, store_policy=a.store_policy,
                            nr_copies=a.copies or 3, block_size_shift=a.block_size_shift or 22,
                            snap_id=1, vdi_id=vid)
            self.objects[vid_to_vdi_oid(vid)] = bytearray(Inode(h).encode())
            self.vdis[vid] = name
            return Res.SUCCESS, b"", VdiRsp(vdi_id=vid)
        if op in (Op.GET_VDI_INFO, Op.DEL_VDI):
            vid = self._vid_of(cstr(payload[:SD_MAX_VDI_LEN]))
            if vid is None:
                return Res.NO_VDI, b"", None
            if op == Op.DEL_VDI:
                self.deleted.add(vid)
            return Res.SUCCESS, b"", VdiRsp(vdi_id=vid)
        if op == Op.GET_VDI_ATTR:
            if self._vid_of(cstr(payload[:SD_MAX_VDI_LEN])) is None:
                return Res.NO_VDI, b"", None
            if req.flags & Flag.CMD_EXCL:
                return Res.VDI_EXIST, b"", None
            return Res.SUCCESS, b"", VdiRsp(vdi_id=0xABC, attr_id=5)
        if op == Op.MAKE_FS:
            store = payload.rstrip(b"\0")
            return (Res.SUCCESS if store in (b"plain", b"tree") else Res.NO_STORE), b"", None
        if op == Op.GET_STORE_LIST:
            return Res.SUCCESS, b"plain tree ", None
        if op == Op.STAT_SHEEP:
            return Res.SUCCESS, b"", NodeRsp(store_size=int(78.7 * (1 << 30)),
                                             store_free=int(78.7 * (1 << 30)) - (24 << 20))
        if op in (Op.SHUTDOWN, Op.KILL_NODE):
            return Res.SUCCESS, b"", None
        if op == Op.EXIST:
            return (Res.SUCCESS if a.oid in self.objects else Res.NO_OBJ), b"", None
        if op == Op.READ_OBJ:
            obj = self.objects.get(a.oid)
            if obj is None:
                return Res.NO_OBJ, b"", None
            return Res.SUCCESS, bytes(obj[a.offset:a.offset + req.data_length]), None
        if op == Op.CREATE_AND_WRITE_OBJ:
            base = self.objects.get(a.cow_oid, bytearray(4 << 20)) if a.cow_oid else None
            self.objects[a.oid] = bytearray(base) if base is not None else bytearray(4 << 20)
        if op in (Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ):
            obj = self.objects.get(a.oid)
            if obj is None:
                return Res.NO_OBJ, b"", None
            obj[a.offset:a.offset + len(payload)] = payload
            return Res.SUCCESS, b"", None
        return Res.INVALID_PARMS, b"", None

    def inode(self, vid: int) -> Inode:
        return Inode.decode(self.objects[vid_to_vdi_oid(vid)])

    def ops(self, opcode: int) -> list[tuple[Request, bytes]]:
        return [(r, p) for r, p in self.log if r.opcode == opcode]


@pytest.fixture
def sheep(monkeypatch) -> FakeConn:
    conn = FakeConn()

    def connect(host: str, port: int) -> Client:
        conn.opened.append((host, port))
        return Client(conn)

    monkeypatch.setattr(dog.common, "Client", connect)
    return conn


def dog_(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_create_sends_new_vdi_with_options(sheep):
    r = dog_("vdi", "create", "-c", "4:2", "-z", "23", "-v", "Alice", "1G")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "VDI ID of newly created VDI: 15d167\n"
    (req, payload), = sheep.ops(Op.NEW_VDI)
    assert payload.rstrip(b"\0") == b"Alice" and len(payload) == 256
    a = req.args
    assert (a.vdi_size, a.copies, a.copy_policy, a.block_size_shift, a.snapid, a.base_vdi_id) == \
        (1 << 30, 6, 0x22, 23, 0, 0)
    assert not sheep.ops(Op.CLUSTER_INFO)  # -z given: no need to learn the default shift
    assert dog_("vdi", "create", "-v", "-r", "Bob", "1M").stdout == "15d168\n"
    assert len(sheep.ops(Op.CLUSTER_INFO)) == 1


def test_create_errors(sheep):
    dog_("vdi", "create", "Alice", "1G")
    r = dog_("vdi", "create", "Alice", "1G")
    assert r.exit_code == 1 and r.stderr == "Failed to create VDI Alice: VDI exists already\n"
    r = dog_("vdi", "create", "Alice")
    assert r.exit_code == 64 and r.stderr == "Please specify the VDI size\n"
    assert r.stdout.startswith("Usage: dog vdi create")
    r = dog_("vdi", "create", "Big", "17P", "-y")
    assert r.exit_code == 64 and r.stderr == "VDI size is too large\n"


def test_create_prealloc(sheep):
    r = dog_("vdi", "create", "-P", "Pre", "10M")
    assert r.exit_code == 0, r.stderr
    vid = 0x15D167
    creates = sheep.ops(Op.CREATE_AND_WRITE_OBJ)
    assert [c[0].args.oid for c in creates] == [vid_to_data_oid(vid, i) for i in range(3)]
    assert all(c[0].data_length == 0 and c[0].flags & Flag.CMD_DIRECT for c in creates)
    updates = [(r_.args.offset, p) for r_, p in sheep.ops(Op.WRITE_OBJ)]
    assert updates == [(index_offset(i), struct.pack("<I", vid)) for i in range(3)]
    assert list(sheep.inode(vid).used_indexes()) == [0, 1, 2]


def test_write_read_and_list(sheep):
    dog_("vdi", "create", "Alice", "1G")
    r = dog_("vdi", "write", "Alice", "4M", "14", input=b"hello sheepdog and more")
    assert r.exit_code == 0, r.stderr
    r = dog_("vdi", "read", "Alice", "4M", "16")
    assert r.exit_code == 0 and r.stdout_bytes == b"hello sheepdog\0\0"
    r = dog_("vdi", "read", "Alice", "2G")
    assert r.exit_code == 1 and r.stderr == "Read offset is beyond the end of the VDI\n"
    r = dog_("vdi", "list", "-r")
    assert r.stdout == "= Alice 0 1073741824 4194304 0 1 15d167 3  22\n"
    r = dog_("vdi", "list", "nosuch")
    assert r.exit_code == 0 and r.stdout.count("\n") == 1  # the header only
    r = dog_("vdi", "list", "-o", f"{vid_to_data_oid(0x15D167, 1):x}")
    assert r.stdout.count("\n") == 2
    r = dog_("vdi", "list", "-o", f"{vid_to_data_oid(0x15D167, 2):x}")
    assert r.stdout.count("\n") == 1


def test_write_short_stdin_pads_the_chunk(sheep):
    dog_("vdi", "create", "Alice", "12M")
    r = dog_("vdi", "write", "Alice", input=b"x" * (4 << 20))  # EOF exactly on a boundary
    assert r.exit_code == 0, r.stderr
    assert list(sheep.inode(0x15D167).used_indexes()) == [0, 1]  # plus one zero chunk, like dog
    data = sheep.objects[vid_to_data_oid(0x15D167, 1)]
    assert data == bytearray(4 << 20)


def test_delete_zeroes_index_in_batches_then_del_vdi(sheep):
    dog_("vdi", "create", "-P", "Pre", "40M")  # 10 objects
    sheep.log.clear()
    r = dog_("vdi", "delete", "-B", "4", "Pre")
    assert r.exit_code == 0, r.stderr
    writes = sheep.ops(Op.WRITE_OBJ)
    assert [(w.args.offset, w.data_length) for w, _ in writes] == \
        [(index_offset(0), 16), (index_offset(4), 16), (index_offset(8), 8)]
    assert all(p == bytes(len(p)) for _, p in writes)
    read, = sheep.ops(Op.READ_OBJ)
    assert read[0].data_length == 12587576 and not read[0].flags & Flag.CMD_DIRECT
    assert len(sheep.ops(Op.DEL_VDI)) == 1
    assert dog_("vdi", "list", "-r").stdout == ""


def test_delete_max_reclaim_skips_del_vdi(sheep):
    dog_("vdi", "create", "-P", "Pre", "40M")
    sheep.log.clear()
    r = dog_("vdi", "delete", "-m", "3", "Pre")
    assert r.exit_code == 0
    assert [(w.args.offset, w.data_length) for w, _ in sheep.ops(Op.WRITE_OBJ)] == \
        [(index_offset(0), 12)]
    assert not sheep.ops(Op.DEL_VDI)
    assert list(sheep.inode(0x15D167).used_indexes()) == list(range(3, 10))


def test_delete_missing_vdi_exits_5(sheep):
    r = dog_("vdi", "delete", "nosuch")
    assert r.exit_code == 5
    assert r.stderr == "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\n"


def test_object_map_and_location(sheep):
    dog_("vdi", "create", "-P", "Pre", "8M")
    r = dog_("vdi", "object", "map", "Pre")
    assert r.stdout == "Index       VID\n00000000   15d167\n00000001   15d167\n"
    r = dog_("vdi", "object", "map", "-i", "5", "Pre")
    assert r.stdout == "Index       VID\n00000005        0\n"
    r = dog_("vdi", "object", "location", "-i", "0x1", "Pre")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Looking for the object 0015d16700000001 (vid 0x15d167 idx 1, 3 copies) " \
                       "with 3 nodes"
    assert lines[2:5] == [f"127.0.0.1:{7000 + i} has the object" for i in range(3)]
    assert lines[6] == "According to sheepdog algorithm, the object should be located at:"
    assert sorted(lines[7].split()) == [f"127.0.0.1:{7000 + i}" for i in range(3)]
    exists = sheep.ops(Op.EXIST)
    assert all(req.epoch == 1 for req, _ in exists)
    r = dog_("vdi", "object", "location", "-i", "7", "Pre")
    assert r.stdout == "The inode object 0x15d167 idx 7 is not allocated\n"
    r = dog_("vdi", "object", "location", "nosuch")
    assert r.exit_code == 1
    assert r.stderr.endswith("No VDI found\nFATAL: no inode objects\n")


def test_node_and_cluster_listings(sheep):
    r = dog_("node", "list", "-r")
    assert r.stdout == "".join(f"{i} 127.0.0.1:{7000 + i} 128 {i}\n" for i in range(3))
    r = dog_("cluster", "info", "-r")
    assert r.stdout == ("running, auto-recovery enabled\n\n1 1 [127.0.0.1:7000:128, "
                        "127.0.0.1:7001:128, 127.0.0.1:7002:128]\n")
    import json
    doc = json.loads(dog_("cluster", "info", "--format=json").stdout)
    assert doc["status"] == "running" and doc["epochs"][0]["epoch"] == 1
    nodes = json.loads(dog_("node", "list", "--format", "json").stdout)
    assert [n["address"] for n in nodes] == [f"127.0.0.1:{7000 + i}" for i in range(3)]


def test_inode_reads_are_direct_and_header_sized_for_scans(sheep):
    dog_("vdi", "create", "Alice", "8M")
    sheep.log.clear()
    dog_("vdi", "list")
    reads = [(r.args.oid, r.args.offset, r.data_length) for r, _ in sheep.ops(Op.READ_OBJ)]
    oid = vid_to_vdi_oid(0x15D167)
    assert reads == [(oid, 0, SD_INODE_HEADER_SIZE), (oid, SD_INODE_HEADER_SIZE, 8)]
    assert all(r.flags & Flag.CMD_DIRECT for r, _ in sheep.ops(Op.READ_OBJ))
    assert all(is_vdi_obj(r.args.oid) and oid_to_vid(r.args.oid) == 0x15D167
               for r, _ in sheep.ops(Op.READ_OBJ))


CAUTION = ("    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not empty.\n"
           "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


def test_cluster_format_flags(sheep):
    r = dog_("cluster", "format", "-c", "2:1", "-z", "23", "-t", "-l", "-R", "-F", "-b", "tree")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "using backend tree store\n"
    (req, payload), = sheep.ops(Op.MAKE_FS)
    a = req.args
    assert payload == b"tree\0" and req.flags & Flag.CMD_WRITE
    assert (a.copies, a.copy_policy, a.block_size_shift) == (3, 0x11, 23)
    assert a.flags == (ClusterFlag.STRICT | ClusterFlag.USE_LOCK | ClusterFlag.RECYCLE_VID
                       | ClusterFlag.AUTO_VNODES | ClusterFlag.AVOID_DISKFULL)
    assert a.ctime >> 32 > 1_600_000_000 and (a.ctime & 0xFFFFFFFF) % 1000 == 0
    assert len(sheep.ops(Op.CLUSTER_INFO)) == 3  # the vnode strategy of every node


def test_cluster_format_prompts(sheep):
    dog_("vdi", "create", "A", "1M")
    for answer in (None, "no\n", "nyes\n"):
        r = dog_("cluster", "format", input=answer)
        assert r.exit_code == 0 and r.stdout == CAUTION
    assert not sheep.ops(Op.MAKE_FS)
    r = dog_("cluster", "format", input="YES\n")
    assert r.stdout == CAUTION + "using backend plain store\n"
    r = dog_("cluster", "format", "-f")
    assert r.stdout == "using backend plain store\n"
    r = dog_("cluster", "format", "-c", "5", "-f", input="yes\n")
    assert r.stdout == ("Number of copies (5) is larger than number of zones (3).\n"
                        "Are you sure you want to continue? [yes/no]: using backend plain store\n")
    r = dog_("cluster", "format", "-c", "5", "-f", input="yes!!!!no\n")  # fgets reads 7 bytes
    assert r.stdout.endswith("using backend plain store\n")
    assert len(sheep.ops(Op.MAKE_FS)) == 4


def test_cluster_format_unknown_store(sheep):
    r = dog_("cluster", "format", "-b", "nosuch")
    assert r.exit_code == 2
    assert r.stdout == ("using backend nosuch store\nAvailable stores:\n" + "-" * 39
                        + "\nplain tree \n")
    assert r.stderr == "Format failed: Targeted backend store is not found\n"


def test_node_info(sheep):
    dog_("vdi", "create", "A", "2G")
    r = dog_("node", "info")
    assert r.exit_code == 0
    assert r.stdout == ("Id\tSize\tUsed\tAvail\tUse%\n"
                        + "".join(f"{i:2d}\t79 GB\t24 MB\t79 GB\t  0%\n" for i in range(3))
                        + "Total\t236 GB\t72 MB\t236 GB\t  0%\n\nTotal virtual image size\t2.0 GB\n")


def test_node_kill_and_shutdown(sheep):
    assert dog_("node", "kill", "2").exit_code == 0
    assert ("127.0.0.1", 7002) in sheep.opened
    assert dog_("node", "kill", "-l", "-p", "7005").exit_code == 0
    assert ("127.0.0.1", 7005) in sheep.opened
    assert len(sheep.ops(Op.KILL_NODE)) == 2
    assert dog_("cluster", "shutdown").exit_code == 0
    assert len(sheep.ops(Op.SHUTDOWN)) == 1


# ---------------------------------------------------------------- snapshot, rollback, attributes


def test_snapshot_writes_the_tag_then_new_vdi(sheep):
    dog_("vdi", "create", "Alice", "1G")
    sheep.log.clear()
    r = dog_("vdi", "snapshot", "-v", "-s", "t1", "Alice")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "new VID of original VDI: 15d168, VDI ID of newly created snapshot: 15d167\n"
    (tag_write, tag), = sheep.ops(Op.WRITE_OBJ)
    assert (tag_write.args.oid, tag_write.args.offset, tag_write.data_length) == \
        (vid_to_vdi_oid(0x15D167), 256, 256)
    assert tag == b"t1".ljust(256, b"\0") and not tag_write.flags & Flag.CMD_DIRECT
    (new, _), = sheep.ops(Op.NEW_VDI)
    a = new.args
    assert (a.snapid, a.base_vdi_id, a.vdi_size, a.copies, a.block_size_shift) == \
        (1, 0x15D167, 1 << 30, 3, 22)


def test_rollback_declined_changes_nothing(sheep):
    dog_("vdi", "create", "Alice", "1G")
    dog_("vdi", "snapshot", "-s", "t1", "Alice")
    sheep.log.clear()
    for answer in (None, "no\n", "y\n"):
        r = dog_("vdi", "rollback", "-s", "t1", "Alice", input=answer)
        assert r.exit_code == 0 and r.stdout.endswith("Continue? [yes/no]: ")
    assert {req.opcode for req, _ in sheep.log} == {Op.GET_VDI_INFO, Op.READ_OBJ}


def test_setattr_sends_the_whole_attribute(sheep):
    dog_("vdi", "create", "Alice", "1G")
    sheep.log.clear()
    assert dog_("vdi", "setattr", "Alice", "k", "v").exit_code == 0
    r = dog_("vdi", "setattr", "-x", "Alice", "k", "v")
    assert (r.exit_code, r.stderr) == (3, "The attribute 'k' already exists\n")
    r = dog_("vdi", "setattr", "-d", "Nobody", "k")
    assert (r.exit_code, r.stderr) == (5, "VDI not found\n")
    (set_, payload), (excl, _), (dele, _) = sheep.ops(Op.GET_VDI_ATTR)
    assert set_.flags == Flag.CMD_WRITE | 0x100 and set_.data_length == len(payload) == 66320
    assert excl.flags == Flag.CMD_WRITE | 0x100 | Flag.CMD_EXCL
    assert dele.flags == Flag.CMD_WRITE | Flag.CMD_DEL
    assert payload[:6] == b"Alice\0" and payload[528:530] == b"k\0"  # name, key
    assert struct.unpack_from("<II", payload, 520) == (0, 1)  # snap_id, value_len
    assert payload[784:786] == b"v\0"
