"""The `corosync` cluster driver: a CPG process group as the totally ordered event stream.

``-c corosync[:GROUP]`` (group name default ``sheepdog``, so several clusters can share one
corosync).  Corosync's CPG gives virtual synchrony: every member of the group gets the
same messages and configuration changes (joins, leaves, crashes) in the same order.  That
stream plays the part the shared log plays for the `local` and `zookeeper` drivers, and the
records are the log's records (`logdriver.encode_record`):

* a node joining the group broadcasts ``join``; every member stops processing at that
  record until the ``accept`` for it arrives, so the master (the oldest member still in
  the group) computes ``join_check`` with its state exactly as of the join's position and
  the joiner takes over from there (it has the stream from its own group join onward);
  a master dying before it answers is replaced by the next oldest, at the same position;
* the first member of a group made only of newcomers (one configuration change bringing
  them all) starts the cluster alone, and the others join it;
* joiners left without anyone to answer them (the members died first) notice it from the
  stream alone: after a leave every waiting joiner asks again, and once everyone left in
  the group has asked, the first of them starts the cluster and says ``elected``;
* a member leaving the group, cleanly or not, is a leave for everyone at that position;
* ``lock``/``unlock`` records make a FIFO queue per cluster: the head holds the cluster-op
  mutex, and a holder leaving the group drops out of it;
* our own records are processed before ``notify``/``update_node``/``sync`` return.

`cpg_dispatch` runs on the trio thread when the CPG descriptor is readable; its callbacks
only queue events, which one task processes in order.
"""
from __future__ import annotations

import logging
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from .base import ClusterHandler, JoinRejected, Member
from .cpg import Address, CpgError, CpgGroup
from .logdriver import encode_record, member_from_json, member_to_json, parse_records

log = logging.getLogger("sheep.cluster.corosync")

DEFAULT_GROUP = "sheepdog"
RETRY_INTERVAL = 0.01  # corosync said CS_ERR_TRY_AGAIN (flow control, sync in progress)
LIVENESS_INTERVAL = 0.5


def parse_option(arg: str) -> str:
    """``[GROUP]`` -> the CPG group name."""
    group = arg or DEFAULT_GROUP
    if len(group.encode()) > 128 or any(c in group for c in ":/, "):
        raise ValueError(f"corosync: bad group name {group!r} (at most 128 bytes, no ':/, ')")
    return group


def uid_of(addr: Address) -> str:
    return f"{addr.nodeid}-{addr.pid}"


@dataclass(slots=True)
class Event:
    """One delivery: a record (``kind`` from its meta) or a configuration change."""
    kind: str
    sender: str
    meta: dict[str, Any]
    data: bytes = b""
    done: bool = False  # an accept already applied at its join's position
    left: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)


class CorosyncDriver:
    name = "corosync"

    def __init__(self, arg: str = "") -> None:
        self.group = parse_option(arg)
        self.uid = ""
        self.members: list[Member] = []
        self._cpg: CpgGroup | None = None
        self._handler: ClusterHandler | None = None
        self._me: Member | None = None
        self._opaque = b""
        self._queue: deque[Event] = deque()
        self._delivered = 0          # bumped by every delivery: wakes the processor
        self._wakeup = trio.Event()
        self._live: set[str] = set()  # group members as of the newest configuration change
        self._first_confchg = True
        self._scanned = 0            # unjoined: events of the queue already looked at
        self._join_n = 0             # our join requests so far (an accept names one)
        self._candidates: set[str] | None = None
        self._proven: set[str] = set()
        self._joined = False
        self._left = False
        self._accepted = trio.Event()
        self._reject_reason: str | None = None
        self._answered: set[str] = set()
        self._seq = 0
        self._waiting: dict[int, trio.Event] = {}
        self._lock_queue: list[tuple[str, int]] = []
        self._op_lock = trio.Lock()
        self._lock_token = 0
        self._granted: trio.Event | None = None

    # ------------------------------------------------------------------ CPG callbacks
    def _on_deliver(self, sender: Address, payload: bytes) -> None:
        records, _ = parse_records(payload)
        for meta, data, _ in records:
            self._push(Event(meta.get("t", "?"), uid_of(sender), meta, data))

    def _on_confchg(self, members: list[Address], left: list[Address], joined: list[Address]) -> None:
        self._live = {uid_of(a) for a in members}
        self._push(Event("confchg", "", {}, left=[uid_of(a) for a in left],
                         members=sorted(uid_of(a) for a in members), joined=[uid_of(a) for a in joined]))

    def _push(self, ev: Event) -> None:
        self._queue.append(ev)
        self._delivered += 1
        self._wakeup.set()

    # ------------------------------------------------------------------ sending
    async def _mcast(self, meta: dict[str, Any], data: bytes = b"") -> None:
        assert self._cpg is not None
        blob = encode_record(meta, data)
        while not self._cpg.mcast(blob):
            await trio.sleep(RETRY_INTERVAL)

    async def _send_and_wait(self, meta: dict[str, Any], data: bytes = b"") -> None:
        """Broadcast one record and return once we have processed it ourselves."""
        self._seq += 1
        seq = self._seq
        done = self._waiting[seq] = trio.Event()
        try:
            await self._mcast({**meta, "seq": seq}, data)
            await done.wait()
        finally:
            self._waiting.pop(seq, None)

    # ------------------------------------------------------------------ processing
    async def _wait_for_delivery(self, seen: int) -> None:
        while self._delivered == seen:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def _process_loop(self) -> None:
        while True:
            seen = self._delivered
            progressed = await (self._step_joined() if self._joined else self._step_unjoined())
            if not progressed:
                await self._wait_for_delivery(seen)

    async def _step_unjoined(self) -> bool:
        """Look at the next event while we wait for our accept (events stay queued: the
        ones after our answered join are ours to process once accepted)."""
        assert self._handler is not None and self._me is not None
        if self._scanned >= len(self._queue):
            return False
        ev = self._queue[self._scanned]
        self._scanned += 1
        if self._first_confchg:
            self._queue.popleft()
            self._scanned = 0
            if ev.kind != "confchg":
                return True  # a record sent before our own group join reached us: not ours
            self._first_confchg = False
            if set(ev.members) == set(ev.joined) and ev.members[0] == self.uid:
                # a group made of newcomers only: the first of them starts the cluster
                await self._start_alone("first in a new CPG group")
            else:
                await self._send_join()
            return True
        if ev.kind == "accept" and ev.meta["uid"] == self.uid:
            await self._accepted_by(ev)
            return True
        if ev.kind == "confchg":
            if ev.left:  # the master may be gone: who is left, and are they all joiners?
                self._candidates, self._proven = set(ev.members) - {self.uid}, set()
                await self._send_join()
        elif ev.kind == "join":
            self._proven.add(ev.sender)
        elif ev.kind == "elected":
            self._candidates = None
            if ev.sender != self.uid:
                await self._send_join()
        elif ev.sender != self.uid:
            self._candidates = None  # only members send these: a master exists
        if self._candidates is not None and self._candidates <= self._proven:
            # everyone left in the group is waiting for an answer, so nobody will give one:
            # the first of them starts the cluster here and tells the others to ask again
            if min(self._candidates | {self.uid}) == self.uid:
                for _ in range(self._scanned):
                    self._queue.popleft()
                self._scanned = 0
                await self._start_alone("no member left to answer our join")
                if self._joined:
                    await self._mcast({"t": "elected"})
            self._candidates = None
        return True

    async def _send_join(self) -> None:
        assert self._me is not None
        self._join_n += 1
        await self._mcast({"t": "join", "node": self._me.node.hex(), "n": self._join_n}, self._opaque)

    async def _start_alone(self, why: str) -> None:
        assert self._handler is not None and self._me is not None
        ok, reply = self._handler.join_check(self._me, self._opaque)
        if not ok:
            self._reject(reply)
            return
        self.members = [self._me]
        log.info("%s (CPG group %s): starting the cluster", why, self.group)
        await self._become_member(reply)

    async def _accepted_by(self, accept: Event) -> None:
        """The stream up to our answered join is already in the master's reply."""
        while self._queue:
            ev = self._queue.popleft()
            if ev.kind == "join" and ev.sender == self.uid and ev.meta["n"] == accept.meta["n"]:
                break
        self._scanned = 0
        accept.done = True
        if not accept.meta["ok"]:
            self._reject(accept.data)
            return
        self.members = [member_from_json(j) for j in accept.meta["members"]]
        self._lock_queue = [(u, t) for u, t in accept.meta["locks"]]
        await self._become_member(accept.data)

    def _reject(self, reply: bytes) -> None:
        self._reject_reason = reply.decode(errors="replace")
        self._accepted.set()

    async def _become_member(self, reply: bytes) -> None:
        assert self._handler is not None and self._me is not None
        self._joined = True
        self._accepted.set()
        await self._handler.on_accept(self._me, list(self.members), reply, True)

    async def _step_joined(self) -> bool:
        if not self._queue:
            return False
        ev = self._queue[0]
        if ev.kind == "join" and not ev.done and not self._is_member(ev.sender):
            if not await self._settle_join(ev):
                return False  # wait at this position for the answer
        self._queue.popleft()
        if not ev.done:
            await self._apply(ev)
        if ev.sender == self.uid and "seq" in ev.meta:
            waiter = self._waiting.get(ev.meta["seq"])
            if waiter is not None:
                waiter.set()
        return True

    def _is_member(self, uid: str) -> bool:
        return any(m.uid == uid for m in self.members)

    async def _settle_join(self, join: Event) -> bool:
        """At ``join``'s position: apply its accept, drop it if the joiner left, or (as the
        master) answer it; False while the answer is still to come."""
        assert self._handler is not None
        for ev in list(self._queue)[1:]:
            if (ev.kind == "accept" and ev.meta["uid"] == join.sender
                    and ev.meta["n"] == join.meta["n"] and not ev.done):
                ev.done = True
                if ev.meta["ok"]:
                    joiner = Member(join.sender, bytes.fromhex(join.meta["node"]))
                    self.members.append(joiner)
                    await self._handler.on_accept(joiner, list(self.members), ev.data, False)
                self._answered.discard(join.sender)
                join.done = True
                return True
            if ev.kind == "confchg" and join.sender in ev.left:
                join.done = True  # the joiner is gone before anyone answered
                self._answered.discard(join.sender)
                return True
        master = next((m for m in self.members if m.uid in self._live), None)
        if master is not None and master.uid == self.uid and join.sender not in self._answered:
            self._answered.add(join.sender)
            joiner = Member(join.sender, bytes.fromhex(join.meta["node"]))
            ok, reply = self._handler.join_check(joiner, join.data)
            members = self.members + [joiner] if ok else self.members
            await self._mcast({"t": "accept", "uid": join.sender, "n": join.meta["n"], "ok": ok,
                               "members": [member_to_json(m) for m in members],
                               "locks": [list(e) for e in self._lock_queue]}, reply)
        return False

    async def _apply(self, ev: Event) -> None:
        assert self._handler is not None
        if ev.kind == "confchg":
            for uid in ev.left:
                gone = [m for m in self.members if m.uid == uid]
                if gone and uid != self.uid:
                    self.members = [m for m in self.members if m.uid != uid]
                    self._drop_locks(uid)
                    await self._handler.on_leave(gone[0], list(self.members))
            return
        if not self._is_member(ev.sender):
            return  # a duplicate join, an accept for a join already settled, a stray record
        if ev.kind == "update":
            idx = next(i for i, m in enumerate(self.members) if m.uid == ev.sender)
            self.members[idx] = Member(ev.sender, bytes.fromhex(ev.meta["node"]))
            await self._handler.on_update(self.members[idx], list(self.members))
        elif ev.kind == "notify":
            sender = next(m for m in self.members if m.uid == ev.sender)
            await self._handler.on_notify(sender, ev.data)
        elif ev.kind == "lock":
            self._lock_queue.append((ev.sender, ev.meta["tok"]))
            self._check_grant()
        elif ev.kind == "unlock":
            # anywhere in the queue: a request given up before its grant is withdrawn
            self._lock_queue = [e for e in self._lock_queue if e != (ev.sender, ev.meta["tok"])]
            self._check_grant()

    def _drop_locks(self, uid: str) -> None:
        self._lock_queue = [e for e in self._lock_queue if e[0] != uid]
        self._check_grant()

    def _check_grant(self) -> None:
        if (self._granted is not None and self._lock_queue
                and self._lock_queue[0] == (self.uid, self._lock_token)):
            self._granted.set()

    # ------------------------------------------------------------------ driver protocol
    async def run(self, handler: ClusterHandler, me: bytes, opaque: bytes, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._handler, self._opaque = handler, opaque
        cpg = CpgGroup(self.group, self._on_deliver, self._on_confchg)
        try:
            cpg.initialize()
        except CpgError as e:
            raise JoinRejected(f"cannot connect to corosync: {e}") from None
        self._cpg = cpg
        try:
            self.uid = uid_of(cpg.local_address())
            self._me = Member(self.uid, me)
            fd = cpg.fd()
            while not cpg.join():
                await trio.sleep(0.1)
            log.info("joined CPG group %s as %s", self.group, self.uid)
            rejected = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch_loop, fd)
                nursery.start_soon(self._process_loop)
                await self._accepted.wait()
                if self._reject_reason is not None:
                    rejected = True
                    nursery.cancel_scope.cancel()
                else:
                    task_status.started()
            if rejected:
                raise JoinRejected(self._reject_reason)
        finally:
            self._cpg = None
            cpg.finalize()

    async def _dispatch_loop(self, fd: int) -> None:
        assert self._cpg is not None
        while True:
            # with socket IPC the descriptor never turns readable when corosync dies; only
            # a dispatch notices, so dispatch now and then even when nothing arrived
            with trio.move_on_after(LIVENESS_INTERVAL):
                await trio.lowlevel.wait_readable(fd)
            try:
                self._cpg.dispatch()
            except CpgError as e:
                if self._left:
                    return
                log.error("lost the connection to corosync: %s", e)
                raise

    async def sync(self) -> None:
        """A round trip through the group: everything ordered before it is processed."""
        if self._joined and not self._left:
            await self._send_and_wait({"t": "sync"})

    async def notify(self, data: bytes) -> None:
        await self._send_and_wait({"t": "notify"}, data)

    @asynccontextmanager
    async def exclusive(self):
        async with self._op_lock:
            self._lock_token += 1
            tok = self._lock_token
            self._granted = trio.Event()
            try:
                await self._send_and_wait({"t": "lock", "tok": tok})
                await self._granted.wait()
                yield
            finally:
                self._granted = None
                with trio.CancelScope(shield=True):
                    if self._cpg is not None and not self._left:
                        await self._mcast({"t": "unlock", "tok": tok})

    async def update_node(self, node: bytes) -> None:
        await self._send_and_wait({"t": "update", "node": node.hex()})

    async def leave(self) -> None:
        """Leave the group: every member sees a configuration change at once."""
        if self._left or self._cpg is None:
            return
        self._left = True
        try:
            while not self._cpg.leave():
                await trio.sleep(0.1)
        except CpgError as e:
            log.warning("could not leave the CPG group cleanly: %s", e)
