"""`dog vdi ...` (dog/vdi.c; dog.md §4).

Formatting is kept in pure functions (``vdi_list_row`` ...) so it can be checked against the
verbatim samples of dog.md §8 without a cluster.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import (
    SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_INODE_DATA_INDEX, SD_INODE_HEADER_SIZE, SD_MAX_VDI_SIZE,
    SD_MAX_VDI_TAG_LEN, Res,
)
from sheep.proto.inode import STORE_POLICY_HYPER, Inode, InodeHeader
from sheep.proto.oid import data_oid_to_idx, is_data_obj, oid_to_vid, vid_to_vdi_oid
from sheep.proto.sizes import ec_policy_to_dp, format_copies, strnumber

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, Context, DogExit, c_strtol, c_text, cpad,
    dog_read_object, err, index_entries, index_get, localtime_str, out, parse_copies_opt,
    parse_shift_opt, parse_size_arg, parse_snapshot_opt, parse_vdi, report_conn_error, vdi_flag,
)
from .vdi_attr import vdi_getattr, vdi_setattr
from .vdi_backup import vdi_backup, vdi_restore
from .vdi_check import vdi_check, vdi_track
from .vdi_family import (
    OLD_MAX_DATA_OBJS, do_vdi_create, fill_objects, vdi_alter_copy, vdi_clone, vdi_delete,
    vdi_resize, vdi_rollback, vdi_snapshot,
)
from .vdi_io import vdi_read, vdi_write
from .vdi_lock import vdi_lock
from .vdi_object import vdi_object
from .vdi_tree import vdi_graph, vdi_tree


@dataclass
class Options:
    """`struct vdi_cmd_data`: everything the vdi option letters set."""

    index: int | None = None
    snapshot_id: int = 0
    snapshot_tag: str = ""
    exclusive: bool = False
    delete: bool = False
    prealloc: bool = False
    nr_copies: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    block_size_shift: int = 0
    writeback: bool = False
    from_snapshot_id: int = 0
    from_snapshot_tag: str = ""
    force: bool = False
    oid: int = 0
    no_share: bool = False
    exist: bool = False
    reduce_identical_snapshots: bool = False
    nr_batched_reclamation: int = 0
    reclamation_interval: int = 0
    nr_max_reclaim: int = 0


_FLAGS = {"P": "prealloc", "n": "no_share", "x": "exclusive", "d": "delete", "w": "writeback",
          "f": "force", "e": "exist", "R": "reduce_identical_snapshots"}
_COUNTS = {  # letter: (field, what the message calls it)
    "B": ("nr_batched_reclamation", "The number of batched reclamation"),
    "I": ("reclamation_interval", "The interval of batched reclamation"),
    "m": ("nr_max_reclaim", "The maximum number of reclamation"),
}


def parse_option(o: Options, ch: str, arg: str) -> None:
    """`vdi_parser`: errors exit 1 at once, in command-line order."""
    if ch in _FLAGS:
        setattr(o, _FLAGS[ch], True)
    elif ch == "i":
        value, used = c_strtol(arg, 16 if arg.startswith("0x") else 10)
        if not used:
            err("The index must be a decimal integer or a hexadecimal integer started with 0x")
            raise DogExit(EXIT_FAILURE)
        o.index = value & 0xFFFFFFFFFFFFFFFF
    elif ch == "s":
        snapid, tag = parse_snapshot_opt(arg)
        if snapid:
            o.snapshot_id = snapid
        else:
            o.snapshot_id, o.snapshot_tag = 0, c_text(tag, SD_MAX_VDI_TAG_LEN)
    elif ch == "c":
        o.nr_copies, o.copy_policy = parse_copies_opt(arg)
    elif ch == "F":
        value, used = c_strtol(arg)
        if not used or used != len(arg):
            o.from_snapshot_id, o.from_snapshot_tag = 0, c_text(arg, SD_MAX_VDI_TAG_LEN)
        else:
            o.from_snapshot_id = value
    elif ch == "y":
        o.store_policy = 1
        if o.block_size_shift:
            err("Don't specify both -y and -z options, please")
            raise DogExit(EXIT_FAILURE)
    elif ch == "o":
        value, used = c_strtol(arg, 16)
        if not used:
            err("object id must be a hex integer")
            raise DogExit(EXIT_FAILURE)
        o.oid = value & 0xFFFFFFFFFFFFFFFF
    elif ch == "z":
        shift = parse_shift_opt(arg)
        if o.store_policy == 1:
            err("Don't specify both -y and -z options, please")
            raise DogExit(EXIT_FAILURE)
        o.block_size_shift = shift
    elif ch in _COUNTS:
        name, what = _COUNTS[ch]
        value, used = c_strtol(arg)
        if not used:
            err(f"{what} is invalid: {arg}")
            raise DogExit(EXIT_FAILURE)
        if value <= 0:
            err(f"{what} must bepositive integer")  # sic: no space, as in dog
            raise DogExit(EXIT_FAILURE)
        setattr(o, name, value)


# ---------------------------------------------------------------- formatting (pure)

LIST_HEADER = ("  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag"
               "   Block Size Shift\n")
_C_SPACE = " \t\n\v\f\r"


def raw_escape(name: str) -> str:
    """Raw-mode names: every whitespace character and backslash gets a backslash."""
    return "".join("\\" + c if c in _C_SPACE or c == "\\" else c for c in name)


def vdi_list_row(vid: int, h: InodeHeader, snapid: int, my_objs: int, cow_objs: int,
                 raw: bool = False) -> str:
    """One `print_vdi_list` line (dog.md §4.6)."""
    objsize = 1 << h.block_size_shift
    t = h.create_time >> 32
    copies = format_copies(h.nr_copies, h.copy_policy)
    if raw:
        return (f"{vdi_flag(h, True)} {raw_escape(h.name)} {snapid} {h.vdi_size} "
                f"{my_objs * objsize} {cow_objs * objsize} {t} {vid:x} {copies} {h.tag} "
                f"{h.block_size_shift}\n")
    return (f"{vdi_flag(h)} {cpad(h.name, 8, left=True)} {snapid:5d} {strnumber(h.vdi_size):>7} "
            f"{strnumber(my_objs * objsize):>7} {strnumber(cow_objs * objsize):>7} "
            f"{localtime_str(t, '%Y-%m-%d %H:%M')}  {vid:7x} {cpad(copies, 6)} "
            f"{cpad(h.tag, 13)} {h.block_size_shift:3d}\n")


def vdi_list_json(vid: int, h: InodeHeader, snapid: int, my_objs: int, cow_objs: int) -> dict:
    objsize = 1 << h.block_size_shift
    d, p = ec_policy_to_dp(h.copy_policy) if h.copy_policy else (0, 0)
    return {
        "name": h.name, "vdi_id": vid, "vdi_id_hex": f"{vid:x}", "snapshot_id": snapid,
        "is_snapshot": h.is_snapshot, "is_clone": vdi_flag(h) == "c", "tag": h.tag,
        "size": h.vdi_size, "used": my_objs * objsize, "shared": cow_objs * objsize,
        "creation_time": h.create_time >> 32, "nr_copies": h.nr_copies,
        "copy_policy": h.copy_policy, "redundancy": format_copies(h.nr_copies, h.copy_policy),
        "ec_data_strips": d, "ec_parity_strips": p, "block_size_shift": h.block_size_shift,
        "hyper": h.store_policy == STORE_POLICY_HYPER, "parent_vdi_id": h.parent_vdi_id,
    }


# ---------------------------------------------------------------- helpers


def inode_stat(ctx: Context, inode: Inode) -> tuple[int, int]:
    """`sd_inode_stat`: (own objects, objects shared with ancestors)."""
    h = inode.header
    if h.store_policy != STORE_POLICY_HYPER:
        n = min(h.count_data_objs, SD_INODE_DATA_INDEX)
        arr = inode.data_vdi_id[:n]
        mine = arr.count(h.vdi_id) if h.vdi_id else 0
        return mine, n - arr.count(0) - mine
    mine = cow = 0
    for _, v in index_entries(ctx, inode):
        if v == h.vdi_id:
            mine += 1
        else:
            cow += 1
    return mine, cow


# ---------------------------------------------------------------- list


def vdi_list(ctx: Context, args: list[str]) -> int:
    name = args[0] if args else None
    oid = ctx.opts.oid
    if not ctx.raw and not ctx.json:
        out(LIST_HEADER)
    if name is None and oid and not is_data_obj(oid):
        return EXIT_FAILURE
    rows = []
    for vid, inode in parse_vdi(ctx, with_index=True):
        h = inode.header
        if name is not None:
            if h.name != name:
                continue
        elif oid:
            idx = data_oid_to_idx(oid)
            entry = index_get(ctx, inode, idx)
            if not entry or entry != oid_to_vid(oid):
                continue
        mine, cow = inode_stat(ctx, inode)
        snapid = h.snap_id if h.is_snapshot else 0
        if ctx.json:
            rows.append(vdi_list_json(vid, h, snapid, mine, cow))
        else:
            out(vdi_list_row(vid, h, snapid, mine, cow, ctx.raw))
    if ctx.json:
        out(json.dumps(rows, indent=2) + "\n")
    return EXIT_SUCCESS


# ---------------------------------------------------------------- create


def vdi_create(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    name = args[0]
    if len(args) < 2:
        err("Please specify the VDI size")
        return EXIT_USAGE
    size = parse_size_arg(args[1])
    if size is None:
        return EXIT_USAGE
    shift = o.block_size_shift
    if shift:
        object_size = 1 << shift
    elif o.store_policy == 1:
        shift = SD_DEFAULT_BLOCK_SIZE_SHIFT  # hyper volumes always use the default size
        object_size = 1 << shift
    else:
        try:
            cinfo = ctx.client().cluster_info()
        except SheepConnectionError as e:
            report_conn_error(e)
            err("Fail to execute request: SD_OP_CLUSTER_INFO")
            return EXIT_FAILURE
        except SheepError as e:
            err(str(e))
            return EXIT_FAILURE
        if not cinfo.ctime:
            err(f"Failed to create VDI {name}: {SheepError(Res.WAIT_FOR_FORMAT)}")
            return EXIT_FAILURE
        object_size = 1 << cinfo.block_size_shift
    old_max_total_size = object_size * OLD_MAX_DATA_OBJS
    if size > old_max_total_size and o.store_policy == 0:
        err(f"VDI size is larger than {strnumber(old_max_total_size)} bytes, please use '-y' to "
            f"create a hyper volume with size up to {strnumber(SD_MAX_VDI_SIZE)} bytes or use "
            f"'-z' to create larger object size volume")
        return EXIT_USAGE
    if size > SD_MAX_VDI_SIZE:
        err("VDI size is too large")
        return EXIT_USAGE
    if o.prealloc and o.store_policy == 1:
        # Deviation: dog would insert into the B-tree index; we have no B-tree writer.
        err("Preallocation of hyper volumes is not supported")
        return EXIT_FAILURE
    vid = do_vdi_create(ctx, name, size, copies=o.nr_copies, copy_policy=o.copy_policy,
                        store_policy=o.store_policy, shift=shift)
    if vid is None:
        return EXIT_FAILURE
    if o.prealloc:
        ret = _preallocate(ctx, vid)
        if ret != EXIT_SUCCESS:
            return ret
    if ctx.verbose:
        out(f"{vid:x}\n" if ctx.raw else f"VDI ID of newly created VDI: {vid:x}\n")
    return EXIT_SUCCESS


def _preallocate(ctx: Context, vid: int) -> int:
    """-P: an all-zero object (data_length 0) per index, each followed by its index update."""
    data = dog_read_object(ctx, vid_to_vdi_oid(vid), SD_INODE_HEADER_SIZE)
    if data is None:
        err("Failed to read a newly created VDI object")
        return EXIT_FAILURE
    h = InodeHeader.decode(data)
    ok = fill_objects(ctx, vid, h, range(h.count_data_objs), lambda idx: None)
    return EXIT_SUCCESS if ok else EXIT_FAILURE


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "check": vdi_check,
    "create": vdi_create,
    "snapshot": vdi_snapshot,
    "clone": vdi_clone,
    "delete": vdi_delete,
    "rollback": vdi_rollback,
    "list": vdi_list,
    "tree": vdi_tree,
    "graph": vdi_graph,
    "object": vdi_object,
    "track": vdi_track,
    "setattr": vdi_setattr,
    "getattr": vdi_getattr,
    "resize": vdi_resize,
    "read": vdi_read,
    "write": vdi_write,
    "backup": vdi_backup,
    "restore": vdi_restore,
    "alter-copy": vdi_alter_copy,
    "lock": vdi_lock,
}
