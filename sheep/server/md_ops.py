"""Disks coming and going on a running node (wire.md MD_INFO/MD_PLUG/MD_UNPLUG, md.c).

* plug: the new directories are emptied and join the vdisk ring; objects whose home moved
  to them are moved over (under each object's lock), then a recovery pass runs.
* unplug: the disks leave the ring at once but stay searchable ("retiring") while their
  objects are moved to the disks now owning them; anything that could not be moved is
  fetched from the other nodes by the recovery pass that follows.
* a disk failing I/O is dropped from the table (the store reported it from a worker
  thread, we act on the trio thread) and recovery refetches its objects from peers.

The disk table only changes here, on the trio thread; the store's workers read snapshots.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Iterable

import trio

from ..proto.constants import Res, Status
from ..proto.header import Request
from ..proto.structs import MD_MAX_DISK, MdInfo, SdMdInfo, cstr
from .md import Disk, DiskError, DiskSet, load_dropped, open_disk, save_dropped
from .node import Reply

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.md")
_dropped_file_lock = threading.Lock()


def attach(node: "Node") -> None:
    """Route the store's disk-failure reports (worker threads) to the trio thread, and put
    objects left on the wrong disk by a changed disk list where they belong."""
    token = trio.lowlevel.current_trio_token()

    def report(path: str) -> None:
        try:
            token.run_sync_soon(_disk_failed, node, path)
        except trio.RunFinishedError:
            pass

    node.store.on_disk_failure = report


def start(node: "Node") -> None:
    """Once the node's nursery runs: a multi-disk node checks where its objects are (and
    records disks that failed before it could).  Objects gone while it was down (a disk
    failed, emptied or left out of the command line) come back by the recovery pass that
    joining, or leaving WAIT at a cold restart, starts anyway."""
    lost = [p for p in node.opts.obj_dirs if node.store.table.find(p) is None]
    if lost:
        node.spawn(_dropped, node, lost)
    if len(node.store.table.all()) > 1:
        node.spawn(rebalance, node, False)


async def _change_table(node: "Node", change: Callable[[DiskSet], DiskSet | None]) -> DiskSet | None:
    """Replace the disk table by ``change(table)``, which builds the new ring (CPU work on
    big disks: in a worker thread) from a snapshot; the swap happens on the trio thread
    only if nobody changed the table meanwhile, else ``change`` runs again.  ``change``
    returns None when there is nothing to do, or raises ValueError to refuse."""
    while True:
        table = node.store.table
        new = await node.io(change, table)
        if new is None:
            return None
        if node.store.table is table:
            node.lease.bump()
            node.store.set_table(new)
            return new


def _without(path: str) -> Callable[[DiskSet], DiskSet | None]:
    def change(table: DiskSet) -> DiskSet | None:
        disk = table.find(path)
        if disk is None or (disk in table.disks and len(table.disks) == 1):
            return None  # gone already, or the last disk (the store answers EIO)
        return table.replace([d for d in table.disks if d is not disk],
                             [d for d in table.retiring if d is not disk])
    return change


_failing: set[str] = set()  # disks whose removal is under way (trio thread only)


def _disk_failed(node: "Node", path: str) -> None:
    """Trio thread: a worker met a failing disk (several may report the same one)."""
    try:
        if node._nursery is None:  # starting up: nothing else runs yet
            new = _without(path)(node.store.table)
            if new is not None:
                node.lease.bump()
                node.store.set_table(new)
                log.error("disk %s failed and is removed", path)
        elif path not in _failing:
            _failing.add(path)
            node.spawn(_drop_failed, node, path)
    except Exception:  # never let a report crash the event loop
        log.exception("handling the failure of disk %s", path)


async def _drop_failed(node: "Node", path: str) -> None:
    try:
        if await _change_table(node, _without(path)) is None:
            return
    finally:
        _failing.discard(path)
    log.error("disk %s failed and is removed; %d disks left, recovering its objects",
              path, len(node.store.table.disks))
    await _dropped(node, [path])
    await _recover(node)


async def _dropped(node: "Node", dropped: Iterable[str], plugged: Iterable[str] = ()) -> None:
    """Keep the store's list of disks dropped while in use (md.py) up to date."""
    def update() -> None:
        with _dropped_file_lock:  # read-modify-write from worker threads
            paths = load_dropped(node.opts.store_dir)
            save_dropped(node.opts.store_dir, (paths | set(dropped)) - set(plugged))
    try:
        await node.io(update)
    except OSError as e:
        log.error("cannot record dropped disks %s: %s", dropped or plugged, e)


async def _recover(node: "Node") -> None:
    """A recovery pass at the current epoch: objects this node owns but lacks come back."""
    if node.status == Status.OK:
        node.recovery.kick()


async def rebalance(node: "Node", recover: bool = True) -> None:
    """Move every object to the disk owning it; retiring disks are dropped once drained."""
    store = node.store
    moved = failed = 0
    walked = store.table
    for disk in walked.all():
        for oid in await node.io(store.misplaced, disk.path):
            async with node.object_lock(oid):
                try:
                    await node.io(store.move_home, oid, disk.path)
                    moved += 1
                except Exception as e:
                    failed += 1
                    log.error("cannot move %016x off %s: %s", oid, disk.path, e)
    def drop_drained(table: DiskSet) -> DiskSet | None:
        left = [d for d in table.retiring if d not in walked.retiring]
        return table.replace(retiring=left) if len(left) < len(table.retiring) else None

    if await _change_table(node, drop_drained) is not None:
        for d in walked.retiring:
            log.info("disk %s unplugged", d.path)
    if moved or failed:
        log.info("moved %d objects between disks (%d failed)", moved, failed)
    if recover:
        await _recover(node)


# ---------------------------------------------------------------------------- the requests


def _paths(payload: bytes) -> list[str]:
    """The comma list of MD_PLUG/MD_UNPLUG (NUL-terminated), normalized like md.c's
    trim_last_slash; empty items are skipped as strtok does."""
    return [os.path.normpath(p) for p in cstr(bytes(payload)).split(",") if p]


async def md_info(node: "Node", req: Request, payload: bytes) -> Reply:
    if node.opts.gateway:
        return Reply(Res.UNKNOWN)
    if req.data_length < SdMdInfo.SIZE:
        return Reply(Res.BUFFER_SMALL)
    usage = await node.io(node.store.disk_usage)
    info = SdMdInfo([MdInfo(i, free, used, path) for i, (path, free, used) in enumerate(usage)])
    return Reply(Res.SUCCESS, info.encode())


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _plug_problem(table: DiskSet, store_dir: str, paths: list[str]) -> str | None:
    """Why these directories cannot be plugged (they will be emptied), or None."""
    if not paths:
        return "no path given"
    known = [d.path for d in table.all()]
    if len(table.disks) + len(paths) > MD_MAX_DISK:
        return f"a node has at most {MD_MAX_DISK} disks"
    for i, p in enumerate(paths):
        if not os.path.isabs(p):
            return f"{p}: not an absolute path"
        if p in paths[:i]:
            return f"{p}: given twice"
        if p in known:
            return f"{p}: already a disk of this node"
        for other in known + [store_dir]:
            if _inside(p, other) or _inside(other, p):
                return f"{p}: overlaps {other}, which this node uses"
    return None


async def md_plug(node: "Node", req: Request, payload: bytes) -> Reply:
    if node.opts.gateway:
        return Reply(Res.GATEWAY_MODE)
    paths = _paths(payload)
    problem = _plug_problem(node.store.table, node.opts.store_dir, paths)
    if problem is not None:
        log.error("cannot plug %s: %s", ",".join(paths), problem)
        return Reply(Res.UNKNOWN)
    new: list[Disk] = []
    try:
        for p in paths:
            new.append(await node.io(lambda p=p: open_disk(p, purge=True)))
    except DiskError as e:
        log.error("cannot plug %s: %s", ",".join(paths), e)
        return Reply(Res.UNKNOWN)

    def plug(table: DiskSet) -> DiskSet:
        problem = _plug_problem(table, node.opts.store_dir, paths)  # it may have changed meanwhile
        if problem is not None:
            raise ValueError(problem)
        return table.replace(list(table.disks) + new)

    try:
        await _change_table(node, plug)
    except ValueError as e:
        log.error("cannot plug %s: %s", ",".join(paths), e)
        return Reply(Res.UNKNOWN)
    await _dropped(node, [], paths)  # emptied: nothing old left on them
    for d in new:
        log.info("disk %s plugged, vdisk nr %d, total disk %d", d.path, len(d.points),
                 len(node.store.table.disks))
    node.spawn(rebalance, node)
    return Reply(Res.SUCCESS)


async def md_unplug(node: "Node", req: Request, payload: bytes) -> Reply:
    if node.opts.gateway:
        return Reply(Res.GATEWAY_MODE)
    paths = list(dict.fromkeys(_paths(payload)))

    def unplug(table: DiskSet) -> DiskSet:
        active = {d.path: d for d in table.disks}
        unknown = [p for p in paths if p not in active]
        if not paths or unknown:
            raise ValueError(f"not a disk of this node: {', '.join(unknown)}" if unknown else "no path given")
        if len(paths) == len(table.disks):
            raise ValueError("a node keeps at least one disk")
        leaving = [active[p] for p in paths]
        return table.replace([d for d in table.disks if d not in leaving], list(table.retiring) + leaving)

    try:
        await _change_table(node, unplug)
    except ValueError as e:
        log.error("cannot unplug %s: %s", ",".join(paths), e)
        return Reply(Res.UNKNOWN)
    await _dropped(node, paths)
    log.info("unplugging %s: moving its objects to the other disks", ",".join(paths))
    node.spawn(rebalance, node)
    return Reply(Res.SUCCESS)


__all__ = ["attach", "start", "rebalance", "md_info", "md_plug", "md_unplug"]
