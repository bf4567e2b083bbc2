"""A blocking sheep client for dog, the NBD plugin and tests (wire.md §2).

One socket, one thread.  ``call`` is a single round trip; ``send``/``receive`` and
``call_many`` pipeline requests so that bulk I/O is not one round trip per object.  Replies
are received with ``recv_into`` into preallocated buffers (optionally the caller's own, see
``send(into=...)``) and payloads go out with ``sendmsg`` next to the header, never
concatenated.
"""
from __future__ import annotations

import socket
from collections import deque
from typing import Iterable, Sequence

from ..proto.constants import strerror
from ..proto.header import HEADER_SIZE, ProtocolError, Request, Response

Buffer = bytes | bytearray | memoryview
Payload = bytearray | memoryview


class SheepConnectionError(ConnectionError):
    """The sheep could not be reached or the connection broke; the text is what dog prints."""


class SheepError(Exception):
    """A request answered with a non-success result; ``str()`` is ``sd_strerror(result)``."""

    def __init__(self, result: int, message: str | None = None) -> None:
        self.result = result
        super().__init__(message if message is not None else strerror(result))

    @property
    def message(self) -> str:
        return str(self)


class _Slot:
    """An outstanding request: the reply size it may carry and where its payload goes."""

    __slots__ = ("max_reply", "into")

    def __init__(self, max_reply: int, into: memoryview | None) -> None:
        self.max_reply = max_reply
        self.into = into


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class Connection:
    """A blocking connection to one sheep (TCP or its unix socket).

    Connects in the constructor so that an unreachable sheep is reported at once, as
    ``failed to connect to HOST:PORT: <strerror>``.  Not thread-safe.
    """

    def __init__(self, host: str | None = "127.0.0.1", port: int = 7000, *,
                 unix_path: str | None = None, timeout: float | None = None) -> None:
        self.host = host or "127.0.0.1"
        self.port = port
        self.unix_path = unix_path
        self.timeout = timeout
        self._header = bytearray(HEADER_SIZE)
        self._hview = memoryview(self._header)
        self._next_id = 1
        self._inflight: dict[int, _Slot] = {}
        self._ready: dict[int, tuple[Response, Payload]] = {}
        self._sock: socket.socket | None = self._connect()

    @property
    def address(self) -> str:
        return self.unix_path if self.unix_path is not None else f"{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        try:
            if self.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(self.unix_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise SheepConnectionError(
                f"failed to connect to {self.address}: {_describe(exc)}") from exc
        return sock

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._inflight.clear()
        self._ready.clear()
        if sock is not None:
            sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _broken(self, what: str, exc: BaseException | None = None) -> SheepConnectionError:
        """Close (the stream position is unknown) and build the error to raise."""
        self.close()
        detail = f": {_describe(exc)}" if isinstance(exc, OSError) else (f": {exc}" if exc else "")
        return SheepConnectionError(f"{what} {self.address}{detail}")

    def _live(self) -> socket.socket:
        if self._sock is None:
            raise SheepConnectionError(f"connection to {self.address} is closed")
        return self._sock

    # ------------------------------------------------------------------ sending

    def send(self, req: Request, payload: Buffer | None = None, *,
             into: memoryview | bytearray | None = None) -> int:
        """Send one request without waiting; returns the id assigned to ``req.id``.

        ``into``: a writable buffer the reply payload is received into directly (the reply
        must fit in it); without it a fresh bytearray is allocated on receipt.
        """
        sock = self._live()
        if req.has_payload:
            if payload is None or len(payload) != req.data_length:
                raise ValueError(
                    f"payload of {0 if payload is None else len(payload)} bytes for "
                    f"data_length {req.data_length}")
        else:
            payload = None
        rid = self._next_id
        while rid in self._inflight or rid in self._ready:
            rid = (rid + 1) & 0xFFFFFFFF
        self._next_id = (rid + 1) & 0xFFFFFFFF
        req.id = rid
        target = memoryview(into).cast("B") if into is not None else None
        try:
            if payload:
                _sendmsg_all(sock, [req.encode(), payload])
            else:
                sock.sendall(req.encode())
        except OSError as exc:
            raise self._broken("failed to send a request to", exc) from exc
        self._inflight[rid] = _Slot(req.data_length, target)
        return rid

    # ------------------------------------------------------------------ receiving

    def receive(self, rid: int) -> tuple[Response, Payload]:
        """Wait for the reply to ``rid``; replies to other ids are kept for their callers."""
        ready = self._ready.pop(rid, None)
        if ready is not None:
            return ready
        if rid not in self._inflight:
            raise KeyError(f"no request with id {rid} is in flight")
        while True:
            rsp, data = self._read_reply()
            if rsp.id == rid:
                return rsp, data
            self._ready[rsp.id] = (rsp, data)

    def _read_reply(self) -> tuple[Response, Payload]:
        sock = self._live()
        try:
            self._recv_exact(sock, self._hview)
            rsp = Response.decode(self._header)
            slot = self._inflight.pop(rsp.id, None)
            if slot is None:
                raise ProtocolError(f"reply for unknown request id {rsp.id}")
            if rsp.data_length > slot.max_reply:
                # wire.md §2: more than the buffer offered would desynchronise the stream.
                raise ProtocolError(f"reply of {rsp.data_length} bytes exceeds the "
                                    f"{slot.max_reply} bytes requested")
            if slot.into is not None and rsp.data_length <= len(slot.into):
                data: Payload = slot.into[:rsp.data_length]
            else:
                data = bytearray(rsp.data_length)
            if rsp.data_length:
                self._recv_exact(sock, memoryview(data))
        except ProtocolError as exc:
            raise self._broken("protocol error from", exc) from exc
        except (OSError, EOFError) as exc:
            raise self._broken("failed to read a reply from", exc) from exc
        return rsp, data

    @staticmethod
    def _recv_exact(sock: socket.socket, view: memoryview) -> None:
        got, n = 0, len(view)
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError("connection closed by peer")
            got += k

    # ------------------------------------------------------------------ round trips

    def call(self, req: Request, payload: Buffer | None = None, *,
             into: memoryview | bytearray | None = None) -> tuple[Response, Payload]:
        """One request, one reply."""
        return self.receive(self.send(req, payload, into=into))

    def call_many(self, items: Iterable[tuple[Request, Buffer | None]], *,
                  window: int = 16) -> list[tuple[Response, Payload]]:
        """Pipeline ``items`` with at most ``window`` in flight; replies in input order."""
        return list(self.iter_many(((r, p, None) for r, p in items), window=window))

    def iter_many(self, items: Iterable[tuple[Request, Buffer | None, memoryview | bytearray | None]],
                  *, window: int = 16):
        """Like call_many, yielding each reply (in input order) as soon as it is in.

        Each item is ``(req, payload, into)``.  Stopping early leaves nothing in flight: the
        remaining replies are drained so the connection stays usable.
        """
        if window < 1:
            raise ValueError("window must be >= 1")
        queue: deque[int] = deque()
        it = iter(items)
        exhausted = False
        try:
            while True:
                while not exhausted and len(queue) < window:
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    req, payload, into = nxt
                    queue.append(self.send(req, payload, into=into))
                if not queue:
                    return
                yield self.receive(queue.popleft())
        finally:
            if queue and not self.closed:
                for rid in queue:
                    self.receive(rid)


def _sendmsg_all(sock: socket.socket, buffers: Sequence[Buffer]) -> None:
    """``sendall`` for a list of buffers: header and payload leave without being joined."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


__all__ = ["Connection", "SheepConnectionError", "SheepError", "Payload"]
