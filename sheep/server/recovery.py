"""Object recovery after a membership change (objects.md §13).

On every new epoch each storing node: moves objects it no longer owns to `.stale/`; asks
every member which objects it holds; fetches the ones it now owns but lacks — reusing a
local stale copy when its SHA-1 equals a live replica's, else copying from a node that
holds it live (preferred) or stale; then broadcasts COMPLETE_RECOVERY.  When every
storing member has completed the current epoch, `.stale/` is purged everywhere.

A peer request for an object still waiting here recovers that object first, so a write
never lands on a replica that would later be overwritten by an older copy.
"""
from __future__ import annotations

import logging
import random
import struct
from typing import TYPE_CHECKING, Any, Callable

import trio

from ..proto.constants import SD_SHEEP_PROTO_VER, ClusterFlag, Flag, Op, Res
from ..proto.header import ObjArgs, Request, Response
from ..proto.structs import NodeId, RecoveryState
from . import gateway
from .store import StoreError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.recovery")

PREPARING, RECOVERING, NOTIFYING = 0, 1, 2
OBJ_LIST_START = 4 << 20


class Recovery:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.in_recovery = False
        self.state = PREPARING
        self.finished = 0
        self.total = 0
        self.pending: dict[int, tuple[list[NodeId], list[NodeId]]] = {}
        self._urgent: list[int] = []
        self._events: dict[int, trio.Event] = {}
        self._kick = trio.Event()
        self._prepared = trio.Event()
        self._pass_scope: trio.CancelScope | None = None
        self._storing = 0  # recovered copies being written to the store right now
        self._stored = trio.Event()
        self.completed: dict[int, set[NodeId]] = {}

    # ------------------------------------------------------------------ control
    def kick(self) -> None:
        """A new epoch (or recovery re-enabled): start a fresh pass.  Peer requests arriving
        from now on wait until the pass knows which objects it must fetch."""
        if self._pass_scope is not None:
            self._pass_scope.cancel()
        if not self.node.opts.gateway and not self.node.disable_recovery:
            self.in_recovery = True
            if self._prepared.is_set():
                self._prepared = trio.Event()
        self._kick.set()

    def status(self) -> RecoveryState:
        return RecoveryState(in_recovery=int(self.in_recovery), state=self.state,
                             nr_finished=self.finished, nr_total=self.total)

    async def run(self) -> None:
        """The recovery worker: one pass per epoch, each cancelled by the next."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            node = self.node
            if node.disable_recovery or node.opts.gateway:
                if node.opts.gateway and node.epoch:
                    await self._complete(node.epoch)
                continue
            with trio.CancelScope() as scope:
                self._pass_scope = scope
                try:
                    await self._pass(node.epoch)
                except Exception:
                    log.exception("recovery of epoch %d failed", node.epoch)
            self._pass_scope = None
            if not self._kick.is_set():
                self.in_recovery = False
                self._prepared.set()
            self._release_waiters()

    def _release_waiters(self) -> None:
        for ev in self._events.values():
            ev.set()
        self._events.clear()
        self.pending.clear()

    async def recover_now(self, oid: int) -> None:
        """Called by peer requests: if ``oid`` is still to be recovered here, do it first
        (across restarted passes, for at most 30 s)."""
        if not self.in_recovery:
            return  # the usual case: no cancel scope to pay for on every peer request
        with trio.move_on_after(30):
            while self.in_recovery:
                await self._prepared.wait()
                if oid not in self.pending:
                    return
                ev = self._events.setdefault(oid, trio.Event())
                self._urgent.append(oid)
                await ev.wait()

    async def fetch_missing(self, oid: int) -> bool:
        """Safety net for an object this node owns, lacks, and no pass knew of: ask its
        other owners now and under the previous epoch's placement."""
        node = self.node
        copies = gateway.obj_copies(node, oid)
        me = node.me.nid
        if not any(o.nid == me for o in node.ring.oid_to_nodes(oid, copies)):
            return False
        sources = [o.nid for o in node.ring.oid_to_nodes(oid, copies) if o.nid != me]
        prev = await node.io(node.meta.load_epoch, node.epoch - 1) if node.epoch > 1 else None
        if prev:
            from ..proto.placement import Ring
            sources += [o.nid for o in Ring(prev[0]).oid_to_nodes(oid, copies)
                        if o.nid != me and o.nid not in sources]
        log.info("%016x is missing here: fetching it on demand", oid)
        return await self._recover_one(node.epoch, oid, (sources, []), rounds=3)

    # ------------------------------------------------------------------ one pass
    async def _pass(self, epoch: int) -> None:
        node = self.node
        self.in_recovery, self.state, self.finished, self.total = True, PREPARING, 0, 0
        await node.vdi_states_ready.wait()
        holders = await self._gather(epoch)
        me = node.me.nid
        wanted = {}
        for oid, (live, stale) in holders.items():
            owners = node.ring.oid_to_nodes(oid, gateway.obj_copies(node, oid))
            if any(o.nid == me for o in owners) and not await node.io(node.store.exists, oid):
                random.shuffle(live)
                wanted[oid] = ([n for n in live if n != me], stale)
        self.pending = dict(sorted(wanted.items()))
        self.total = len(self.pending)
        self.state = RECOVERING
        self._prepared.set()
        if self.total:
            log.info("epoch %d: recovering %d objects", epoch, self.total)
        failed = 0
        budget_start, budget_used = trio.current_time(), 0
        while self.pending:
            oid = self._next()
            sources = self.pending[oid]
            ok = await self._recover_one(epoch, oid, sources)
            failed += not ok
            self.pending.pop(oid, None)
            self.finished += 1
            ev = self._events.pop(oid, None)
            if ev is not None:
                ev.set()
            budget_used += 1
            mx, interval = node.opts.recovery_max, node.opts.recovery_interval
            if mx and interval and budget_used >= mx:
                await trio.sleep_until(budget_start + interval / 1000)
                budget_start, budget_used = trio.current_time(), 0
        if failed:
            log.error("epoch %d: %d objects could not be recovered", epoch, failed)
        self.state = NOTIFYING
        await self._complete(epoch)
        log.info("epoch %d: recovery finished (%d objects)", epoch, self.total)

    def _next(self) -> int:
        while self._urgent:
            oid = self._urgent.pop()
            if oid in self.pending:
                return oid
        return next(iter(self.pending))

    async def mark_stale(self, epoch: int) -> None:
        """Right at an epoch change (never cancelled half-way): objects this node does not
        own under the new ring stop being live, so nobody copies an old version from us.

        A recovered copy whose write began before the change lands first (a write in a
        worker thread cannot be called back): listed after it, it is moved too, where it
        would otherwise stay live on a node that does not own it."""
        node = self.node
        if node.opts.gateway:
            return
        while self._storing:
            await self._stored.wait()
        me = node.me.nid
        moved = 0
        for oid in await node.io(node.store.list_oids):
            owners = node.ring.oid_to_nodes(oid, gateway.obj_copies(node, oid))
            if owners and all(o.nid != me for o in owners):
                async with node.object_lock(oid):
                    await node.io(node.store.move_to_stale, oid, epoch - 1)
                moved += 1
        if moved:
            log.info("epoch %d: %d objects no longer owned here moved to .stale", epoch, moved)

    async def _gather(self, epoch: int) -> dict[int, tuple[list[NodeId], list[NodeId]]]:
        """oid -> (nodes holding it live, nodes holding only stale copies, newest first).

        A stale copy's tag is the last epoch through which it received every write, so
        when no live copy is left anywhere, the copy with the highest tag is the one to
        keep, whichever node has it."""
        node = self.node
        live: dict[int, list[NodeId]] = {}
        stale: dict[int, list[tuple[int, NodeId]]] = {}
        for member in node.members:
            if not member.nr_vnodes:
                continue
            for oid in await self._obj_list(member.nid, epoch, Flag.CMD_DIRECT):
                live.setdefault(oid, []).append(member.nid)
            entries = await self._obj_list(member.nid, epoch, Flag.CMD_RECOVERY)
            for oid, tag in zip(entries[0::2], entries[1::2]):
                stale.setdefault(oid, []).append((tag, member.nid))
        out = {}
        for oid in live.keys() | stale.keys():
            ranked = sorted(stale.get(oid, []), key=lambda t: (-t[0], str(t[1])))
            out[oid] = (live.get(oid, []), [nid for _, nid in ranked])
        return out

    async def _obj_list(self, nid: NodeId, epoch: int, flags: int) -> list[int]:
        """GET_OBJ_LIST with our private flags: DIRECT = live oids; RECOVERY = (oid, newest
        stale tag) pairs of the objects held only as stale copies."""
        node = self.node
        if nid == node.me.nid:
            return await node.io(node.store.object_list, flags)
        size = OBJ_LIST_START
        while True:
            req = Request(Op.GET_OBJ_LIST, flags=flags, data_length=size, epoch=epoch)
            rsp, data = await node.peers.call(nid, req)
            if rsp.result != Res.BUFFER_SMALL:
                break
            size *= 2
        if rsp.result != Res.SUCCESS:
            return []
        return list(struct.unpack(f"<{len(data) // 8}Q", bytes(data)))

    async def _recover_one(self, epoch: int, oid: int, sources: tuple[list[NodeId], list[NodeId]],
                           rounds: int = 0) -> bool:
        """Fetch ``oid``.  Nodes that hold it live have the current data: they are retried
        for as long as this epoch lasts.  Only when no node held it live do stale copies
        (ours first) stand in — a stale copy may predate writes made while we were away."""
        node = self.node
        live, stale_holders = sources
        size = gateway.obj_size(node, oid)
        async with node.object_lock(oid):
            if await node.io(node.store.exists, oid):
                return True
            if node.flags & ClusterFlag.AVOID_DISKFULL and await node.io(node.store.free_bytes) < 2 * size:
                log.error("%016x not recovered: the disk would fill up (format -F)", oid)
                return False
            stale = await node.io(node.store.stale_versions, oid)
            attempt = 0
            while live and node.epoch == epoch and (not rounds or attempt < rounds):
                for src in live:
                    if stale and await self._stale_matches(src, oid, stale[-1][1], size):
                        return await self._store(epoch, node.store.restore_stale, oid, stale[-1][1])
                    if await self._copy_from(src, epoch, oid, size):
                        return True
                attempt += 1
                await trio.sleep(min(0.1 * attempt, 1.0))
            if live:
                return False  # a newer epoch (its pass takes over), or on-demand rounds spent
            for src in stale_holders:  # the freshest stale copy wins, wherever it is
                if src == node.me.nid and stale:
                    if not await self._store(epoch, node.store.restore_stale, oid, stale[-1][1]):
                        return False
                    log.warning("%016x: no live replica anywhere, kept our stale copy", oid)
                    return True
                if src != node.me.nid and await self._copy_from(src, epoch, oid, size):
                    log.warning("%016x: no live replica anywhere, took the stale copy of %s", oid, src)
                    return True
        log.error("%016x: no node could provide it", oid)
        return False

    async def _copy_from(self, src: NodeId, epoch: int, oid: int, size: int) -> bool:
        node = self.node
        req = Request(Op.READ_PEER, flags=Flag.CMD_RECOVERY, data_length=size, epoch=epoch,
                      proto_ver=SD_SHEEP_PROTO_VER, args=ObjArgs(oid=oid, tgt_epoch=epoch - 1))
        rsp, data = await node.peers.call(src, req)
        if rsp.result != Res.SUCCESS or len(data) != size:
            return False
        try:
            return await self._store(epoch, node.store.create_and_write, oid, 0, data, size)
        except StoreError as e:
            log.error("cannot store recovered %016x: %#x", oid, e.result)
            return False

    async def _store(self, epoch: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Put a recovered copy in place, only while ``epoch`` (the one it was fetched
        for) is current; `mark_stale` of the next epoch waits for writes already begun."""
        node = self.node
        if node.epoch != epoch:
            return False  # the new epoch's pass decides whether we still want it
        self._storing += 1
        try:
            await node.io(fn, *args)
        finally:
            self._storing -= 1
            if not self._storing:
                self._stored.set()
                self._stored = trio.Event()
        return True

    async def _stale_matches(self, src: NodeId, oid: int, path: str, size: int) -> bool:
        rsp, _ = await self.node.peers.call(src, Request(Op.GET_HASH, proto_ver=SD_SHEEP_PROTO_VER,
                                                         args=ObjArgs(oid=oid)))
        if rsp.result != Res.SUCCESS:
            return False
        mine = await self.node.io(self.node.store.sha1, oid, size, path)
        return bytes(rsp.args.digest) == mine

    async def _complete(self, epoch: int) -> None:
        from .node import vdi_op_message
        req = Request(Op.COMPLETE_RECOVERY, flags=Flag.CMD_WRITE, data_length=80,
                      args=ObjArgs(tgt_epoch=epoch))
        await self.node.driver.notify(vdi_op_message(req, Response(Op.COMPLETE_RECOVERY), self.node.me.encode()))

    # ------------------------------------------------------------------ cluster op main step
    async def completed_by(self, epoch: int, who: NodeId) -> None:
        """COMPLETE_RECOVERY from ``who``: purge .stale once every storing member is done."""
        node = self.node
        done = self.completed.setdefault(epoch, set())
        done.add(who)
        for old in [e for e in self.completed if e < node.epoch]:
            del self.completed[old]
        storing = {n.nid for n in node.members if n.nr_vnodes}
        if epoch == node.epoch and storing <= done and not node.opts.gateway:
            purged = await node.io(node.store.purge_stale)
            log.info("all nodes are recovered, epoch %d (%d stale objects purged)", epoch, purged)
