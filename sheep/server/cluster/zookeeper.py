"""The `zookeeper` cluster driver: a ZooKeeper ensemble (via kazoo) as the shared log.

``-c zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]``.  Under
``/<CLUSTER_ID>`` (default ``/sheepdog``), so several clusters share one ensemble:

* ``members/<uid>`` — an ephemeral znode per sheep: it vanishes when the session expires
  (a crash, a cut link), which is how the others notice the node is gone;
* ``log/<gen>/r<seq>`` — persistent sequential znodes, one per event: ZooKeeper's
  sequence numbers are the total order;
* ``state`` — membership at the end of the log; ``locks/log``, ``locks/op`` — kazoo locks.

Session states: while SUSPENDED (connection lost, session maybe alive) the node stops
acknowledging I/O; when the session is LOST it rejoins as a new incarnation and revalidates
its objects; on reconnection it carries on.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import trio

from .logdriver import LogDriver, parse_records

log = logging.getLogger("sheep.cluster.zk")


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


class ZkBackend:
    def __init__(self, arg: str) -> None:
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
        self.hosts, self.root, self.timeout = parse_option(arg)
        # reconnect quickly after an outage (kazoo's default backoff grows to a minute)
        self.zk = KazooClient(hosts=self.hosts, timeout=self.timeout,
                              connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0))
        self.gen = 0
        self.on_state = None  # set by the driver: called from kazoo's thread

    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def setup(self, uid: str) -> None:
        if not self.zk.connected:
            self.zk.start(timeout=max(10.0, self.timeout * 3))
            self.zk.add_listener(lambda state: self.on_state and self.on_state(state))
        for d in ("members", "log", "locks"):
            self.zk.ensure_path(self._p(d))
        self.zk.create(self._p("members", uid), b"", ephemeral=True)

    def lock(self, name: str):
        return self.zk.Lock(self._p("locks", name))

    def read_state(self) -> dict[str, Any]:
        if not self.zk.exists(self._p("state")):
            return {"gen": 0, "members": []}
        data, _ = self.zk.get(self._p("state"))
        return json.loads(data)

    def write_state(self, state: dict[str, Any]) -> None:
        data = json.dumps(state).encode()
        if self.zk.exists(self._p("state")):
            self.zk.set(self._p("state"), data)
        else:
            self.zk.create(self._p("state"), data)

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
        for blob in records:
            self.zk.create(self._p("log", str(self.gen), "r"), blob, sequence=True)

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
        self._session_lost = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.backend.on_state = self._kazoo_state

    def _kazoo_state(self, state: str) -> None:
        """kazoo's thread: hand the session state to the trio thread."""
        if self._token is None:
            return
        try:
            trio.from_thread.run_sync(self._session_state, state, trio_token=self._token)
        except trio.RunFinishedError:
            pass

    def _session_state(self, state: str) -> None:
        log.warning("zookeeper session %s", state)
        self.suspended = state != "CONNECTED"
        if self._handler is not None and hasattr(self._handler, "on_suspended"):
            self._handler.on_suspended(self.suspended)
        if state == "LOST":
            self._session_lost.set()

    async def run(self, handler, me: bytes, opaque: bytes, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run, handler, me, opaque)
            task_status.started()
            nursery.start_soon(self._watch_session, handler, me)

    async def _watch_session(self, handler, me: bytes) -> None:
        """A lost session means the others already declared us gone: rejoin as a new
        incarnation (our objects are then revalidated like any rejoining node's)."""
        import os
        import uuid
        while not self._left:
            await self._session_lost.wait()
            self._session_lost = trio.Event()
            while not self.backend.zk.connected:
                await trio.sleep(0.2)
            self.uid = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self._me = type(self._me)(self.uid, me) if self._me else None
            self._joined = False
            self._accepted = trio.Event()
            self._gen = -1
            self.members = []
            self._pending.clear()
            if hasattr(handler, "on_rejoining"):
                handler.on_rejoining()
            self._opaque = handler.join_opaque() if hasattr(handler, "join_opaque") else self._opaque
            await self._io(self.backend.setup, self.uid)
            await self._join()
            log.info("rejoined the cluster as %s", self.uid)
