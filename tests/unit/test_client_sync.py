"""Framing tests for the blocking client against a tiny threaded peer speaking the header format."""
from __future__ import annotations

import os
import select
import socket
import struct
import tempfile
import threading
from typing import Callable

import pytest

from sheep.client.sync import Connection, SheepConnectionError, SheepError
from sheep.proto.constants import Flag, Op, Res
from sheep.proto.header import HEADER_SIZE, ObjArgs, Request, Response


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_request(sock: socket.socket) -> tuple[Request, bytes]:
    req = Request.decode(recv_exact(sock, HEADER_SIZE))
    return req, (recv_exact(sock, req.data_length) if req.has_payload else b"")


def pattern(oid: int, n: int) -> bytes:
    return (struct.pack("<Q", oid) * (n // 8 + 1))[:n]


def send_reply(sock: socket.socket, req: Request, data: bytes = b"", result: int = 0) -> None:
    sock.sendall(Response(req.opcode, result, len(data), req.id, 3).encode() + data)


class Peer:
    """Accepts one connection and runs ``handler(sock)`` on it in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None], unix_path: str | None = None):
        if unix_path:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(unix_path)
        else:
            self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1] if not unix_path else 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(handler,), daemon=True)
        self.thread.start()

    def _run(self, handler):
        conn, _ = self.listener.accept()
        try:
            handler(conn)
        except EOFError:
            pass
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            conn.close()
            self.listener.close()

    def join(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def echo(sock):
    while True:
        req, _ = read_request(sock)
        send_reply(sock, req, pattern(req.args.oid, req.data_length))


def read_req(oid: int, length: int) -> Request:
    return Request(Op.READ_OBJ, 0, length, args=ObjArgs(oid=oid))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connection_refused_message():
    port = free_port()
    with pytest.raises(SheepConnectionError) as info:
        Connection("127.0.0.1", port)
    assert str(info.value) == f"failed to connect to 127.0.0.1:{port}: Connection refused"
    assert isinstance(info.value, OSError) and isinstance(info.value, ConnectionError)


def test_unix_connect_failure_message():
    with pytest.raises(SheepConnectionError, match=r"failed to connect to /nonexistent/sock: No such file"):
        Connection(unix_path="/nonexistent/sock")


def test_call_round_trip_and_unix_socket():
    peer = Peer(echo)
    with Connection("127.0.0.1", peer.port) as conn:
        rsp, data = conn.call(read_req(9, 100))
        assert rsp.result == 0 and rsp.epoch == 3 and bytes(data) == pattern(9, 100)
    peer.join()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sock")
        peer = Peer(echo, unix_path=path)
        with Connection(unix_path=path) as conn:
            _, data = conn.call(read_req(10, 5))
            assert bytes(data) == pattern(10, 5)
        peer.join()


def test_pipelined_out_of_order_replies():
    n = 10

    def handler(sock):
        reqs = [read_request(sock)[0] for _ in range(n)]
        for req in reversed(reqs):
            send_reply(sock, req, pattern(req.args.oid, req.data_length))
        echo(sock)

    peer = Peer(handler)
    with Connection("127.0.0.1", peer.port) as conn:
        ids = [conn.send(read_req(i, 10 + i)) for i in range(n)]
        assert len(set(ids)) == n
        for i, rid in enumerate(ids):
            rsp, data = conn.receive(rid)
            assert rsp.id == rid and bytes(data) == pattern(i, 10 + i)
        # still in step afterwards
        assert bytes(conn.call(read_req(77, 8))[1]) == pattern(77, 8)
    peer.join()


def test_write_payload_with_sendmsg():
    big = os.urandom(3 << 20)
    got = []

    def handler(sock):
        req, payload = read_request(sock)
        got.append(payload)
        send_reply(sock, req)

    peer = Peer(handler)
    with Connection("127.0.0.1", peer.port) as conn:
        req = Request(Op.WRITE_OBJ, Flag.CMD_WRITE, len(big), args=ObjArgs(oid=1))
        rsp, data = conn.call(req, memoryview(big))
        assert rsp.result == 0 and len(data) == 0
        with pytest.raises(ValueError):
            conn.send(Request(Op.WRITE_OBJ, Flag.CMD_WRITE, 10), b"short")
    peer.join()
    assert got == [big]


def test_receive_into_caller_buffer():
    peer = Peer(echo)
    out = bytearray(64)
    with Connection("127.0.0.1", peer.port) as conn:
        _, data = conn.call(read_req(5, 32), into=memoryview(out)[16:48])
        assert bytes(out[16:48]) == pattern(5, 32) and out[:16] == bytes(16)
        assert bytes(data) == pattern(5, 32)
    peer.join()


def test_call_many_bounded_window():
    window, total = 4, 23
    violations = []

    def handler(sock):
        done = 0
        while done < total:
            batch = [read_request(sock)[0] for _ in range(min(window, total - done))]
            # the client must now be waiting: nothing beyond the window may be in flight
            if select.select([sock], [], [], 0.05)[0]:
                violations.append(done)
            for req in reversed(batch):
                send_reply(sock, req, pattern(req.args.oid, req.data_length))
            done += len(batch)

    peer = Peer(handler)
    with Connection("127.0.0.1", peer.port) as conn:
        out = conn.call_many([(read_req(i, 16), None) for i in range(total)], window=window)
    peer.join()
    assert not violations
    assert [bytes(d) for _, d in out] == [pattern(i, 16) for i in range(total)]


def test_iter_many_early_stop_drains():
    peer = Peer(echo)
    with Connection("127.0.0.1", peer.port) as conn:
        it = conn.iter_many(((read_req(i, 8), None, None) for i in range(50)), window=8)
        first = next(it)
        assert bytes(first[1]) == pattern(0, 8)
        it.close()  # the 7 replies still in flight are consumed
        assert bytes(conn.call(read_req(99, 8))[1]) == pattern(99, 8)
    peer.join()


def test_eof_mid_reply_raises_connection_error():
    def handler(sock):
        req, _ = read_request(sock)
        sock.sendall(Response(req.opcode, 0, 100, req.id).encode() + b"partial")

    peer = Peer(handler)
    conn = Connection("127.0.0.1", peer.port)
    with pytest.raises(ConnectionError):
        conn.call(read_req(1, 100))
    assert conn.closed
    with pytest.raises(SheepConnectionError):
        conn.call(read_req(1, 100))
    peer.join()


def test_oversized_reply_is_protocol_error():
    def handler(sock):
        req, _ = read_request(sock)
        send_reply(sock, req, b"x" * (req.data_length + 8))

    peer = Peer(handler)
    conn = Connection("127.0.0.1", peer.port)
    with pytest.raises(SheepConnectionError, match="exceeds"):
        conn.call(read_req(1, 8))
    assert conn.closed
    peer.join()


def test_timeout_closes():
    def handler(sock):
        read_request(sock)
        recv_exact(sock, 1)  # wait until the client goes away

    peer = Peer(handler)
    conn = Connection("127.0.0.1", peer.port, timeout=0.1)
    with pytest.raises(SheepConnectionError, match="timed out"):
        conn.call(read_req(1, 8))
    assert conn.closed
    peer.join()


def test_sheep_error_text():
    err = SheepError(Res.NO_VDI)
    assert err.result == Res.NO_VDI and str(err) == "No VDI found" == err.message
