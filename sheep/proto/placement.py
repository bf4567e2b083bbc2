"""Consistent-hashing placement (objects.md §9): vnode points, auto weighting, oid -> nodes.

Every node and dog must compute exactly the same owners for an object, so this follows
sheep's `oid_to_vnodes` and `recalculate_vnodes` bit for bit, float32 rounding included.
"""
from __future__ import annotations

import struct
from bisect import bisect_left
from dataclasses import replace
from typing import Iterable, Sequence

from .constants import SD_DEFAULT_VNODES
from .hashing import sd_hash, sd_hash_next, sd_hash_oid
from .structs import NodeId, SdNode

_F32 = struct.Struct("<f")


def vnode_points(nid: NodeId, nr_vnodes: int) -> list[int]:
    """Ring points of a node: h = sd_hash(addr ‖ port LE16); points next(h), next(next(h)), ..."""
    h = sd_hash(nid.addr + nid.port.to_bytes(2, "little"))
    points = []
    for _ in range(nr_vnodes):
        h = sd_hash_next(h)
        points.append(h)
    return points


def _f32(x: float) -> float:
    """Round a double to the nearest float32 (ties to even), as a C ``(float)`` cast does."""
    return _F32.unpack(_F32.pack(x))[0]


def _u64_to_f32(n: int) -> float:
    """``(float)n`` for a u64 with a single rounding (``float(n)`` first would round twice)."""
    excess = n.bit_length() - 24
    if excess <= 0:
        return float(n)
    q, r = divmod(n, 1 << excess)
    half = 1 << (excess - 1)
    if r > half or (r == half and q & 1):
        q += 1
    return float(q << excess)


def recalculate_vnodes(nodes: Sequence[SdNode]) -> list[SdNode]:
    """Auto-vnodes weighting: ``rintf(128 * (float)space / (float)avg)`` per node.

    ``avg`` is the integer mean space of nodes with space > 0; gateways (space 0) get 0.
    With no storing node at all the list is returned unchanged, as in sheep.
    """
    spaces = [n.space for n in nodes if n.space]
    if not spaces:
        return list(nodes)
    avg = _u64_to_f32(sum(spaces) // len(spaces))
    out = []
    for n in nodes:
        # float32 quotient (a double quotient rounded once to f32 is exact), then the exact *128
        factor = _f32(_u64_to_f32(n.space) / avg)
        out.append(replace(n, nr_vnodes=int(round(_f32(SD_DEFAULT_VNODES * factor)))))
    return out


class Ring:
    """The sorted vnode ring of the storing nodes (those with ``nr_vnodes > 0``)."""

    __slots__ = ("nodes", "nr_zones", "_points", "_owners")

    def __init__(self, nodes: Iterable[SdNode]) -> None:
        self.nodes: list[SdNode] = [n for n in nodes if n.nr_vnodes > 0]
        self.nr_zones: int = len({n.zone for n in self.nodes})
        pairs = sorted(
            (p, i) for i, n in enumerate(self.nodes) for p in vnode_points(n.nid, n.nr_vnodes)
        )
        self._points: list[int] = [p for p, _ in pairs]
        self._owners: list[int] = [i for _, i in pairs]

    def __len__(self) -> int:
        """Number of vnode points."""
        return len(self._points)

    def oid_to_nodes(self, oid: int, copies: int) -> list[SdNode]:
        """Owners of ``oid``: replica / EC strip ``i`` is element ``i`` (`oid_to_vnodes`)."""
        want = min(copies, self.nr_zones)
        if want <= 0:
            return []
        points, owners, nodes = self._points, self._owners, self.nodes
        total = len(points)
        pos = bisect_left(points, sd_hash_oid(oid))
        chosen: list[SdNode] = []
        zones: set[int] = set()
        for step in range(total):
            node = nodes[owners[(pos + step) % total]]
            if node.zone not in zones:
                zones.add(node.zone)
                chosen.append(node)
                if len(chosen) == want:
                    break
        return chosen


__all__ = ["vnode_points", "recalculate_vnodes", "Ring"]
