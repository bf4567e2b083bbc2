"""The sheep's side of short-circuit object I/O (contract: sheep/proto/shortcircuit.py).

`Lease` is the file clients map: its generation is bumped (`bump`) before anything that
could move, replace or freeze an object takes effect, and its flock(2) dies with the
process.  `local_obj` answers LOCAL_OBJ: a grant when this node could serve the object
(a data object, or an inode for a client's new index entries) itself right now, NO_OBJ
otherwise (the client then goes through the sheep as usual); with GRANT_DIR, the
directory in which the client may create the VDI's new objects.
"""
from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
from typing import TYPE_CHECKING

from ..proto.constants import Res, Status
from ..proto.header import Request
from ..proto.oid import is_data_obj, is_vdi_obj, oid_to_vid
from ..proto.shortcircuit import (
    GEN_OFFSET, GRANT_CREATE, GRANT_DIR, GRANT_WRITE, LEASE_NAME, LEASE_SIZE, TOKEN_LEN, Grant, encode_lease,
)
from . import gateway
from .node import Reply

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.shortcircuit")

_GEN = struct.Struct("<Q")


class Lease:
    """The generation counter shared with same-host clients.  Until `open`, only counts."""

    def __init__(self) -> None:
        self.gen = 1
        self.token = os.urandom(TOKEN_LEN)
        self.path: str | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None

    def open(self, store_dir: str) -> None:
        """Create the lease file anew (a client still mapping an older one sees it
        unlocked: that sheep is gone) and hold its lock for the life of the process."""
        final = os.path.join(store_dir, LEASE_NAME)
        tmp = f"{final}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, encode_lease(self.gen, self.token, os.getpid()))
            self._map = mmap.mmap(fd, LEASE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.path = fd, final

    def bump(self) -> None:
        """Invalidate every grant given so far (trio thread; cheap)."""
        self.gen += 1
        if self._map is not None:
            _GEN.pack_into(self._map, GEN_OFFSET, self.gen)


def _grantable(node: "Node") -> bool:
    return (node.lease.path is not None and not node.opts.gateway and node.status == Status.OK
            and not node.suspended and not node.recovery.in_recovery)


async def local_obj(node: "Node", req: Request, payload: bytes) -> Reply:
    """LOCAL_OBJ: a `Grant` on a data object (or an inode, for its index entries) this
    node owns, holds on its home disk (or creates, with GRANT_CREATE) and is not
    recovering; NO_OBJ when it cannot say yes."""
    a = req.args
    inode = is_vdi_obj(a.oid)
    if not (is_data_obj(a.oid) or inode):
        return Reply(Res.INVALID_PARMS)
    if inode and req.flags & (GRANT_CREATE | GRANT_DIR):
        return Reply(Res.INVALID_PARMS)  # an inode is made by NEW_VDI, never by a client
    write = bool(req.flags & GRANT_WRITE)
    if write and node.vdis.is_snapshot(oid_to_vid(a.oid)):  # its objects and inode are frozen
        return Reply(Res.READONLY)
    if not _grantable(node):
        return Reply(Res.NO_OBJ)
    if req.flags & GRANT_DIR:
        return _directory_grant(node, req)
    copies = gateway.obj_copies(node, a.oid, a.copies)
    owners = node.ring.oid_to_nodes(a.oid, copies)
    if not any(o.nid == node.me.nid for o in owners):
        return Reply(Res.NO_OBJ)
    gen, epoch = node.lease.gen, node.epoch  # a change from here on makes the grant stale
    size = gateway.obj_size(node, a.oid) if write and req.flags & GRANT_CREATE else 0
    async with node.object_lock(a.oid):
        path, created = await node.io(node.store.grantable_path, a.oid, size)
    if path is None:
        return Reply(Res.NO_OBJ)
    if created:
        node.writeback.note(a.oid)  # its name is made durable by the next flush
    return _grant_reply(node, req, gen, epoch, len(owners), path)


def _grant_reply(node: "Node", req: Request, gen: int, epoch: int, owners: int,
                 path: str) -> Reply:
    assert node.lease.path is not None
    grant = Grant(node.lease.token, gen, epoch, owners, node.lease.path, path).encode()
    if len(grant) > req.data_length:
        return Reply(Res.BUFFER_SMALL)
    return Reply(Res.SUCCESS, grant)


def _directory_grant(node: "Node", req: Request) -> Reply:
    """GRANT_DIR: this node's object directory, when it is the only one (no multi-disk:
    there the client could not tell an object's disk)."""
    if req.flags & (GRANT_WRITE | GRANT_CREATE) != GRANT_WRITE | GRANT_CREATE:
        return Reply(Res.INVALID_PARMS)
    disks = node.store.table.all()
    if len(disks) != 1:
        return Reply(Res.NO_OBJ)
    return _grant_reply(node, req, node.lease.gen, node.epoch, len(node.members), disks[0].path)


__all__ = ["Lease", "local_obj"]
