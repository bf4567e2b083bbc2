"""Framing tests for the trio client against a tiny in-test peer that speaks the header format."""
from __future__ import annotations

import os
import struct
import tempfile
from functools import partial

import pytest
import trio
import trio.testing

from sheep.client.trio_client import TrioConnection, open_connection
from sheep.proto.constants import Flag, Op
from sheep.proto.header import HEADER_SIZE, ObjArgs, ObjRsp, Request, Response


async def read_exact(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


async def read_request(stream: trio.abc.Stream) -> tuple[Request, bytes]:
    req = Request.decode(await read_exact(stream, HEADER_SIZE))
    payload = await read_exact(stream, req.data_length) if req.has_payload else b""
    return req, payload


def pattern(oid: int, n: int) -> bytes:
    """Deterministic reply bytes so a misrouted reply is detected."""
    unit = struct.pack("<Q", oid)
    return (unit * (n // 8 + 1))[:n]


async def reply(stream: trio.abc.Stream, req: Request, data: bytes = b"", result: int = 0) -> None:
    rsp = Response(req.opcode, result, len(data), req.id, 7, ObjRsp())
    await stream.send_all(rsp.encode() + data)


def read_req(oid: int, length: int) -> Request:
    return Request(Op.READ_OBJ, 0, length, args=ObjArgs(oid=oid))


@pytest.fixture(params=["memory", "socket"])
def stream_pair(request):
    """(client_stream, peer_stream): a generic Stream, or real sockets (recv_into path)."""
    if request.param == "memory":
        return trio.testing.memory_stream_pair()
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_pipelined_out_of_order(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)
    n = 20
    results: dict[int, tuple[Response, bytes]] = {}

    async def peer_task():
        reqs = [await read_request(peer) for _ in range(n)]
        ids = [r.id for r, _ in reqs]
        assert len(set(ids)) == n  # every in-flight call has its own id
        for req, _ in reversed(reqs):  # answer in reverse order
            await reply(peer, req, pattern(req.args.oid, req.data_length))

    async def caller(i: int):
        results[i] = await conn.call(read_req(0x100 + i, 1000 + i))

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        async with trio.open_nursery() as callers:
            for i in range(n):
                callers.start_soon(caller, i)
        await conn.aclose()
    for i in range(n):
        rsp, data = results[i]
        assert rsp.result == 0 and rsp.epoch == 7
        assert bytes(data) == pattern(0x100 + i, 1000 + i)
    assert conn.closed


async def test_write_payload_sent_intact(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)
    big = os.urandom(200_000)  # above the join limit: header and payload sent separately
    small = b"abc"
    seen = []

    async def peer_task():
        for _ in range(2):
            req, payload = await read_request(peer)
            seen.append((req.opcode, req.args.offset, payload))
            await reply(peer, req)

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        for data, off in ((big, 0), (small, 4096)):
            req = Request(Op.WRITE_OBJ, Flag.CMD_WRITE, len(data), args=ObjArgs(oid=1, offset=off))
            rsp, out = await conn.call(req, data)
            assert rsp.result == 0 and out == b""
        await conn.aclose()
    assert seen == [(Op.WRITE_OBJ, 0, big), (Op.WRITE_OBJ, 4096, small)]


async def test_cancelled_caller_does_not_desync(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)
    first_seen = trio.Event()
    release = trio.Event()

    async def peer_task():
        slow, _ = await read_request(peer)
        first_seen.set()
        await release.wait()
        fast, _ = await read_request(peer)
        # The abandoned reply (with payload) goes first; the reader must swallow it.
        await reply(peer, slow, pattern(slow.args.oid, slow.data_length))
        await reply(peer, fast, pattern(fast.args.oid, fast.data_length))

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        slow_scope = trio.CancelScope()

        async def slow_call():
            with slow_scope:
                await conn.call(read_req(0xAAAA, 4096))

        async with trio.open_nursery() as inner:
            inner.start_soon(slow_call)
            await first_seen.wait()
            slow_scope.cancel()
        assert slow_scope.cancelled_caught
        release.set()
        rsp, data = await conn.call(read_req(0xBBBB, 333))
        assert bytes(data) == pattern(0xBBBB, 333)
        assert not conn.closed
        await conn.aclose()


async def test_cancel_before_send_leaves_no_slot(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        held, done = trio.Event(), trio.Event()

        async def hog():  # hold the send lock so the call cannot start sending
            async with conn._send_lock:
                held.set()
                await done.wait()
        nursery.start_soon(hog)
        await held.wait()
        with trio.move_on_after(0.05):
            await conn.call(read_req(1, 10))
        done.set()
        assert conn._pending == {} and not conn.closed

        async def peer_task():
            req, _ = await read_request(peer)
            await reply(peer, req, b"x" * 10)
        nursery.start_soon(peer_task)
        _, data = await conn.call(read_req(1, 10))
        assert data == b"x" * 10
        await conn.aclose()


async def test_eof_mid_reply_fails_pending(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)

    async def peer_task():
        req, _ = await read_request(peer)
        rsp = Response(req.opcode, 0, 100, req.id)
        await peer.send_all(rsp.encode() + b"short")
        await peer.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        with pytest.raises(ConnectionError):
            await conn.call(read_req(5, 100))
    assert conn.closed
    with pytest.raises(ConnectionError):
        await conn.call(read_req(5, 100))


async def test_eof_fails_all_waiters(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)
    errors = []

    async def caller(i):
        try:
            await conn.call(read_req(i, 8))
        except ConnectionError as exc:
            errors.append(exc)

    async def peer_task():
        for _ in range(5):
            await read_request(peer)
        await peer.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        for i in range(5):
            nursery.start_soon(caller, i)
    assert len(errors) == 5


async def test_oversized_reply_is_protocol_error(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)

    async def peer_task():
        req, _ = await read_request(peer)
        await reply(peer, req, b"z" * (req.data_length + 1))

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        with pytest.raises(ConnectionError, match="exceeds"):
            await conn.call(read_req(5, 16))
    assert conn.closed


async def test_reply_for_unknown_id_closes(stream_pair):
    client, peer = stream_pair
    conn = TrioConnection(client)

    async def peer_task():
        req, _ = await read_request(peer)
        await peer.send_all(Response(req.opcode, 0, 0, req.id + 1000).encode())

    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        nursery.start_soon(peer_task)
        with pytest.raises(ConnectionError, match="unknown request id"):
            await conn.call(read_req(5, 16))


async def _echo_server(stream: trio.abc.Stream) -> None:
    try:
        while True:
            req, _ = await read_request(stream)
            await reply(stream, req, pattern(req.args.oid, req.data_length))
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_open_connection_tcp_and_unix():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo_server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_connection("127.0.0.1", port) as conn:
            _, data = await conn.call(read_req(42, 64))
            assert bytes(data) == pattern(42, 64)
        assert conn.closed

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sock")
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.bind(path)
            sock.listen()
            listener = trio.SocketListener(sock)
            nursery.start_soon(trio.serve_listeners, _echo_server, [listener])
            async with open_connection(unix_path=path) as conn:
                _, data = await conn.call(read_req(43, 10))
                assert bytes(data) == pattern(43, 10)
        nursery.cancel_scope.cancel()


async def test_open_connection_refused():
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OSError):
        async with open_connection("127.0.0.1", port):
            pass


async def test_cancel_mid_send_closes_connection():
    a, b = trio.socket.socketpair()
    conn = TrioConnection(trio.SocketStream(a))
    data = b"\1" * (16 << 20)  # far more than the socket buffers: send_all blocks
    async with trio.open_nursery() as nursery:
        await nursery.start(conn.run)
        with trio.move_on_after(0.1) as scope:
            req = Request(Op.WRITE_OBJ, Flag.CMD_WRITE, len(data), args=ObjArgs(oid=1))
            await conn.call(req, data)
        assert scope.cancelled_caught
        assert conn.closed  # half a request went out: the stream cannot be reused
        with pytest.raises(ConnectionError):
            await conn.call(read_req(1, 8))
    b.close()
