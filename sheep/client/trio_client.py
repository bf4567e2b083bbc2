"""A pipelined trio client for one sheep connection (wire.md §2).

Used by the daemon to forward requests to peers and by tests.  Many calls may be in flight
on one connection; a single reader task matches replies to callers by ``id``, so replies may
arrive in any order.  A caller that is cancelled while waiting leaves its slot behind: the
reader still consumes that reply's bytes and drops them, so the stream stays in step.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from ..proto.header import HEADER_SIZE, ProtocolError, Request, Response

Buffer = bytes | bytearray | memoryview

# Below this size header and payload are joined into one send (one syscall, cheap copy).
_JOIN_LIMIT = 64 * 1024


class _Pending:
    """One outstanding call: what the reader needs to validate and deliver its reply."""

    __slots__ = ("max_reply", "event", "rsp", "data", "error", "abandoned", "sent")

    def __init__(self, max_reply: int) -> None:
        self.max_reply = max_reply
        self.event = trio.Event()
        self.rsp: Response | None = None
        self.data: bytearray = bytearray()
        self.error: BaseException | None = None
        self.abandoned = False
        self.sent = False  # set once the first byte may have gone out


class TrioConnection:
    """A sheep connection carrying many concurrent calls.

    The owner runs the reader with ``await nursery.start(conn.run)``; ``call`` may then be
    used from any number of tasks.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        # Receive straight into our buffers when the stream is a socket (no per-chunk bytes).
        sock = getattr(stream, "socket", None) if isinstance(stream, trio.SocketStream) else None
        self._sock = sock
        self._send_lock = trio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._closed = False
        self._error: BaseException | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ calling

    def _alloc_id(self) -> int:
        rid = self._next_id
        while rid in self._pending:
            rid = (rid + 1) & 0xFFFFFFFF
        self._next_id = (rid + 1) & 0xFFFFFFFF
        return rid

    async def call(self, req: Request, payload: Buffer | None = None) -> tuple[Response, bytearray]:
        """Send ``req`` (+ payload when it carries the WRITE flag) and wait for its reply.

        ``req.id`` is overwritten with a fresh id.  The reply payload is returned as the
        bytearray it was received into.  Raises ConnectionError if the connection is or
        becomes unusable.
        """
        if self._closed:
            raise self._closed_error()
        if req.has_payload:
            if payload is None or len(payload) != req.data_length:
                raise ValueError(
                    f"payload of {0 if payload is None else len(payload)} bytes for "
                    f"data_length {req.data_length}")
        req.id = self._alloc_id()
        pending = _Pending(req.data_length)
        self._pending[req.id] = pending
        try:
            await self._send(req, payload if req.has_payload else None, pending)
            await pending.event.wait()
        except BaseException:
            if not pending.event.is_set() and not self._closed:
                if pending.sent:
                    pending.abandoned = True  # the reader drops the reply when it comes
                else:
                    del self._pending[req.id]  # never sent: no reply will come
            raise
        if pending.error is not None:
            raise pending.error
        assert pending.rsp is not None
        return pending.rsp, pending.data

    async def _send(self, req: Request, payload: Buffer | None, pending: _Pending) -> None:
        header = req.encode()
        async with self._send_lock:
            if self._closed:
                raise self._closed_error()
            pending.sent = True
            try:
                if payload is None or len(payload) == 0:
                    await self._stream.send_all(header)
                elif len(payload) <= _JOIN_LIMIT:
                    await self._stream.send_all(b"".join((header, payload)))
                else:
                    await self._stream.send_all(header)
                    await self._stream.send_all(payload)
            except BaseException as exc:
                # A send interrupted half way (cancellation included) leaves the peer
                # mid-request: the stream can't be reused (wire.md §2, connection errors).
                err = ConnectionError(f"send failed: {exc!r}")
                with trio.CancelScope(shield=True):
                    await self._shutdown(err)
                if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                    raise err from exc
                raise

    # ------------------------------------------------------------------ reader

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reader loop: deliver every reply to its caller; on EOF or error fail all pending."""
        task_status.started()
        header = bytearray(HEADER_SIZE)
        hview = memoryview(header)
        error: BaseException = ConnectionError("connection closed")
        try:
            while True:
                if not await self._recv_exact(hview, at_boundary=True):
                    error = ConnectionError("connection closed by peer")
                    return
                rsp = Response.decode(header)
                pending = self._pending.get(rsp.id)
                if pending is None:
                    raise ProtocolError(f"reply for unknown request id {rsp.id}")
                if rsp.data_length > pending.max_reply:
                    # wire.md §2: a longer reply than the buffer offered would desynchronise us.
                    raise ProtocolError(
                        f"reply of {rsp.data_length} bytes exceeds the {pending.max_reply} "
                        f"bytes requested (id {rsp.id})")
                data = bytearray(rsp.data_length)
                if rsp.data_length:
                    if not await self._recv_exact(memoryview(data), at_boundary=False):
                        error = ConnectionError("connection closed by peer mid-reply")
                        return
                del self._pending[rsp.id]
                if not pending.abandoned:
                    pending.rsp, pending.data = rsp, data
                    pending.event.set()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError,
                ConnectionError) as exc:
            error = exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc) or repr(exc))
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown(error)

    async def _recv_exact(self, view: memoryview, *, at_boundary: bool) -> bool:
        """Fill ``view``; False on a clean EOF before the first byte when ``at_boundary``."""
        got, n = 0, len(view)
        while got < n:
            if self._sock is not None:
                k = await self._sock.recv_into(view[got:], n - got)
            else:
                chunk = await self._stream.receive_some(n - got)
                k = len(chunk)
                view[got:got + k] = chunk
            if k == 0:
                if got == 0 and at_boundary:
                    return False
                raise ConnectionError("connection closed by peer mid-reply")
            got += k
        return True

    # ------------------------------------------------------------------ closing

    def _closed_error(self) -> ConnectionError:
        if isinstance(self._error, ConnectionError):
            return ConnectionError(*self._error.args)
        return ConnectionError("connection is closed")

    async def _shutdown(self, error: BaseException) -> None:
        """Close the stream once and fail every waiting caller with ``error``."""
        if not self._closed:
            self._closed = True
            self._error = error
            try:
                await self._stream.aclose()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.event.is_set():
                p.error = ConnectionError(*error.args) if isinstance(error, ConnectionError) \
                    else ConnectionError(str(error))
                p.event.set()

    async def aclose(self) -> None:
        await self._shutdown(ConnectionError("connection is closed"))


@asynccontextmanager
async def open_connection(host: str | None = "127.0.0.1", port: int = 7000, *,
                          unix_path: str | None = None) -> AsyncIterator[TrioConnection]:
    """Connect (TCP, or the sheep's unix socket) and yield a connection with its reader running."""
    if unix_path is not None:
        stream: trio.abc.Stream = await trio.open_unix_socket(unix_path)
    else:
        stream = await trio.open_tcp_stream(host or "127.0.0.1", port)  # sets TCP_NODELAY
    conn = TrioConnection(stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
            nursery.cancel_scope.cancel()


__all__ = ["TrioConnection", "open_connection"]
