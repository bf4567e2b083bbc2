"""REPAIR_REPLICA (wire.md §9.4; `local_repair_replica`): `dog vdi check` asks the node
holding a wrong or missing replica to fetch the object from a node holding the majority
copy.  The node READ_PEERs the whole object from ``forw.addr:forw.port`` with the
request's epoch and create-writes it locally, holding the object's lock throughout so
that a write arriving meanwhile is applied on top of the copy, never under it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..proto.constants import SD_SHEEP_PROTO_VER, Op, Res
from ..proto.header import ForwArgs, ObjArgs, Request
from ..proto.structs import NodeId
from . import gateway
from .node import Reply
from .store import StoreError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.repair")


async def repair_replica(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ForwArgs = req.args
    if node.opts.gateway:
        return Reply(Res.NO_OBJ)  # a gateway stores nothing, so it has nothing to repair
    source = NodeId(bytes(a.addr), a.port)
    if source.sort_key() == node.me.nid.sort_key():
        return Reply(Res.INVALID_PARMS)  # from ourselves to ourselves: nothing to copy
    size = gateway.obj_size(node, a.oid)
    read = Request(Op.READ_PEER, data_length=size, epoch=req.epoch or node.epoch,
                   proto_ver=SD_SHEEP_PROTO_VER, args=ObjArgs(oid=a.oid))
    node.lease.bump()  # same-host clients must not write into the copy being replaced
    async with node.object_lock(a.oid):  # a write to us waits: it lands after the copy
        rsp, data = await node.peers.call(source, read)
        if rsp.result != Res.SUCCESS:
            log.error("cannot repair %016x: %s answered %#x", a.oid, source, rsp.result)
            return Reply(rsp.result)
        if len(data) != size:
            log.error("cannot repair %016x: %s sent %d of %d bytes", a.oid, source, len(data), size)
            return Reply(Res.EIO)
        try:
            await node.io(node.store.create_and_write, a.oid, 0, data, size)
        except StoreError as e:
            log.error("cannot store repaired %016x: %#x", a.oid, e.result)
            return Reply(e.result)
    log.info("%016x repaired from %s", a.oid, source)
    return Reply(Res.SUCCESS)


__all__ = ["repair_replica"]
