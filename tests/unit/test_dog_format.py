"""dog's output formatters against the verbatim samples of dog.md §8 (built from structs).

The samples were taken in UTC; the formatters use the local time zone, so TZ is pinned.
"""
from __future__ import annotations

import os
import time

import pytest

from dog.cluster import cluster_info_text, nodes_diff
from dog.node import node_info_row, node_info_total, node_list_text
from dog.vdi import LIST_HEADER, raw_escape, vdi_list_row
from dog.vdi_object import dump_inode_text, expected_location, object_map_row
from sheep.proto.constants import ClusterFlag, Res
from sheep.proto.inode import Inode, InodeHeader
from sheep.proto.sizes import parse_copies
from sheep.proto.structs import EpochLog, NodeId, SdNode

MB = 1 << 20
GB = 1 << 30
T_ALICE = 1795595358  # 2026-11-25 08:29:18 UTC
T_BOB = 1795595359


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


def node(port: int, zone: int, vnodes: int = 128) -> SdNode:
    return SdNode(NodeId.from_host("127.0.0.1", port), vnodes, zone)


def hdr(name: str, vid: int, size: int, t: int, *, snap: bool = False, snap_id: int = 1,
        parent: int = 0, tag: str = "", copies: str = "3", shift: int = 22) -> InodeHeader:
    nr, policy = parse_copies(copies)
    return InodeHeader(name=name, tag=tag, create_time=t << 32 | 12345,
                       snap_ctime=(t << 32) if snap else 0, vdi_size=size, copy_policy=policy,
                       nr_copies=nr, block_size_shift=shift, snap_id=snap_id, vdi_id=vid,
                       parent_vdi_id=parent)


# ---------------------------------------------------------------- vdi list

BOB = hdr("Bob", 0x316B4, GB, T_BOB, snap_id=1, parent=0x15D167)
ALICE_SNAP = hdr("Alice", 0x15D167, GB, T_ALICE, snap=True, snap_id=1, tag="snap1")
ALICE = hdr("Alice", 0x15D168, GB, T_ALICE, snap_id=2, parent=0x15D167)


def test_vdi_list_rows_8_1():
    text = (LIST_HEADER + vdi_list_row(0x316B4, BOB, 0, 0, 2)
            + vdi_list_row(0x15D167, ALICE_SNAP, 1, 2, 0)
            + vdi_list_row(0x15D168, ALICE, 0, 1, 1))
    assert text == (
        "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n"
        "c Bob          0  1.0 GB  0.0 MB  8.0 MB 2026-11-25 08:29    316b4      3                22\n"
        "s Alice        1  1.0 GB  8.0 MB  0.0 MB 2026-11-25 08:29   15d167      3         snap1  22\n"
        "  Alice        0  1.0 GB  4.0 MB  4.0 MB 2026-11-25 08:29   15d168      3                22\n")


def test_vdi_list_raw_rows_8_1():
    text = (vdi_list_row(0x316B4, BOB, 0, 0, 2, raw=True)
            + vdi_list_row(0x15D167, ALICE_SNAP, 1, 2, 0, raw=True)
            + vdi_list_row(0x15D168, ALICE, 0, 1, 1, raw=True))
    assert text == ("c Bob 0 1073741824 0 8388608 1795595359 316b4 3  22\n"
                    "s Alice 1 1073741824 8388608 0 1795595358 15d167 3 snap1 22\n"
                    "= Alice 0 1073741824 4194304 4194304 1795595358 15d168 3  22\n")


def test_vdi_list_rows_8_4():
    t = 1795595583
    rows = [
        (0xEC359, hdr("WireVdi", 0xEC359, 64 * MB, 1795595569), 1, 0),
        (0x70ADB9, hdr("Hyper", 0x70ADB9, 5 << 40, t), 0, 0),
        (0xA12A16, hdr("EcVdi", 0xA12A16, 100 * MB, t, copies="2:1"), 1, 0),
        (0xCB79E7, hdr("Prealloc", 0xCB79E7, 12 * MB, t), 3, 0),
        (0xD69566, hdr("Big23", 0xD69566, GB, t, shift=23), 0, 0),
    ]
    text = "".join(vdi_list_row(v, h, 0, m, 0) for v, h, m, _ in rows)
    assert text == (
        "  WireVdi      0   64 MB  4.0 MB  0.0 MB 2026-11-25 08:32    ec359      3                22\n"
        "  Hyper        0  5.0 TB  0.0 MB  0.0 MB 2026-11-25 08:33   70adb9      3                22\n"
        "  EcVdi        0  100 MB  4.0 MB  0.0 MB 2026-11-25 08:33   a12a16    2:1                22\n"
        "  Prealloc     0   12 MB   12 MB  0.0 MB 2026-11-25 08:33   cb79e7      3                22\n"
        "  Big23        0  1.0 GB  0.0 MB  0.0 MB 2026-11-25 08:33   d69566      3                23\n")
    raw = "".join(vdi_list_row(v, h, 0, m, 0, raw=True) for v, h, m, _ in rows)
    assert raw == ("= WireVdi 0 67108864 4194304 0 1795595569 ec359 3  22\n"
                   "= Hyper 0 5497558138880 0 0 1795595583 70adb9 3  22\n"
                   "= EcVdi 0 104857600 4194304 0 1795595583 a12a16 2:1  22\n"
                   "= Prealloc 0 12582912 12582912 0 1795595583 cb79e7 3  22\n"
                   "= Big23 0 1073741824 0 0 1795595583 d69566 3  23\n")


def test_raw_names_are_escaped():
    assert raw_escape("a b\\c\td") == "a\\ b\\\\c\\\td"
    row = vdi_list_row(1, hdr("my disk", 1, MB, T_ALICE), 0, 0, 0, raw=True)
    assert row.startswith("= my\\ disk 0 ")


def test_long_names_push_columns_like_printf():
    row = vdi_list_row(1, hdr("averyverylongname", 1, MB, T_ALICE), 0, 0, 0)
    assert row.startswith("  averyverylongname     0  1.0 MB  0.0 MB")


# ---------------------------------------------------------------- node list / info


def test_node_list_8_1_and_gateway():
    nodes = [node(7000, 0), node(7001, 1), node(7002, 2)]
    assert node_list_text(nodes) == (
        "  Id   Host:Port         V-Nodes       Zone\n"
        "   0   127.0.0.1:7000      \t128          0\n"
        "   1   127.0.0.1:7001      \t128          1\n"
        "   2   127.0.0.1:7002      \t128          2\n")
    assert node_list_text(nodes + [node(7004, 4, vnodes=0)]).endswith(
        "   3   127.0.0.1:7004      \t 0          4\n")
    assert node_list_text(nodes[:1], raw=True) == "0 127.0.0.1:7000 128 0\n"


def test_node_info_8_1():
    size = int(78.7 * GB)
    free = size - 24 * MB
    text = ("Id\tSize\tUsed\tAvail\tUse%\n"
            + "".join(node_info_row(i, size, free) for i in range(3))
            + node_info_total(3 * size, 3 * free, 2 * GB))
    assert text == ("Id\tSize\tUsed\tAvail\tUse%\n"
                    " 0\t79 GB\t24 MB\t79 GB\t  0%\n"
                    " 1\t79 GB\t24 MB\t79 GB\t  0%\n"
                    " 2\t79 GB\t24 MB\t79 GB\t  0%\n"
                    "Total\t236 GB\t72 MB\t236 GB\t  0%\n"
                    "\n"
                    "Total virtual image size\t2.0 GB\n")


def test_node_info_raw_and_empty_store():
    assert node_info_row(0, 1000, 250, raw=True) == "0 1000 750 250 75%\n"
    assert node_info_row(3, 0, 0) == " 3\t0.0 MB\t0.0 MB\t0.0 MB\t  0%\n"
    assert node_info_total(1000, 250, 5, raw=True) == "Total 1000 750 250 75% 5\n"


# ---------------------------------------------------------------- cluster info

N3 = [node(7000, 0), node(7001, 1), node(7002, 2)]
CTIME = T_ALICE << 32 | 123456789


def logs_3_epochs() -> list[EpochLog]:
    first = EpochLog(ctime=CTIME, time=1795595384, epoch=3, nr_copies=3,
                     flags=ClusterFlag.AUTO_VNODES, drv_name="plain", nodes=N3)
    return [first, EpochLog(time=1795595374, epoch=2, nodes=N3[:2]),
            EpochLog(time=1795595358, epoch=1, nodes=N3)]


EPOCH_LINES = (
    "Epoch Time           Version [Host:Port:V-Nodes,,,]\n"
    "2026-11-25 08:29:44      3 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n"
    "2026-11-25 08:29:34      2 [127.0.0.1:7000:128, 127.0.0.1:7001:128]\n"
    "2026-11-25 08:29:18      1 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n")


def test_cluster_info_plain_8_3():
    assert cluster_info_text(Res.SUCCESS, logs_3_epochs()) == (
        "Cluster status: running, auto-recovery enabled\n"
        "\n"
        "Cluster created at Wed Nov 25 08:29:18 2026\n"
        "\n" + EPOCH_LINES)


def test_cluster_info_verbose_8_4():
    assert cluster_info_text(Res.SUCCESS, logs_3_epochs(), verbose=True) == (
        "Cluster status: running, auto-recovery enabled\n"
        "Cluster store: plain with 3 redundancy policy\n"
        "Cluster vnodes strategy: auto\n"
        "Cluster vnode mode: node\n"
        "Cluster created at Wed Nov 25 08:29:18 2026\n"
        "\n" + EPOCH_LINES)


def test_cluster_info_raw_8_4():
    assert cluster_info_text(Res.SUCCESS, logs_3_epochs(), raw=True) == (
        "running, auto-recovery enabled\n"
        "\n"
        "1795595384 3 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n"
        "1795595374 2 [127.0.0.1:7000:128, 127.0.0.1:7001:128]\n"
        "1795595358 1 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n")


def test_cluster_info_not_formatted_and_disabled_recovery():
    assert cluster_info_text(Res.WAIT_FOR_FORMAT, []) == \
        "Cluster status: Waiting for cluster to be formatted\n\n"
    assert cluster_info_text(Res.WAIT_FOR_FORMAT, [], verbose=True) == (
        "Cluster status: Waiting for cluster to be formatted\n"
        "Cluster store: Waiting for cluster to be formatted\n"
        "Cluster vnode mode: node\n")
    logs = logs_3_epochs()
    logs[0].disable_recovery = 1
    logs[0].copy_policy, logs[0].flags = parse_copies("4:2")[1], 0
    text = cluster_info_text(Res.SUCCESS, logs, verbose=True, raw=True)
    assert text.startswith("running, auto-recovery disabled\nplain with 4:2 redundancy policy\n"
                           "fixed\nnode\n1795595384 3 [")


def test_cluster_info_diff():
    text = cluster_info_text(Res.SUCCESS, logs_3_epochs(), diff=True)
    assert text.endswith("2026-11-25 08:29:44      3 [+127.0.0.1:7002]\n"
                         "2026-11-25 08:29:34      2 [-127.0.0.1:7002]\n"
                         "2026-11-25 08:29:18      1 [formated]\n")
    a = EpochLog(nodes=[node(7000, 0), node(7003, 3), node(7004, 4)])
    b = EpochLog(nodes=[node(7000, 0), node(7001, 1)])
    assert nodes_diff(a, b) == "+127.0.0.1:7003, +127.0.0.1:7004-127.0.0.1:7001"


# ---------------------------------------------------------------- vdi object


def test_expected_location():
    assert expected_location(3, 3, [node(7002, 2), node(7000, 0), node(7001, 1)]) == (
        "\nAccording to sheepdog algorithm, the object should be located at:\n"
        "127.0.0.1:7002 127.0.0.1:7000 127.0.0.1:7001\n")
    assert expected_location(2, 3, []) == (
        "\nBecause number of nodes (2) is less than number of copies (3), the object should be "
        "located at every nodes.\n")


def test_object_map_rows_8_2():
    assert "Index       VID\n" + object_map_row(0, 0x15D168) + object_map_row(1, 0x15D167) == (
        "Index       VID\n"
        "00000000   15d168\n"
        "00000001   15d167\n")


def test_dump_inode_8_2():
    h = InodeHeader(name="Alice", tag="snap1", create_time=0x6B069C5E2BC8C550,
                    snap_ctime=0x6B069C5E359502B0, vdi_size=GB, nr_copies=3,
                    block_size_shift=22, snap_id=1, vdi_id=0x15D167)
    inode = Inode(h)
    for i in (0, 1):
        inode.set_vid(i, 0x15D167)
        inode.set_gref(i, 0, 3)
    assert dump_inode_text(inode) == (
        "name: Alice\ntag: snap1\ncreate_time: 6b069c5e2bc8c550\nsnap_ctime: 6b069c5e359502b0\n"
        "vm_clock_nsec: 0\nvdi_size: 1073741824\nvm_state_size: 0\ncopy_policy: 0\n"
        "store_policy: 0\nnr_copies: 3\nblock_size_shift: 22\nsnap_id: 1\nvdi_id: 15d167\n"
        "parent_vdi_id: 0\nbtree_counter: 0\ndata_vdi_id:\n0: 15d167\n1: 15d167\ngref:\n"
        "0: 15d167, 0, 3\n1: 15d167, 0, 3\n")
