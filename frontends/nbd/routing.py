"""Object requests sent straight to a sheep that stores the object.

Every sheep is a gateway: it places an object with the consistent-hashing ring and
forwards the request to the replicas, running it in-process when it is one of them.  A
client talking to one sheep therefore pays a relay (a second Python hop, the data copied
twice) for every object that sheep does not hold.  `RoutedConnection` removes it: each
object request goes to a replica holder (reads spread over the replicas, writes to the
first), computed with the same ring the sheep use (sheep/proto/placement.py) from the
node list.  Each request is still an ordinary gateway request, so a stale ring only
costs the relay again; a sheep that cannot be reached, or whose connection breaks, is
avoided for a while and its requests are sent again through the configured sheep (the
"home" connection), whose gateway retries across membership changes.  Everything that is
not object I/O (locks, flushes, lookups) always goes home.

Writes carry CMD_CACHE and are made durable by FLUSH_VDI, which the home sheep passes to
every node as FLUSH_PEER: where a routed write landed does not matter.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterable, Iterator

from sheep.client.api import Client
from sheep.client.sync import Buffer, Connection, Payload, SheepConnectionError, SheepError
from sheep.proto.constants import Op
from sheep.proto.header import ObjArgs, Request, Response
from sheep.proto.placement import Ring

REFRESH = 5.0   # seconds between node-list refreshes
AVOID = 5.0     # seconds a sheep that failed us is left alone
_ROUTED = frozenset({Op.READ_OBJ, Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ})

Addr = tuple[str, int]
Item = tuple[Request, Buffer | None, memoryview | bytearray | None]


class Router:
    """The ring and which sheep to avoid; shared by every worker of an export."""

    def __init__(self, home: Addr | None, timeout: float | None) -> None:
        self.home = home
        self.timeout = timeout
        self._view: tuple[int, Ring] | None = None  # (epoch of its node list, the ring)
        self._when = float("-inf")
        self._avoid: dict[Addr, float] = {}
        self._refreshing = threading.Lock()

    def maybe_refresh(self, home: Connection) -> None:
        """Re-read the node list through ``home`` when it is older than REFRESH (one
        thread at a time; the others keep using the ring they have)."""
        if time.monotonic() - self._when < REFRESH or not self._refreshing.acquire(False):
            return
        try:
            self._when = time.monotonic()
            epoch, nodes = Client(home).node_list_at()
            self._view = (epoch, Ring(nodes))
        except SheepError:
            pass  # keep the ring we have (or none: everything goes home)
        finally:
            self._refreshing.release()

    def lost(self, addr: Addr) -> None:
        self._avoid[addr] = time.monotonic() + AVOID
        self.refresh_soon()  # membership probably changed

    def refresh_soon(self) -> None:
        self._when = float("-inf")

    def placement(self, oid: int, copies: int) -> tuple[int, list[Addr]] | None:
        """(epoch, owners): where the ring places ``oid``, with the epoch of the node list
        it came from (None before the first node list)."""
        view = self._view
        if view is None:
            return None
        epoch, ring = view
        return epoch, [(n.nid.host, n.nid.port) for n in ring.oid_to_nodes(oid, copies or 1)]

    def target(self, req: Request) -> Addr | None:
        """Where ``req`` is best sent; None for home."""
        view = self._view
        args = req.args
        if view is None or req.opcode not in _ROUTED or not isinstance(args, ObjArgs):
            return None
        ring = view[1]
        nodes = ring.oid_to_nodes(args.oid, args.copies or 1)
        if not nodes:
            return None
        node = nodes[args.oid % len(nodes)] if req.opcode == Op.READ_OBJ else nodes[0]
        addr = (node.nid.host, node.nid.port)
        if addr == self.home:
            return None
        until = self._avoid.get(addr)
        if until is not None:
            if until > time.monotonic():
                return None
            self._avoid.pop(addr, None)
        return addr


class RoutedConnection(Connection):
    """A `Connection` look-alike for one thread: the home connection plus one per sheep
    it routes to.  `call` and `iter_many` keep their contract (replies in input order);
    a routed request whose sheep fails is answered by sending it again through home."""

    def __init__(self, home: Connection, router: Router) -> None:  # noqa: super not called
        self.home = home
        self.router = router
        self._peers: dict[Addr, Connection] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def address(self) -> str:
        return self.home.address

    @property
    def closed(self) -> bool:
        return self.home.closed

    def close(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        for c in peers:
            c.close()
        self.home.close()

    def placement(self, oid: int, copies: int) -> tuple[int, list[Addr]] | None:
        self.router.maybe_refresh(self.home)
        return self.router.placement(oid, copies)

    def refresh_soon(self) -> None:
        self.router.refresh_soon()

    def connection_to(self, addr: Addr) -> Connection | None:
        """This thread's connection to the sheep at ``addr`` (None if unreachable)."""
        if addr == self.router.home:
            return self.home
        c = self._peers.get(addr)
        if c is None or c.closed:
            try:
                c = Connection(addr[0], addr[1], timeout=self.router.timeout)
            except SheepConnectionError:
                self.router.lost(addr)
                return None
            self._peers[addr] = c
        return c

    def _conn_for(self, req: Request) -> Connection:
        self.router.maybe_refresh(self.home)
        addr = self.router.target(req)
        if addr is None:
            return self.home
        return self.connection_to(addr) or self.home

    def _lost(self, conn: Connection) -> None:
        for addr, c in list(self._peers.items()):
            if c is conn:
                del self._peers[addr]
                self.router.lost(addr)
        conn.close()

    # ------------------------------------------------------------------ requests

    def send(self, req: Request, payload: Buffer | None = None, *,
             into: memoryview | bytearray | None = None) -> int:
        return self.home.send(req, payload, into=into)

    def receive(self, rid: int) -> tuple[Response, Payload]:
        return self.home.receive(rid)

    def call(self, req: Request, payload: Buffer | None = None, *,
             into: memoryview | bytearray | None = None) -> tuple[Response, Payload]:
        conn = self._conn_for(req)
        if conn is not self.home:
            try:
                return conn.call(req, payload, into=into)
            except SheepConnectionError:
                self._lost(conn)
        return self.home.call(req, payload, into=into)

    def _send(self, item: Item) -> tuple[Connection, int, Item]:
        req, payload, into = item
        conn = self._conn_for(req)
        if conn is not self.home:
            try:
                return conn, conn.send(req, payload, into=into), item
            except SheepConnectionError:
                self._lost(conn)
        return self.home, self.home.send(req, payload, into=into), item

    def _finish(self, conn: Connection, rid: int, item: Item) -> tuple[Response, Payload]:
        if conn is self.home:
            return self.home.receive(rid)
        try:
            return conn.receive(rid)
        except (SheepConnectionError, KeyError):  # KeyError: the connection was closed
            self._lost(conn)
            req, payload, into = item
            return self.home.call(req, payload, into=into)

    def iter_many(self, items: Iterable[Item], *, window: int = 16
                  ) -> Iterator[tuple[Response, Payload]]:
        if window < 1:
            raise ValueError("window must be >= 1")
        queue: deque[tuple[Connection, int, Item]] = deque()
        try:
            for item in items:
                while len(queue) >= window:
                    yield self._finish(*queue.popleft())
                queue.append(self._send(item))
            while queue:
                yield self._finish(*queue.popleft())
        finally:
            while queue:  # stopped early: leave nothing in flight
                conn, rid, _ = queue.popleft()
                if not conn.closed:
                    try:
                        conn.receive(rid)
                    except (SheepConnectionError, KeyError):
                        if conn is not self.home:
                            self._lost(conn)
                        else:
                            raise


__all__ = ["Router", "RoutedConnection", "REFRESH", "AVOID"]
