"""The 48-byte request and response headers (wire.md §3, §4): pure encode/decode, no I/O.

A header is a common part plus a 32-byte (request) or 28-byte (response) union whose
layout depends on the opcode.  Each union variant is a small dataclass with a
``struct.Struct``; ``Request.args`` / ``Response.args`` hold the variant chosen by
opcode (``RawArgs`` for opcodes without a documented variant).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import ClassVar

from .constants import SD_PROTO_VER, SD_SHEEP_PROTO_VER, Flag, Op

HEADER_SIZE = 48
_REQ_COMMON = struct.Struct("<BBHIII")  # proto_ver opcode flags epoch id data_length
_RSP_COMMON = struct.Struct("<BBHIIII")  # ... + result


class ProtocolError(ValueError):
    """Bytes that cannot be a header (wrong size)."""


class _Args:
    """Base of union variants: fields in declaration order map onto ``_S``."""

    _S: ClassVar[struct.Struct]
    _SIZE: ClassVar[int]

    def pack(self) -> bytes:
        values = [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]
        return self._S.pack(*values).ljust(self._SIZE, b"\0")

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0):
        return cls(*cls._S.unpack_from(buf, offset))


# ---------------------------------------------------------------- request variants (32 bytes)


@dataclass(slots=True)
class RawArgs(_Args):
    raw: bytes = b"\0" * 32
    _S: ClassVar = struct.Struct("<32s")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class ObjArgs(_Args):
    oid: int = 0
    cow_oid: int = 0
    copies: int = 0
    copy_policy: int = 0
    ec_index: int = 0
    tgt_epoch: int = 0
    offset: int = 0
    _S: ClassVar = struct.Struct("<QQBBBxII4x")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class VdiArgs(_Args):
    vdi_size: int = 0
    base_vdi_id: int = 0
    copies: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    block_size_shift: int = 0
    snapid: int = 0
    type: int = 0
    _S: ClassVar = struct.Struct("<QIBBBBII8x")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class ClusterArgs(_Args):
    oid: int = 0
    ctime: int = 0
    copies: int = 0
    copy_policy: int = 0
    flags: int = 0
    tag: int = 0
    nodes_nr: int = 0
    block_size_shift: int = 0
    _S: ClassVar = struct.Struct("<QQBBHIIB3x")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class VdiStateArgs(_Args):
    old_vid: int = 0
    new_vid: int = 0
    copies: int = 0
    set_bitmap: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    _S: ClassVar = struct.Struct("<IIBBBB")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class RefArgs(_Args):
    oid: int = 0
    generation: int = 0
    count: int = 0
    _S: ClassVar = struct.Struct("<QII")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class ForwArgs(_Args):
    oid: int = 0
    addr: bytes = b"\0" * 16
    port: int = 0
    _S: ClassVar = struct.Struct("<Q16sH")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class CheckpointArgs(_Args):
    get: int = 0
    tgt_epoch: int = 0
    vid: int = 0
    _S: ClassVar = struct.Struct("<III")
    _SIZE: ClassVar = 32


@dataclass(slots=True)
class CoherenceArgs(_Args):
    vid: int = 0
    validate: int = 0
    _S: ClassVar = struct.Struct("<II")
    _SIZE: ClassVar = 32


_OBJ_OPS = {
    Op.CREATE_AND_WRITE_OBJ, Op.READ_OBJ, Op.WRITE_OBJ, Op.REMOVE_OBJ, Op.DISCARD_OBJ,
    Op.CREATE_AND_WRITE_PEER, Op.READ_PEER, Op.WRITE_PEER, Op.REMOVE_PEER,
    Op.GET_HASH, Op.EXIST, Op.GET_OBJ_LIST, Op.GET_EPOCH, Op.COMPLETE_RECOVERY, Op.FLUSH_VDI,
    Op.OIDS_EXIST, Op.LOCAL_OBJ,
}
_VDI_OPS = {
    Op.NEW_VDI, Op.LOCK_VDI, Op.RELEASE_VDI, Op.GET_VDI_INFO, Op.READ_VDIS, Op.DEL_VDI,
    Op.GET_CLUSTER_DEFAULT, Op.GET_VDI_ATTR,
}
_REQ_VARIANT: dict[int, type[_Args]] = {}
_REQ_VARIANT.update({op: ObjArgs for op in _OBJ_OPS})
_REQ_VARIANT.update({op: VdiArgs for op in _VDI_OPS})
_REQ_VARIANT.update({op: ClusterArgs for op in (Op.MAKE_FS, Op.STAT_CLUSTER, Op.ALTER_CLUSTER_COPY)})
_REQ_VARIANT.update({op: VdiStateArgs for op in (Op.NOTIFY_VDI_ADD, Op.ALTER_VDI_COPY)})
_REQ_VARIANT.update({op: RefArgs for op in (Op.DECREF_OBJ, Op.DECREF_PEER)})
_REQ_VARIANT[Op.REPAIR_REPLICA] = ForwArgs
_REQ_VARIANT[Op.VDI_STATE_CHECKPOINT_CTL] = CheckpointArgs
_REQ_VARIANT[Op.INODE_COHERENCE] = CoherenceArgs


def request_args_type(opcode: int) -> type[_Args]:
    return _REQ_VARIANT.get(opcode, RawArgs)


def default_proto_ver(opcode: int) -> int:
    """`sd_init_req`: 0x02 below 0x80, 0x0a for internal opcodes."""
    return SD_SHEEP_PROTO_VER if opcode >= 0x80 else SD_PROTO_VER


def proto_ver_ok(opcode: int, proto_ver: int) -> bool:
    """wire.md §6.1: internal ops need exactly 0x0a; client ops accept 0..0x02."""
    if opcode >= 0x80:
        return proto_ver == SD_SHEEP_PROTO_VER
    return proto_ver <= SD_PROTO_VER


@dataclass(slots=True)
class Request:
    opcode: int
    flags: int = 0
    data_length: int = 0
    id: int = 0
    epoch: int = 0
    args: _Args = None  # type: ignore[assignment]
    proto_ver: int = -1

    def __post_init__(self) -> None:
        if self.args is None:
            self.args = request_args_type(self.opcode)()
        if self.proto_ver < 0:
            self.proto_ver = default_proto_ver(self.opcode)

    @property
    def has_payload(self) -> bool:
        """A payload follows iff the WRITE flag is set and data_length > 0 (wire.md §2)."""
        return bool(self.flags & Flag.CMD_WRITE) and self.data_length > 0

    def encode(self) -> bytes:
        return _REQ_COMMON.pack(
            self.proto_ver, self.opcode, self.flags, self.epoch, self.id, self.data_length
        ) + self.args.pack()

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> "Request":
        if len(buf) < HEADER_SIZE:
            raise ProtocolError(f"request header needs {HEADER_SIZE} bytes, got {len(buf)}")
        ver, opcode, flags, epoch, rid, dlen = _REQ_COMMON.unpack_from(buf, 0)
        args = request_args_type(opcode).unpack(buf, 16)
        return cls(opcode, flags, dlen, rid, epoch, args, ver)


# ---------------------------------------------------------------- response variants (28 bytes)


@dataclass(slots=True)
class RawRsp(_Args):
    raw: bytes = b"\0" * 28
    _S: ClassVar = struct.Struct("<28s")
    _SIZE: ClassVar = 28


@dataclass(slots=True)
class ObjRsp(_Args):
    copies: int = 0
    offset: int = 0
    _S: ClassVar = struct.Struct("<B3xQ")
    _SIZE: ClassVar = 28


@dataclass(slots=True)
class VdiRsp(_Args):
    rsvd: int = 0
    vdi_id: int = 0
    attr_id: int = 0
    copies: int = 0
    block_size_shift: int = 0
    _S: ClassVar = struct.Struct("<IIIBB")
    _SIZE: ClassVar = 28


@dataclass(slots=True)
class NodeRsp(_Args):
    nr_nodes: int = 0
    store_size: int = 0
    store_free: int = 0
    _S: ClassVar = struct.Struct("<I8xQQ")
    _SIZE: ClassVar = 28


@dataclass(slots=True)
class HashRsp(_Args):
    digest: bytes = b"\0" * 20
    _S: ClassVar = struct.Struct("<4x20s")
    _SIZE: ClassVar = 28


@dataclass(slots=True)
class ClusterDefaultRsp(_Args):
    nr_copies: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    _S: ClassVar = struct.Struct("<BBB")
    _SIZE: ClassVar = 28


_RSP_VARIANT: dict[int, type[_Args]] = {}
_RSP_VARIANT.update({op: ObjRsp for op in _OBJ_OPS})
_RSP_VARIANT.update({op: VdiRsp for op in _VDI_OPS})
_RSP_VARIANT.update({Op.GET_NODE_LIST: NodeRsp, Op.STAT_SHEEP: NodeRsp, Op.GET_HASH: HashRsp,
                     Op.GET_CLUSTER_DEFAULT: ClusterDefaultRsp})


def response_args_type(opcode: int) -> type[_Args]:
    return _RSP_VARIANT.get(opcode, RawRsp)


@dataclass(slots=True)
class Response:
    opcode: int
    result: int = 0
    data_length: int = 0
    id: int = 0
    epoch: int = 0
    args: _Args = None  # type: ignore[assignment]
    flags: int = 0
    proto_ver: int = 0

    def __post_init__(self) -> None:
        if self.args is None:
            self.args = response_args_type(self.opcode)()

    def encode(self) -> bytes:
        return _RSP_COMMON.pack(
            self.proto_ver, self.opcode, self.flags, self.epoch, self.id, self.data_length, self.result
        ) + self.args.pack()

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> "Response":
        if len(buf) < HEADER_SIZE:
            raise ProtocolError(f"response header needs {HEADER_SIZE} bytes, got {len(buf)}")
        ver, opcode, flags, epoch, rid, dlen, result = _RSP_COMMON.unpack_from(buf, 0)
        args = response_args_type(opcode).unpack(buf, 20)
        return cls(opcode, result, dlen, rid, epoch, args, flags, ver)


def reply_to(req: Request, result: int = 0, data_length: int = 0, args: _Args | None = None,
             epoch: int = 0) -> Response:
    """A response echoing the request's opcode and id (`tx_work`)."""
    return Response(req.opcode, result, data_length, req.id, epoch, args)


__all__ = [
    "HEADER_SIZE", "ProtocolError", "Request", "Response", "reply_to",
    "RawArgs", "ObjArgs", "VdiArgs", "ClusterArgs", "VdiStateArgs", "RefArgs", "ForwArgs",
    "CheckpointArgs", "CoherenceArgs", "RawRsp", "ObjRsp", "VdiRsp", "NodeRsp", "HashRsp",
    "ClusterDefaultRsp", "request_args_type", "response_args_type", "default_proto_ver",
    "proto_ver_ok", "field",
]
