"""Hash vectors from objects.md §4, §5.1 and §9."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sheep.proto.hashing import (
    FNV_BASIS, FNV_PRIME, attr_hash, fnv1a64, fnv_64a_64, hash_vdi, sd_hash, sd_hash_next,
    sd_hash_oid,
)


def test_constants() -> None:
    assert FNV_BASIS == 0xCBF29CE484222325
    assert FNV_PRIME == 0x100000001B3


def test_fnv1a64_alice() -> None:
    assert fnv1a64(b"Alice") == 0x123909CB9F15D167
    assert fnv1a64(b"") == FNV_BASIS


@pytest.mark.parametrize("name, vid", [
    ("Alice", 0x15D167), ("Bob", 0x0316B4), ("WireVdi", 0x0EC359), ("EcVdi", 0xA12A16),
    ("Hyper", 0x70ADB9), ("Prealloc", 0xCB79E7), ("Big23", 0xD69566), ("L1", 0xAFA9EE),
    ("W1", 0xC97365),
])
def test_hash_vdi_vectors(name: str, vid: int) -> None:
    assert hash_vdi(name) == vid
    assert hash_vdi(name.encode()) == vid
    assert hash_vdi(name.encode().ljust(256, b"\0")) == vid  # only strlen bytes count


def test_attr_hash_vector() -> None:
    assert attr_hash("Alice", "", 0, "mykey") == 0x0C71E8E6
    assert attr_hash(b"Alice", b"", 0, b"mykey") == 0x0C71E8E6


def test_attr_hash_rejects_oversized() -> None:
    with pytest.raises(ValueError):
        attr_hash("x" * 257, "", 0, "k")


def test_sd_hash_node_vector() -> None:
    raw = bytes(12) + bytes([127, 0, 0, 1]) + (7000).to_bytes(2, "little")
    assert raw.hex() == "000000000000000000000000" "7f000001" "581b"
    h = sd_hash(raw)
    assert h == 0x9CB3D6DD0A4C0F9F
    h1 = sd_hash_next(h)
    h2 = sd_hash_next(h1)
    h3 = sd_hash_next(h2)
    assert (h1, h2, h3) == (0x3AF2CBA6E538CDF3, 0xFD38432FD111924B, 0x2AD2BEF8F506E35D)


@pytest.mark.parametrize("oid, h", [
    (0x8015D16800000000, 0x129F1AEFE0A81C51),
    (0x0015D16700000001, 0x30728C766A4BAF44),
    (0x0015D16800000002, 0x7299DE1F8FAD56A8),
    (0x00A12A1600000000, 0x567C6EF1A1B4AFF7),
    (0x8015D16700000000, 0xEB15EE8024D334A7),
])
def test_sd_hash_oid_vectors(oid: int, h: int) -> None:
    assert sd_hash_oid(oid) == h


@given(st.integers(0, 2**64 - 1))
def test_sd_hash_oid_is_sd_hash_of_le_bytes(oid: int) -> None:
    assert sd_hash_oid(oid) == sd_hash(oid.to_bytes(8, "little"))


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_fnv_64a_64_is_buf_of_le_bytes(x: int, h: int) -> None:
    assert fnv_64a_64(x, h) == fnv1a64(x.to_bytes(8, "little"), h)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_fnv1a64_chains(a: bytes, b: bytes) -> None:
    assert fnv1a64(a + b) == fnv1a64(b, fnv1a64(a))
    assert 0 <= fnv1a64(a + b) < 2**64


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=40))
def test_hash_vdi_range(name: str) -> None:
    assert 0 <= hash_vdi(name) < 1 << 24
    assert hash_vdi(name) == fnv1a64(name.encode("utf-8", "surrogateescape")) & 0xFFFFFF
