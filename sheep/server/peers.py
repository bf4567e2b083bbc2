"""Connections from this sheep to the other sheep, for forwarded (peer) requests.

One pipelined `TrioConnection` per peer address, opened on first use and dropped on any
error.  Every connection's reader task belongs to the pool's nursery.  A failure is
reported to the caller as `SD_RES_NETWORK_ERROR`, which makes the gateway wait for the
next epoch and retry (wire.md §6.4).
"""
from __future__ import annotations

import logging

import trio

from ..client.trio_client import TrioConnection
from ..proto.constants import Res
from ..proto.header import Request, Response
from ..proto.structs import NodeId

log = logging.getLogger("sheep.peers")

CONNECT_TIMEOUT = 3.0
CALL_TIMEOUT = 30.0


class PeerPool:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._conns: dict[NodeId, TrioConnection] = {}
        self._connecting: dict[NodeId, trio.Lock] = {}

    async def _get(self, nid: NodeId) -> TrioConnection:
        conn = self._conns.get(nid)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(nid, trio.Lock())
        async with lock:
            conn = self._conns.get(nid)
            if conn is not None and not conn.closed:
                return conn
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(nid.host, nid.port)
            conn = TrioConnection(stream)
            await self._nursery.start(conn.run)
            self._conns[nid] = conn
            return conn

    def drop(self, nid: NodeId) -> None:
        conn = self._conns.pop(nid, None)
        if conn is not None:
            self._nursery.start_soon(conn.aclose)

    async def call(self, nid: NodeId, req: Request, payload: bytes | bytearray | memoryview | None = None
                   ) -> tuple[Response, bytes | bytearray]:
        """Forward one request; connection trouble becomes a NETWORK_ERROR response."""
        try:
            conn = await self._get(nid)
            with trio.fail_after(CALL_TIMEOUT):
                return await conn.call(req, payload)
        except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError) as e:
            log.warning("request %#x to %s failed: %s", req.opcode, nid, e)
            self.drop(nid)
            return Response(req.opcode, Res.NETWORK_ERROR), b""

    async def aclose(self) -> None:
        for nid in list(self._conns):
            conn = self._conns.pop(nid)
            await conn.aclose()
