"""Short-circuit I/O (sheep/proto/shortcircuit.py) through a real nbdkit: the plugin reads
and writes the object files of the sheep on its host under their grants; the cluster sees
every byte, and grants stop at membership changes, restarts and snapshots."""
from __future__ import annotations

import hashlib
import os
import signal

from .nbdenv import dog_read, nbd_py, run

MiB = 1 << 20
OBJ = 4 * MiB


def _vid(c, name: str) -> int:
    with c.client() as cl:
        return cl.get_vdi_info(name).vdi_id


def _replica_digests(c, name_hex: str) -> list[str]:
    """SHA-1 of every live copy of one object, on every node."""
    out = []
    for s in c.alive():
        for d in s.obj_dirs:
            path = d / name_hex
            if path.exists():
                out.append(hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def test_writes_land_in_every_replica_without_the_sheep(env):
    c = env.cluster(3, copies=3)
    env.vdi(c, "Alice", "16M")
    s = env.nbdkit(c, "vdi=Alice", "timeout=2")
    c.wait_quiet()
    run("qemu-io", "-f", "raw", s.uri, "-c", f"write -P 0x61 0 {OBJ}")  # creates object 0
    pids = [n.pid for n in c.nodes]
    for pid in pids:  # every sheep silent: anything sent to one fails after 2 s with EIO
        os.kill(pid, signal.SIGSTOP)
    try:
        r = nbd_py(s.uri, "h.pwrite(b'\\x62' * 65536, 4096)\n"
                          "assert h.pread(65536, 4096) == b'\\x62' * 65536\n"
                          "assert h.pread(4096, 0) == b'\\x61' * 4096\nprint('ok')", timeout=60)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert r.stdout.strip() == b"ok"
    # what the cluster serves, and all three copies byte for byte alike
    assert dog_read(c, "Alice", 0, 8192) == b"\x61" * 4096 + b"\x62" * 4096
    vid = _vid(c, "Alice")
    digests = _replica_digests(c, f"{vid << 32:016x}")
    assert len(digests) == 3 and len(set(digests)) == 1
    # and the data is durable where the sheep keep it: a flush succeeds
    nbd_py(s.uri, "h.flush()")


def test_restarted_sheep_is_written_through_its_new_lease(env):
    """A sheep killed and restarted behind a live export: its old files are no longer
    written (its lease died with it), the cluster recovers, and every copy agrees."""
    c = env.cluster(3, copies=2)
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    run("qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x11 0 24M")
    c.nodes[2].kill9()
    run("qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x22 0 16M")
    c.nodes[2].start()
    c.wait_members(3)
    c.wait_redundant(copies=2)
    # over old objects and into holes: new objects, made under the new lease's grants
    run("qemu-io", "-f", "raw", s.uri, "-c", "write -P 0x33 8M 24M")
    nbd_py(s.uri, "h.flush()")
    c.wait_redundant(copies=2)
    want = b"\x22" * (8 * MiB) + b"\x33" * (24 * MiB)
    for node in range(3):
        assert dog_read(c, "Alice", 0, 32 * MiB, node=node) == want
    vid = _vid(c, "Alice")
    for idx in range(8):
        digests = _replica_digests(c, f"{(vid << 32) | idx:016x}")
        assert len(digests) == 2 and len(set(digests)) == 1, idx


def test_same_results_with_and_without_shortcircuit(env, tmp_path):
    """One image written and read both ways (and through QEMU's tools): identical."""
    c = env.cluster(3, copies=1)
    env.vdi(c, "Direct", "24M")
    env.vdi(c, "Routed", "24M")
    image = tmp_path / "src.img"
    data = bytearray(os.urandom(24 * MiB))
    data[5 * MiB:13 * MiB] = bytes(8 * MiB)  # a hole nbdcopy skips
    image.write_bytes(data)
    direct = env.nbdkit(c, "vdi=Direct")
    routed = env.nbdkit(c, "vdi=Routed", "shortcircuit=false")
    for srv in (direct, routed):
        run("nbdcopy", "--flush", image, srv.uri)
        r = run("qemu-img", "compare", "-f", "raw", "-F", "raw", image, srv.uri)
        assert b"Images are identical" in r.stdout
    assert dog_read(c, "Direct", 0, 24 * MiB) == dog_read(c, "Routed", 0, 24 * MiB) == data
    maps = [run("nbdinfo", "--map", srv.uri).stdout for srv in (direct, routed)]
    assert maps[0] == maps[1] and b"hole" in maps[0]
