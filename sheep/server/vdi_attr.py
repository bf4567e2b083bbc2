"""GET_VDI_ATTR: find, create or delete a VDI attribute object (objects.md §4, wire.md §9.2).

Attributes live in objects ``vid_to_attr_oid(hash_vdi(name), attr_id)``, probed linearly from
a hash of (name, tag, snap_id, key).  Unlike sheep 1.0, a plain set (CREAT without EXCL)
probes too and overwrites only its own key, so two keys whose hashes collide cannot
clobber each other; for a key that does not collide the slot is the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..proto.constants import FLAG_CMD_CREAT, SD_ATTR_OBJ_SIZE, Flag, Op, Res
from ..proto.hashing import attr_hash, hash_vdi
from ..proto.header import Request, VdiRsp
from ..proto.oid import vid_to_attr_oid
from ..proto.structs import VdiAttr
from . import gateway
from .node import Reply

if TYPE_CHECKING:
    from .node import Node

ATTR_HEADER = VdiAttr.VALUE_OFFSET  # name, tag, ctime, snap_id, value_len, key
MAX_PROBES = 1 << 16  # sheep 1.0 would probe 2^32 slots; this many collisions means "full"


def _same_slot(stored: VdiAttr, wanted: VdiAttr) -> bool:
    return (stored.name, stored.tag, stored.key, stored.snap_id) == \
        (wanted.name, wanted.tag, wanted.key, wanted.snap_id)


async def get_vdi_attr_work(node: "Node", req: Request, payload: bytes) -> Reply:
    from .vdi_ops import lookup
    if len(payload) < ATTR_HEADER or len(payload) > SD_ATTR_OBJ_SIZE:
        return Reply(Res.INVALID_PARMS)
    raw = bytes(payload)
    wanted = VdiAttr.decode(raw)
    name = raw[:256].split(b"\0", 1)[0]
    found = await lookup(node, name, raw[256:512].split(b"\0", 1)[0], req.args.snapid)
    if found.result != Res.SUCCESS:
        return Reply(found.result)
    hvid = hash_vdi(name)
    copies = gateway.obj_copies(node, vid_to_attr_oid(hvid, 0))
    creat, excl, delete = (req.flags & FLAG_CMD_CREAT, req.flags & Flag.CMD_EXCL, req.flags & Flag.CMD_DEL)
    start = attr_hash(raw[:256], raw[256:512], wanted.snap_id, raw[528:784])
    for i in range(MAX_PROBES):
        attr_id = (start + i) & 0xFFFFFFFF
        oid = vid_to_attr_oid(hvid, attr_id)
        slot = await gateway.read_obj(node, oid, 0, ATTR_HEADER, copies)
        if slot.result == Res.NO_OBJ:
            if not creat:
                return Reply(Res.NO_OBJ)
            return await _store(node, oid, raw, found.vid, hvid, attr_id, copies)
        if slot.result != Res.SUCCESS:
            return Reply(Res.EIO)
        stored = VdiAttr.decode(bytes(slot.data))
        if not stored.name or not _same_slot(stored, wanted):
            continue  # a tombstone or another key: keep probing
        if excl:
            return Reply(Res.VDI_EXIST)
        if delete:
            gone = await gateway.fanout(node, Op.WRITE_OBJ, oid, 0, b"\0", copies)
            if gone.result != Res.SUCCESS:
                return Reply(gone.result)
        elif creat:
            return await _store(node, oid, raw, found.vid, hvid, attr_id, copies)
        return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=hvid, attr_id=attr_id, copies=copies))
    return Reply(Res.FULL_VDI)


async def _store(node: "Node", oid: int, raw: bytes, vid: int, hvid: int, attr_id: int, copies: int) -> Reply:
    """Create the attribute object; its ctime is the VDI's create_time."""
    from .vdi_ops import read_header
    hdr = await read_header(node, vid)
    body = bytearray(raw)
    if hdr is not None:
        body[512:520] = hdr.create_time.to_bytes(8, "little")
    written = await gateway.create_and_write(node, oid, 0, body, copies)
    if written.result != Res.SUCCESS:
        return Reply(written.result)
    return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=hvid, attr_id=attr_id, copies=copies))
