"""Mounted VDIs (``volume/<name>``): blocking client work moved off the FUSE event loop.

The FUSE loop runs on trio in one thread; every request that talks to sheep goes to a
worker thread (``trio.to_thread.run_sync``), so one slow request never stalls the others
and the loop thread never blocks.

One mounted VDI is one QEMU-style `VdiClient` (lock, in-memory inode, copy-on-write writes,
index updates, READONLY retargeting after a snapshot).  A `VdiClient` is not thread-safe and
its in-memory index is the single source of truth for copy-on-write decisions, so every
use of it (writes, flushes, reopening) is serialised by a per-volume `trio.Lock`: at any
moment at most one worker thread holds it.  Reads do not need the handle's socket: each
read borrows a connection from a small per-volume pool and reads through a `Volume` built
on the handle's current inode (read-only use of the index), so reads run in parallel with
each other and with the writer.

After a connection failure the handle is closed and reopened on the next request, so I/O
resumes by itself once the cluster is back; in between, requests fail with EIO.
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass, field

import trio

from sheep.client.api import Client
from sheep.client.sync import SheepConnectionError, SheepError
from sheep.client.vdi import VdiClient
from sheep.client.volume import Volume
from sheep.proto.constants import SD_MAX_VDI_LEN, Op, Res
from sheep.proto.header import ProtocolError
from sheep.proto.oid import vid_to_vdi_oid

log = logging.getLogger("sheepfs")

IO_TIMEOUT = 60.0      # seconds a sheep may stay silent before a request fails with EIO
READERS = 8            # parallel reads per volume (pooled connections)
WINDOW = 16            # object requests in flight per read/write call

# result codes with a more precise errno than EIO
_RESULT_ERRNO = {
    Res.NO_VDI: errno.ENOENT,
    Res.VDI_LOCKED: errno.EBUSY,
    Res.NO_SPACE: errno.ENOSPC,
    Res.FULL_VDI: errno.ENOSPC,
    Res.READONLY: errno.EROFS,
    Res.INVALID_PARMS: errno.EINVAL,
}


class FsError(Exception):
    """A failure to answer with ``errno``; ``str()`` is the log line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def as_fs_error(exc: BaseException, what: str) -> FsError:
    """The errno and log line for an exception raised by client code doing ``what``."""
    if isinstance(exc, FsError):
        return exc
    if isinstance(exc, SheepError):
        return FsError(_RESULT_ERRNO.get(exc.result, errno.EIO), f"{what}: {exc}")
    if isinstance(exc, (SheepConnectionError, ProtocolError, OSError, EOFError)):
        return FsError(errno.EIO, f"{what}: {exc}")
    if isinstance(exc, NotImplementedError):
        return FsError(errno.EOPNOTSUPP, f"{what}: {exc}")
    if isinstance(exc, PermissionError):
        return FsError(errno.EROFS, f"{what}: {exc}")
    return FsError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}")


def _transport_failure(exc: BaseException) -> bool:
    return isinstance(exc, (SheepConnectionError, ProtocolError, OSError, EOFError, ValueError))


@dataclass
class Settings:
    """What config/ shows and changes; ``generation`` counts retargets (address, cache)."""

    host: str = "127.0.0.1"
    port: int = 7000
    page_cache: bool = False
    object_cache: bool = False
    generation: int = 0


def check_name(name: str) -> None:
    """A VDI name must also be a file name in volume/."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw or name in (".", "..") or "/" in name or "\0" in name:
        raise FsError(errno.EINVAL, f"invalid VDI name {name!r}")
    if len(raw) >= SD_MAX_VDI_LEN:
        raise FsError(errno.ENAMETOOLONG, f"VDI name too long ({len(raw)} bytes)")


@dataclass(eq=False)
class MountedVolume:
    name: str
    ino: int
    settings: Settings
    handles: int = 0            # open file handles
    detached: bool = False      # unmounted while open: closed at the last release
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    _vc: VdiClient | None = None
    _generation: int = -1
    _readers: list[tuple[int, Client]] = field(default_factory=list)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: trio.Lock = field(default_factory=trio.Lock)
    read_limit: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(READERS))

    # ------------------------------------------------------------------ blocking side

    def _open_blocking(self) -> None:
        """(worker thread, lock held) LOCK_VDI + inode read at the current target."""
        self._close_blocking()
        s = self.settings
        gen = s.generation
        vc = VdiClient.open(self.name, host=s.host, port=s.port, lock=True,
                            direct=not s.object_cache, timeout=IO_TIMEOUT, window=WINDOW)
        self._vc, self._generation, self.size = vc, gen, vc.size
        log.info("volume %s: opened vid %x (%d bytes) at %s:%d", self.name, vc.vid, vc.size,
                 s.host, s.port)

    def _handle_blocking(self) -> VdiClient:
        """(worker thread, lock held) the handle, reopened if it was dropped or retargeted."""
        if self._vc is None or self._vc.closed or self._generation != self.settings.generation:
            self._open_blocking()
        assert self._vc is not None
        return self._vc

    def _drop_blocking(self) -> None:
        """(lock held) forget a handle whose connection failed; reopened on next use."""
        vc, self._vc = self._vc, None
        if vc is not None:
            try:
                vc.close()
            except Exception:  # noqa: BLE001 - the cluster may be gone; the lock goes with it
                pass

    def _close_blocking(self, *, flush_cache: bool = False) -> None:
        """(lock held) release the lock and close every connection."""
        vc = self._vc
        if vc is not None and flush_cache and not vc.closed:
            try:
                with Client(self.settings.host, self.settings.port, timeout=IO_TIMEOUT) as c:
                    rsp, _ = c.call(Client.obj_request(Op.FLUSH_DEL_CACHE,
                                                       vid_to_vdi_oid(vc.vid), 0))
                if rsp.result != Res.SUCCESS:
                    log.warning("volume %s: FLUSH_DEL_CACHE: %s", self.name,
                                SheepError(rsp.result))
            except Exception as e:  # noqa: BLE001
                log.warning("volume %s: FLUSH_DEL_CACHE: %s", self.name, e)
        self._drop_blocking()
        with self._pool_lock:
            readers, self._readers = self._readers, []
        for _, c in readers:
            c.close()

    def _write_blocking(self, offset: int, data: memoryview) -> None:
        vc = self._handle_blocking()
        try:
            vc.write(offset, data)
        except BaseException as e:
            if _transport_failure(e):
                self._drop_blocking()
            raise

    def _flush_blocking(self) -> None:
        vc = self._handle_blocking()
        try:
            vc.flush()
        except BaseException as e:
            if _transport_failure(e):
                self._drop_blocking()
            raise

    def _take_reader(self, gen: int) -> Client:
        with self._pool_lock:
            while self._readers:
                g, c = self._readers.pop()
                if g == gen and not c.conn.closed:
                    return c
                c.close()
        s = self.settings
        return Client(s.host, s.port, timeout=IO_TIMEOUT)

    def _give_reader(self, gen: int, c: Client) -> None:
        if c.conn.closed or gen != self.settings.generation:
            c.close()
            return
        with self._pool_lock:
            if len(self._readers) < READERS:
                self._readers.append((gen, c))
                return
        c.close()

    def _read_blocking(self, vc: VdiClient, gen: int, offset: int, length: int) -> bytearray:
        """(worker thread, no lock) read through a pooled connection and the handle's
        current inode; the handle itself is not used."""
        inode, flags = vc.inode, vc.flags  # ValueError if the handle was closed meanwhile
        c = self._take_reader(gen)
        try:
            return Volume(c, inode, readonly=True, flags=flags, window=WINDOW).read(offset, length)
        finally:
            self._give_reader(gen, c)

    # ------------------------------------------------------------------ async side

    async def open(self) -> None:
        async with self.lock:
            try:
                await trio.to_thread.run_sync(self._open_blocking)
            except Exception as e:
                raise as_fs_error(e, f"cannot mount {self.name}") from None

    async def read(self, offset: int, length: int) -> bytearray:
        vc, gen = self._vc, self._generation
        if vc is None or vc.closed or gen != self.settings.generation:
            async with self.lock:
                try:
                    vc = await trio.to_thread.run_sync(self._handle_blocking)
                except Exception as e:
                    raise as_fs_error(e, f"volume {self.name}: read {length}@{offset}") from None
                gen = self._generation
        try:
            return await trio.to_thread.run_sync(self._read_blocking, vc, gen, offset, length,
                                                 limiter=self.read_limit)
        except Exception as e:
            raise as_fs_error(e, f"volume {self.name}: read {length}@{offset}") from None

    async def write(self, offset: int, data: memoryview) -> None:
        async with self.lock:
            try:
                await trio.to_thread.run_sync(self._write_blocking, offset, data)
            except Exception as e:
                raise as_fs_error(e, f"volume {self.name}: write {len(data)}@{offset}") from None
            self.mtime_ns = time.time_ns()

    async def flush(self) -> None:
        async with self.lock:
            try:
                await trio.to_thread.run_sync(self._flush_blocking)
            except Exception as e:
                raise as_fs_error(e, f"volume {self.name}: flush") from None

    async def reopen(self) -> None:
        """After a retarget: reconnect now (failures are logged; the next I/O retries)."""
        async with self.lock:
            try:
                await trio.to_thread.run_sync(self._open_blocking)
            except Exception as e:
                self._vc = None
                log.error("%s", as_fs_error(e, f"volume {self.name}: reconnect"))

    async def close(self) -> None:
        async with self.lock:
            await trio.to_thread.run_sync(
                lambda: self._close_blocking(flush_cache=self.settings.object_cache))
        log.info("volume %s: closed", self.name)

    def close_blocking(self) -> None:
        """For the exit path, after the event loop has stopped."""
        self._close_blocking(flush_cache=self.settings.object_cache)


class VolumeTable:
    """volume/: mounted VDIs by name and by inode number."""

    def __init__(self, settings: Settings, first_ino: int) -> None:
        self.settings = settings
        self.by_name: dict[str, MountedVolume] = {}
        self.by_ino: dict[int, MountedVolume] = {}   # also detached volumes still open
        self._next_ino = first_ino
        self._lock = trio.Lock()

    async def mount(self, name: str) -> MountedVolume:
        """``vdi/mount``: the working VDI ``name`` appears as volume/<name>."""
        check_name(name)
        async with self._lock:
            vol = self.by_name.get(name)
            if vol is not None:
                return vol
            for v in self.by_ino.values():
                if v.name == name and v.detached:  # unmounted but still open: take it back
                    v.detached = False
                    self.by_name[name] = v
                    log.info("volume %s: mounted again", name)
                    return v
            vol = MountedVolume(name, self._next_ino, self.settings)
            self._next_ino += 1
            await vol.open()
            self.by_name[name] = vol
            self.by_ino[vol.ino] = vol
            log.info("volume %s: mounted", name)
            return vol

    async def unmount(self, name: str) -> None:
        """``vdi/unmount``: volume/<name> goes; the VDI is released when its last open
        file is closed."""
        async with self._lock:
            vol = self.by_name.pop(name, None)
            if vol is None:
                raise FsError(errno.ENOENT, f"cannot unmount {name}: not mounted")
            if vol.handles:
                vol.detached = True
                log.info("volume %s: unmounted, released at last close (%d open)", name,
                         vol.handles)
                return
            self.by_ino.pop(vol.ino, None)
            await vol.close()  # before a new mount of the name may take the lock
        log.info("volume %s: unmounted", name)

    async def released(self, vol: MountedVolume) -> None:
        """A file handle of ``vol`` was closed."""
        vol.handles -= 1
        if vol.detached and vol.handles == 0:
            self.by_ino.pop(vol.ino, None)
            await vol.close()

    async def reconnect_all(self) -> None:
        async with trio.open_nursery() as n:
            for vol in list(self.by_ino.values()):
                n.start_soon(vol.reopen)

    def close_all_blocking(self) -> None:
        for vol in list(self.by_ino.values()):
            try:
                vol.close_blocking()
            except Exception as e:  # noqa: BLE001
                log.warning("volume %s: close: %s", vol.name, e)
            log.info("volume %s: closed", vol.name)
        self.by_ino.clear()
        self.by_name.clear()


__all__ = ["FsError", "IO_TIMEOUT", "MountedVolume", "Settings", "VolumeTable", "as_fs_error",
           "check_name"]
