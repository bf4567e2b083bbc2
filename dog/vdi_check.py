"""`dog vdi track` and `dog vdi check` (dog/vdi.c; dog.md §4.10, §4.17).

Both work from the client-side placement (objects.md §9): track replays it for the node
list of every epoch, check asks each owner about its replica.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import Flag, Op, Res
from sheep.proto.header import ForwArgs, Request
from sheep.proto.inode import Inode
from sheep.proto.oid import data_oid_to_idx, is_data_obj, vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.placement import Ring
from sheep.proto.structs import EpochLog, SdNode

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, Context, DogExit, err, index_entries, index_get,
    out, read_vdi_obj, report_conn_error, show_progress,
)

HASH_BATCH = 64  # objects whose replicas are compared per pipelined round


# ---------------------------------------------------------------- track


def track_text(oid: int, copies: int, logs: list[EpochLog]) -> str:
    """`do_track_object`'s report: the owners of ``oid`` at every epoch, newest first."""
    parts = []
    for log in logs:
        parts.append(f"\nobj {oid:016x} locations at epoch {log.epoch}, copies = {copies}\n"
                     + "-" * 51 + "\n")
        if len(log.nodes) < copies:
            owners = log.nodes
        else:
            owners = Ring(log.nodes).oid_to_nodes(oid, copies)
        parts.extend(f"{n.nid}\n" for n in owners)
    return "".join(parts)


def vdi_track(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    found = read_vdi_obj(ctx, args[0], o.snapshot_id, o.snapshot_tag)
    if found is None:
        err("FATAL: no inode objects")
        return EXIT_FAILURE
    _, inode = found
    h = inode.header
    vid, nr = h.vdi_id, len(ctx.nodes)
    oid = o.oid
    if not oid:
        if o.index is None:
            oid = vid_to_vdi_oid(vid)
            out(f"Tracking the inode object 0x{vid:x} with {nr} nodes\n")
        elif o.index >= 1 << 32:
            out("The offset is too large!\n")
            return EXIT_FAILURE
        else:
            oid = vid_to_data_oid(index_get(ctx, inode, o.index), o.index)
            out(f"Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx {o.index}) "
                f"with {nr} nodes\n")
    else:
        out(f"Tracking the object {oid:016x} (the inode vid 0x{vid:x}) with {nr} nodes\n")
    result, logs = ctx.client().stat_cluster(nr, max_epochs=ctx.epoch)
    if result != Res.SUCCESS:
        out(f"{SheepError(result)}\n")
        return EXIT_SYSFAIL
    out(track_text(oid, h.nr_copies, logs))
    return EXIT_SUCCESS


# ---------------------------------------------------------------- check -e


def _vdi_oids(ctx: Context, inode: Inode) -> Iterator[int]:
    """The inode, then every allocated data object of the VDI."""
    yield vid_to_vdi_oid(inode.header.vdi_id)
    for idx, owner in index_entries(ctx, inode):
        yield vid_to_data_oid(owner, idx)


def oids_per_node(ring: Ring, nodes: list[SdNode], oids: Iterator[int], copies: int
                  ) -> dict[SdNode, list[int]]:
    """`build_oid_tree`: the oids each node should hold, nodes in node order."""
    per: dict[SdNode, list[int]] = {n: [] for n in nodes}
    for oid in oids:
        for n in ring.oid_to_nodes(oid, copies):
            per.setdefault(n, []).append(oid)
    return per


def check_exist(ctx: Context, inode: Inode) -> int:
    """`do_vdi_check_exist`: OIDS_EXIST to every owner with the oids it should hold."""
    copies = min(inode.header.nr_copies, ctx.nr_zones)
    total = 0
    for node, oids in oids_per_node(ctx.ring, ctx.nodes, _vdi_oids(ctx, inode), copies).items():
        payload = struct.pack(f"<{len(oids)}Q", *oids)
        req = Request(Op.OIDS_EXIST, Flag.CMD_WRITE | Flag.CMD_PIGGYBACK, len(payload))
        rsp, data = ctx.node_client(node).call(req, payload)
        missing = struct.unpack(f"<{rsp.data_length // 8}Q", bytes(data[:rsp.data_length // 8 * 8]))
        total += len(missing)
        for oid in missing:
            out(f"[{node.nid}] oid {oid:016x} is missing.\n")
    name = inode.header.name
    if total == 0:
        out(f"{name} is fine, no object is missing.\n")
        return EXIT_SUCCESS
    out(f"{name} lost {total} object(s).\n")
    return EXIT_FAILURE


# ---------------------------------------------------------------- check (compare and repair)


@dataclass
class Replica:
    """One owner's answer for one object: its SHA-1, or None if it has no copy."""

    node: SdNode
    digest: bytes | None


def vote_majority(replicas: list[Replica]) -> Replica | None:
    """The replica a strict majority of the live replicas agree with, else None
    (Boyer-Moore vote, `vote_majority_object`)."""
    live = [r for r in replicas if r.digest is not None]
    majority, count = None, 0
    for r in live:
        if count == 0:
            majority = r
        count += 1 if r.digest == majority.digest else -1
    if majority is not None and \
            sum(r.digest == majority.digest for r in live) > len(live) // 2:
        return majority
    return None


def _hashes(ctx: Context, oids: list[int], copies: int) -> dict[int, list[Replica]]:
    """GET_HASH of each object from each of its owners, pipelined per node."""
    owners = {oid: ctx.ring.oid_to_nodes(oid, copies) for oid in oids}
    per_node: dict[SdNode, list[int]] = {}
    for oid, nodes in owners.items():
        for n in nodes:
            per_node.setdefault(n, []).append(oid)
    digests: dict[tuple[int, SdNode], bytes | None] = {}
    for node, node_oids in per_node.items():
        reqs = []
        for oid in node_oids:
            req = Request(Op.GET_HASH)
            req.args.oid, req.args.tgt_epoch = oid, ctx.epoch
            reqs.append((req, None, None))
        for oid, (rsp, _) in zip(node_oids, ctx.node_client(node).conn.iter_many(reqs)):
            if rsp.result == Res.SUCCESS:
                digests[oid, node] = rsp.args.digest
            elif rsp.result == Res.NO_OBJ:
                digests[oid, node] = None
            else:
                err(f"failed to read {oid:016x} from {node.nid}, {SheepError(rsp.result)}")
                raise DogExit(EXIT_FAILURE)
    return {oid: [Replica(n, digests[oid, n]) for n in nodes] for oid, nodes in owners.items()}


def repair_replica(ctx: Context, oid: int, src: SdNode, dst: SdNode) -> bool:
    """REPAIR_REPLICA to ``dst``: it fetches ``oid`` from ``src`` (READ_PEER at our
    epoch) and stores it, as `vdi_repair_work` asks."""
    req = Request(Op.REPAIR_REPLICA, epoch=ctx.epoch,
                  args=ForwArgs(oid=oid, addr=src.nid.addr, port=src.nid.port))
    try:
        rsp, _ = ctx.node_client(dst).call(req)
    except SheepConnectionError as e:
        report_conn_error(e)
        return False
    return rsp.result == Res.SUCCESS


def _check_object(ctx: Context, oid: int, replicas: list[Replica]) -> None:
    majority = vote_majority(replicas)
    if majority is None:
        if all(r.digest is None for r in replicas):
            err(f"no node has {oid:016x}")
        else:
            err(f"no majority of {oid:016x}")
        return
    for r in replicas:
        if r is majority or r.digest == majority.digest:
            continue
        if repair_replica(ctx, oid, majority.node, r.node):
            out(f"fixed {'replica' if r.digest is not None else 'missing'} {oid:016x}\n")
        else:
            err(f"failed to repair object {oid:016x} from {majority.node.nid} to {r.node.nid}")


def check_repair(ctx: Context, inode: Inode) -> int:
    """`do_vdi_check`: compare every object's replicas and repair the minority.

    The server keeps erasure-coded VDIs as whole replicas, so they are compared the same
    way once enough zones are up.
    """
    h = inode.header
    copies = min(h.nr_copies, ctx.nr_zones)
    if h.copy_policy and ctx.nr_zones < h.nr_copies:
        err("ABORT: Not enough active zones for consistency-checking erasure coded VDI")
        return EXIT_FAILURE
    objsize = h.object_size
    batch: list[int] = []

    def flush() -> None:
        for oid, replicas in _hashes(ctx, batch, copies).items():
            _check_object(ctx, oid, replicas)
        last = batch[-1]
        done = (data_oid_to_idx(last) + 1) * objsize if is_data_obj(last) else 0
        show_progress(min(done, h.vdi_size), h.vdi_size)

    show_progress(0, h.vdi_size)
    for oid in _vdi_oids(ctx, inode):
        batch.append(oid)
        if len(batch) == HASH_BATCH:
            flush()
            batch = []
    if batch:
        flush()
    show_progress(h.vdi_size, h.vdi_size)
    out(f"finish check&repair {h.name}\n")
    return EXIT_SUCCESS


def vdi_check(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    found = read_vdi_obj(ctx, args[0], o.snapshot_id, o.snapshot_tag)
    if found is None:
        err("FATAL: no inode objects")
        return EXIT_FAILURE
    return check_exist(ctx, found[1]) if o.exist else check_repair(ctx, found[1])
