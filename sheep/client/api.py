"""Typed request wrappers over a blocking Connection (wire.md §9).

Each method builds the request exactly as dog does (opcode, flags, ``data_length``, union
fields) and raises SheepError on a non-success result, unless its docstring says otherwise.
Payloads come back as the bytearray they were received into (no extra copy).
"""
from __future__ import annotations

from ..proto.constants import (
    CLUSTER_INFO_SIZE, EPOCH_LOG_SIZE, LOCK_TYPE_NORMAL, SD_INODE_HEADER_SIZE, SD_INODE_SIZE,
    SD_MAX_NODES, SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN, SD_NODE_SIZE, VDI_BITMAP_SIZE, Flag, Op, Res,
)
from ..proto.header import (
    ClusterArgs, ClusterDefaultRsp, NodeRsp, ObjArgs, Request, Response, VdiArgs, VdiRsp,
)
from ..proto.inode import Inode
from ..proto.oid import object_size, vid_to_vdi_oid
from ..proto.structs import ClusterInfo, EpochLog, SdNode, decode_nodes, pad, to_bytes
from .sync import Buffer, Connection, Payload, SheepError

_GET_STORE_LIST_SIZE = 512  # dog's buffer


def _name_tag(name: str | bytes, tag: str | bytes = "") -> bytes:
    """name[256] + tag[256], the 512-byte selector payload of VDI lookups (wire.md §9.2)."""
    return pad(name, SD_MAX_VDI_LEN) + pad(tag, SD_MAX_VDI_TAG_LEN)


class Client:
    """Sheep requests as methods.  Owns its Connection unless it was handed one."""

    def __init__(self, host: str | Connection | None = "127.0.0.1", port: int = 7000, *,
                 unix_path: str | None = None, timeout: float | None = None) -> None:
        if isinstance(host, Connection):
            self.conn, self._owns = host, False
        else:
            self.conn = Connection(host, port, unix_path=unix_path, timeout=timeout)
            self._owns = True
        self.epoch = 0  # rsp.epoch of the latest reply: dog's `sd_epoch`

    def close(self) -> None:
        if self._owns:
            self.conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def call(self, req: Request, payload: Buffer | None = None, *,
             into: memoryview | bytearray | None = None) -> tuple[Response, Payload]:
        """One round trip, no result check."""
        rsp, data = self.conn.call(req, payload, into=into)
        self.epoch = rsp.epoch
        return rsp, data

    def checked(self, req: Request, payload: Buffer | None = None, *,
                into: memoryview | bytearray | None = None) -> tuple[Response, Payload]:
        """One round trip; SheepError unless the result is SUCCESS."""
        rsp, data = self.call(req, payload, into=into)
        if rsp.result != Res.SUCCESS:
            raise SheepError(rsp.result)
        return rsp, data

    # ------------------------------------------------------------------ cluster and node

    def get_node_list(self) -> list[SdNode]:
        """Current members in node order; the count comes from ``data_length`` as in dog."""
        return self.node_list_at()[1]

    def node_list_at(self) -> tuple[int, list[SdNode]]:
        """(epoch, members): the reply's epoch is the one the list belongs to."""
        rsp, data = self.checked(Request(Op.GET_NODE_LIST, 0, SD_MAX_NODES * SD_NODE_SIZE))
        return rsp.epoch, decode_nodes(data, rsp.data_length // SD_NODE_SIZE)

    def cluster_info(self) -> ClusterInfo:
        _, data = self.checked(Request(Op.CLUSTER_INFO, 0, CLUSTER_INFO_SIZE))
        return ClusterInfo.decode(bytes(data).ljust(CLUSTER_INFO_SIZE, b"\0"))

    def stat_cluster(self, nodes_nr: int, *, max_epochs: int | None = None
                     ) -> tuple[int, list[EpochLog]]:
        """Epoch history, newest first, and the cluster-status result (never raises on it).

        Without ``max_epochs`` the current epoch is learned first with dog's 48-byte probe.
        On BUFFER_SMALL (an epoch has more than ``nodes_nr`` members) ``nodes_nr`` doubles.
        """
        if max_epochs is None:
            probe, _ = self.call(Request(Op.STAT_CLUSTER, 0, EPOCH_LOG_SIZE,
                                         args=ClusterArgs(nodes_nr=0)))
            max_epochs = probe.epoch
        max_epochs = max(max_epochs, 1)
        while True:
            entry = EpochLog.size(nodes_nr)
            rsp, data = self.call(Request(Op.STAT_CLUSTER, 0, max_epochs * entry,
                                          args=ClusterArgs(nodes_nr=nodes_nr)))
            if rsp.result == Res.BUFFER_SMALL and nodes_nr < SD_MAX_NODES:
                nodes_nr = min(max(1, nodes_nr * 2), SD_MAX_NODES)
                continue
            logs = [EpochLog.decode(data, off, nodes_nr)
                    for off in range(0, rsp.data_length - entry + 1, entry)]
            return rsp.result, logs

    def get_cluster_default(self) -> ClusterDefaultRsp:
        rsp, _ = self.checked(Request(Op.GET_CLUSTER_DEFAULT))
        assert isinstance(rsp.args, ClusterDefaultRsp)
        return rsp.args

    def stat_sheep(self) -> tuple[int, int]:
        """(store_size, store_free) of the node we are connected to."""
        rsp, _ = self.checked(Request(Op.STAT_SHEEP))
        assert isinstance(rsp.args, NodeRsp)
        return rsp.args.store_size, rsp.args.store_free

    def make_fs(self, copies: int, copy_policy: int, flags: int, ctime: int,
                block_size_shift: int = 0, store: str = "plain") -> None:
        """Format the cluster (MAKE_FS): the store name travels NUL-terminated."""
        payload = to_bytes(store) + b"\0"
        args = ClusterArgs(ctime=ctime, copies=copies, copy_policy=copy_policy, flags=flags,
                           block_size_shift=block_size_shift)
        self.checked(Request(Op.MAKE_FS, Flag.CMD_WRITE, len(payload), args=args), payload)

    def shutdown(self) -> None:
        self.checked(Request(Op.SHUTDOWN))

    def kill_node(self) -> None:
        self.checked(Request(Op.KILL_NODE))

    def get_store_list(self) -> str:
        """The raw store-list text (``"plain tree "``), which dog prints verbatim."""
        rsp, data = self.checked(Request(Op.GET_STORE_LIST, 0, _GET_STORE_LIST_SIZE))
        return bytes(data[:rsp.data_length]).split(b"\0", 1)[0].decode("utf-8", "replace")

    # ------------------------------------------------------------------ VDIs

    def _vdi_lookup(self, opcode: int, name: str | bytes, tag: str | bytes, snapid: int,
                    lock_type: int = LOCK_TYPE_NORMAL, flags: int = 0) -> VdiRsp:
        payload = _name_tag(name, tag)
        req = Request(opcode, Flag.CMD_WRITE | flags, len(payload),
                      args=VdiArgs(snapid=snapid, type=lock_type))
        rsp, _ = self.checked(req, payload)
        assert isinstance(rsp.args, VdiRsp)
        return rsp.args

    def get_vdi_info(self, name: str | bytes, tag: str | bytes = "", snapid: int = 0) -> VdiRsp:
        """Name (+ tag or snapid) to vid; ``.vdi_id``, ``.copies``, ``.block_size_shift``."""
        return self._vdi_lookup(Op.GET_VDI_INFO, name, tag, snapid)

    def lock_vdi(self, name: str | bytes, tag: str | bytes = "", snapid: int = 0, *,
                 lock_type: int = LOCK_TYPE_NORMAL, flags: int = 0) -> VdiRsp:
        """``flags`` may add FLAG_CMD_CONN_LOCK: the lock then dies with this connection."""
        return self._vdi_lookup(Op.LOCK_VDI, name, tag, snapid, lock_type, flags)

    def release_vdi(self, vid: int, *, lock_type: int = LOCK_TYPE_NORMAL,
                    name: str | bytes | None = None) -> None:
        """dog sends no payload; QEMU sends ``name`` NUL-terminated, which sheep ignores."""
        payload = None if name is None else to_bytes(name) + b"\0"
        req = Request(Op.RELEASE_VDI, Flag.CMD_WRITE if payload else 0,
                      len(payload) if payload else 0, args=VdiArgs(base_vdi_id=vid, type=lock_type))
        self.checked(req, payload)

    def del_vdi(self, name: str | bytes, tag: str | bytes = "", snapid: int = 0) -> VdiRsp:
        return self._vdi_lookup(Op.DEL_VDI, name, tag, snapid)

    def new_vdi(self, name: str | bytes, size: int, *, base_vid: int = 0, snapid: int = 0,
                copies: int = 0, copy_policy: int = 0, store_policy: int = 0,
                block_size_shift: int = 0) -> VdiRsp:
        """Create, clone (base_vid), or snapshot (snapid != 0); see wire.md §9.2 NEW_VDI."""
        payload = pad(name, SD_MAX_VDI_LEN)
        args = VdiArgs(vdi_size=size, base_vdi_id=base_vid, copies=copies, copy_policy=copy_policy,
                       store_policy=store_policy, block_size_shift=block_size_shift, snapid=snapid)
        rsp, _ = self.checked(Request(Op.NEW_VDI, Flag.CMD_WRITE, len(payload), args=args), payload)
        assert isinstance(rsp.args, VdiRsp)
        return rsp.args

    def read_vdis(self) -> Payload:
        """The 2 MiB in-use vid bitmap (bit v = byte v>>3, bit v&7)."""
        return self.checked(Request(Op.READ_VDIS, 0, VDI_BITMAP_SIZE))[1]

    def read_del_vdis(self) -> Payload:
        return self.checked(Request(Op.READ_DEL_VDIS, 0, VDI_BITMAP_SIZE))[1]

    def read_inode(self, vid: int, *, header_only: bool = False) -> Inode:
        """The inode of ``vid``: 4,664 header bytes or the full 12,587,576 (index + gref)."""
        size = SD_INODE_HEADER_SIZE if header_only else SD_INODE_SIZE
        data = self.read_object(vid_to_vdi_oid(vid), 0, size, flags=Flag.CMD_DIRECT)
        return Inode.decode(data)

    # ------------------------------------------------------------------ objects

    @staticmethod
    def obj_request(opcode: int, oid: int, length: int, offset: int = 0, *, flags: int = 0,
                    copies: int = 0, copy_policy: int = 0, cow_oid: int = 0) -> Request:
        """The header of an object op; WRITE-type ops get the WRITE flag here."""
        if opcode in (Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ):
            flags |= Flag.CMD_WRITE
        if cow_oid:
            flags |= Flag.CMD_COW
        return Request(opcode, flags, length,
                       args=ObjArgs(oid=oid, cow_oid=cow_oid, copies=copies,
                                    copy_policy=copy_policy, offset=offset))

    def read_object(self, oid: int, offset: int = 0, length: int | None = None, *,
                    copies: int = 0, flags: int = 0,
                    into: memoryview | bytearray | None = None) -> Payload:
        """READ_OBJ; ``length`` defaults to the rest of the object (4 MiB data objects)."""
        if length is None:
            length = object_size(oid) - offset
        req = self.obj_request(Op.READ_OBJ, oid, length, offset, flags=flags, copies=copies)
        return self.checked(req, into=into)[1]

    def write_object(self, oid: int, data: Buffer, offset: int = 0, *, copies: int = 0,
                     flags: int = 0) -> None:
        req = self.obj_request(Op.WRITE_OBJ, oid, len(data), offset, flags=flags, copies=copies)
        self.checked(req, data)

    def create_and_write_object(self, oid: int, data: Buffer, offset: int = 0, *,
                                cow_oid: int = 0, copies: int = 0, flags: int = 0) -> None:
        """Create (replace) ``oid``; with ``cow_oid`` it starts as a copy of that object."""
        req = self.obj_request(Op.CREATE_AND_WRITE_OBJ, oid, len(data), offset, flags=flags,
                               copies=copies, cow_oid=cow_oid)
        self.checked(req, data)

    def remove_object(self, oid: int, *, copies: int = 0) -> None:
        self.checked(self.obj_request(Op.REMOVE_OBJ, oid, 0, copies=copies))

    def exist(self, oid: int) -> bool:
        """Does the connected node store ``oid`` (EXIST)?  NO_OBJ is False, not an error."""
        rsp, _ = self.call(self.obj_request(Op.EXIST, oid, 0))
        if rsp.result == Res.NO_OBJ:
            return False
        if rsp.result != Res.SUCCESS:
            raise SheepError(rsp.result)
        return True


__all__ = ["Client", "SheepError"]
