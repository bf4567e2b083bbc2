"""A VDI opened the way QEMU's sheepdog driver opens it (qemu-driver.md §4-§6).

`VdiClient.open` takes the lock, reads the 4,198,968-byte inode once and keeps it in
memory; reads, writes, discards and flushes are pipelined on one I/O connection, and the
copy-on-write decisions are `Volume`'s (objects.md §7).  What QEMU does on short-lived
sockets (lookups, NEW_VDI/DEL_VDI, header rewrites, vmstate) runs on a fresh connection
per operation.  The lock is taken with FLAG_CMD_CONN_LOCK on a dedicated connection kept
open for the life of the handle, so a client that dies loses its lock.

A handle is not thread-safe; use one per thread (each owns its sockets).
"""
from __future__ import annotations

from contextlib import closing, contextmanager
from dataclasses import replace
from itertools import groupby
from typing import Iterator

from ..proto.constants import (
    FLAG_CMD_CONN_LOCK, SD_INODE_DATA_INDEX, SD_INODE_HEADER_SIZE, SD_MAX_VDI_LEN, Flag, Op, Res,
    strerror,
)
from ..proto.header import Request, VdiArgs
from ..proto.inode import Inode, InodeHeader
from ..proto.oid import data_vid_offset, vid_to_vdi_oid, vid_to_vmstate_oid
from ..proto.structs import pad
from .api import Client
from .sync import Buffer, SheepConnectionError, SheepError
from .volume import Volume

MAX_RETARGETS = 8  # READONLY retries of one write (each follows a snapshot taken behind us)
_ZERO_ENTRY = bytes(4)


class VdiClient:
    """One opened VDI (working VDI, or a snapshot selected by ``snapid``/``tag``).

    Use `open`.  Writes to a snapshot handle first create a branch, as QEMU does.  Writes
    beyond the end raise ValueError (QEMU would grow the VDI; call `resize`).
    """

    def __init__(self, name: str, *, host: str = "127.0.0.1", port: int = 7000,
                 unix_path: str | None = None, readonly: bool = False,
                 timeout: float | None = None) -> None:
        self.name = name
        self.readonly = readonly
        self._addr = dict(host=host, port=port, unix_path=unix_path, timeout=timeout)
        self._io: Client | None = None
        self._lock: Client | None = None
        self._vol: Volume | None = None
        self._is_snapshot = False

    @classmethod
    def open(cls, name: str, *, snapid: int = 0, tag: str = "", host: str = "127.0.0.1",
             port: int = 7000, unix_path: str | None = None, readonly: bool = False,
             lock: bool = True, direct: bool = False, timeout: float | None = None,
             window: int = 16) -> "VdiClient":
        """`sd_open`: LOCK_VDI (or GET_VDI_INFO with ``lock=False``), then the inode read.

        ``direct`` sends CMD_DIRECT instead of CMD_CACHE (QEMU ``cache=none``).  A lookup
        failure raises SheepError with QEMU's text (``cannot get vdi info, ...``).
        """
        self = cls(name, host=host, port=port, unix_path=unix_path, readonly=readonly,
                   timeout=timeout)
        try:
            self._io = Client(**self._addr)
            if lock:
                self._lock = Client(**self._addr)
                vid = self._find(self._lock, Op.LOCK_VDI, snapid, tag, FLAG_CMD_CONN_LOCK)
            else:
                with self._control() as c:
                    vid = self._find(c, Op.GET_VDI_INFO, snapid, tag)
            flags = Flag.CMD_DIRECT if direct else Flag.CMD_CACHE
            raw = self._io.read_object(vid_to_vdi_oid(vid), 0, Inode.QEMU_SIZE, flags=flags)
            self._vol = Volume(self._io, Inode.decode(raw), readonly=readonly, flags=flags,
                               window=window)
            self._is_snapshot = bool(snapid or tag)
        except BaseException:
            self._disconnect()
            raise
        return self

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _control(self) -> Iterator[Client]:
        """A fresh connection for one synchronous operation, as QEMU's `do_req`."""
        with Client(**self._addr) as c:
            yield c

    def _find(self, c: Client, opcode: int, snapid: int, tag: str, flags: int = 0) -> int:
        """`find_vdi_name`: name (+ tag or snapid) to vid."""
        try:
            if opcode == Op.LOCK_VDI:
                rsp = c.lock_vdi(self.name, tag, snapid, flags=flags)
            else:
                rsp = c.get_vdi_info(self.name, tag, snapid)
        except SheepError as e:
            raise SheepError(e.result, f"cannot get vdi info, {strerror(e.result)}, "
                                       f"{self.name} {snapid} {tag}") from None
        return rsp.vdi_id

    @property
    def _volume(self) -> Volume:
        if self._vol is None or self._io is None or self._io.conn.closed:
            raise ValueError("I/O operation on a closed VdiClient")
        return self._vol

    def _check_writable(self) -> None:
        if self.readonly:
            raise PermissionError(f"{self.name} is opened read-only")

    def _read_header(self, c: Client, vid: int) -> InodeHeader:
        data = c.read_object(vid_to_vdi_oid(vid), 0, SD_INODE_HEADER_SIZE,
                             copies=self.inode.header.nr_copies, flags=self.flags)
        return InodeHeader.decode(data)

    def _write_header(self, c: Client, hdr: InodeHeader) -> None:
        c.write_object(vid_to_vdi_oid(hdr.vdi_id), hdr.encode(), 0, copies=hdr.nr_copies,
                       flags=self.flags)

    # ------------------------------------------------------------------ properties

    @property
    def inode(self) -> Inode:
        """The in-memory inode (header + index; gref is not read, as in QEMU)."""
        return self._volume.inode

    @property
    def vid(self) -> int:
        return self.inode.header.vdi_id

    @property
    def size(self) -> int:
        return self.inode.header.vdi_size

    @property
    def object_size(self) -> int:
        return self.inode.header.object_size

    @property
    def is_snapshot(self) -> bool:
        """Opened by snapid/tag and not yet branched by a write."""
        return self._is_snapshot

    @property
    def flags(self) -> int:
        """CMD_CACHE or CMD_DIRECT, added to every request."""
        return self._volume.flags

    @property
    def closed(self) -> bool:
        return self._vol is None

    # ------------------------------------------------------------------ I/O

    def read(self, offset: int, length: int) -> bytearray:
        """Bytes of the VDI; unallocated objects read as zeros without a request."""
        return self._volume.read(offset, length)

    def write(self, offset: int, data: Buffer) -> None:
        """Create / COW / write each object, then ONE index update for ``min..max`` of the
        changed entries (`sd_write_done`).  READONLY (a snapshot was taken behind us) makes
        the handle follow the working VDI and resend what failed (§5.12)."""
        self._check_writable()
        vol = self._volume
        view = memoryview(data).cast("B")
        vol.check_range(offset, len(view))
        if not len(view):
            return
        if self._is_snapshot:
            self._create_branch()
        chunks = list(vol.chunks(offset, len(view)))
        changes: dict[int, int] = {}
        error = 0
        try:
            for _ in range(MAX_RETARGETS + 1):
                me = self.vid
                result = vol.send_writes(chunks, view)
                changes.update((idx, me) for idx, old in result.done if old != me)
                chunks, error = result.left, result.error
                if error != Res.READONLY or not self._retarget():
                    break
        finally:
            if changes and not self._io.conn.closed:
                vol.update_index_range(changes)
        if error:
            raise SheepError(error)

    def _retarget(self) -> bool:
        """`reload_inode(s, 0, "")`: follow the name to its working VDI, copying the new
        header; the index stays as it is in memory.  False if the vid did not change."""
        with self._control() as c:
            vid = self._find(c, Op.GET_VDI_INFO, 0, "")
            if vid == self.vid:
                return False
            self.inode.header = self._read_header(c, vid)
        return True

    def discard(self, offset: int, length: int) -> int:
        """Zero the index entry of each allocated object wholly inside the range (4-byte
        WRITE_OBJ each, pipelined); the server reclaims the object.  Returns the count."""
        self._check_writable()
        vol = self._volume
        vol.check_range(offset, length)
        size = self.object_size
        first, stop = -(-offset // size), (offset + length) // size
        if first < stop and self._is_snapshot:
            self._create_branch()
        idxs = [i for i in range(first, stop) if self.inode.get_vid(i)]
        oid, copies = vid_to_vdi_oid(self.vid), self.inode.header.nr_copies
        items = ((Client.obj_request(Op.WRITE_OBJ, oid, 4, data_vid_offset(i), flags=self.flags,
                                     copies=copies), _ZERO_ENTRY, None) for i in idxs)
        error = 0
        with closing(self._io.conn.iter_many(items, window=vol.window)) as replies:
            for idx, (rsp, _) in zip(idxs, replies):
                if rsp.result == Res.SUCCESS:
                    self.inode.set_vid(idx, 0)
                else:
                    error = error or rsp.result
        if error:
            raise SheepError(error)
        return len(idxs)

    def flush(self) -> None:
        """`Volume.flush` on the I/O connection (QEMU's ``sd_co_flush_to_disk``)."""
        self._volume.flush()

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, allocated) runs over the VDI, from the in-memory index."""
        size, objsize = self.size, self.object_size
        count = min(-(-size // objsize), SD_INODE_DATA_INDEX)
        pos = 0
        for allocated, run in groupby(self.inode.data_vdi_id[:count], key=bool):
            end = min(pos + sum(1 for _ in run) * objsize, size)
            yield pos, end - pos, allocated
            pos = end

    # ------------------------------------------------------------------ VDI operations

    def resize(self, new_size: int) -> None:
        """Grow (`sd_co_truncate`): rewrite the 4664-byte header with the new size."""
        self._check_writable()
        h = self.inode.header
        if self._is_snapshot:
            raise PermissionError(f"cannot resize snapshot {self.name} ({h.vdi_id:x})")
        if new_size < h.vdi_size:
            raise ValueError("shrinking is not supported")
        if new_size > h.object_size * SD_INODE_DATA_INDEX:
            raise ValueError("too big image size")
        hdr = replace(h, vdi_size=new_size)
        with self._control() as c:
            self._write_header(c, hdr)
        self.inode.header = hdr

    def snapshot(self, tag: str, *, vm_state_size: int = 0, vm_clock_nsec: int = 0) -> int:
        """`sd_snapshot_create` (§5.8): tag the working inode, NEW_VDI(snapid=1, base=cur),
        then adopt the new working VDI's header (the index stays).  Returns the snapshot's
        vid.  The server moves our lock to the new working VDI."""
        self._check_writable()
        h = self.inode.header
        if self._is_snapshot:
            raise PermissionError(f"You can't create a snapshot of a snapshot VDI, "
                                  f"{self.name} ({h.vdi_id:x}).")
        tagged = replace(h, tag=tag, vm_state_size=vm_state_size, vm_clock_nsec=vm_clock_nsec)
        with self._control() as c:
            self._write_header(c, tagged)
        try:
            with self._control() as c:
                new = c.new_vdi(self.name, h.vdi_size, base_vid=h.vdi_id, snapid=1,
                                copies=h.nr_copies, copy_policy=h.copy_policy,
                                block_size_shift=h.block_size_shift)
        except SheepError:
            with self._control() as c:
                self._write_header(c, h)  # still the working VDI: drop the tag again
            raise
        with self._control() as c:
            self.inode.header = self._read_header(c, new.vdi_id)
        return h.vdi_id

    def goto(self, snapid: int = 0, tag: str = "") -> int:
        """`sd_snapshot_goto` (§5.10, qemu-img snapshot -a / loadvm): the working VDI is
        deleted and a branch of the snapshot replaces it.  Returns the new working vid; on
        failure the handle is left as it was."""
        self._check_writable()
        if not snapid and not tag:
            raise ValueError("a snapshot id or tag is needed")
        saved, saved_snap = self.inode, self._is_snapshot
        try:
            with self._control() as c:
                vid = self._find(c, Op.GET_VDI_INFO, snapid, tag)
                hdr = self._read_header(c, vid)
            if hdr.vdi_id != saved.header.vdi_id:
                self._volume.inode = Inode(hdr, saved.data_vdi_id, saved.gref)
            self._create_branch()
        except BaseException:
            self._volume.inode, self._is_snapshot = saved, saved_snap
            raise
        return self.vid

    def _create_branch(self) -> None:
        """`sd_create_branch`: DEL_VDI of the working VDI (name only, its index NOT zeroed),
        NEW_VDI(snapid=0, base=snapshot) (snapid=1 if the delete failed), full inode read."""
        h = self.inode.header
        name = pad(self.name, SD_MAX_VDI_LEN)
        with self._control() as c:
            req = Request(Op.DEL_VDI, Flag.CMD_WRITE, len(name), args=VdiArgs(base_vdi_id=h.vdi_id))
            rsp, _ = c.call(req, name)
        deleted = rsp.result in (Res.SUCCESS, Res.NO_VDI)
        with self._control() as c:
            new = c.new_vdi(self.name, h.vdi_size, base_vid=h.vdi_id, snapid=0 if deleted else 1,
                            copies=h.nr_copies, copy_policy=h.copy_policy,
                            block_size_shift=h.block_size_shift)
        with self._control() as c:
            raw = c.read_object(vid_to_vdi_oid(new.vdi_id), 0, Inode.QEMU_SIZE,
                                copies=h.nr_copies, flags=self.flags)
        self._volume.inode = Inode.decode(raw)
        self._is_snapshot = False

    # ------------------------------------------------------------------ VM state

    def save_vmstate(self, pos: int, data: Buffer) -> None:
        """Into the current vid's vmstate objects (§5.13): CREATE_AND_WRITE for a piece
        starting an object, WRITE_OBJ otherwise; one fresh connection per call."""
        self._check_writable()
        view = memoryview(data).cast("B")
        h = self.inode.header
        with self._control() as c:
            for idx, off, at, n in self._volume.chunks(pos, len(view)):
                oid = vid_to_vmstate_oid(h.vdi_id, idx)
                if off == 0:
                    c.create_and_write_object(oid, view[at:at + n], off, copies=h.nr_copies,
                                              flags=self.flags)
                else:
                    c.write_object(oid, view[at:at + n], off, copies=h.nr_copies, flags=self.flags)

    def load_vmstate(self, pos: int, length: int) -> bytearray:
        """From the parent's vmstate objects: after `goto`, the snapshot's VM state."""
        h = self.inode.header
        out = bytearray(length)
        view = memoryview(out)
        with self._control() as c:
            for idx, off, at, n in self._volume.chunks(pos, length):
                c.read_object(vid_to_vmstate_oid(h.parent_vdi_id, idx), off, n,
                              copies=h.nr_copies, flags=self.flags, into=view[at:at + n])
        return out

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """`sd_close`: RELEASE_VDI of the vid current now (QEMU's name payload), sent on the
        lock connection so the server also forgets it there; then both sockets close."""
        if self._vol is None:
            return
        vid = self._vol.inode.header.vdi_id
        try:
            if self._lock is not None:
                try:
                    self._lock.release_vdi(vid, name=self.name)
                except SheepError as e:
                    if e.result != Res.VDI_NOT_LOCKED:
                        raise
                except SheepConnectionError:
                    pass  # the lock went with the connection
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        self._vol = None
        for c in (self._io, self._lock):
            if c is not None:
                c.close()
        self._io = self._lock = None

    def __enter__(self) -> "VdiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._vol is None:
            return f"<VdiClient {self.name!r} closed>"
        return f"<VdiClient {self.name!r} vid={self.vid:x} size={self.size}>"


__all__ = ["VdiClient", "MAX_RETARGETS"]
