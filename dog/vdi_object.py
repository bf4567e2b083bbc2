"""`dog vdi object {location|map|dump-inode}` (dog/vdi.c; dog.md §4.9)."""
from __future__ import annotations

from typing import Callable

from sheep.client.api import Client
from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import SD_INODE_SIZE, Op, Res
from sheep.proto.inode import Inode
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.structs import SdNode

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, Context, err, index_entries, index_get, out, read_vdi_obj,
    report_conn_error, run_nested,
)


def expected_location(nr_nodes: int, copies: int, owners: list[SdNode]) -> str:
    """`print_expected_location` (dog.md §4.9)."""
    if nr_nodes < copies:
        return (f"\nBecause number of nodes ({nr_nodes}) is less than number of copies "
                f"({copies}), the object should be located at every nodes.\n")
    return ("\nAccording to sheepdog algorithm, the object should be located at:\n"
            + " ".join(str(n.nid) for n in owners) + "\n")


def object_map_row(idx: int, vid: int) -> str:
    return f"{idx:08d} {vid:8x}\n"


def _for_each_node_print(ctx: Context, oid: int) -> None:
    """EXIST to every node, in node order (`for_each_node_print`)."""
    for n in ctx.nodes:
        req = Client.obj_request(Op.EXIST, oid, 0)
        req.epoch = ctx.epoch
        try:
            rsp, _ = ctx.node_client(n).call(req)
        except SheepConnectionError as e:
            report_conn_error(e)
            continue
        sheep = str(n.nid)
        if rsp.result == Res.SUCCESS:
            out(f"{sheep} has the object\n")
        elif rsp.result == Res.NO_OBJ:
            out(f"{sheep} doesn't have the object\n")
        elif rsp.result in (Res.OLD_NODE_VER, Res.NEW_NODE_VER):
            err("The node list has changed: please try again")
        else:
            err(f"{sheep}: hit an unexpected error ({SheepError(rsp.result)})")


def object_location(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    found = read_vdi_obj(ctx, args[0], o.snapshot_id, o.snapshot_tag)
    if found is None:
        err("FATAL: no inode objects")
        return EXIT_FAILURE
    _, inode = found
    h = inode.header
    vid, nr = h.vdi_id, len(ctx.nodes)
    if o.index is None:
        oid = vid_to_vdi_oid(vid)
        out(f"Looking for the inode object 0x{vid:x} with {nr} nodes\n\n")
    else:
        idx = o.index
        if idx >= 1 << 32:
            out("The offset is too large!\n")
            return EXIT_FAILURE
        owner = index_get(ctx, inode, idx)
        if not owner:
            out(f"The inode object 0x{vid:x} idx {idx} is not allocated\n")
            return EXIT_SUCCESS
        oid = vid_to_data_oid(owner, idx)
        out(f"Looking for the object {oid:016x} (vid 0x{vid:x} idx {idx}, {h.nr_copies} copies)"
            f" with {nr} nodes\n\n")
    _for_each_node_print(ctx, oid)
    out(expected_location(nr, h.nr_copies, ctx.ring.oid_to_nodes(oid, h.nr_copies)))
    return EXIT_SUCCESS


def object_map(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    name = args[0]
    found = read_vdi_obj(ctx, name, o.snapshot_id, o.snapshot_tag)
    if found is None:
        err(f"FATAL: {name} not found")
        return EXIT_FAILURE
    _, inode = found
    out("Index       VID\n")
    if o.index is not None:
        out(object_map_row(o.index, index_get(ctx, inode, o.index)))
    else:
        for idx, vid in index_entries(ctx, inode):
            out(object_map_row(idx, vid))
    return EXIT_SUCCESS


def dump_inode_text(inode: Inode) -> str:
    """`vdi_object_dump_inode` output for a local inode object file."""
    h = inode.header
    lines = [f"name: {h.name}", f"tag: {h.tag}", f"create_time: {h.create_time:x}",
             f"snap_ctime: {h.snap_ctime:x}", f"vm_clock_nsec: {h.vm_clock_nsec:x}",
             f"vdi_size: {h.vdi_size}", f"vm_state_size: {h.vm_state_size}",
             f"copy_policy: {h.copy_policy}", f"store_policy: {h.store_policy}",
             f"nr_copies: {h.nr_copies}", f"block_size_shift: {h.block_size_shift}",
             f"snap_id: {h.snap_id}", f"vdi_id: {h.vdi_id:x}",
             f"parent_vdi_id: {h.parent_vdi_id:x}",
             f"btree_counter: {h.btree_counter}", "data_vdi_id:"]
    used = list(inode.used_indexes())
    lines += [f"{i}: {inode.get_vid(i):x}" for i in used]
    lines.append("gref:")
    text = "\n".join(lines) + "\n"
    refs = []
    for i in used:
        gen, count = inode.gref_of(i)
        refs.append(f"{i}: {inode.get_vid(i):x}, {gen}, {count}\n")
    return text + "".join(refs)


def object_dump_inode(ctx: Context, args: list[str]) -> int:
    try:
        with open(args[0], "rb") as f:
            data = f.read(SD_INODE_SIZE)
    except OSError as e:
        err(f"failed to open inode object file: {e.strerror}")
        return EXIT_FAILURE
    if len(data) != SD_INODE_SIZE:
        err("failed to read inode object file: Success")
        return EXIT_FAILURE
    out(dump_inode_text(Inode.decode(data)))
    return EXIT_SUCCESS


OBJECT_HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "location": object_location, "map": object_map, "dump-inode": object_dump_inode,
}


def vdi_object(ctx: Context, args: list[str]) -> int:
    return run_nested(ctx, args, OBJECT_HANDLERS)
