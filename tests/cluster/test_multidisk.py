"""Multi-disk nodes (`sheep STORE,DISK1,DISK2,...`, objects.md §9.6): objects spread over
the disks by the vdisk ring, `dog node md info|plug|unplug`, and a failing disk whose
objects come back from the other nodes.  Real sheep processes, real directories."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from bisect import bisect_left
from pathlib import Path

import pytest

from sheep.proto.hashing import sd_hash, sd_hash_next, sd_hash_oid
from sheep.proto.oid import is_data_obj

from sheep.client.volume import Volume

from .harness import SHEEP, Cluster, free_ports, wait_until

ROW = re.compile(r"^ ?(\d+)\t(\d+(?:\.\d)? [MGTPEZ]B)\t(\d+(?:\.\d)? [MGTPEZ]B)\t(\d+(?:\.\d)? [MGTPEZ]B)\t"
                 r"( {0,2}\d{1,3})%\t(/.*)$")
REQUEST_FAILED = "Failed to execute request, look for sheep.log for more information\n"


def objects_on(disk: Path) -> set[int]:
    return {int(n, 16) for n in os.listdir(disk) if len(n) == 16} if disk.is_dir() else set()


def home_disks(disks: list[Path], oids: set[int]) -> dict[int, Path]:
    """Where each object must be, computed from the spec alone: a disk of S bytes (xattr
    user.md.size) has ceil(S / 16 MiB) points chained from sd_hash(path); an object goes to
    the first point >= sd_hash_oid(oid), wrapping."""
    ring = []
    for d in disks:
        space = int.from_bytes(os.getxattr(d, "user.md.size"), "little")
        h = sd_hash(str(d).encode())
        for _ in range(-(-space // (16 << 20))):
            h = sd_hash_next(h)
            ring.append((h, d))
    ring.sort()
    points = [p for p, _ in ring]
    return {oid: ring[bisect_left(points, sd_hash_oid(oid)) % len(ring)][1] for oid in oids}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md_rows(c: Cluster, *args: str, port: int | None = None) -> list[re.Match]:
    text = c.dog("node", "md", "info", *args, port=port).stdout.decode()
    lines = text.splitlines()
    assert lines[0] == "Id\tSize\tUsed\tAvail\tUse%\tPath"
    rows = [ROW.match(line) for line in lines[1:]]
    assert all(rows), text
    return rows


@pytest.fixture
def md_cluster(make_cluster, tmp_path):
    """Three nodes, copies=3; node 0 keeps its objects on three disks."""
    def make(nr_disks: int = 3) -> Cluster:
        c = make_cluster(3, start=False)
        c.nodes[0].disks = [tmp_path / f"disk{i}" for i in range(nr_disks)]
        c.start()
        c.format(3)
        return c
    return make


def node0_objects(c: Cluster) -> set[int]:
    return set().union(*(objects_on(d) for d in c.nodes[0].disks))


def write_many(c: Cluster, name: str, nobj: int = 120) -> dict[int, bytes]:
    """A VDI of ``nobj`` objects, each with 4 KiB of random bytes at its start (many
    objects, little disk): offset -> bytes."""
    chunks = {i << 22: os.urandom(4096) for i in range(nobj)}
    with c.client() as cl:
        cl.new_vdi(name, nobj << 22)
        vol = Volume(cl, cl.read_inode(cl.get_vdi_info(name).vdi_id))
        for off, chunk in chunks.items():
            vol.write(off, chunk)
    return chunks


def read_many(c: Cluster, name: str, chunks: dict[int, bytes], via: int = 0) -> bool:
    with c.client(via) as cl:
        vol = Volume(cl, cl.read_inode(cl.get_vdi_info(name).vdi_id))
        return all(bytes(vol.read(off, len(chunk))) == chunk for off, chunk in chunks.items())


def test_objects_spread_over_disks_and_read_back(md_cluster):
    c = md_cluster(3)
    data = c.write_volume("A", 64 << 20)
    chunks = write_many(c, "B")
    disks = c.nodes[0].disks
    per_disk = [objects_on(d) for d in disks]
    everything = set(c.holdings())
    assert len(everything) >= 17 + 121
    assert all(len(s) > 10 for s in per_disk), [len(s) for s in per_disk]  # spread over every disk
    assert sum(len(s) for s in per_disk) == len(everything)  # each object on one disk only
    assert set().union(*per_disk) == everything
    homes = home_disks(disks, everything)
    assert all(oid in objects_on(homes[oid]) for oid in everything)
    assert not (c.nodes[0].store / "obj").exists()  # the store dir keeps metadata only
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)

    rows = md_rows(c)
    assert [r[6] for r in rows] == sorted(str(d) for d in disks)
    assert [int(r[1]) for r in rows] == [0, 1, 2]
    raw = c.dog("node", "md", "info", "-r").stdout.decode().splitlines()
    assert [line.split()[0] for line in raw] == [f"127.0.0.1:{c.nodes[0].port}"] * 3
    assert [line.split()[-1] for line in raw] == sorted(str(d) for d in disks)
    used = {line.split()[-1]: int(line.split()[3]) for line in raw}
    for d in disks:  # Used is what the disk's objects occupy
        assert used[str(d)] == sum(os.stat(d / f"{o:016x}").st_blocks * 512 for o in objects_on(d))

    text = c.dog("node", "md", "info", "--all").stdout.decode()
    assert [line for line in text.splitlines() if line.startswith("Node ")] == ["Node 0:", "Node 1:", "Node 2:"]
    single = md_rows(c, port=c.nodes[1].port)  # a one-directory node: STORE/obj
    assert len(single) == 1 and single[0][6] == str(c.nodes[1].store / "obj")


def test_unplug_moves_objects_to_remaining_disks(md_cluster):
    c = md_cluster(3)
    data = c.write_volume("A", 64 << 20)
    chunks = write_many(c, "B")
    disks = c.nodes[0].disks
    before = node0_objects(c)
    leaving = max(disks, key=lambda d: len(objects_on(d)))
    assert objects_on(leaving)

    r = c.dog("node", "md", "unplug", str(leaving), input=b"no\n")  # the prompt, answered no
    assert "Caution! Recovery will be triggered after unplugging." in r.stdout.decode()
    assert objects_on(leaving) and len(md_rows(c)) == 3

    c.dog("node", "md", "unplug", "-f", str(leaving))
    remaining = [d for d in disks if d != leaving]
    wait_until("the unplugged disk to drain", lambda: not objects_on(leaving))
    assert node0_objects(c) == before
    homes = home_disks(remaining, before)
    assert all(oid in objects_on(homes[oid]) for oid in before)
    assert [r[6] for r in md_rows(c)] == sorted(str(d) for d in remaining)
    assert md5(c.read_volume("A")) == md5(data)
    assert md5(c.read_volume("A", via=1)) == md5(data)
    assert read_many(c, "B", chunks)
    log = c.nodes[0].log()  # moved locally, nothing fetched from the other nodes
    assert re.search(r"moved \d+ objects between disks \(0 failed\)", log)
    assert not re.search(r"epoch \d+: recovering \d+ objects", log)

    c.dog("node", "md", "unplug", "-f", str(remaining[0]))  # and again: one disk left
    wait_until("the second disk to drain", lambda: not objects_on(remaining[0]))
    assert objects_on(remaining[1]) == before
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)


def test_plug_adds_a_disk(md_cluster, tmp_path):
    c = md_cluster(2)
    data = c.write_volume("A", 64 << 20)
    chunks = write_many(c, "B")
    before = node0_objects(c)
    new = tmp_path / "disk-new"
    new.mkdir()
    (new / "leftover").write_bytes(b"x")

    r = c.dog("node", "md", "plug", str(new), input=b"no\n")
    assert "Caution! The directories to be plugged will be purged." in r.stdout.decode()
    assert (new / "leftover").exists() and len(md_rows(c)) == 2

    c.dog("node", "md", "plug", "-f", str(new))
    disks = [*c.nodes[0].disks, new]
    assert [r[6] for r in md_rows(c)] == sorted(str(d) for d in disks)
    assert not (new / "leftover").exists()  # plugged directories are purged
    homes = home_disks(disks, before)
    assert any(homes[oid] == new for oid in before)
    wait_until("objects to move to their new home",
                lambda: all(oid in objects_on(homes[oid]) for oid in before))
    assert set().union(*(objects_on(d) for d in disks)) == before
    assert sum(len(objects_on(d)) for d in disks) == len(before)
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)
    c.write_volume("C", 16 << 20)  # new objects land on their home disks too
    after = set().union(*(objects_on(d) for d in disks))
    homes = home_disks(disks, after)
    assert all(oid in objects_on(homes[oid]) for oid in after)


def cold_restart(c) -> None:
    """`dog cluster shutdown`, every sheep exits cleanly, all start again (same epoch)."""
    c.dog("cluster", "shutdown")
    for s in c.nodes:
        assert s.proc.wait(15) == 0
    for s in c.nodes:
        s.start()
    c.wait_members(3)


@pytest.mark.parametrize("failure", ["directory removed", "directory replaced by a file"])
def test_failed_disk_is_removed_and_its_objects_recovered(md_cluster, failure):
    c = md_cluster(3)
    data = c.write_volume("A", 64 << 20)
    chunks = write_many(c, "B")
    disks = c.nodes[0].disks
    everything = node0_objects(c)
    broken = max(disks, key=lambda d: len(objects_on(d)))
    all_homes = home_disks(disks, everything)
    weight = os.getxattr(broken, "user.md.size")
    shutil.rmtree(broken)
    if failure == "directory replaced by a file":
        broken.write_bytes(b"")
    # node 0 meets the failure while reading (every object is read), the reads go on elsewhere
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)
    remaining = [d for d in disks if d != broken]
    wait_until("the failed disk to leave md info", lambda: len(md_rows(c)) == 2)
    assert [r[6] for r in md_rows(c)] == sorted(str(d) for d in remaining)
    wait_until("node 0 to hold every object again",
               lambda: set().union(*(objects_on(d) for d in remaining)) == everything)
    homes = home_disks(remaining, everything)
    assert all(oid in objects_on(homes[oid]) for oid in everything)
    assert "failed and is removed" in c.nodes[0].log()
    for oid in everything:  # the recovered copies are the peers' bytes
        name = f"{oid:016x}"
        assert (homes[oid] / name).read_bytes() == (c.nodes[1].store / "obj" / name).read_bytes()
    assert read_many(c, "B", chunks)

    # a cold restart with the failed disk back, holding an outdated copy: it is emptied
    old = next(o for o in everything if is_data_obj(o) and all_homes[o] == broken)
    if broken.is_file():
        broken.unlink()
    broken.mkdir()
    os.setxattr(broken, "user.md.size", weight)  # the same disk: its recorded size comes back
    (broken / f"{old:016x}").write_bytes(os.urandom(4 << 20))
    cold_restart(c)
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)
    assert f"disk {broken} was dropped while in use (failed or unplugged): emptied" in c.nodes[0].log()
    assert home_disks(disks, everything) == all_homes
    wait_until("objects to move back to their homes",
               lambda: all(oid in objects_on(all_homes[oid]) for oid in everything))
    assert (broken / f"{old:016x}").read_bytes() == (c.nodes[1].store / "obj" / f"{old:016x}").read_bytes()


def test_disk_left_out_at_restart_is_refilled(md_cluster):
    """A cold restart (same epoch, no membership change) with a disk missing from the
    command line: the node recovers what that disk held from the other nodes."""
    c = md_cluster(3)
    data = c.write_volume("A", 64 << 20)
    chunks = write_many(c, "B")
    everything = node0_objects(c)
    left_out = c.nodes[0].disks.pop(1)
    assert objects_on(left_out)
    cold_restart(c)
    wait_until("node 0 to hold every object again", lambda: node0_objects(c) == everything)
    homes = home_disks(c.nodes[0].disks, everything)
    assert all(oid in objects_on(homes[oid]) for oid in everything)
    assert [r[6] for r in md_rows(c)] == sorted(str(d) for d in c.nodes[0].disks)
    assert md5(c.read_volume("A")) == md5(data)
    assert read_many(c, "B", chunks)


def test_bad_paths_are_refused(md_cluster, tmp_path):
    c = md_cluster(2)
    disks = c.nodes[0].disks
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"keep me")
    log_lines = {
        ("plug", str(a_file)): "not a directory",
        ("plug", "relative/dir"): "not an absolute path",
        ("plug", str(disks[0])): "already a disk of this node",
        ("plug", str(c.nodes[0].store)): "overlaps",
        ("plug", f"{tmp_path}/x,{tmp_path}/x"): "given twice",
        ("unplug", str(tmp_path / "nope")): "not a disk of this node",
        ("unplug", ",".join(map(str, disks))): "a node keeps at least one disk",
    }
    for (cmd, arg), reason in log_lines.items():
        r = c.dog("node", "md", cmd, "-f", arg, check=False)
        assert (r.returncode, r.stderr.decode()) == (1, REQUEST_FAILED), (cmd, arg)
        assert reason in c.nodes[0].log(), reason
    assert a_file.read_bytes() == b"keep me"
    assert [r[6] for r in md_rows(c)] == sorted(str(d) for d in disks)

    r = c.dog("node", "md", "plug", "-f", "", check=False)
    assert (r.returncode, r.stderr.decode()) == (1, "Empty path isn't allowed\n")
    for args, code in ((("node", "md"), 64), (("node", "md", "plug"), 64), (("node", "md", "bogus"), 1)):
        r = c.dog(*args, check=False)
        assert r.returncode == code and r.stdout.startswith(b"Usage: dog node md {info|plug|unplug}"), args
    r = c.dog("node", "md", "info", port=free_ports(1)[0], check=False)
    assert r.returncode == 2 and b"failed to connect to 127.0.0.1" in r.stderr


def test_daemon_refuses_unusable_disks(tmp_path):
    port = free_ports(1)[0]

    def sheep(store_arg: str) -> subprocess.CompletedProcess:
        return subprocess.run([SHEEP, "-f", "-c", f"local:{tmp_path / 'cl'}", "-p", str(port), store_arg],
                              capture_output=True, timeout=30)

    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    cases = {
        f"{tmp_path}/s,{a_file}": f"cannot use {a_file} as a disk: not a directory",
        f"{tmp_path}/s,{a_file}/sub": f"cannot use {a_file}/sub as a disk: cannot create it: Not a directory",
        f"{tmp_path}/s,,{tmp_path}/d": "empty directory name",
        f"{tmp_path}/s,{tmp_path}/d,{tmp_path}/d/": f"disk {tmp_path}/d is given twice",
    }
    for arg, message in cases.items():
        r = sheep(arg)
        assert r.returncode == 1 and message in r.stderr.decode(), (arg, r.stderr)

    locked = tmp_path / "read-only-disk"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere, except into an immutable directory
        if shutil.which("chattr") is None:
            pytest.skip("cannot make an unwritable directory as root: no chattr (e2fsprogs)")
        made = subprocess.run(["chattr", "+i", str(locked)], capture_output=True)
        if made.returncode:
            pytest.skip(f"cannot make an unwritable directory as root: {made.stderr.decode()}")
    else:
        locked.chmod(0o555)
    try:
        r = sheep(f"{tmp_path}/s2,{tmp_path}/ok,{locked}")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o755)
    assert r.returncode == 1
    assert f"cannot use {locked} as a disk: cannot write to it: " in r.stderr.decode()
