"""Failures: a sheep killed during a copy, sheep that vanish or stop answering, a VDI
that is missing or locked.  The NBD client always gets an answer (data or an errno)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .nbdenv import clean_env, dog_read, run

MiB = 1 << 20


def test_kill9_of_another_sheep_during_nbdcopy(env, tmp_path):
    """copies=3; the plugin's configured sheep is node 0; node 2 dies mid-copy."""
    c = env.cluster(3, copies=3)
    size = 320 * MiB
    env.vdi(c, "Alice", f"{size // MiB}M")
    src = tmp_path / "src.img"
    data = os.urandom(size)
    src.write_bytes(data)
    s = env.nbdkit(c, "vdi=Alice")
    copy = subprocess.Popen(["nbdcopy", "--flush", str(src), s.uri], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until a good part of the VDI is written
            written = sum(1 for name in os.listdir(c.nodes[2].store / "obj") if len(name) == 16)
            if written >= 12:
                break
            assert copy.poll() is None, "the copy finished before the kill: make it bigger"
            time.sleep(0.05)
        assert copy.poll() is None, "the copy finished before the kill: make it bigger"
        c.nodes[2].kill9()
        out, err = copy.communicate(timeout=240)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
    assert copy.returncode == 0, err.decode()
    c.wait_members(2)
    back = tmp_path / "back.img"
    run("nbdcopy", s.uri, back)
    assert back.read_bytes() == data
    assert dog_read(c, "Alice", 0, size, node=1) == data


def _stopwatch_read(uri: str, timeout: float = 60) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    r = run("qemu-io", "-f", "raw", "-r", uri, "-c", "read 0 64k", check=False,
            timeout=timeout)
    return time.monotonic() - t, r


def test_silent_or_dead_sheep_give_errors_not_hangs(env):
    """Through the sheep (short-circuit off: a stopped sheep's files would still serve
    reads, see test_shortcircuit.py)."""
    c = env.cluster(3, copies=3)
    env.vdi(c, "Alice", "16M")
    s = env.nbdkit(c, "vdi=Alice", "timeout=2", "shortcircuit=false")
    run("qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x61 0 64k")
    pids = [n.pid for n in c.nodes]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        took, r = _stopwatch_read(s.uri)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert r.returncode != 0 or b"read failed" in r.stdout + r.stderr
    assert b"Input/output error" in r.stdout + r.stderr
    assert took < 30
    # the sheep answer again: so does the export (new connections to them)
    r = run("qemu-io", "-f", "raw", "-r", s.uri, "-c", "read -P 0x61 0 64k")
    assert b"Pattern verification failed" not in r.stdout
    for n in c.nodes:
        n.kill9()
    took, r = _stopwatch_read(s.uri)
    assert b"Input/output error" in r.stdout + r.stderr
    assert took < 30
    assert s.proc.poll() is None  # nbdkit itself is fine


def test_missing_vdi_stops_nbdkit_at_start(env):
    c = env.cluster(1, copies=1)
    with pytest.raises(RuntimeError) as e:
        env.nbdkit(c, "vdi=Nobody")
    assert "cannot get vdi info, No VDI found, Nobody" in str(e.value)
    assert "Traceback" not in str(e.value)
    with pytest.raises(RuntimeError) as e:
        env.nbdkit(None, "vdi=Nobody", "port=1")
    assert "failed to connect to 127.0.0.1:1" in str(e.value)


def test_lock_held_while_exported(env):
    """With `dog cluster format --lock`, a writable export holds the VDI's lock until
    nbdkit exits, cleanly or not (the lock is bound to its connection)."""
    c = env.cluster(3, copies=3, lock=True)
    env.vdi(c, "Alice", "16M")
    first = env.nbdkit(c, "vdi=Alice")
    with pytest.raises(RuntimeError) as e:
        env.nbdkit(c, "vdi=Alice", node=1)
    assert "cannot get vdi info, VDI is already locked" in str(e.value)
    env.nbdkit(c, "vdi=Alice", "readonly=true", node=1).stop()  # readers take no lock
    first.stop()  # clean exit: RELEASE_VDI
    second = env.nbdkit(c, "vdi=Alice", node=2)
    second.proc.kill()  # kill -9: the lock goes with the connection
    second.proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            env.nbdkit(c, "vdi=Alice")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
