"""Releasing data objects that an inode stops referencing (objects.md §8).

An inode holds one reference, at generation ``g``, to each object in its index; ``c``
counts children that inherited it.  When an index entry changes from ``old`` to something
else (a COW update, a discard, zeroing before delete, DEL_VDI itself), the reference is
released: with ``(g, c) == (0, 0)`` the inode was the sole owner and the object is removed
at once; otherwise a DECREF goes to every replica of the object's ledger (2^20 u32
counters), and the object is removed when its ledger sums to zero.

Unlike sheep 1.0, releases are synchronous: the index write is acknowledged only after
the references are settled, so a crash cannot forget a decrement (upstream issue #315).
"""
from __future__ import annotations

import logging
import struct
from array import array
from typing import TYPE_CHECKING

from ..proto.constants import SD_INODE_HEADER_SIZE, SD_INODE_INDEX_END, SD_LEDGER_OBJ_SIZE, Op, Res
from ..proto.header import RefArgs
from ..proto.inode import gref_offset, index_range
from ..proto.oid import ledger_oid, oid_to_vid, vid_to_data_oid
from . import gateway
from .store import ObjectStore, StoreError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.reclaim")


def is_index_update(offset: int, length: int) -> bool:
    """`is_data_vid_update`: the write lies entirely inside data_vdi_id[]."""
    return SD_INODE_HEADER_SIZE <= offset and offset + length <= SD_INODE_INDEX_END and length > 0


async def release(node: "Node", old_vid: int, idx: int, generation: int, count: int) -> None:
    """Drop one reference to data object ``old_vid/idx`` held at (generation, count)."""
    oid = vid_to_data_oid(old_vid, idx)
    if generation == 0 and count == 0:
        reply = await gateway.fanout(node, Op.REMOVE_OBJ, oid)
        if reply.result not in (Res.SUCCESS, Res.NO_OBJ):
            log.warning("failed to remove %016x: %#x", oid, reply.result)
        return
    lid = ledger_oid(oid)
    reply = await gateway.fanout(node, Op.DECREF_OBJ, lid,
                                 args=RefArgs(oid=lid, generation=generation, count=count))
    if reply.result != Res.SUCCESS:
        log.warning("decref of %016x (generation %d, count %d) failed: %#x", oid, generation, count,
                    reply.result)


LEDGER_ENTRIES = SD_LEDGER_OBJ_SIZE // 4


def apply_decref(store: ObjectStore, lid: int, generation: int, count: int) -> bool:
    """`peer_decref_object` on one replica (blocking).  True when the ledger emptied."""
    try:
        raw = store.read(lid, 0, SD_LEDGER_OBJ_SIZE)
        ledger = array("I", bytes(raw))
    except StoreError:
        ledger = array("I", bytes(SD_LEDGER_OBJ_SIZE))
        ledger[0] = 1  # the creator's reference
    if not 0 <= generation < LEDGER_ENTRIES - 1:
        raise StoreError(Res.INVALID_PARMS, f"generation {generation} out of range")
    ledger[generation] = (ledger[generation] - 1) & 0xFFFFFFFF
    ledger[generation + 1] = (ledger[generation + 1] + count) & 0xFFFFFFFF
    data = ledger.tobytes()
    used = len(data.rstrip(b"\0"))
    if used == 0:
        if store.exists(lid):
            store.remove(lid)
        return True
    store.create_and_write(lid, 0, data[:(used + 3) // 4 * 4], SD_LEDGER_OBJ_SIZE)
    return False


async def write_index(node: "Node", inode_oid: int, offset: int, data: bytes | bytearray | memoryview,
                      copies: int, flags: int) -> int:
    """WRITE_OBJ on an inode's index, with the reference release of objects.md §8."""
    touched = index_range(offset, len(data))
    start, count = touched.start, len(touched)
    entries_off = SD_INODE_HEADER_SIZE + 4 * start
    old = await gateway.read_obj(node, inode_oid, entries_off, 4 * count, copies)
    if old.result != Res.SUCCESS:
        return (await gateway.fanout(node, Op.WRITE_OBJ, inode_oid, offset, data, copies,
                                     flags)).result
    new_entries = bytearray(old.data)
    rel = offset - entries_off
    new_entries[rel:rel + len(data)] = data
    old_vids = struct.unpack(f"<{count}I", bytes(old.data))
    new_vids = struct.unpack(f"<{count}I", bytes(new_entries))
    if any(new_vids) and node.vdis.is_snapshot(oid_to_vid(inode_oid)):
        # a snapshot's index only loses entries (dog vdi delete clears them).  A non-zero
        # one comes from a writer that has not seen the snapshot yet, even when it is
        # there already: a short-circuit client's entry written into the inode's file just
        # as the snapshot came (the write failed its generation check and is sent again
        # here) may be missing from the new working VDI, so the writer must go there.
        return Res.READONLY
    changed = [i for i in range(count) if old_vids[i] and old_vids[i] != new_vids[i]]
    if not changed:  # only holes filled (a new object's entry): no reference to release
        return (await gateway.fanout(node, Op.WRITE_OBJ, inode_oid, offset, data, copies,
                                     flags)).result
    grefs = await gateway.read_obj(node, inode_oid, gref_offset(start), 8 * count, copies)
    reply = await gateway.fanout(node, Op.WRITE_OBJ, inode_oid, offset, data, copies, flags)
    if reply.result != Res.SUCCESS or grefs.result != Res.SUCCESS:
        return reply.result
    refs = struct.unpack(f"<{2 * count}i", bytes(grefs.data))
    lo, hi = min(changed), max(changed) + 1
    cleared = bytearray(grefs.data[8 * lo:8 * hi])  # unchanged entries keep their gref
    for i in changed:
        cleared[8 * (i - lo):8 * (i - lo + 1)] = bytes(8)
    await gateway.fanout(node, Op.WRITE_OBJ, inode_oid, gref_offset(start + lo), cleared, copies, flags)
    for i in changed:
        await release(node, old_vids[i], start + i, refs[2 * i], refs[2 * i + 1])
    return Res.SUCCESS
