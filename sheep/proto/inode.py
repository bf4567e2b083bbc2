"""`struct sd_inode` (objects.md §3): the 4664-byte header, the data index and gref arrays.

The index and gref arrays are kept as ``array.array`` so that a full 12.5 MB inode decodes
and encodes with a few bulk copies instead of per-entry Python work.
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from itertools import compress
from typing import Callable, ClassVar, Iterator

from .constants import (
    SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_INODE_DATA_INDEX, SD_INODE_HEADER_SIZE, SD_INODE_INDEX_END,
    SD_INODE_SIZE, SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN,
)
from .oid import data_vid_offset
from .structs import Buf, cstr, pad

DATA_VDI_ID_OFFSET = SD_INODE_HEADER_SIZE  # 4664
GREF_OFFSET = SD_INODE_INDEX_END  # 4,198,968
GREF_SIZE = 8
INODE_BTREE_MAGIC = 0x6274
STORE_POLICY_FLAT = 0
STORE_POLICY_HYPER = 1

_LITTLE = sys.byteorder == "little"

index_offset = data_vid_offset  # byte offset of data_vdi_id[idx]; one definition, in oid.py


def gref_offset(idx: int) -> int:
    """Byte offset of ``gref[idx]`` (generation at +0, count at +4)."""
    return GREF_OFFSET + GREF_SIZE * idx


def index_range(offset: int, length: int) -> range:
    """Indexes of ``data_vdi_id`` entries touched (even partly) by a write at ``offset``.

    The gateway needs this to find which entries a WRITE_OBJ on an inode changes (§8).
    """
    start = max(offset, DATA_VDI_ID_OFFSET)
    end = min(offset + length, GREF_OFFSET)
    if end <= start:
        return range(0)
    return range((start - DATA_VDI_ID_OFFSET) // 4, (end - DATA_VDI_ID_OFFSET + 3) // 4)


@dataclass
class InodeHeader:
    """The first 4664 bytes of an inode (the part QEMU rewrites on snapshot/resize)."""

    name: str = ""
    tag: str = ""
    create_time: int = 0
    snap_ctime: int = 0
    vm_clock_nsec: int = 0
    vdi_size: int = 0
    vm_state_size: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    nr_copies: int = 0
    block_size_shift: int = SD_DEFAULT_BLOCK_SIZE_SHIFT
    snap_id: int = 0
    vdi_id: int = 0
    parent_vdi_id: int = 0
    btree_counter: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct(
        f"<{SD_MAX_VDI_LEN}s{SD_MAX_VDI_TAG_LEN}sQQQQQBBBBIIII")
    SIZE: ClassVar[int] = SD_INODE_HEADER_SIZE

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def is_deleted(self) -> bool:
        return not self.name

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def count_data_objs(self) -> int:
        return -(-self.vdi_size // self.object_size)

    def encode(self) -> bytes:
        return self._S.pack(
            pad(self.name, SD_MAX_VDI_LEN), pad(self.tag, SD_MAX_VDI_TAG_LEN), self.create_time,
            self.snap_ctime, self.vm_clock_nsec, self.vdi_size, self.vm_state_size,
            self.copy_policy, self.store_policy, self.nr_copies, self.block_size_shift,
            self.snap_id, self.vdi_id, self.parent_vdi_id, self.btree_counter,
        ).ljust(self.SIZE, b"\0")

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "InodeHeader":
        """Needs only the first 572 bytes (sheep's lookup reads 568; btree_counter is then 0)."""
        if len(buf) - offset < 568:
            raise ValueError(f"inode header needs at least 568 bytes, got {len(buf) - offset}")
        raw = bytes(buf[offset:offset + cls._S.size]).ljust(cls._S.size, b"\0")
        name, tag, *rest = cls._S.unpack(raw)
        return cls(cstr(name), cstr(tag), *rest)


def _int_array(code: str, buf: Buf, start: int, count: int) -> array:
    """``count`` items of ``code`` from ``buf[start:]``, zero-filled where ``buf`` is short."""
    a = array(code)
    itemsize = a.itemsize
    avail = max(0, min(count * itemsize, len(buf) - start))
    avail -= avail % itemsize
    if avail:
        a.frombytes(memoryview(buf)[start:start + avail])
        if not _LITTLE:
            a.byteswap()
    if len(a) < count:
        a.frombytes(bytes((count - len(a)) * itemsize))
    return a


def _wrap_i32(x: int) -> int:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@dataclass
class Inode:
    """A whole inode object: header, ``data_vdi_id[2^20]`` (u32) and ``gref[2^20]`` (i32 pairs)."""

    header: InodeHeader = field(default_factory=InodeHeader)
    data_vdi_id: array = field(default_factory=lambda: array("I", bytes(4 * SD_INODE_DATA_INDEX)))
    gref: array = field(default_factory=lambda: array("i", bytes(GREF_SIZE * SD_INODE_DATA_INDEX)))

    QEMU_SIZE: ClassVar[int] = SD_INODE_INDEX_END
    SIZE: ClassVar[int] = SD_INODE_SIZE

    def __post_init__(self) -> None:
        assert array("I").itemsize == 4 and array("i").itemsize == 4, "need 32-bit C int"

    @classmethod
    def decode(cls, buf: Buf) -> "Inode":
        """Accepts a header-only, QEMU-size or full buffer; the missing tail reads as zeros."""
        return cls(
            InodeHeader.decode(buf),
            _int_array("I", buf, DATA_VDI_ID_OFFSET, SD_INODE_DATA_INDEX),
            _int_array("i", buf, GREF_OFFSET, 2 * SD_INODE_DATA_INDEX),
        )

    def encode(self, full: bool = True) -> bytes:
        """12,587,576 bytes, or QEMU's 4,198,968 (no gref) with ``full=False``."""
        parts = [self.header.encode(), self._le(self.data_vdi_id)]
        if full:
            parts.append(self._le(self.gref))
        return b"".join(parts)

    @staticmethod
    def _le(a: array) -> bytes:
        if _LITTLE:
            return a.tobytes()
        b = array(a.typecode, a)
        b.byteswap()
        return b.tobytes()

    # -- index

    def get_vid(self, idx: int) -> int:
        return self.data_vdi_id[idx]

    def set_vid(self, idx: int, vid: int) -> None:
        self.data_vdi_id[idx] = vid

    def used_indexes(self) -> Iterator[int]:
        """Indexes with a non-zero entry, ascending (C-speed filtering via ``compress``)."""
        return compress(range(len(self.data_vdi_id)), self.data_vdi_id)

    def index_bytes(self, start: int, stop: int) -> bytes:
        """Wire bytes of ``data_vdi_id[start:stop]``, for a WRITE_OBJ at `index_offset(start)`."""
        return self._le(self.data_vdi_id[start:stop])

    # -- generational references

    def gref_of(self, idx: int) -> tuple[int, int]:
        """(generation, count) of entry ``idx``."""
        return self.gref[2 * idx], self.gref[2 * idx + 1]

    def set_gref(self, idx: int, generation: int, count: int) -> None:
        """Values wrap to i32 like the C fields (a u32 counter may be passed)."""
        self.gref[2 * idx] = _wrap_i32(generation)
        self.gref[2 * idx + 1] = _wrap_i32(count)

    def gref_bytes(self, start: int, stop: int) -> bytes:
        """Wire bytes of ``gref[start:stop]``, for a WRITE_OBJ at `gref_offset(start)`."""
        return self._le(self.gref[2 * start:2 * stop])


# ---------------------------------------------------------------- hyper volumes (B-tree index)

BTREE_HEADER = struct.Struct("<HHI")  # struct sd_index_header: magic, depth, entries
BTREE_INDEX = struct.Struct("<II")  # struct sd_index: idx, vdi_id (leaf entries)
BTREE_INDIRECT = struct.Struct("<IIQ")  # struct sd_indirect_idx: max idx below, pad, oid
_ROOT_WORDS = SD_INODE_DATA_INDEX  # the root lives in data_vdi_id[] (u32 words)

# read(oid, offset, length) -> bytes of a B-tree node object (VDI_BTREE_BIT, 4 MiB)
NodeReader = Callable[[int, int, int], Buf]


def btree_leaf_entries(buf: Buf, offset: int = 0) -> Iterator[tuple[int, int]]:
    """(idx, vid) of the ``sd_index`` entries of a B-tree node whose header is at ``offset``.

    Entries with vid 0 are skipped.  A node without the B-tree magic yields nothing.
    """
    magic, _depth, entries = BTREE_HEADER.unpack_from(buf, offset)
    if magic != INODE_BTREE_MAGIC:
        return
    start = offset + BTREE_HEADER.size
    entries = min(entries, (len(buf) - start) // BTREE_INDEX.size)
    for idx, vid in BTREE_INDEX.iter_unpack(bytes(buf[start:start + entries * BTREE_INDEX.size])):
        if vid:
            yield idx, vid


def hyper_index_entries(index: array, read_node: NodeReader) -> Iterator[tuple[int, int]]:
    """(idx, vid) of every allocated entry of a hyper volume (objects.md §3), in idx order.

    ``index`` is the inode's ``data_vdi_id`` (it holds the B-tree root).  Depth 1 keeps the
    leaves in the root; depth 2 keeps ``sd_indirect_idx`` pointers to B-tree node objects,
    which ``read_node`` fetches (first their 8-byte header, then their entries).
    """
    magic, depth, entries = BTREE_HEADER.unpack(Inode._le(index[:2]))
    if magic != INODE_BTREE_MAGIC:
        return
    words = 2 + entries * (BTREE_INDEX.size if depth <= 1 else BTREE_INDIRECT.size) // 4
    root = Inode._le(index[:min(words, _ROOT_WORDS)])
    if depth <= 1:
        yield from btree_leaf_entries(root)
        return
    body = root[BTREE_HEADER.size:]
    body = body[:len(body) - len(body) % BTREE_INDIRECT.size]
    for _max_idx, _pad, oid in BTREE_INDIRECT.iter_unpack(body):
        if not oid:
            continue
        head = bytes(read_node(oid, 0, BTREE_HEADER.size))
        magic, _d, n = BTREE_HEADER.unpack_from(head, 0)
        if magic != INODE_BTREE_MAGIC or not n:
            continue
        leaves = bytes(read_node(oid, BTREE_HEADER.size, n * BTREE_INDEX.size))
        yield from btree_leaf_entries(head + leaves)


__all__ = [
    "DATA_VDI_ID_OFFSET", "GREF_OFFSET", "GREF_SIZE", "INODE_BTREE_MAGIC", "STORE_POLICY_FLAT",
    "STORE_POLICY_HYPER", "index_offset", "gref_offset", "index_range", "InodeHeader", "Inode",
    "BTREE_HEADER", "BTREE_INDEX", "BTREE_INDIRECT", "btree_leaf_entries", "hyper_index_entries",
]
