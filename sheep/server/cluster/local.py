"""The `local` cluster driver: sheep processes on one machine, no other software.

Design (nothing here is part of the wire contract; objects.md §12 lets us choose):

* ``PATH/members/<uid>`` — each live sheep holds an exclusive ``flock`` on its own file.
  The kernel drops the lock the moment the process dies (even under ``kill -9``, long
  before the zombie is reaped), so "can I lock it?" is the liveness test; ``kill(pid, 0)``
  is never used.
* ``PATH/log.<gen>`` — an append-only event log: join requests, accepts, leaves and
  broadcasts.  File order *is* the total order every member sees.  Appends happen under
  ``flock(PATH/log.lock)``, and an appender first processes every earlier record, so a
  master's accept carries its cluster state exactly as of the accept's position.
* ``PATH/state`` — membership at the end of the log, rewritten (atomically) by whoever
  appends an accept or a leave, so a joiner needs no history.
* ``PATH/op.lock`` — the cluster-op mutex (the original's "block"): a node holds it while
  doing a cluster op's work step (e.g. choosing a new vid).

Records are ``<u32 len><u32 crc32><u32 metalen><json meta><data>``; a torn record left by
a process killed mid-append fails its CRC and is cut off by the next appender.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import struct
import uuid
import zlib
from contextlib import asynccontextmanager
from typing import Any

import trio

from .base import ClusterHandler, JoinRejected, Member

log = logging.getLogger("sheep.cluster.local")

_REC = struct.Struct("<II")
_META = struct.Struct("<I")
POLL_INTERVAL = 0.05
LIVENESS_INTERVAL = 0.1
JOIN_RETRY = 3.0


def encode_record(meta: dict[str, Any], data: bytes = b"") -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    body = _META.pack(len(m)) + m + data
    return _REC.pack(len(body), zlib.crc32(body)) + body


def parse_records(buf: bytes | bytearray, pos: int = 0) -> tuple[list[tuple[dict, bytes, int]], int]:
    """Complete, intact records from ``pos``; returns them (with end offsets) and the new pos."""
    out = []
    while len(buf) - pos >= _REC.size:
        length, crc = _REC.unpack_from(buf, pos)
        end = pos + _REC.size + length
        if end > len(buf):
            break
        body = bytes(buf[pos + _REC.size:end])
        if zlib.crc32(body) != crc:
            break
        (mlen,) = _META.unpack_from(body)
        meta = json.loads(body[_META.size:_META.size + mlen])
        out.append((meta, body[_META.size + mlen:], end))
        pos = end
    return out, pos


def _member_to_json(m: Member) -> list[str]:
    return [m.uid, m.node.hex()]


def _member_from_json(j: list[str]) -> Member:
    return Member(j[0], bytes.fromhex(j[1]))


class LocalDriver:
    name = "local"

    def __init__(self, path: str) -> None:
        self.path = path
        self.uid = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.members: list[Member] = []
        self._pending: dict[str, tuple[Member, bytes]] = {}
        self._responding: set[str] = set()
        self._handler: ClusterHandler | None = None
        self._me: Member | None = None
        self._opaque = b""
        self._joined = False
        self._left = False
        self._gen = -1
        self._log_fd: int | None = None
        self._offset = 0
        self._process_lock = trio.Lock()
        self._append_tlock = trio.Lock()
        self._op_tlock = trio.Lock()
        self._member_fd: int | None = None
        self._nursery: trio.Nursery | None = None
        self._accepted = trio.Event()
        self._reject_reason: str | None = None

    # ------------------------------------------------------------------ files
    def _p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def _setup_files(self) -> None:
        os.makedirs(self._p("members"), exist_ok=True)
        for name in ("log.lock", "op.lock"):
            fd = os.open(self._p(name), os.O_RDWR | os.O_CREAT, 0o644)
            os.close(fd)
        tmp = self._p("members", f".{self.uid}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self._p("members", self.uid))
        self._member_fd = fd

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self._p("state")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"gen": 0, "members": []}

    def _write_state(self, gen: int, members: list[Member]) -> None:
        tmp = self._p("state.tmp")
        with open(tmp, "w") as f:
            json.dump({"gen": gen, "members": [_member_to_json(m) for m in members]}, f)
        os.rename(tmp, self._p("state"))

    def _open_log(self, gen: int, start: int) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd = os.open(self._p(f"log.{gen}"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._gen = gen
        self._offset = start

    def _is_dead(self, uid: str) -> bool:
        """True if no live process holds ``members/<uid>``; never blocks."""
        try:
            fd = os.open(self._p("members", uid), os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        finally:
            os.close(fd)
        return True

    def _dead_files(self) -> list[str]:
        out = []
        for name in os.listdir(self._p("members")):
            if name.startswith(".") or name == self.uid:
                continue
            if self._is_dead(name):
                out.append(name)
        return out

    def _read_tail(self) -> bytes:
        assert self._log_fd is not None
        size = os.fstat(self._log_fd).st_size
        if size <= self._offset:
            return b""
        return os.pread(self._log_fd, size - self._offset, self._offset)

    def _append(self, blob: bytes) -> None:
        """Append under the log lock, cutting off a torn record left by a dead appender."""
        assert self._log_fd is not None
        if os.fstat(self._log_fd).st_size > self._offset:
            os.ftruncate(self._log_fd, self._offset)
        os.write(self._log_fd, blob)

    # ------------------------------------------------------------------ locking
    @asynccontextmanager
    async def _flocked(self, name: str, tlock: trio.Lock):
        async with tlock:
            fd = os.open(self._p(name), os.O_RDWR)
            try:
                await trio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the only descriptor releases the flock

    @asynccontextmanager
    async def exclusive(self):
        async with self._flocked("op.lock", self._op_tlock):
            await self._catch_up()
            yield

    # ------------------------------------------------------------------ processing
    async def _catch_up(self) -> None:
        async with self._process_lock:
            if self._log_fd is None:
                return
            while True:
                tail = await trio.to_thread.run_sync(self._read_tail)
                if not tail:
                    return
                records, used = parse_records(tail)
                if not records:
                    return
                base = self._offset
                for meta, data, end in records:
                    self._offset = base + end
                    await self._process(meta, data)
                if used < len(tail):
                    return

    async def _process(self, meta: dict[str, Any], data: bytes) -> None:
        kind = meta["t"]
        assert self._handler is not None
        if not self._joined:
            if kind == "accept" and meta["uid"] == self.uid:
                if not meta["ok"]:
                    self._reject_reason = data.decode(errors="replace")
                    self._accepted.set()
                    return
                self.members = [_member_from_json(j) for j in meta["members"]]
                self._joined = True
                self._accepted.set()
                await self._handler.on_accept(self._me, list(self.members), data, True)
            return
        uid = meta["uid"]
        if kind == "join":
            if uid not in self._pending and all(m.uid != uid for m in self.members):
                self._pending[uid] = (Member(uid, bytes.fromhex(meta["node"])), data)
        elif kind == "accept":
            entry = self._pending.pop(uid, None)
            if meta["ok"] and all(m.uid != uid for m in self.members):
                joiner = entry[0] if entry else _member_from_json(meta["members"][-1])
                self.members.append(joiner)
                await self._handler.on_accept(joiner, list(self.members), data, False)
        elif kind == "leave":
            self._pending.pop(uid, None)
            gone = [m for m in self.members if m.uid == uid]
            if gone:
                self.members = [m for m in self.members if m.uid != uid]
                if uid != self.uid:
                    await self._handler.on_leave(gone[0], list(self.members))
        elif kind == "update":
            idx = next((i for i, m in enumerate(self.members) if m.uid == uid), None)
            if idx is not None:
                self.members[idx] = Member(uid, bytes.fromhex(meta["node"]))
                await self._handler.on_update(self.members[idx], list(self.members))
        elif kind == "notify":
            sender = next((m for m in self.members if m.uid == uid), None)
            if sender is not None:
                await self._handler.on_notify(sender, data)
        self._maybe_respond()

    def _maybe_respond(self) -> None:
        """The master (oldest member) answers pending join requests."""
        if not self.members or self.members[0].uid != self.uid or self._nursery is None:
            return
        for uid in list(self._pending):
            if uid not in self._responding:
                self._responding.add(uid)
                self._nursery.start_soon(self._respond, uid)

    async def _respond(self, uid: str) -> None:
        try:
            async with self._flocked("log.lock", self._append_tlock):
                await self._catch_up()
                entry = self._pending.get(uid)
                if entry is None or not self.members or self.members[0].uid != self.uid:
                    return
                joiner, opaque = entry
                assert self._handler is not None
                ok, reply = self._handler.join_check(joiner, opaque)
                members = self.members + [joiner] if ok else self.members
                blob = encode_record({"t": "accept", "uid": uid, "ok": ok,
                                      "members": [_member_to_json(m) for m in members]}, reply)
                await trio.to_thread.run_sync(self._append_and_state, blob, members)
        finally:
            self._responding.discard(uid)
        await self._catch_up()

    def _append_and_state(self, blob: bytes, members: list[Member]) -> None:
        self._append(blob)
        self._write_state(self._gen, members)

    # ------------------------------------------------------------------ join / leave
    async def _request_join(self) -> None:
        """Append our join request; bootstrap a new log generation if nobody is alive."""
        assert self._me is not None and self._handler is not None
        async with self._flocked("log.lock", self._append_tlock):
            state = await trio.to_thread.run_sync(self._read_state)
            members = [_member_from_json(j) for j in state["members"]]
            dead = await trio.to_thread.run_sync(lambda: {m.uid for m in members if self._is_dead(m.uid)})
            alive = [m for m in members if m.uid not in dead and m.uid != self.uid]
            if not alive:
                gen = state["gen"] + 1
                await trio.to_thread.run_sync(self._bootstrap, gen)
                ok, reply = self._handler.join_check(self._me, self._opaque)
                blob = encode_record({"t": "join", "uid": self.uid, "node": self._me.node.hex()}, self._opaque)
                blob += encode_record({"t": "accept", "uid": self.uid, "ok": ok,
                                       "members": [_member_to_json(self._me)]}, reply)
                await trio.to_thread.run_sync(self._append_and_state, blob, [self._me] if ok else [])
                log.info("no live members in %s: starting log generation %d", self.path, gen)
                return
            if self._gen != state["gen"]:
                await trio.to_thread.run_sync(self._open_log_at_end, state["gen"])
            blob = b"".join(encode_record({"t": "leave", "uid": uid}) for uid in dead)
            blob += encode_record({"t": "join", "uid": self.uid, "node": self._me.node.hex()}, self._opaque)
            await trio.to_thread.run_sync(self._append_and_state, blob, alive)
            for uid in dead:
                self._unlink_member(uid)

    def _open_log_at_end(self, gen: int) -> None:
        """Start reading after the last intact record (a torn tail gets cut by `_append`)."""
        self._open_log(gen, 0)
        size = os.fstat(self._log_fd).st_size  # type: ignore[arg-type]
        _, self._offset = parse_records(os.pread(self._log_fd, size, 0))  # type: ignore[arg-type]

    def _bootstrap(self, gen: int) -> None:
        for name in os.listdir(self.path):
            if name.startswith("log.") and name != "log.lock":
                os.unlink(self._p(name))
        for name in os.listdir(self._p("members")):
            if name != self.uid and not name.startswith(".") and self._is_dead(name):
                self._unlink_member(name)
        self._open_log(gen, 0)

    def _unlink_member(self, uid: str) -> None:
        try:
            os.unlink(self._p("members", uid))
        except FileNotFoundError:
            pass

    async def _join(self) -> None:
        while True:
            await self._request_join()
            with trio.move_on_after(JOIN_RETRY):
                while not self._accepted.is_set():
                    await self._catch_up()
                    if self._accepted.is_set():
                        break
                    await trio.sleep(POLL_INTERVAL)
            if self._accepted.is_set():
                break
            log.info("no answer to our join request yet, asking again")
        if self._reject_reason is not None:
            raise JoinRejected(self._reject_reason)

    async def _reap_dead(self) -> None:
        dead = await trio.to_thread.run_sync(self._dead_files)
        if not dead:
            return
        async with self._flocked("log.lock", self._append_tlock):
            await self._catch_up()
            state = await trio.to_thread.run_sync(self._read_state)
            members = [_member_from_json(j) for j in state["members"]]
            blob = b""
            for uid in dead:
                if os.path.exists(self._p("members", uid)) and self._is_dead(uid):
                    blob += encode_record({"t": "leave", "uid": uid})
                    self._unlink_member(uid)
            if blob:
                members = [m for m in members if m.uid not in dead]
                await trio.to_thread.run_sync(self._append_and_state, blob, members)
        await self._catch_up()

    async def leave(self) -> None:
        if self._left or self._log_fd is None:
            return
        self._left = True
        async with self._flocked("log.lock", self._append_tlock):
            await self._catch_up()
            state = await trio.to_thread.run_sync(self._read_state)
            members = [m for m in map(_member_from_json, state["members"]) if m.uid != self.uid]
            await trio.to_thread.run_sync(self._append_and_state,
                                          encode_record({"t": "leave", "uid": self.uid}), members)
            self._unlink_member(self.uid)

    # ------------------------------------------------------------------ public
    async def sync(self) -> None:
        """Process every event already in the log (read-your-writes across nodes)."""
        if self._joined and not self._left:
            await self._catch_up()

    async def update_node(self, node: bytes) -> None:
        """Our sd_node changed (weight, vnodes): every member sees it in order."""
        async with self._flocked("log.lock", self._append_tlock):
            await self._catch_up()
            state = await trio.to_thread.run_sync(self._read_state)
            members = [Member(m.uid, node) if m.uid == self.uid else m
                       for m in map(_member_from_json, state["members"])]
            await trio.to_thread.run_sync(self._append_and_state, encode_record(
                {"t": "update", "uid": self.uid, "node": node.hex()}), members)
        await self._catch_up()

    async def notify(self, data: bytes) -> None:
        async with self._flocked("log.lock", self._append_tlock):
            await self._catch_up()
            blob = encode_record({"t": "notify", "uid": self.uid}, data)
            await trio.to_thread.run_sync(self._append, blob)
        await self._catch_up()

    async def run(self, handler: ClusterHandler, me: bytes, opaque: bytes, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._handler = handler
        self._me = Member(self.uid, me)
        self._opaque = opaque
        await trio.to_thread.run_sync(self._setup_files)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._join()
            task_status.started()
            self._maybe_respond()
            nursery.start_soon(self._poll_loop)
            nursery.start_soon(self._liveness_loop)

    async def _poll_loop(self) -> None:
        while not self._left:
            await self._catch_up()
            await trio.sleep(POLL_INTERVAL)

    async def _liveness_loop(self) -> None:
        while not self._left:
            await self._reap_dead()
            await trio.sleep(LIVENESS_INTERVAL)
