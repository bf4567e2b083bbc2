"""The disks of a node (objects.md §9.6, `sheep/store/md.c`): which disk an object lives on.

A node started as `sheep STORE,DISK1,DISK2,...` spreads its objects over the disks.  A
disk of ``space`` bytes gets ``ceil(space / 16 MiB)`` vdisk points, ``sd_hash_next``
chained from ``sd_hash(path)``; an object belongs to the disk owning the first point >=
``sd_hash_oid(oid)`` (wrapping).  ``space`` is the free space the disk had when first used,
kept in the xattr `user.md.size`, so that placement does not move as the disk fills.

Pure ring code plus `open_disk` (blocking, for worker threads or start-up).  What the
daemon does when disks come and go is in md_ops.py.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Iterable

from ..proto.hashing import sd_hash, sd_hash_next, sd_hash_oid
from ..proto.structs import MD_MAX_DISK

log = logging.getLogger("sheep.md")

MD_VDISK_SIZE = 16 << 20  # objects.md §9.6
MD_SIZE_XATTR = "user.md.size"
STALE = ".stale"


class DiskError(Exception):
    """A directory that cannot serve as a disk; the message says which and why."""


# ---------------------------------------------------------------------------- disks


@dataclass(frozen=True, eq=False)
class Disk:
    """One object directory and its points on the node's vdisk ring."""

    path: str
    space: int
    points: tuple[int, ...] = field(repr=False)


def vdisk_points(path: str, space: int) -> tuple[int, ...]:
    """`create_vdisks`: ``ceil(space / 16 MiB)`` points (at least one) chained from the path's hash."""
    h = sd_hash(os.fsencode(path))
    points = []
    for _ in range(max(1, -(-space // MD_VDISK_SIZE))):
        h = sd_hash_next(h)
        points.append(h)
    return tuple(points)


def free_space(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def open_disk(path: str, *, purge: bool = False) -> Disk:
    """`md_add_disk` (blocking): create ``path`` if missing, empty it with ``purge`` (a plug),
    check that it takes files, and read or record its weight.  Raises `DiskError`."""
    def fail(what: str, e: OSError) -> DiskError:
        return DiskError(f"cannot use {path} as a disk: {what}: {e.strerror or e}")

    if os.path.lexists(path) and not os.path.isdir(path):
        raise DiskError(f"cannot use {path} as a disk: not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise fail("cannot create it", e) from e
    try:
        if purge:
            purge_dir(path)
        os.makedirs(os.path.join(path, STALE), exist_ok=True)
        probe = os.path.join(path, f".probe.{uuid.uuid4().hex[:8]}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as e:
        raise fail("cannot write to it", e) from e
    try:
        space = int.from_bytes(os.getxattr(path, MD_SIZE_XATTR)[:8], "little")
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise fail(f"cannot read {MD_SIZE_XATTR}", e) from e
        space = free_space(path)
        try:
            os.setxattr(path, MD_SIZE_XATTR, space.to_bytes(8, "little"))
        except OSError as e2:
            if e2.errno != errno.ENOTSUP:
                raise fail(f"cannot set {MD_SIZE_XATTR}", e2) from e2
            log.warning("%s has no user xattrs: its weight (%d bytes) is not recorded", path, space)
    return Disk(path, space, vdisk_points(path, space))


class DiskSet:
    """An immutable disk table: the vdisk ring of the active disks (sorted by path, the
    order MD_INFO lists them in) and the disks being drained after an unplug, which are
    still searched but never chosen."""

    __slots__ = ("disks", "retiring", "_points", "_owners")

    def __init__(self, disks: Iterable[Disk], retiring: Iterable[Disk] = ()) -> None:
        self.disks: tuple[Disk, ...] = tuple(sorted(disks, key=lambda d: os.fsencode(d.path)))
        if not self.disks:
            raise ValueError("a node needs at least one disk")
        if len(self.disks) > MD_MAX_DISK:
            raise ValueError(f"at most {MD_MAX_DISK} disks")
        self.retiring: tuple[Disk, ...] = tuple(retiring)
        pairs = sorted((p, i) for i, d in enumerate(self.disks) for p in d.points)
        self._points = [p for p, _ in pairs]
        self._owners = [i for _, i in pairs]

    def home(self, oid: int) -> Disk:
        """The disk owning the first point >= sd_hash_oid(oid), wrapping."""
        pos = bisect_left(self._points, sd_hash_oid(oid))
        return self.disks[self._owners[pos % len(self._points)]]

    def all(self) -> tuple[Disk, ...]:
        return self.disks + self.retiring

    def find(self, path: str) -> Disk | None:
        return next((d for d in self.all() if d.path == path), None)

    def disk_of(self, file_path: str) -> Disk | None:
        """The disk holding ``file_path`` (an object or a stale copy)."""
        return next((d for d in self.all() if file_path.startswith(d.path + os.sep)), None)

    def replace(self, disks: Iterable[Disk] | None = None, retiring: Iterable[Disk] | None = None) -> "DiskSet":
        return DiskSet(self.disks if disks is None else disks,
                       self.retiring if retiring is None else retiring)


# A disk dropped while in use (failed, or unplugged) may still hold copies that are older
# than the ones recovered elsewhere since: if it is given again at start-up, it is emptied
# first.  The list lives in the store directory, one path per line.
DROPPED_FILE = "md.dropped"


def load_dropped(store_dir: str) -> set[str]:
    try:
        with open(os.path.join(store_dir, DROPPED_FILE), encoding="utf-8", errors="surrogateescape") as f:
            return {line.rstrip("\n") for line in f if line.strip()}
    except FileNotFoundError:
        return set()


def save_dropped(store_dir: str, paths: Iterable[str]) -> None:
    """Atomically replace the list (blocking)."""
    path = os.path.join(store_dir, DROPPED_FILE)
    with open(path + ".tmp", "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(f"{p}\n" for p in sorted(paths)))
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".tmp", path)


def purge_dir(path: str) -> None:
    """Empty a directory (MAKE_FS, a plugged disk)."""
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


__all__ = ["MD_VDISK_SIZE", "free_space", "MD_SIZE_XATTR", "STALE", "DiskError", "Disk", "DiskSet", "vdisk_points",
           "open_disk", "purge_dir", "DROPPED_FILE", "load_dropped", "save_dropped"]
