"""How the export orders and coalesces requests (see export.py's docstring):
`ObjectLocks` orders requests on the same objects the way QEMU's driver orders
overlapping AIO requests; `ReadAhead` and `WriteGather` turn sequential streams of small
requests into whole-object requests to the sheep; `IndexCommits` writes the index
entries of new objects in groups.  No sockets here: export.py does I/O.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator


# ---------------------------------------------------------------------------- locking


class ObjectLocks:
    """Shared/exclusive locks on ranges of object indexes, and a gate that drains them.

    `hold` takes a range; whether it must be exclusive is decided by a callable under the
    lock (the answer depends on the shared index and the current vid, which only change
    under exclusive holds or with the gate closed).  `drained` closes the gate, waits for
    every holder to leave, and keeps new ones out until it exits.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared: dict[int, int] = {}
        self._excl: set[int] = set()
        self._active = 0
        self._gate_closed = False

    def _free(self, rng: range, exclusive: bool) -> bool:
        excl, shared = self._excl, self._shared
        if exclusive:
            return not any(i in excl or i in shared for i in rng)
        return not any(i in excl for i in rng)

    @contextmanager
    def hold(self, first: int, stop: int, exclusive: Callable[[], bool]) -> Iterator[bool]:
        """Hold objects ``first..stop-1``; yields whether the hold is exclusive."""
        rng = range(first, stop)
        with self._cond:
            while True:
                if not self._gate_closed:
                    excl = exclusive()
                    if self._free(rng, excl):
                        break
                self._cond.wait()
            self._active += 1
            if excl:
                self._excl.update(rng)
            else:
                for i in rng:
                    self._shared[i] = self._shared.get(i, 0) + 1
        try:
            yield excl
        finally:
            with self._cond:
                self._active -= 1
                if excl:
                    self._excl.difference_update(rng)
                else:
                    for i in rng:
                        n = self._shared[i] - 1
                        if n:
                            self._shared[i] = n
                        else:
                            del self._shared[i]
                self._cond.notify_all()

    @contextmanager
    def drained(self) -> Iterator[None]:
        with self._cond:
            while self._gate_closed:
                self._cond.wait()
            self._gate_closed = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._gate_closed = False
                self._cond.notify_all()


# ---------------------------------------------------------------------------- read-ahead


class _Fill:
    """One object read whole by one thread; others wait for it, then copy from it."""

    __slots__ = ("idx", "data", "done", "error", "stale")

    def __init__(self, idx: int, length: int) -> None:
        self.idx = idx
        self.data = bytearray(length)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.stale = False


class ReadAhead:
    """Whole-object reads for sequential readers, coherent with this process's writes.

    A sequential reader (nbdcopy, a guest's dd, qemu-img convert) asks for an object in
    pieces (256 KiB for nbdcopy): each piece a request to the sheep.  When a read starts
    where an earlier read ended and its object is allocated, the object is read whole
    by that thread (one request) and kept; the other pieces are copied from it.  Random
    reads never start where another ended, so they go straight to the sheep.

    Every change of an object (`invalidate`, called before and after each write, trim
    or zero of it) drops its copy and marks a read still in flight as stale, so no copy
    taken before or during a change is used by a read that starts after the change.
    Writes by other processes are not seen, exactly as the in-memory index does not.
    """

    ENDS = 256  # recent read ends remembered, to recognise sequential streams

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._fills: dict[int, _Fill] = {}  # insertion order = age
        self._ends: dict[int, None] = {}

    def lookup(self, idx: int, offset: int, end: int, allocated: bool, length: int
               ) -> tuple[_Fill | None, bool]:
        """(fill, mine): an existing or pending copy of ``idx``, or a new fill that the
        caller must make (``mine``), or (None, False) to read directly."""
        with self._lock:
            seq = offset in self._ends
            self._ends[end] = None
            if len(self._ends) > self.ENDS:
                del self._ends[next(iter(self._ends))]
            f = self._fills.get(idx)
            if f is not None:
                self._fills[idx] = self._fills.pop(idx)  # most recently used
                return f, False
            if not (seq and allocated):
                return None, False
            f = self._fills[idx] = _Fill(idx, length)
            ready = [i for i, x in self._fills.items() if x.done.is_set()]
            for i in ready[:max(0, len(self._fills) - self.capacity)]:
                del self._fills[i]
            return f, True

    def failed(self, f: _Fill, exc: BaseException) -> None:
        with self._lock:
            f.error = exc
            if self._fills.get(f.idx) is f:
                del self._fills[f.idx]
        f.done.set()

    def invalidate(self, first: int, stop: int) -> None:
        with self._lock:
            for idx in [i for i in self._fills if first <= i < stop]:
                self._fills.pop(idx).stale = True


# ---------------------------------------------------------------------------- write gathering


class _Batch:
    """Writes into one object, in flight together, sent by the first of them."""

    __slots__ = ("idx", "parts", "covered", "closed", "last", "done", "error")

    def __init__(self, idx: int, offset: int, buf: memoryview) -> None:
        self.idx = idx
        self.parts: list[tuple[int, memoryview]] = [(offset, buf)]
        self.covered = len(buf)
        self.closed = False
        self.last = time.monotonic()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def overlaps(self, offset: int, end: int) -> bool:
        return any(o < end and offset < o + len(b) for o, b in self.parts)

    def runs(self) -> list[tuple[int, list[memoryview]]]:
        """The parts merged into contiguous runs: (VDI offset, pieces in order)."""
        out: list[tuple[int, list[memoryview]]] = []
        run_end = -1
        for o, b in sorted(self.parts, key=lambda p: p[0]):
            if o == run_end:
                out[-1][1].append(b)
            else:
                out.append((o, [b]))
            run_end = o + len(b)
        return out


class WriteGather:
    """Write gathering for streaming writers (NFS servers do the same).

    nbdcopy and guests write a stream in pieces (256 KiB for nbdcopy), many in flight;
    each piece costs a request, and a sheep moves 4 MiB in one request about eight times
    faster than in 256 KiB pieces.  nbdkit hands the pieces of a stream to its worker
    threads in order, but the threads race, so pieces reach us in any order.  A write of
    at least `MIN_OPEN` bytes into an object that one of the last writes touched (this
    one or the one before: a stream) opens a batch for its object; writes into the same
    object that arrive meanwhile and overlap nothing in it join it, and the first one
    sends the contiguous runs of them
    (one 4 MiB write for a stream) once the object is covered, or nothing joined for
    `IDLE`, or after `MAX_WAIT`.  Every piece is acknowledged only when its write is done,
    so nothing changes for durability or ordering: the pieces were in flight together.
    The opener waits only while other writes are in flight that could join; a lone
    writer never waits.
    """

    IDLE = 0.001
    MAX_WAIT = 0.005
    RECENT = 8  # objects written last, to recognise streams (a few per connection)
    MIN_OPEN = 64 << 10  # smaller writes (random I/O) never open a batch: no wait for them

    def __init__(self, object_size: int) -> None:
        self.object_size = object_size
        self._cond = threading.Condition()
        self._open: dict[int, _Batch] = {}
        self._recent: dict[int, None] = {}
        self.active = 0  # pwrite calls in progress

    def enter(self, offset: int, buf: memoryview) -> tuple[_Batch | None, bool]:
        """(batch, opener): the batch this write joined or opened, or (None, False)."""
        end = offset + len(buf)
        idx = offset // self.object_size
        with self._cond:
            self.active += 1
            streaming = idx in self._recent or idx - 1 in self._recent
            self._recent.pop(idx, None)
            self._recent[idx] = None
            if len(self._recent) > self.RECENT:
                del self._recent[next(iter(self._recent))]
            if (end - 1) // self.object_size != idx:
                return None, False
            b = self._open.get(idx)
            if b is not None and not b.closed and not b.overlaps(offset, end):
                b.parts.append((offset, buf))
                b.covered += len(buf)
                b.last = time.monotonic()
                self._cond.notify_all()
                return b, False
            if b is None and streaming and self.MIN_OPEN <= len(buf) < self.object_size:
                b = self._open[idx] = _Batch(idx, offset, buf)
                return b, True
            return None, False

    def leave(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def collect(self, b: _Batch) -> None:
        """The opener: wait for the batch to fill (see the class docstring), close it."""
        with self._cond:
            try:
                started = time.monotonic()
                while b.covered < self.object_size and self.active > len(b.parts):
                    left = min(b.last + self.IDLE, started + self.MAX_WAIT) - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                b.closed = True
                if self._open.get(b.idx) is b:
                    del self._open[b.idx]


def _joined(pieces: list[memoryview]) -> memoryview:
    data = bytearray(sum(len(p) for p in pieces))
    pos = 0
    for p in pieces:
        data[pos:pos + len(p)] = p
        pos += len(p)
    return memoryview(data)


# ---------------------------------------------------------------------------- index entries


class IndexCommits:
    """Index entries of objects created in holes, written in groups.

    Writers into a hole `add` its entry (as soon as the object exists) and `wait` until it
    is written: a write is acknowledged only once its object is in the index.  A waiter
    takes every entry added so far and not yet taken, and writes them with ``write`` (per
    run of adjacent entries: into the inode's files under a grant, or one WRITE_OBJ, all
    sent before any reply is read); entries
    another waiter took are waited for.  Groups are written side by side (they never
    share an entry), so one slow group holds up only its own writers.
    """

    def __init__(self, written: Callable[[int], bool]) -> None:
        self._written = written  # is the entry in the index (in memory) now?
        self._cond = threading.Condition()
        self._events: dict[int, threading.Event] = {}  # added and not done
        self._pending: set[int] = set()  # added and not taken by a waiter yet
        self._errors: dict[int, BaseException] = {}  # of the last attempt, by index

    def add(self, idx: int) -> None:
        with self._cond:
            if not self._written(idx):
                self._add(idx)

    def _add(self, idx: int) -> threading.Event:
        ev = self._events.get(idx)
        if ev is None:
            self._errors.pop(idx, None)
            ev = self._events[idx] = threading.Event()
            self._pending.add(idx)
        return ev

    def wait(self, idxs: list[int], write: Callable[[list[int]], None]
             ) -> dict[int, BaseException]:
        """Until the entries of ``idxs`` are written or failed; the failures, by index."""
        with self._cond:
            evs = [self._add(i) for i in idxs if not self._written(i)]
            group, self._pending = sorted(self._pending), set()
        if group:
            error: BaseException | None = None
            try:
                write(group)
            except BaseException as e:  # what was not written failed with it
                error = e
            finally:
                with self._cond:
                    for i in group:
                        if not self._written(i):
                            self._errors[i] = error or OSError(f"index entry {i} not written")
                        self._events.pop(i).set()
                    self._cond.notify_all()
        with self._cond:
            self._cond.wait_for(lambda: all(e.is_set() for e in evs))
            return {i: self._errors[i] for i in idxs if i in self._errors}


__all__ = ["IndexCommits", "ObjectLocks", "ReadAhead", "WriteGather"]
