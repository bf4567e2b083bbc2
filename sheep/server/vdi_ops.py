"""VDI operations: lookup by name, NEW_VDI, GET_VDI_INFO, LOCK/RELEASE, DEL_VDI
(wire.md §9.2, objects.md §5-§6).

Cluster ops run their work step on the receiving node inside the driver's exclusive
section, so a vid chosen here cannot be chosen concurrently elsewhere; the main steps
(`*_main`) run on every node in the same order.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..proto.constants import (
    LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED, SD_INODE_HEADER_SIZE, Status, SD_INODE_SIZE, SD_NR_VDIS, VDI_STATE_SIZE, ClusterFlag,
    Flag, Op, Res,
)
from ..proto.hashing import hash_vdi
from ..proto.header import Request, Response, VdiArgs, VdiRsp, VdiStateArgs
from ..proto.inode import INODE_BTREE_MAGIC, Inode, InodeHeader
from ..proto.oid import is_vdi_obj, oid_to_vid, vid_to_vdi_oid
from ..proto.sizes import ec_policy_to_dp
from ..proto.structs import SdNode, VdiState, pad
from . import gateway, reclaim, vdi_family
from .node import Reply, now_ctime, vdi_op_message
from .vdi_table import LOCK_LOCKED, LOCK_SHARED, LOCK_UNLOCKED, MAX_PARTICIPANTS, VdiEntry

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.vdi")

BTREE_ROOT = struct.pack("<HHI", INODE_BTREE_MAGIC, 1, 0)  # fresh hyper volume: depth 1, no entries


@dataclass
class Lookup:
    result: int
    vid: int = 0
    snapid: int = 1  # snap_id a new working VDI of this name gets
    free_bit: int = 0


def _name_tag(payload: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    if len(payload) not in (256, 512):
        return None
    name = bytes(payload[:256]).split(b"\0", 1)[0]
    tag = bytes(payload[256:512]).split(b"\0", 1)[0] if len(payload) == 512 else b""
    return name, tag


async def read_header(node: "Node", vid: int) -> InodeHeader | None:
    reply = await gateway.read_obj(node, vid_to_vdi_oid(vid), 0, SD_INODE_HEADER_SIZE)
    if reply.result != Res.SUCCESS:
        return None
    return InodeHeader.decode(bytes(reply.data))


async def lookup(node: "Node", name: bytes, tag: bytes = b"", snapid: int = 0) -> Lookup:
    """`vdi_lookup` (objects.md §5.3): probe the run of vids that starts at the name hash."""
    inuse = node.vdis.inuse
    left = hash_vdi(name) or 1
    right = inuse.find_next_zero(left)
    wrap = right == SD_NR_VDIS
    if wrap:
        right = inuse.find_next_zero(1)
        if right == SD_NR_VDIS:
            return Lookup(Res.FULL_VDI)
    if left == right:
        return Lookup(Res.NO_VDI, free_bit=right)
    ranges = [(1, right), (left, SD_NR_VDIS)] if wrap else [(left, right)]
    found = Lookup(Res.NO_VDI, free_bit=right)
    for lo, hi in ranges:
        found = await _scan(node, name, tag, snapid, lo, hi)
        found.free_bit = right
        if found.result not in (Res.NO_VDI, Res.NO_TAG) or found.vid:
            break
    return found


async def _scan(node: "Node", name: bytes, tag: bytes, snapid: int, lo: int, hi: int) -> Lookup:
    selector = bool(tag) or snapid != 0
    name_seen = False
    for vid in range(hi - 1, lo - 1, -1):
        if not (node.vdis.inuse.test(vid) or node.vdis.deleted.test(vid)):
            continue
        hdr = await read_header(node, vid)
        if hdr is None or hdr.name.encode("utf-8", "surrogateescape") != name:
            continue
        if selector:
            if not hdr.is_snapshot:
                name_seen = True
                continue
            if (hdr.tag and hdr.tag.encode("utf-8", "surrogateescape") == tag) or snapid == hdr.snap_id:
                return Lookup(Res.SUCCESS, vid, hdr.snap_id + 1)
            continue
        if hdr.is_snapshot:
            return Lookup(Res.NO_VDI, vid, hdr.snap_id + 1)
        return Lookup(Res.SUCCESS, vid, hdr.snap_id + 1)
    return Lookup(Res.NO_TAG if selector and name_seen else Res.NO_VDI)


def _vdi_reply(node: "Node", vid: int) -> Reply:
    return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=vid, copies=node.vdis.copies(vid, node.nr_copies),
                                          block_size_shift=node.vdis.shift(vid, node.block_size_shift)))


# ---------------------------------------------------------------------------- GET_VDI_INFO / LOCK

async def resolve(node: "Node", req: Request, payload: bytes) -> Lookup:
    """Name (+ tag) payload and snapid of a GET_VDI_INFO-style request to a vid."""
    nt = _name_tag(payload)
    if nt is None:
        return Lookup(Res.INVALID_PARMS)
    return await lookup(node, nt[0], nt[1], req.args.snapid)


async def get_vdi_info_work(node: "Node", req: Request, payload: bytes) -> Reply:
    found = await resolve(node, req, payload)
    if found.result != Res.SUCCESS:
        return Reply(found.result)
    return _vdi_reply(node, found.vid)


async def lock_vdi_work(node: "Node", req: Request, payload: bytes) -> Reply:
    reply = await get_vdi_info_work(node, req, payload)
    if reply.result != Res.SUCCESS or not node.flags & ClusterFlag.USE_LOCK:
        return reply
    vid = reply.args.vdi_id
    entry = node.vdis.entries.get(vid)
    if entry is not None and entry.snapshot:
        return reply  # snapshots are immutable: readers never exclude each other
    if entry is not None and entry.lock_state == LOCK_LOCKED:
        return Reply(Res.VDI_LOCKED)  # a normal lock excludes everyone
    if entry is not None and req.args.type == LOCK_TYPE_NORMAL and entry.lock_state != LOCK_UNLOCKED:
        return Reply(Res.VDI_LOCKED)  # shared participants exclude a normal lock
    if entry is not None and len(entry.participants) >= MAX_PARTICIPANTS:
        return Reply(Res.VDI_LOCKED)
    return reply


async def lock_vdi_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    if not node.flags & ClusterFlag.USE_LOCK or rsp.result != Res.SUCCESS:
        return
    entry = node.vdis.entries.get(rsp.args.vdi_id)
    if entry is not None and not entry.snapshot and req.args.type == LOCK_TYPE_SHARED:
        entry.lock_state = LOCK_SHARED
        if sender.nid not in entry.participants:
            entry.participants.append(sender.nid)
        return
    if entry is not None and not entry.snapshot:
        entry.lock_state = LOCK_LOCKED
        entry.lock_owner = sender.nid


async def release_vdi_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    entry = node.vdis.entries.get(req.args.base_vdi_id)
    if entry is None or entry.lock_state == LOCK_UNLOCKED:
        if node.flags & ClusterFlag.USE_LOCK:
            log.info("unlocking unlocked VDI %x", req.args.base_vdi_id)
        return
    if entry.lock_state == LOCK_SHARED:  # the sender leaves the participants
        entry.participants = [p for p in entry.participants if p != sender.nid]
        if entry.participants:
            return
    entry.lock_state, entry.lock_owner = LOCK_UNLOCKED, None


# ---------------------------------------------------------------------------- NEW_VDI

def effective_copies(node: "Node", a: VdiArgs) -> tuple[int, int]:
    if a.copies == 0:
        copies, policy = node.nr_copies, node.copy_policy
    else:
        copies, policy = a.copies, a.copy_policy
    if policy:
        d, p = ec_policy_to_dp(policy)
        copies = d + p
    return copies, policy


async def new_vdi_work(node: "Node", req: Request, payload: bytes) -> Reply:
    if len(payload) != 256:
        return Reply(Res.INVALID_PARMS)
    name = bytes(payload).split(b"\0", 1)[0]
    if not name:
        return Reply(Res.INVALID_PARMS)
    a: VdiArgs = req.args
    found = await lookup(node, name)
    if found.result == Res.FULL_VDI:
        return Reply(Res.FULL_VDI)
    if a.snapid == 0:
        if found.result == Res.SUCCESS:
            return Reply(Res.VDI_EXIST)
        if found.result != Res.NO_VDI:
            return Reply(found.result)
        if a.base_vdi_id:
            return await vdi_family.clone(node, name.decode("utf-8", "surrogateescape"), a.base_vdi_id,
                                          found.free_bit, found.snapid, a)
        return await _create(node, name, a, found)
    if found.result != Res.SUCCESS:
        return Reply(found.result)
    if a.base_vdi_id in (0, found.vid):
        return await vdi_family.snapshot(node, found.vid, found.free_bit)
    return await vdi_family.rebase(node, found.vid, a.base_vdi_id, found.free_bit, a)


async def _create(node: "Node", name: bytes, a: VdiArgs, found: Lookup) -> Reply:
    copies, policy = effective_copies(node, a)
    shift = a.block_size_shift or node.block_size_shift
    new_vid = found.free_bit
    hdr = InodeHeader(name=name.decode("utf-8", "surrogateescape"), tag="", create_time=now_ctime(),
                      snap_ctime=0, vm_clock_nsec=0, vdi_size=a.vdi_size, vm_state_size=0,
                      copy_policy=policy, store_policy=a.store_policy, nr_copies=copies,
                      block_size_shift=shift, snap_id=found.snapid, vdi_id=new_vid,
                      parent_vdi_id=0, btree_counter=0)
    body = hdr.encode() + (BTREE_ROOT if a.store_policy == 1 else b"")
    await notify_vdi_add(node, 0, new_vid, copies, policy, shift)
    written = await gateway.create_and_write(node, vid_to_vdi_oid(new_vid), 0, body, copies)
    if written.result != Res.SUCCESS:
        log.error("failed to write the inode of %s (%x): %#x", name, new_vid, written.result)
        return Reply(Res.VDI_WRITE)
    log.info("created VDI %s as %x (%d copies, shift %d)", name.decode(errors="replace"), new_vid,
             copies, shift)
    return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=new_vid, copies=copies, block_size_shift=shift))


async def notify_vdi_add(node: "Node", old_vid: int, new_vid: int, copies: int, policy: int,
                         shift: int, set_bitmap: int = 0) -> None:
    """Register a vid's state on every node before its inode is written (NOTIFY_VDI_ADD)."""
    req = Request(Op.NOTIFY_VDI_ADD, args=VdiStateArgs(old_vid=old_vid, new_vid=new_vid, copies=copies,
                                                        set_bitmap=set_bitmap, copy_policy=policy,
                                                        block_size_shift=shift))
    await node.driver.notify(vdi_op_message(req, Response(Op.NOTIFY_VDI_ADD)))


async def notify_vdi_add_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    a: VdiStateArgs = req.args
    old = node.vdis.entries.get(a.old_vid) if a.old_vid else None
    if old is not None:
        old.snapshot = True
    if a.set_bitmap:
        node.vdis.inuse.set(a.new_vid)
    node.vdis.add(a.new_vid, VdiEntry(nr_copies=a.copies, copy_policy=a.copy_policy,
                                      block_size_shift=a.block_size_shift, parent_vid=a.old_vid))
    if old is not None and old.lock_state != LOCK_UNLOCKED:
        # the lock follows the working VDI, so the opener's RELEASE of the new vid frees it
        node.vdis.move_lock(a.old_vid, a.new_vid)


async def new_vdi_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    if rsp.result != Res.SUCCESS:
        return
    new_vid = rsp.args.vdi_id
    node.vdis.inuse.set(new_vid)
    held = node.vdis.handover.pop(bytes(data[:256]), None)
    if held is not None and req.args.snapid == 0 and req.args.base_vdi_id:
        # a branch replacing the deleted locked working VDI (QEMU's goto) keeps its lock
        node.vdis.move_lock(held, new_vid)


async def alter_vdi_copy_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    """ALTER_VDI_COPY: every node records the vid's new copy count; a recovery pass then
    moves replicas to match (dog rewrote the inode header first)."""
    a: VdiStateArgs = req.args
    entry = node.vdis.entries.get(a.new_vid)
    if entry is None:
        return
    entry.nr_copies = a.copies
    log.info("VDI %x now has %d copies", a.new_vid, a.copies)
    if node.status == Status.OK:
        await node.recovery.mark_stale(node.epoch + 1)  # replicas beyond the new count
        node.recovery.kick()


# ---------------------------------------------------------------------------- DEL_VDI

async def del_vdi_work(node: "Node", req: Request, payload: bytes) -> Reply:
    """Unlike sheep 1.0, deletion is effective whatever the index holds (objects.md §6.6)."""
    found = await resolve(node, req, payload)
    if found.result != Res.SUCCESS:
        return Reply(found.result)
    vid = found.vid
    oid = vid_to_vdi_oid(vid)
    copies = node.vdis.copies(vid, node.nr_copies)
    full = await gateway.read_obj(node, oid, 0, SD_INODE_SIZE, copies)
    if full.result != Res.SUCCESS:
        return Reply(Res.VDI_READ if full.result == Res.NO_OBJ else full.result)
    inode = Inode.decode(full.data)
    for idx in inode.used_indexes():
        gen, count = inode.gref_of(idx)
        await reclaim.release(node, inode.get_vid(idx), idx, gen, count)
    hdr = inode.header
    hdr_name, hdr.name = hdr.name, ""
    hdr.vdi_size = 0
    cleared = await gateway.create_and_write(node, oid, 0, hdr.encode(), copies)
    if cleared.result != Res.SUCCESS:
        return Reply(Res.VDI_WRITE)
    log.info("deleted VDI %s (%x)", hdr_name, vid)
    return Reply(Res.SUCCESS, args=VdiRsp(vdi_id=vid))


async def del_vdi_main(node: "Node", req: Request, rsp: Response, data: bytes, sender: SdNode) -> None:
    if rsp.result != Res.SUCCESS:
        return
    vid = rsp.args.vdi_id
    node.vdis.deleted.set(vid)
    entry = node.vdis.entries.get(vid)
    if entry is not None:
        entry.deleted = True
        if entry.lock_state != LOCK_UNLOCKED and not entry.snapshot:
            node.vdis.handover[bytes(data[:256])] = vid  # see new_vdi_main
        else:
            entry.lock_state, entry.lock_owner, entry.participants = LOCK_UNLOCKED, None, []


# ---------------------------------------------------------------------------- state exchange

async def get_vdi_copies(node: "Node", req: Request, payload: bytes) -> Reply:
    states = node.vdis.to_states()
    if len(states) * VDI_STATE_SIZE > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, b"".join(s.encode() for s in states))


async def fetch_vdi_states(node: "Node", peers: list[SdNode]) -> None:
    """Learn every vid that ``peers`` know (GET_VDI_COPIES): a joiner asks the members and
    the members ask the joiner, so bitmaps converge even after a cold restart, when each
    node only found the inodes it stores (objects.md §5.2)."""
    try:
        for peer in peers:
            if peer.nid != node.me.nid:
                await _merge_vdi_states(node, peer)
    finally:
        node.vdi_states_ready.set()


async def _merge_vdi_states(node: "Node", peer: SdNode) -> None:
    size = 512 * VDI_STATE_SIZE
    while True:
        rsp, data = await node.peers.call(peer.nid, Request(Op.GET_VDI_COPIES, data_length=size))
        if rsp.result != Res.BUFFER_SMALL:
            break
        size *= 2
    if rsp.result != Res.SUCCESS:
        log.warning("could not learn VDIs from %s: %#x", peer.nid, rsp.result)
        return
    for off in range(0, len(data) - VDI_STATE_SIZE + 1, VDI_STATE_SIZE):
        node.vdis.merge_state(VdiState.decode(data, off))


def scan_local_inodes(node: "Node") -> None:
    """At start-up: every inode object in the local store marks its vid in use (blocking)."""
    for oid in node.store.list_oids():
        if not is_vdi_obj(oid):
            continue
        try:
            hdr = InodeHeader.decode(bytes(node.store.read(oid, 0, SD_INODE_HEADER_SIZE)))
        except Exception:
            log.warning("unreadable inode object %016x skipped", oid)
            continue
        vid = oid_to_vid(oid)
        node.vdis.inuse.set(vid)
        if not hdr.name:
            node.vdis.deleted.set(vid)
        node.vdis.add(vid, VdiEntry(nr_copies=hdr.nr_copies, copy_policy=hdr.copy_policy,
                                    block_size_shift=hdr.block_size_shift, snapshot=hdr.is_snapshot,
                                    deleted=not hdr.name, parent_vid=hdr.parent_vdi_id))


__all__ = ["lookup", "pad", "Flag"]
