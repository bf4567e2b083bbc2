"""The `local` cluster driver: sheep processes on one machine, no other software.

A `LogBackend` on plain files (objects.md §12 lets us choose the mechanism):

* ``DIR/members/<uid>`` — each live sheep holds an exclusive ``flock`` on its own file.
  The kernel drops it the moment the process dies (even under ``kill -9``, long before the
  zombie is reaped), so "can I lock it?" is the liveness test; ``kill(pid, 0)`` is never
  used.
* ``DIR/log.<gen>`` — the append-only event log; records carry a CRC, and a record torn
  by a process killed mid-append is cut off by the next appender.
* ``DIR/state`` — membership at the end of the log (rewritten atomically).
* ``DIR/log.lock``, ``DIR/op.lock`` — the cluster-wide mutexes, as ``flock``s.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any

from .logdriver import LogDriver, parse_records


class FileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


class FileBackend:
    def __init__(self, path: str) -> None:
        self.path = path
        self._member_fd: int | None = None
        self._log_fd: int | None = None

    def _p(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def setup(self, uid: str) -> None:
        os.makedirs(self._p("members"), exist_ok=True)
        tmp = self._p("members", f".{uid}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, self._p("members", uid))  # locked before it is visible
        self._member_fd = fd

    def lock(self, name: str) -> FileLock:
        return FileLock(self._p(f"{name}.lock"))

    def read_state(self) -> dict[str, Any]:
        try:
            with open(self._p("state")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"gen": 0, "members": []}

    def write_state(self, state: dict[str, Any]) -> None:
        with open(self._p("state.tmp"), "w") as f:
            json.dump(state, f)
        os.rename(self._p("state.tmp"), self._p("state"))

    def open_log(self, gen: int) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd = os.open(self._p(f"log.{gen}"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def _tail(self, pos: int) -> bytes:
        assert self._log_fd is not None
        size = os.fstat(self._log_fd).st_size
        return os.pread(self._log_fd, size - pos, pos) if size > pos else b""

    def log_end(self) -> int:
        return parse_records(self._tail(0))[1]

    def read_records(self, pos: int) -> tuple[list[tuple[dict, bytes, int]], int]:
        records, used = parse_records(self._tail(pos))
        return [(m, d, pos + end) for m, d, end in records], pos + used

    def append(self, records: list[bytes], pos: int) -> None:
        assert self._log_fd is not None
        if os.fstat(self._log_fd).st_size > pos:
            os.ftruncate(self._log_fd, pos)  # a torn record from a dead appender
        os.write(self._log_fd, b"".join(records))

    def new_generation(self, gen: int, keep_uid: str) -> None:
        for name in os.listdir(self.path):
            if name.startswith("log.") and name != "log.lock":
                os.unlink(self._p(name))
        for uid in self.dead_tokens(keep_uid):
            self.drop_token(uid)
        self.open_log(gen)

    def is_dead(self, uid: str) -> bool:
        """True if no live process holds ``members/<uid>`` (or it is gone); never blocks."""
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

    def dead_tokens(self, exclude: str) -> list[str]:
        return [name for name in os.listdir(self._p("members"))
                if not name.startswith(".") and name != exclude and self.is_dead(name)]

    def drop_token(self, uid: str) -> None:
        try:
            os.unlink(self._p("members", uid))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


class LocalDriver(LogDriver):
    name = "local"

    def __init__(self, path: str) -> None:
        super().__init__(FileBackend(path))
        self.path = path
