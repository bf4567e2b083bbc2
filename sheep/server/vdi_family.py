"""New VDIs derived from existing ones: snapshot, clone/branch, rebase (objects.md §6.3-§6.5).

All three create a child inode whose index is copied from a base inode, with generational
references (§8): each used entry of the base gets ``count += 1`` and the child holds the
reference at ``generation + 1``.  They run inside NEW_VDI's work step (cluster-exclusive).
The order matters: every node learns that the old working VDI is a snapshot (its data
objects become read-only) before any inode is written.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from ..proto.constants import SD_INODE_HEADER_SIZE, SD_INODE_SIZE, Op, Res
from ..proto.header import VdiArgs, VdiRsp
from ..proto.inode import Inode, gref_offset
from ..proto.oid import vid_to_vdi_oid
from . import gateway
from .node import Reply, now_ctime

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.vdi")


async def read_inode(node: "Node", vid: int) -> Inode | None:
    reply = await gateway.read_obj(node, vid_to_vdi_oid(vid), 0, SD_INODE_SIZE)
    if reply.result != Res.SUCCESS:
        return None
    return Inode.decode(reply.data)


def derive(base: Inode, new_vid: int, **header: object) -> tuple[Inode, list[int]]:
    """A child of ``base`` sharing its objects; bumps ``base``'s reference counts in memory.
    Returns the child and the indexes whose references changed."""
    used = list(base.used_indexes())
    child = Inode(header=replace(base.header, tag="", snap_ctime=0, vm_state_size=0, vm_clock_nsec=0,
                                 vdi_id=new_vid, parent_vdi_id=base.header.vdi_id, **header))
    child.data_vdi_id[:] = base.data_vdi_id
    for idx in used:
        gen, count = base.gref_of(idx)
        base.set_gref(idx, gen, count + 1)
        child.set_gref(idx, gen + 1, 0)
    return child, used


async def write_grefs(node: "Node", inode: Inode, used: list[int]) -> int:
    """Rewrite the gref range that covers ``used`` (outside the index: no release side effect)."""
    if not used:
        return Res.SUCCESS
    lo, hi = used[0], used[-1] + 1
    oid = vid_to_vdi_oid(inode.header.vdi_id)
    reply = await gateway.fanout(node, Op.WRITE_OBJ, oid, gref_offset(lo), inode.gref_bytes(lo, hi),
                                 inode.header.nr_copies)
    return reply.result


async def create_inode(node: "Node", inode: Inode, used: list[int]) -> int:
    """Write a new inode: header + index prefix in one create, then its grefs."""
    end = used[-1] + 1 if used else 0
    body = inode.header.encode() + inode.index_bytes(0, end)
    reply = await gateway.create_and_write(node, vid_to_vdi_oid(inode.header.vdi_id), 0, body,
                                           inode.header.nr_copies)
    if reply.result != Res.SUCCESS:
        return reply.result
    return await write_grefs(node, inode, used)


def _ok(child: Inode) -> Reply:
    h = child.header
    log.info("created %s %x from %x (snap_id %d)", h.name, h.vdi_id, h.parent_vdi_id, h.snap_id)
    return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=h.vdi_id, copies=h.nr_copies, block_size_shift=h.block_size_shift))


async def snapshot(node: "Node", working_vid: int, new_vid: int) -> Reply:
    """The working VDI becomes a snapshot; a new working VDI shares its objects (§6.3)."""
    from .vdi_ops import notify_vdi_add
    cur = await read_inode(node, working_vid)
    if cur is None:
        return Reply(Res.BASE_VDI_READ)
    if cur.header.store_policy == 1:
        return Reply(Res.INVALID_PARMS)  # hyper volumes are not reference counted
    now = now_ctime()
    child, used = derive(cur, new_vid, create_time=now, snap_id=cur.header.snap_id + 1)
    cur.header.snap_ctime = now
    h = cur.header
    await notify_vdi_add(node, working_vid, new_vid, h.nr_copies, h.copy_policy, h.block_size_shift)
    written = await gateway.fanout(node, Op.WRITE_OBJ, vid_to_vdi_oid(working_vid), 0,
                                   cur.header.encode(), h.nr_copies)
    if written.result != Res.SUCCESS or await write_grefs(node, cur, used) != Res.SUCCESS:
        return Reply(Res.BASE_VDI_WRITE)
    if await create_inode(node, child, used) != Res.SUCCESS:
        return Reply(Res.VDI_WRITE)
    return _ok(child)


async def clone(node: "Node", name: str, base_vid: int, new_vid: int, snap_id: int, a: VdiArgs) -> Reply:
    """A new working VDI from snapshot ``base_vid``: a clone (new name) or a branch/rollback
    (same name, its working VDI deleted) (§6.4, §6.5)."""
    from .vdi_ops import effective_copies, notify_vdi_add
    base = await read_inode(node, base_vid)
    if base is None or not base.header.name:
        return Reply(Res.NO_BASE_VDI if base is not None else Res.BASE_VDI_READ)
    copies, policy = effective_copies(node, a) if a.copies else (base.header.nr_copies, base.header.copy_policy)
    child, used = derive(base, new_vid, name=name, create_time=now_ctime(), snap_id=snap_id,
                         vdi_size=a.vdi_size or base.header.vdi_size, nr_copies=copies, copy_policy=policy)
    shift = child.header.block_size_shift
    await notify_vdi_add(node, 0, new_vid, copies, policy, shift)
    if await write_grefs(node, base, used) != Res.SUCCESS:
        return Reply(Res.BASE_VDI_WRITE)
    if await create_inode(node, child, used) != Res.SUCCESS:
        return Reply(Res.VDI_WRITE)
    return _ok(child)


async def rebase(node: "Node", working_vid: int, base_vid: int, new_vid: int, a: VdiArgs) -> Reply:
    """The working VDI becomes a snapshot and a new working VDI starts from ``base_vid``
    (QEMU's fallback when its DEL_VDI failed) (§6.5)."""
    from .vdi_ops import notify_vdi_add, read_header
    cur = await read_header(node, working_vid)
    base = await read_inode(node, base_vid)
    if cur is None:
        return Reply(Res.VDI_READ)
    if base is None:
        return Reply(Res.BASE_VDI_READ)
    now = now_ctime()
    child, used = derive(base, new_vid, name=cur.name, create_time=now, snap_id=cur.snap_id + 1,
                         vdi_size=a.vdi_size or base.header.vdi_size)
    await notify_vdi_add(node, working_vid, new_vid, child.header.nr_copies, child.header.copy_policy,
                         child.header.block_size_shift)
    stamped = await gateway.fanout(node, Op.WRITE_OBJ, vid_to_vdi_oid(working_vid), 520,
                                   now.to_bytes(8, "little"), cur.nr_copies)
    if stamped.result != Res.SUCCESS or await write_grefs(node, base, used) != Res.SUCCESS:
        return Reply(Res.BASE_VDI_WRITE)
    if await create_inode(node, child, used) != Res.SUCCESS:
        return Reply(Res.VDI_WRITE)
    return _ok(child)


__all__ = ["snapshot", "clone", "rebase", "derive", "read_inode", "SD_INODE_HEADER_SIZE"]
