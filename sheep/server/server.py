"""The request layer: TCP and unix-socket listeners, framing, replies (wire.md §2).

Each connection has a reader loop that reads a 48-byte header (and the payload when the
WRITE flag is set) straight into fresh buffers, then runs the request as its own task, so
one connection can have many requests in flight and replies go out in completion order
(matched by id).  A short read or a bogus length closes the connection; a bad request
only gets an error reply.  Nothing a client sends can stop the daemon.
"""
from __future__ import annotations

import logging
import os
import socket as pysocket

import trio

from ..proto.constants import FLAG_CMD_CONN_LOCK, Flag, Op, Res, Status
from ..proto.header import HEADER_SIZE, Request, Response, VdiArgs
from .node import Node, Reply
from .ops import OPS, dispatch

log = logging.getLogger("sheep.server")

MAX_PAYLOAD = 64 << 20  # bigger than any legitimate request (inode: 12.6 MB, attr: 66 KB)
MAX_IN_FLIGHT = 128  # per connection


async def _recv_exactly_into(sock: trio.socket.SocketType, view: memoryview) -> bool:
    """Fill ``view``; False on EOF/reset (the connection is then closed)."""
    got = 0
    while got < len(view):
        try:
            n = await sock.recv_into(view[got:])
        except OSError:
            return False
        if n == 0:
            return False
        got += n
    return True


async def _send_all(sock: trio.socket.SocketType, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]


def build_response(node: Node, req: Request, reply: Reply) -> tuple[Response, bytes | bytearray | memoryview]:
    """Apply the reply-length rules clients depend on (wire.md §2)."""
    data = reply.data
    spec = OPS.get(req.opcode)
    if reply.result != Res.SUCCESS and not (spec and spec.data_on_error):
        data = b""
    if req.flags & Flag.CMD_WRITE and not req.flags & Flag.CMD_PIGGYBACK:
        data = b""
    if len(data) > req.data_length:
        log.error("reply of %#x larger than the client's buffer; answering BUFFER_SMALL", req.opcode)
        reply, data = Reply(Res.BUFFER_SMALL), b""
    rsp = Response(req.opcode, reply.result, len(data), req.id, node.epoch, reply.args)
    return rsp, data


class Connection:
    def __init__(self, node: Node, sock: trio.socket.SocketType, peer: str) -> None:
        self.node = node
        self.sock = sock
        self.peer = peer
        self.send_lock = trio.Lock()
        self.slots = trio.Semaphore(MAX_IN_FLIGHT)
        self.locks: set[int] = set()  # vids locked with FLAG_CMD_CONN_LOCK over this connection

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    header = bytearray(HEADER_SIZE)
                    if not await _recv_exactly_into(self.sock, memoryview(header)):
                        break
                    req = Request.decode(header)
                    payload = bytearray()
                    if req.flags & Flag.CMD_WRITE and req.data_length:
                        if req.data_length > MAX_PAYLOAD:
                            log.warning("%s: payload of %d bytes for opcode %#x refused, closing",
                                        self.peer, req.data_length, req.opcode)
                            break
                        payload = bytearray(req.data_length)
                        if not await _recv_exactly_into(self.sock, memoryview(payload)):
                            log.info("%s: connection closed inside a request payload", self.peer)
                            break
                    await self.slots.acquire()
                    nursery.start_soon(self._handle, req, payload)
        finally:
            self.sock.close()
            await self._release_locks()

    async def _release_locks(self) -> None:
        """The client is gone: its connection-bound locks go with it."""
        for taken in sorted(self.locks):
            vid = self.node.vdis.lock_holder(taken)
            log.info("%s closed: releasing its lock on %x", self.peer, vid)
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await dispatch(self.node, Request(Op.RELEASE_VDI, args=VdiArgs(base_vdi_id=vid)), b"")
        self.locks.clear()

    def _track_lock(self, req: Request, reply: Reply) -> None:
        if req.opcode == Op.LOCK_VDI and req.flags & FLAG_CMD_CONN_LOCK and reply.result == Res.SUCCESS:
            self.locks.add(reply.args.vdi_id)
        elif req.opcode == Op.RELEASE_VDI:
            self.locks.discard(req.args.base_vdi_id)

    async def _handle(self, req: Request, payload: bytearray) -> None:
        try:
            reply = await dispatch(self.node, req, memoryview(payload))
            self._track_lock(req, reply)
            rsp, data = build_response(self.node, req, reply)
            async with self.send_lock:
                try:
                    await _send_all(self.sock, rsp.encode())
                    if data:
                        await _send_all(self.sock, data)
                except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the client went away; its reply is dropped
        finally:
            self.slots.release()


async def _accept_loop(node: Node, listener: trio.socket.SocketType, nursery: trio.Nursery,
                       unix: bool) -> None:
    while True:
        try:
            sock, addr = await listener.accept()
        except OSError as e:
            log.warning("accept failed: %s", e)
            await trio.sleep(0.1)
            continue
        if node.status in (Status.SHUTDOWN, Status.KILLED):
            sock.close()
            continue
        if not unix:
            sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
        peer = "unix" if unix else f"{addr[0]}:{addr[1]}"
        nursery.start_soon(Connection(node, sock, peer).serve)


def make_listeners(bind_addr: str | None, port: int, unix_path: str) -> list[tuple[pysocket.socket, bool]]:
    """Bind synchronously (before daemonizing finishes) so start-up errors reach the user."""
    out = []
    family = pysocket.AF_INET6 if bind_addr and ":" in bind_addr else pysocket.AF_INET
    tcp = pysocket.socket(family, pysocket.SOCK_STREAM)
    tcp.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
    tcp.bind((bind_addr or ("::" if family == pysocket.AF_INET6 else "0.0.0.0"), port))
    tcp.listen(1024)
    out.append((tcp, False))
    try:
        os.unlink(unix_path)
    except FileNotFoundError:
        pass
    unix = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen(1024)
    out.append((unix, True))
    return out


async def serve(node: Node, listeners: list[tuple[pysocket.socket, bool]], *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        for raw, unix in listeners:
            nursery.start_soon(_accept_loop, node, trio.socket.from_stdlib_socket(raw), nursery, unix)
        task_status.started()
