"""One exported VDI, shared by every NBD connection and worker thread of an nbdkit process.

nbdkit runs the plugin with THREAD_MODEL_PARALLEL: each NBD connection has its own pool
of worker threads, and requests arrive on them concurrently.  The design:

* `Export` opens the VDI once per process with `VdiClient.open` (QEMU's `sd_open`: the
  lock on its own connection, the inode read once) and keeps the in-memory inode that
  every thread uses.  One index for the whole process is what makes ``can_multi_conn``
  true: a write acknowledged on one NBD connection is visible to reads on every other,
  and FLUSH_VDI (per VDI on the sheep side) covers them all.
* `Worker` is a `VdiClient` that shares that inode but owns its I/O connection: one
  cluster connection per worker thread (`Session` keys them by thread id), so requests
  travel in parallel while each thread's requests are pipelined by the client.  With
  ``route=true`` (the default) that connection is a `RoutedConnection`: object requests
  go straight to a sheep holding the object (routing.py), everything else to the
  configured sheep.
* `ObjectLocks` orders requests the way QEMU's driver orders overlapping AIO requests:
  an object whose index entry is about to change (create, copy-on-write, trim, zero) is
  held exclusively; reads and writes into objects the VDI already owns only share it.
  When a snapshot is taken behind our back, writes answer READONLY: the handle follows
  the name to the new working VDI (`VdiClient._retarget`) with every request drained, and
  the failed writes are sent again, now copying on write (objects.md §7, qemu §5.12).
* Sequential streams (nbdcopy, qemu-img convert, a guest's dd) come in pieces of an
  object, each a request to the sheep.  `ReadAhead` reads such an object whole once and
  serves the other pieces from it; `WriteGather` sends contiguous writes that are in
  flight together as one write per object.  Both keep QEMU's semantics: a piece is
  acknowledged only once its data is written, and any change of an object drops the
  whole-object copy before and after it.  (streams.py)
* With ``shortcircuit=true`` (the default) and the sheep on this host, object data never
  travels through a sheep: `ShortCircuit` (sheep/client/shortcircuit.py) reads and writes
  the object files under the sheep's grants, with the copies of nbdkit's own file
  plugin.  Read-ahead and gathering have no requests to save there and are skipped; a
  write into a hole creates the object (here, under directory grants, or by its owners)
  and is acknowledged once `IndexCommits` has written the object's index entry, with
  those of the other objects created meanwhile (`_write_direct`): into the inode's
  files under an inode grant, or through the sheep.  What a grant does not
  cover (copy on write, a sheep elsewhere, a membership change) goes through the sheep.

Errors become errno values with `errno_of`; sockets have a timeout, so a silent sheep
turns into EIO, never a hung NBD client.
"""
from __future__ import annotations

import errno
import threading
from contextlib import closing
from functools import partial
from itertools import groupby
from typing import Callable, Iterator

from sheep.client.api import Client
from sheep.client.shortcircuit import ShortCircuit
from sheep.client.sync import Connection, SheepConnectionError, SheepError
from sheep.client.vdi import MAX_RETARGETS, VdiClient
from sheep.client.volume import Volume
from sheep.proto.constants import SD_INODE_DATA_INDEX, Op, Res
from sheep.proto.oid import vid_to_data_oid

from .config import ExportConfig
from .routing import RoutedConnection, Router
from .streams import IndexCommits, ObjectLocks, ReadAhead, WriteGather, _joined

WINDOW = 16  # object requests in flight per worker connection

_ERRNO = {
    Res.READONLY: errno.EROFS,
    Res.NO_SPACE: errno.ENOSPC,
    Res.FULL_VDI: errno.ENOSPC,
    Res.NO_MEM: errno.ENOMEM,
    Res.INVALID_PARMS: errno.EINVAL,
    Res.NO_SUPPORT: errno.EOPNOTSUPP,
    Res.VDI_LOCKED: errno.EBUSY,
    Res.NO_VDI: errno.ENOENT,
    Res.NO_TAG: errno.ENOENT,
    Res.SHUTDOWN: errno.ESHUTDOWN,
}


def errno_of(exc: BaseException) -> int:
    """The errno an NBD client sees for ``exc`` (nbdkit maps it onto NBD's error set)."""
    if isinstance(exc, SheepError):
        return _ERRNO.get(exc.result, errno.EIO)
    if isinstance(exc, SheepConnectionError):
        return errno.EIO
    if isinstance(exc, PermissionError):
        return errno.EPERM
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, ValueError):
        return errno.EINVAL
    if isinstance(exc, MemoryError):
        return errno.ENOMEM
    return errno.EIO


class FastZeroUnsupported(OSError):
    """A FAST_ZERO request that would need data writes: the client falls back (ENOTSUP)."""

    def __init__(self) -> None:
        super().__init__(errno.EOPNOTSUPP, "zeroing this range needs data writes")


# ---------------------------------------------------------------------------- worker


class Worker(VdiClient):
    """A VdiClient over its own I/O connection that shares the export's in-memory inode.

    It holds no lock (the export's master handle does) and never follows a snapshot by
    itself: a write that answers READONLY raises, and the export retargets with every
    request drained (`follow`).  `readinto` receives object data straight into nbdkit's
    buffer.
    """

    @classmethod
    def attach(cls, export: "Export") -> "Worker":
        m = export.master
        self = cls(m.name, readonly=m.readonly, **export.cfg.connect_args)
        self._conn = None
        try:
            home = Connection(**export.cfg.connect_args)
            self._conn = home if export.router is None else RoutedConnection(home, export.router)
            self._io = Client(self._conn)
            self._vol = Volume(self._io, m.inode, readonly=m.readonly, flags=export.flags,
                               window=export.window)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def routes(self) -> RoutedConnection:
        assert isinstance(self._conn, RoutedConnection)
        return self._conn

    def index_new_objects(self, idxs: list[int], sc: ShortCircuit | None = None) -> None:
        """Point the entries ``idxs`` (holes until now) at our own objects: each run of
        adjacent entries written into the inode's files under a short-circuit grant when
        ``sc`` has one, else one WRITE_OBJ per run, pipelined; the shared inode follows
        each success."""
        direct = None if sc is None else partial(self._write_entries, sc)
        self._volume.index_new_objects(idxs, direct)

    def _write_entries(self, sc: ShortCircuit, oid: int, offset: int, entries: bytes) -> bool:
        return sc.write(self.routes, oid, self.inode.header.nr_copies, offset, memoryview(entries))

    @property
    def broken(self) -> bool:
        return self._io is None or self._io.conn.closed

    def _retarget(self) -> bool:
        return False  # see Export._follow

    def follow(self) -> bool:
        """`VdiClient._retarget`: the working VDI's header into the shared inode."""
        return super()._retarget()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._disconnect()

    def readinto(self, buf: memoryview, offset: int, zeros: memoryview) -> None:
        """`VdiClient.read` into ``buf``: holes are zero-filled, object data is received
        in place (no intermediate buffer), requests pipelined ``window`` deep."""
        vol = self._volume
        n = len(buf)
        vol.check_range(offset, n)
        inode = vol.inode
        h = inode.header
        get_vid = inode.get_vid
        items = []
        for idx, off, pos, ln in vol.chunks(offset, n):
            v = get_vid(idx)
            if v:
                req = Client.obj_request(Op.READ_OBJ, vid_to_data_oid(v, idx), ln, off,
                                         flags=vol.flags, copies=h.nr_copies,
                                         copy_policy=h.copy_policy)
                items.append((req, None, buf[pos:pos + ln]))
            else:
                buf[pos:pos + ln] = zeros[:ln]
        if not items:
            return
        error = 0
        with closing(self._io.conn.iter_many(items, window=vol.window)) as replies:
            for (_, _, into), (rsp, data) in zip(items, replies):
                if rsp.result != Res.SUCCESS:
                    error = error or rsp.result
                elif len(data) < len(into):  # a short object reads as zeros past its end
                    into[len(data):] = zeros[:len(into) - len(data)]
        if error:
            raise SheepError(error)


# ---------------------------------------------------------------------------- export


class Export:
    """The opened VDI (see the module docstring).  `close` releases the lock."""

    def __init__(self, cfg: ExportConfig, *, window: int = WINDOW) -> None:
        self.cfg = cfg
        self.window = window
        self.router = Router(cfg.home, cfg.timeout) if cfg.route else None
        try:
            # CMD_CACHE as QEMU's default writeback: writes are durable after a flush
            # (NBD's own contract), and FLUSH_VDI makes every node fdatasync what it
            # holds, whichever sheep the routed writes went to (sheep/server/writeback.py).
            # sheep 1.0 answers the flush INVALID_PARMS: its writes were synchronous,
            # and the handle turns to CMD_DIRECT.
            self.master = VdiClient.open(cfg.vdi, snapid=cfg.snapid, tag=cfg.tag,
                                         readonly=bool(cfg.readonly), lock=not cfg.readonly,
                                         window=window, **cfg.connect_args)
        except SheepConnectionError as e:
            raise SheepConnectionError(f"{cfg.describe()}: {e}") from None
        except SheepError as e:
            raise SheepError(e.result, f"{cfg.describe()}: {e}") from None
        self.inode = self.master.inode
        self.flags = self.master.flags
        self.locks = ObjectLocks()
        self.readahead = ReadAhead()
        self.gather = WriteGather(self.object_size)
        self.zeros = memoryview(bytes(self.object_size))
        self.shortcircuit = ShortCircuit() if cfg.route and cfg.shortcircuit else None
        self.commits = IndexCommits(lambda idx: self.inode.get_vid(idx) == self.vid)

    # ------------------------------------------------------------------ facts

    @property
    def size(self) -> int:
        return self.inode.header.vdi_size

    @property
    def object_size(self) -> int:
        return 1 << self.inode.header.block_size_shift

    @property
    def readonly(self) -> bool:
        return self.master.readonly

    @property
    def vid(self) -> int:
        return self.inode.header.vdi_id

    def close(self) -> None:
        if self.shortcircuit is not None:
            self.shortcircuit.close()
        self.master.close()

    @property
    def _direct(self) -> ShortCircuit | None:
        sc = self.shortcircuit
        return sc if sc is not None and sc.usable else None

    # ------------------------------------------------------------------ helpers

    def _span(self, offset: int, count: int) -> tuple[int, int]:
        size = self.object_size
        return offset // size, -(-(offset + count) // size)

    def _owned(self, first: int, stop: int) -> bool:
        """Every object of the range already belongs to the working VDI."""
        me, idx = self.vid, self.inode.data_vdi_id
        return all(idx[i] == me for i in range(first, stop))

    def _pieces(self, offset: int, count: int) -> Iterator[tuple[int, int, int]]:
        """(object index, VDI offset, length) per object touched."""
        size = self.object_size
        pos, end = offset, offset + count
        while pos < end:
            idx, off = divmod(pos, size)
            n = min(end - pos, size - off)
            yield idx, pos, n
            pos += n

    def _changing(self, w: Worker, first: int, stop: int, body: Callable[[], None],
                  always_exclusive: bool = False) -> None:
        """Run ``body`` holding the objects (exclusively if it may change their index
        entries); on READONLY follow the working VDI and run it again."""
        for _ in range(MAX_RETARGETS + 1):
            holder = [0]

            def exclusive() -> bool:
                holder[0] = self.vid
                return always_exclusive or not self._owned(first, stop)

            try:
                with self.locks.hold(first, stop, exclusive):
                    self.readahead.invalidate(first, stop)
                    try:
                        body()
                    finally:
                        self.readahead.invalidate(first, stop)
                return
            except SheepError as e:
                if e.result != Res.READONLY:
                    raise
                failed = e
            self._follow(w, holder[0], failed)
        raise failed

    def _follow(self, w: Worker, vid: int, failed: SheepError) -> None:
        with self.locks.drained():
            if self.vid == vid and not w.follow():  # (unless another thread followed)
                raise failed

    # ------------------------------------------------------------------ I/O

    def pread(self, w: Worker, buf: memoryview, offset: int) -> None:
        if not len(buf):
            return
        if self._direct is not None:
            self._read_direct(w, buf, offset)
            return
        first, stop = self._span(offset, len(buf))
        with self.locks.hold(first, stop, lambda: False):
            if stop - first != 1 or not self._from_readahead(w, buf, offset, first):
                w.readinto(buf, offset, self.zeros)

    def _read_direct(self, w: Worker, buf: memoryview, offset: int) -> None:
        """Read each object's file under a short-circuit grant; an object no sheep on
        this host may hand out is read through the sheep.  No object lock is taken: a
        read sees every write completed before it started (the data is in the files,
        the entries in the shared index) and NBD orders nothing among requests in
        flight together; a grant dropped meanwhile stays open while it is in use."""
        sc = self.shortcircuit
        assert sc is not None
        me, copies, objsize = self.vid, self.inode.header.nr_copies, self.object_size
        writable = not self.readonly
        for idx, at, n in self._pieces(offset, len(buf)):
            piece = buf[at - offset:at - offset + n]
            v = self.inode.get_vid(idx)
            if not v:
                piece[:] = self.zeros[:n]
            elif not sc.read(w.routes, vid_to_data_oid(v, idx), copies, at - idx * objsize, piece,
                             writable and v == me):
                w.readinto(piece, at, self.zeros)

    def _from_readahead(self, w: Worker, buf: memoryview, offset: int, idx: int) -> bool:
        """Serve a read inside one object from a whole-object read; False: read directly."""
        objsize = self.object_size
        start = idx * objsize
        length = min(objsize, self.size - start)
        f, mine = self.readahead.lookup(idx, offset, offset + len(buf),
                                        bool(self.inode.get_vid(idx)), length)
        if f is None:
            return False
        if mine:
            try:
                w.readinto(memoryview(f.data), start, self.zeros)
            except BaseException as e:
                self.readahead.failed(f, e)
                raise
            f.done.set()
        else:
            f.done.wait()
            if f.error is not None:
                return False
        at = offset - start
        buf[:] = memoryview(f.data)[at:at + len(buf)]
        return True

    def pwrite(self, w: Worker, buf: memoryview, offset: int) -> None:
        if not len(buf):
            return
        if self._direct is not None:  # no requests to save: nothing to gather
            self._write(w, buf, offset)
            return
        b, opener = self.gather.enter(offset, buf)
        try:
            if b is None:
                self._write(w, buf, offset)
            elif opener:
                try:
                    self.gather.collect(b)
                    for at, pieces in b.runs():
                        self._write(w, pieces[0] if len(pieces) == 1 else _joined(pieces), at)
                except BaseException as e:
                    b.error = e
                    raise
                finally:
                    b.done.set()
            else:
                b.done.wait()
                if b.error is not None:  # the same failure, an exception of our own
                    e = b.error
                    if isinstance(e, SheepError):
                        raise SheepError(e.result, str(e))
                    raise OSError(errno_of(e), f"gathered write: {e}")
        finally:
            self.gather.leave()

    def _write(self, w: Worker, buf: memoryview, offset: int) -> None:
        if self._direct is not None:
            for at, n in self._write_direct(w, buf, offset):
                piece = buf[at - offset:at - offset + n]
                self._changing(w, *self._span(at, n), lambda: w.write(at, piece))
            return
        first, stop = self._span(offset, len(buf))
        self._changing(w, first, stop, lambda: w.write(offset, buf))

    def _write_direct(self, w: Worker, buf: memoryview, offset: int) -> list[tuple[int, int]]:
        """Write into the objects' files under short-circuit grants; returns the pieces
        (VDI offset, length) left for the sheep: copies on write, and objects no sheep on
        this host may hand out.

        Writers share the objects here even where one is a hole: a grant creates a
        missing object without replacing one that exists, and the index entries written
        are only those of objects created so (each set to our vid), so writers of one new
        object may run side by side; the exclusive hold of `_changing` is only needed for
        what goes through the sheep.  A new object's entry is added to `commits` as soon
        as the object exists (a zero-filled object in the index reads like the hole it
        replaces), and every writer into it is acknowledged once the entry is written."""
        sc = self.shortcircuit
        assert sc is not None
        me, copies, objsize = self.vid, self.inode.header.nr_copies, self.object_size
        left: list[tuple[int, int]] = []
        holes: list[tuple[int, int, int]] = []  # (idx, VDI offset, length) written into holes
        made: list[int] = []  # objects our grants created, written into or not

        def created(idx: int) -> None:
            self.commits.add(idx)
            made.append(idx)

        first, stop = self._span(offset, len(buf))
        with self.locks.hold(first, stop, lambda: False):
            if self.vid != me:
                return [(offset, len(buf))]  # followed a snapshot meanwhile
            try:
                for idx, at, n in self._pieces(offset, len(buf)):
                    v = self.inode.get_vid(idx)
                    if v in (me, 0) and sc.write(w.routes, vid_to_data_oid(me, idx), copies,
                                                 at - idx * objsize,
                                                 buf[at - offset:at - offset + n],
                                                 None if v else partial(created, idx), objsize):
                        if not v:
                            holes.append((idx, at, n))
                    else:
                        left.append((at, n))
            finally:
                # an object made for a piece that then went to `left` is indexed too, before
                # that piece goes through the sheep: no entry is left pending behind us
                waiting = sorted({i for i, _, _ in holes}.union(made))
                if waiting:
                    unindexed = self._index_holes(w, waiting)
                    left.extend((at, n) for i, at, n in holes if i in unindexed)
        return left

    def _index_holes(self, w: Worker, holes: list[int]) -> set[int]:
        """Wait for the index entries of the new objects ``holes`` (see `IndexCommits`).
        Returns those a snapshot kept out of the index (READONLY: it came between the
        object's creation and its entry): their pieces go through the sheep, which
        follows the snapshot."""
        failures = self.commits.wait(holes, partial(w.index_new_objects, sc=self._direct))
        for e in failures.values():
            if not (isinstance(e, SheepError) and e.result == Res.READONLY):
                raise e
        return set(failures)

    def _forget(self, first: int, stop: int) -> None:
        if self.shortcircuit is not None:
            self.shortcircuit.forget([vid_to_data_oid(self.vid, i) for i in range(first, stop)])

    def trim(self, w: Worker, count: int, offset: int) -> None:
        """Whole objects only (as QEMU's discard): index entries cleared, the sheep
        reclaims the objects; the partial ends are left as they are."""
        size = self.object_size
        first, stop = -(-offset // size), (offset + count) // size
        if first >= stop:
            return
        def body() -> None:
            self._forget(first, stop)
            w.discard(first * size, (stop - first) * size)

        self._changing(w, first, stop, body, always_exclusive=True)

    def zero(self, w: Worker, count: int, offset: int, may_trim: bool, fast: bool) -> None:
        """Whole objects (with MAY_TRIM) are trimmed, which is fast: a 4-byte index write
        each, and an unallocated object reads as zeros.  Parts of allocated objects (or
        everything, without MAY_TRIM) get zeros written; FAST_ZERO then fails with
        ENOTSUP so that the client writes them itself."""
        if not count:
            return
        size = self.object_size
        first, stop = self._span(offset, count)

        def body() -> None:
            get_vid = self.inode.get_vid
            writes: list[tuple[int, int]] = []
            wholes = False
            for idx, at, ln in self._pieces(offset, count):
                if may_trim and ln == size:
                    wholes = wholes or bool(get_vid(idx))
                elif may_trim and not get_vid(idx):
                    pass  # a hole reads as zeros already
                else:
                    writes.append((at, ln))
            if fast and writes:
                raise FastZeroUnsupported()
            if wholes:
                self._forget(first, stop)
                w.discard(offset, count)
            for at, ln in writes:
                w.write(at, self.zeros[:ln])

        self._changing(w, first, stop, body, always_exclusive=True)

    def flush(self, w: Worker) -> None:
        if self.shortcircuit is not None:
            self.shortcircuit.flush()
        w.flush()
        self.flags = w.flags  # CACHE may have turned DIRECT (sheep 1.0 without a cache)

    def extents(self, count: int, offset: int, req_one: bool) -> list[tuple[int, int, bool]]:
        """(offset, length, allocated) runs from the index, covering ``offset`` onwards
        (the whole request, or just the first run with ``req_one``)."""
        size, objsize = self.size, self.object_size
        end = min(offset + count, size)
        first = offset // objsize
        stop = min(-(-end // objsize), SD_INODE_DATA_INDEX)
        runs: list[tuple[int, int, bool]] = []
        pos = first * objsize
        for allocated, run in groupby(self.inode.data_vdi_id[first:stop], key=bool):
            nxt = min(pos + sum(1 for _ in run) * objsize, size)
            start = max(pos, offset)
            runs.append((start, nxt - start, allocated))
            if req_one:
                break
            pos = nxt
        return runs


class Session:
    """One NBD connection: a Worker per nbdkit thread that serves it."""

    def __init__(self, export: Export, readonly: bool) -> None:
        self.export = export
        self.readonly = readonly or export.readonly
        self._workers: dict[int, Worker] = {}

    def worker(self) -> Worker:
        ident = threading.get_ident()
        w = self._workers.get(ident)
        if w is None or w.broken:
            if w is not None:
                w.close()
            w = self._workers[ident] = Worker.attach(self.export)
        return w

    def pread(self, buf: memoryview, offset: int) -> None:
        self.export.pread(self.worker(), buf, offset)

    def pwrite(self, buf: memoryview, offset: int) -> None:
        self.export.pwrite(self.worker(), buf, offset)

    def trim(self, count: int, offset: int) -> None:
        self.export.trim(self.worker(), count, offset)

    def zero(self, count: int, offset: int, may_trim: bool, fast: bool) -> None:
        self.export.zero(self.worker(), count, offset, may_trim, fast)

    def flush(self) -> None:
        self.export.flush(self.worker())

    def close(self) -> None:
        workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.close()


__all__ = ["Export", "FastZeroUnsupported", "ObjectLocks", "Session", "Worker", "errno_of",
           "WINDOW"]
