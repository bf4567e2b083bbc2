"""Local and cluster-administration operations (wire.md §9.3, §9.4): node lists, cluster
info, epochs, format, shutdown, stats.  Peer object operations live here too: they act on
the local store only.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ..proto.constants import (
    CLUSTER_INFO_SIZE, EPOCH_LOG_SIZE, SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_DEFAULT_COPIES, SD_NODE_SIZE,
    VDI_BITMAP_SIZE, ClusterFlag, Flag, Op, Res, Status,
)
from ..proto.header import ClusterDefaultRsp, HashRsp, NodeRsp, ObjArgs, RefArgs, Request, Response
from ..proto.oid import (
    data_oid_to_idx, data_vid_offset, is_data_obj, is_vdi_obj, ledger_to_data_oid, object_size, oid_to_vid,
    vid_to_vdi_oid,
)
from ..proto.structs import SdNode, EpochLog, RecoveryThrottling, cstr, decode_epoch_file, encode_nodes
from . import gateway, reclaim
from .node import Reply
from .store import StoreError
from .writeback import is_cached

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.ops")

STORES = ("plain", "tree")


# ---------------------------------------------------------------------------- peer (local store)

def _peer_size(node: "Node", req: Request) -> int:
    return object_size(req.args.oid, node.vdis.shift(oid_to_vid(req.args.oid), node.block_size_shift))


async def _store_call(node: "Node", fn, *args) -> Reply:
    try:
        out = await node.io(fn, *args)
    except StoreError as e:
        if e.result == Res.EIO:
            log.error("local store error: %s", e)
        return Reply(e.result)
    return Reply(Res.SUCCESS, out if out is not None else b"")


async def _store_write(node: "Node", req: Request, fn, *args) -> Reply:
    """A store write (``fn(*args, sync)``): synchronous unless the client flagged it CACHE,
    which is then remembered for the next flush (writeback.py)."""
    cached = is_cached(req.flags)
    reply = await _store_call(node, fn, *args, not cached)
    if cached and reply.result == Res.SUCCESS:
        node.writeback.note(req.args.oid)
    return reply


async def peer_read(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    if node.opts.gateway:
        return Reply(Res.NO_OBJ)
    if a.offset + req.data_length > _peer_size(node, req):
        return Reply(Res.INVALID_PARMS)
    if req.flags & Flag.CMD_RECOVERY:
        return await _store_call(node, lambda: node.store.read(a.oid, a.offset, req.data_length, stale_ok=True))
    return await _store_call(node, node.store.read, a.oid, a.offset, req.data_length)


async def peer_write(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    if a.offset + len(payload) > _peer_size(node, req):
        return Reply(Res.INVALID_PARMS)
    return await _store_write(node, req, node.store.write, a.oid, a.offset, payload)


async def peer_create_and_write(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    if oid_to_vid(a.oid) not in node.vdis.entries:
        await node.driver.sync()  # a VDI registered a moment ago: learn its object size
    size = _peer_size(node, req)
    if a.offset + len(payload) > size:
        return Reply(Res.INVALID_PARMS)
    return await _store_write(node, req, node.store.create_and_write, a.oid, a.offset, payload, size)


async def peer_remove(node: "Node", req: Request, payload: bytes) -> Reply:
    return await _store_call(node, node.store.remove, req.args.oid)


async def peer_decref(node: "Node", req: Request, payload: bytes) -> Reply:
    """Apply a ledger decrement locally; the ledger's first owner removes an unreferenced object."""
    a: RefArgs = req.args
    try:  # execute_peer holds the ledger's object lock: read-modify-write is safe
        emptied = await node.io(reclaim.apply_decref, node.store, a.oid, a.generation, a.count)
    except StoreError as e:
        return Reply(e.result)
    if emptied:
        owners = node.ring.oid_to_nodes(a.oid, gateway.obj_copies(node, a.oid))
        if owners and owners[0].nid == node.me.nid:
            data_oid = ledger_to_data_oid(a.oid)
            reply = await gateway.fanout(node, Op.REMOVE_OBJ, data_oid)
            log.info("%016x is no longer referenced: removed (%#x)", data_oid, reply.result)
    return Reply(Res.SUCCESS)


# ---------------------------------------------------------------------------- gateway object I/O

async def gw_read(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    if a.offset + req.data_length > gateway.obj_size(node, a.oid):
        return Reply(Res.INVALID_PARMS)
    return await gateway.read_obj(node, a.oid, a.offset, req.data_length, a.copies)


async def gw_write(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    if a.offset + len(payload) > gateway.obj_size(node, a.oid):
        return Reply(Res.INVALID_PARMS)
    if gateway.readonly(node, a.oid):
        return Reply(Res.READONLY)
    if is_vdi_obj(a.oid) and reclaim.is_index_update(a.offset, len(payload)):
        copies = gateway.obj_copies(node, a.oid, a.copies)
        return Reply(await reclaim.write_index(node, a.oid, a.offset, payload, copies,
                                               req.flags & ~Flag.CMD_WRITE))
    return await gateway.fanout(node, Op.WRITE_OBJ, a.oid, a.offset, payload, a.copies,
                                req.flags & ~Flag.CMD_WRITE)


async def gw_create_and_write(node: "Node", req: Request, payload: bytes) -> Reply:
    a: ObjArgs = req.args
    return await gateway.create_and_write(node, a.oid, a.offset, payload, a.copies,
                                          req.flags & ~Flag.CMD_WRITE, a.cow_oid)


async def gw_remove(node: "Node", req: Request, payload: bytes) -> Reply:
    return await gateway.fanout(node, Op.REMOVE_OBJ, req.args.oid, copies=req.args.copies)


async def gw_decref(node: "Node", req: Request, payload: bytes) -> Reply:
    a: RefArgs = req.args
    return await gateway.fanout(node, Op.DECREF_OBJ, a.oid,
                                args=RefArgs(oid=a.oid, generation=a.generation, count=a.count))


async def discard_obj(node: "Node", req: Request, payload: bytes) -> Reply:
    """DISCARD_OBJ: clear the index entry (which releases the reference).  Unlike sheep 1.0
    we do not then remove the object unconditionally: a snapshot or clone may still use it,
    and the release already removed it if this VDI was its only owner."""
    oid = req.args.oid
    if not is_data_obj(oid):
        return Reply(Res.INVALID_PARMS)
    vid, idx = oid_to_vid(oid), data_oid_to_idx(oid)
    inode_oid = vid_to_vdi_oid(vid)
    copies = gateway.obj_copies(node, inode_oid)
    entry = await gateway.read_obj(node, inode_oid, data_vid_offset(idx), 4, copies)
    if entry.result != Res.SUCCESS:
        return Reply(entry.result)
    if bytes(entry.data) == bytes(4):
        return Reply(Res.SUCCESS)
    return Reply(await reclaim.write_index(node, inode_oid, data_vid_offset(idx), bytes(4), copies, 0))


# ---------------------------------------------------------------------------- information

async def get_node_list(node: "Node", req: Request, payload: bytes) -> Reply:
    data = encode_nodes(node.members)
    if len(data) > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, data, NodeRsp(nr_nodes=len(node.members)))


async def cluster_info(node: "Node", req: Request, payload: bytes) -> Reply:
    if req.data_length < CLUSTER_INFO_SIZE:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, node.cluster_info().encode())


async def get_cluster_default(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, args=ClusterDefaultRsp(nr_copies=node.nr_copies, copy_policy=node.copy_policy,
                                                     block_size_shift=node.block_size_shift))


async def stat_sheep(node: "Node", req: Request, payload: bytes) -> Reply:
    if node.opts.gateway:
        return Reply(Res.SUCCESS, args=NodeRsp())
    free = await node.io(node.store.free_bytes)
    used = await node.io(node.store.used_bytes)
    return Reply(Res.SUCCESS, args=NodeRsp(store_size=free + used, store_free=free))


def status_result(node: "Node") -> int:
    if node.status == Status.OK:
        return Res.SUCCESS
    if node.status == Status.WAIT:
        return Res.WAIT_FOR_JOIN if node.ctime else Res.WAIT_FOR_FORMAT
    if node.status == Status.SHUTDOWN:
        return Res.SHUTDOWN
    return Res.SYSTEM_ERROR


async def _epoch_nodes(node: "Node", epoch: int) -> tuple[list, int] | None:
    """An epoch's members; a missing epoch file is fetched from a member and saved."""
    got = await node.io(node.meta.load_epoch, epoch)
    if got is not None:
        return got
    for peer in node.members:
        if peer.nid == node.me.nid:
            continue
        rsp, data = await node.peers.call(peer.nid, Request(Op.GET_EPOCH, data_length=SD_NODE_SIZE * 6144 + 8,
                                                            args=ObjArgs(tgt_epoch=epoch)))
        if rsp.result == Res.SUCCESS:
            nodes, when = decode_epoch_file(bytes(data))
            await node.io(node.meta.save_epoch, epoch, nodes, when)
            return nodes, when
    return None


async def stat_cluster(node: "Node", req: Request, payload: bytes) -> Reply:
    slots = req.args.nodes_nr
    entry_size = EPOCH_LOG_SIZE + slots * SD_NODE_SIZE
    max_entries = req.data_length // entry_size if entry_size else 0
    out = bytearray()
    for i, epoch in enumerate(range(node.epoch, 0, -1)):
        if i >= max_entries:
            break
        got = await _epoch_nodes(node, epoch)
        if got is None:
            continue
        nodes, when = got
        if len(nodes) > slots:
            return Reply(Res.BUFFER_SMALL)
        first = i == 0
        out += EpochLog(
            ctime=node.ctime if first else 0, time=when, epoch=epoch,
            disable_recovery=node.disable_recovery if first else 0,
            nr_copies=node.nr_copies if first else 0, copy_policy=node.copy_policy if first else 0,
            flags=node.flags if first else 0, drv_name=node.store_name if first else "",
            nodes=nodes).encode(slots)
    return Reply(status_result(node), bytes(out))


async def get_epoch(node: "Node", req: Request, payload: bytes) -> Reply:
    raw = await node.io(node.meta.load_epoch_raw, req.args.tgt_epoch)
    if raw is None:
        return Reply(Res.NO_TAG)
    if len(raw) > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, raw)


async def read_vdis(node: "Node", req: Request, payload: bytes) -> Reply:
    if req.data_length != VDI_BITMAP_SIZE:
        return Reply(Res.INVALID_PARMS)
    bits = node.vdis.deleted.bits if req.opcode == Op.READ_DEL_VDIS else node.vdis.inuse.bits
    return Reply(Res.SUCCESS, bytes(bits))


async def get_store_list(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, "".join(f"{s} " for s in STORES).encode()[:req.data_length])


async def exist(node: "Node", req: Request, payload: bytes) -> Reply:
    if node.opts.gateway:
        return Reply(Res.NO_OBJ)
    return Reply(Res.SUCCESS if await node.io(node.store.exists, req.args.oid) else Res.NO_OBJ)


async def oids_exist(node: "Node", req: Request, payload: bytes) -> Reply:
    oids = struct.unpack(f"<{len(payload) // 8}Q", bytes(payload[:len(payload) // 8 * 8]))
    missing = [o for o in oids if node.opts.gateway or not await node.io(node.store.exists, o)]
    if not missing:
        return Reply(Res.SUCCESS)
    return Reply(Res.NO_OBJ, struct.pack(f"<{len(missing)}Q", *missing))


async def get_obj_list(node: "Node", req: Request, payload: bytes) -> Reply:
    """Every object held here, stale copies included; with CMD_DIRECT (our recovery's
    private use of the flag) only the live ones."""
    if req.epoch:  # a recovering node: answer once we are at its epoch, older writes landed
        await node.wait_epoch_at_least(req.epoch, 5.0)
        await node.drain_older(req.epoch)
    oids = [] if node.opts.gateway else await node.io(node.store.object_list, req.flags)
    data = struct.pack(f"<{len(oids)}Q", *oids)
    if len(data) > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, data)


async def get_hash(node: "Node", req: Request, payload: bytes) -> Reply:
    oid = req.args.oid
    size = object_size(oid, node.vdis.shift(oid_to_vid(oid), node.block_size_shift))
    try:
        digest = await node.io(node.store.sha1, oid, size)
    except StoreError as e:
        return Reply(e.result)
    return Reply(Res.SUCCESS, args=HashRsp(digest=digest))


async def noop(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS)


async def stat(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, node.stats.encode())


async def get_loglevel(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, struct.pack("<i", node.log_level))


async def set_loglevel(node: "Node", req: Request, payload: bytes) -> Reply:
    if len(payload) < 4:
        return Reply(Res.INVALID_PARMS)
    (level,) = struct.unpack_from("<i", payload)
    if not 0 <= level <= 7:
        return Reply(Res.INVALID_PARMS)
    node.log_level = level
    from .logger import set_level
    set_level(level)
    return Reply(Res.SUCCESS)


async def stat_recovery(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, node.recovery.status().encode())


async def get_recovery(node: "Node", req: Request, payload: bytes) -> Reply:
    m, i = node.opts.recovery_max, node.opts.recovery_interval
    return Reply(Res.SUCCESS, RecoveryThrottling(max_exec_count=m, queue_work_interval=i,
                                                 throttling=bool(m and i)).encode())


async def set_recovery(node: "Node", req: Request, payload: bytes) -> Reply:
    t = RecoveryThrottling.decode(bytes(payload).ljust(24, b"\0"))
    if bool(t.max_exec_count) != bool(t.queue_work_interval):
        return Reply(Res.INVALID_PARMS)
    node.opts.recovery_max, node.opts.recovery_interval = t.max_exec_count, t.queue_work_interval
    return Reply(Res.SUCCESS)


async def set_vnodes(node: "Node", req: Request, payload: bytes) -> Reply:
    """Fixed-vnodes clusters only: change this node's vnode count (an epoch bump)."""
    if node.opts.gateway:
        return Reply(Res.GATEWAY_MODE)
    if node.flags & ClusterFlag.AUTO_VNODES:
        return Reply(Res.INVALID_VNODES_STRATEGY)
    if len(payload) < 4:
        return Reply(Res.INVALID_PARMS)
    (count,) = struct.unpack_from("<i", payload)
    if not 1 <= count <= 65535:
        return Reply(Res.INVALID_PARMS)
    await node.driver.update_node(replace(node.me, nr_vnodes=count).encode())
    return Reply(Res.SUCCESS)


async def get_vnodes(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.SUCCESS, struct.pack("<i", node.me.nr_vnodes))


async def kill_node(node: "Node", req: Request, payload: bytes) -> Reply:
    node.status = Status.KILLED
    log.info("killed by request")
    node.shutdown_event.set()
    return Reply(Res.SUCCESS)


# ---------------------------------------------------------------------------- cluster (main steps)

async def make_fs_work(node: "Node", req: Request, payload: bytes) -> Reply:
    store = cstr(bytes(payload)) if payload else "plain"
    if store not in STORES:
        return Reply(Res.NO_STORE)
    return Reply(Res.SUCCESS)


async def make_fs_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    a = req.args
    await node.io(node.store.purge)
    node.ctime = a.ctime
    node.flags = a.flags
    node.nr_copies = a.copies or SD_DEFAULT_COPIES
    node.copy_policy = a.copy_policy
    node.block_size_shift = a.block_size_shift or SD_DEFAULT_BLOCK_SIZE_SHIFT
    node.store_name = cstr(bytes(data)) or "plain"
    node.disable_recovery = 0
    await node.io(node.save_config)
    await node.io(node.meta.clear_epochs)
    node.vdis.reset()
    node._set_members(node.members)
    node.epoch = 1
    await node.io(node.meta.save_epoch, 1, list(node.members), int(time.time()))
    node.status = Status.OK
    node.epoch_changed()
    log.info("cluster formatted: %d copies, policy %#x, shift %d, flags %#x, epoch 1",
             node.nr_copies, node.copy_policy, node.block_size_shift, node.flags)


async def shutdown_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    node.status = Status.SHUTDOWN
    await node.io(node.save_config, 1)
    log.info("cluster shutdown requested")
    node.shutdown_event.set()


async def recover_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    node.disable_recovery = 1 if req.opcode == Op.DISABLE_RECOVER else 0
    if not node.disable_recovery and node.status == Status.OK:
        node.recovery.kick()  # resume a suspended recovery


async def complete_recovery_main(node: "Node", req: Request, rsp: Response, data: bytes,
                                 sender: SdNode) -> None:
    await node.recovery.completed_by(req.args.tgt_epoch, SdNode.decode(bytes(data)).nid)


async def force_recover_work(node: "Node", req: Request, payload: bytes) -> Reply:
    """Only a waiting cluster can be forced; the reply names the last epoch's nodes."""
    if node.status != Status.WAIT or not node.ctime:
        return Reply(Res.FORCE_RECOVER)
    data = encode_nodes(node.wait_nodes)
    if len(data) > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, data)


async def force_recover_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    """End WAIT with whoever is present: a new epoch, then recovery."""
    if node.status != Status.WAIT:
        return
    await node.force_recover()


async def reweight_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    """Every node re-measures its store; a change of 1 % or more updates its weight."""
    if node.opts.gateway:
        return
    space = await node.io(lambda: node.store.free_bytes() + node.store.used_bytes())
    if abs(space - node.space) * 100 >= max(node.space, 1):
        node.space = space
        await node.io(node.save_config)
        node.spawn(node.driver.update_node, replace(node.me, space=space).encode())


async def alter_cluster_copy_work(node: "Node", req: Request, payload: bytes) -> Reply:
    return Reply(Res.INVALID_PARMS if req.args.copy_policy else Res.SUCCESS)


async def alter_cluster_copy_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    node.nr_copies = req.args.copies
    await node.io(node.save_config)


__all__ = ["hashlib"]
