"""A bare cluster member on the corosync driver, driven line by line from stdin.

    python -m tests.corosync.member GROUP OPAQUE

Commands: ``notify TEXT``, ``burst N PREFIX`` (N notifies in a row), ``lock``,
``unlock``, ``sync``, ``quit``.  It prints one line per event it sees, in the order it
processes them: ``accept UID N``, ``leave UID N``, ``notify SENDER TEXT``, ``update UID``,
and ``ready UID``, ``locked``, ``unlocked``, ``synced``, ``done``, ``rejected REASON``.
As the master it refuses joiners whose opaque is ``bad`` (with the reason ``bad
joiner``).
"""
from __future__ import annotations

import sys
from contextlib import AsyncExitStack

import trio

from sheep.server.cluster.base import JoinRejected, Member
from sheep.server.cluster.corosync import CorosyncDriver


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Handler:
    def join_check(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        if opaque == b"bad":
            return False, b"bad joiner"
        return True, b"welcome"

    async def on_accept(self, joiner: Member, members: list[Member], reply: bytes, is_me: bool) -> None:
        say("accept", joiner.uid, len(members))

    async def on_leave(self, left: Member, members: list[Member]) -> None:
        say("leave", left.uid, len(members))

    async def on_update(self, member: Member, members: list[Member]) -> None:
        say("update", member.uid)

    async def on_notify(self, sender: Member, data: bytes) -> None:
        say("notify", sender.uid, data.decode())


async def commands(driver: CorosyncDriver) -> None:
    stdin = trio.lowlevel.FdStream(0)
    buf = b""
    async with AsyncExitStack() as held:
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd, *args = line.decode().split()
                if cmd == "notify":
                    await driver.notify(args[0].encode())
                elif cmd == "burst":
                    for i in range(int(args[0])):
                        await driver.notify(f"{args[1]}{i}".encode())
                elif cmd == "lock":
                    await held.enter_async_context(driver.exclusive())
                    say("locked")
                    continue
                elif cmd == "unlock":
                    await held.aclose()
                    say("unlocked")
                    continue
                elif cmd == "sync":
                    await driver.sync()
                    say("synced")
                    continue
                elif cmd == "quit":
                    await driver.leave()
                    return
                say("done", cmd)


async def main(group: str, opaque: bytes) -> None:
    driver = CorosyncDriver(group)
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(driver.run, Handler(), b"\0" * 80, opaque)
        except JoinRejected as e:
            say("rejected", e)
            nursery.cancel_scope.cancel()
            return
        say("ready", driver.uid)
        await commands(driver)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2].encode())
