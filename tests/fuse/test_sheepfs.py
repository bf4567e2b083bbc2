"""sheepfs over a real 3-node cluster: the tree, dog's texts, volumes (dd, COW, snapshots),
errors, retargeting, daemon mode and clean unmounts."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

from sheep.client.sync import SheepError
from sheep.client.vdi import VdiClient
from sheep.proto.constants import Res

from .conftest import mounted

MB = 1 << 20
OBJ = 4 * MB


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def dog_text(cluster, *args: str, port: int | None = None) -> bytes:
    return cluster.dog(*args, port=port).stdout


def run(cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)


def lock_held(cluster, name: str) -> bool:
    """Whether someone holds the VDI's lock: our own LOCK_VDI fails with VDI_LOCKED."""
    try:
        VdiClient.open(name, port=cluster.nodes[1].port, lock=True).close()
    except SheepError as e:
        if e.result == Res.VDI_LOCKED:
            return True
        raise
    return False


def errno_of(fn) -> int:
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno


# ---------------------------------------------------------------- the tree and the texts


def test_tree_and_modes(fs):
    found = run(f"cd {fs.mnt} && find . | sort").stdout.split()
    assert found == [".", "./cluster", "./cluster/info", "./config", "./config/object_cache",
                     "./config/page_cache", "./config/sheep_info", "./node", "./node/info",
                     "./node/list", "./vdi", "./vdi/list", "./vdi/mount", "./vdi/unmount",
                     "./volume"]
    modes = {p: oct(os.stat(fs.path(p)).st_mode & 0o777)
             for p in ("cluster/info", "vdi/mount", "config/page_cache", "volume")}
    assert modes == {"cluster/info": "0o444", "vdi/mount": "0o200",
                     "config/page_cache": "0o644", "volume": "0o755"}


def test_text_files_equal_dog_output(cluster, fs):
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "create", "Bob", "64M")
    cluster.dog("vdi", "write", "Bob", "0", "1M", input=os.urandom(MB))
    fs.mount_vdi("Bob")
    for rel, args in [("cluster/info", ("cluster", "info")), ("node/list", ("node", "list")),
                      ("vdi/list", ("vdi", "list")), ("node/info", ("node", "info"))]:
        for _ in range(3):  # node info shows free disk space, which may move meanwhile
            text = fs.path(rel).read_bytes()
            want = dog_text(cluster, *args)
            if text == want:
                break
        assert text == want, rel
        assert os.stat(fs.path(rel)).st_size == len(text)  # the size of the latest rendering
    assert b"127.0.0.1:%d" % cluster.nodes[2].port in fs.path("node/list").read_bytes()


def test_config_files(cluster, fs):
    assert fs.path("config/page_cache").read_text() == "0\n"
    assert fs.path("config/object_cache").read_text() == "0\n"
    assert fs.path("config/sheep_info").read_text() == f"127.0.0.1:{cluster.nodes[0].port}\n"
    fs.path("config/page_cache").write_text("1\n")
    assert fs.path("config/page_cache").read_text() == "1\n"
    fs.path("config/page_cache").write_text("0")
    assert fs.path("config/page_cache").read_text() == "0\n"
    fs.path("config/page_cache").write_text("7\n")  # !!value, as the original
    assert fs.path("config/page_cache").read_text() == "1\n"
    assert errno_of(lambda: fs.path("config/page_cache").write_text("yes\n")) == errno.EINVAL
    assert "not a number" in fs.log()


def test_pagecache_and_objectcache_options(cluster, make_fs):
    cluster.dog("vdi", "create", "v", "32M")
    fs = make_fs(cluster.nodes[0].port, "-k", "-o")
    assert fs.path("config/page_cache").read_text() == "1\n"
    with open("/proc/self/mountinfo") as f:  # readahead raised to a request's worth
        dev = next(line.split()[2] for line in f if line.split()[4] == str(fs.mnt))
    if os.geteuid() == 0:
        assert open(f"/sys/class/bdi/{dev}/read_ahead_kb").read() == "1024\n"
    assert fs.path("config/object_cache").read_text() == "1\n"
    vol = fs.mount_vdi("v")
    data = os.urandom(9 * MB)
    with open(vol, "r+b") as f:  # through the page cache
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert md5(vol.read_bytes()[:len(data)]) == md5(data)
    assert md5(dog_text(cluster, "vdi", "read", "v", "0", str(len(data)))) == md5(data)
    # switching the object cache off reconnects the volume with CMD_DIRECT
    fs.path("config/object_cache").write_text("0\n")
    with open(vol, "r+b") as f:
        f.seek(5 * MB)
        f.write(b"x" * 100)
    assert dog_text(cluster, "vdi", "read", "v", str(5 * MB), "100") == b"x" * 100


# ---------------------------------------------------------------- volumes


def test_dd_64mib_then_dog_read_md5(cluster, fs, tmp_path):
    cluster.dog("vdi", "create", "Alice", "128M")
    vol = fs.mount_vdi("Alice")
    assert os.listdir(fs.path("volume")) == ["Alice"]
    assert os.stat(vol).st_size == 128 * MB
    src = tmp_path / "data"
    src.write_bytes(os.urandom(64 * MB))
    r = run(f"dd if={src} of={vol} bs=4M conv=notrunc,fsync")
    assert r.returncode == 0, r.stderr
    want = md5(src.read_bytes())
    assert md5(dog_text(cluster, "vdi", "read", "Alice", "0", "64M")) == want
    r = run(f"dd if={vol} bs=4M count=16 status=none | md5sum")
    assert r.stdout.split()[0] == want
    # the rest of the VDI is still unallocated and reads as zeros
    assert vol.read_bytes()[64 * MB:] == bytes(64 * MB)
    assert "largest write" not in fs.log()  # still running
    fs.unmount()
    fs.wait_exit()
    assert "largest write 1048576 bytes" in fs.log()  # max_write: the most libfuse allows


def test_unaligned_write_across_object_boundary(cluster, fs):
    cluster.dog("vdi", "create", "v", "16M")
    base = os.urandom(12 * MB)
    cluster.dog("vdi", "write", "v", "0", str(len(base)), input=base)
    vol = fs.mount_vdi("v")
    model = bytearray(base + bytes(4 * MB))
    cases = [(OBJ - 1001, os.urandom(5003)),           # object 0 -> 1, both allocated
             (2 * OBJ + 7, os.urandom(OBJ + 13)),       # 2 -> 3, object 3 unallocated
             (3 * OBJ - 1, b"\xab\xcd")]                # the last byte of 2, first of 3
    fd = os.open(vol, os.O_RDWR)
    try:
        for off, data in cases:
            assert os.pwrite(fd, data, off) == len(data)
            model[off:off + len(data)] = data
        assert os.pread(fd, 5003, OBJ - 1001) == model[OBJ - 1001:OBJ + 4002]
    finally:
        os.close(fd)
    got = dog_text(cluster, "vdi", "read", "v")
    assert len(got) == 16 * MB
    assert md5(got) == md5(bytes(model))
    assert md5(vol.read_bytes()) == md5(bytes(model))


@pytest.mark.parametrize("locks", [False, True])
def test_snapshot_while_mounted_keeps_its_content(locks, request, make_fs):
    cluster = request.getfixturevalue("lock_cluster" if locks else "cluster")
    fs = make_fs(cluster.nodes[0].port)
    cluster.dog("vdi", "create", "v", "16M")
    vol = fs.mount_vdi("v")
    first = os.urandom(6 * MB)
    with open(vol, "r+b") as f:
        f.write(first)
    cluster.dog("vdi", "snapshot", "-s", "before", "v")
    second = os.urandom(3 * MB)
    with open(vol, "r+b") as f:
        f.seek(2 * MB)
        f.write(second)  # COW into the new working VDI
    now = first[:2 * MB] + second + first[5 * MB:]
    assert vol.read_bytes()[:6 * MB] == now
    assert dog_text(cluster, "vdi", "read", "v", "0", "6M") == now
    assert dog_text(cluster, "vdi", "read", "-s", "before", "v", "0", "6M") == first
    listing = fs.path("vdi/list").read_bytes()
    assert listing == dog_text(cluster, "vdi", "list")
    assert listing.count(b" v ") == 2  # the snapshot and the working VDI


def test_concurrent_readers_and_a_writer(cluster, fs):
    cluster.dog("vdi", "create", "v", "32M")
    data = os.urandom(16 * MB)
    cluster.dog("vdi", "write", "v", "0", "16M", input=data)
    vol = fs.mount_vdi("v")
    errors: list[BaseException] = []

    def reader(i: int) -> None:
        try:
            fd = os.open(vol, os.O_RDONLY)
            try:
                for k in range(16):
                    off = ((i * 7 + k * 3) % 15) * MB + i * 4099
                    assert os.pread(fd, MB, off) == data[off:off + MB]
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def writer() -> None:
        try:
            fd = os.open(vol, os.O_WRONLY)
            try:
                for k in range(8):
                    os.pwrite(fd, bytes([k]) * MB, 16 * MB + k * MB)
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    tail = dog_text(cluster, "vdi", "read", "v", "16M", "8M")
    assert tail == b"".join(bytes([k]) * MB for k in range(8))


def test_volume_end_of_file(cluster, fs):
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    fd = os.open(vol, os.O_RDWR)
    try:
        assert os.pread(fd, 100, 8 * MB) == b""
        assert os.pread(fd, 100, 8 * MB - 10) == bytes(10)
        assert os.pwrite(fd, b"z" * 100, 8 * MB - 10) == 10  # short write at the end
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"z", 8 * MB)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert "beyond the end" in fs.log()
    assert dog_text(cluster, "vdi", "read", "v", str(8 * MB - 10), "10") == b"z" * 10


def test_mount_twice_and_unmount(lock_cluster, lfs):
    cluster, fs = lock_cluster, lfs
    cluster.dog("vdi", "create", "a", "8M")
    cluster.dog("vdi", "create", "b", "12M")
    fs.mount_vdi("a")
    fs.mount_vdi("a")  # already mounted: nothing happens
    fs.path("vdi/mount").write_text("b")  # the newline is optional
    assert sorted(os.listdir(fs.path("volume"))) == ["a", "b"]
    assert os.stat(fs.path("volume/b")).st_size == 12 * MB
    assert lock_held(cluster, "a")
    fs.path("vdi/unmount").write_text("a\n")
    assert os.listdir(fs.path("volume")) == ["b"]
    assert not os.path.exists(fs.path("volume/a"))
    assert not lock_held(cluster, "a")


def test_unmount_while_open_releases_at_close(lock_cluster, lfs):
    cluster, fs = lock_cluster, lfs
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    with open(vol, "r+b") as f:
        fs.path("vdi/unmount").write_text("v\n")
        assert os.listdir(fs.path("volume")) == []
        f.write(b"still open")  # the open file keeps working
        f.flush()
        assert lock_held(cluster, "v")
    for _ in range(100):  # FUSE sends RELEASE asynchronously after close(2)
        if not lock_held(cluster, "v"):
            break
        time.sleep(0.05)
    assert not lock_held(cluster, "v")
    assert dog_text(cluster, "vdi", "read", "v", "0", "10") == b"still open"


# ---------------------------------------------------------------- errors


def test_errors_are_errno_values_with_a_log_line(cluster, fs):
    e = errno_of(lambda: fs.path("vdi/mount").write_text("nosuch\n"))
    assert e == errno.ENOENT
    assert "cannot mount nosuch" in fs.log() and "No VDI found" in fs.log()
    assert os.listdir(fs.path("volume")) == []

    assert errno_of(lambda: fs.path("cluster/info").write_text("x")) == errno.EACCES
    assert "cluster/info is read-only" in fs.log()
    assert errno_of(lambda: fs.path("node/list").open("r+b")) == errno.EACCES
    assert errno_of(lambda: fs.path("vdi/mount").read_text()) == errno.EACCES

    assert errno_of(lambda: fs.path("vdi/unmount").write_text("nosuch\n")) == errno.ENOENT
    assert "cannot unmount nosuch: not mounted" in fs.log()
    assert errno_of(lambda: fs.path("vdi/mount").write_text("a/b\n")) == errno.EINVAL
    assert errno_of(lambda: fs.path("vdi/mount").write_text("\n")) == errno.EINVAL
    assert errno_of(lambda: fs.path("config/sheep_info").write_text("nonsense\n")) \
        == errno.EINVAL
    assert errno_of(lambda: os.chmod(fs.path("volume"), 0o700)) == errno.EPERM
    assert errno_of(lambda: fs.path("volume/new").write_bytes(b"")) == errno.EPERM
    assert errno_of(lambda: os.unlink(fs.path("vdi/list"))) == errno.EPERM
    assert errno_of(lambda: os.mkdir(fs.path("volume/d"))) == errno.EPERM


def test_vdi_locked_elsewhere_is_busy(lock_cluster, lfs):
    cluster, fs = lock_cluster, lfs
    cluster.dog("vdi", "create", "v", "8M")
    with VdiClient.open("v", port=cluster.nodes[1].port, lock=True):
        assert errno_of(lambda: fs.mount_vdi("v")) == errno.EBUSY
    fs.mount_vdi("v")


def test_io_while_the_cluster_is_down(cluster, fs):
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    with open(vol, "r+b") as f:
        f.write(b"before")
    fd = os.open(vol, os.O_RDWR)
    try:
        for s in cluster.nodes:
            s.kill9()
        assert errno_of(lambda: os.pread(fd, 4096, 0)) == errno.EIO
        assert errno_of(lambda: os.pwrite(fd, b"after", 0)) == errno.EIO
        assert errno_of(lambda: os.fsync(fd)) == errno.EIO
        assert errno_of(lambda: fs.path("node/list").read_bytes()) == errno.EIO
        assert errno_of(lambda: fs.path("vdi/list").read_bytes()) == errno.EIO
        assert errno_of(lambda: fs.path("vdi/mount").write_text("v2\n")) == errno.EIO
    finally:
        os.close(fd)
    log = fs.log()
    assert "volume v: read 4096@0" in log and "Connection refused" in log
    assert "volume v: write 5@0" in log
    assert "node/list: cannot reach the cluster" in log
    # the file system itself stays up
    assert fs.path("config/sheep_info").read_text().startswith("127.0.0.1:")
    assert fs.alive


def test_io_resumes_when_the_sheep_is_back(cluster, fs):
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    fd = os.open(vol, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"one", 0) == 3
        cluster.nodes[0].kill9()  # the sheep sheepfs talks to
        assert errno_of(lambda: os.pwrite(fd, b"two", 0)) == errno.EIO
        assert errno_of(lambda: os.pread(fd, 3, 0)) == errno.EIO
        cluster.nodes[0].start()
        cluster.wait_members(3)
        assert os.pwrite(fd, b"two", 0) == 3  # the volume reconnected by itself
        assert os.pread(fd, 3, 0) == b"two"
    finally:
        os.close(fd)
    assert dog_text(cluster, "vdi", "read", "v", "0", "3") == b"two"
    assert fs.path("node/list").read_bytes() == dog_text(cluster, "node", "list")


def test_retarget_with_sheep_info(cluster, fs):
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    with open(vol, "r+b") as f:
        f.write(b"one")
    p1 = cluster.nodes[1].port
    fs.path("config/sheep_info").write_text(f"127.0.0.1:{p1}\n")
    assert fs.path("config/sheep_info").read_text() == f"127.0.0.1:{p1}\n"
    assert "sheep is now 127.0.0.1:%d" % p1 in fs.log()
    # node 0 goes away: everything keeps working through node 1
    cluster.nodes[0].kill9()
    cluster.wait_members(2)
    with open(vol, "r+b") as f:
        f.seek(OBJ - 1)
        f.write(b"two")
    with open(vol, "rb") as f:
        assert f.read(3) == b"one"
    assert fs.path("node/list").read_bytes() == dog_text(cluster, "node", "list", port=p1)
    assert dog_text(cluster, "vdi", "read", "v", str(OBJ - 1), "3", port=p1) == b"two"
    # a sheep that does not answer is refused, and the target stays
    dead = cluster.nodes[0].port
    assert errno_of(lambda: fs.path("config/sheep_info").write_text(f"127.0.0.1:{dead}")) \
        == errno.EIO
    assert fs.path("config/sheep_info").read_text() == f"127.0.0.1:{p1}\n"


# ---------------------------------------------------------------- process life


def test_fusermount_unmount_leaves_nothing_behind(lock_cluster, lfs, tmp_path):
    cluster, fs = lock_cluster, lfs
    cluster.dog("vdi", "create", "v", "8M")
    fs.mount_vdi("v")
    assert lock_held(cluster, "v")
    before = sorted(os.listdir(tmp_path))
    fs.unmount()
    assert fs.wait_exit() == 0
    assert not mounted(fs.mnt)
    assert os.listdir(fs.mnt) == []
    assert sorted(os.listdir(tmp_path)) == before  # no shadow directory, no stray files
    assert not os.path.exists(os.path.join(os.getcwd(), ".sheepfs"))
    assert not lock_held(cluster, "v")
    assert "volume v: closed" in fs.log()
    assert "sheepfs daemon exited 0" in fs.log()


def test_sigterm_unmounts_cleanly(lock_cluster, lfs):
    cluster, fs = lock_cluster, lfs
    cluster.dog("vdi", "create", "v", "8M")
    vol = fs.mount_vdi("v")
    with open(vol, "r+b") as f:
        f.write(b"data")
    os.kill(fs.pid, signal.SIGTERM)
    assert fs.wait_exit() == 0
    assert not mounted(fs.mnt)
    assert os.listdir(fs.mnt) == []
    assert not lock_held(cluster, "v")
    assert "SIGTERM: unmounting" in fs.log()


def test_daemon_mode(lock_cluster, make_fs):
    cluster = lock_cluster
    cluster.dog("vdi", "create", "v", "8M")
    fs = make_fs(cluster.nodes[0].port, foreground=False)  # returns only once mounted
    assert fs.pid != os.getpid()
    assert os.getsid(fs.pid) == fs.pid  # its own session
    assert os.readlink(f"/proc/{fs.pid}/cwd") == "/"
    assert fs.path("node/list").read_bytes() == dog_text(cluster, "node", "list")
    vol = fs.mount_vdi("v")
    with open(vol, "r+b") as f:
        f.write(b"daemon")
    assert dog_text(cluster, "vdi", "read", "v", "0", "6") == b"daemon"
    fs.unmount()
    fs.wait_exit()
    assert not mounted(fs.mnt)
    assert not lock_held(cluster, "v")
    assert "sheepfs daemon exited 0" in fs.log()


def test_daemon_mount_failure_is_reported(cluster, tmp_path):
    from .conftest import SHEEPFS
    missing = tmp_path / "nosuchdir"
    r = subprocess.run([SHEEPFS, "-p", str(cluster.nodes[0].port), str(missing)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "not a directory" in r.stderr


def test_hyper_volume_is_not_supported(cluster, fs):
    cluster.dog("vdi", "create", "-y", "big", "8G")
    assert errno_of(lambda: fs.mount_vdi("big")) == errno.EOPNOTSUPP
    assert "cannot mount big" in fs.log()
    assert os.listdir(fs.path("volume")) == []
