"""The `zookeeper` cluster driver: a ZooKeeper ensemble (via kazoo) as the shared log.

``-c zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]``.  Under
``/<CLUSTER_ID>`` (default ``/sheepdog``), so several clusters share one ensemble:

* ``members/<uid>`` — an ephemeral znode per sheep: it vanishes when the session expires
  (a crash, a cut link), which is how the others notice the node is gone;
* ``log/<gen>/r<seq>`` — persistent sequential znodes, one per event: ZooKeeper's
  sequence numbers are the total order;
* ``state`` — membership at the end of the log; ``locks/log``, ``locks/op`` — kazoo locks.

Session states (kazoo reports them on its own thread; they are handed to the trio thread
with the run's token): while SUSPENDED (connection lost, session maybe alive) the node
stops acknowledging I/O and backend calls fail at once instead of queueing; on
reconnection within the session timeout it carries on as if nothing happened (ZooKeeper
kept its ephemeral znodes and locks).  When the session is LOST (expired: the others have
already declared us gone) the node drops its membership at once, rejoins as a new
incarnation when ZooKeeper is reachable again, and revalidates its objects like any
rejoining node; it acknowledges I/O again only once it is a member again.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from typing import Any

import trio

from .base import Member
from .logdriver import OUTAGE_WAIT, BackendUnavailable, LogDriver, parse_records

log = logging.getLogger("sheep.cluster.zk")

CONNECT_WAIT = 2.0  # longest wait for a server's answer to one connection attempt


def parse_option(arg: str) -> tuple[str, str, float]:
    """``HOST:PORT[,HOST:PORT...][/ID][,timeout=MS]`` -> (hosts, root path, timeout s)."""
    timeout = 3.0
    parts = []
    for part in arg.split(","):
        if part.startswith("timeout="):
            timeout = int(part[len("timeout="):]) / 1000
        else:
            parts.append(part)
    hosts = ",".join(parts)
    root = "/sheepdog"
    if "/" in hosts:
        hosts, _, cid = hosts.partition("/")
        root = "/" + cid.strip("/")
    if not hosts:
        raise ValueError("zookeeper: no HOST:PORT given")
    return hosts, root, timeout


class _ZkLock:
    """A kazoo lock whose pending acquire the backend can cancel when the session is lost.

    An acquire interrupted by a mere disconnection is retried by kazoo once the connection
    is back, within the same session; a release waits up to `OUTAGE_WAIT` for it, and if
    it gives up the znode is deleted later (`tidy`): a lock znode left behind while the
    session that owns it lives on would block every other node."""

    def __init__(self, backend: "ZkBackend", lock) -> None:
        self.backend, self.lock = backend, lock

    def acquire(self) -> None:
        with self.backend._acquiring_guard:
            self.backend._acquiring.add(self.lock)
        try:
            self.lock.acquire()
        finally:
            with self.backend._acquiring_guard:
                self.backend._acquiring.discard(self.lock)

    def release(self) -> None:
        from kazoo.exceptions import NoNodeError
        lock, b = self.lock, self.backend
        if not lock.is_acquired:
            return
        path = f"{lock.path}/{lock.node}"
        lock.is_acquired, lock.node = False, None
        try:
            b._patiently(lambda deadline: b._get(b.zk.delete_async(path), deadline))
        except NoNodeError:
            pass
        except Exception:
            with b._acquiring_guard:
                b._orphans.add(path)
            raise


class ZkBackend:
    def __init__(self, arg: str) -> None:
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
        self.hosts, self.root, self.timeout = parse_option(arg)
        # kazoo waits timeout / len(hosts) for a server to answer a connection attempt: with
        # a long session timeout, one attempt at a server still starting up (it accepts the
        # connection, then says nothing) would outlast the session.  Each server listed
        # several times shortens that wait (kazoo tries the list round robin).
        servers = self.hosts.split(",")
        repeat = max(1, math.ceil(self.timeout / (CONNECT_WAIT * len(servers))))
        # reconnect quickly after an outage (kazoo's default backoff grows to a minute)
        self.zk = KazooClient(hosts=",".join(servers * repeat), timeout=self.timeout,
                              connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0))
        self.gen = 0
        self.on_state = None  # set by the driver: called from kazoo's thread
        self._acquiring: set = set()  # kazoo Locks being acquired (see cancel_lock_waits)
        self._acquiring_guard = threading.Lock()
        self._started = False
        self._orphans: set[str] = set()  # lock znodes whose release gave up (see tidy)

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def setup(self, uid: str) -> None:
        if not self._started:  # once: kazoo reconnects (and renews a lost session) by itself
            self.zk.start(timeout=max(10.0, self.timeout * 3))
            self.zk.add_listener(lambda state: self.on_state and self.on_state(state))
            self._started = True
        for d in ("members", "log", "locks"):
            self.zk.ensure_path(self._p(d))
        self.zk.create(self._p("members", uid), b"", ephemeral=True)

    def available(self) -> bool:
        """Connected right now (non-blocking): calls made otherwise would wait in kazoo's
        queue until the connection is back."""
        return self.zk.connected

    def lock(self, name: str) -> "_ZkLock":
        return _ZkLock(self, self.zk.Lock(self._p("locks", name)))

    def tidy(self) -> None:
        """Delete lock znodes whose release gave up during an outage."""
        from kazoo.exceptions import NoNodeError
        with self._acquiring_guard:
            orphans = list(self._orphans)
        for path in orphans:
            try:
                self.zk.delete(path)
            except NoNodeError:
                pass
            with self._acquiring_guard:
                self._orphans.discard(path)

    def cancel_lock_waits(self) -> None:
        """The session is gone: lock waits of the old incarnation give up (kazoo would
        otherwise retry them into the next session)."""
        with self._acquiring_guard:
            for lock in self._acquiring:
                lock.cancel()

    def read_state(self) -> dict[str, Any]:
        if not self.zk.exists(self._p("state")):
            return {"gen": 0, "members": []}
        data, _ = self.zk.get(self._p("state"))
        return json.loads(data)

    @staticmethod
    def _get(result, deadline: float):
        """Wait for a kazoo async result, at most until ``deadline`` (kazoo's blocking calls
        would wait for ever for a connection that does not come back)."""
        return result.get(timeout=max(0.05, deadline - time.monotonic()))

    @staticmethod
    def _patiently(step):
        """Run an idempotent ``step(deadline)`` again after a lost connection (not a lost
        session: that raises) until it succeeds or `OUTAGE_WAIT` has passed."""
        from kazoo.exceptions import ConnectionLoss
        from kazoo.handlers.threading import KazooTimeoutError
        deadline = time.monotonic() + OUTAGE_WAIT
        while True:
            try:
                return step(deadline)
            except (ConnectionLoss, KazooTimeoutError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def write_state(self, state: dict[str, Any]) -> None:
        from kazoo.exceptions import NodeExistsError, NoNodeError
        path, data = self._p("state"), json.dumps(state).encode()

        def step(deadline: float) -> None:
            try:
                self._get(self.zk.set_async(path, data), deadline)
            except NoNodeError:
                try:
                    self._get(self.zk.create_async(path, data), deadline)
                except NodeExistsError:
                    self._get(self.zk.set_async(path, data), deadline)
        self._patiently(step)

    def open_log(self, gen: int) -> None:
        self.gen = gen
        self.zk.ensure_path(self._p("log", str(gen)))

    def _seqs(self) -> list[tuple[int, str]]:
        names = self.zk.get_children(self._p("log", str(self.gen)))
        return sorted((int(n[1:]), n) for n in names if n.startswith("r"))

    def log_end(self) -> int:
        seqs = self._seqs()
        return seqs[-1][0] + 1 if seqs else 0

    def read_records(self, pos: int) -> tuple[list[tuple[dict, bytes, int]], int]:
        out = []
        for seq, name in self._seqs():
            if seq < pos:
                continue
            data, _ = self.zk.get(self._p("log", str(self.gen), name))
            records, _ = parse_records(data)
            out += [(meta, body, seq + 1) for meta, body, _ in records]
            pos = seq + 1
        return out, pos

    def append(self, records: list[bytes], pos: int) -> None:
        """Each record exactly once, even when the connection breaks during a create (the
        caller holds the log lock, so every record past the end we saw is ours)."""
        from kazoo.exceptions import ConnectionLoss
        from kazoo.handlers.threading import KazooTimeoutError
        logdir = self._p("log", str(self.gen))

        def names() -> list[str]:
            return self._patiently(lambda d: self._get(self.zk.get_children_async(logdir), d))
        base = max([int(n[1:]) + 1 for n in names() if n.startswith("r")], default=0)
        for done, blob in enumerate(records):
            deadline = time.monotonic() + OUTAGE_WAIT
            while True:
                try:
                    self._get(self.zk.create_async(logdir + "/r", blob, sequence=True), deadline)
                    break
                except (ConnectionLoss, KazooTimeoutError):
                    if time.monotonic() >= deadline:
                        raise
                time.sleep(0.2)
                if sum(1 for n in names() if n.startswith("r") and int(n[1:]) >= base) > done:
                    break  # it landed before the connection broke

    def new_generation(self, gen: int, keep_uid: str) -> None:
        for name in self.zk.get_children(self._p("log")):
            if name != str(gen):
                self.zk.delete(self._p("log", name), recursive=True)
        self.open_log(gen)

    def is_dead(self, uid: str) -> bool:
        return self.zk.exists(self._p("members", uid)) is None

    def dead_tokens(self, exclude: str) -> list[str]:
        """Members of the state whose ephemeral znode has gone (expired sessions)."""
        alive = set(self.zk.get_children(self._p("members")))
        return [m[0] for m in self.read_state()["members"] if m[0] not in alive and m[0] != exclude]

    def drop_token(self, uid: str) -> None:
        try:
            self.zk.delete(self._p("members", uid))
        except Exception:  # NoNodeError: already gone with its session
            pass

    def close(self) -> None:
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:
            pass


class ZookeeperDriver(LogDriver):
    name = "zookeeper"

    def __init__(self, arg: str) -> None:
        super().__init__(ZkBackend(arg))
        self.suspended = False
        self._rejoining = False  # session lost, not a member again yet
        self._closing = False
        self._session_lost = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.backend.on_state = self._kazoo_state

    def _kazoo_state(self, state: str) -> None:
        """kazoo's thread (it must not block): queue the change for the trio thread."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._session_state, state)
        except trio.RunFinishedError:
            pass

    def _session_state(self, state: str) -> None:
        """Trio thread: a kazoo session state change, in kazoo's order."""
        log.warning("zookeeper session %s", state)
        if self._left or self._closing:
            return
        if state == "LOST":
            self._lose_membership()
        elif state == "SUSPENDED":
            self._set_suspended(True)
        elif state == "CONNECTED" and not self._rejoining:
            self._set_suspended(False)

    def _set_suspended(self, suspended: bool) -> None:
        self.suspended = suspended
        if self._handler is not None and hasattr(self._handler, "on_suspended"):
            self._handler.on_suspended(suspended)

    def _lose_membership(self) -> None:
        """The others have declared us gone: stop acting as a member right now."""
        if self._handler is None or not self._joined and not self._rejoining:
            return  # still joining for the first time: `_join` retries by itself
        self._set_suspended(True)
        self._rejoining = True
        self._joined = False  # events of the old incarnation are not ours any more
        self.backend.cancel_lock_waits()
        if hasattr(self._handler, "on_rejoining"):
            self._handler.on_rejoining()
        self._session_lost.set()

    async def run(self, handler, me: bytes, opaque: bytes, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(super().run, handler, me, opaque)
                task_status.started()
                nursery.start_soon(self._watch_session, handler, me)
        finally:
            self._closing = True

    async def _watch_session(self, handler, me: bytes) -> None:
        """A lost session means the others already declared us gone: rejoin as a new
        incarnation (our objects are then revalidated like any rejoining node's)."""
        while not self._left:
            await self._session_lost.wait()
            self._session_lost = trio.Event()
            while not self._left:
                try:
                    await self._rejoin(handler, me)
                except BackendUnavailable as e:
                    log.warning("cannot rejoin yet: %s", e)
                    await trio.sleep(0.5)
                    continue
                if not self._session_lost.is_set():
                    break
                self._session_lost = trio.Event()  # lost again while rejoining: once more
            self._rejoining = False
            log.info("rejoined the cluster as %s", self.uid)
            self._set_suspended(not self.backend.available())

    async def _rejoin(self, handler, me: bytes) -> None:
        while not self.backend.available():
            await trio.sleep(0.2)
        async with self._process_lock:  # no event of the old incarnation is in progress
            self.uid = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self._me = Member(self.uid, me)
            self._joined = False
            self._accepted = trio.Event()
            self._reject_reason = None
            self._gen = -1
            self._pos = 0
            self.members = []
            self._pending.clear()
        self._opaque = handler.join_opaque() if hasattr(handler, "join_opaque") else self._opaque
        await self._io(self.backend.setup, self.uid, fail_fast=False)
        await self._join()
