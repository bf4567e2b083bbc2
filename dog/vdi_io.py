"""`dog vdi read` and `dog vdi write` (dog/vdi.c; dog.md §4.13) over sheep.client.volume."""
from __future__ import annotations

import sys

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.client.volume import Volume
from sheep.proto.constants import Flag

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, Context, err, out_bytes, parse_size_arg, read_vdi_obj,
)

IO_BATCH_OBJECTS = 16  # objects per Volume call: bounded memory, pipelined object I/O


def _offset_len(args: list[str]) -> tuple[int, int | None] | None:
    """``[<offset> [<len>]]`` through option_parse_size; None after a size error."""
    offset, length = 0, None
    if len(args) > 1:
        offset = parse_size_arg(args[1])
        if offset is None:
            return None
        if len(args) > 2:
            length = parse_size_arg(args[2])
            if length is None:
                return None
    return offset, length


def vdi_read(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    parsed = _offset_len(args)
    if parsed is None:
        return EXIT_USAGE
    offset, length = parsed
    found = read_vdi_obj(ctx, args[0], o.snapshot_id, o.snapshot_tag)
    if found is None:
        return EXIT_FAILURE
    _, inode = found
    size = inode.header.vdi_size
    if size < offset:
        err("Read offset is beyond the end of the VDI")
        return EXIT_FAILURE
    total = size - offset if length is None else min(length, size - offset)
    try:
        vol = Volume(ctx.client(), inode, readonly=True)
    except NotImplementedError as e:
        err(f"Failed to read VDI: {e}")
        return EXIT_FAILURE
    step = IO_BATCH_OBJECTS * vol.object_size
    pos, end = offset, offset + total
    while pos < end:
        n = min(end - pos, step - pos % vol.object_size)
        try:
            data = vol.read(pos, n)
        except (SheepError, SheepConnectionError):
            err("Failed to read VDI")
            return EXIT_FAILURE
        out_bytes(data)
        pos += n
    sys.stdout.flush()
    return EXIT_SUCCESS


def _read_stdin(n: int) -> bytes:
    """``xread``: up to ``n`` bytes, short only at EOF."""
    stream = sys.stdin.buffer
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def vdi_write(ctx: Context, args: list[str]) -> int:
    """stdin is consumed one object chunk at a time; a short read zero-pads its chunk and
    ends the write (so EOF on an object boundary still writes one zero chunk, as dog does)."""
    parsed = _offset_len(args)
    if parsed is None:
        return EXIT_USAGE
    offset, length = parsed
    found = read_vdi_obj(ctx, args[0])
    if found is None:
        return EXIT_FAILURE
    _, inode = found
    size = inode.header.vdi_size
    if size < offset:
        err("Write offset is beyond the end of the VDI")
        return EXIT_FAILURE
    total = size - offset if length is None else min(length, size - offset)
    try:
        vol = Volume(ctx.client(), inode, flags=Flag.CMD_CACHE if ctx.opts.writeback else 0)
    except NotImplementedError as e:
        err(f"Failed to write VDI: {e}")
        return EXIT_FAILURE
    objsize = vol.object_size
    pos, done = offset, 0
    while done < total:
        chunks = []  # object-bounded chunk lengths of this batch
        p, left = pos, total - done
        while left and len(chunks) < IO_BATCH_OBJECTS:
            n = min(left, objsize - p % objsize)
            chunks.append(n)
            p += n
            left -= n
        data = _read_stdin(sum(chunks))
        buf, eof = bytearray(), False
        for n in chunks:
            piece = data[len(buf):len(buf) + n]
            buf += piece
            if len(piece) < n:
                buf += bytes(n - len(piece))
                eof = True
                break
        try:
            vol.write(pos, buf)
        except (SheepError, SheepConnectionError):
            err("Failed to write VDI")
            return EXIT_FAILURE
        pos += len(buf)
        done += len(buf)
        if eof:
            break
    try:
        vol.flush()  # -w: CMD_CACHE writes are durable once flushed
    except (SheepError, SheepConnectionError):
        err("Failed to write VDI")
        return EXIT_FAILURE
    return EXIT_SUCCESS


