"""The corosync driver's ordering, mutex and join refusal, seen by bare member processes
(tests/corosync/member.py) on a real corosync."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class MemberProc:
    def __init__(self, group: str, opaque: str = "ok") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.corosync.member", group, opaque],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, what: str, cond, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(list(self.lines)):
                return
            if self.proc.poll() is not None and not self._reader.is_alive() and not cond(list(self.lines)):
                raise AssertionError(f"member exited {self.proc.returncode} before {what}: "
                                     f"{self.lines} {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: {self.lines}")

    def wait_line(self, line: str, timeout: float = 20) -> None:
        self.wait_for(repr(line), lambda lines: line in lines, timeout)

    @property
    def uid(self) -> str:
        return next(line.split()[1] for line in self.lines if line.startswith("ready "))

    def notifies(self) -> list[str]:
        return [line for line in self.lines if line.startswith("notify ")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def started(group: str, n: int) -> list[MemberProc]:
    members = []
    for _ in range(n):
        m = MemberProc(group)
        m.wait_for("ready", lambda lines: any(x.startswith("ready ") for x in lines))
        members.append(m)
    for m in members:
        m.wait_for(f"{n} members", lambda lines: f"accept {members[-1].uid} {n}" in lines)
    return members


def test_every_member_sees_one_order(corosync):
    group = f"o{uuid.uuid4().hex[:8]}"
    members = started(group, 3)
    try:
        for i, m in enumerate(members):
            m.send(f"burst 60 m{i}-")
        for m in members:
            m.wait_for("180 notifies", lambda lines: sum(x.startswith("notify ") for x in lines) == 180)
        orders = [m.notifies() for m in members]
        assert orders[0] == orders[1] == orders[2]
        for i, m in enumerate(members):  # each sender's own messages in the order it sent them
            mine = [x.split()[2] for x in orders[0] if x.split()[1] == m.uid]
            assert mine == [f"m{i}-{k}" for k in range(60)]
    finally:
        for m in members:
            m.stop()


def test_mutex_is_exclusive_and_freed_by_a_dying_holder(corosync):
    a, b, c = members = started(f"x{uuid.uuid4().hex[:8]}", 3)
    try:
        a.send("lock")
        a.wait_line("locked")
        b.send("lock")  # b's command loop now waits for the grant
        c.send("sync")  # a round trip through the group
        c.wait_line("synced")
        time.sleep(1)
        assert "locked" not in b.lines
        a.proc.kill()
        a.wait_for("exit", lambda lines: a.proc.poll() is not None)
        b.wait_line("locked")
        c.send("lock")  # c's command loop now waits for the grant
        time.sleep(1)
        assert "locked" not in c.lines
        b.send("unlock")
        c.wait_line("locked")
        assert f"leave {a.uid} 2" in c.lines
    finally:
        for m in members:
            m.stop()


def test_master_refusal_reaches_the_joiner(corosync):
    group = f"r{uuid.uuid4().hex[:8]}"
    (a,) = started(group, 1)
    bad = MemberProc(group, "bad")
    try:
        bad.wait_line("rejected bad joiner")
        assert bad.proc.wait(20) == 0
        good = MemberProc(group)
        good.wait_for("accept", lambda lines: any(x.startswith("accept ") and x.endswith(" 2") for x in lines))
        a.wait_for("the good joiner only",
                   lambda lines: [x for x in lines if x.startswith("accept ")][-1].endswith(" 2"))
        good.stop()
    finally:
        a.stop()
        bad.stop()


def test_joiner_sees_exactly_what_follows_its_accept(corosync):
    """A member joining during a stream of broadcasts gets every broadcast ordered after
    its accept and none before, in the others' order."""
    group = f"j{uuid.uuid4().hex[:8]}"
    a, b = members = started(group, 2)
    try:
        a.send("burst 1000 a")
        b.send("burst 1000 b")
        a.wait_for("some traffic", lambda lines: sum(x.startswith("notify ") for x in lines) > 50)
        c = MemberProc(group)
        members.append(c)
        c.wait_for("ready", lambda lines: any(x.startswith("ready ") for x in lines))
        a.send("notify last")  # after the bursts (a's commands run one at a time)
        for m in (a, b):
            m.wait_for("2001 notifies", lambda lines: sum(x.startswith("notify ") for x in lines) == 2001,
                       timeout=60)
        c.wait_line(a.notifies()[-1], timeout=60)  # the stream's end (c joined before `last`)
        accept = f"accept {c.uid} 3"
        for m in members[:2]:
            assert accept in m.lines
            after = m.lines[m.lines.index(accept) + 1:]
            assert [x for x in after if x.startswith("notify ")] == c.notifies()
            assert len(m.notifies()) == 2001
        assert 0 < len(c.notifies()) <= 2001
    finally:
        for m in members:
            m.stop()
