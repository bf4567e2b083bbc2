"""Consistent hashing (objects.md §9): vectors, weighting and ring invariants."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from sheep.proto.placement import Ring, _f32, _u64_to_f32, recalculate_vnodes, vnode_points
from sheep.proto.structs import NodeId, SdNode, sort_nodes


def local(port: int, zone: int, vnodes: int = 128, space: int = 0) -> SdNode:
    return SdNode(NodeId.from_host("127.0.0.1", port), vnodes, zone, space)


THREE = [local(7000, 0), local(7001, 1), local(7002, 2)]


def test_vnode_points_vector() -> None:
    pts = vnode_points(NodeId.from_host("127.0.0.1", 7000), 128)
    assert len(pts) == 128
    assert pts[:3] == [0x3AF2CBA6E538CDF3, 0xFD38432FD111924B, 0x2AD2BEF8F506E35D]
    assert vnode_points(NodeId.from_host("127.0.0.1", 7000), 0) == []


@pytest.mark.parametrize("oid, ports", [
    (0x8015D16800000000, [7002, 7000, 7001]),
    (0x0015D16700000001, [7001, 7000, 7002]),
    (0x0015D16800000002, [7002, 7001, 7000]),
    (0x00A12A1600000000, [7002, 7000, 7001]),  # EC 2:1: strips 0, 1 and parity
    (0x8015D16700000000, [7000, 7001, 7002]),
])
def test_observed_placement(oid: int, ports: list[int]) -> None:
    ring = Ring(THREE)
    assert [n.nid.port for n in ring.oid_to_nodes(oid, 3)] == ports
    assert [n.nid.port for n in ring.oid_to_nodes(oid, 2)] == ports[:2]
    assert [n.nid.port for n in ring.oid_to_nodes(oid, 31)] == ports  # n = min(copies, zones)


def test_ring_basics() -> None:
    ring = Ring(THREE)
    assert ring.nr_zones == 3 and len(ring) == 384
    assert Ring([]).oid_to_nodes(1, 3) == []
    assert ring.oid_to_nodes(1, 0) == []
    gw = local(7003, 3, vnodes=0)
    with_gw = Ring(THREE + [gw])
    assert with_gw.nr_zones == 3 and gw not in with_gw.nodes  # gateways own nothing
    assert with_gw.oid_to_nodes(0x8015D16800000000, 3) == ring.oid_to_nodes(0x8015D16800000000, 3)


def test_same_zone_never_twice() -> None:
    nodes = [local(7000, 0), local(7001, 0), local(7002, 1)]
    ring = Ring(nodes)
    assert ring.nr_zones == 2
    for oid in range(200):
        owners = ring.oid_to_nodes(oid, 3)
        assert len(owners) == 2 and len({n.zone for n in owners}) == 2


node_sets = st.lists(
    st.tuples(st.integers(1, 65535), st.integers(0, 5), st.integers(0, 64)),
    min_size=1, max_size=7, unique_by=lambda t: t[0],
).map(lambda ts: [local(p, z, v) for p, z, v in ts])


@given(node_sets, st.integers(0, 2**64 - 1), st.integers(0, 31))
def test_ring_invariants(nodes: list[SdNode], oid: int, copies: int) -> None:
    ring = Ring(nodes)
    owners = ring.oid_to_nodes(oid, copies)
    storing = [n for n in nodes if n.nr_vnodes > 0]
    assert ring.nr_zones == len({n.zone for n in storing})
    assert len(owners) == min(copies, ring.nr_zones)
    assert len({n.zone for n in owners}) == len(owners)
    assert all(n in storing for n in owners)
    shuffled = list(nodes)
    random.Random(oid).shuffle(shuffled)
    assert Ring(shuffled).oid_to_nodes(oid, copies) == owners  # input order does not matter
    assert ring.oid_to_nodes(oid, copies) == owners
    # fewer copies is a prefix of more copies
    assert ring.oid_to_nodes(oid, max(copies - 1, 0)) == owners[:max(copies - 1, 0)]


# ---------------------------------------------------------------- auto vnodes


def test_recalculate_equal_and_observed() -> None:
    spaces = [84815761408, 84802072576, 84681519104]  # wire.md §11 GET_NODE_LIST
    nodes = [local(7000 + i, i, vnodes=0, space=s) for i, s in enumerate(spaces)]
    assert [n.nr_vnodes for n in recalculate_vnodes(nodes)] == [128, 128, 128]
    eq = [local(7000 + i, i, vnodes=1, space=1 << 30) for i in range(4)]
    assert [n.nr_vnodes for n in recalculate_vnodes(eq)] == [128] * 4


def test_recalculate_weights_and_gateways() -> None:
    nodes = [local(7000, 0, space=100), local(7001, 1, space=300), local(7002, 2, space=0)]
    out = recalculate_vnodes(nodes)
    # avg = 200: 128*0.5 = 64, 128*1.5 = 192, gateway 0
    assert [n.nr_vnodes for n in out] == [64, 192, 0]
    assert [n.nid for n in out] == [n.nid for n in nodes]
    only_gw = [local(7000, 0, vnodes=5, space=0)]
    assert recalculate_vnodes(only_gw) == only_gw  # unchanged, as in sheep


def test_recalculate_ties_to_even() -> None:
    # avg = 256 -> factors 1/256 and 511/256: 128*factor = 0.5 and 255.5 -> 0 and 256
    nodes = [local(7000, 0, space=1), local(7001, 1, space=511)]
    assert [n.nr_vnodes for n in recalculate_vnodes(nodes)] == [0, 256]
    # avg = 512: 3/512*128 = 0.75 -> 1; 1021/512*128 = 255.25 -> 255
    nodes = [local(7000, 0, space=3), local(7001, 1, space=1021)]
    assert [n.nr_vnodes for n in recalculate_vnodes(nodes)] == [1, 255]


def test_u64_to_f32_single_rounding() -> None:
    n = (1 << 60) + (1 << 36) + 1  # just above a float32 tie; float(n) would round to the tie
    assert _u64_to_f32(n) == float((1 << 60) + (1 << 37))
    assert _f32(float(n)) == float(1 << 60)  # the double-rounding trap avoided above
    assert _u64_to_f32((1 << 60) + (1 << 36)) == float(1 << 60)  # exact tie -> even
    assert _u64_to_f32(0) == 0.0 and _u64_to_f32(2**64 - 1) == 2.0**64


@given(st.integers(0, 2**53))
def test_u64_to_f32_matches_cast(n: int) -> None:
    assert _u64_to_f32(n) == _f32(float(n))


def test_sort_nodes_is_node_order() -> None:
    nodes = [local(7002, 2), NodeId.from_host("10.0.0.1", 9), local(7000, 0)]
    nodes[1] = SdNode(nodes[1])
    assert [str(n) for n in sort_nodes(nodes)] == ["10.0.0.1:9", "127.0.0.1:7000", "127.0.0.1:7002"]
