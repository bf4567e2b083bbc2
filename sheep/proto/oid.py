"""Object ids (objects.md §1): building, classifying and sizing them.

An oid is a u64: type bits 59-63, the 24-bit vid in bits 32-55 and an index /
attribute id / B-tree node id in bits 0-31.
"""
from __future__ import annotations

import os

from .constants import (
    LEDGER_BIT, SD_ATTR_OBJ_SIZE, SD_DEFAULT_BLOCK_SIZE_SHIFT, SD_INODE_DATA_INDEX_SIZE,
    SD_INODE_HEADER_SIZE, SD_INODE_SIZE, SD_LEDGER_OBJ_SIZE, SD_VDI_MASK, VDI_ATTR_BIT,
    VDI_BIT, VDI_BTREE_BIT, VDI_SPACE_SHIFT, VMSTATE_BIT,
)

_TYPE_BITS = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT
_LOW32 = 0xFFFFFFFF


def _vid_part(vid: int) -> int:
    return (vid << VDI_SPACE_SHIFT) & SD_VDI_MASK


def vid_to_vdi_oid(vid: int) -> int:
    """Inode object of ``vid``."""
    return VDI_BIT | _vid_part(vid)


def vid_to_data_oid(vid: int, idx: int) -> int:
    return _vid_part(vid) | (idx & _LOW32)


def vid_to_vmstate_oid(vid: int, idx: int) -> int:
    return VMSTATE_BIT | _vid_part(vid) | (idx & _LOW32)


def vid_to_attr_oid(vid: int, attr_id: int) -> int:
    """Attribute object; ``vid`` is the *name hash*, not the current vid (objects.md §4)."""
    return VDI_ATTR_BIT | _vid_part(vid) | (attr_id & _LOW32)


def vid_to_btree_oid(vid: int, node_id: int) -> int:
    return VDI_BTREE_BIT | _vid_part(vid) | (node_id & _LOW32)


def ledger_oid(data_oid: int) -> int:
    """Reference-count ledger of a data object (objects.md §8)."""
    return LEDGER_BIT | data_oid


def ledger_to_data_oid(oid: int) -> int:
    return oid & ~LEDGER_BIT


def oid_to_vid(oid: int) -> int:
    return (oid & SD_VDI_MASK) >> VDI_SPACE_SHIFT


def data_oid_to_idx(oid: int) -> int:
    return oid & _LOW32


def is_data_obj(oid: int) -> bool:
    return not oid & _TYPE_BITS


def is_vdi_obj(oid: int) -> bool:
    return bool(oid & VDI_BIT)


def is_vmstate_obj(oid: int) -> bool:
    return bool(oid & VMSTATE_BIT)


def is_attr_obj(oid: int) -> bool:
    return bool(oid & VDI_ATTR_BIT)


def is_btree_obj(oid: int) -> bool:
    return bool(oid & VDI_BTREE_BIT)


def is_ledger_obj(oid: int) -> bool:
    return bool(oid & LEDGER_BIT)


def data_vid_offset(idx: int) -> int:
    """Byte offset of ``data_vdi_id[idx]`` inside an inode object."""
    return SD_INODE_HEADER_SIZE + 4 * idx


def object_size(oid: int, block_size_shift: int = SD_DEFAULT_BLOCK_SIZE_SHIFT) -> int:
    """`get_objsize`: inode, then attr, then btree, then ledger, else data/vmstate size."""
    if is_vdi_obj(oid):
        return SD_INODE_SIZE
    if is_attr_obj(oid):
        return SD_ATTR_OBJ_SIZE
    if is_btree_obj(oid):
        return SD_INODE_DATA_INDEX_SIZE
    if is_ledger_obj(oid):
        return SD_LEDGER_OBJ_SIZE
    return 1 << block_size_shift


def oid_str(oid: int) -> str:
    """The canonical ``%016x`` spelling used in logs, file names and dog output."""
    return f"{oid:016x}"


def temp_file_name(final: str) -> str:
    """A fresh temporary name beside an object file: ``<final>.<8 hex>.tmp``.  Objects are
    written there and renamed (or linked) into place; the store never takes such a name
    for an object."""
    return f"{final}.{os.urandom(4).hex()}.tmp"


__all__ = [
    "vid_to_vdi_oid", "vid_to_data_oid", "vid_to_vmstate_oid", "vid_to_attr_oid",
    "vid_to_btree_oid", "ledger_oid", "ledger_to_data_oid", "oid_to_vid", "data_oid_to_idx",
    "is_data_obj", "is_vdi_obj", "is_vmstate_obj", "is_attr_obj", "is_btree_obj", "is_ledger_obj",
    "data_vid_offset", "object_size", "oid_str", "temp_file_name",
]
