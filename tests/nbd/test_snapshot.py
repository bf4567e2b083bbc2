"""Snapshots: a snapshot taken behind a live export is left unchanged by later writes
(they copy on write into the new working VDI), and a snapshot export is read-only."""
from __future__ import annotations

from .nbdenv import dog_read, nbd_py, run

MiB = 1 << 20
OBJ = 4 * MiB


def test_writes_after_snapshot_leave_it_unchanged(env, tmp_path):
    c = env.cluster()
    env.vdi(c, "Alice", "64M")
    s = env.nbdkit(c, "vdi=Alice")  # stays up across the snapshot
    run("qemu-io", "-f", "raw", s.uri,
        "-c", f"write -P 0xaa 0 {2 * OBJ}",
        "-c", f"write -P 0xab {5 * OBJ} {MiB}")
    before = dog_read(c, "Alice", 0, 64 * MiB)
    c.dog("vdi", "snapshot", "-s", "snap1", "Alice")

    run("qemu-io", "-f", "raw", s.uri,
        "-c", f"write -P 0xbe {12 * OBJ} {MiB}",     # first a hole: no grant on the old VDI
        "-c", f"write -P 0xbb 0 {MiB}",              # copy on write of object 0
        "-c", f"write -P 0xbc {OBJ + 512} 4096",      # and of object 1
        "-c", f"write -P 0xbd {10 * OBJ} {MiB}",      # a new object
        "-c", f"discard {5 * OBJ} {OBJ}",             # the working VDI lets go of object 5
        "-c", f"write -z -u {OBJ * 15} {OBJ}")
    r = run("qemu-io", "-f", "raw", "-r", s.uri,
            "-c", f"read -P 0xbb 0 {MiB}",
            "-c", f"read -P 0xaa {MiB} {OBJ - MiB + 512}",
            "-c", f"read -P 0xbc {OBJ + 512} 4096",
            "-c", f"read -P 0xaa {OBJ + 4608} {OBJ - 4608}",
            "-c", f"read -P 0 {5 * OBJ} {OBJ}",
            "-c", f"read -P 0xbd {10 * OBJ} {MiB}",
            "-c", f"read -P 0xbe {12 * OBJ} {MiB}")
    assert b"Pattern verification failed" not in r.stdout, r.stdout.decode()

    # the snapshot, read by dog and through a snapshot export (by tag and by id)
    assert dog_read(c, "Alice", 0, 64 * MiB, "-s", "snap1") == before
    snap = env.nbdkit(c, "vdi=Alice", "snapshot=snap1")
    by_id = env.nbdkit(c, "vdi=Alice", "snapshot=1")
    image = tmp_path / "snap.img"
    image.write_bytes(before)
    for exp in (snap, by_id):
        r = run("qemu-img", "compare", "-f", "raw", "-F", "raw", image, exp.uri)
        assert b"Images are identical" in r.stdout
    working = dog_read(c, "Alice", 0, 64 * MiB)
    assert working[:MiB] == b"\xbb" * MiB and working[5 * OBJ:6 * OBJ] == bytes(OBJ)


def test_snapshot_export_refuses_writes(env):
    c = env.cluster()
    env.vdi(c, "Alice", "16M")
    run("qemu-io", "-f", "raw", env.nbdkit(c, "vdi=Alice").uri, "-c", "write -P 0x42 0 1M")
    env.servers[-1].stop()
    c.dog("vdi", "snapshot", "-s", "frozen", "Alice")
    snap = env.nbdkit(c, "vdi=Alice", "snapshot=frozen")
    info = run("nbdinfo", snap.uri).stdout.decode()
    assert "is_read_only: true" in info and "can_trim: false" in info
    r = run("qemu-io", "-f", "raw", snap.uri, "-c", "write -P 0x43 0 4096", check=False)
    assert r.returncode != 0 or b"wrote" not in r.stdout
    # past libnbd's own checks, the server itself answers EPERM
    r = nbd_py(snap.uri, """
h.set_strict_mode(0)
for op in (lambda: h.pwrite(b"x" * 4096, 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        op()
        print("accepted")
    except nbd.Error as e:
        print(e.errno)
print(h.pread(4096, 0) == b"\\x42" * 4096)
""")
    assert r.stdout.decode().split() == ["EPERM", "EPERM", "EPERM", "True"]
    assert dog_read(c, "Alice", 0, 4096, "-s", "frozen") == b"\x42" * 4096
