"""The original's getting-started sequence, verbatim, with daemonized sheep."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

from .harness import DOG, SHEEP, free_ports, pid_gone


@pytest.fixture
def seed(tmp_path):
    ports = free_ports(3)
    stores = [tmp_path / "store" / str(i) for i in range(3)]
    pids: list[int] = []
    yield ports, stores, tmp_path / "cluster", pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        pid_gone(pid, 10)


def dog(port: int, *args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([DOG, *args, "-p", str(port)], capture_output=True, stdin=stdin, timeout=300)


def node_rows(zone_ports: list[tuple[int, int]]) -> str:
    """`dog node list` rows; nodes are numbered in node order (address, then port)."""
    ordered = sorted(zone_ports, key=lambda zp: zp[1])
    return "".join(f"{i:4d}   {f'127.0.0.1:{p}':<20}\t{128:2d}{z:11d}\n" for i, (z, p) in enumerate(ordered))


def test_seed_sequence(seed, tmp_path):
    ports, stores, driver_dir, pids = seed
    for i in range(3):  # for i in 0 1 2; do sheep -c local /path/to/store/$i -z $i -p 700$i; done
        r = subprocess.run([SHEEP, "-c", f"local:{driver_dir}", str(stores[i]), "-z", str(i), "-p", str(ports[i])],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        pids.append(int((stores[i] / "lock").read_text()))
    for pid in pids:
        assert pid_gone(pid, 0.1) is False  # the daemons outlived their start commands

    p0 = ports[0]
    r = dog(p0, "cluster", "format", "--copies=3")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"using backend plain store\n", b"")

    r = dog(p0, "node", "list")
    assert r.stdout.decode() == "  Id   Host:Port         V-Nodes       Zone\n" + node_rows(list(enumerate(ports)))

    assert dog(p0, "vdi", "create", "Alice", "1G").returncode == 0
    data = os.urandom(64 << 20)
    (tmp_path / "data").write_bytes(data)
    with open(tmp_path / "data", "rb") as f:
        r = dog(p0, "vdi", "write", "Alice", "0", "64M", stdin=f)
    assert r.returncode == 0, r.stderr
    r = dog(ports[1], "vdi", "read", "Alice", "0", "64M")
    assert r.returncode == 0 and hashlib.md5(r.stdout).hexdigest() == hashlib.md5(data).hexdigest()

    r = dog(p0, "vdi", "list")
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift"
    assert re.fullmatch(r"  Alice        0  1\.0 GB   64 MB  0\.0 MB \d{4}-\d\d-\d\d \d\d:\d\d   15d167      3                22",
                        lines[1]), lines[1]

    r = dog(p0, "cluster", "info")
    text = r.stdout.decode()
    members = ", ".join(f"127.0.0.1:{p}:128" for p in sorted(ports))
    assert text.startswith("Cluster status: running, auto-recovery enabled\n\nCluster created at ")
    assert re.search(r"\nEpoch Time           Version \[Host:Port:V-Nodes,,,\]\n"
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d      1 \[" + re.escape(members) + r"\]\n$", text), text

    # kill -9 one sheep: the data still reads back, two nodes, a new epoch
    victim = 2
    os.kill(pids[victim], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = dog(p0, "node", "list")
        if r.stdout.count(b"\n") == 3:
            break
        time.sleep(0.1)
    survivors = sorted(p for i, p in enumerate(ports) if i != victim)
    assert r.stdout.decode() == "  Id   Host:Port         V-Nodes       Zone\n" + node_rows(
        [(z, p) for z, p in enumerate(ports) if z != victim])
    r = dog(p0, "vdi", "read", "Alice", "0", "64M")
    assert r.returncode == 0 and hashlib.md5(r.stdout).hexdigest() == hashlib.md5(data).hexdigest()
    text = dog(p0, "cluster", "info").stdout.decode()
    assert re.search(r"\n\S+ \S+      2 \[" + re.escape(", ".join(f"127.0.0.1:{p}:128" for p in survivors))
                     + r"\]\n\S+ \S+      1 \[" + re.escape(members) + r"\]\n$", text), text
