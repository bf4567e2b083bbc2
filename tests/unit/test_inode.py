"""struct sd_inode (objects.md §3): offsets, sizes, partial buffers, speed."""
from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings, strategies as st

from sheep.proto.constants import SD_INODE_DATA_INDEX, SD_INODE_SIZE
from sheep.proto.inode import (
    BTREE_HEADER, BTREE_INDEX, BTREE_INDIRECT, DATA_VDI_ID_OFFSET, GREF_OFFSET, INODE_BTREE_MAGIC,
    Inode, InodeHeader, btree_leaf_entries, gref_offset, hyper_index_entries, index_offset,
    index_range,
)
from sheep.proto.structs import pad

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=30)
headers = st.builds(InodeHeader, names, names, u64, u64, u64, u64, u64, u8, u8, u8, u8, u32, u32,
                    u32, u32)


def observed_snapshot() -> Inode:
    """The `dump-inode` of 8015d16700000000 (dog.md §8.2)."""
    ino = Inode(InodeHeader(name="Alice", tag="snap1", create_time=0x6B069C5E2BC8C550,
                            snap_ctime=0x6B069C5E359502B0, vdi_size=1073741824, nr_copies=3,
                            block_size_shift=22, snap_id=1, vdi_id=0x15D167))
    for idx in (0, 1):
        ino.set_vid(idx, 0x15D167)
        ino.set_gref(idx, 0, 3)
    return ino


def test_constants() -> None:
    assert DATA_VDI_ID_OFFSET == 4664
    assert GREF_OFFSET == 4_198_968
    assert index_offset(0) == 4664 and index_offset(2) == 4672
    assert gref_offset(0) == 4_198_968 and gref_offset(1) == 4_198_976
    assert gref_offset(SD_INODE_DATA_INDEX) == SD_INODE_SIZE


def test_header_layout() -> None:
    hdr = observed_snapshot().header
    enc = hdr.encode()
    assert len(enc) == 4664
    assert enc[:256] == pad("Alice", 256) and enc[256:512] == pad("snap1", 256)
    assert struct.unpack_from("<QQQQQ", enc, 512) == (
        0x6B069C5E2BC8C550, 0x6B069C5E359502B0, 0, 1073741824, 0)
    assert struct.unpack_from("<BBBB", enc, 552) == (0, 0, 3, 22)
    assert struct.unpack_from("<IIII", enc, 556) == (1, 0x15D167, 0, 0)
    assert enc[572:] == bytes(4092)
    assert hdr.is_snapshot and not hdr.is_deleted
    assert hdr.object_size == 4 << 20
    assert hdr.count_data_objs == 256
    # QEMU reads copy_policy as u16 = copy_policy | store_policy << 8 at 552
    qemu = InodeHeader(copy_policy=0x11, store_policy=1).encode()
    assert struct.unpack_from("<H", qemu, 552)[0] == 0x0111


def test_header_properties() -> None:
    assert InodeHeader().is_deleted and not InodeHeader().is_snapshot
    assert InodeHeader(vdi_size=1).count_data_objs == 1
    assert InodeHeader(vdi_size=(8 << 20) + 1, block_size_shift=23).count_data_objs == 2
    assert InodeHeader(vdi_size=0).count_data_objs == 0


def test_header_decode_from_lookup_read() -> None:
    enc = observed_snapshot().header.encode()
    hdr = InodeHeader.decode(enc[:568])  # vdi_lookup reads only 568 bytes
    assert hdr.vdi_id == 0x15D167 and hdr.btree_counter == 0
    with pytest.raises(ValueError):
        InodeHeader.decode(enc[:567])


def test_full_inode_layout() -> None:
    ino = observed_snapshot()
    enc = ino.encode()
    assert len(enc) == SD_INODE_SIZE == 12_587_576
    assert struct.unpack_from("<II", enc, 4664) == (0x15D167, 0x15D167)
    assert struct.unpack_from("<iiii", enc, GREF_OFFSET) == (0, 3, 0, 3)
    assert enc[4672:GREF_OFFSET] == bytes(GREF_OFFSET - 4672)
    qemu = ino.encode(full=False)
    assert len(qemu) == 4_198_968 and qemu == enc[:4_198_968]
    back = Inode.decode(enc)
    assert back == ino
    assert list(back.used_indexes()) == [0, 1]
    assert back.gref_of(0) == (0, 3) and back.gref_of(2) == (0, 0)


@pytest.mark.parametrize("cut", [4664, 4_198_968, 4664 + 6])
def test_partial_buffers(cut: int) -> None:
    ino = observed_snapshot()
    back = Inode.decode(ino.encode()[:cut])
    assert back.header == ino.header
    assert len(back.data_vdi_id) == SD_INODE_DATA_INDEX and len(back.gref) == 2 * SD_INODE_DATA_INDEX
    assert back.get_vid(0) == (0x15D167 if cut >= 4668 else 0)
    assert back.get_vid(1) == (0x15D167 if cut >= 4672 else 0)
    assert back.gref_of(0) == (0, 0)
    assert len(back.encode()) == SD_INODE_SIZE


def test_gref_wraps_to_i32() -> None:
    ino = Inode()
    ino.set_gref(5, 1, 0xFFFFFFFF)  # a "negative" u32 counter
    assert ino.gref_of(5) == (1, -1)
    assert ino.gref_bytes(5, 6) == struct.pack("<ii", 1, -1)
    assert ino.encode()[gref_offset(5):gref_offset(6)] == struct.pack("<ii", 1, -1)


def test_index_bytes_and_range() -> None:
    ino = Inode()
    ino.set_vid(2, 0xEC359)
    assert ino.index_bytes(2, 3) == struct.pack("<I", 0xEC359)
    assert index_range(index_offset(2), 4) == range(2, 3)
    assert index_range(index_offset(2), 12) == range(2, 5)
    assert index_range(0, 4664) == range(0)
    assert index_range(0, 4666) == range(0, 1)  # partial entry counts
    assert index_range(256, 256) == range(0)
    assert index_range(GREF_OFFSET, 8) == range(0)
    assert index_range(0, SD_INODE_SIZE) == range(SD_INODE_DATA_INDEX)


def test_used_indexes_sparse_and_dense() -> None:
    ino = Inode()
    assert list(ino.used_indexes()) == []
    for idx in (0, 7, SD_INODE_DATA_INDEX - 1):
        ino.set_vid(idx, 1)
    assert list(ino.used_indexes()) == [0, 7, SD_INODE_DATA_INDEX - 1]


def test_speed() -> None:
    ino = Inode()
    for idx in range(0, SD_INODE_DATA_INDEX, 2):
        ino.data_vdi_id[idx] = 0x15D167
    buf = ino.encode()
    t0 = time.perf_counter()
    back = Inode.decode(buf)
    t1 = time.perf_counter()
    used = sum(1 for _ in back.used_indexes())
    t2 = time.perf_counter()
    assert used == SD_INODE_DATA_INDEX // 2
    assert t1 - t0 < 0.1 and t2 - t1 < 0.2  # generous bounds for slow CI


@given(headers)
def test_header_round_trip(hdr: InodeHeader) -> None:
    enc = hdr.encode()
    assert len(enc) == 4664
    assert InodeHeader.decode(enc) == hdr
    assert InodeHeader.decode(enc).encode() == enc


@settings(max_examples=20, deadline=None)
@given(headers, st.dictionaries(st.integers(0, SD_INODE_DATA_INDEX - 1),
                                st.tuples(u32, i32, i32), max_size=8))
def test_inode_round_trip(hdr: InodeHeader, entries: dict[int, tuple[int, int, int]]) -> None:
    ino = Inode(hdr)
    for idx, (vid, gen, count) in entries.items():
        ino.set_vid(idx, vid)
        ino.set_gref(idx, gen, count)
    enc = ino.encode()
    back = Inode.decode(enc)
    assert back == ino
    assert back.encode() == enc
    assert list(back.used_indexes()) == sorted(i for i, (v, _, _) in entries.items() if v)
    for idx, (vid, gen, count) in entries.items():
        assert struct.unpack_from("<I", enc, index_offset(idx))[0] == vid
        assert struct.unpack_from("<ii", enc, gref_offset(idx)) == (gen, count)


def _root(raw: bytes) -> Inode:
    """A hyper volume whose data_vdi_id area starts with ``raw`` (the B-tree root)."""
    return Inode.decode(InodeHeader(store_policy=1).encode() + raw)


def _leaf(entries: list[tuple[int, int]], depth: int = 1) -> bytes:
    return BTREE_HEADER.pack(INODE_BTREE_MAGIC, depth, len(entries)) + \
        b"".join(BTREE_INDEX.pack(i, v) for i, v in entries)


def test_btree_depth_one() -> None:
    ino = _root(_leaf([(0, 0xA), (5, 0), (9, 0xB)]))
    assert list(hyper_index_entries(ino.data_vdi_id, lambda *a: pytest.fail("no I/O"))) == \
        [(0, 0xA), (9, 0xB)]
    assert list(btree_leaf_entries(_leaf([(3, 7)]))) == [(3, 7)]
    assert list(hyper_index_entries(Inode().data_vdi_id, lambda *a: b"")) == []  # no magic


def test_btree_depth_two_reads_nodes() -> None:
    nodes = {0x1015D16700000001: _leaf([(0, 0xA), (1, 0xA)]),
             0x1015D16700000002: _leaf([(600000, 0xC)])}
    root = BTREE_HEADER.pack(INODE_BTREE_MAGIC, 2, 3) + b"".join(
        BTREE_INDIRECT.pack(m, 0, oid) for m, oid in
        ((1, 0x1015D16700000001), (7, 0), (600000, 0x1015D16700000002)))
    reads = []

    def read(oid: int, offset: int, length: int) -> bytes:
        reads.append((oid, offset, length))
        return nodes[oid][offset:offset + length]

    assert list(hyper_index_entries(_root(root).data_vdi_id, read)) == \
        [(0, 0xA), (1, 0xA), (600000, 0xC)]
    assert reads == [(0x1015D16700000001, 0, 8), (0x1015D16700000001, 8, 16),
                     (0x1015D16700000002, 0, 8), (0x1015D16700000002, 8, 8)]
