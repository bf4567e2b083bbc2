"""VDI lifecycle: `dog vdi delete|snapshot|clone|rollback|resize|alter-copy` (dog/vdi.c;
dog.md §4.2-§4.5, §4.12, §4.15; objects.md §6).

Every flow is client-side as in dog: the server only offers NEW_VDI (create, snapshot,
clone, rebase), DEL_VDI and object I/O.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from sheep.client.sync import SheepError
from sheep.proto.constants import (
    SD_INODE_DATA_INDEX, SD_INODE_HEADER_SIZE, SD_INODE_SIZE,
    SD_MAX_VDI_SIZE, SD_MAX_VDI_TAG_LEN, Flag, Op, Res,
)
from sheep.proto.header import Request, VdiStateArgs
from sheep.proto.inode import STORE_POLICY_HYPER, Inode, InodeHeader, index_offset
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.structs import pad

from .common import (
    EXIT_FAILURE, EXIT_MISSING, EXIT_SUCCESS, EXIT_USAGE, Context, DogExit, all_ok, alter_copy_target, c_name,
    confirm, describe_open_failure, dog_read_object, dog_write_object, err, find_vdi, obj_req,
    out, parse_size_arg, read_vdi_obj, send_light_req, show_progress,
)
from .vdi_tree import is_vdi_standalone

NR_BATCHED_RECLAMATION_DEFAULT = 128
OLD_MAX_DATA_OBJS = SD_INODE_DATA_INDEX  # 2^20 index entries of a normal (flat) VDI
FILL_BATCH = 16  # objects created per pipelined round (vdi create -P, vdi clone -P/-n)
TAG_OFFSET = 256  # offsetof(struct sd_inode, tag)

ROLLBACK_PROMPT = ("This operation discards any changes made since the previous\n"
                   "snapshot was taken.  Continue? [yes/no]: ")
ALTER_VDI_COPY_PRINT = ("    __\n"
                        "   ()'`;\n"
                        "   /\\|`  Caution! Changing VDI's redundancy level will affect\n"
                        "  /  |   the VDI itself only and trigger recovery.\n"
                        "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


# ---------------------------------------------------------------- shared steps


def do_vdi_create(ctx: Context, name: str, size: int, *, base_vid: int = 0,
                  snapshot: bool = False, copies: int = 0, copy_policy: int = 0,
                  store_policy: int = 0, shift: int = 0) -> int | None:
    """`do_vdi_create`: NEW_VDI; the new vid, or None after dog's message."""
    try:
        return ctx.client().new_vdi(c_name(name), size, base_vid=base_vid,
                                    snapid=1 if snapshot else 0, copies=copies,
                                    copy_policy=copy_policy, store_policy=store_policy,
                                    block_size_shift=shift).vdi_id
    except SheepError as e:
        err(f"Failed to create VDI {name}: {e}")
        return None


def like(h: InodeHeader) -> dict[str, int]:
    """NEW_VDI redundancy and layout arguments copied from an existing inode."""
    return {"copies": h.nr_copies, "copy_policy": h.copy_policy,
            "store_policy": h.store_policy, "shift": h.block_size_shift}


def fill_objects(ctx: Context, vid: int, h: InodeHeader, idxs: Iterable[int],
                 source: Callable[[int], bytes | bytearray | memoryview | None]) -> bool:
    """Create ``vid``'s object for each index and point the index at it (DIRECT).

    ``source(idx)`` gives the object's bytes, or None for an all-zero object (sent with
    ``data_length`` 0, as dog does).  Pipelined FILL_BATCH objects at a time.
    """
    objsize = h.object_size
    inode_oid = vid_to_vdi_oid(vid)
    me = vid.to_bytes(4, "little")
    todo = list(idxs)
    for k in range(0, len(todo), FILL_BATCH):
        batch = todo[k:k + FILL_BATCH]
        show_progress(batch[0] * objsize, h.vdi_size)
        creates = []
        for i in batch:
            data = source(i)
            creates.append((obj_req(Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, i),
                                    len(data) if data is not None else 0, 0, h,
                                    Flag.CMD_DIRECT), data))
        updates = [(obj_req(Op.WRITE_OBJ, inode_oid, 4, index_offset(i), h, Flag.CMD_DIRECT), me)
                   for i in batch]
        if not (all_ok(ctx, creates) and all_ok(ctx, updates)):
            return False
    show_progress(h.count_data_objs * objsize, h.vdi_size)
    return True


def write_header(ctx: Context, vid: int, h: InodeHeader, copies: int) -> bool:
    """WRITE_OBJ of the whole 4,664-byte header (resize, alter-copy)."""
    req = obj_req(Op.WRITE_OBJ, vid_to_vdi_oid(vid), SD_INODE_HEADER_SIZE, 0, h, Flag.CMD_DIRECT)
    req.args.copies = copies
    return dog_write_object(ctx, req, h.encode())


# ---------------------------------------------------------------- delete


def vdi_delete(ctx: Context, args: list[str]) -> int:
    """Delete as dog does (objects.md §6.6), with meaningful exit codes.

    Deviation from sheep 1.0's dog, which always exits 0: "No VDI found" exits 5
    (EXIT_MISSING) and any other failure exits 1 (dog.md §4.4, "intended codes").
    """
    o = ctx.opts
    return do_vdi_delete(ctx, args[0], o.snapshot_id, o.snapshot_tag)


def _missing_or_failure(result: int) -> int:
    return EXIT_MISSING if result == Res.NO_VDI else EXIT_FAILURE


def do_vdi_delete(ctx: Context, name: str, snapid: int, tag: str) -> int:
    o = ctx.opts
    batch = o.nr_batched_reclamation or NR_BATCHED_RECLAMATION_DEFAULT
    result, vid = find_vdi(ctx, name, snapid, tag)
    if result != Res.SUCCESS:
        err(describe_open_failure(name, snapid, tag, result))
        return _missing_or_failure(result)
    inode_oid = vid_to_vdi_oid(vid)
    data = dog_read_object(ctx, inode_oid, SD_INODE_SIZE, direct=False)
    if data is None:
        err(f"failed to read inode object: {inode_oid:016x}")
        return EXIT_FAILURE
    inode = Inode.decode(data)
    h = inode.header
    # Hyper volumes keep a B-tree in the index area; the server releases their objects on
    # DEL_VDI, so only flat indexes are zeroed here.
    if h.store_policy != STORE_POLICY_HYPER:
        nr_objs = min(h.count_data_objs, SD_INODE_DATA_INDEX)
        used = [i for i in inode.used_indexes() if i < nr_objs] if nr_objs else []
        if o.nr_max_reclaim:
            used = used[:o.nr_max_reclaim]
        for k in range(0, len(used), batch):
            chunk = used[k:k + batch]
            start, stop = chunk[0], chunk[-1] + 1
            for i in chunk:
                inode.set_vid(i, 0)
            req = obj_req(Op.WRITE_OBJ, inode_oid, 4 * (stop - start), index_offset(start), h,
                          Flag.CMD_DIRECT)
            if not dog_write_object(ctx, req, inode.index_bytes(start, stop)):
                err(f"failed to update inode for discarding objects: {inode_oid:016x}")
                return EXIT_FAILURE
            if o.reclamation_interval and k + batch < len(used):
                time.sleep(o.reclamation_interval)
    if o.nr_max_reclaim:
        return EXIT_SUCCESS
    try:
        ctx.client().del_vdi(c_name(name), c_name(tag, SD_MAX_VDI_TAG_LEN), snapid)
    except SheepError as e:
        err(f"Failed to delete {name}: {e}")
        return _missing_or_failure(e.result)
    return EXIT_SUCCESS


# ---------------------------------------------------------------- snapshot


def vdi_snapshot(ctx: Context, args: list[str]) -> int:
    o, name = ctx.opts, args[0]
    if o.snapshot_id:
        err("Please specify a non-integer value for a snapshot tag name")
        return EXIT_USAGE
    result, vid = find_vdi(ctx, name, 0, o.snapshot_tag)
    if result == Res.SUCCESS:  # the tag names an existing VDI (or no tag: the working VDI)
        head = dog_read_object(ctx, vid_to_vdi_oid(vid), SD_INODE_HEADER_SIZE)
        if head is None:
            return EXIT_FAILURE
        h = InodeHeader.decode(head)
        if h.is_snapshot:
            err(f"Failed to create snapshot for {name}, maybe snapshot id (0) or tag "
                f"({o.snapshot_tag}) is existed")
            return EXIT_FAILURE
    elif result == Res.NO_TAG:
        found = read_vdi_obj(ctx, name, header_only=True)
        if found is None:
            return EXIT_FAILURE
        vid, h = found[0], found[1].header
    else:
        err(f"Failed to create snapshot for {name}: {SheepError(result)}")
        return EXIT_FAILURE
    if h.store_policy:
        err("creating a snapshot of hypervolume is not supported")
        return EXIT_FAILURE
    if o.reduce_identical_snapshots:
        data = dog_read_object(ctx, vid_to_vdi_oid(vid), SD_INODE_SIZE)
        if data is None:
            return EXIT_FAILURE
        if vid not in Inode.decode(data).data_vdi_id:
            if ctx.verbose:
                err(f"VDI {name} doesn't have its own objects, skipping creation of snapshot")
            return EXIT_SUCCESS
    tag = pad(c_name(o.snapshot_tag, SD_MAX_VDI_TAG_LEN), SD_MAX_VDI_TAG_LEN)
    if not dog_write_object(ctx, obj_req(Op.WRITE_OBJ, vid_to_vdi_oid(vid), len(tag),
                                         TAG_OFFSET, h), tag):
        return EXIT_FAILURE
    new_vid = do_vdi_create(ctx, name, h.vdi_size, base_vid=vid, snapshot=True, **like(h))
    if new_vid is None:
        return EXIT_FAILURE
    if ctx.verbose:
        out(f"{new_vid:x} {vid:x}\n" if ctx.raw else
            f"new VID of original VDI: {new_vid:x}, VDI ID of newly created snapshot: {vid:x}\n")
    return EXIT_SUCCESS


# ---------------------------------------------------------------- clone


def vdi_clone(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    if len(args) < 2:
        err("Destination VDI name must be specified")
        return EXIT_USAGE
    src, dst = args[0], args[1]
    if not o.snapshot_id and not o.snapshot_tag:
        err("Only snapshot VDIs can be cloned")
        err("Please specify the '-s' option")
        return EXIT_USAGE
    found = read_vdi_obj(ctx, src, o.snapshot_id, o.snapshot_tag)
    if found is None:
        return EXIT_FAILURE
    base_vid, inode = found
    h = inode.header
    new_vid = do_vdi_create(ctx, dst, h.vdi_size, base_vid=0 if o.no_share else base_vid,
                            **like(h))
    if new_vid is None:
        return EXIT_FAILURE
    if o.prealloc or o.no_share:
        if read_vdi_obj(ctx, dst, header_only=True) is None:
            return EXIT_FAILURE
        objsize = h.object_size

        def source(idx: int) -> bytes | bytearray | memoryview | None:
            owner = inode.get_vid(idx)
            if not owner:
                return None
            data = dog_read_object(ctx, vid_to_data_oid(owner, idx), objsize)
            if data is None:
                raise DogExit(EXIT_FAILURE)
            return data

        if o.prealloc:
            idxs: Iterable[int] = range(h.count_data_objs)
        else:
            idxs = (i for i in inode.used_indexes() if i < h.count_data_objs)
        if not fill_objects(ctx, new_vid, h, idxs, source):
            return EXIT_FAILURE
    if ctx.verbose:
        out(f"{new_vid:x}\n" if ctx.raw else f"VDI ID of newly created clone: {new_vid:x}\n")
    return EXIT_SUCCESS


# ---------------------------------------------------------------- rollback


def vdi_rollback(ctx: Context, args: list[str]) -> int:
    """Delete the working VDI, then clone the snapshot under the same name.

    The original ignores a failed deletion (its delete always "succeeds"); here a working
    VDI that is already gone (No VDI found) lets the rollback go on, any other failure
    stops it with "Failed to delete the current state".
    """
    o, name = ctx.opts, args[0]
    if not o.snapshot_id and not o.snapshot_tag:
        err("Please specify the '-s' option")
        return EXIT_USAGE
    found = read_vdi_obj(ctx, name, o.snapshot_id, o.snapshot_tag, header_only=True)
    if found is None:
        return EXIT_FAILURE
    base_vid, h = found[0], found[1].header
    if not o.force:
        confirm(ROLLBACK_PROMPT)
    ret = do_vdi_delete(ctx, name, 0, "")
    if ret not in (EXIT_SUCCESS, EXIT_MISSING):
        err("Failed to delete the current state")
        return EXIT_FAILURE
    new_vid = do_vdi_create(ctx, name, h.vdi_size, base_vid=base_vid, **like(h))
    if new_vid is None:
        return EXIT_FAILURE
    if ctx.verbose:
        out(f"{new_vid:x}\n" if ctx.raw else f"New VDI ID of rollbacked VDI: {new_vid:x}\n")
    return EXIT_SUCCESS


# ---------------------------------------------------------------- resize


def vdi_resize(ctx: Context, args: list[str]) -> int:
    if len(args) < 2:
        err("Please specify the new size for the VDI")
        return EXIT_USAGE
    new_size = parse_size_arg(args[1])
    if new_size is None:
        return EXIT_USAGE
    found = read_vdi_obj(ctx, args[0], header_only=True)
    if found is None:
        return EXIT_FAILURE
    vid, h = found[0], found[1].header
    if h.store_policy == 0:
        limit = h.object_size * OLD_MAX_DATA_OBJS
        if new_size > limit:
            err(f"New VDI size is too large. This volume's max size is {limit}")
            return EXIT_USAGE
    elif new_size > SD_MAX_VDI_SIZE:
        err(f"New VDI size is too large This volume's max size is {SD_MAX_VDI_SIZE}")  # sic
        return EXIT_USAGE
    if new_size < h.vdi_size:
        err("Shrinking VDIs is not implemented")
        return EXIT_USAGE
    h.vdi_size = new_size
    if not write_header(ctx, vid, h, h.nr_copies):
        err("Failed to update an inode header")
        return EXIT_FAILURE
    return EXIT_SUCCESS


# ---------------------------------------------------------------- alter-copy


def vdi_alter_copy(ctx: Context, args: list[str]) -> int:
    """Rewrite the header's copy count, then ALTER_VDI_COPY.

    Unlike the original, a refused ALTER_VDI_COPY puts the old header back, so a server
    without the operation is left exactly as it was.
    """
    o, name = ctx.opts, args[0]
    if o.copy_policy:
        err("Changing redundancy level of erasure coded vdi is not supported yet.")
        return EXIT_USAGE
    copies = alter_copy_target(ctx, o.nr_copies, o.force, "The vdi's")
    found = read_vdi_obj(ctx, name, header_only=True)
    if found is None:
        err(f"Reading {name}'s vdi object failure.")
        return EXIT_FAILURE
    vid, h = found[0], found[1].header
    if h.copy_policy:
        err(f"{name}'s copy policy is erasure code, changing it is not supported yet.")
        return EXIT_FAILURE
    old = h.nr_copies
    if old == copies:
        err(f"{name}'s redundancy level is already set to {old}, nothing changed.")
        return EXIT_FAILURE
    if not is_vdi_standalone(ctx, vid, h.name):
        err("Only standalone vdi supports changing redundancy level.")
        err(f"Please clone {name} with -n (--no-share) option first.")
        return EXIT_FAILURE
    if not o.force:
        confirm(ALTER_VDI_COPY_PRINT)
    h.nr_copies = copies
    if not write_header(ctx, vid, h, old):
        err(f"Overwrite the vdi object's header of {name} failure while setting its "
            f"redundancy level.")
        return EXIT_FAILURE
    req = Request(Op.ALTER_VDI_COPY, args=VdiStateArgs(
        new_vid=vid, copies=copies, copy_policy=o.copy_policy,
        block_size_shift=h.block_size_shift))
    if send_light_req(ctx, req):
        err(f"{name}'s redundancy level is set to {copies}, the old one was {old}.")
        return EXIT_SUCCESS
    h.nr_copies = old
    write_header(ctx, vid, h, old)
    err(f"Changing {name}'s redundancy level failure.")
    return EXIT_FAILURE
