"""`dog vdi` issue-3 commands end to end against a real cluster (dog.md §4, §8).

Outputs are compared with the verbatim samples of dog.md §8; only dates and times are
normalised (VDI ids come from the name hash, so a fresh cluster reproduces them).
"""
from __future__ import annotations

from sheep.proto.hashing import hash_vdi

import hashlib
import os
import re
import struct

import pytest

from sheep.client.sync import SheepError
from sheep.proto.constants import Res
from sheep.proto.oid import vid_to_data_oid, vid_to_vdi_oid
from sheep.proto.placement import Ring

MB = 1 << 20
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")

LIST_8_1 = """\
  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift
c Bob          0  1.0 GB  0.0 MB  8.0 MB 2026-11-25 08:29    316b4      3                22
s Alice        1  1.0 GB  8.0 MB  0.0 MB 2026-11-25 08:29   15d167      3         snap1  22
  Alice        0  1.0 GB  4.0 MB  4.0 MB 2026-11-25 08:29   15d168      3                22
"""
RAW_8_1 = """\
c Bob 0 1073741824 0 8388608 <t> 316b4 3  22
s Alice 1 1073741824 8388608 0 <t> 15d167 3 snap1 22
= Alice 0 1073741824 4194304 4194304 <t> 15d168 3  22
"""
TREE_8_1 = "Bob---(you are here)\nAlice---[<date>]---(you are here)\n"
GRAPH_8_2 = '''digraph G {
  node [shape = "box", fontname = "Courier"];

  "0" [shape = "ellipse", label = "root"];

  "15d167" -> "316b4";
  "316b4" [
    group = "Bob",
    label = "Name:        Bob\\nTag:           0\\nSize:     1.0 GB\\nDate: <day>\\nTime: <time>",
    color="red"
  ];

  "0" -> "15d167";
  "15d167" [
    group = "Alice",
    label = "Name:      Alice\\nTag:           1\\nSize:     1.0 GB\\nDate: <day>\\nTime: <time>"
  ];

  "15d167" -> "15d168";
  "15d168" [
    group = "Alice",
    label = "Name:      Alice\\nTag:           0\\nSize:     1.0 GB\\nDate: <day>\\nTime: <time>",
    color="red"
  ];

}
'''
DUMP_8_2 = """\
name: Alice
tag: snap1
create_time: <x>
snap_ctime: <x>
vm_clock_nsec: 0
vdi_size: 1073741824
vm_state_size: 0
copy_policy: 0
store_policy: 0
nr_copies: 3
block_size_shift: 22
snap_id: 1
vdi_id: 15d167
parent_vdi_id: 0
btree_counter: 0
data_vdi_id:
0: 15d167
1: 15d167
gref:
0: 15d167, 0, 3
1: 15d167, 0, 3
"""
ROLLBACK_PROMPT = ("This operation discards any changes made since the previous\n"
                   "snapshot was taken.  Continue? [yes/no]: ")


def text(r) -> str:
    return r.stdout.decode()


def err(r) -> str:
    return r.stderr.decode()


def dated(s: str) -> str:
    return DATE.sub("<date>", s)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def listing(cluster) -> str:
    return text(cluster.dog("vdi", "list", "-r"))


def obj_path(sheep, oid: int):
    return sheep.store / "obj" / f"{oid:016x}"


def sample_8_1(cluster) -> None:
    """create/write, snapshot snap1, overwrite, clone Bob: the state of dog.md §8.1."""
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "write", "Alice", "0", "14", input=b"hello sheepdog")
    cluster.dog("vdi", "write", "Alice", "4M", "5", input=b"hello")
    r = cluster.dog("vdi", "snapshot", "-v", "-s", "snap1", "Alice")
    assert text(r) == "new VID of original VDI: 15d168, VDI ID of newly created snapshot: 15d167\n"
    cluster.dog("vdi", "write", "Alice", "0", "16", input=b"HELLO-AFTER-SNAP")
    r = cluster.dog("vdi", "clone", "-v", "-s", "snap1", "Alice", "Bob")
    assert text(r) == "VDI ID of newly created clone: 316b4\n"


# ---------------------------------------------------------------- snapshot, clone, rollback


def test_snapshot_clone_list_tree_graph_8_1(cluster):
    sample_8_1(cluster)
    assert cluster.dog("vdi", "read", "-s", "snap1", "Alice", "0", "16").stdout == \
        b"hello sheepdog\0\0"
    assert cluster.dog("vdi", "read", "Bob", "0", "16").stdout == b"hello sheepdog\0\0"
    assert cluster.dog("vdi", "read", "Alice", "0", "16").stdout == b"HELLO-AFTER-SNAP"
    assert dated(text(cluster.dog("vdi", "list"))) == dated(LIST_8_1)
    assert re.sub(r" (?!1073741824)\d{10} ", " <t> ", listing(cluster)) == RAW_8_1
    assert dated(text(cluster.dog("vdi", "tree"))) == TREE_8_1
    graph = re.sub(r"Date: \d{4}-\d\d-\d\d", "Date: <day>", text(cluster.dog("vdi", "graph")))
    assert re.sub(r"Time:   \d\d:\d\d:\d\d", "Time: <time>", graph) == GRAPH_8_2
    assert text(cluster.dog("vdi", "object", "map", "-s", "snap1", "Alice")) == \
        "Index       VID\n00000000   15d167\n00000001   15d167\n"
    assert text(cluster.dog("vdi", "object", "map", "Alice")) == \
        "Index       VID\n00000000   15d168\n00000001   15d167\n"
    r = cluster.dog("vdi", "object", "location", "-s", "1", "Alice")
    assert text(r).startswith("Looking for the inode object 0x15d167 with 3 nodes\n\n")
    assert cluster.dog("vdi", "list", "-o", "15d16700000001").stdout.decode().count("\n") == 4


def test_rollback_prompt_force_and_refcounts(cluster):
    sample_8_1(cluster)
    before = listing(cluster)
    r = cluster.dog("vdi", "rollback", "-s", "snap1", "Alice", input=b"")
    assert (r.returncode, text(r), err(r)) == (0, ROLLBACK_PROMPT, "")
    assert listing(cluster) == before
    r = cluster.dog("vdi", "rollback", "-s", "snap1", "Alice", input=b"no\n")
    assert r.returncode == 0 and listing(cluster) == before
    r = cluster.dog("vdi", "rollback", "-v", "-f", "-s", "snap1", "Alice")
    assert text(r) == "New VDI ID of rollbacked VDI: 15d169\n"
    rows = dated(text(cluster.dog("vdi", "list", "Alice"))).splitlines()
    assert rows[1:] == [
        "s Alice        1  1.0 GB  8.0 MB  0.0 MB <date>   15d167      3         snap1  22",
        "  Alice        0  1.0 GB  0.0 MB  8.0 MB <date>   15d169      3                22"]
    assert cluster.dog("vdi", "read", "Alice", "0", "16").stdout == b"hello sheepdog\0\0"
    assert dated(text(cluster.dog("vdi", "tree"))) == TREE_8_1
    # one snapshot, one clone and one rollback: count 3 (dog.md §8.2, objects.md §3)
    inode_file = obj_path(cluster.nodes[0], vid_to_vdi_oid(0x15D167))
    dump = text(cluster.dog("vdi", "object", "dump-inode", str(inode_file)))
    assert re.sub(r"(create_time|snap_ctime): [0-9a-f]+", r"\1: <x>", dump) == DUMP_8_2
    r = cluster.dog("vdi", "rollback", "Alice", check=False)
    assert (r.returncode, err(r)) == (64, "Please specify the '-s' option\n")
    assert text(r).startswith("Usage: dog vdi rollback [-s snapshot]")


def test_snapshot_options(cluster):
    cluster.dog("vdi", "create", "Alice", "64M")
    r = cluster.dog("vdi", "snapshot", "-R", "-v", "Alice")  # no own objects yet: skipped
    assert (r.returncode, text(r), err(r)) == \
        (0, "", "VDI Alice doesn't have its own objects, skipping creation of snapshot\n")
    assert listing(cluster).count("\n") == 1
    cluster.dog("vdi", "write", "Alice", "0", "3", input=b"abc")
    cluster.dog("vdi", "snapshot", "-R", "Alice")  # untagged, id 1
    r = cluster.dog("vdi", "snapshot", "-R", "-v", "-r", "Alice")  # working VDI owns nothing
    assert (r.returncode, text(r)) == (0, "")
    r = cluster.dog("vdi", "snapshot", "-v", "-r", "-s", "second", "Alice")
    assert re.fullmatch(r"[0-9a-f]+ [0-9a-f]+\n", text(r))
    rows = [line.split() for line in listing(cluster).splitlines()]
    assert [(row[0], row[2], row[9] if len(row) > 10 else "") for row in rows] == \
        [("s", "1", ""), ("s", "2", "second"), ("=", "0", "")]
    r = cluster.dog("vdi", "snapshot", "-s", "7", "Alice", check=False)
    assert (r.returncode, err(r)) == \
        (64, "Please specify a non-integer value for a snapshot tag name\n")
    assert text(r).startswith("Usage: dog vdi snapshot")


def test_clone_no_share_and_prealloc(cluster):
    payload = os.urandom(5 * MB)
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", input=payload)
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    snap = md5(cluster.dog("vdi", "read", "-s", "s1", "Alice").stdout)
    cluster.dog("vdi", "clone", "-n", "-s", "s1", "Alice", "Solo")
    cluster.dog("vdi", "clone", "-P", "-s", "s1", "Alice", "Full")
    rows = {row[2:10].strip(): row for row in dated(text(cluster.dog("vdi", "list"))).splitlines()}
    assert re.fullmatch(r"  Solo         0   64 MB  8\.0 MB  0\.0 MB <date> +[0-9a-f]+      3 +22",
                        rows["Solo"])
    assert re.fullmatch(r"c Full         0   64 MB   64 MB  0\.0 MB <date> +[0-9a-f]+      3 +22",
                        rows["Full"])
    for name in ("Solo", "Full"):
        assert md5(cluster.dog("vdi", "read", name).stdout) == snap
    assert dated(text(cluster.dog("vdi", "tree"))).splitlines()[-2:] == \
        ["Solo---(you are here)", "Full---(you are here)"]


def test_delete_snapshots_by_tag_and_id(cluster):
    payload = os.urandom(9 * MB)
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", input=payload)
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    cluster.dog("vdi", "write", "Alice", "0", "3", input=b"xyz")
    cluster.dog("vdi", "snapshot", "Alice")  # untagged, id 2
    cluster.dog("vdi", "write", "Alice", "4M", "3", input=b"qqq")
    current = cluster.dog("vdi", "read", "Alice").stdout
    cluster.dog("vdi", "delete", "-s", "s1", "Alice")
    cluster.dog("vdi", "delete", "-s", "2", "Alice")
    rows = listing(cluster).splitlines()
    assert len(rows) == 1 and rows[0].startswith("= Alice 0 67108864 4194304 8388608 ")
    assert cluster.dog("vdi", "read", "Alice").stdout == current  # shared objects survive
    for sel, message in (("2", "snapshot id: 2 snapshot tag: "),
                         ("s1", "snapshot id: 0 snapshot tag: s1")):
        r = cluster.dog("vdi", "delete", "-s", sel, "Alice", check=False)
        assert (r.returncode, err(r)) == \
            (1, f"Failed to open VDI Alice ({message}): Failed to find requested tag\n")


# ---------------------------------------------------------------- attributes, resize


def test_setattr_getattr(cluster):
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "setattr", "Alice", "mykey", "myvalue")
    assert cluster.dog("vdi", "getattr", "Alice", "mykey").stdout == b"myvalue"
    r = cluster.dog("vdi", "setattr", "-x", "Alice", "mykey", "other", check=False)
    assert (r.returncode, err(r)) == (3, "The attribute 'mykey' already exists\n")
    assert cluster.dog("vdi", "getattr", "Alice", "mykey").stdout == b"myvalue"
    cluster.dog("vdi", "setattr", "Alice", "mykey", "second")  # plain set overwrites
    assert cluster.dog("vdi", "getattr", "Alice", "mykey").stdout == b"second"
    cluster.dog("vdi", "setattr", "Alice", "fromstdin", input=b"piped\0ignored")
    assert cluster.dog("vdi", "getattr", "Alice", "fromstdin").stdout == b"piped"
    cluster.dog("vdi", "setattr", "-d", "Alice", "mykey")
    r = cluster.dog("vdi", "getattr", "Alice", "mykey", check=False)
    assert (r.returncode, r.stdout, err(r)) == (5, b"", "Attribute 'mykey' not found\n")
    r = cluster.dog("vdi", "setattr", "-d", "Alice", "mykey", check=False)
    assert (r.returncode, err(r)) == (5, "Attribute 'mykey' not found\n")
    for args in (["getattr", "Nobody", "k"], ["setattr", "Nobody", "k", "v"]):
        r = cluster.dog("vdi", *args, check=False)
        assert (r.returncode, err(r)) == (5, "VDI not found\n")
    r = cluster.dog("vdi", "getattr", "Alice", check=False)
    assert (r.returncode, err(r)) == (64, "Please specify the attribute key\n")
    assert cluster.dog("vdi", "getattr", "Alice", "fromstdin").stdout == b"piped"


def test_resize(cluster):
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "create", "-z", "23", "Big23", "1G")
    cluster.dog("vdi", "create", "-y", "Hyper", "5T")
    cluster.dog("vdi", "resize", "Alice", "2G")
    before = listing(cluster)
    assert "= Alice 0 2147483648 " in before
    cases = [
        (["Alice", "1G"], "Shrinking VDIs is not implemented\n"),
        (["Alice", "4T+1"], "Invalid size '4T+1'\n"),
        (["Alice", "5T"], "New VDI size is too large. This volume's max size is 4398046511104\n"),
        (["Big23", "9T"], "New VDI size is too large. This volume's max size is 8796093022208\n"),
        (["Hyper", "17P"], "New VDI size is too large This volume's max size is 18014398509481984\n"),
        (["Alice"], "Please specify the new size for the VDI\n"),
    ]
    for args, message in cases:
        r = cluster.dog("vdi", "resize", *args, check=False)
        assert r.returncode == 64 and err(r).startswith(message), (args, err(r))
        assert text(r).startswith("Usage: dog vdi resize")
    assert listing(cluster) == before
    cluster.dog("vdi", "resize", "Alice", "4T")
    cluster.dog("vdi", "resize", "Hyper", "16P")
    assert "= Alice 0 4398046511104 " in listing(cluster)


# ---------------------------------------------------------------- backup and restore


def test_backup_restore_reproduces_the_snapshot(cluster):
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", input=os.urandom(10 * MB))
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    cluster.dog("vdi", "write", "Alice", "5000", "8", input=b"changed!")
    cluster.dog("vdi", "write", "Alice", "30M", "1000", input=os.urandom(1000))
    cluster.dog("vdi", "snapshot", "-s", "s2", "Alice")
    cluster.dog("vdi", "write", "Alice", "0", "5", input=b"after")
    s2 = md5(cluster.dog("vdi", "read", "-s", "s2", "Alice").stdout)

    stream = cluster.dog("vdi", "backup", "-F", "s1", "-s", "s2", "Alice").stdout
    assert stream[:8] == struct.pack("<II", 1, 0x11921192)
    assert stream[8:24] == struct.pack("<IIII", 0, 4608, 512, 0)  # one sector of object 0
    assert stream[-16:] == struct.pack("<IIII", 0xFFFFFFFF, 0, 0, 0)
    assert len(stream) == 8 + 16 + 512 + 16 + 1024 + 16  # 30M+1000 spans two sectors

    cluster.dog("vdi", "restore", "-s", "s1", "Alice", input=stream)
    rows = [row.split() for row in listing(cluster).splitlines()]
    assert [(r[0], r[2]) for r in rows] == [("s", "1"), ("s", "2"), ("s", "3"), ("=", "0")]
    assert md5(cluster.dog("vdi", "read", "-s", "3", "Alice").stdout) == s2
    assert md5(cluster.dog("vdi", "read", "Alice").stdout) == s2  # new working VDI: old parent
    assert dated(text(cluster.dog("vdi", "tree"))) == (
        "Alice---[<date>]-+-[<date>]---(you are here)\n" + " " * 27 + "`-[<date>]\n")


def test_backup_restore_bad_input_changes_nothing(cluster):
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", "0", "3", input=b"abc")
    cluster.dog("vdi", "snapshot", "-s", "s1", "Alice")
    before = listing(cluster)
    r = cluster.dog("vdi", "backup", "-s", "s1", "Alice", check=False)
    assert (r.returncode, err(r)) == (64, "Please specify snapshots with '-F' and '-s' options\n")
    r = cluster.dog("vdi", "backup", "-F", "s1", "-s", "nosuch", "Alice", check=False)
    assert r.returncode == 1 and r.stdout == b""
    r = cluster.dog("vdi", "restore", "Alice", input=b"", check=False)
    assert (r.returncode, err(r)) == \
        (64, "We can restore a backup file only to snapshots\nPlease specify the '-s' option\n")
    r = cluster.dog("vdi", "restore", "-s", "s1", "Alice", input=b"garbage!" * 4, check=False)
    assert (r.returncode, err(r)) == (2, "The backup file is corrupted\n")
    r = cluster.dog("vdi", "restore", "-s", "nosuch", "Alice", input=b"", check=False)
    assert r.returncode == 1 and err(r).endswith("Snapshot ID 0 or tag nosuch doesn't exist\n")
    assert listing(cluster) == before
    assert cluster.dog("vdi", "read", "Alice", "0", "3").stdout == b"abc"


# ---------------------------------------------------------------- check, track


def test_check_exist_and_repair(cluster):
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", input=os.urandom(12 * MB))  # objects 0, 1, 2
    with cluster.client() as c:
        vid = c.get_vdi_info("Alice").vdi_id
    assert text(cluster.dog("vdi", "check", "-e", "Alice")) == \
        "Alice is fine, no object is missing.\n"
    assert text(cluster.dog("vdi", "check", "Alice")) == "finish check&repair Alice\n"
    a, b, c_ = cluster.nodes
    corrupt, missing, inode = vid_to_data_oid(vid, 0), vid_to_data_oid(vid, 2), vid_to_vdi_oid(vid)
    with open(obj_path(a, corrupt), "r+b") as f:
        f.seek(100)
        f.write(b"XXXX")
    os.unlink(obj_path(b, missing))
    os.unlink(obj_path(c_, inode))
    r = cluster.dog("vdi", "check", "-e", "Alice", check=False)
    assert r.returncode == 1
    assert sorted(text(r).splitlines()) == sorted([
        f"[127.0.0.1:{b.port}] oid {missing:016x} is missing.",
        f"[127.0.0.1:{c_.port}] oid {inode:016x} is missing.",
        "Alice lost 2 object(s)."])
    r = cluster.dog("vdi", "check", "Alice")
    assert text(r).splitlines() == [f"fixed missing {inode:016x}", f"fixed replica {corrupt:016x}",
                                    f"fixed missing {missing:016x}", "finish check&repair Alice"]
    for oid in (corrupt, missing, inode):
        digests = {md5(obj_path(s, oid).read_bytes()) for s in cluster.nodes}
        assert len(digests) == 1, f"{oid:016x}"
    assert text(cluster.dog("vdi", "check", "Alice")) == "finish check&repair Alice\n"
    assert text(cluster.dog("vdi", "check", "-e", "Alice")) == \
        "Alice is fine, no object is missing.\n"
    # two different survivors out of three: nothing to vote for, nothing is touched
    with open(obj_path(a, corrupt), "r+b") as f:
        f.write(b"YYYY")
    os.unlink(obj_path(b, corrupt))
    r = cluster.dog("vdi", "check", "Alice")
    assert (text(r), err(r)) == ("finish check&repair Alice\n", f"no majority of {corrupt:016x}\n")
    assert not obj_path(b, corrupt).exists()


def test_track_every_epoch(cluster):
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "write", "Alice", "4M", "5", input=b"hello")
    with cluster.client() as c:
        nodes = c.get_node_list()
    oid = vid_to_data_oid(0x15D167, 1)
    owners = "".join(f"{n.nid}\n" for n in Ring(nodes).oid_to_nodes(oid, 3))
    epoch1 = (f"\nobj {oid:016x} locations at epoch 1, copies = 3\n" + "-" * 51 + "\n" + owners)
    r = cluster.dog("vdi", "track", "-i", "1", "Alice")
    assert text(r) == ("Tracking the object 0015d16700000001 (the inode vid 0x15d167 idx 1) "
                       "with 3 nodes\n" + epoch1)
    r = cluster.dog("vdi", "track", "-o", f"{oid:x}", "Alice")
    assert text(r).startswith("Tracking the object 0015d16700000001 (the inode vid 0x15d167) ")
    r = cluster.dog("vdi", "track", "Alice")
    assert text(r).startswith("Tracking the inode object 0x15d167 with 3 nodes\n\n"
                              "obj 8015d16700000000 locations at epoch 1, copies = 3\n")
    victim = cluster.nodes[2]  # dog talks to nodes[0]
    victim.kill9()
    cluster.wait_members(2)
    survivors = [n for n in nodes if n.nid.port != victim.port]  # node order
    r = cluster.dog("vdi", "track", "-i", "1", "Alice")
    assert text(r) == (
        "Tracking the object 0015d16700000001 (the inode vid 0x15d167 idx 1) with 2 nodes\n"
        f"\nobj {oid:016x} locations at epoch 2, copies = 3\n" + "-" * 51 + "\n"
        + "".join(f"{n.nid}\n" for n in survivors) + epoch1)


# ---------------------------------------------------------------- refusals


def test_bad_input_changes_nothing(cluster):
    sample_8_1(cluster)
    cluster.dog("vdi", "create", "-y", "Hyper", "5T")
    before = listing(cluster)
    long = "N" * 257
    cases = [
        (["snapshot", "Hyper"], 1, "creating a snapshot of hypervolume is not supported\n"),
        (["clone", "Alice", "Carl"], 64,
         "Only snapshot VDIs can be cloned\nPlease specify the '-s' option\n"),
        (["clone", "-s", "2", "Alice", "Carl"], 1,
         "Failed to open VDI Alice (snapshot id: 2 snapshot tag: ): Failed to find requested tag\n"),
        (["clone", "-s", "snap1", "Alice"], 64, "Destination VDI name must be specified\n"),
        (["clone", "-s", "nosuch", "Alice", "Carl"], 1,
         "Failed to open VDI Alice (snapshot id: 0 snapshot tag: nosuch): "
         "Failed to find requested tag\n"),
        (["rollback", "-f", "-s", "nosuch", "Alice"], 1,
         "Failed to open VDI Alice (snapshot id: 0 snapshot tag: nosuch): "
         "Failed to find requested tag\n"),
        (["read", "-s", "nosuch", "Alice"], 1,
         "Failed to open VDI Alice (snapshot id: 0 snapshot tag: nosuch): "
         "Failed to find requested tag\n"),
        (["clone", "-s", "snap1", "Alice", "Bob"], 1, "Failed to create VDI Bob: VDI exists already\n"),
        (["create", "Bob", "1G"], 1, "Failed to create VDI Bob: VDI exists already\n"),
        (["snapshot", "-s", "snap1", "Alice"], 1,
         "Failed to create snapshot for Alice, maybe snapshot id (0) or tag (snap1) is existed\n"),
        (["snapshot", "Nobody"], 1, "Failed to create snapshot for Nobody: No VDI found\n"),
        (["snapshot", long], 1, f"Failed to create snapshot for {long}: No VDI found\n"),
        (["read", long], 1,
         f"Failed to open VDI {long} (snapshot id: 0 snapshot tag: ): No VDI found\n"),
        (["clone", "-s", "snap1", long, "Carl"], 1,
         f"Failed to open VDI {long} (snapshot id: 0 snapshot tag: snap1): No VDI found\n"),
        (["lock", "unlock", "Nobody"], 1, "Failed to find VDI Nobody: No VDI found\n"),
        (["lock", "unlock", "Alice"], 1, "VDI Alice (vid=15d168) is not locked\n"),
        (["lock", "unlock", "-s", "snap1", "Alice"], 1,
         "VDI Alice (tag=snap1, vid=15d167) is not locked\n"),
    ]
    for args, code, message in cases:
        r = cluster.dog("vdi", *args, check=False)
        assert (r.returncode, err(r)) == (code, message), args
    assert listing(cluster) == before
    # dog cannot write to a snapshot; a client that tries gets READONLY
    with cluster.client() as c, pytest.raises(SheepError) as e:
        c.write_object(vid_to_data_oid(0x15D167, 0), b"overwrite")
    assert e.value.result == Res.READONLY
    assert cluster.dog("vdi", "read", "-s", "snap1", "Alice", "0", "16").stdout == \
        b"hello sheepdog\0\0"


def test_long_name_is_cut_like_pstrcpy(cluster):
    """dog copies names into char[256] with pstrcpy: 257 bytes become 255 (no error)."""
    cluster.dog("vdi", "create", "N" * 257, "4M")
    assert listing(cluster).split()[1] == "N" * 255
    cluster.dog("vdi", "delete", "N" * 300)
    assert listing(cluster) == ""


# ---------------------------------------------------------------- locks, alter-copy


def test_lock_list_and_unlock(make_cluster):
    cluster = make_cluster(3)
    assert text(cluster.dog("cluster", "format", "-l")) == "using backend plain store\n"
    cluster.dog("vdi", "create", "Alice", "1G")
    cluster.dog("vdi", "create", "Bob", "1G")
    header = "  Name         Id  VDI id  Tag            Owner node(s)\n"
    assert text(cluster.dog("vdi", "lock", "list")) == header
    owner = cluster.nodes[1]
    with cluster.client(1) as c:
        c.lock_vdi("Alice")
    assert text(cluster.dog("vdi", "lock", "list")) == header + (
        f"  Alice         0  15d167                 IPv4 ip:127.0.0.1 port:{owner.port}\n")
    with cluster.client(2) as c, pytest.raises(SheepError):
        c.lock_vdi("Alice")
    assert cluster.dog("vdi", "lock", "unlock", "Alice").returncode == 0
    assert text(cluster.dog("vdi", "lock", "list")) == header
    r = cluster.dog("vdi", "lock", "unlock", "Alice", check=False)
    assert (r.returncode, err(r)) == (1, "VDI Alice (vid=15d167) is not locked\n")
    with cluster.client(2) as c:
        c.lock_vdi("Alice")  # free again


def test_alter_copy(cluster):
    sample_8_1(cluster)
    cluster.dog("vdi", "create", "Solo", "12M")
    before = listing(cluster)
    r = cluster.dog("vdi", "alter-copy", "-c", "2", "Solo", input=b"")
    assert (r.returncode, text(r)) == (0, (
        "    __\n   ()'`;\n"
        "   /\\|`  Caution! Changing VDI's redundancy level will affect\n"
        "  /  |   the VDI itself only and trigger recovery.\n"
        "(/_)_|_  Are you sure you want to continue? [yes/no]: "))
    r = cluster.dog("vdi", "alter-copy", "-c", "4", "Solo", input=b"")
    assert (r.returncode, text(r)) == (0, "Number of copies (4) is larger than number of nodes (3)."
                                          "\nAre you sure you want to continue? [yes/no]: ")
    cases = [
        (["-c", "2:1", "Solo"], 64, "Changing redundancy level of erasure coded vdi is not "
                                    "supported yet.\n"),
        (["-f", "Solo"], 1, "Solo's redundancy level is already set to 3, nothing changed.\n"),
        (["-f", "-c", "2", "Alice"], 1, "Only standalone vdi supports changing redundancy level."
                                        "\nPlease clone Alice with -n (--no-share) option first.\n"),
        (["-f", "-c", "2", "Bob"], 1, "Only standalone vdi supports changing redundancy level."
                                      "\nPlease clone Bob with -n (--no-share) option first.\n"),
    ]
    for args, code, message in cases:
        r = cluster.dog("vdi", "alter-copy", *args, check=False)
        assert (r.returncode, err(r)) == (code, message), args
    assert listing(cluster) == before
    r = cluster.dog("vdi", "alter-copy", "-f", "-c", "2", "Solo", check=False)
    assert (r.returncode, err(r)) == (0, "Solo's redundancy level is set to 2, the old one was 3.\n")
    assert "= Solo 0 12582912 0 0 " in listing(cluster)
    assert f" {hash_vdi('Solo'):x} 2  22\n" in listing(cluster)
