"""The sheepfs tree as pyfuse3 operations (dog.md §9).

::

    cluster/info        r   dog cluster info
    node/list           r   dog node list
    node/info           r   dog node info
    vdi/list            r   dog vdi list
    vdi/mount           w   a VDI name: volume/<name> appears
    vdi/unmount         w   a VDI name: volume/<name> goes
    config/page_cache   rw  0|1: volumes through the kernel page cache (1) or direct I/O (0)
    config/object_cache rw  0|1: volume I/O with CMD_CACHE (1) or CMD_DIRECT (0)
    config/sheep_info   rw  host:port of the sheep every connection goes to
    volume/<name>       rw  the VDI as a file of its size

Nothing here may touch the mount point: this code runs on the thread of the FUSE event loop,
and a request the loop must answer itself can never be answered (the process deadlocks).
All sheep traffic goes to worker threads (see volume.py and render.py).
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3
import trio

from dog.common import c_strtol, resolve_host
from sheep.client.api import Client

from . import render
from .volume import IO_TIMEOUT, FsError, MountedVolume, Settings, VolumeTable, as_fs_error

log = logging.getLogger("sheepfs")

ROOT = pyfuse3.ROOT_INODE
DIR, TEXT, MOUNT, UNMOUNT, PAGE_CACHE, OBJECT_CACHE, SHEEP_INFO, VOLUME = (
    "dir", "text", "mount", "unmount", "page_cache", "object_cache", "sheep_info", "volume")

R, W, RW = 0o444, 0o200, 0o644
FIRST_VOLUME_INO = 100


@dataclass(frozen=True)
class Node:
    ino: int
    path: str      # "" for the root, else "cluster/info" ...
    kind: str
    mode: int      # permission bits

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]


_LAYOUT = [  # (path, kind, permission bits)
    ("", DIR, 0o755),
    ("cluster", DIR, 0o755), ("cluster/info", TEXT, R),
    ("vdi", DIR, 0o755), ("vdi/list", TEXT, R), ("vdi/mount", MOUNT, W),
    ("vdi/unmount", UNMOUNT, W),
    ("node", DIR, 0o755), ("node/info", TEXT, R), ("node/list", TEXT, R),
    ("config", DIR, 0o755), ("config/page_cache", PAGE_CACHE, RW),
    ("config/object_cache", OBJECT_CACHE, RW), ("config/sheep_info", SHEEP_INFO, RW),
    ("volume", DIR, 0o755),
]


def _guarded(fn):
    """A bug must cost one request (EIO and a log line), not the mount: pyfuse3 ends its
    main loop on any exception other than FUSEError.  No traceback is formatted here, as
    that reads source files, and this is the event loop thread (see the module doc)."""
    @functools.wraps(fn)
    async def op(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:  # noqa: BLE001
            log.error("%s: unexpected %s: %s (EIO)", fn.__name__, type(e).__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return op


@dataclass(eq=False)
class Handle:
    node: Node
    data: bytes = b""                    # text files: the content rendered at open
    volume: MountedVolume | None = None


def _parse_flag(buf: bytes) -> int:
    """``sscanf(buf, "%d", &v)`` then ``!!v``; EINVAL if there is no number."""
    value, used = c_strtol(buf.decode("ascii", "replace"))
    if not used:
        raise FsError(errno.EINVAL, f"not a number: {buf[:40]!r}")
    return int(bool(value))


def parse_sheep_info(buf: bytes) -> tuple[str, int]:
    """``host:port`` (the last colon splits, so ``[::1]:7000`` works too)."""
    text = buf.decode("utf-8", "replace").split("\n", 1)[0].strip()
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    value, used = c_strtol(port)
    if not sep or not host or not used or used != len(port) or not 1 <= value <= 65535:
        raise FsError(errno.EINVAL, f"config/sheep_info: expected host:port, got {text!r}")
    return host, value


class SheepFs(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.nodes: dict[int, Node] = {}
        self.by_path: dict[str, Node] = {}
        for ino, (path, kind, mode) in enumerate(_LAYOUT, start=ROOT):
            node = Node(ino, path, kind, mode)
            self.nodes[ino] = node
            self.by_path[path] = node
        self.volume_dir = self.by_path["volume"].ino
        self.volumes = VolumeTable(settings, FIRST_VOLUME_INO)
        self.handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self.text_size: dict[int, int] = {}
        self.started_ns = time.time_ns()
        self.uid, self.gid = os.getuid(), os.getgid()
        self.max_read = self.max_write = 0
        self.initialized = trio.Event()

    def init(self) -> None:
        """FUSE_INIT arrived (its reply is sent when this returns)."""
        self.initialized.set()

    # ------------------------------------------------------------------ errors

    @staticmethod
    def fail(exc: BaseException, what: str = "") -> pyfuse3.FUSEError:
        """Log one line and turn ``exc`` into the FUSEError to raise."""
        e = as_fs_error(exc, what) if not isinstance(exc, FsError) else exc
        log.error("%s (%s)", e, errno.errorcode.get(e.errno, e.errno))
        return pyfuse3.FUSEError(e.errno)

    # ------------------------------------------------------------------ attributes

    def _node(self, ino: int) -> Node | MountedVolume:
        node = self.nodes.get(ino)
        if node is not None:
            return node
        vol = self.volumes.by_ino.get(ino)
        if vol is not None:
            return vol
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _attrs(self, obj: Node | MountedVolume) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = 4096
        t = self.started_ns
        if isinstance(obj, MountedVolume):
            a.st_ino = obj.ino
            a.st_mode = stat.S_IFREG | RW
            a.st_nlink = 0 if obj.detached else 1
            a.st_size = obj.size
            a.st_blocks = -(-obj.size // 512)
            t = obj.mtime_ns
            a.entry_timeout = 0
            a.attr_timeout = 1
        else:
            a.st_ino = obj.ino
            if obj.kind == DIR:
                a.st_mode = stat.S_IFDIR | obj.mode
                a.st_nlink = 2 + sum(1 for n in self.nodes.values()
                                     if n.kind == DIR and n.path and n.parent == obj.path)
                a.entry_timeout = a.attr_timeout = 1
            else:
                a.st_mode = stat.S_IFREG | obj.mode
                a.st_nlink = 1
                a.st_size = self._size_of(obj)
                a.entry_timeout = 1
                a.attr_timeout = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        return a

    def _size_of(self, node: Node) -> int:
        if node.kind == TEXT:
            return self.text_size.get(node.ino, 0)  # the latest rendering
        if node.kind in (PAGE_CACHE, OBJECT_CACHE, SHEEP_INFO):
            return len(self._config_text(node))
        return 0

    def _config_text(self, node: Node) -> bytes:
        s = self.settings
        if node.kind == PAGE_CACHE:
            return f"{int(s.page_cache)}\n".encode()
        if node.kind == OBJECT_CACHE:
            return f"{int(s.object_cache)}\n".encode()
        return f"{s.host}:{s.port}\n".encode()

    @_guarded
    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        parent = self.nodes.get(parent_inode)
        if parent is None or parent.kind != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR if parent_inode in self.volumes.by_ino
                                    else errno.ENOENT)
        text = os.fsdecode(name)
        if text == ".":
            return self._attrs(parent)
        if text == "..":
            return self._attrs(self.by_path[parent.parent] if parent.path else parent)
        if parent.ino == self.volume_dir:
            vol = self.volumes.by_name.get(text)
            if vol is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attrs(vol)
        node = self.by_path.get(f"{parent.path}/{text}" if parent.path else text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(node)

    @_guarded
    async def setattr(self, inode: int, attr, fields, fh, ctx) -> pyfuse3.EntryAttributes:
        """Size changes are ignored (``echo x > vdi/mount`` truncates first; a VDI keeps its
        size, as with the original); so are time stamps.  Owner and mode are fixed."""
        obj = self._node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attrs(obj)

    # ------------------------------------------------------------------ directories

    @_guarded
    async def opendir(self, inode: int, ctx) -> int:
        node = self._node(inode)
        if not isinstance(node, Node) or node.kind != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh: int, start_id: int, token) -> None:
        node = self.nodes[fh]
        if node.ino == self.volume_dir:
            entries = sorted((v.name, v) for v in self.volumes.by_name.values())
        else:
            entries = sorted((n.name, n) for n in self.nodes.values()
                             if n.path and n.parent == node.path)
        for i, (name, obj) in enumerate(entries[start_id:], start=start_id + 1):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(obj), i):
                break

    @_guarded
    async def releasedir(self, fh: int) -> None:
        pass

    # the tree is fixed (volumes come and go through vdi/mount and vdi/unmount)
    async def create(self, parent_inode, name, mode, flags, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    @_guarded
    async def statfs(self, ctx) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = sum(-(-v.size // 4096) for v in self.volumes.by_ino.values())
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.nodes) + len(self.volumes.by_ino)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------------ files

    @_guarded
    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        obj = self._node(inode)
        acc = flags & os.O_ACCMODE
        fh = next(self._fh)
        if isinstance(obj, MountedVolume):
            if obj.detached:
                raise pyfuse3.FUSEError(errno.ENOENT)
            obj.handles += 1
            self.handles[fh] = Handle(self.nodes[self.volume_dir], volume=obj)
            page_cache = self.settings.page_cache
            return pyfuse3.FileInfo(fh=fh, direct_io=not page_cache, keep_cache=False)
        if obj.kind == DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if obj.kind == TEXT and acc != os.O_RDONLY:
            raise self.fail(FsError(errno.EACCES, f"{obj.path} is read-only"))
        if obj.kind in (MOUNT, UNMOUNT) and acc == os.O_RDONLY:
            raise self.fail(FsError(errno.EACCES, f"{obj.path} is write-only"))
        h = Handle(obj)
        if obj.kind == TEXT:
            h.data = await self._render(obj)
        elif obj.kind in (PAGE_CACHE, OBJECT_CACHE, SHEEP_INFO):
            h.data = self._config_text(obj)
        self.handles[fh] = h
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def _render(self, node: Node) -> bytes:
        s = self.settings
        try:
            r = await trio.to_thread.run_sync(render.render, node.path, s.host, s.port)
        except Exception as e:  # noqa: BLE001 - a bug in dog must not take the mount down
            raise self.fail(e, f"{node.path}: {type(e).__name__}") from None
        if r.unreachable:
            detail = "; ".join(line for line in r.messages.splitlines() if line)
            raise self.fail(FsError(errno.EIO, f"{node.path}: cannot reach the cluster at "
                                               f"{s.host}:{s.port}: {detail}"))
        if r.messages:
            log.warning("%s: %s", node.path, r.messages.strip())
        self.text_size[node.ino] = len(r.text)
        return r.text

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return h

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray:
        h = self._handle(fh)
        vol = h.volume
        if vol is None:
            return h.data[off:off + size]
        self.max_read = max(self.max_read, size)
        if off >= vol.size:
            return b""
        try:
            return await vol.read(off, min(size, vol.size - off))
        except FsError as e:
            raise self.fail(e) from None

    @_guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        vol = h.volume
        try:
            if vol is not None:
                self.max_write = max(self.max_write, len(buf))
                if off >= vol.size:
                    raise FsError(errno.ENOSPC, f"volume {vol.name}: write {len(buf)}@{off} "
                                                f"beyond the end ({vol.size} bytes)")
                n = min(len(buf), vol.size - off)
                await vol.write(off, memoryview(buf)[:n])
                return n
            kind = h.node.kind
            if kind == MOUNT:
                await self.volumes.mount(self._name_of(buf))
            elif kind == UNMOUNT:
                await self.volumes.unmount(self._name_of(buf))
            elif kind == PAGE_CACHE:
                self.settings.page_cache = bool(_parse_flag(buf))
                log.info("page cache %s", "on" if self.settings.page_cache else "off")
            elif kind == OBJECT_CACHE:
                value = bool(_parse_flag(buf))
                if value != self.settings.object_cache:
                    self.settings.object_cache = value
                    self.settings.generation += 1
                    log.info("object cache %s", "on" if value else "off")
                    await self.volumes.reconnect_all()
            elif kind == SHEEP_INFO:
                await self._retarget(*parse_sheep_info(buf))
            else:
                raise FsError(errno.EACCES, f"{h.node.path} is read-only")
        except FsError as e:
            raise self.fail(e) from None
        return len(buf)

    @staticmethod
    def _name_of(buf: bytes) -> str:
        """``<vdiname>[\\n]``: the text up to the first newline."""
        return buf.split(b"\n", 1)[0].decode("utf-8", "surrogateescape")

    async def _retarget(self, host: str, port: int) -> None:
        """config/sheep_info: check the new sheep answers, then move every connection."""
        def probe() -> str:
            addr = resolve_host(host)
            if addr is None:
                raise FsError(errno.EINVAL, f"config/sheep_info: invalid address {host!r}")
            with Client(addr, port, timeout=IO_TIMEOUT) as c:
                c.get_node_list()
            return addr
        try:
            await trio.to_thread.run_sync(probe)
        except Exception as e:  # noqa: BLE001
            raise as_fs_error(e, f"config/sheep_info: {host}:{port} does not answer") from None
        s = self.settings
        s.host, s.port = host, port
        s.generation += 1
        log.info("sheep is now %s:%d", host, port)
        await self.volumes.reconnect_all()

    @_guarded
    async def flush(self, fh: int) -> None:
        pass

    @_guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        if h.volume is not None:
            try:
                await h.volume.flush()
            except FsError as e:
                raise self.fail(e) from None

    @_guarded
    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None and h.volume is not None:
            await self.volumes.released(h.volume)


__all__ = ["SheepFs", "parse_sheep_info"]
