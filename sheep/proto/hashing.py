"""FNV-1a-64 and the hashes built on it (objects.md §4, §5.1, §9.1).

Every hash Sheepdog persists or places by (VDI ids, attribute slots, ring points) is a
variant of 64-bit FNV-1a; they all live here so that placement and naming agree.
"""
from __future__ import annotations

from .structs import pad, to_bytes

FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_VID_MASK = 0xFFFFFF


def fnv1a64(data: bytes | bytearray | memoryview, h: int = FNV_BASIS) -> int:
    """`fnv_64a_buf`: FNV-1a over ``data`` starting from ``h``."""
    for byte in bytes(data):
        h = ((h ^ byte) * FNV_PRIME) & _MASK64
    return h


def fnv_64a_64(x: int, h: int) -> int:
    """`fnv_64a_64`: FNV-1a of the 8 little-endian bytes of ``x``."""
    for _ in range(8):
        h = ((h ^ (x & 0xFF)) * FNV_PRIME) & _MASK64
        x >>= 8
    return h


def sd_hash(buf: bytes | bytearray | memoryview) -> int:
    """`sd_hash`: FNV-1a of ``buf`` re-hashed with itself, to spread ring points."""
    h = fnv1a64(buf)
    return fnv_64a_64(h, h)


def sd_hash_next(h: int) -> int:
    """`sd_hash_next`: the next vnode point after ``h``."""
    return fnv_64a_64(h, h)


def sd_hash_oid(oid: int) -> int:
    """`sd_hash_oid`: the ring position of an object (= `sd_hash` of its 8 LE bytes)."""
    h = fnv_64a_64(oid, FNV_BASIS)
    return fnv_64a_64(h, h)


def hash_vdi(name: str | bytes) -> int:
    """`sd_hash_vdi`: 24-bit FNV-1a of the C string ``name`` (no 0 -> 1 adjustment here)."""
    raw = to_bytes(name)
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return fnv1a64(raw) & _VID_MASK


def attr_hash(name: bytes | str, tag: bytes | str, snap_id: int, key: bytes | str) -> int:
    """`hash_vdi_attr`: initial attribute slot over the *fixed-size* NUL-padded fields."""
    buf = pad(name, 256) + pad(tag, 256) + (snap_id & 0xFFFFFFFF).to_bytes(4, "little") + pad(key, 256)
    return fnv1a64(buf) & 0xFFFFFFFF


__all__ = [
    "FNV_BASIS", "FNV_PRIME", "fnv1a64", "fnv_64a_64", "sd_hash", "sd_hash_next", "sd_hash_oid",
    "hash_vdi", "attr_hash",
]
