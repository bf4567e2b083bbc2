"""Wire/disk structures (wire.md §10, objects.md §4, §11): exact layouts and round trips."""
from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from sheep.proto.constants import CLUSTER_INFO_SIZE, SD_MAX_NODES
from sheep.proto.structs import (
    ClusterInfo, EpochLog, MdInfo, NodeId, RecoveryState, RecoveryThrottling, SdMdInfo, SdNode,
    SdStat, SheepdogConfig, VdiAttr, VdiState, addr_to_str, cstr, decode_epoch_file,
    decode_nodes, default_zone, encode_epoch_file, encode_nodes, pad, sort_nodes,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
addr16 = st.binary(min_size=16, max_size=16)
# C strings: no NUL inside, so cstr(pad(s)) gives s back
name_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                    max_size=20).filter(lambda s: len(s.encode()) <= 16)
node_ids = st.builds(NodeId, addr16, u16, addr16, u16)
sd_nodes = st.builds(SdNode, node_ids, u16, u32, u64)


def local(port: int, zone: int = 0, space: int = 0, vnodes: int = 128) -> SdNode:
    return SdNode(NodeId.from_host("127.0.0.1", port), vnodes, zone, space)


# ---------------------------------------------------------------- strings


def test_pad_and_cstr() -> None:
    assert pad("plain", 16) == b"plain" + bytes(11)
    assert pad(b"", 4) == bytes(4)
    assert pad("x" * 16, 16) == b"x" * 16
    with pytest.raises(ValueError):
        pad("x" * 17, 16)
    assert cstr(b"abc\0def") == "abc"
    assert cstr(b"abc") == "abc"
    assert cstr(b"\xff\0") == "\udcff"  # surrogateescape keeps non-utf8 names
    assert pad(cstr(b"\xff"), 2) == b"\xff\0"


# ---------------------------------------------------------------- node_id / sd_node


def test_node_id_ipv4() -> None:
    nid = NodeId.from_host("127.0.0.1", 7000)
    assert nid.addr == bytes(12) + b"\x7f\0\0\x01"
    assert nid.host == "127.0.0.1"
    assert str(nid) == "127.0.0.1:7000"
    assert nid.log_str() == "IPv4 ip:127.0.0.1 port:7000"
    enc = nid.encode()
    assert len(enc) == 40
    assert enc == nid.addr + b"\x58\x1b" + bytes(22)
    assert NodeId.decode(enc) == nid
    assert hash(nid) == hash(NodeId.from_host("127.0.0.1", 7000))


def test_node_id_ipv6() -> None:
    nid = NodeId.from_host("::1", 7000)
    assert nid.addr == bytes(15) + b"\x01"
    assert str(nid) == "::1:7000"
    assert nid.log_str() == "IPv6 ip:::1 port:7000"
    assert NodeId.from_host("[fe80::2]", 1).host == "fe80::2"
    mapped = NodeId.from_host("::ffff:10.0.0.1", 7000)
    assert mapped.host == "::ffff:10.0.0.1"  # not the sheep IPv4 form, printed as IPv6
    with pytest.raises(ValueError):
        NodeId.from_host("localhost", 7000)


def test_addr_to_str_rules() -> None:
    assert addr_to_str(bytes(16)) == "::"
    assert addr_to_str(bytes(12) + b"\0\0\0\x01") == "::1"  # addr[12] == 0 -> IPv6
    assert addr_to_str(bytes(12) + b"\x0a\0\0\x01") == "10.0.0.1"


def test_node_order() -> None:
    a, b, c = local(7001), local(7000), NodeId.from_host("10.0.0.1", 1)
    assert [n.nid.port for n in sort_nodes([a, b])] == [7000, 7001]
    assert sorted([a.nid, c, b.nid]) == [c, b.nid, a.nid]  # 10.x < 127.x bytewise
    assert NodeId.from_host("10.0.0.1", 2).sort_key() == (c.addr, 2)


def test_default_zone() -> None:
    assert default_zone(NodeId.from_host("127.0.0.1", 7000).addr) == 0x0100007F == 16777343


def test_sd_node_layout() -> None:
    node = local(7000, zone=0, space=0x13BF69D000)
    enc = node.encode()
    assert len(enc) == 80
    assert enc[:24] == bytes(24)
    assert enc[24:40] == node.nid.addr
    assert struct.unpack_from("<H", enc, 40)[0] == 7000
    assert struct.unpack_from("<H", enc, 64)[0] == 128
    assert struct.unpack_from("<I", enc, 68)[0] == 0
    assert struct.unpack_from("<Q", enc, 72)[0] == 0x13BF69D000
    # the rb area is garbage in GET_NODE_LIST replies and must be ignored
    assert SdNode.decode(b"\xaa" * 24 + enc[24:]) == node


@given(sd_nodes)
def test_sd_node_round_trip(node: SdNode) -> None:
    assert SdNode.decode(node.encode()) == node


@given(st.lists(sd_nodes, max_size=5))
def test_nodes_round_trip(nodes: list[SdNode]) -> None:
    buf = encode_nodes(nodes)
    assert len(buf) == 80 * len(nodes)
    assert decode_nodes(buf, len(nodes)) == nodes


# ---------------------------------------------------------------- epoch file (objects.md §11.3)


def test_epoch_file_observed() -> None:
    spaces = [0x13BF69D000, 84802072576, 84681519104]
    nodes = [local(7000 + i, zone=i, space=s) for i, s in enumerate(spaces)]
    buf = encode_epoch_file(nodes, 0x6B069C5E)
    assert len(buf) == 248
    assert bytes.fromhex("000000007f000001581b0000") == buf[0x20:0x2C]
    assert bytes.fromhex("8000000000000000" "00d069bf13000000") == buf[0x40:0x50]
    assert bytes.fromhex("5e9c066b00000000") == buf[0xF0:0xF8]
    assert decode_epoch_file(buf) == (nodes, 0x6B069C5E)
    with pytest.raises(ValueError):
        decode_epoch_file(buf[:-1])


@given(st.lists(sd_nodes, max_size=4), st.integers(-(2**63), 2**63 - 1))
def test_epoch_file_round_trip(nodes: list[SdNode], tm: int) -> None:
    assert decode_epoch_file(encode_epoch_file(nodes, tm)) == (nodes, tm)


# ---------------------------------------------------------------- cluster_info (§10.3)


def test_cluster_info_layout() -> None:
    nodes = [local(7000 + i, zone=i) for i in range(3)]
    ci = ClusterInfo(epoch=3, ctime=0x6B069C5E2AEF0720, flags=4, nr_copies=3, status=1,
                     block_size_shift=22, default_store="plain", nodes=nodes)
    enc = ci.encode()
    assert len(enc) == CLUSTER_INFO_SIZE == 491_568
    assert enc[0] == 0x0A and enc[1] == 0
    assert struct.unpack_from("<hIQHBBBB", enc, 2) == (3, 3, 0x6B069C5E2AEF0720, 4, 3, 0, 1, 22)
    assert enc[22:25] == bytes(3)
    assert enc[25:41] == pad("plain", 16)
    assert enc[41:48] == bytes(7)
    assert enc[48:48 + 240] == encode_nodes(nodes)
    assert enc[48 + 240:] == bytes(CLUSTER_INFO_SIZE - 288)
    back = ClusterInfo.decode(enc)
    assert back == ci and back.nr_nodes == 3


cluster_infos = st.builds(
    ClusterInfo, proto_ver=u8, disable_recovery=u8, epoch=u32, ctime=u64, flags=u16, nr_copies=u8,
    copy_policy=u8, status=u8, block_size_shift=u8, default_store=name_text,
    nodes=st.lists(sd_nodes, max_size=4))


@given(cluster_infos)
def test_cluster_info_round_trip(ci: ClusterInfo) -> None:
    enc = ci.encode()
    assert len(enc) == CLUSTER_INFO_SIZE
    assert ClusterInfo.decode(enc) == ci
    assert ClusterInfo.decode(b"\x01" + enc, 1).encode() == enc


def test_cluster_info_too_many_nodes() -> None:
    with pytest.raises(ValueError):
        ClusterInfo(nodes=[local(1)] * (SD_MAX_NODES + 1)).encode()


# ---------------------------------------------------------------- epoch_log (§10.4)


def test_epoch_log_layout() -> None:
    nodes = [local(7000), local(7001, zone=1)]
    log = EpochLog(ctime=0x6B069C5E2AEF0720, time=1795595384, epoch=2, nr_copies=3, flags=4,
                   drv_name="plain", nodes=nodes)
    enc = log.encode(3)
    assert len(enc) == 48 + 3 * 80
    assert struct.unpack_from("<QQIIBBB", enc) == (0x6B069C5E2AEF0720, 1795595384, 2, 2, 0, 3, 0)
    assert struct.unpack_from("<H", enc, 30)[0] == 4
    assert enc[32:48] == pad("plain", 16)
    assert enc[48:208] == encode_nodes(nodes) and enc[208:] == bytes(80)
    assert EpochLog.decode(enc, 0, 3) == log
    with pytest.raises(ValueError):
        log.encode(1)


epoch_logs = st.builds(EpochLog, ctime=u64, time=u64, epoch=u32, disable_recovery=u8, nr_copies=u8,
                       copy_policy=u8, flags=u16, drv_name=name_text,
                       nodes=st.lists(sd_nodes, max_size=3))


@given(epoch_logs, st.integers(0, 3))
def test_epoch_log_round_trip(log: EpochLog, extra: int) -> None:
    slots = len(log.nodes) + extra
    enc = log.encode(slots)
    assert EpochLog.decode(enc, 0, slots) == log
    assert EpochLog.decode(enc, 0, slots).encode(slots) == enc


# ---------------------------------------------------------------- vdi_state (§10.5)


def test_vdi_state_layout() -> None:
    owner = NodeId.from_host("127.0.0.1", 7001)
    parts = [NodeId.from_host("127.0.0.1", 7000), owner]
    vs = VdiState(vid=0x15D168, nr_copies=3, snapshot=0, deleted=1, copy_policy=0x11,
                  block_size_shift=22, parent_vid=0x15D167, lock_state=3, lock_owner=owner,
                  participants_state=[1, 2], participants=parts)
    enc = vs.encode()
    assert len(enc) == 1428
    assert struct.unpack_from("<IBBBBB", enc) == (0x15D168, 3, 0, 1, 0x11, 22)
    assert enc[9:12] == bytes(3)
    assert struct.unpack_from("<II", enc, 12) == (0x15D167, 3)
    assert enc[20:60] == owner.encode()
    assert struct.unpack_from("<I", enc, 60)[0] == 2
    assert struct.unpack_from("<3I", enc, 64) == (1, 2, 0)
    assert enc[188:228] == parts[0].encode() and enc[228:268] == owner.encode()
    assert enc[268:] == bytes(1428 - 268)
    assert VdiState.decode(enc) == vs and vs.nr_participants == 2


@given(st.integers(0, 31).flatmap(lambda n: st.builds(
    VdiState, vid=u32, nr_copies=u8, snapshot=u8, deleted=u8, copy_policy=u8, block_size_shift=u8,
    parent_vid=u32, lock_state=u32, lock_owner=node_ids,
    participants_state=st.lists(u32, min_size=n, max_size=n),
    participants=st.lists(node_ids, min_size=n, max_size=n))))
def test_vdi_state_round_trip(vs: VdiState) -> None:
    enc = vs.encode()
    assert len(enc) == 1428
    assert VdiState.decode(enc) == vs


def test_counts_follow_lists() -> None:
    """C-style count arguments are accepted, but the list length is what gets encoded."""
    ci = ClusterInfo(nr_nodes=9, nodes=[local(7000)])
    assert ci.nr_nodes == 1 and struct.unpack_from("<h", ci.encode(), 2)[0] == 1
    ci.nodes.append(local(7001))
    assert ci.nr_nodes == 2
    assert replace(ci, nodes=[]).nr_nodes == 0
    assert EpochLog(nr_nodes=4).nr_nodes == 0
    assert VdiState(nr_participants=0).nr_participants == 0
    assert SdMdInfo(nr=3).nr == 0


def test_vdi_state_rejects_mismatch() -> None:
    with pytest.raises(ValueError):
        VdiState(participants_state=[1]).encode()


# ---------------------------------------------------------------- sheepdog_config (objects.md §11.2)

OBSERVED_CONFIG = bytes.fromhex(
    "2007ef2a5e9c066b" "0400" "03" "706c61696e0000000000000000000000" "00" "00" "16" "0600"
    "00d069bf13000000"
)


def test_config_observed() -> None:
    assert OBSERVED_CONFIG[:16] == bytes.fromhex("2007ef2a5e9c066b040003706c61696e")
    assert OBSERVED_CONFIG[16:32] == bytes.fromhex("00000000000000000000000000160600")
    assert OBSERVED_CONFIG[32:] == bytes.fromhex("00d069bf13000000")
    cfg = SheepdogConfig.decode(OBSERVED_CONFIG)
    assert cfg == SheepdogConfig(ctime=0x6B069C5E2AEF0720, flags=4, copies=3, default_store="plain",
                                 shutdown=0, copy_policy=0, block_size_shift=22, version=6,
                                 space=0x13BF69D000)
    assert cfg.encode() == OBSERVED_CONFIG
    assert len(SheepdogConfig().encode()) == 40


@given(st.builds(SheepdogConfig, u64, u16, u8, name_text, u8, u8, u8, u16, u64))
def test_config_round_trip(cfg: SheepdogConfig) -> None:
    assert SheepdogConfig.decode(cfg.encode()) == cfg


# ---------------------------------------------------------------- vdi attr (objects.md §4)


def test_vdi_attr_layout() -> None:
    attr = VdiAttr(name="Alice", tag="", ctime=0x6B069C5E2BC8C550, snap_id=0, value_len=7,
                   key="mykey", value=b"myvalue")
    enc = attr.encode()
    assert len(enc) == 66_320
    assert enc[:256] == pad("Alice", 256) and enc[256:512] == bytes(256)
    assert struct.unpack_from("<QII", enc, 512) == (0x6B069C5E2BC8C550, 0, 7)
    assert enc[528:784] == pad("mykey", 256)
    assert enc[784:791] == b"myvalue" and enc[791:] == bytes(66_320 - 791)
    assert VdiAttr.decode(enc) == attr
    assert VdiAttr.decode(enc[:791]) == attr  # partial create-write reads zero-padded
    assert attr.encode(791) == enc[:791]


@given(st.builds(VdiAttr, name_text, name_text, u64, u32, st.just(0), name_text,
                 st.binary(max_size=300)))
def test_vdi_attr_round_trip(attr: VdiAttr) -> None:
    attr.value_len = len(attr.value)
    enc = attr.encode()
    assert VdiAttr.decode(enc) == attr
    assert VdiAttr.decode(enc).encode() == enc


# ---------------------------------------------------------------- small structs (§10.6-10.8)


def test_recovery_structs_layout() -> None:
    rs = RecoveryState(1, 2, 10, 20)
    assert rs.encode() == b"\x01" + bytes(3) + struct.pack("<IQQ", 2, 10, 20)
    rt = RecoveryThrottling(5, 1000, True)
    assert rt.encode() == struct.pack("<I4xQ", 5, 1000) + b"\x01" + bytes(7)
    assert len(rs.encode()) == len(rt.encode()) == 24


@given(st.builds(RecoveryState, u8, u32, u64, u64))
def test_recovery_state_round_trip(rs: RecoveryState) -> None:
    assert RecoveryState.decode(rs.encode()) == rs


@given(st.builds(RecoveryThrottling, u32, u64, st.booleans()))
def test_recovery_throttling_round_trip(rt: RecoveryThrottling) -> None:
    assert RecoveryThrottling.decode(rt.encode()) == rt


def test_sd_stat_order() -> None:
    stat = SdStat(*range(1, 16))
    enc = stat.encode()
    assert len(enc) == 120
    assert struct.unpack("<15Q", enc) == tuple(range(1, 16))
    assert struct.unpack_from("<Q", enc, 112)[0] == stat.peer_total_write_nr == 15
    assert struct.unpack_from("<Q", enc, 32)[0] == stat.gway_total_rx == 5


@given(st.lists(u64, min_size=15, max_size=15))
def test_sd_stat_round_trip(values: list[int]) -> None:
    assert SdStat.decode(SdStat(*values).encode()) == SdStat(*values)


def test_md_info_layout() -> None:
    md = MdInfo(idx=1, free=100, used=50, path="/var/lib/sheepdog/d1")
    enc = md.encode()
    assert len(enc) == 4120
    assert struct.unpack_from("<i4xQQ", enc) == (1, 100, 50)
    assert enc[24:44] == b"/var/lib/sheepdog/d1"
    info = SdMdInfo([md, MdInfo(2, 1, 2, "/d2")])
    enc = info.encode()
    assert len(enc) == 263_688
    assert struct.unpack_from("<i", enc, 263_680)[0] == 2 and enc[263_684:] == bytes(4)
    assert SdMdInfo.decode(enc) == info and info.nr == 2


@given(st.lists(st.builds(MdInfo, i32, u64, u64, name_text), max_size=4))
def test_sd_md_info_round_trip(disks: list[MdInfo]) -> None:
    info = SdMdInfo(disks)
    assert SdMdInfo.decode(info.encode()) == info


@pytest.mark.parametrize("cls", [NodeId, SdNode, ClusterInfo, VdiState, SheepdogConfig,
                                 RecoveryState, RecoveryThrottling, SdStat, MdInfo, SdMdInfo])
def test_short_buffers_rejected(cls: type) -> None:
    with pytest.raises(ValueError):
        cls.decode(bytes(cls.SIZE - 1))
