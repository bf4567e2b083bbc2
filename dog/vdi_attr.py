"""`dog vdi setattr` and `dog vdi getattr` (dog/vdi.c; dog.md §4.11, objects.md §4)."""
from __future__ import annotations

import os
import sys

from sheep.client.sync import SheepError
from sheep.proto.constants import (
    FLAG_CMD_CREAT, SD_ATTR_OBJ_SIZE, SD_MAX_VDI_ATTR_KEY_LEN, SD_MAX_VDI_ATTR_VALUE_LEN,
    SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN, Flag, Op, Res,
)
from sheep.proto.header import Request, VdiArgs
from sheep.proto.oid import vid_to_attr_oid
from sheep.proto.structs import VdiAttr

from .common import (
    EXIT_EXISTS, EXIT_FAILURE, EXIT_MISSING, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context,
    c_text, err, out_bytes,
)


def attr_request(name: str, key: str, value: bytes, snapid: int = 0, tag: str = "", *,
                 create: bool = False, excl: bool = False, delete: bool = False
                 ) -> tuple[Request, bytes]:
    """`find_vdi_attr_oid`'s GET_VDI_ATTR: the full 66,320-byte attribute as payload."""
    attr = VdiAttr(name=c_text(name, SD_MAX_VDI_LEN), tag=c_text(tag, SD_MAX_VDI_TAG_LEN),
                   snap_id=snapid, value_len=len(value),
                   key=c_text(key, SD_MAX_VDI_ATTR_KEY_LEN), value=value)
    flags = Flag.CMD_WRITE
    if create:
        flags |= FLAG_CMD_CREAT
    if excl:
        flags |= Flag.CMD_EXCL
    if delete:
        flags |= Flag.CMD_DEL
    req = Request(Op.GET_VDI_ATTR, int(flags), SD_ATTR_OBJ_SIZE, args=VdiArgs(snapid=snapid))
    return req, attr.encode()


def _find_attr(ctx: Context, req: Request, payload: bytes) -> tuple[int, int]:
    """(result, attribute oid); a transport failure propagates (exit 2)."""
    rsp, _ = ctx.client().call(req, payload)
    if rsp.result != Res.SUCCESS:
        return rsp.result, 0
    return Res.SUCCESS, vid_to_attr_oid(rsp.args.vdi_id, rsp.args.attr_id)


def _read_stdin_value() -> bytes:
    """Up to 65,536 bytes of stdin (`read` until EOF or the buffer is full)."""
    stream = sys.stdin.buffer
    parts, got = [], 0
    while got < SD_MAX_VDI_ATTR_VALUE_LEN:
        chunk = stream.read(SD_MAX_VDI_ATTR_VALUE_LEN - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def vdi_setattr(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    if len(args) < 2:
        err("Please specify the attribute key")
        return EXIT_USAGE
    name, key = args[0], args[1]
    if len(args) > 2:
        value: bytes | None = os.fsencode(args[2])
    elif not o.delete:
        value = _read_stdin_value()
    else:
        value = None
    value = (value or b"").split(b"\0", 1)[0]  # value_len = strlen(value)
    req, payload = attr_request(name, key, value, o.snapshot_id, o.snapshot_tag,
                                create=not o.delete, excl=o.exclusive, delete=o.delete)
    result, _ = _find_attr(ctx, req, payload)
    if result == Res.SUCCESS:
        return EXIT_SUCCESS
    if result == Res.VDI_EXIST:
        err(f"The attribute '{key}' already exists")
        return EXIT_EXISTS
    if result == Res.NO_OBJ:
        err(f"Attribute '{key}' not found")
        return EXIT_MISSING
    if result == Res.NO_VDI:
        err("VDI not found")
        return EXIT_MISSING
    err(f"Failed to set attribute: {SheepError(result)}")
    return EXIT_FAILURE


def vdi_getattr(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    if len(args) < 2:
        err("Please specify the attribute key")
        return EXIT_USAGE
    key = args[1]
    req, payload = attr_request(args[0], key, b"", o.snapshot_id, o.snapshot_tag)
    result, oid = _find_attr(ctx, req, payload)
    if result == Res.NO_OBJ:
        err(f"Attribute '{key}' not found")
        return EXIT_MISSING
    if result == Res.NO_VDI:
        err("VDI not found")
        return EXIT_MISSING
    if result != Res.SUCCESS:
        err(f"Failed to find attribute oid: {SheepError(result)}")
        return EXIT_MISSING
    try:
        data = ctx.client().read_object(oid, 0, SD_ATTR_OBJ_SIZE, flags=Flag.CMD_DIRECT)
    except SheepError as e:
        err(f"Failed to read attribute oid: {e}")
        return EXIT_SYSFAIL
    attr = VdiAttr.decode(data)
    out_bytes(attr.value[:attr.value_len])
    return EXIT_SUCCESS
