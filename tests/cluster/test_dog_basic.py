"""`dog` against a real cluster: the issue-2 commands and their error paths."""
from __future__ import annotations

import re

from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.placement import Ring


def test_unknown_vdi_messages(cluster):
    r = cluster.dog("vdi", "read", "nosuch", check=False)
    assert r.returncode == 1
    assert r.stderr.decode() == "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found\n"
    r = cluster.dog("vdi", "delete", "nosuch", check=False)
    assert r.returncode == 5  # the original exited 0 here
    assert "No VDI found" in r.stderr.decode()


def test_bad_size_and_duplicate(cluster):
    r = cluster.dog("vdi", "create", "Alice", "1Q", check=False)
    assert r.returncode == 64
    assert r.stderr.decode().startswith("Invalid size '1Q'\n")
    cluster.dog("vdi", "create", "Alice", "1G")
    r = cluster.dog("vdi", "create", "Alice", "1G", check=False)
    assert (r.returncode, r.stderr.decode()) == (1, "Failed to create VDI Alice: VDI exists already\n")


def test_object_location_matches_placement(cluster):
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "write", "Alice", "4194304", "5", input=b"hello")
    with cluster.client() as c:
        nodes = c.get_node_list()
        vid = c.get_vdi_info("Alice").vdi_id
    ring = Ring(nodes)
    for args, oid in ((["Alice"], vid_to_vdi_oid(vid)), (["-i", "1", "Alice"], vid_to_data_oid(vid, 1))):
        out = cluster.dog("vdi", "object", "location", *args).stdout.decode()
        owners = " ".join(str(n.nid) for n in ring.oid_to_nodes(oid, 3))
        assert out.endswith(f"\nAccording to sheepdog algorithm, the object should be located at:\n{owners}\n")
        assert out.count(" has the object\n") == 3
    out = cluster.dog("vdi", "object", "map", "Alice").stdout.decode()
    assert out == f"Index       VID\n00000001 {vid:8x}\n"


def test_node_info_and_kill(cluster):
    out = cluster.dog("node", "info").stdout.decode().splitlines()
    assert out[0] == "Id\tSize\tUsed\tAvail\tUse%"
    assert all(re.fullmatch(r" \d\t[\d.]+ [MGTP]B\t[\d.]+ [MGTP]B\t[\d.]+ [MGTP]B\t +\d+%", row) for row in out[1:4])
    assert out[4].startswith("Total\t") and out[5] == "" and out[6] == "Total virtual image size\t0.0 MB"
    victim = sorted(cluster.nodes, key=lambda s: s.port)[2]
    cluster.dog("node", "kill", "2")
    assert victim.proc.wait(10) == 0
    cluster.wait_members(2)
    survivor = sorted(cluster.nodes, key=lambda s: s.port)[0]  # nodes[0] may be the victim
    assert cluster.dog("node", "list", "-r", port=survivor.port).stdout.decode().count("\n") == 2


def test_shared_locks(lock_cluster):
    """LOCK_TYPE_SHARED (iSCSI multipath): participants coexist and exclude a normal lock."""
    from sheep.client.sync import SheepError
    from sheep.proto.constants import Op, Res
    from sheep.proto.header import Request
    from sheep.proto.structs import VdiState

    with lock_cluster.client() as c:
        c.new_vdi("Shared", 64 << 20)
    for i in (0, 1):
        with lock_cluster.client(i) as c:
            c.lock_vdi("Shared", lock_type=1)
    with lock_cluster.client(2) as c:
        try:
            c.lock_vdi("Shared")
            raise AssertionError("a normal lock must not join shared participants")
        except SheepError as e:
            assert e.result == Res.VDI_LOCKED
        rsp, data = c.call(Request(Op.GET_VDI_COPIES, data_length=1428 * 16))
        states = [VdiState.decode(data, off) for off in range(0, len(data), 1428)]
    (st,) = [s for s in states if s.lock_state != 1]
    assert st.lock_state == 3 and len(st.participants) == 2
    out = lock_cluster.dog("vdi", "lock", "list").stdout.decode()
    assert out.count("(shared)") == 2
