"""Object id helpers (objects.md §1)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sheep.proto import oid as o
from sheep.proto.constants import SD_INODE_SIZE

VID = 0x15D167
vids = st.integers(0, (1 << 24) - 1)
low32 = st.integers(0, 2**32 - 1)


def test_spec_examples() -> None:
    assert o.oid_str(o.vid_to_data_oid(VID, 1)) == "0015d16700000001"
    assert o.oid_str(o.vid_to_vdi_oid(0x15D168)) == "8015d16800000000"
    assert o.oid_str(o.vid_to_vmstate_oid(VID, 0)) == "4015d16700000000"
    assert o.oid_str(o.vid_to_attr_oid(VID, 0x0C71E8E6)) == "2015d1670c71e8e6"
    assert o.oid_str(o.vid_to_btree_oid(VID, 1)) == "1015d16700000001"
    assert o.oid_str(o.ledger_oid(o.vid_to_data_oid(VID, 0))) == "0815d16700000000"


@pytest.mark.parametrize("oid, size", [
    (0x8015D16800000000, 12_587_576),
    (0x2015D1670C71E8E6, 66_320),
    (0x1015D16700000001, 4_194_304),
    (0x0815D16700000000, 4_194_304),
    (0x0015D16700000001, 4_194_304),
    (0x4015D16700000000, 4_194_304),
])
def test_object_size(oid: int, size: int) -> None:
    assert o.object_size(oid) == size


def test_object_size_shift() -> None:
    assert o.object_size(0x00D6956600000000, 23) == 8 << 20
    assert o.object_size(0x40D6956600000000, 20) == 1 << 20
    assert o.object_size(0x80D6956600000000, 23) == SD_INODE_SIZE  # inode size never scales


def test_data_vid_offset() -> None:
    assert o.data_vid_offset(0) == 4664
    assert o.data_vid_offset(2) == 4672
    assert o.data_vid_offset((1 << 20) - 1) == 4_198_964


def test_oid_str_pads() -> None:
    assert o.oid_str(1) == "0000000000000001"


@given(vids, low32)
def test_data_round_trip(vid: int, idx: int) -> None:
    oid = o.vid_to_data_oid(vid, idx)
    assert o.oid_to_vid(oid) == vid and o.data_oid_to_idx(oid) == idx
    assert o.is_data_obj(oid)
    assert not (o.is_vdi_obj(oid) or o.is_vmstate_obj(oid) or o.is_attr_obj(oid)
                or o.is_btree_obj(oid) or o.is_ledger_obj(oid))
    led = o.ledger_oid(oid)
    assert o.is_ledger_obj(led) and not o.is_data_obj(led)
    assert o.oid_to_vid(led) == vid  # ledger bit lies outside the vid mask
    assert o.ledger_to_data_oid(led) == oid


@given(vids, low32)
def test_typed_oids(vid: int, n: int) -> None:
    cases = [
        (o.vid_to_vdi_oid(vid), o.is_vdi_obj),
        (o.vid_to_vmstate_oid(vid, n), o.is_vmstate_obj),
        (o.vid_to_attr_oid(vid, n), o.is_attr_obj),
        (o.vid_to_btree_oid(vid, n), o.is_btree_obj),
    ]
    preds = [o.is_vdi_obj, o.is_vmstate_obj, o.is_attr_obj, o.is_btree_obj, o.is_ledger_obj]
    for oid, pred in cases:
        assert o.oid_to_vid(oid) == vid
        assert [p(oid) for p in preds] == [p is pred for p in preds]
        assert not o.is_data_obj(oid)
        assert int(o.oid_str(oid), 16) == oid and len(o.oid_str(oid)) == 16
