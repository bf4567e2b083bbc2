"""The one dispatch table: opcode -> kind, force, handler (wire.md §6, §7).

Kinds: GATEWAY (place and forward), PEER (local store, epoch-checked), LOCAL (this node),
CLUSTER (optional `work` on the receiving node inside the cluster-wide exclusive section,
then `main` broadcast to every node in total order).  `force` ops run before format and
while waiting for members.  Opcodes absent here answer SD_RES_INVALID_PARMS.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from ..proto.constants import Flag, Op, Res, Status
from ..proto.header import Request, Response, proto_ver_ok
from ..proto.structs import SdNode
from . import local_ops as L
from . import vdi_attr as A
from . import md_ops as MD
from . import vdi_ops as V
from . import writeback as W
from .shortcircuit import local_obj
from .cluster.logdriver import BackendUnavailable
from .repair import repair_replica
from .stats import counted
from .node import Reply, vdi_op_message

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.ops")

Handler = Callable[["Node", Request, bytes], Awaitable[Reply]]
Main = Callable[["Node", Request, Response, bytes, SdNode], Awaitable[None]]  # sender


class Kind(enum.Enum):
    GATEWAY = "gateway"
    PEER = "peer"
    LOCAL = "local"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: Kind
    force: bool = False
    admin: bool = False  # logged at info level as "op=NAME"
    handler: Handler | None = None  # gateway/peer/local handler, or a cluster op's work step
    main: Main | None = None  # cluster ops: runs on every node
    data_on_error: bool = False  # reply payload even when result != SUCCESS
    sync: bool = False  # reads cluster state: first process events already delivered


G, P, LO, C = Kind.GATEWAY, Kind.PEER, Kind.LOCAL, Kind.CLUSTER

OPS: dict[int, OpSpec] = {
    Op.CREATE_AND_WRITE_OBJ: OpSpec("CREATE_AND_WRITE_OBJ", G, handler=L.gw_create_and_write),
    Op.READ_OBJ: OpSpec("READ_OBJ", G, handler=L.gw_read),
    Op.WRITE_OBJ: OpSpec("WRITE_OBJ", G, handler=L.gw_write),
    Op.REMOVE_OBJ: OpSpec("REMOVE_OBJ", G, handler=L.gw_remove),
    Op.DISCARD_OBJ: OpSpec("DISCARD_OBJ", LO, handler=L.discard_obj),
    Op.NEW_VDI: OpSpec("NEW_VDI", C, admin=True, handler=V.new_vdi_work, main=V.new_vdi_main),
    Op.LOCK_VDI: OpSpec("LOCK_VDI", C, handler=V.lock_vdi_work, main=V.lock_vdi_main),
    Op.RELEASE_VDI: OpSpec("RELEASE_VDI", C, main=V.release_vdi_main),
    Op.GET_VDI_INFO: OpSpec("GET_VDI_INFO", C, handler=V.get_vdi_info_work),
    Op.READ_VDIS: OpSpec("READ_VDIS", LO, force=True, handler=L.read_vdis, sync=True),
    Op.FLUSH_VDI: OpSpec("FLUSH_VDI", G, handler=W.gw_flush),
    Op.DEL_VDI: OpSpec("DEL_VDI", C, admin=True, handler=V.del_vdi_work, main=V.del_vdi_main),
    Op.GET_CLUSTER_DEFAULT: OpSpec("GET_CLUSTER_DEFAULT", LO, force=True, handler=L.get_cluster_default),
    Op.GET_NODE_LIST: OpSpec("GET_NODE_LIST", LO, force=True, handler=L.get_node_list, sync=True),
    Op.MAKE_FS: OpSpec("MAKE_FS", C, force=True, admin=True, handler=L.make_fs_work, main=L.make_fs_main),
    Op.SHUTDOWN: OpSpec("SHUTDOWN", C, force=True, admin=True, main=L.shutdown_main),
    Op.GET_VDI_ATTR: OpSpec("GET_VDI_ATTR", C, handler=A.get_vdi_attr_work),
    Op.STAT_SHEEP: OpSpec("STAT_SHEEP", LO, handler=L.stat_sheep),
    Op.STAT_CLUSTER: OpSpec("STAT_CLUSTER", LO, force=True, handler=L.stat_cluster, sync=True, data_on_error=True),
    Op.FORCE_RECOVER: OpSpec("FORCE_RECOVER", C, force=True, admin=True, handler=L.force_recover_work,
                             main=L.force_recover_main),
    Op.REWEIGHT: OpSpec("REWEIGHT", C, admin=True, main=L.reweight_main),
    Op.SET_VNODES: OpSpec("SET_VNODES", LO, handler=L.set_vnodes),
    Op.GET_STORE_LIST: OpSpec("GET_STORE_LIST", LO, force=True, handler=L.get_store_list),
    Op.STAT_RECOVERY: OpSpec("STAT_RECOVERY", LO, handler=L.stat_recovery),
    Op.FLUSH_DEL_CACHE: OpSpec("DEL_CACHE", LO, handler=L.noop),
    Op.KILL_NODE: OpSpec("KILL_NODE", LO, force=True, admin=True, handler=L.kill_node),
    Op.GET_OBJ_LIST: OpSpec("GET_OBJ_LIST", LO, handler=L.get_obj_list),
    Op.GET_EPOCH: OpSpec("GET_EPOCH", LO, handler=L.get_epoch),
    Op.CREATE_AND_WRITE_PEER: OpSpec("CREATE_AND_WRITE_PEER", P, handler=L.peer_create_and_write),
    Op.READ_PEER: OpSpec("READ_PEER", P, handler=L.peer_read),
    Op.WRITE_PEER: OpSpec("WRITE_PEER", P, handler=L.peer_write),
    Op.REMOVE_PEER: OpSpec("REMOVE_PEER", P, handler=L.peer_remove),
    Op.ENABLE_RECOVER: OpSpec("ENABLE_RECOVER", C, admin=True, main=L.recover_main),
    Op.DISABLE_RECOVER: OpSpec("DISABLE_RECOVER", C, admin=True, main=L.recover_main),
    Op.FLUSH_PEER: OpSpec("FLUSH_PEER", LO, handler=W.peer_flush),
    Op.COMPLETE_RECOVERY: OpSpec("COMPLETE_RECOVERY", C, force=True, main=L.complete_recovery_main),
    Op.GET_VDI_COPIES: OpSpec("GET_VDI_COPIES", LO, force=True, handler=V.get_vdi_copies, sync=True),
    Op.NOTIFY_VDI_ADD: OpSpec("NOTIFY_VDI_ADD", C, force=True, main=V.notify_vdi_add_main),
    Op.MD_INFO: OpSpec("MD_INFO", LO, handler=MD.md_info),
    Op.MD_PLUG: OpSpec("MD_PLUG_DISKS", LO, admin=True, handler=MD.md_plug),
    Op.MD_UNPLUG: OpSpec("MD_UNPLUG_DISKS", LO, admin=True, handler=MD.md_unplug),
    Op.GET_HASH: OpSpec("GET_HASH", LO, handler=L.get_hash),
    Op.STAT: OpSpec("STAT", LO, handler=L.stat),
    Op.GET_LOGLEVEL: OpSpec("GET_LOGLEVEL", LO, force=True, handler=L.get_loglevel),
    Op.SET_LOGLEVEL: OpSpec("SET_LOGLEVEL", LO, force=True, handler=L.set_loglevel),
    Op.EXIST: OpSpec("EXIST", LO, force=True, handler=L.exist),
    Op.CLUSTER_INFO: OpSpec("CLUSTER INFO", LO, force=True, handler=L.cluster_info, sync=True),
    Op.ALTER_CLUSTER_COPY: OpSpec("ALTER_CLUSTER_COPY", C, admin=True, handler=L.alter_cluster_copy_work,
                                  main=L.alter_cluster_copy_main),
    Op.ALTER_VDI_COPY: OpSpec("ALTER_VDI_COPY", C, admin=True, main=V.alter_vdi_copy_main),
    Op.OIDS_EXIST: OpSpec("OIDS_EXIST", LO, force=True, handler=L.oids_exist, data_on_error=True),
    Op.READ_DEL_VDIS: OpSpec("READ_DEL_VDIS", LO, force=True, handler=L.read_vdis, sync=True),
    Op.GET_RECOVERY: OpSpec("GET_RECOVERY", LO, force=True, handler=L.get_recovery),
    Op.SET_RECOVERY: OpSpec("SET_RECOVERY", LO, force=True, handler=L.set_recovery),
    Op.GET_VNODES: OpSpec("GET_VNODES", LO, handler=L.get_vnodes),
    Op.DECREF_OBJ: OpSpec("DECREF_OBJ", G, handler=L.gw_decref),
    Op.DECREF_PEER: OpSpec("DECREF_PEER", P, handler=L.peer_decref),
    Op.REPAIR_REPLICA: OpSpec("REPAIR_REPLICA", LO, handler=repair_replica),
    Op.LOCAL_OBJ: OpSpec("LOCAL_OBJ", LO, handler=local_obj),  # ours: short-circuit I/O
}


def _gate(node: "Node", spec: OpSpec) -> int:
    """Cluster-state gate (wire.md §6.3)."""
    if node.status == Status.SHUTDOWN:
        return Res.SHUTDOWN
    if node.status == Status.KILLED:
        return Res.KILLED
    if node.status == Status.WAIT and not spec.force:
        return Res.WAIT_FOR_JOIN if node.ctime else Res.WAIT_FOR_FORMAT
    return Res.SUCCESS


_SHARED = frozenset({Op.READ_PEER, Op.WRITE_PEER})  # plain I/O: may run side by side


async def execute_peer(node: "Node", req: Request, payload: bytes) -> Reply:
    """A peer op with the epoch check of `check_request_epoch` (wire.md §6.4).

    The check and the store operation happen under the object's lock, which recovery
    reads take too: a write that passed the check at the old epoch is complete before a
    recovering node copies the object, and a later one is refused with OLD_NODE_VER."""
    spec = OPS[req.opcode]
    assert spec.handler is not None
    oid = req.args.oid
    if not oid:
        return await spec.handler(node, req, payload)
    if req.flags & Flag.CMD_RECOVERY:
        await node.wait_epoch_at_least(req.epoch, 5.0)  # older writes have landed on us
        await node.drain_older(req.epoch)
        async with node.object_lock(oid):
            return await spec.handler(node, req, payload)
    if req.epoch > node.epoch and not await node.wait_epoch_at_least(req.epoch, 5.0):
        return Reply(Res.NEW_NODE_VER)
    if req.opcode in (Op.READ_PEER, Op.WRITE_PEER):
        await node.recovery.recover_now(oid)  # the object may still be due here
    lock = node.object_lock(oid)
    for attempt in range(2):
        async with (lock.shared() if req.opcode in _SHARED else lock):
            if req.epoch < node.epoch:
                return Reply(Res.OLD_NODE_VER)
            with node.in_flight(req.epoch):
                reply = await spec.handler(node, req, payload)
        if reply.result != Res.NO_OBJ or req.opcode != Op.WRITE_PEER or attempt:
            return reply
        # we own it but recovery never heard of it (created just before the epoch changed)
        if not await node.recovery.fetch_missing(oid):
            return reply
    return reply


async def run_cluster_op(node: "Node", spec: OpSpec, req: Request, payload: bytes) -> Reply:
    async with node.driver.exclusive():
        reply = await spec.handler(node, req, payload) if spec.handler else Reply()
        if reply.result != Res.SUCCESS or spec.main is None:
            return reply
        rsp = Response(req.opcode, reply.result, 0, req.id, node.epoch, reply.args)
        data = payload if req.flags & Flag.CMD_WRITE else reply.data
        await node.driver.notify(vdi_op_message(req, rsp, bytes(data)))
    return reply


async def dispatch(node: "Node", req: Request, payload: bytes) -> Reply:
    """Steps of `queue_request`: version, lookup, state gate, then by kind."""
    if not proto_ver_ok(req.opcode, req.proto_ver):
        return Reply(Res.VER_MISMATCH)
    spec = OPS.get(req.opcode)
    if spec is None:
        log.debug("unknown opcode %#x", req.opcode)
        return Reply(Res.INVALID_PARMS)
    gate = _gate(node, spec)
    if gate != Res.SUCCESS:
        await node.driver.sync()  # e.g. a format just acknowledged by another node
        gate = _gate(node, spec)
        if gate != Res.SUCCESS:
            return Reply(gate)
    if spec.admin:
        log.info("op=%s", spec.name)
    if spec.sync:
        await node.driver.sync()
    if node.suspended and spec.kind in (Kind.GATEWAY, Kind.PEER) and not await node.wait_resumed(30):
        return Reply(Res.NETWORK_ERROR)  # cut off from the cluster: acknowledge nothing
    try:
        with counted(node.stats, req, gateway=spec.kind is Kind.GATEWAY, peer=spec.kind is Kind.PEER):
            if spec.kind is Kind.PEER:
                return await execute_peer(node, req, payload)
            if spec.kind is Kind.CLUSTER:
                return await run_cluster_op(node, spec, req, payload)
            assert spec.handler is not None
            return await spec.handler(node, req, payload)
    except BackendUnavailable as e:  # the coordination service stayed out of reach
        log.warning("%s failed: %s", spec.name, e)
        return Reply(Res.NETWORK_ERROR)
    except Exception:
        log.exception("%s failed", spec.name)
        return Reply(Res.SYSTEM_ERROR)
