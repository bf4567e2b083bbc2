"""Data through the plugin with the tools people use: qemu-img, qemu-io, nbdcopy, nbdinfo,
libnbd; checked against what `dog vdi read` and the inode say."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sheep.proto.oid import vid_to_data_oid

from .nbdenv import dog_read, nbd_py, run

MiB = 1 << 20
OBJ = 4 * MiB


def make_image(path: Path, size: int, runs: list[tuple[int, int]]) -> bytes:
    """A sparse raw image: random bytes in ``runs``, zeros elsewhere."""
    data = bytearray(size)
    for off, n in runs:
        data[off:off + n] = os.urandom(n)
    path.write_bytes(data)
    return bytes(data)


def vdi_map(cluster, name: str) -> list[bool]:
    """Allocated flag per object, from the inode (what the plugin's extents derive from)."""
    with cluster.client() as c:
        vid = c.get_vdi_info(name).vdi_id
        inode = c.read_inode(vid)
    n = -(-inode.header.vdi_size // inode.header.object_size)
    return [bool(v) for v in inode.data_vdi_id[:n]]


def nbd_map(uri: str) -> list[tuple[int, int, bool]]:
    out = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
    return [(e["offset"], e["length"], not e["type"] & 1) for e in out]


def objects_of(extents: list[tuple[int, int, bool]]) -> list[bool]:
    flags: list[bool] = []
    for off, n, data in extents:
        assert off == len(flags) * OBJ  # runs are whole objects, in order
        flags += [data] * -(-n // OBJ)
    return flags


def test_qemu_img_convert_in_and_out(env, tmp_path):
    c = env.cluster()
    env.vdi(c, "Alice", "64M")
    src = tmp_path / "src.img"
    data = make_image(src, 64 * MiB, [(0, MiB), (OBJ - 3000, 10000), (20 * MiB, 8 * MiB),
                                      (63 * MiB + 512, 4096)])
    s = env.nbdkit(c, "vdi=Alice")
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, s.uri)
    r = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri)
    assert b"Images are identical" in r.stdout
    out = tmp_path / "out.img"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out)
    r = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, out)
    assert b"Images are identical" in r.stdout
    assert out.read_bytes() == data
    assert dog_read(c, "Alice", 0, 64 * MiB) == data
    # zero runs were not written as data: only the objects holding data exist
    want = [i in (0, 1, 5, 6, 15) for i in range(16)]
    assert vdi_map(c, "Alice") == want
    assert objects_of(nbd_map(s.uri)) == want


def test_qemu_io_patterns(env):
    c = env.cluster()
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    run("qemu-io", "-f", "raw", s.uri,
        "-c", "write -P 0x11 0 64k",
        "-c", f"write -P 0x22 {OBJ - 4000} 8192",  # across objects 0 and 1
        "-c", f"write -P 0x33 {2 * OBJ} {OBJ}",    # a whole object
        "-c", f"aio_write -P 0x44 {5 * OBJ + 512} 1M",
        "-c", "aio_flush",
        "-c", "flush")
    r = run("qemu-io", "-f", "raw", "-r", s.uri,  # a new connection, same export
            "-c", "read -P 0x11 0 64k",
            "-c", f"read -P 0 64k {OBJ - 4000 - 65536}",
            "-c", f"read -P 0x22 {OBJ - 4000} 8192",
            "-c", f"read -P 0 {OBJ + 4192} {OBJ - 4192}",
            "-c", f"read -P 0x33 {2 * OBJ} {OBJ}",
            "-c", f"read -P 0 {3 * OBJ} {2 * OBJ + 512}",
            "-c", f"read -P 0x44 {5 * OBJ + 512} 1M")
    assert b"Pattern verification failed" not in r.stdout, r.stdout.decode()
    assert dog_read(c, "Alice", OBJ - 4000, 8192) == b"\x22" * 8192
    assert dog_read(c, "Alice", 2 * OBJ, OBJ) == b"\x33" * OBJ


def test_nbdcopy_and_map(env, tmp_path):
    c = env.cluster()
    env.vdi(c, "Alice", "48M")
    src = tmp_path / "src.img"
    data = make_image(src, 48 * MiB, [(0, 6 * MiB), (17 * MiB, 5), (40 * MiB, 8 * MiB)])
    s = env.nbdkit(c, "vdi=Alice")
    info = json.loads(run("nbdinfo", "--json", s.uri).stdout)["exports"][0]
    assert info["can_multi_conn"] is True
    # any alignment, 1 MiB preferred (plugin.block_size), 32 MiB at most
    assert (info["block_size_minimum"], info["block_size_preferred"],
            info["block_size_maximum"]) == (1, MiB, 32 * MiB)
    run("nbdcopy", "--flush", src, s.uri)  # several connections (multi-conn), in parallel
    out = tmp_path / "out.img"
    run("nbdcopy", s.uri, out)
    assert out.read_bytes() == data
    assert dog_read(c, "Alice", 0, 48 * MiB) == data
    want = [i in (0, 1, 4, 10, 11) for i in range(12)]
    assert vdi_map(c, "Alice") == want
    extents = nbd_map(s.uri)
    assert extents == [(0, 8 * MiB, True), (8 * MiB, 8 * MiB, False), (16 * MiB, OBJ, True),
                       (20 * MiB, 20 * MiB, False), (40 * MiB, 8 * MiB, True)]
    r = run("nbdinfo", "--map", s.uri).stdout.decode()
    assert "hole,zero" in r and "data" in r


def test_trim_and_zero(env):
    c = env.cluster()
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    with c.client() as cl:
        vid = cl.get_vdi_info("Alice").vdi_id
    run("qemu-io", "-f", "raw", s.uri, "-c", f"write -P 0x5a 0 {6 * OBJ}")
    assert all(vdi_map(c, "Alice")[:6])
    held = c.holdings()
    assert all(vid_to_data_oid(vid, i) in held for i in range(6))

    run("qemu-io", "-f", "raw", s.uri,
        "-c", f"discard 0 {2 * OBJ}",              # objects 0 and 1: cleared and reclaimed
        "-c", f"discard {2 * OBJ + MiB} {MiB}",     # part of object 2: ignored
        "-c", f"write -z {3 * OBJ} {OBJ}",          # no unmap: zeros written, stays allocated
        "-c", f"write -z -u {4 * OBJ} {OBJ}",       # unmap allowed: trimmed
        "-c", f"write -z -u {5 * OBJ + 4096} 4096")  # part of an allocated object: zeros written
    assert vdi_map(c, "Alice")[:6] == [False, False, True, True, False, True]
    r = run("qemu-io", "-f", "raw", "-r", s.uri,
            "-c", f"read -P 0 0 {2 * OBJ}",
            "-c", f"read -P 0x5a {2 * OBJ} {OBJ}",
            "-c", f"read -P 0 {3 * OBJ} {2 * OBJ}",
            "-c", f"read -P 0x5a {5 * OBJ} 4096",
            "-c", f"read -P 0 {5 * OBJ + 4096} 4096",
            "-c", f"read -P 0x5a {5 * OBJ + 8192} {OBJ - 8192}")
    assert b"Pattern verification failed" not in r.stdout, r.stdout.decode()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the sheep reclaim what the index no longer names
        held = c.holdings()
        if not {vid_to_data_oid(vid, i) for i in (0, 1, 4)} & held.keys():
            break
        time.sleep(0.1)
    assert not {vid_to_data_oid(vid, i) for i in (0, 1, 4)} & held.keys()
    assert vid_to_data_oid(vid, 2) in held and vid_to_data_oid(vid, 3) in held

    # libnbd: FAST_ZERO is honoured only where zeroing needs no data writes
    r = nbd_py(s.uri, f"""
h.zero({2 * OBJ}, {6 * OBJ}, nbd.CMD_FLAG_FAST_ZERO)   # objects 6, 7: holes already
try:
    h.zero(4096, {2 * OBJ + 4096}, nbd.CMD_FLAG_FAST_ZERO)  # inside allocated object 2
    print("no error")
except nbd.Error as e:
    print(e.errno)
h.zero({OBJ}, {2 * OBJ}, nbd.CMD_FLAG_FAST_ZERO)   # a whole allocated object: trimmed
print(h.pread(8, {2 * OBJ + 4096}) == bytes(8))
""")
    assert r.stdout.decode().split() == ["ENOTSUP", "True"]
    assert vdi_map(c, "Alice")[:8] == [False, False, False, True, False, True, False, False]


def test_concurrent_connections_share_one_index(env):
    """Four connections write interleaved 64 KiB blocks into the same new objects at once
    (the creates race), then again after a snapshot (the copy-on-writes race)."""
    c = env.cluster()
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    prog = f"""
import random
hs = [h] + [nbd.NBD() for _ in range(3)]
for x in hs[1:]:
    x.connect_uri({s.uri!r})
B = 65536
blocks = list(range(0, {6 * OBJ} // B))
random.Random(SEED).shuffle(blocks)
expect = bytearray({6 * OBJ})
for n, b in enumerate(blocks):
    data = bytes([(b * 7 + SEED) % 251 + 1]) * B
    expect[b * B:(b + 1) * B] = data
    hs[n % 4].aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), b * B)
for x in hs:
    while x.aio_in_flight():
        x.poll(-1)
hs[0].flush()
check = nbd.NBD()
check.connect_uri({s.uri!r})
got = check.pread({6 * OBJ}, 0)
print(got == bytes(expect))
open(OUT, "wb").write(expect)
"""
    out = env.root / "expect.bin"
    r = nbd_py(s.uri, prog.replace("SEED", "1").replace("OUT", repr(str(out))))
    assert r.stdout.decode().split() == ["True"], r.stderr.decode()
    assert dog_read(c, "Alice", 0, 6 * OBJ) == out.read_bytes()
    first = out.read_bytes()
    c.dog("vdi", "snapshot", "-s", "before", "Alice")
    r = nbd_py(s.uri, prog.replace("SEED", "2").replace("OUT", repr(str(out))))
    assert r.stdout.decode().split() == ["True"], r.stderr.decode()
    assert dog_read(c, "Alice", 0, 6 * OBJ) == out.read_bytes()
    assert dog_read(c, "Alice", 0, 6 * OBJ, "-s", "before") == first


def test_sequential_reads_follow_writes(env):
    """Sequential reads are served from whole-object reads (read-ahead): every write,
    trim or zero of an object is seen by the reads that follow it, on any connection."""
    c = env.cluster()
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    r = nbd_py(s.uri, f"""
import os
B, OBJ = 262144, {OBJ}
other = nbd.NBD()
other.connect_uri({s.uri!r})
img = bytearray(os.urandom(6 * OBJ))
for off in range(0, len(img), B):
    h.pwrite(bytes(img[off:off + B]), off)
def scan(conn):
    return b"".join(conn.pread(B, off) for off in range(0, len(img), B))
ok = [scan(h) == img]
for step in range(6):
    at = step * OBJ + 12345 * (step + 1)
    data = os.urandom(5000)
    scan(h)                                   # objects now held whole
    (h if step % 2 else other).pwrite(data, at)
    img[at:at + len(data)] = data
    ok.append(scan(h) == img and scan(other) == img)
h.trim(OBJ, 2 * OBJ)
img[2 * OBJ:3 * OBJ] = bytes(OBJ)
h.zero(4096, 4 * OBJ + 8192)
img[4 * OBJ + 8192:4 * OBJ + 12288] = bytes(4096)
ok.append(scan(other) == img)
print(ok)
""")
    assert r.stdout.decode().strip() == str([True] * 8)


def test_sequential_writes_gathered(env):
    """Contiguous writes in flight together are sent as one write per object (write
    gathering); each is acknowledged when that write is done.  Pieces of odd sizes,
    some across object boundaries, from two connections; then read back."""
    c = env.cluster()
    env.vdi(c, "Alice", "32M")
    s = env.nbdkit(c, "vdi=Alice")
    r = nbd_py(s.uri, f"""
import os, random
rng = random.Random(7)
other = nbd.NBD()
other.connect_uri({s.uri!r})
img = bytearray({6 * OBJ})
pos, n = 0, 0
while pos < len(img):
    size = min(rng.choice([4096, 65536, 262144, 300000, 1 << 20]), len(img) - pos)
    data = os.urandom(size)
    img[pos:pos + size] = data
    (h if n % 3 else other).aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), pos)
    pos, n = pos + size, n + 1
for x in (h, other):
    while x.aio_in_flight():
        x.poll(-1)
print(h.pread(len(img), 0) == img, n)
""")
    ok, pieces = r.stdout.decode().split()
    assert ok == "True" and int(pieces) > 30
    assert dog_read(c, "Alice", 0, 6 * OBJ) == nbd_py(
        s.uri, "sys.stdout.buffer.write(h.pread(%d, 0))" % (6 * OBJ)).stdout
