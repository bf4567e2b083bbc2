"""Request counters behind STAT / `dog node stat` (wire.md §10.7; `stat_request_begin`).

Gateway requests (object I/O from clients, plus DISCARD_OBJ and FLUSH_VDI) and peer
requests are counted when they are dispatched; "active" is the number still running.
"rx" counts the payload of WRITE-flagged requests, "tx" the `data_length` of the others.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..proto.constants import Flag, Op
from ..proto.header import Request
from ..proto.structs import SdStat

GATEWAY_EXTRA = frozenset({Op.DISCARD_OBJ, Op.FLUSH_VDI})  # local ops sheep counts as gateway
GATEWAY_READS = frozenset({Op.READ_OBJ})
GATEWAY_WRITES = frozenset({Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ})
GATEWAY_REMOVES = frozenset({Op.DISCARD_OBJ})
GATEWAY_FLUSHES = frozenset({Op.FLUSH_VDI})
PEER_READS = frozenset({Op.READ_PEER})
PEER_WRITES = frozenset({Op.WRITE_PEER, Op.CREATE_AND_WRITE_PEER})
PEER_REMOVES = frozenset({Op.REMOVE_PEER})


def _begin_gateway(s: SdStat, req: Request) -> None:
    s.gway_total_nr += 1
    s.gway_active_nr += 1
    if req.flags & Flag.CMD_WRITE:
        s.gway_total_rx += req.data_length
    else:
        s.gway_total_tx += req.data_length
    op = req.opcode
    s.gway_total_read_nr += op in GATEWAY_READS
    s.gway_total_write_nr += op in GATEWAY_WRITES
    s.gway_total_remove_nr += op in GATEWAY_REMOVES
    s.gway_total_flush_nr += op in GATEWAY_FLUSHES


def _begin_peer(s: SdStat, req: Request) -> None:
    s.peer_total_nr += 1
    s.peer_active_nr += 1
    if req.flags & Flag.CMD_WRITE:
        s.peer_total_rx += req.data_length
    else:
        s.peer_total_tx += req.data_length
    op = req.opcode
    s.peer_total_read_nr += op in PEER_READS
    s.peer_total_write_nr += op in PEER_WRITES
    s.peer_total_remove_nr += op in PEER_REMOVES


@contextmanager
def counted(s: SdStat, req: Request, *, gateway: bool, peer: bool) -> Iterator[None]:
    """Count one request for as long as it runs (``gateway``/``peer``: its dispatch kind)."""
    if peer:
        _begin_peer(s, req)
    elif gateway or req.opcode in GATEWAY_EXTRA:
        _begin_gateway(s, req)
        gateway = True
    try:
        yield
    finally:
        if peer:
            s.peer_active_nr -= 1
        elif gateway:
            s.gway_active_nr -= 1


__all__ = ["counted"]
