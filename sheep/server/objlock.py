"""Per-object reader/writer lock of a node's store (trio).

Plain peer reads and writes of an object only share it: a sequential writer (nbdcopy,
a guest's dd) sends the pieces of one object concurrently, and serializing them made
every piece wait for all the earlier ones' disk writes.  Writes to the same object on
one replica were never an ordering guarantee across replicas anyway (the gateway sends
concurrent writes independently), and clients do not overlap writes in flight.

Everything that must see or make the object whole takes it exclusively: creation,
removal, ledger read-modify-write, recovery copying the object, repair, moving it to
another disk.  `async with lock` is the exclusive form.  Waiting writers go first, so a
stream of shared holders cannot starve recovery.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio


class ObjectLock:
    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive holders queued
        self._changed = trio.Event()

    def busy(self) -> bool:
        return bool(self._shared or self._exclusive or self._waiting)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive or self._waiting:
            await self._changed.wait()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            if not self._shared:
                self._wake()

    async def acquire(self) -> None:
        """Exclusive."""
        self._waiting += 1
        try:
            while self._exclusive or self._shared:
                await self._changed.wait()
        except BaseException:
            self._waiting -= 1
            self._wake()  # shared waiters may have been held back by us only
            raise
        self._waiting -= 1
        self._exclusive = True

    def release(self) -> None:
        self._exclusive = False
        self._wake()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
