"""Short-circuit object I/O for a client on the sheep's host (contract and safety
argument: sheep/proto/shortcircuit.py).

`ShortCircuit` keeps one grant per object, shared by the threads of a process: for each
replica the sheep's mapped lease, the generation the grant names, and the object file
opened by this process.  A write goes to every replica's file with pwrite(2) after the
generations were checked, and counts only if afterwards the generations are unchanged
and the sheep still hold their leases; otherwise the caller sends it again through the
sheep (idempotent: same bytes, same place).  A read uses one replica and the same check
afterwards.  The data never
passes through a socket: the same copies as nbdkit's own file plugin.

Written files are fdatasynced by `flush` (and when a grant is dropped); the sheep makes
files it created for us durable with the next FLUSH_VDI, as it does for its own writes.

A new object (a write into a hole) is created here when every owner gave a directory
grant (`GRANT_DIR`) at the epoch of our ring, and by its owners through LOCAL_OBJ
otherwise; the names created here are made durable by `flush` (fsync of their
directories).  The same grants, asked on the VDI's inode, let the caller write the index
entries of the objects it created (`Volume.index_new_objects` with a direct writer).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
import time
from collections import OrderedDict
from typing import Callable, Protocol

from ..proto.constants import Op, Res
from ..proto.header import ObjArgs, Request
from ..proto.oid import oid_str, oid_to_vid, temp_file_name
from ..proto.shortcircuit import (
    GEN_OFFSET, GRANT_CREATE, GRANT_DIR, GRANT_WRITE, LEASE_SIZE, MAX_GRANT, Grant, decode_lease,
)
from .sync import Connection, SheepConnectionError

_GEN = struct.Struct("<Q")
Addr = tuple[str, int]


class Routes(Protocol):
    """What ShortCircuit needs from the routing layer (frontends/nbd/routing.py)."""

    def placement(self, oid: int, copies: int) -> tuple[int, list[Addr]] | None:
        """(epoch of the node list the ring was built from, owners)."""

    def refresh_soon(self) -> None:
        """The ring may be behind: read the node list again soon."""

    def connection_to(self, addr: Addr) -> Connection | None: ...


class _Lease:
    """A sheep's lease file, mapped read-only."""

    __slots__ = ("path", "token", "fd", "map", "_alive_until")

    ALIVE_FOR = 0.05  # seconds a liveness check is trusted (each is a syscall)

    def __init__(self, path: str, token: bytes) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            m = mmap.mmap(fd, LEASE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
            if decode_lease(m)[1] != token:
                m.close()
                raise ValueError("another sheep's lease")
        except BaseException:
            os.close(fd)
            raise
        self.path, self.token, self.fd, self.map = path, token, fd, m
        self._alive_until = 0.0

    def gen(self) -> int:
        return _GEN.unpack_from(self.map, GEN_OFFSET)[0]

    def alive(self) -> bool:
        """The sheep holds its exclusive lock (the kernel drops it when the sheep dies);
        checked at most every `ALIVE_FOR` seconds."""
        now = time.monotonic()
        if now < self._alive_until:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self._alive_until = now + self.ALIVE_FOR
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False


class _Replica:
    __slots__ = ("lease", "gen", "fd")

    def __init__(self, lease: _Lease, gen: int, fd: int) -> None:
        self.lease, self.gen, self.fd = lease, gen, fd

    def current(self) -> bool:
        """The grant still holds: same generation, sheep alive.  (A granted file is only
        replaced, moved or removed by the sheep after a bump: recovery, disk changes and
        repairs bump first; removals of the VDI's objects are this client's own trims
        and zeroes, which `forget` the grants first.)"""
        return self.lease.gen() == self.gen and self.lease.alive()


class _Grant:
    __slots__ = ("replicas", "writable", "users", "dropped", "dirty", "fresh")

    def __init__(self, replicas: list[_Replica], writable: bool, fresh: bool) -> None:
        self.replicas = replicas
        self.writable = writable
        self.users = 0
        self.dropped = False
        self.dirty = False
        self.fresh = fresh  # asked with GRANT_CREATE: a hole of the caller's until claimed

    def unchanged(self) -> bool:
        return all(r.lease.gen() == r.gen for r in self.replicas)


class _Directory:
    """A directory grant: where one sheep lets us create one VDI's new objects."""

    __slots__ = ("lease", "gen", "epoch", "path")

    def __init__(self, lease: _Lease, grant: Grant) -> None:
        self.lease, self.gen, self.epoch, self.path = lease, grant.gen, grant.epoch, grant.path

    def current(self, epoch: int) -> bool:
        """At ``epoch``, same generation, sheep alive (a restarted sheep's lease is a
        new file: the one mapped here then stays put forever, unlocked)."""
        return self.epoch == epoch and self.lease.gen() == self.gen and self.lease.alive()


def _create_object(directory: str, oid: int, size: int) -> int:
    """Open ``oid``'s file in ``directory`` for writing, creating it zero-filled (sparse)
    if absent: through a temporary name and link(2), so a file is never half made and
    one that exists is never replaced.  (It may hold writes of ours whose grant was
    dropped after they passed their checks: their writers are acknowledged once the
    index entry is in, so the file must stay.  A sheep's per-object grant keeps an
    existing file the same way.)"""
    final = os.path.join(directory, oid_str(oid))
    try:
        return os.open(final, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    tmp = temp_file_name(final)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
        os.link(tmp, final)
    except FileExistsError:
        os.close(fd)
        fd = os.open(final, os.O_RDWR | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)
    return fd


def _ask(routes: Routes, addr: Addr, oid: int, copies: int, flags: int
         ) -> tuple[int, bytes | bytearray | memoryview] | None:
    """One LOCAL_OBJ to ``addr``: (result, payload), or None when it cannot be reached."""
    conn = routes.connection_to(addr)
    if conn is None:
        return None
    req = Request(Op.LOCAL_OBJ, flags, MAX_GRANT, args=ObjArgs(oid=oid, copies=copies))
    try:
        rsp, data = conn.call(req)
    except SheepConnectionError:
        return None
    return rsp.result, data


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class ShortCircuit:
    """Grants of one process (thread-safe; see the module docstring)."""

    CAPACITY = 256   # objects with open grants (each holds one fd per replica)
    RETRY = 1.0      # seconds before asking again for an object a sheep refused

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: OrderedDict[int, _Grant] = OrderedDict()
        self._leases: dict[str, _Lease] = {}
        self._remote: set[Addr] = set()  # sheep on another host, or without LOCAL_OBJ
        self._local: set[Addr] = set()
        self._refused: dict[int, float] = {}
        self._acquiring: dict[int, threading.Event] = {}  # one thread asks, the others wait
        self._dirs: dict[tuple[Addr, int], _Directory] = {}  # by (sheep, vid)
        self._no_dirs: dict[Addr, float] = {}  # sheep that refused a directory grant, until
        self._created_in: set[str] = set()  # directories with names not yet fsynced
        self._sync_error = 0
        self.hits = self.misses = 0  # requests served directly / left to the sheep (debug)
        self.created_here = 0  # new objects this process created under directory grants

    @property
    def usable(self) -> bool:
        """False once every sheep asked turned out to be out of reach of this host."""
        return bool(self._local) or not self._remote

    # ------------------------------------------------------------------ grants

    def _use(self, oid: int, write: bool) -> _Grant | None:
        with self._lock:
            g = self._grants.get(oid)
            if g is None or (write and not g.writable):
                return None
            g.users += 1
            self._grants.move_to_end(oid)
            return g

    def _release(self, g: _Grant) -> None:
        with self._lock:
            g.users -= 1
            closing = g.dropped and not g.users
        if closing:
            self._close(g)

    def _drop(self, oid: int, g: _Grant) -> None:
        with self._lock:
            if self._grants.get(oid) is g:
                del self._grants[oid]
            g.dropped = True
            closing = not g.users
        if closing:
            self._close(g)

    def _close(self, g: _Grant) -> None:
        for r in g.replicas:
            if g.dirty:
                try:
                    os.fdatasync(r.fd)
                except OSError as e:
                    self._sync_error = self._sync_error or e.errno or errno.EIO
            os.close(r.fd)

    def _install(self, oid: int, g: _Grant) -> None:
        evicted: list[tuple[int, _Grant]] = []
        with self._lock:
            old = self._grants.pop(oid, None)
            if old is not None:
                evicted.append((oid, old))
            self._grants[oid] = g
            while len(self._grants) > self.CAPACITY:
                evicted.append(next(iter(self._grants.items())))
                del self._grants[evicted[-1][0]]
        for k, e in evicted:
            self._drop(k, e)

    def _lease_for(self, addr: Addr, grant: Grant) -> _Lease | None:
        with self._lock:
            lease = self._leases.get(grant.lease_path)
            if lease is not None and lease.token == grant.token:
                return lease
            try:
                lease = _Lease(grant.lease_path, grant.token)
            except (OSError, ValueError):
                self._remote.add(addr)  # its files are not ours to see
                return None
            self._leases[grant.lease_path] = lease  # (a restarted sheep's replaces its old one)
            self._local.add(addr)
            return lease

    def _directory(self, routes: Routes, addr: Addr, oid: int, copies: int, epoch: int
                   ) -> _Directory | None:
        """``addr``'s directory grant for ``oid``'s VDI at ``epoch`` (asked if missing or
        stale), or None."""
        key = (addr, oid_to_vid(oid))
        d = self._dirs.get(key)
        if d is not None and d.current(epoch):
            return d
        until = self._no_dirs.get(addr)
        if until is not None and until > time.monotonic():
            return None
        answer = _ask(routes, addr, oid, copies, GRANT_WRITE | GRANT_CREATE | GRANT_DIR)
        if answer is None:
            return None
        result, data = answer
        if result != Res.SUCCESS:
            self._no_dirs[addr] = time.monotonic() + self.RETRY
            return None
        grant = Grant.decode(data)
        if grant.epoch != epoch:
            routes.refresh_soon()  # our ring is not the sheep's: ask the sheep meanwhile
            return None
        lease = self._lease_for(addr, grant)
        if lease is None or not os.path.isdir(grant.path):  # (a sheep that ignored GRANT_DIR)
            self._no_dirs[addr] = float("inf")
            return None
        d = self._dirs[key] = _Directory(lease, grant)
        return d

    def _create_here(self, routes: Routes, oid: int, copies: int, size: int) -> bool:
        """Create the hole ``oid`` in every owner's directory ourselves, under directory
        grants (contract: sheep/proto/shortcircuit.py), and install the grant."""
        placed = routes.placement(oid, copies)
        if placed is None:
            return False
        epoch, owners = placed
        if not owners or any(a in self._remote for a in owners):
            return False
        dirs = [self._directory(routes, a, oid, copies, epoch) for a in owners]
        if any(d is None or not d.current(epoch) for d in dirs):
            return False
        replicas: list[_Replica] = []
        try:
            for addr, d in zip(owners, dirs):
                assert d is not None
                replicas.append(_Replica(d.lease, d.gen, _create_object(d.path, oid, size)))
                with self._lock:
                    self._created_in.add(d.path)
        except OSError as e:
            for r in replicas:
                os.close(r.fd)
            # another user's directory: never; anything else (a full disk): not for a while
            self._no_dirs[addr] = time.monotonic() + (
                float("inf") if isinstance(e, PermissionError) else self.RETRY)
            return False
        self._install(oid, _Grant(replicas, True, True))
        self.created_here += 1
        return True

    def _acquire(self, routes: Routes, oid: int, copies: int, write: bool, create: bool,
                 size: int = 0) -> bool:
        """Ask every owner of ``oid`` for a grant (or, for a new object of ``size`` bytes,
        make it ourselves); install them if all agree."""
        if create and size and self._create_here(routes, oid, copies, size):
            return True
        until = self._refused.get(oid)
        if until is not None:
            if until > time.monotonic():
                return False
            self._refused.pop(oid, None)
        placed = routes.placement(oid, copies)
        owners = placed[1] if placed is not None else []
        if not owners or any(a in self._remote for a in owners):
            return False
        flags = (GRANT_WRITE if write else 0) | (GRANT_CREATE if create else 0)
        grants: list[tuple[Addr, Grant]] = []
        for addr in owners:
            answer = _ask(routes, addr, oid, copies, flags)
            if answer is None:
                return False
            result, data = answer
            if result == Res.INVALID_PARMS:  # a sheep without short-circuit I/O
                self._remote.add(addr)
                return False
            if result != Res.SUCCESS:
                self._refused[oid] = time.monotonic() + self.RETRY
                return False
            grants.append((addr, Grant.decode(data)))
        if len({g.epoch for _, g in grants}) != 1 or any(g.owners != len(owners) for _, g in grants):
            return False  # our ring is not the sheep's: use them until it is
        replicas: list[_Replica] = []
        try:
            for addr, grant in grants:
                lease = self._lease_for(addr, grant)
                if lease is None:
                    raise LookupError
                fd = os.open(grant.path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
                replicas.append(_Replica(lease, grant.gen, fd))
        except (OSError, LookupError) as e:
            for r in replicas:
                os.close(r.fd)
            if isinstance(e, PermissionError):  # another user's files: not for us, ever
                self._remote.update(addr for addr, _ in grants)
            return False
        self._install(oid, _Grant(replicas, write, create))
        return True

    def _acquire_once(self, routes: Routes, oid: int, copies: int, write: bool, create: bool,
                      size: int = 0) -> bool:
        """`_acquire`, by one thread at a time per object (the others wait for it)."""
        with self._lock:
            busy = self._acquiring.get(oid)
            if busy is None:
                self._acquiring[oid] = threading.Event()
        if busy is not None:
            busy.wait()
            return True  # the caller looks again
        try:
            return self._acquire(routes, oid, copies, write, create, size)
        finally:
            with self._lock:
                self._acquiring.pop(oid).set()

    def _with_grant(self, routes: Routes, oid: int, copies: int, write: bool,
                    created: Callable[[], None] | None, io: Callable[[_Grant], bool],
                    size: int = 0) -> bool:
        """Run ``io`` under a grant (asked once if missing or stale); False: use the sheep."""
        for asked in (False, True):
            g = self._use(oid, write)
            if g is None:
                if asked or not self._acquire_once(routes, oid, copies, write,
                                                   created is not None, size):
                    self.misses += 1
                    return False
                continue
            try:
                if write and not g.unchanged():  # (a read is judged by its check after)
                    self._drop(oid, g)
                    continue
                if created is not None and g.fresh and self._claim(g):
                    created()
                if io(g):
                    self.hits += 1
                    return True
                self._drop(oid, g)
                self.misses += 1
                return False
            finally:
                self._release(g)
        return False

    # ------------------------------------------------------------------ I/O

    def read(self, routes: Routes, oid: int, copies: int, offset: int, buf: memoryview,
             writable: bool) -> bool:
        """Fill ``buf`` from the object; ``writable`` asks for a grant that writes can
        reuse (the object is the caller's own)."""
        def io(g: _Grant) -> bool:
            r = g.replicas[oid % len(g.replicas)]
            done = 0
            try:
                while done < len(buf):
                    n = os.preadv(r.fd, [buf[done:]], offset + done)
                    if not n:
                        buf[done:] = bytes(len(buf) - done)
                        break
                    done += n
            except OSError:
                return False
            return r.current()
        return self._with_grant(routes, oid, copies, writable, None, io)

    def _claim(self, g: _Grant) -> bool:
        with self._lock:
            fresh, g.fresh = g.fresh, False
        return fresh

    def write(self, routes: Routes, oid: int, copies: int, offset: int, data: memoryview,
              created: Callable[[], None] | None = None, size: int = 0) -> bool:
        """Write ``data`` into every replica.  With ``created``, the object is a hole of
        the caller's, who holds the VDI's lock, and may not exist yet: the grant creates
        it (here, ``size`` bytes, if directory grants allow), and ``created`` is called
        once per grant so made, by the first writer, before it writes."""
        def io(g: _Grant) -> bool:
            try:
                for r in g.replicas:
                    _pwrite_all(r.fd, data, offset)
            except OSError:
                return False
            g.dirty = True
            return all(r.current() for r in g.replicas)
        return self._with_grant(routes, oid, copies, True, created, io, size)

    def forget(self, oids: list[int]) -> None:
        """Objects about to be removed or replaced through the sheep (trim, zero)."""
        with self._lock:
            found = [(oid, self._grants[oid]) for oid in oids if oid in self._grants]
        for oid, g in found:
            self._drop(oid, g)

    def flush(self) -> None:
        """fdatasync every file written since the last flush (OSError on failure)."""
        with self._lock:
            grants = [g for g in self._grants.values() if g.dirty]
            for g in grants:
                g.users += 1
            error, self._sync_error = self._sync_error, 0
            dirs, self._created_in = self._created_in, set()
        try:
            for g in grants:
                g.dirty = False
                try:
                    for r in g.replicas:
                        os.fdatasync(r.fd)
                except OSError as e:
                    g.dirty = True
                    error = error or e.errno or errno.EIO
        finally:
            for g in grants:
                self._release(g)
        for path in dirs:  # the names of objects created here
            try:
                _fsync_dir(path)
            except OSError as e:
                with self._lock:
                    self._created_in.add(path)
                error = error or e.errno or errno.EIO
        if error:
            raise OSError(error, "flush of short-circuit writes failed")

    def close(self) -> None:
        with self._lock:
            grants = list(self._grants.items())
        for oid, g in grants:
            self._drop(oid, g)
        for lease in self._leases.values():
            lease.map.close()
            os.close(lease.fd)
        self._leases.clear()


__all__ = ["ShortCircuit", "Routes"]
