"""Byte-range I/O on a VDI over object I/O: the client algorithm of objects.md §7.

The server only offers object operations; mapping VDI offsets to objects, reading holes as
zeros, and copy-on-write from ancestors' objects happen here, as in dog, QEMU and sheepfs.
Object requests are pipelined (a bounded window in flight) so that a large transfer costs
about one round trip per window, not per object; each request stays within one object.
"""
from __future__ import annotations

import struct
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..proto.constants import Flag, Op, Res
from ..proto.inode import STORE_POLICY_HYPER, Inode
from ..proto.oid import data_vid_offset, vid_to_data_oid, vid_to_vdi_oid
from .api import Client
from ..proto.header import Request
from .sync import Buffer, SheepError

Chunk = tuple[int, int, int, int]  # idx, offset in the object, offset in the buffer, length
DirectWrite = Callable[[int, int, bytes], bool]  # (oid, offset, data): written without the sheep?


@dataclass
class WritePass:
    """Outcome of `Volume.send_writes`: ``done`` (idx, entry before) per successful request,
    ``left`` the chunks not written (failed or never sent), ``error`` the first failure."""

    done: list[tuple[int, int]] = field(default_factory=list)
    left: list[Chunk] = field(default_factory=list)
    error: int = 0


class Volume:
    """One opened VDI.  ``inode`` must be the full inode (its index is used and kept current).

    ``flags`` are added to every data request (dog ``vdi write -w`` adds CMD_CACHE).
    Not thread-safe; one Volume per connection at a time.
    """

    def __init__(self, client: Client, inode: Inode, *, readonly: bool = False, flags: int = 0,
                 window: int = 16) -> None:
        if inode.header.store_policy == STORE_POLICY_HYPER:
            # The index of a hyper volume is a B-tree (objects.md §3), not data_vdi_id[].
            raise NotImplementedError("hyper volumes (B-tree index) are not supported")
        self.client = client
        self.inode = inode
        self.readonly = readonly
        self.flags = flags
        self.window = window

    @property
    def vid(self) -> int:
        return self.inode.header.vdi_id

    @property
    def size(self) -> int:
        return self.inode.header.vdi_size

    @property
    def object_size(self) -> int:
        return 1 << self.inode.header.block_size_shift

    def flush(self) -> None:
        """FLUSH_VDI, in CACHE mode only (DIRECT writes are durable when acknowledged);
        SUCCESS means every node fdatasynced the CACHE writes it holds.  INVALID_PARMS
        (sheep 1.0, whose writes are synchronous) switches to DIRECT, as QEMU does."""
        if not self.flags & Flag.CMD_CACHE:
            return
        req = Client.obj_request(Op.FLUSH_VDI, vid_to_vdi_oid(self.vid), 0, flags=self.flags,
                                 copies=self.inode.header.nr_copies)
        rsp, _ = self.client.conn.call(req)
        if rsp.result == Res.INVALID_PARMS:
            self.flags = self.flags & ~Flag.CMD_CACHE | Flag.CMD_DIRECT
        elif rsp.result != Res.SUCCESS:
            raise SheepError(rsp.result)

    # ------------------------------------------------------------------ mapping

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} is beyond the end of the VDI "
                             f"({self.size} bytes)")

    def chunks(self, offset: int, length: int) -> Iterator[Chunk]:
        """(idx, offset in object, offset in the caller's buffer, length) per object touched."""
        size = self.object_size
        pos, end = offset, offset + length
        while pos < end:
            idx, off = divmod(pos, size)
            n = min(end - pos, size - off)
            yield idx, off, pos - offset, n
            pos += n

    def _obj(self, opcode: int, oid: int, length: int, offset: int, cow_oid: int = 0):
        h = self.inode.header
        return Client.obj_request(opcode, oid, length, offset, flags=self.flags, copies=h.nr_copies,
                                  copy_policy=h.copy_policy, cow_oid=cow_oid)

    # ------------------------------------------------------------------ read

    def read(self, offset: int, length: int) -> bytearray:
        """Bytes of the VDI; holes are zeros without a request, objects may be an ancestor's."""
        self.check_range(offset, length)
        out = bytearray(length)
        view = memoryview(out)
        get_vid = self.inode.get_vid

        def requests():
            for idx, off, pos, n in self.chunks(offset, length):
                v = get_vid(idx)
                if v:
                    yield self._obj(Op.READ_OBJ, vid_to_data_oid(v, idx), n, off), None, \
                        view[pos:pos + n]

        with closing(self.client.conn.iter_many(requests(), window=self.window)) as replies:
            for rsp, _ in replies:
                if rsp.result != Res.SUCCESS:
                    raise SheepError(rsp.result)
        return out

    # ------------------------------------------------------------------ write

    def write_request(self, idx: int, off: int, n: int) -> Request:
        """The copy-on-write table of objects.md §7 for one object, written as ``self.vid``.

        Every writer (dog's Volume.write, QEMU-style VdiClient) decides plain write, create
        or COW create here, from the in-memory index entry.
        """
        me = self.vid
        v = self.inode.get_vid(idx)
        oid = vid_to_data_oid(me, idx)
        if v == me:
            return self._obj(Op.WRITE_OBJ, oid, n, off)
        if v == 0:
            return self._obj(Op.CREATE_AND_WRITE_OBJ, oid, n, off)
        return self._obj(Op.CREATE_AND_WRITE_OBJ, oid, n, off, cow_oid=vid_to_data_oid(v, idx))

    def send_writes(self, chunks: list[Chunk], data: memoryview) -> WritePass:
        """Pipeline the data requests of ``chunks`` (from `chunks`, ``data`` the caller's buffer).

        After the first error no further request is sent.  The in-memory index is not
        changed: the caller points entries at new objects once its index write succeeded.
        """
        sent: list[tuple[Chunk, int]] = []  # (chunk, entry before the write), in request order
        failed: list[int] = []

        def requests():
            for c in chunks:
                if failed:
                    return
                idx, off, pos, n = c
                sent.append((c, self.inode.get_vid(idx)))
                yield self.write_request(idx, off, n), data[pos:pos + n], None

        result = WritePass()
        with closing(self.client.conn.iter_many(requests(), window=self.window)) as replies:
            for i, (rsp, _) in enumerate(replies):
                c, old = sent[i]
                if rsp.result == Res.SUCCESS:
                    result.done.append((c[0], old))
                else:
                    failed.append(rsp.result)
                    result.left.append(c)
        result.left.extend(chunks[len(sent):])
        result.error = failed[0] if failed else 0
        return result

    def write(self, offset: int, data: Buffer) -> None:
        """Write through the COW table of objects.md §7, then update the index.

        Data requests are pipelined; afterwards the entries that changed are written to our
        own inode, one WRITE_OBJ per contiguous run of indexes this call wrote (entries in
        a run are either newly ours or were ours already, so nothing stale is written).  On
        a data error the remaining requests are not sent, successful creates still get
        their index entries, and the first error is raised.
        """
        if self.readonly:
            raise PermissionError("volume is read-only")
        view = memoryview(data).cast("B")
        self.check_range(offset, len(view))
        done = self.send_writes(list(self.chunks(offset, len(view))), view)
        self._update_index(done.done)
        if done.error:
            raise SheepError(done.error)

    def _update_index(self, done: list[tuple[int, int]], direct: DirectWrite | None = None) -> None:
        """Point changed entries at our objects; the in-memory index follows each success.
        ``direct`` (see `index_new_objects`) is offered each run first."""
        me = self.vid
        runs: list[tuple[int, int]] = []  # [start, stop) of entries to write
        start = stop = -1
        prev = -2
        for idx, old in sorted(done):
            if idx != prev + 1 and start >= 0:  # a gap ends the run
                runs.append((start, stop))
                start = -1
            if old != me:
                if start < 0:
                    start = idx
                stop = idx + 1
            prev = idx
        if start >= 0:
            runs.append((start, stop))
        if not runs:
            return
        h = self.inode.header
        inode_oid = vid_to_vdi_oid(me)
        items = []
        sent = []
        for a, b in runs:
            payload = struct.pack(f"<{b - a}I", *([me] * (b - a)))
            if direct is not None and direct(inode_oid, data_vid_offset(a), payload):
                for idx in range(a, b):
                    self.inode.set_vid(idx, me)
                continue
            req = Client.obj_request(Op.WRITE_OBJ, inode_oid, len(payload), data_vid_offset(a),
                                     flags=self.flags, copies=h.nr_copies)
            items.append((req, payload, None))
            sent.append((a, b))
        if not items:
            return
        error = 0
        with closing(self.client.conn.iter_many(items, window=self.window)) as replies:
            for (a, b), (rsp, _) in zip(sent, replies):
                if rsp.result != Res.SUCCESS:
                    error = error or rsp.result
                    continue
                for idx in range(a, b):
                    self.inode.set_vid(idx, me)
        if error:
            raise SheepError(error)

    def index_new_objects(self, idxs: list[int], direct: DirectWrite | None = None) -> None:
        """Point the entries ``idxs``, holes until now, at our own objects (created by a
        short-circuit client): `_update_index`'s runs and failures.  ``direct(inode_oid,
        offset, entries)`` may write a run into the inode's files itself (a short-circuit
        grant on the inode, sheep/proto/shortcircuit.py) and answers whether it did; the
        other runs go to the sheep."""
        self._update_index([(idx, 0) for idx in idxs], direct)

    def update_index_range(self, changes: dict[int, int]) -> None:
        """QEMU's index update (`sd_write_done`): ONE WRITE_OBJ on our inode covering
        ``min..max`` of the changed indexes, the other entries of the range rewritten with
        their in-memory values.  ``changes`` maps index to new vid; memory follows on success."""
        if not changes:
            return
        lo, hi = min(changes), max(changes) + 1
        entries = self.inode.data_vdi_id[lo:hi]
        for idx, vid in changes.items():
            entries[idx - lo] = vid
        payload = struct.pack(f"<{hi - lo}I", *entries)
        req = Client.obj_request(Op.WRITE_OBJ, vid_to_vdi_oid(self.vid), len(payload),
                                 data_vid_offset(lo), flags=self.flags,
                                 copies=self.inode.header.nr_copies)
        rsp, _ = self.client.call(req, payload)
        if rsp.result != Res.SUCCESS:
            raise SheepError(rsp.result)
        self.inode.data_vdi_id[lo:hi] = entries


__all__ = ["Chunk", "Volume", "WritePass"]
