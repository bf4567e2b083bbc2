"""The multi-disk ring (objects.md §9.6) and the object store over several disks, on real
directories; `dog node md info` rows."""
from __future__ import annotations

import os
import random

import pytest

from dog.node_md import MD_HEADER, PLUG_PROMPT, md_row
from sheep.proto.constants import Res
from sheep.proto.hashing import sd_hash, sd_hash_next, sd_hash_oid
from sheep.proto.structs import MdInfo
from sheep.server.md import MD_SIZE_XATTR, Disk, DiskError, DiskSet, open_disk, vdisk_points
from sheep.server.store import ObjectStore, StoreError

MiB = 1 << 20


def disk(path: str, space: int) -> Disk:
    return Disk(path, space, vdisk_points(path, space))


def test_vdisk_count_and_chain():
    assert len(vdisk_points("/d", 5056 * 16 * MiB)) == 5056  # the observed `vdisk nr 5056`
    assert len(vdisk_points("/d", 5055 * 16 * MiB + 1)) == 5056  # ceil
    assert len(vdisk_points("/d", 0)) == 1  # a full disk still owns a point
    points = vdisk_points("/var/lib/sheepdog/disk1", 3 * 16 * MiB)
    first = sd_hash_next(sd_hash(b"/var/lib/sheepdog/disk1"))
    assert points == (first, sd_hash_next(first), sd_hash_next(sd_hash_next(first)))


def test_home_is_the_first_point_at_or_after_the_oid_hash():
    disks = [disk("/b", 40 * 16 * MiB), disk("/a", 20 * 16 * MiB), disk("/c", 5 * 16 * MiB)]
    table = DiskSet(disks)
    assert [d.path for d in table.disks] == ["/a", "/b", "/c"]  # MD_INFO order
    ring = sorted((p, d.path) for d in disks for p in d.points)
    rng = random.Random(7)
    for oid in [rng.getrandbits(64) for _ in range(500)]:
        h = sd_hash_oid(oid)
        expected = next((path for p, path in ring if p >= h), ring[0][1])  # wrap to the lowest
        assert table.home(oid).path == expected
    counts = {d.path: 0 for d in disks}
    for oid in range(20000):
        counts[table.home(oid).path] += 1
    assert counts["/b"] > counts["/a"] > counts["/c"]  # weighted by space


def test_open_disk_records_its_weight_and_purges(tmp_path):
    d = tmp_path / "d"
    first = open_disk(str(d))
    assert (d / ".stale").is_dir()
    assert int.from_bytes(os.getxattr(d, MD_SIZE_XATTR), "little") == first.space > 0
    (d / "junk").write_bytes(os.urandom(1 << 20))
    again = open_disk(str(d))
    assert again.space == first.space and again.points == first.points  # placement is stable
    assert (d / "junk").exists()
    open_disk(str(d), purge=True)
    assert sorted(os.listdir(d)) == [".stale"]
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(DiskError, match="not a directory"):
        open_disk(str(tmp_path / "f"))
    with pytest.raises(DiskError, match="cannot create it: Not a directory"):
        open_disk(str(tmp_path / "f" / "sub"))


def test_store_over_disks(tmp_path):
    paths = [str(tmp_path / f"d{i}") for i in range(3)]
    store = ObjectStore(paths, nosync=True)
    oids = [(0x1234 << 32) | i for i in range(60)]
    for oid in oids:
        store.create_and_write(oid, 0, oid.to_bytes(8, "little"), 4 * MiB)
    for oid in oids:
        home = store.table.home(oid).path
        assert os.path.exists(os.path.join(home, f"{oid:016x}"))
        assert bytes(store.read(oid, 0, 8)) == oid.to_bytes(8, "little")
    assert store.list_oids() == oids
    assert all(store.misplaced(p) == [] for p in paths)
    assert [u[0] for u in store.disk_usage()] == sorted(paths)

    # a fourth disk: objects whose home moved are still found, then moved home
    store.set_table(DiskSet([*store.table.disks, open_disk(str(tmp_path / "d3"))]))
    moving = [o for o in oids if store.table.home(o).path == str(tmp_path / "d3")]
    assert moving and all(store.exists(o) for o in oids)
    store.write(moving[0], 8, b"later")
    store.move_to_stale(moving[1], 5)
    for p in paths:
        for oid in store.misplaced(p):
            store.move_home(oid, p)
    assert os.listdir(tmp_path / "d3" / ".stale") == [f"{moving[1]:016x}.5"]
    assert bytes(store.read(moving[0], 0, 13)) == moving[0].to_bytes(8, "little") + b"later"
    assert store.stale_versions(moving[1])[0][1].startswith(str(tmp_path / "d3"))
    assert all(store.misplaced(p) == [] for p in [*paths, str(tmp_path / "d3")])

    # a create replaces the copy another disk still holds (any live object: which ones
    # moved, and went stale above, depends on the disks' free space)
    oid = next(o for o in oids if o != moving[1])
    other = next(d for d in store.table.disks if d is not store.table.home(oid))
    os.rename(store.path(oid), os.path.join(other.path, f"{oid:016x}"))
    store.create_and_write(oid, 0, b"new", 4 * MiB)
    assert not os.path.exists(os.path.join(other.path, f"{oid:016x}"))
    assert bytes(store.read(oid, 0, 3)) == b"new"
    store.remove(oid)
    with pytest.raises(StoreError) as e:
        store.read(oid, 0, 1)
    assert e.value.result == Res.NO_OBJ


def test_failing_disk_is_reported(tmp_path):
    paths = [str(tmp_path / f"d{i}") for i in range(2)]
    store = ObjectStore(paths, nosync=True)
    reported: list[str] = []
    store.on_disk_failure = reported.append
    oid = next(o for o in range(1, 1000) if store.table.home(o).path == paths[1])
    store.create_and_write(oid, 0, b"x", 4 * MiB)
    os.rename(paths[1], paths[1] + ".gone")
    with pytest.raises(StoreError) as e:
        store.read(oid, 0, 1)
    assert e.value.result == Res.NETWORK_ERROR and reported == [paths[1]]  # the requester retries
    assert not store.exists(oid)
    store.set_table(store.table.replace([store.table.disks[0]]))
    reported.clear()
    os.rename(paths[0], paths[0] + ".gone")  # the last disk: EIO, never removed
    with pytest.raises(StoreError) as e:
        store.read(oid, 0, 1)
    assert e.value.result == Res.EIO and reported == []


def test_md_info_rows():
    row = md_row(MdInfo(0, 79 << 30, 24 << 20, "/store/obj"), "127.0.0.1:7000")
    assert MD_HEADER + row == "Id\tSize\tUsed\tAvail\tUse%\tPath\n 0\t79 GB\t24 MB\t79 GB\t  0%\t/store/obj\n"
    raw = md_row(MdInfo(1, 300, 100, "/d1"), "127.0.0.1:7000", raw=True)
    assert raw == "127.0.0.1:7000 1 400 100 300 25% /d1\n"
    assert md_row(MdInfo(2, 0, 0, "/empty"), "x").endswith("\t0.0 MB\t  0%\t/empty\n")
    assert PLUG_PROMPT.splitlines()[3] == "  /  |   Caution! The directories to be plugged will be purged."
