"""The object store (objects.md §9.6, §11): objects as files on one or more disks, plus
`config` and `epoch/`.

Single disk (`sheep STORE`): objects are `STORE/obj/<oid %016x>`, stale copies
`STORE/obj/.stale/<oid>.<epoch>`.  Multi-disk (`sheep STORE,DISK1,DISK2,...`): each disk
holds `<oid>` files and its own `.stale/`, and an object belongs on the disk md.py's vdisk
ring names.  Lookups fall back to the other disks, so an object that a plug or unplug has
not moved yet (md_ops.py moves them) is still found.

Every I/O method is blocking and is called from a worker thread
(`trio.to_thread.run_sync`); none of them touches daemon state.  The disk table is an
immutable `DiskSet` that only the trio thread replaces (`set_table`), so each call works
on one consistent snapshot.  A worker that meets a failing disk reports it through
``on_disk_failure`` (md_ops.py hands it to the trio thread, which removes the disk) and answers
SD_RES_NETWORK_ERROR so that the requester retries, as md.c did; the last disk is never
removed (its errors are SD_RES_EIO).

Objects are created atomically (unique temp file, ``ftruncate`` to the full size so
unwritten parts stay sparse zeros, ``fsync``, ``rename``, directory ``fsync``); writes use
``O_DSYNC``.  ``nosync`` (``sheep -n``) drops both; so does ``sync=False`` (writeback writes,
made durable later by `sync_objects`).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from typing import Callable, Sequence

from ..proto.constants import Res
from ..proto.oid import oid_str, temp_file_name
from ..proto.structs import SdNode, SheepdogConfig, decode_epoch_file, encode_epoch_file
from .md import STALE, Disk, DiskSet, free_space, open_disk, purge_dir

log = logging.getLogger("sheep.store")


class StoreError(Exception):
    def __init__(self, result: int, detail: str = "") -> None:
        super().__init__(detail or f"store error {result:#x}")
        self.result = result


def _name(oid: int, ec_index: int | None = None) -> str:
    return oid_str(oid) if ec_index is None else f"{oid_str(oid)}_{ec_index}"


def _oid_of(name: str) -> int | None:
    """The oid of a live object file name, or None (temp files, strips, `.stale`)."""
    if len(name) != 16 or name.startswith("."):
        return None
    try:
        return int(name, 16)
    except ValueError:
        return None


def _stale_oid(name: str) -> tuple[int, int] | None:
    """(oid, epoch tag) of a `.stale/<oid>.<epoch>` name, or None."""
    oid_hex, _, tag = name.partition(".")
    try:
        return int(oid_hex, 16), int(tag) if tag.isdigit() else -1
    except ValueError:
        return None


def _move_file(src: str, dst: str, nosync: bool) -> None:
    """rename(2), or copy + rename + unlink across file systems (EXDEV)."""
    try:
        os.rename(src, dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    tmp = temp_file_name(dst)
    try:
        shutil.copyfile(src, tmp)
        if not nosync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(tmp, dst)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.unlink(src)


class ObjectStore:
    """Objects of this node, one file each, on one or more disks."""

    def __init__(self, objdirs: str | Sequence[str], *, nosync: bool = False) -> None:
        paths = [objdirs] if isinstance(objdirs, str) else list(objdirs)
        self.nosync = nosync
        self.table = DiskSet(open_disk(p) for p in paths)
        # called from worker threads with a failing disk's path (md.attach installs it)
        self.on_disk_failure: Callable[[str], None] | None = None

    @property
    def objdir(self) -> str:
        """The first disk (the only one unless multi-disk)."""
        return self.table.disks[0].path

    def set_table(self, table: DiskSet) -> None:
        """Swap the disk table (trio thread only; workers keep the snapshot they started with)."""
        self.table = table

    def path(self, oid: int, ec_index: int | None = None) -> str:
        """Where the object belongs: its file on its home disk."""
        return os.path.join(self.table.home(oid).path, _name(oid, ec_index))

    # -- errors: a missing file is NO_OBJ, a full disk NO_SPACE, anything else a failing disk

    def _disk_failed(self, disk: Disk, e: OSError) -> StoreError:
        table, hook = self.table, self.on_disk_failure
        if hook is not None and table.find(disk.path) is not None \
                and (len(table.disks) > 1 or disk in table.retiring):
            log.error("disk %s failed: %s", disk.path, e)
            hook(disk.path)
            return StoreError(Res.NETWORK_ERROR, f"disk {disk.path} failed: {e}")
        return StoreError(Res.EIO, f"{disk.path}: {e}")

    def _error(self, disk: Disk | None, e: OSError) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(Res.NO_SPACE, str(e))
        if disk is not None and (e.errno != errno.ENOENT or not os.path.isdir(disk.path)):
            return self._disk_failed(disk, e)
        return StoreError(Res.NO_OBJ if e.errno == errno.ENOENT else Res.EIO, str(e))

    def _locate(self, oid: int, table: DiskSet | None = None) -> tuple[Disk, str] | None:
        """The object's file: on its home disk, else on any other disk (not moved yet)."""
        table = table or self.table
        home = table.home(oid)
        name = _name(oid)
        for disk in (home, *(d for d in table.all() if d is not home)):
            path = os.path.join(disk.path, name)
            try:
                os.stat(path)
                return disk, path
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._disk_failed(disk, e) from e
        for disk in table.all():  # absent everywhere: is a disk itself gone?
            if not os.path.isdir(disk.path):
                raise self._disk_failed(disk, FileNotFoundError(errno.ENOENT, "disk directory vanished",
                                                                disk.path))
        return None

    def _find(self, oid: int) -> tuple[Disk | None, str]:
        found = self._locate(oid)
        if found is None:
            raise StoreError(Res.NO_OBJ)
        return found

    # -- object I/O

    def read_into(self, oid: int, offset: int, buf: memoryview, path: str | None = None) -> None:
        """Fill ``buf`` from the object (or the file ``path``); parts beyond the end read as zeros."""
        disk, path = (self.table.disk_of(path), path) if path else self._find(oid)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise self._error(disk, e) from e
        try:
            done = 0
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], offset + done)
                if n == 0:
                    buf[done:] = bytes(len(buf) - done)
                    break
                done += n
        except OSError as e:
            raise self._error(disk, e) from e
        finally:
            os.close(fd)

    def read(self, oid: int, offset: int, length: int, *, stale_ok: bool = False) -> bytearray:
        """Read the live object; with ``stale_ok`` fall back to the newest stale copy (recovery)."""
        buf = bytearray(length)
        path = None
        if stale_ok and not self.exists(oid):
            versions = self.stale_versions(oid)
            if not versions:
                raise StoreError(Res.NO_OBJ)
            path = versions[-1][1]
        self.read_into(oid, offset, memoryview(buf), path)
        return buf

    def write(self, oid: int, offset: int, data: bytes | memoryview, sync: bool = True) -> None:
        """``sync=False``: a writeback write, made durable by a later `sync_objects`."""
        disk, path = self._find(oid)
        try:
            fd = os.open(path, os.O_WRONLY | (os.O_DSYNC if sync and not self.nosync else 0))
        except OSError as e:
            raise self._error(disk, e) from e
        try:
            self._pwrite_all(fd, data, offset)
        except OSError as e:
            raise self._error(disk, e) from e
        finally:
            os.close(fd)

    @staticmethod
    def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def create_and_write(self, oid: int, offset: int, data: bytes | memoryview, obj_size: int,
                         sync: bool = True) -> None:
        """Create (or replace) the object on its home disk: zeros except ``data`` at ``offset``.
        A copy left on another disk (not moved yet) is dropped: it is older.  The rename
        keeps it atomic either way; ``sync=False`` leaves the fsyncs to `sync_objects`."""
        sync = sync and not self.nosync
        table = self.table
        home = table.home(oid)
        final = os.path.join(home.path, _name(oid))
        tmp = temp_file_name(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, obj_size)
                if len(data):
                    self._pwrite_all(fd, data, offset)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if sync:
                self._sync_dir(home.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._error(home, e) from e
        for disk in table.all():
            if disk is not home:
                self._unlink_quietly(disk, os.path.join(disk.path, _name(oid)))

    def grantable_path(self, oid: int, create_size: int = 0) -> tuple[str | None, bool]:
        """(path, created) of the object's file for a short-circuit grant: only a file on
        its home disk (one elsewhere is due to move); absent, it is created zero-filled
        when ``create_size`` is given, else (None, False)."""
        table = self.table
        found = self._locate(oid, table)
        if found is not None:
            disk, path = found
            return (path if disk is table.home(oid) else None), False
        if not create_size:
            return None, False
        self.create_and_write(oid, 0, b"", create_size, sync=False)
        return self.path(oid), True

    def _unlink_quietly(self, disk: Disk, path: str) -> bool:
        """Remove a file if present (a failing disk is reported, not raised)."""
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            self._error(disk, e)
            return False

    def sync_objects(self, oids: list[int]) -> None:
        """fdatasync each object written with ``sync=False`` (gone ones are skipped: moved
        to .stale or removed since), then the directories that hold their names."""
        if self.nosync:
            return
        dirs: dict[str, Disk] = {}
        for oid in oids:
            found = self._locate(oid)
            if found is None:
                continue
            disk, path = found
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise self._error(disk, e) from e
            try:
                os.fdatasync(fd)
            except OSError as e:
                raise self._error(disk, e) from e
            finally:
                os.close(fd)
            dirs[os.path.dirname(path)] = disk
        for path, disk in dirs.items():
            try:
                self._sync_dir(path)
            except OSError as e:
                raise self._error(disk, e) from e

    @staticmethod
    def _sync_dir(path: str) -> None:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, oid: int) -> None:
        """Remove the object wherever it is."""
        table = self.table
        self._find(oid)
        removed = [self._unlink_quietly(d, os.path.join(d.path, _name(oid))) for d in table.all()]
        if not any(removed):
            raise StoreError(Res.NO_OBJ)

    def exists(self, oid: int) -> bool:
        try:
            return self._locate(oid) is not None
        except StoreError:
            return False  # a failing disk: reported, and its objects count as lost

    def sha1(self, oid: int, obj_size: int, path: str | None = None) -> bytes:
        """SHA-1 of the full logical object (zero-extended to ``obj_size``)."""
        disk, path = (self.table.disk_of(path), path) if path else self._find(oid)
        h = hashlib.sha1()
        try:
            with open(path, "rb") as f:
                done = 0
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    done += len(chunk)
        except OSError as e:
            raise self._error(disk, e) from e
        if done < obj_size:
            h.update(bytes(obj_size - done))
        return h.digest()

    def _listdir(self, disk: Disk, sub: str = "") -> list[str]:
        """Names in a disk (or its `.stale/`); a failing disk is reported and lists nothing."""
        try:
            return os.listdir(os.path.join(disk.path, sub) if sub else disk.path)
        except OSError as e:
            self._error(disk, e)
            return []

    def list_oids(self, *, stale: bool = False) -> list[int]:
        """Objects on every disk (with ``stale``: also those only in .stale/), ascending."""
        out = set()
        for disk in self.table.all():
            out.update(o for o in map(_oid_of, self._listdir(disk)) if o is not None)
            if stale:
                out.update(s[0] for s in map(_stale_oid, self._listdir(disk, STALE)) if s is not None)
        return sorted(out)

    def object_list(self, flags: int) -> list[int]:
        """GET_OBJ_LIST payload values: every oid; with CMD_DIRECT only live ones; with
        CMD_RECOVERY (oid, newest stale tag) pairs of objects held only as stale copies."""
        from ..proto.constants import Flag
        if flags & Flag.CMD_DIRECT:
            return self.list_oids()
        if not flags & Flag.CMD_RECOVERY:
            return self.list_oids(stale=True)
        live = set(self.list_oids())
        newest: dict[int, int] = {}
        for disk in self.table.all():
            for parsed in map(_stale_oid, self._listdir(disk, STALE)):
                if parsed is not None and parsed[0] not in live and parsed[1] >= 0:
                    newest[parsed[0]] = max(newest.get(parsed[0], -1), parsed[1])
        return [v for oid in sorted(newest) for v in (oid, newest[oid])]

    # -- stale copies: objects this node no longer owns, kept until every node recovered

    def move_to_stale(self, oid: int, epoch: int) -> None:
        """Into the `.stale/` of the disk the object is on."""
        try:
            found = self._locate(oid)
        except StoreError:
            return
        if found is None:
            return
        disk, path = found
        try:
            os.rename(path, os.path.join(disk.path, STALE, f"{oid:016x}.{epoch}"))
        except FileNotFoundError:
            pass
        except OSError as e:
            self._error(disk, e)

    def stale_versions(self, oid: int) -> list[tuple[int, str]]:
        """(epoch, path) of every stale copy of ``oid`` on any disk, oldest first."""
        prefix = f"{oid:016x}."
        out = []
        for disk in self.table.all():
            for name in self._listdir(disk, STALE):
                if name.startswith(prefix) and name[len(prefix):].isdigit():
                    out.append((int(name[len(prefix):]), os.path.join(disk.path, STALE, name)))
        return sorted(out)

    def restore_stale(self, oid: int, path: str) -> None:
        """A stale copy proved current (same hash as a live replica): make it live again."""
        home = self.table.home(oid)
        try:
            _move_file(path, os.path.join(home.path, _name(oid)), self.nosync)
            if not self.nosync:
                self._sync_dir(home.path)
        except OSError as e:
            raise self._error(home, e) from e

    def purge_stale(self) -> int:
        purged = 0
        for disk in self.table.all():
            for name in self._listdir(disk, STALE):
                self._unlink_quietly(disk, os.path.join(disk.path, STALE, name))
                purged += 1
        return purged

    def purge(self) -> None:
        """Delete every object (MAKE_FS)."""
        for disk in self.table.all():
            try:
                purge_dir(disk.path)
                os.makedirs(os.path.join(disk.path, STALE), exist_ok=True)
            except OSError as e:
                self._error(disk, e)

    # -- space

    def _used(self, disk: Disk) -> int:
        total = 0
        try:
            for entry in os.scandir(disk.path):
                if entry.is_file():
                    total += entry.stat().st_blocks * 512
        except FileNotFoundError:
            pass  # a file removed while we walked
        except OSError as e:
            self._error(disk, e)
        return total

    def _free(self, disk: Disk) -> int:
        try:
            return free_space(disk.path)
        except OSError as e:
            self._error(disk, e)
            return 0

    def used_bytes(self) -> int:
        return sum(self._used(d) for d in self.table.disks)

    def free_bytes(self) -> int:
        return sum(self._free(d) for d in self.table.disks)

    def disk_usage(self) -> list[tuple[str, int, int]]:
        """(path, free, used) of each active disk in table order (MD_INFO)."""
        return [(d.path, self._free(d), self._used(d)) for d in self.table.disks]

    # -- moving objects between disks (md.py calls these under the object's lock)

    def misplaced(self, disk_path: str) -> list[int]:
        """Objects with a live or stale file on this disk that belong on another one."""
        table = self.table
        disk = table.find(disk_path)
        if disk is None:
            return []
        oids = {o for o in map(_oid_of, self._listdir(disk)) if o is not None}
        oids.update(s[0] for s in map(_stale_oid, self._listdir(disk, STALE)) if s is not None)
        return sorted(o for o in oids if table.home(o) is not disk)

    def move_home(self, oid: int, disk_path: str) -> None:
        """Move the object's files on ``disk_path`` to its home disk.  A live copy already
        at home wins (the one here is a leftover); stale copies keep their names."""
        table = self.table
        src, home = table.find(disk_path), table.home(oid)
        if src is None or src is home:
            return
        live = os.path.join(src.path, _name(oid))
        try:
            if os.path.exists(live):
                dst = os.path.join(home.path, _name(oid))
                if os.path.exists(dst):
                    os.unlink(live)
                else:
                    _move_file(live, dst, self.nosync)
            prefix = f"{oid:016x}."
            for name in os.listdir(os.path.join(src.path, STALE)):
                if name.startswith(prefix):
                    _move_file(os.path.join(src.path, STALE, name),
                               os.path.join(home.path, STALE, name), self.nosync)
            if not self.nosync:
                self._sync_dir(home.path)
        except OSError as e:
            culprit = src if table.disk_of(getattr(e, "filename", "") or "") is src else home
            raise self._error(culprit, e) from e


class MetaStore:
    """`config` and `epoch/` of a store directory."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.epoch_dir = os.path.join(base, "epoch")
        os.makedirs(self.epoch_dir, exist_ok=True)

    def load_config(self) -> SheepdogConfig | None:
        try:
            with open(os.path.join(self.base, "config"), "rb") as f:
                return SheepdogConfig.decode(f.read())
        except FileNotFoundError:
            return None

    def save_config(self, cfg: SheepdogConfig) -> None:
        path = os.path.join(self.base, "config")
        with open(path + ".tmp", "wb") as f:
            f.write(cfg.encode())
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)

    def epoch_path(self, epoch: int) -> str:
        return os.path.join(self.epoch_dir, f"{epoch:08d}")

    def save_epoch(self, epoch: int, nodes: list[SdNode], when: int) -> None:
        path = self.epoch_path(epoch)
        with open(path + ".tmp", "wb") as f:
            f.write(encode_epoch_file(nodes, when))
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)

    def load_epoch(self, epoch: int) -> tuple[list[SdNode], int] | None:
        try:
            with open(self.epoch_path(epoch), "rb") as f:
                return decode_epoch_file(f.read())
        except FileNotFoundError:
            return None

    def load_epoch_raw(self, epoch: int) -> bytes | None:
        try:
            with open(self.epoch_path(epoch), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def latest_epoch(self) -> int:
        epochs = [int(n) for n in os.listdir(self.epoch_dir) if n.isdigit()]
        return max(epochs, default=0)

    def clear_epochs(self) -> None:
        for name in os.listdir(self.epoch_dir):
            os.unlink(os.path.join(self.epoch_dir, name))
