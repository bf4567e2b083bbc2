"""Cluster membership and total order on top of a shared append-only event log.

The `local` (files + flock) and `zookeeper` (znodes + a session) drivers differ only in
their `LogBackend`; everything else is here:

* the log holds join requests, accepts, leaves, node updates and broadcasts; its order is
  the total order every member sees;
* an appender takes the cluster-wide "log" lock and first processes every earlier record,
  so the master's accept carries its cluster state exactly as of the accept's position,
  and a joiner needs no history before its own accept;
* the master (oldest member) answers join requests; when it dies, the next one does;
* a member whose liveness token is gone (a dead process, an expired session) is declared
  gone by whoever notices first, under the log lock, exactly once;
* the "op" lock is the cluster-op mutex (the original's block/unblock).
"""
from __future__ import annotations

import json
import logging
import os
import struct
import uuid
import zlib
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from .base import ClusterHandler, JoinRejected, Member

log = logging.getLogger("sheep.cluster")

_REC = struct.Struct("<II")
_META = struct.Struct("<I")
POLL_INTERVAL = 0.05
LIVENESS_INTERVAL = 0.1
JOIN_RETRY = 3.0
OUTAGE_WAIT = 30.0  # a cluster-wide lock waits this long for an unreachable service


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


def member_to_json(m: Member) -> list[str]:
    return [m.uid, m.node.hex()]


def member_from_json(j: list[str]) -> Member:
    return Member(j[0], bytes.fromhex(j[1]))


class BackendUnavailable(Exception):
    """The coordination service cannot be reached right now; try again later."""


class BlockingLock(Protocol):
    def acquire(self) -> None: ...
    def release(self) -> None: ...


class LogBackend(Protocol):
    """Storage and liveness for the log; every method blocks (called from worker threads).

    Positions are opaque integers (a byte offset, a znode sequence number).  A backend may
    also have ``available() -> bool`` (non-blocking): False while the service is
    unreachable, so calls fail at once instead of queueing until it is back; and
    ``tidy()``, run with every liveness check, to clean up after an outage."""

    def setup(self, uid: str) -> None:
        """Register this incarnation's liveness token."""

    def lock(self, name: str) -> BlockingLock:
        """A cluster-wide mutex ("log" or "op")."""

    def read_state(self) -> dict[str, Any]: ...
    def write_state(self, state: dict[str, Any]) -> None: ...

    def open_log(self, gen: int) -> None:
        """Use log generation ``gen`` from now on (creating it if needed)."""

    def log_end(self) -> int:
        """The position after the last intact record."""

    def read_records(self, pos: int) -> tuple[list[tuple[dict, bytes, int]], int]:
        """Intact records from ``pos`` with their end positions, and the position reached."""

    def append(self, records: list[bytes], pos: int) -> None:
        """Append (under the log lock); ``pos`` is where the caller saw the log end."""

    def new_generation(self, gen: int, keep_uid: str) -> None:
        """Nobody is alive: drop old logs and dead tokens, start generation ``gen``."""

    def is_dead(self, uid: str) -> bool: ...
    def dead_tokens(self, exclude: str) -> list[str]: ...
    def drop_token(self, uid: str) -> None: ...
    def close(self) -> None: ...


class LogDriver:
    name = "log"

    def __init__(self, backend: LogBackend) -> None:
        self.backend = backend
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
        self._pos = 0
        self._process_lock = trio.Lock()
        self._tlocks = {"log": trio.Lock(), "op": trio.Lock()}
        # threads of our own: calls stuck in an outage never starve the daemon's file I/O
        self._limiter = trio.CapacityLimiter(16)
        self._nursery: trio.Nursery | None = None
        self._accepted = trio.Event()
        self._reject_reason: str | None = None

    async def _io(self, fn, *args, abandon: bool = False, fail_fast: bool = True):
        """Run a blocking backend call in a worker thread.

        ``fail_fast``: refuse at once while the service is unreachable (a call made then
        would wait in the client library's queue until it is back).  ``abandon``: a
        cancelled caller stops waiting for the thread; only for reads (a write or a lock
        call finishing behind our back could land after we released the log lock)."""
        available = getattr(self.backend, "available", None)
        if fail_fast and available is not None and not available():
            raise BackendUnavailable("cluster service unreachable")
        try:
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon,
                                                 limiter=self._limiter)
        except (OSError, ValueError, AssertionError):
            raise
        except Exception as e:  # e.g. kazoo's ConnectionLoss while ZooKeeper is away
            raise BackendUnavailable(f"{type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ locking
    @asynccontextmanager
    async def _locked(self, name: str):
        """Cluster-wide lock (intra-process exclusion by a trio lock first)."""
        async with self._tlocks[name]:
            await self._wait_available(OUTAGE_WAIT)
            lock = self.backend.lock(name)
            await self._io(lock.acquire)
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    # waits for the service to come back rather than leave the lock held
                    await self._io(lock.release, fail_fast=False)

    async def _wait_available(self, timeout: float) -> None:
        """Ride out a short service outage (e.g. a ZooKeeper restart); then give up."""
        available = getattr(self.backend, "available", None)
        if available is None or available():
            return
        with trio.move_on_after(timeout):
            while not available():
                await trio.sleep(0.1)
        if not available():
            raise BackendUnavailable(f"cluster service unreachable for {timeout:.0f} s")

    @asynccontextmanager
    async def exclusive(self):
        async with self._locked("op"):
            await self._catch_up_patiently()
            yield

    # ------------------------------------------------------------------ processing
    async def _catch_up(self) -> None:
        async with self._process_lock:
            if self._gen < 0:
                return
            while True:
                records, _ = await self._io(self.backend.read_records, self._pos, abandon=True)
                if not records:
                    return
                for meta, data, end in records:
                    self._pos = end
                    with trio.CancelScope(shield=True):  # an event is applied whole or not at all
                        await self._process(meta, data)

    async def _catch_up_patiently(self) -> None:
        """`_catch_up` riding out a short outage: after an append of ours, giving up would
        report a failure for something every other member is about to carry out."""
        deadline = trio.current_time() + OUTAGE_WAIT
        while True:
            try:
                return await self._catch_up()
            except BackendUnavailable:
                if trio.current_time() >= deadline:
                    raise
            await trio.sleep(0.1)
            await self._wait_available(max(0.0, deadline - trio.current_time()))

    async def _process(self, meta: dict[str, Any], data: bytes) -> None:
        kind = meta["t"]
        assert self._handler is not None and self._me is not None
        if not self._joined:
            if kind == "accept" and meta["uid"] == self.uid:
                if not meta["ok"]:
                    self._reject_reason = data.decode(errors="replace")
                    self._accepted.set()
                    return
                self.members = [member_from_json(j) for j in meta["members"]]
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
                joiner = entry[0] if entry else member_from_json(meta["members"][-1])
                self.members.append(joiner)
                await self._handler.on_accept(joiner, list(self.members), data, False)
        elif kind == "leave":
            self._pending.pop(uid, None)
            gone = [m for m in self.members if m.uid == uid]
            if gone:
                self.members = [m for m in self.members if m.uid != uid]
                if uid != self.uid:
                    await self._handler.on_leave(gone[0], list(self.members))
                else:
                    await self._lost_membership()
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

    async def _lost_membership(self) -> None:
        """Our own leave was logged while we still run: hook for drivers that can lose a session."""

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
            await self._respond_locked(uid)
        except BackendUnavailable as e:
            log.warning("could not answer the join of %s yet: %s", uid, e)
        finally:
            self._responding.discard(uid)

    async def _respond_locked(self, uid: str) -> None:
        async with self._locked("log"):
            await self._catch_up_patiently()
            entry = self._pending.get(uid)
            if entry is None or not self.members or self.members[0].uid != self.uid:
                return
            joiner, opaque = entry
            assert self._handler is not None
            ok, reply = self._handler.join_check(joiner, opaque)
            members = self.members + [joiner] if ok else self.members
            blob = encode_record({"t": "accept", "uid": uid, "ok": ok,
                                  "members": [member_to_json(m) for m in members]}, reply)
            await self._io(self._append_with_state, [blob], members)
        await self._catch_up_patiently()

    def _append_with_state(self, blobs: list[bytes], members: list[Member]) -> None:
        self.backend.append(blobs, self._pos)
        self.backend.write_state({"gen": self._gen, "members": [member_to_json(m) for m in members]})

    # ------------------------------------------------------------------ join / leave
    def _state_members(self) -> tuple[int, list[Member]]:
        state = self.backend.read_state()
        return state["gen"], [member_from_json(j) for j in state["members"]]

    async def _request_join(self) -> None:
        """Append our join request; start a new log generation if nobody is alive."""
        assert self._me is not None and self._handler is not None
        async with self._locked("log"):
            gen, members = await self._io(self._state_members)
            dead = await self._io(lambda: {m.uid for m in members if self.backend.is_dead(m.uid)})
            alive = [m for m in members if m.uid not in dead and m.uid != self.uid]
            join = encode_record({"t": "join", "uid": self.uid, "node": self._me.node.hex()}, self._opaque)
            if not alive:
                await self._io(self.backend.new_generation, gen + 1, self.uid)
                self._gen, self._pos = gen + 1, 0
                ok, reply = self._handler.join_check(self._me, self._opaque)
                accept = encode_record({"t": "accept", "uid": self.uid, "ok": ok,
                                        "members": [member_to_json(self._me)]}, reply)
                await self._io(self._append_with_state, [join, accept], [self._me] if ok else [])
                log.info("no live members: starting log generation %d", gen + 1)
                return
            if self._gen != gen:
                await self._io(self.backend.open_log, gen)
                self._gen = gen
                self._pos = await self._io(self.backend.log_end)
            blobs = [encode_record({"t": "leave", "uid": uid}) for uid in sorted(dead)] + [join]
            await self._io(self._append_with_state, blobs, alive)
            for uid in dead:
                await self._io(self.backend.drop_token, uid)

    async def _join(self) -> None:
        while True:
            try:
                await self._request_join()
            except BackendUnavailable as e:
                log.warning("cannot ask to join yet: %s", e)
                await trio.sleep(1)
                continue
            with trio.move_on_after(JOIN_RETRY):
                while not self._accepted.is_set():
                    try:
                        await self._catch_up()
                    except BackendUnavailable as e:
                        log.warning("waiting for our join to be answered: %s", e)
                        await trio.sleep(0.5)
                    if self._accepted.is_set():
                        break
                    await trio.sleep(POLL_INTERVAL)
            if self._accepted.is_set():
                break
            log.info("no answer to our join request yet, asking again")
        if self._reject_reason is not None:
            raise JoinRejected(self._reject_reason)

    async def _reap_dead(self) -> None:
        tidy = getattr(self.backend, "tidy", None)  # optional: leftovers of an outage
        if tidy is not None:
            await self._io(tidy)
        dead = await self._io(self.backend.dead_tokens, self.uid)
        if not dead:
            return
        async with self._locked("log"):
            await self._catch_up()
            gen, members = await self._io(self._state_members)
            # listed again under the lock: a token another member already reaped is gone
            gone = [uid for uid in await self._io(self.backend.dead_tokens, self.uid) if uid in dead]
            if gone and gen == self._gen:
                members = [m for m in members if m.uid not in gone]
                blobs = [encode_record({"t": "leave", "uid": uid}) for uid in gone]
                await self._io(self._append_with_state, blobs, members)
            for uid in gone:
                await self._io(self.backend.drop_token, uid)
        await self._catch_up()

    async def leave(self) -> None:
        if self._left or self._gen < 0:
            return
        try:
            await self._leave_locked()
        except BackendUnavailable as e:  # the others see our liveness token expire instead
            log.warning("could not leave cleanly: %s", e)
        self._left = True  # only now: the event loops stop and the backend closes

    async def _leave_locked(self) -> None:
        async with self._locked("log"):
            await self._catch_up_patiently()
            _, members = await self._io(self._state_members)
            members = [m for m in members if m.uid != self.uid]
            await self._io(self._append_with_state, [encode_record({"t": "leave", "uid": self.uid})], members)
            await self._io(self.backend.drop_token, self.uid)

    # ------------------------------------------------------------------ public
    async def sync(self) -> None:
        """Process every event already in the log (read-your-writes across nodes).

        Best effort: while the service is unreachable the caller goes on with what this
        node knows (a node cut off refuses I/O anyway, see `Node.on_suspended`)."""
        if self._joined and not self._left:
            try:
                await self._catch_up()
            except BackendUnavailable as e:
                log.debug("cannot sync with the cluster log: %s", e)

    async def update_node(self, node: bytes) -> None:
        """Our sd_node changed (weight, vnodes): every member sees it in order."""
        async with self._locked("log"):
            await self._catch_up_patiently()
            _, members = await self._io(self._state_members)
            members = [Member(m.uid, node) if m.uid == self.uid else m for m in members]
            blob = encode_record({"t": "update", "uid": self.uid, "node": node.hex()})
            await self._io(self._append_with_state, [blob], members)
        await self._catch_up_patiently()

    async def notify(self, data: bytes) -> None:
        async with self._locked("log"):
            await self._catch_up_patiently()
            blob = encode_record({"t": "notify", "uid": self.uid}, data)
            await self._io(self.backend.append, [blob], self._pos)
        await self._catch_up_patiently()

    async def run(self, handler: ClusterHandler, me: bytes, opaque: bytes, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._handler = handler
        self._me = Member(self.uid, me)
        self._opaque = opaque
        await self._io(self.backend.setup, self.uid, fail_fast=False)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._join()
                task_status.started()
                self._maybe_respond()
                nursery.start_soon(self._poll_loop)
                nursery.start_soon(self._liveness_loop)
        finally:
            with trio.CancelScope(shield=True):
                await self._io(self.backend.close, fail_fast=False)

    async def _poll_loop(self) -> None:
        await self._forever(self._catch_up, POLL_INTERVAL)

    async def _liveness_loop(self) -> None:
        await self._forever(self._reap_dead, LIVENESS_INTERVAL)

    async def _forever(self, step, interval: float) -> None:
        """Run ``step`` every ``interval`` until we leave, riding out service outages."""
        while not self._left:
            try:
                await step()
            except BackendUnavailable as e:
                log.debug("cluster service unavailable (%s); retrying", e)
                await trio.sleep(max(interval, 0.5))
            await trio.sleep(interval)
