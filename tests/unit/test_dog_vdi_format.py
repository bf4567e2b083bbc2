"""Pure formatters of the issue-3 vdi commands against dog.md §4 and §8 (no cluster).

Trees, the Graphviz graph, lock-list rows, VDI descriptions, track reports, the majority
vote of `vdi check` and the backup stream encoding.  TZ is pinned to the samples' UTC.
"""
from __future__ import annotations

import io
import os
import time

import pytest

from dog.vdi_backup import (
    BACKUP_RECORD, BackupError, backup_end, backup_header, backup_record, compact,
    read_backup_header, read_backup_records,
)
from dog.vdi_check import Replica, oids_per_node, track_text, vote_majority
from dog.vdi_lock import LOCK_LIST_HEADER, describe_vdi, lock_list_row
from dog.vdi_tree import (
    GRAPH_HEADER, TEXT_BOLD, TEXT_NORMAL, build_forest, graph_node, render_tree, tree_text,
)
from sheep.proto.inode import InodeHeader
from sheep.proto.placement import Ring
from sheep.proto.structs import (
    LOCK_STATE_LOCKED, LOCK_STATE_SHARED, LOCK_STATE_UNLOCKED, EpochLog, NodeId, SdNode, VdiState,
)

GB = 1 << 30
T_ALICE = 1795595358  # 2026-11-25 08:29:18 UTC
T_BOB = 1795595359
T_LATER = 1795595584  # 2026-11-25 08:33:04 UTC


@pytest.fixture(autouse=True)
def utc():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def hdr(name: str, vid: int, t: int, *, snap: bool = False, snap_id: int = 1, parent: int = 0,
        tag: str = "", size: int = GB) -> InodeHeader:
    return InodeHeader(name=name, tag=tag, create_time=t << 32, snap_ctime=(t << 32) if snap else 0,
                       vdi_size=size, nr_copies=3, snap_id=snap_id, vdi_id=vid,
                       parent_vdi_id=parent)


BOB = hdr("Bob", 0x316B4, T_BOB, parent=0x15D167)
ALICE_SNAP = hdr("Alice", 0x15D167, T_ALICE, snap=True, tag="snap1")
ALICE = hdr("Alice", 0x15D168, T_ALICE, snap_id=2, parent=0x15D167)
SAMPLE_8_1 = [(0x316B4, BOB), (0x15D167, ALICE_SNAP), (0x15D168, ALICE)]


# ---------------------------------------------------------------- tree


def test_tree_8_1():
    assert tree_text(SAMPLE_8_1) == ("Bob---(you are here)\n"
                                     "Alice---[2026-11-25 08:29]---(you are here)\n")


def test_tree_8_4_after_rollback():
    """The rolled-back working VDI 15d168 is deleted (not listed); 15d169 hangs under snap1."""
    vdis = [(0x316B4, BOB), (0xEC359, hdr("WireVdi", 0xEC359, T_LATER)),
            (0x15D167, ALICE_SNAP),
            (0x15D169, hdr("Alice", 0x15D169, T_LATER, snap_id=2, parent=0x15D167))]
    assert tree_text(vdis) == ("Bob---(you are here)\n"
                               "WireVdi---(you are here)\n"
                               "Alice---[2026-11-25 08:29]---(you are here)\n")


def test_tree_branches_use_plus_pipe_and_backquote():
    s1 = hdr("Carol", 0x10, T_ALICE, snap=True)
    s2 = hdr("Carol", 0x11, T_ALICE + 60, snap=True, snap_id=2, parent=0x10)
    s3 = hdr("Carol", 0x12, T_ALICE + 120, snap=True, snap_id=3, parent=0x11)
    s4 = hdr("Carol", 0x13, T_ALICE + 180, snap=True, snap_id=4, parent=0x10)
    cur = hdr("Carol", 0x14, T_LATER, snap_id=5, parent=0x11)
    other = hdr("Carol", 0x15, T_LATER, snap=True, snap_id=6, parent=0x10)
    text = tree_text([(0x10, s1), (0x11, s2), (0x12, s3), (0x13, s4), (0x14, cur), (0x15, other)])
    assert text == (
        "Carol---[2026-11-25 08:29]-+-[2026-11-25 08:30]-+-[2026-11-25 08:31]\n"
        "                           |                    `-(you are here)\n"
        "                           |-[2026-11-25 08:32]\n"
        "                           `-[2026-11-25 08:33]\n")


def test_tree_highlights_only_the_working_vdi():
    text = tree_text(SAMPLE_8_1, highlight=True)
    assert text == (f"Bob---{TEXT_BOLD}(you are here){TEXT_NORMAL}\n"
                    f"Alice---[2026-11-25 08:29]---{TEXT_BOLD}(you are here){TEXT_NORMAL}\n")


def test_forest_moves_vdis_seen_before_their_parent():
    """A child with a lower vid than its parent starts as a root and is moved (compaction);
    same-vid parents of another name do not adopt it (clones are their own roots)."""
    root = build_forest([("A", "child", 0x5, 0x9, False), ("B", "other", 0x7, 0x9, False),
                         ("A", "parent", 0x9, 0, False)])
    assert [(n.name, n.label) for n in root.children] == [("B", "other"), ("A", "parent")]
    assert [c.label for c in root.children[1].children] == ["child"]
    assert render_tree(root) == "B---other\nA---parent---child\n"


# ---------------------------------------------------------------- graph


def test_graph_8_2():
    text = GRAPH_HEADER + "".join(graph_node(v, h) for v, h in SAMPLE_8_1) + "}\n"
    assert text == '''digraph G {
  node [shape = "box", fontname = "Courier"];

  "0" [shape = "ellipse", label = "root"];

  "15d167" -> "316b4";
  "316b4" [
    group = "Bob",
    label = "Name:        Bob\\nTag:           0\\nSize:     1.0 GB\\nDate: 2026-11-25\\nTime:   08:29:19",
    color="red"
  ];

  "0" -> "15d167";
  "15d167" [
    group = "Alice",
    label = "Name:      Alice\\nTag:           1\\nSize:     1.0 GB\\nDate: 2026-11-25\\nTime:   08:29:18"
  ];

  "15d167" -> "15d168";
  "15d168" [
    group = "Alice",
    label = "Name:      Alice\\nTag:           0\\nSize:     1.0 GB\\nDate: 2026-11-25\\nTime:   08:29:18",
    color="red"
  ];

}
'''


def test_graph_tag_is_the_snapshot_id_in_hex():
    assert "Tag:          1a\\n" in graph_node(1, hdr("X", 1, T_ALICE, snap=True, snap_id=26))


# ---------------------------------------------------------------- lock list / unlock


def nid(port: int) -> NodeId:
    return NodeId.from_host("127.0.0.1", port)


def test_lock_list_rows():
    locked = VdiState(vid=0x15D168, lock_state=LOCK_STATE_LOCKED, lock_owner=nid(7001))
    assert LOCK_LIST_HEADER == "  Name         Id  VDI id  Tag            Owner node(s)\n"
    assert lock_list_row(0x15D168, ALICE, locked) == \
        "  Alice         0  15d168                 IPv4 ip:127.0.0.1 port:7001\n"
    shared = VdiState(vid=0x15D167, lock_state=LOCK_STATE_SHARED,
                      participants=[nid(7000), nid(7002)], participants_state=[1, 3])
    assert lock_list_row(0x15D167, ALICE_SNAP, shared) == (
        "s Alice         1  15d167  snap1          IPv4 ip:127.0.0.1 port:7000(modified)"
        " IPv4 ip:127.0.0.1 port:7002(invalidated)\n")
    assert lock_list_row(0x316B4, BOB, VdiState(vid=0x316B4, lock_state=LOCK_STATE_UNLOCKED)) == ""
    assert lock_list_row(0x316B4, BOB, locked).startswith("c Bob           0   316b4  ")


def test_describe_vdi():
    assert describe_vdi("Alice", 0, "") == "Alice"
    assert describe_vdi("Alice", 0, "snap1") == "Alice (tag=snap1)"
    assert describe_vdi("Alice", 2, "") == "Alice (snapid=2)"
    assert describe_vdi("Alice", 0, "", 0x15D168) == "Alice (vid=15d168)"
    assert describe_vdi("Alice", 0, "snap1", 0x15D167) == "Alice (tag=snap1, vid=15d167)"
    assert describe_vdi("Alice", 1, "", 0x15D167) == "Alice (snapid=1, vid=15d167)"


# ---------------------------------------------------------------- track / check


NODES = [SdNode(nid(7000 + i), 128, i) for i in range(3)]


def test_track_8_2_and_short_epochs():
    oid = 0x0015D16700000001
    owners = Ring(NODES).oid_to_nodes(oid, 3)
    logs = [EpochLog(epoch=2, nodes=NODES[:2]), EpochLog(epoch=1, nodes=NODES)]
    assert track_text(oid, 3, logs) == (
        "\nobj 0015d16700000001 locations at epoch 2, copies = 3\n" + "-" * 51 + "\n"
        "127.0.0.1:7000\n127.0.0.1:7001\n"
        "\nobj 0015d16700000001 locations at epoch 1, copies = 3\n" + "-" * 51 + "\n"
        + "".join(f"{n.nid}\n" for n in owners))


def test_oids_per_node_follows_placement():
    ring = Ring(NODES)
    per = oids_per_node(ring, NODES, iter([1, 2, 3]), 2)
    assert list(per) == NODES
    for oid in (1, 2, 3):
        assert [n for n in NODES if oid in per[n]] == sorted(ring.oid_to_nodes(oid, 2),
                                                              key=NODES.index)


def test_vote_majority():
    a, b, c = NODES
    good, bad = b"\x01" * 20, b"\x02" * 20
    assert vote_majority([Replica(a, None), Replica(b, None)]) is None
    assert vote_majority([Replica(a, good), Replica(b, bad), Replica(c, good)]).digest == good
    assert vote_majority([Replica(a, bad), Replica(b, good), Replica(c, good)]).digest == good
    assert vote_majority([Replica(a, good), Replica(b, None), Replica(c, None)]).node == a
    assert vote_majority([Replica(a, good), Replica(b, bad), Replica(c, None)]) is None
    assert vote_majority([Replica(a, good), Replica(b, bad), Replica(c, bad)]).digest == bad


# ---------------------------------------------------------------- backup stream


def test_backup_header_and_end_marker():
    assert backup_header() == bytes.fromhex("01000000" "92119211")
    assert backup_end() == b"\xff\xff\xff\xff" + bytes(12)


def test_compact_trims_equal_sectors():
    base = bytes(4096)
    changed = bytearray(base)
    changed[1000:1004] = b"abcd"
    assert compact(changed, base) == (512, 512)
    changed[4095] = 1
    assert compact(changed, base) == (512, 3584)
    assert compact(base, base)[1] == 0
    assert backup_record(3, base, base) == b""
    rec = backup_record(7, changed, base)
    assert BACKUP_RECORD.unpack_from(rec) == (7, 512, 3584, 0)
    assert rec[16:] == bytes(changed[512:])


def test_backup_stream_round_trip():
    base, new = bytes(2048), bytearray(2048)
    new[600] = 9
    stream = io.BytesIO(backup_header() + backup_record(5, new, base)
                        + backup_record(9, b"\1" * 2048, base) + backup_end() + b"junk")
    read_backup_header(stream)
    assert list(read_backup_records(stream)) == [(5, 512, bytes(new[512:1024])),
                                                 (9, 0, b"\1" * 2048)]
    assert stream.read() == b"junk"  # nothing read past the end marker


@pytest.mark.parametrize("data, message", [
    (b"\x02\0\0\0\x92\x11\x92\x11", "The backup file is corrupted"),
    (b"", "The backup file is corrupted"),
])
def test_bad_backup_header(data: bytes, message: str):
    with pytest.raises(BackupError, match=message) as e:
        read_backup_header(io.BytesIO(data))
    assert e.value.code == 2


def test_truncated_backup_records():
    base = bytes(1024)
    rec = backup_record(1, b"\1" * 1024, base)
    for cut in (rec[:10], rec[:-1], rec):  # short header, short data, no end marker
        with pytest.raises(BackupError, match="failed to read backup data"):
            list(read_backup_records(io.BytesIO(cut)))
