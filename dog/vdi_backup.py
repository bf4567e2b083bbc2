"""`dog vdi backup` and `dog vdi restore` (dog/vdi.c; dog.md §4.14).

The stream: a header ``{u32 version = 1, u32 magic = 0x11921192}``, then records
``{u32 idx, u32 offset, u32 length, u32 reserved}`` each followed by ``length`` bytes of
object ``idx`` starting at ``offset``, then an end record with ``idx = 0xFFFFFFFF``.
Encoding and decoding are pure functions; the commands add the object I/O.
"""
from __future__ import annotations

import struct
import sys
from typing import BinaryIO, Iterator

from sheep.proto.constants import SD_INODE_HEADER_SIZE, Flag, Op
from sheep.proto.inode import Inode, index_offset
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context, dog_read_object,
    dog_write_object, err, obj_req, out, out_bytes, read_vdi_obj,
)
from .vdi_family import do_vdi_create, do_vdi_delete, like

VDI_BACKUP_FORMAT_VERSION = 1
VDI_BACKUP_MAGIC = 0x11921192
BACKUP_HEADER = struct.Struct("<II")
BACKUP_RECORD = struct.Struct("<IIII")
BACKUP_END_IDX = 0xFFFFFFFF
SECTOR_SIZE = 512


class BackupError(Exception):
    """A corrupted or truncated backup stream; ``str()`` is dog's message."""

    def __init__(self, message: str, code: int = EXIT_SYSFAIL) -> None:
        super().__init__(message)
        self.code = code


def backup_header() -> bytes:
    return BACKUP_HEADER.pack(VDI_BACKUP_FORMAT_VERSION, VDI_BACKUP_MAGIC)


def backup_end() -> bytes:
    return BACKUP_RECORD.pack(BACKUP_END_IDX, 0, 0, 0)


def compact(to_data: bytes | bytearray | memoryview, from_data: bytes | bytearray | memoryview
            ) -> tuple[int, int]:
    """(offset, length) of ``to_data`` once leading and trailing 512-byte sectors equal to
    ``from_data`` are trimmed (`compact_obj_backup`)."""
    a, b = memoryview(to_data), memoryview(from_data)
    offset, length = 0, len(a)
    while length > 0 and a[offset:offset + SECTOR_SIZE] == b[offset:offset + SECTOR_SIZE]:
        offset += SECTOR_SIZE
        length -= SECTOR_SIZE
    end = len(a)
    while length > 0 and a[end - SECTOR_SIZE:end] == b[end - SECTOR_SIZE:end]:
        end -= SECTOR_SIZE
        length -= SECTOR_SIZE
    return offset, max(length, 0)


def backup_record(idx: int, to_data: bytes | bytearray | memoryview,
                  from_data: bytes | bytearray | memoryview) -> bytes:
    """The record of object ``idx`` (header + data), or b"" when nothing differs."""
    offset, length = compact(to_data, from_data)
    if length == 0:
        return b""
    return BACKUP_RECORD.pack(idx, offset, length, 0) + bytes(to_data[offset:offset + length])


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_backup_header(stream: BinaryIO) -> None:
    """Check the stream's header; BackupError if it is not a version-1 backup."""
    head = _read_exact(stream, BACKUP_HEADER.size)
    if len(head) != BACKUP_HEADER.size:
        err("failed to read backup header, Success")
    version, magic = BACKUP_HEADER.unpack(head.ljust(BACKUP_HEADER.size, b"\0"))
    if version != VDI_BACKUP_FORMAT_VERSION or magic != VDI_BACKUP_MAGIC:
        raise BackupError("The backup file is corrupted")


def read_backup_records(stream: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(idx, offset, data) of every record up to the end marker; BackupError if the stream
    ends first."""
    while True:
        rec = _read_exact(stream, BACKUP_RECORD.size)
        if len(rec) != BACKUP_RECORD.size:
            raise BackupError("failed to read backup data")
        idx, offset, length, _ = BACKUP_RECORD.unpack(rec)
        if idx == BACKUP_END_IDX:
            return
        data = _read_exact(stream, length)
        if len(data) != length:
            raise BackupError("failed to read backup data")
        yield idx, offset, data


# ---------------------------------------------------------------- backup


def vdi_backup(ctx: Context, args: list[str]) -> int:
    o, name = ctx.opts, args[0]
    if (not o.snapshot_id and not o.snapshot_tag) or \
            (not o.from_snapshot_id and not o.from_snapshot_tag):
        err("Please specify snapshots with '-F' and '-s' options")
        return EXIT_USAGE
    found = read_vdi_obj(ctx, name, o.from_snapshot_id, o.from_snapshot_tag)
    if found is None:
        return EXIT_FAILURE
    from_inode = found[1]
    found = read_vdi_obj(ctx, name, o.snapshot_id, o.snapshot_tag)
    if found is None:
        return EXIT_FAILURE
    to_inode = found[1]
    objsize = from_inode.header.object_size
    zeros = bytes(objsize)
    out_bytes(backup_header())
    for idx in range(to_inode.header.count_data_objs):
        from_vid, to_vid = from_inode.get_vid(idx), to_inode.get_vid(idx)
        if not from_vid and not to_vid:
            continue
        to_data = _object(ctx, to_vid, idx, objsize) if to_vid else zeros
        from_data = _object(ctx, from_vid, idx, objsize) if from_vid else zeros
        if to_data is None or from_data is None:
            return EXIT_FAILURE
        out_bytes(backup_record(idx, to_data, from_data))
    out_bytes(backup_end())
    sys.stdout.flush()
    return EXIT_SUCCESS


def _object(ctx: Context, vid: int, idx: int, objsize: int) -> bytes | bytearray | None:
    data = dog_read_object(ctx, vid_to_data_oid(vid, idx), objsize)
    if data is None:
        err(f"Failed to read object {vid:x}, {idx}")
        return None
    return data


# ---------------------------------------------------------------- restore


def _restore_obj(ctx: Context, vid: int, parent: Inode, idx: int, offset: int,
                 data: bytes) -> bool:
    """A COW create of ``vid``'s object from the snapshot's, then its index update."""
    h = parent.header
    owner = parent.get_vid(idx)
    req = obj_req(Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, idx), len(data), offset, h,
                  Flag.CMD_DIRECT, cow_oid=vid_to_data_oid(owner, idx) if owner else 0)
    if not dog_write_object(ctx, req, data):
        return False
    req = obj_req(Op.WRITE_OBJ, vid_to_vdi_oid(vid), 4, index_offset(idx), h, Flag.CMD_DIRECT)
    return dog_write_object(ctx, req, vid.to_bytes(4, "little"))


def do_restore(ctx: Context, name: str, snapid: int, tag: str, stream: BinaryIO) -> int:
    """`do_restore`: a new working VDI from the snapshot, with the records applied.

    If anything fails once that VDI exists, it is deleted again (the original only does
    so when a write fails), so no half-restored VDI is left behind.
    """
    found = read_vdi_obj(ctx, name, snapid, tag)
    if found is None:
        return EXIT_FAILURE
    inode = found[1]
    vid = do_vdi_create(ctx, name, inode.header.vdi_size, base_vid=inode.header.vdi_id,
                        **like(inode.header))
    if vid is None:
        err("Failed to read VDI")
        return EXIT_FAILURE
    try:
        for idx, offset, data in read_backup_records(stream):
            if not _restore_obj(ctx, vid, inode, idx, offset, data):
                err("failed to restore backup")
                do_vdi_delete(ctx, name, 0, "")
                return EXIT_FAILURE
    except BackupError as e:
        err(str(e))
        do_vdi_delete(ctx, name, 0, "")
        return e.code
    return EXIT_SUCCESS


def vdi_restore(ctx: Context, args: list[str]) -> int:
    """Delete the working VDI, restore the backup onto the snapshot as a new VDI, then
    recreate a working VDI on top of the old one's parent (NEW_VDI snapid 1: the restored
    VDI becomes a snapshot).

    Unlike the original, the stream's header is checked before anything is deleted, and a
    failed restore still gets its working VDI back (cloned from the old parent).
    """
    o, name = ctx.opts, args[0]
    if not o.snapshot_id and not o.snapshot_tag:
        err("We can restore a backup file only to snapshots")
        err("Please specify the '-s' option")
        return EXIT_USAGE
    if read_vdi_obj(ctx, name, o.snapshot_id, o.snapshot_tag, header_only=True) is None:
        err(f"Snapshot ID {o.snapshot_id} or tag {o.snapshot_tag} doesn't exist")
        return EXIT_FAILURE
    found = read_vdi_obj(ctx, name, header_only=True)
    if found is None:
        return EXIT_FAILURE
    current = found[1].header
    if dog_read_object(ctx, vid_to_vdi_oid(current.parent_vdi_id), SD_INODE_HEADER_SIZE) is None:
        out("error\n")
        return EXIT_FAILURE
    if sys.stdin.isatty():
        err("stdin must be pipe")
        return EXIT_USAGE
    stream = sys.stdin.buffer
    try:
        read_backup_header(stream)
    except BackupError as e:
        err(str(e))
        return e.code
    ret = do_vdi_delete(ctx, name, 0, "")
    if ret != EXIT_SUCCESS:
        err("Failed to delete the current state")
        return ret
    ret = do_restore(ctx, name, o.snapshot_id, o.snapshot_tag, stream)
    # success: the restored VDI becomes a snapshot (rebase); failure: no working VDI is
    # left, so the old parent is cloned under the name again
    if do_vdi_create(ctx, name, current.vdi_size, base_vid=current.parent_vdi_id,
                     snapshot=ret == EXIT_SUCCESS, **like(current)) is None:
        err("failed to resume the current vdi")
        return EXIT_FAILURE
    return ret
