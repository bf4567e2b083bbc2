"""Short-circuit object I/O: the contract between a sheep and a client on the same host.

An extension of ours (the original has nothing like it; HDFS's short-circuit local reads
are the model).  A client on the sheep's host, such as the NBD plugin, asks the sheep
for a *grant* on one object with LOCAL_OBJ (0xE0, internal protocol version) and then
reads and writes the object's file itself, saving the copies through the socket and the
sheep.  The sheep grants only what it could serve itself at that moment: it owns the
object at its current epoch, holds it on its home disk, and is not recovering.

Everything that could move, replace or freeze an object (a new epoch, a cluster
operation such as a snapshot, a disk change, losing the cluster) first bumps the
*generation* in the sheep's lease file, which clients map.  A client uses a grant only
while the generation is the one the grant names, before and after each I/O, and while
the sheep is alive (it holds an exclusive flock(2) on the lease file; the kernel drops
it when the sheep dies, however it dies).  An I/O that sees any of that change is sent
again the ordinary way, through the sheep, which then decides.

The lease file (`LEASE_SIZE` bytes, created anew by every sheep start):

    0   8  magic  b"SDLEASE1"
    8   8  generation, u64 little-endian, only ever increases
    16 16  token: random, also in every grant (proves both sides see the same file)
    32  8  pid of the sheep

LOCAL_OBJ request: `ObjArgs` with ``oid`` and ``copies``; flags `GRANT_WRITE` (the
client will write: refused for snapshot objects) and `GRANT_CREATE` (create the object,
zero-filled, if this node lacks it: the client's first write into a hole).  Reply:
SUCCESS with a `Grant` as payload, or NO_OBJ (not grantable now: use the sheep),
READONLY, INVALID_PARMS.

Directory grants (`GRANT_DIR`, with GRANT_WRITE and GRANT_CREATE): the right to create,
without asking again, the objects of ``oid``'s VDI that this node owns at the grant's
epoch.  The grant's ``path`` is the directory that holds them and ``owners`` the number
of members at that epoch.  A node whose objects do not all live in one directory
(several disks) answers NO_OBJ, and so does a node that cannot grant at all.  A client
may create ``<path>/<oid %016x>`` itself (zero-filled to the object size, through a
`temp_file_name` and link(2), never replacing a file: one there is used, as the node
does for a per-object grant) for an object that is

  * a hole of a VDI the client holds the lock of (it is the only writer), and
  * placed, by a ring the client built from the node list at the grant's epoch, on
    nodes that each gave it a directory grant at that epoch with unchanged generation.

The generation is checked before the file is created and, as for every grant, before
and after each write.  While it is unchanged the node is still at that epoch, so the
client's ring is the node's ring and the object is the node's to hold.  The client makes
the names it created durable itself (fsync of the directory at its next flush).  This
saves a round trip per new object when a VDI is filled.

Inode grants: LOCAL_OBJ on a VDI object (``vid_to_vdi_oid``) with GRANT_WRITE grants the
inode's file on its owners, as for a data object (never created: INVALID_PARMS with
GRANT_CREATE or GRANT_DIR; READONLY once the VDI is a snapshot).  A client that holds the
VDI's lock may write into it, under the same checks, only index entries that it turns
from a hole (0) into the VDI's own vid, each for an object it created: the one index
change with no side effect in the sheep (no reference to release: objects.md §8).  Every
other index or header change goes through the sheep.  An entry whose write fails its
check after reaching the file is sent again through the sheep, which answers READONLY
to any non-zero entry in a snapshot's index, even an unchanged one: the entry may have
reached the old inode after the snapshot copied it.  This saves the sheep's read, write
and round trip per new object's entry.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

LEASE_MAGIC = b"SDLEASE1"
LEASE_SIZE = 64
LEASE_NAME = "lease"  # in the store directory
GEN_OFFSET = 8
TOKEN_LEN = 16
_LEASE = struct.Struct("<8sQ16sQ")

GRANT_CREATE = 0x0100  # the CREAT/WILDCARD bit
GRANT_WRITE = 0x0200   # the EXCL bit
GRANT_DIR = 0x0400     # the DEL bit: a directory grant (above)

_GRANT = struct.Struct("<16sQII")
MAX_GRANT = _GRANT.size + 2 * 4096


def encode_lease(gen: int, token: bytes, pid: int) -> bytes:
    return _LEASE.pack(LEASE_MAGIC, gen, token, pid).ljust(LEASE_SIZE, b"\0")


def decode_lease(buf: bytes | bytearray | memoryview) -> tuple[int, bytes, int]:
    """(generation, token, pid); ValueError if ``buf`` is not a lease."""
    if len(buf) < _LEASE.size:
        raise ValueError("lease file too short")
    magic, gen, token, pid = _LEASE.unpack_from(buf)
    if magic != LEASE_MAGIC:
        raise ValueError("not a sheep lease file")
    return gen, token, pid


@dataclass(frozen=True, slots=True)
class Grant:
    """A sheep's permission to do I/O on ``path`` while its lease stays at ``gen``.

    ``owners`` is how many nodes own the object at ``epoch``: a client writes through
    grants only when it holds one from each of them, at one epoch."""

    token: bytes
    gen: int
    epoch: int
    owners: int
    lease_path: str
    path: str

    def encode(self) -> bytes:
        return (_GRANT.pack(self.token, self.gen, self.epoch, self.owners)
                + self.lease_path.encode() + b"\0" + self.path.encode() + b"\0")

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> "Grant":
        buf = bytes(buf)
        if len(buf) < _GRANT.size:
            raise ValueError("grant too short")
        token, gen, epoch, owners = _GRANT.unpack_from(buf)
        parts = buf[_GRANT.size:].split(b"\0")
        if len(parts) < 3 or not parts[0] or not parts[1]:
            raise ValueError("grant without paths")
        return cls(token, gen, epoch, owners, parts[0].decode(), parts[1].decode())


__all__ = ["Grant", "GRANT_CREATE", "GRANT_DIR", "GRANT_WRITE", "LEASE_MAGIC", "LEASE_NAME", "LEASE_SIZE",
           "GEN_OFFSET", "TOKEN_LEN", "MAX_GRANT", "decode_lease", "encode_lease"]
