"""48-byte request/response header codec (wire.md §3, §4): layouts and round trips."""
from __future__ import annotations

import struct
from dataclasses import fields

import pytest
from hypothesis import given, strategies as st

from sheep.proto import header as h
from sheep.proto.constants import Flag, Op

REQ_VARIANTS = [h.RawArgs, h.ObjArgs, h.VdiArgs, h.ClusterArgs, h.VdiStateArgs, h.RefArgs,
                h.ForwArgs, h.CheckpointArgs, h.CoherenceArgs]
RSP_VARIANTS = [h.RawRsp, h.ObjRsp, h.VdiRsp, h.NodeRsp, h.HashRsp, h.ClusterDefaultRsp]
OPCODES = st.integers(0, 0xFF)


def args_of(cls: type, size: int) -> st.SearchStrategy:
    """Any variant value: unpack arbitrary bytes (covers every field's full range)."""
    return st.binary(min_size=size, max_size=size).map(cls.unpack)


def opcodes_for(lookup, cls: type) -> list[int]:
    return [op for op in range(256) if lookup(op) is cls]


@pytest.mark.parametrize("cls", REQ_VARIANTS)
def test_request_variant_sizes(cls: type) -> None:
    assert cls._S.size <= 32 and len(cls().pack()) == 32


@pytest.mark.parametrize("cls", RSP_VARIANTS)
def test_response_variant_sizes(cls: type) -> None:
    assert cls._S.size <= 28 and len(cls().pack()) == 28


def test_every_variant_is_reachable() -> None:
    for cls in REQ_VARIANTS:
        assert opcodes_for(h.request_args_type, cls), cls
    for cls in RSP_VARIANTS:
        assert opcodes_for(h.response_args_type, cls), cls


@pytest.mark.parametrize("cls", REQ_VARIANTS)
@given(data=st.data())
def test_request_round_trip(cls: type, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(opcodes_for(h.request_args_type, cls)))
    req = h.Request(op, data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(0, 2**32 - 1)),
                    data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**32 - 1)),
                    data.draw(args_of(cls, 32)), data.draw(st.integers(0, 0xFF)))
    enc = req.encode()
    assert len(enc) == h.HEADER_SIZE
    back = h.Request.decode(enc)
    assert back == req and type(back.args) is cls
    assert back.encode() == enc


@pytest.mark.parametrize("cls", RSP_VARIANTS)
@given(data=st.data())
def test_response_round_trip(cls: type, data: st.DataObject) -> None:
    op = data.draw(st.sampled_from(opcodes_for(h.response_args_type, cls)))
    u32 = st.integers(0, 2**32 - 1)
    rsp = h.Response(op, data.draw(u32), data.draw(u32), data.draw(u32), data.draw(u32),
                     data.draw(args_of(cls, 28)), data.draw(st.integers(0, 0xFFFF)),
                     data.draw(st.integers(0, 0xFF)))
    enc = rsp.encode()
    assert len(enc) == h.HEADER_SIZE
    back = h.Response.decode(enc)
    assert back == rsp and type(back.args) is cls
    assert back.encode() == enc


@given(st.binary(min_size=48, max_size=48))
def test_any_bytes_canonicalise(raw: bytes) -> None:
    """decode -> encode zeroes padding only; a second pass is a fixed point."""
    for codec in (h.Request, h.Response):
        canon = codec.decode(raw).encode()
        assert len(canon) == 48
        assert codec.decode(canon) == codec.decode(raw)
        assert codec.decode(canon).encode() == canon


def test_short_header_rejected() -> None:
    with pytest.raises(h.ProtocolError):
        h.Request.decode(bytes(47))
    with pytest.raises(h.ProtocolError):
        h.Response.decode(bytes(47))


def test_obj_request_layout() -> None:
    req = h.Request(Op.CREATE_AND_WRITE_OBJ, Flag.CMD_WRITE | Flag.CMD_COW, 4096, 7, 1,
                    h.ObjArgs(oid=0x00C9736600000000, cow_oid=0x00C9736500000000, copies=3,
                              copy_policy=0x11, ec_index=2, tgt_epoch=5, offset=512))
    enc = req.encode()
    assert struct.unpack_from("<BBHIII", enc) == (0x02, 0x01, 0x03, 1, 7, 4096)
    assert struct.unpack_from("<QQBBB", enc, 16) == (
        0x00C9736600000000, 0x00C9736500000000, 3, 0x11, 2)
    assert enc[35] == 0 and struct.unpack_from("<II", enc, 36) == (5, 512) and enc[44:] == bytes(4)
    assert req.has_payload


def test_internal_ops_default_proto_ver() -> None:
    assert h.Request(Op.GET_NODE_LIST).proto_ver == 0x0A
    assert h.Request(Op.READ_OBJ).proto_ver == 0x02
    assert h.proto_ver_ok(Op.READ_OBJ, 0) and not h.proto_ver_ok(Op.READ_OBJ, 3)
    assert h.proto_ver_ok(Op.GET_NODE_LIST, 0x0A) and not h.proto_ver_ok(Op.GET_NODE_LIST, 2)


def test_vdi_rsp_layout() -> None:
    rsp = h.Response(Op.GET_VDI_INFO, 0, 0, 9, 0, h.VdiRsp(vdi_id=0x15D168, copies=3,
                                                             block_size_shift=22))
    enc = rsp.encode()
    assert struct.unpack_from("<IIIBB", enc, 20) == (0, 0x15D168, 0, 3, 22)
    assert [f.name for f in fields(h.VdiRsp)] == ["rsvd", "vdi_id", "attr_id", "copies",
                                                  "block_size_shift"]
