"""The plain object store (objects.md §11): `obj/<oid %016x>`, `config`, `epoch/NNNNNNNN`.

Every method here is blocking and is called from a worker thread
(`trio.to_thread.run_sync`); none of them touches daemon state.  Objects are created
atomically (unique temp file, ``ftruncate`` to the full size so unwritten parts stay
sparse zeros, ``fsync``, ``rename``, directory ``fsync``); writes use ``O_DSYNC``.
``nosync`` (``sheep -n``) drops both.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid

from ..proto.constants import Res
from ..proto.structs import SdNode, SheepdogConfig, decode_epoch_file, encode_epoch_file


class StoreError(Exception):
    def __init__(self, result: int, detail: str = "") -> None:
        super().__init__(detail or f"store error {result:#x}")
        self.result = result


def _oserror_result(e: OSError) -> int:
    if e.errno == errno.ENOENT:
        return Res.NO_OBJ
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return Res.NO_SPACE
    return Res.EIO


class ObjectStore:
    """Objects of this node, one file each, under ``objdir``."""

    def __init__(self, objdir: str, *, nosync: bool = False) -> None:
        self.objdir = objdir
        self.nosync = nosync
        os.makedirs(os.path.join(objdir, ".stale"), exist_ok=True)

    def path(self, oid: int, ec_index: int | None = None) -> str:
        name = f"{oid:016x}" if ec_index is None else f"{oid:016x}_{ec_index}"
        return os.path.join(self.objdir, name)

    def read_into(self, oid: int, offset: int, buf: memoryview, path: str | None = None) -> None:
        """Fill ``buf`` from the object (or the file ``path``); parts beyond the end read as zeros."""
        try:
            fd = os.open(path or self.path(oid), os.O_RDONLY)
        except OSError as e:
            raise StoreError(_oserror_result(e), str(e)) from e
        try:
            done = 0
            while done < len(buf):
                n = os.preadv(fd, [buf[done:]], offset + done)
                if n == 0:
                    buf[done:] = bytes(len(buf) - done)
                    break
                done += n
        except OSError as e:
            raise StoreError(Res.EIO, str(e)) from e
        finally:
            os.close(fd)

    def read(self, oid: int, offset: int, length: int, *, stale_ok: bool = False) -> bytearray:
        """Read from obj/; with ``stale_ok`` fall back to the newest stale copy (recovery)."""
        buf = bytearray(length)
        path = None
        if stale_ok and not self.exists(oid):
            versions = self.stale_versions(oid)
            if not versions:
                raise StoreError(Res.NO_OBJ)
            path = versions[-1][1]
        self.read_into(oid, offset, memoryview(buf), path)
        return buf

    def write(self, oid: int, offset: int, data: bytes | memoryview) -> None:
        flags = os.O_WRONLY | (0 if self.nosync else os.O_DSYNC)
        try:
            fd = os.open(self.path(oid), flags)
        except OSError as e:
            raise StoreError(_oserror_result(e), str(e)) from e
        try:
            self._pwrite_all(fd, data, offset)
        except OSError as e:
            raise StoreError(_oserror_result(e), str(e)) from e
        finally:
            os.close(fd)

    @staticmethod
    def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def create_and_write(self, oid: int, offset: int, data: bytes | memoryview, obj_size: int) -> None:
        """Create (or replace) the object: zeros except ``data`` at ``offset``."""
        final = self.path(oid)
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, obj_size)
                if len(data):
                    self._pwrite_all(fd, data, offset)
                if not self.nosync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if not self.nosync:
                self._sync_dir()
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StoreError(_oserror_result(e), str(e)) from e

    def _sync_dir(self) -> None:
        dfd = os.open(self.objdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, oid: int) -> None:
        try:
            os.unlink(self.path(oid))
        except OSError as e:
            raise StoreError(_oserror_result(e), str(e)) from e

    def exists(self, oid: int) -> bool:
        return os.path.exists(self.path(oid))

    def sha1(self, oid: int, obj_size: int, path: str | None = None) -> bytes:
        """SHA-1 of the full logical object (zero-extended to ``obj_size``)."""
        h = hashlib.sha1()
        try:
            with open(path or self.path(oid), "rb") as f:
                done = 0
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    done += len(chunk)
        except OSError as e:
            raise StoreError(_oserror_result(e), str(e)) from e
        if done < obj_size:
            h.update(bytes(obj_size - done))
        return h.digest()

    def list_oids(self, *, stale: bool = False) -> list[int]:
        """Objects in obj/ (with ``stale``: also those only in .stale/), ascending."""
        out = set()
        for name in os.listdir(self.objdir):
            if len(name) == 16 and not name.startswith("."):
                try:
                    out.add(int(name, 16))
                except ValueError:
                    pass
        if stale:
            for name in os.listdir(self.stale_dir):
                try:
                    out.add(int(name.split(".", 1)[0], 16))
                except ValueError:
                    pass
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
        for name in os.listdir(self.stale_dir):
            oid_hex, _, tag = name.partition(".")
            try:
                oid = int(oid_hex, 16)
            except ValueError:
                continue
            if oid not in live and tag.isdigit():
                newest[oid] = max(newest.get(oid, -1), int(tag))
        return [v for oid in sorted(newest) for v in (oid, newest[oid])]

    # -- stale copies: objects this node no longer owns, kept until every node recovered

    @property
    def stale_dir(self) -> str:
        return os.path.join(self.objdir, ".stale")

    def move_to_stale(self, oid: int, epoch: int) -> None:
        try:
            os.rename(self.path(oid), os.path.join(self.stale_dir, f"{oid:016x}.{epoch}"))
        except FileNotFoundError:
            pass

    def stale_versions(self, oid: int) -> list[tuple[int, str]]:
        """(epoch, path) of every stale copy of ``oid``, oldest first."""
        prefix = f"{oid:016x}."
        out = []
        for name in os.listdir(self.stale_dir):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                out.append((int(name[len(prefix):]), os.path.join(self.stale_dir, name)))
        return sorted(out)

    def restore_stale(self, oid: int, path: str) -> None:
        """A stale copy proved current (same hash as a live replica): make it live again."""
        os.rename(path, self.path(oid))
        if not self.nosync:
            self._sync_dir()

    def purge_stale(self) -> int:
        names = os.listdir(self.stale_dir)
        for name in names:
            os.unlink(os.path.join(self.stale_dir, name))
        return len(names)

    def purge(self) -> None:
        """Delete every object (MAKE_FS)."""
        for name in os.listdir(self.objdir):
            p = os.path.join(self.objdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        os.makedirs(os.path.join(self.objdir, ".stale"), exist_ok=True)

    def used_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.objdir):
            if entry.is_file():
                total += entry.stat().st_blocks * 512
        return total

    def free_bytes(self) -> int:
        st = os.statvfs(self.objdir)
        return st.f_bavail * st.f_frsize


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
