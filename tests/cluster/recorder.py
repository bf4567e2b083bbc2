"""A recording TCP proxy in front of one sheep: what a client library puts on the wire.

Each accepted client connection gets its own upstream connection (so connection-bound
state on the server, such as FLAG_CMD_CONN_LOCK locks, behaves as without the proxy).
Request headers are decoded by hand (wire.md §3), independently of the project's codec.

``hold_first_reply(n)`` makes the next connection withhold its first reply until ``n``
requests have arrived on it: a client that does not pipeline never gets there and the
test fails after ``timeout`` (a failure guard, not a synchronisation sleep).
"""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

WRITE = 0x0001


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


@dataclass
class Seen:
    """One request: common header, the obj/vdi union fields that matter, payload."""

    ver: int
    opcode: int
    flags: int
    id: int
    dlen: int
    raw: bytes
    payload: bytes
    result: int | None = None  # filled in when its reply passes

    @property
    def oid(self) -> int:
        return struct.unpack_from("<Q", self.raw, 16)[0]

    @property
    def cow_oid(self) -> int:
        return struct.unpack_from("<Q", self.raw, 24)[0]

    @property
    def copies(self) -> int:
        return self.raw[32]

    @property
    def offset(self) -> int:
        return struct.unpack_from("<I", self.raw, 40)[0]

    @property
    def base_vdi_id(self) -> int:
        return struct.unpack_from("<I", self.raw, 24)[0]

    @property
    def snapid(self) -> int:
        return struct.unpack_from("<I", self.raw, 32)[0]


@dataclass
class Conn:
    requests: list[Seen] = field(default_factory=list)
    max_outstanding: int = 0
    outstanding: int = 0
    hold: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class Recorder:
    def __init__(self, upstream_port: int, timeout: float = 30) -> None:
        self.upstream = upstream_port
        self.timeout = timeout
        self.conns: list[Conn] = []
        self._cond = threading.Condition()
        self._hold_next = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_first_reply(self, n: int) -> None:
        self._hold_next = n

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            conn = Conn(hold=self._hold_next)
            self._hold_next = 0
            with self._cond:
                self.conns.append(conn)
            threading.Thread(target=self._up, args=(conn, client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(conn, client, server), daemon=True).start()

    def _up(self, conn: Conn, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                raw = _recv_exact(client, 48)
                ver, opcode, flags, _, rid, dlen = struct.unpack_from("<BBHIII", raw)
                payload = _recv_exact(client, dlen) if flags & WRITE and dlen else b""
                with self._cond:
                    conn.requests.append(Seen(ver, opcode, flags, rid, dlen, raw, payload))
                    conn.outstanding += 1
                    conn.max_outstanding = max(conn.max_outstanding, conn.outstanding)
                    self._cond.notify_all()
                server.sendall(raw + payload)
        except (EOFError, OSError):
            pass
        finally:
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _down(self, conn: Conn, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                raw = _recv_exact(server, 48)
                rid, dlen, result = struct.unpack_from("<III", raw, 8)
                body = _recv_exact(server, dlen)
                with self._cond:
                    if conn.hold:
                        self._cond.wait_for(lambda: len(conn.requests) >= conn.hold, self.timeout)
                        conn.hold = 0
                    for r in conn.requests:
                        if r.id == rid and r.result is None:
                            r.result = result
                            break
                    conn.outstanding -= 1
                client.sendall(raw + body)
        except (EOFError, OSError):
            pass
        finally:
            client.close()
            server.close()
            conn.closed.set()

    def requests(self) -> list[list[Seen]]:
        """Requests per connection, in accept order."""
        with self._cond:
            return [list(c.requests) for c in self.conns]
