"""`dog vdi lock list|unlock` (dog/vdi.c; dog.md §4.16): lock state from GET_VDI_COPIES."""
from __future__ import annotations

from typing import Callable

from sheep.client.sync import SheepError
from sheep.proto.constants import LOCK_TYPE_NORMAL, LOCK_TYPE_SHARED, VDI_STATE_SIZE, Op, Res
from sheep.proto.header import Request, VdiArgs
from sheep.proto.inode import InodeHeader
from sheep.proto.structs import (
    LOCK_STATE_LOCKED, LOCK_STATE_SHARED, LOCK_STATE_UNLOCKED, SHARED_LOCK_STATE_INVALIDATED,
    SHARED_LOCK_STATE_MODIFIED, SHARED_LOCK_STATE_SHARED, VdiState,
)

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, Context, cpad, err, find_vdi, out, parse_vdi,
    run_nested, vdi_flag,
)

LOCK_LIST_HEADER = "  Name         Id  VDI id  Tag            Owner node(s)\n"
DEFAULT_VDI_STATE_COUNT = 512
_SHARED_STATES = {
    SHARED_LOCK_STATE_MODIFIED: "(modified)",
    SHARED_LOCK_STATE_SHARED: "(shared)",
    SHARED_LOCK_STATE_INVALIDATED: "(invalidated)",
}


def lock_list_row(vid: int, h: InodeHeader, state: VdiState) -> str:
    """One `print_lock_list` line; empty for an unlocked VDI."""
    if state.lock_state == LOCK_STATE_UNLOCKED:
        return ""
    snapid = h.snap_id if h.is_snapshot else 0
    row = f"{vdi_flag(h)} {cpad(h.name, 8, left=True)}  {snapid:5d}  {vid:6x}  " \
          f"{cpad(h.tag, 13, left=True)} "
    if state.lock_state == LOCK_STATE_LOCKED:
        return row + f" {state.lock_owner.log_str()}\n"
    for nid, st in zip(state.participants, state.participants_state):
        row += f" {nid.log_str()}" + _SHARED_STATES.get(st, f"(UNKNOWN {st}, BUG!)")
    return row + "\n"


def describe_vdi(name: str, snapid: int, tag: str, vid: int = 0) -> str:
    """`describe_vdi`: ``name``, ``name (tag=T)`` or ``name (snapid=N)``, plus ``vid=X``."""
    inner = f"snapid={snapid}" if snapid > 0 else (f"tag={tag}" if tag else "")
    if vid:
        inner = f"{inner}, vid={vid:x}" if inner else f"vid={vid:x}"
    return f"{name} ({inner})" if inner else name


def get_vdi_state(ctx: Context) -> dict[int, VdiState] | None:
    """GET_VDI_COPIES (doubling the buffer on BUFFER_SMALL): vid -> state, None after the
    error message."""
    length = DEFAULT_VDI_STATE_COUNT * VDI_STATE_SIZE
    while True:
        rsp, data = ctx.client().call(Request(Op.GET_VDI_COPIES, 0, length))
        if rsp.result != Res.BUFFER_SMALL:
            break
        length *= 2
    if rsp.result != Res.SUCCESS:
        err(f"failed to execute SD_OP_GET_VDI_COPIES: {SheepError(rsp.result)}")
        return None
    states = (VdiState.decode(data, off)
              for off in range(0, rsp.data_length - VDI_STATE_SIZE + 1, VDI_STATE_SIZE))
    return {s.vid: s for s in states}


def lock_list(ctx: Context, args: list[str]) -> int:
    states = get_vdi_state(ctx)
    if states is None:
        err("Failed to get VDI state")
        return EXIT_SYSFAIL
    out(LOCK_LIST_HEADER)
    for vid, inode in parse_vdi(ctx, with_index=False):
        state = states.get(vid)
        if state is not None:
            out(lock_list_row(vid, inode.header, state))
    return EXIT_SUCCESS


def lock_unlock(ctx: Context, args: list[str]) -> int:
    o, name = ctx.opts, args[0]
    result, vid = find_vdi(ctx, name, o.snapshot_id, o.snapshot_tag)
    desc = describe_vdi(name, o.snapshot_id, o.snapshot_tag, vid)
    if result != Res.SUCCESS:
        err(f"Failed to find VDI {desc}: {SheepError(result)}")
        return EXIT_FAILURE
    states = get_vdi_state(ctx)
    if states is None:
        err("Failed to get VDI state")
        return EXIT_SYSFAIL
    state = states.get(vid)
    if state is None:
        err(f"Failed to find VDI state {desc}")
        return EXIT_SYSFAIL
    if state.lock_state == LOCK_STATE_UNLOCKED:
        err(f"VDI {desc} is not locked")
        return EXIT_FAILURE
    if state.lock_state == LOCK_STATE_LOCKED:
        lock_type = LOCK_TYPE_NORMAL
    elif state.lock_state == LOCK_STATE_SHARED:
        lock_type = LOCK_TYPE_SHARED
    else:
        err(f"VDI {desc} unknown lock state ({state.lock_state})")
        return EXIT_SYSFAIL
    ctx.client().call(Request(Op.RELEASE_VDI, args=VdiArgs(base_vdi_id=vid, type=lock_type)))
    return EXIT_SUCCESS


LOCK_HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "list": lock_list, "unlock": lock_unlock,
}


def vdi_lock(ctx: Context, args: list[str]) -> int:
    return run_nested(ctx, args, LOCK_HANDLERS)
