"""The state one sheep daemon owns, and how membership events change it.

Everything here runs on the trio thread; blocking file I/O goes through `io()`.
`Node` is the `ClusterHandler` the cluster driver calls: joins and leaves bump the epoch
(objects.md §12), broadcasts run a cluster op's main step on every node.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from ..proto.constants import (
    CLUSTER_INFO_SIZE, SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_DEFAULT_COPIES, SD_DEFAULT_VNODES,
    SD_FORMAT_VERSION, SD_NODE_SIZE, ClusterFlag, Status,
)
from ..proto.header import HEADER_SIZE, Request, Response
from ..proto.placement import Ring, recalculate_vnodes
from ..proto.structs import ClusterInfo, NodeId, SdNode, SdStat, SheepdogConfig, sort_nodes
from .cluster.base import Member
from .objlock import ObjectLock
from .store import MetaStore, ObjectStore
from .writeback import Writeback
from .vdi_table import VdiTable

log = logging.getLogger("sheep")


@dataclass
class Options:
    store_dir: str
    obj_dirs: list[str]  # STORE/obj, or the disks of `sheep STORE,DISK1,DISK2,...`
    port: int = 7000
    bind_addr: str | None = None
    advertise_addr: str = "127.0.0.1"
    zone: int | None = None
    gateway: bool = False
    vnodes: int | None = None  # None: auto strategy
    nosync: bool = False
    cluster: str = "local"
    foreground: bool = False
    pidfile: str | None = None
    log_level: int = 6
    log_dir: str | None = None
    log_format: str = "server"
    log_dst: str = "default"
    recovery_max: int = 0
    recovery_interval: int = 0


@dataclass
class Reply:
    """What a handler produces; the request layer turns it into a `Response`."""

    result: int = 0
    data: bytes | bytearray | memoryview = b""
    args: Any = None


def now_ctime() -> int:
    """Cluster/VDI time stamp: seconds << 32 | microseconds * 1000 (wire.md §1)."""
    t = time.time()
    sec = int(t)
    return (sec << 32) | (int((t - sec) * 1_000_000) * 1000)


def encode_cinfo(ci: ClusterInfo) -> bytes:
    """cluster_info without its unused node slots (for join messages)."""
    return ci.encode()[:48 + SD_NODE_SIZE * len(ci.nodes)]


def decode_cinfo(buf: bytes) -> ClusterInfo:
    return ClusterInfo.decode(bytes(buf).ljust(CLUSTER_INFO_SIZE, b"\0"))


class Node:
    def __init__(self, opts: Options, driver: Any) -> None:
        self.opts = opts
        self.driver = driver
        self.meta = MetaStore(opts.store_dir)
        self.store = ObjectStore(opts.obj_dirs, nosync=opts.nosync)
        self.writeback = Writeback()  # CMD_CACHE writes not yet fdatasynced
        self.vdis = VdiTable()
        self.stats = SdStat()
        self.log_level = opts.log_level
        self.status = Status.WAIT
        self.epoch = 0
        self.ctime = 0
        self.flags = 0
        self.nr_copies = SD_DEFAULT_COPIES
        self.copy_policy = 0
        self.block_size_shift = SD_DEFAULT_BLOCK_SIZE_SHIFT
        self.store_name = "plain"
        self.disable_recovery = 0
        self.space = 0
        self.members: list[SdNode] = []
        self.ring = Ring([])
        self.wait_nodes: list[SdNode] = []  # last epoch's members while waiting to restart
        self.peers: Any = None  # PeerPool, set by the server once its nursery exists
        self._epoch_event = trio.Event()
        self.shutdown_event = trio.Event()
        self.me = SdNode(NodeId.from_host(opts.advertise_addr, opts.port), 0, 0, 0)
        self._object_locks: dict[int, ObjectLock] = {}
        self._in_flight: dict[int, int] = {}
        self._resumed = trio.Event()
        self._drained = trio.Event()
        self.vdi_states_ready = trio.Event()
        from .recovery import Recovery
        from .shortcircuit import Lease
        self.recovery = Recovery(self)
        # Same-host clients' grants (shortcircuit.py): bumped before any change that could
        # move, replace or freeze an object takes effect.
        self.lease = Lease()

    @contextmanager
    def in_flight(self, epoch: int):
        """Counts peer operations by request epoch (see `drain_older`)."""
        self._in_flight[epoch] = self._in_flight.get(epoch, 0) + 1
        try:
            yield
        finally:
            self._in_flight[epoch] -= 1
            if not self._in_flight[epoch]:
                del self._in_flight[epoch]
                self._drained.set()
                self._drained = trio.Event()

    async def drain_older(self, epoch: int, timeout: float = 10.0) -> None:
        """Wait until no peer operation of an epoch before ``epoch`` is still running: after
        that, what this node lists or serves includes every write of older epochs."""
        with trio.move_on_after(timeout):
            while any(e < epoch for e in self._in_flight):
                await self._drained.wait()

    def object_lock(self, oid: int) -> ObjectLock:
        """The local object's lock: ``async with`` it for exclusive use (create, remove,
        read-modify-write, recovery); plain reads and writes use ``.shared()``."""
        lock = self._object_locks.get(oid)
        if lock is None:
            lock = self._object_locks[oid] = ObjectLock()
        if len(self._object_locks) > 4096:  # forget idle locks
            for k in [k for k, v in self._object_locks.items() if not v.busy() and k != oid]:
                del self._object_locks[k]
        return lock

    # ------------------------------------------------------------------ helpers
    @staticmethod
    async def io(fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking file I/O off the trio thread."""
        return await trio.to_thread.run_sync(fn, *args)

    @property
    def auto_vnodes(self) -> bool:
        return self.opts.vnodes is None

    def load_local_state(self) -> None:
        """Read config and the latest epoch at start-up (blocking; called before trio I/O starts)."""
        cfg = self.meta.load_config()
        if cfg is None:
            self.space = 0 if self.opts.gateway else self.store.free_bytes() + self.store.used_bytes()
            cfg = SheepdogConfig(ctime=0, flags=0, copies=0, default_store="plain", shutdown=0,
                                 copy_policy=0, block_size_shift=0, version=SD_FORMAT_VERSION,
                                 space=self.space)
            self.meta.save_config(cfg)
        self.space = 0 if self.opts.gateway else cfg.space
        self.ctime = cfg.ctime
        # an unformatted node advertises its vnode strategy (dog cluster format checks it)
        self.flags = cfg.flags if cfg.ctime else (ClusterFlag.AUTO_VNODES if self.auto_vnodes else 0)
        self.nr_copies = cfg.copies or SD_DEFAULT_COPIES
        self.copy_policy = cfg.copy_policy
        self.block_size_shift = cfg.block_size_shift or SD_DEFAULT_BLOCK_SIZE_SHIFT
        self.store_name = cfg.default_store or "plain"
        if cfg.shutdown:
            cfg.shutdown = 0
            self.meta.save_config(cfg)
        latest = self.meta.latest_epoch() if self.ctime else 0
        self.epoch = latest
        loaded = self.meta.load_epoch(latest) if latest else None
        self.wait_nodes = loaded[0] if loaded else []
        zone = self.opts.zone
        if zone is None:
            from ..proto.structs import default_zone
            zone = default_zone(self.me.nid.addr)
        nr_vnodes = 0 if self.opts.gateway else (self.opts.vnodes or SD_DEFAULT_VNODES)
        self.me = SdNode(self.me.nid, nr_vnodes, zone, self.space)

    def save_config(self, shutdown: int = 0) -> None:
        self.meta.save_config(SheepdogConfig(
            ctime=self.ctime, flags=self.flags, copies=self.nr_copies, default_store=self.store_name,
            shutdown=shutdown, copy_policy=self.copy_policy, block_size_shift=self.block_size_shift,
            version=SD_FORMAT_VERSION, space=self.space))

    def cluster_info(self) -> ClusterInfo:
        return ClusterInfo(
            proto_ver=0x0A, disable_recovery=self.disable_recovery,
            epoch=self.epoch, ctime=self.ctime, flags=self.flags, nr_copies=self.nr_copies,
            copy_policy=self.copy_policy, status=int(self.status),
            block_size_shift=self.block_size_shift, default_store=self.store_name,
            nodes=list(self.members))

    def join_opaque(self) -> bytes:
        ci = self.cluster_info()
        ci.status = int(Status.WAIT)
        ci.nodes = list(self.wait_nodes)
        return encode_cinfo(ci)

    # ------------------------------------------------------------------ epochs
    def epoch_changed(self) -> None:
        self.lease.bump()
        self._epoch_event.set()
        self._epoch_event = trio.Event()

    async def wait_epoch_change(self, since: int, timeout: float) -> None:
        """Return once the epoch differs from ``since`` (or after ``timeout``)."""
        with trio.move_on_after(timeout):
            while self.epoch == since:
                await self._epoch_event.wait()

    async def wait_epoch_at_least(self, epoch: int, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.epoch < epoch:
                await self._epoch_event.wait()
        return self.epoch >= epoch

    def _set_members(self, nodes: list[SdNode]) -> None:
        if self.flags & ClusterFlag.AUTO_VNODES or (self.ctime == 0 and self.auto_vnodes):
            nodes = recalculate_vnodes(nodes)
        self.lease.bump()
        self.members = sort_nodes(nodes)
        self.ring = Ring(self.members)

    async def _log_epoch(self) -> None:
        self.lease.bump()
        self.epoch += 1
        await self.io(self.meta.save_epoch, self.epoch, list(self.members), int(time.time()))
        log.info("epoch %d: %d nodes [%s]", self.epoch, len(self.members),
                 ", ".join(str(n.nid) for n in self.members))

    async def _membership_changed(self, nodes: list[SdNode]) -> None:
        self._set_members(nodes)
        if self.status == Status.OK:
            self.recovery.kick()  # before the epoch moves: requests at the new epoch must wait for it
            await self._log_epoch()
            await self.recovery.mark_stale(self.epoch)
        elif self.status == Status.WAIT and self.ctime:
            present = {n.nid for n in self.members}
            expected = {n.nid for n in self.wait_nodes}
            if expected and expected <= present:
                self.recovery.kick()
                if present != expected:
                    await self._log_epoch()
                await self.recovery.mark_stale(self.epoch)
                self.status = Status.OK
                log.info("all nodes of epoch %d are back, cluster is running", self.epoch)
        self.epoch_changed()

    # ------------------------------------------------------------------ driver session (zookeeper)
    suspended = False

    def on_suspended(self, suspended: bool) -> None:
        """Coordination service unreachable: stop acknowledging I/O until it is back."""
        self.lease.bump()
        self.suspended = suspended
        if not suspended:
            self._resumed.set()
            self._resumed = trio.Event()

    async def wait_resumed(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self.suspended:
                await self._resumed.wait()
        return not self.suspended

    def on_rejoining(self) -> None:
        """Our session expired: the others count us gone; we rejoin as a new incarnation."""
        log.warning("lost our cluster session: rejoining")
        self.lease.bump()
        self.wait_nodes = list(self.members) if self.status == Status.OK else self.wait_nodes
        self.status = Status.WAIT
        self.members = []

    async def force_recover(self) -> None:
        """FORCE_RECOVER main step: the members present now form a new epoch."""
        self.recovery.kick()
        self._set_members(self.members)
        await self._log_epoch()
        await self.recovery.mark_stale(self.epoch)
        self.status = Status.OK
        self.epoch_changed()
        log.info("cluster force-recovered at epoch %d with %d nodes", self.epoch, len(self.members))

    # ------------------------------------------------------------------ ClusterHandler
    def join_check(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        theirs = decode_cinfo(opaque)
        node = SdNode.decode(joiner.node)
        if theirs.ctime and self.ctime and theirs.ctime != self.ctime:
            reason = (f"{node.nid.log_str()} belongs to another cluster "
                      f"(ctime {theirs.ctime:#x}, ours {self.ctime:#x})")
            log.error("refusing to join: %s", reason)
            return False, reason.encode()
        if bool(theirs.flags & ClusterFlag.AUTO_VNODES) != bool(self.flags & ClusterFlag.AUTO_VNODES) \
                and theirs.ctime and self.ctime:
            return False, b"vnode strategy differs from the cluster's"
        ci = self.cluster_info()
        if self.status == Status.WAIT and self.ctime:
            ci.nodes = list(self.wait_nodes)
            if theirs.epoch > self.epoch:  # the joiner saw a newer epoch: its view wins
                ci.epoch = theirs.epoch
                ci.nodes = list(theirs.nodes)
        return True, encode_cinfo(ci)

    async def on_accept(self, joiner: Member, members: list[Member], reply: bytes, is_me: bool) -> None:
        self.lease.bump()
        nodes = [SdNode.decode(m.node) for m in members]
        last_epoch = self.epoch  # ours, before adopting the cluster's
        if is_me:
            ci = decode_cinfo(reply)
            await self._adopt(ci)
        elif self.status == Status.WAIT and self.ctime:
            theirs_epoch = decode_cinfo(reply).epoch
            if theirs_epoch > self.epoch:
                self.epoch = theirs_epoch
                self.wait_nodes = decode_cinfo(reply).nodes
        log.info("%s joined (%d members)", SdNode.decode(joiner.node).nid.log_str(), len(nodes))
        from .vdi_ops import fetch_vdi_states
        if is_me:
            if self.status == Status.OK and len(nodes) > 1:
                await self.io(self._suspect_local_objects, last_epoch)
            self.spawn(fetch_vdi_states, self, [n for n in nodes if n.nid != self.me.nid])
        else:
            self.spawn(fetch_vdi_states, self, [SdNode.decode(joiner.node)])
        await self._membership_changed(nodes)

    def _suspect_local_objects(self, last_epoch: int) -> None:
        """Joining a running cluster: writes may have happened while we were away, so our
        objects become stale copies (current through ``last_epoch`` at best) that
        recovery revalidates by hash (blocking)."""
        oids = self.store.list_oids()
        for oid in oids:
            self.store.move_to_stale(oid, last_epoch)
        if oids:
            log.info("rejoining a running cluster: %d local objects to be revalidated", len(oids))

    async def _adopt(self, ci: ClusterInfo) -> None:
        """Take over the master's cluster state when we join."""
        if ci.ctime and ci.ctime != self.ctime:
            self.ctime, self.flags = ci.ctime, ci.flags
            self.nr_copies, self.copy_policy = ci.nr_copies, ci.copy_policy
            self.block_size_shift = ci.block_size_shift
            self.store_name = ci.default_store or "plain"
            await self.io(self.save_config)
        self.status = Status(ci.status)
        self.disable_recovery = ci.disable_recovery
        if ci.ctime:
            self.epoch = ci.epoch
            if self.status == Status.WAIT:
                self.wait_nodes = list(ci.nodes)

    async def on_leave(self, left: Member, members: list[Member]) -> None:
        log.info("%s left (%d members remain)", SdNode.decode(left.node).nid.log_str(), len(members))
        nodes = [SdNode.decode(m.node) for m in members]
        if self.opts.gateway and nodes and all(n.nr_vnodes == 0 for n in nodes):
            log.error("only gateway nodes are remaining, exiting")
            self.shutdown_event.set()
        await self._membership_changed(nodes)

    async def on_update(self, member: Member, members: list[Member]) -> None:
        node = SdNode.decode(member.node)
        log.info("%s changed: space %d, %d vnodes", node.nid.log_str(), node.space, node.nr_vnodes)
        if node.nid == self.me.nid:
            self.me = node
        await self._membership_changed([SdNode.decode(m.node) for m in members])

    async def on_notify(self, sender: Member, data: bytes) -> None:
        self.lease.bump()  # snapshots, deletions, copy changes...: grants are re-asked
        req = Request.decode(data[:HEADER_SIZE])
        rsp = Response.decode(data[HEADER_SIZE:2 * HEADER_SIZE])
        from .ops import OPS
        spec = OPS.get(req.opcode)
        if spec is None or spec.main is None:
            log.error("broadcast of unknown cluster op %#x ignored", req.opcode)
            return
        try:
            await spec.main(self, req, rsp, data[2 * HEADER_SIZE:], SdNode.decode(sender.node))
        except Exception:
            log.exception("main step of %s failed", spec.name)

    # ------------------------------------------------------------------ tasks
    _nursery: trio.Nursery | None = None

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)


def vdi_op_message(req: Request, rsp: Response, data: bytes = b"") -> bytes:
    """`struct vdi_op_message`: what a cluster op broadcasts (wire.md §10.2)."""
    return req.encode() + rsp.encode() + bytes(data)


__all__ = ["Node", "Options", "Reply", "now_ctime", "vdi_op_message", "field"]
