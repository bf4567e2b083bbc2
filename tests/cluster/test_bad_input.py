"""Malformed requests get the spec's error reply or a closed connection, never a dead
daemon or lost data."""
from __future__ import annotations

import random
import socket
import subprocess

import pytest

from sheep.client.volume import Volume
from sheep.proto.constants import Flag, Op, Res
from sheep.proto.header import ObjArgs, Request

from .harness import SHEEP
from .test_wire_spec import connect, exchange, header


@pytest.fixture
def alice(cluster):
    """A VDI with known content, checked after each abuse."""
    with cluster.client() as c:
        c.new_vdi("Alice", 64 << 20)
        vol = Volume(c, c.read_inode(c.get_vdi_info("Alice").vdi_id))
        vol.write(0, b"precious" * 1000)
    return cluster


def assert_intact(cluster) -> None:
    for i in range(len(cluster.nodes)):
        with cluster.client(i) as c:
            vol = Volume(c, c.read_inode(c.get_vdi_info("Alice").vdi_id))
            assert vol.read(0, 8000) == b"precious" * 1000


@pytest.mark.parametrize("opcode", [0x91, 0x7E, 0xFF, 0x00])
def test_unknown_opcode_gets_invalid_parms_and_connection_stays(alice, opcode):
    ver = 0x0A if opcode >= 0x80 else 0x02
    with connect(alice.nodes[0].port) as s:
        rsp, body = exchange(s, header(ver, opcode, 0, 42, 100))
        assert (rsp["result"], rsp["id"], rsp["data_length"], body) == (Res.INVALID_PARMS, 42, 0, b"")
        rsp, _ = exchange(s, header(0x0A, Op.GET_NODE_LIST, 0, 43, 6144 * 80))
        assert rsp["result"] == 0 and rsp["data_length"] == 3 * 80
    assert_intact(alice)


@pytest.mark.parametrize("ver,opcode", [(0x03, Op.READ_VDIS), (0x02, Op.GET_NODE_LIST), (0x0B, Op.CLUSTER_INFO)])
def test_wrong_proto_ver(alice, ver, opcode):
    with connect(alice.nodes[1].port) as s:
        rsp, body = exchange(s, header(ver, opcode, 0, 1, 2097152))
        assert rsp["result"] == Res.VER_MISMATCH and body == b""


def test_truncated_header_closes_only_that_connection(alice):
    bad = socket.create_connection(("127.0.0.1", alice.nodes[0].port))
    bad.sendall(header(0x02, Op.READ_VDIS, 0, 1, 2097152)[:20])
    bad.shutdown(socket.SHUT_WR)
    assert bad.recv(100) == b""  # closed without a reply
    bad.close()
    assert_intact(alice)


def test_truncated_payload_closes_only_that_connection(alice):
    bad = socket.create_connection(("127.0.0.1", alice.nodes[0].port))
    bad.sendall(header(0x02, Op.NEW_VDI, Flag.CMD_WRITE, 1, 256) + b"Bob")
    bad.shutdown(socket.SHUT_WR)
    assert bad.recv(100) == b""
    bad.close()
    with alice.client() as c:
        assert c.call(Request(Op.GET_VDI_INFO, Flag.CMD_WRITE, 256), b"Bob".ljust(256, b"\0"))[0].result \
            == Res.NO_VDI
    assert_intact(alice)


def test_data_length_larger_than_the_object(alice):
    with alice.client() as c:
        vid = c.get_vdi_info("Alice").vdi_id
        oid = (vid << 32) | 0
        rsp, data = c.call(Request(Op.READ_OBJ, data_length=4096, args=ObjArgs(oid=oid, offset=(4 << 20) - 10)))
        assert rsp.result == Res.INVALID_PARMS and len(data) == 0
        rsp, _ = c.call(Request(Op.WRITE_OBJ, Flag.CMD_WRITE, 8 << 20, args=ObjArgs(oid=oid)), bytes(8 << 20))
        assert rsp.result == Res.INVALID_PARMS
        rsp, _ = c.call(Request(Op.CREATE_AND_WRITE_OBJ, Flag.CMD_WRITE, 16, args=ObjArgs(oid=oid, offset=4 << 20)),
                        bytes(16))
        assert rsp.result == Res.INVALID_PARMS
    assert_intact(alice)


def test_absurd_payload_length_closes_connection(alice):
    with connect(alice.nodes[2].port) as s:
        s.sendall(header(0x02, Op.WRITE_OBJ, Flag.CMD_WRITE, 1, 0xFFFFFFF0))
        s.settimeout(10)
        assert s.recv(100) == b""
    assert_intact(alice)


def test_random_garbage(alice):
    rng = random.Random(1234)
    for round_ in range(20):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 600)))
        with connect(alice.nodes[round_ % 3].port) as s:
            s.settimeout(20)
            try:
                s.sendall(blob)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass  # replies to whatever parsed as requests, then EOF
            except (ConnectionResetError, BrokenPipeError, OSError) as e:
                assert not isinstance(e, socket.timeout), "the daemon neither replied nor closed"
    assert_intact(alice)
    for n in alice.nodes:
        assert n.proc.poll() is None


def test_second_daemon_on_same_store_is_refused(alice):
    store = alice.nodes[0].store
    r = subprocess.run([SHEEP, "-f", "-p", "1", str(store)], capture_output=True, timeout=30)
    assert r.returncode == 1
    assert f"locking directory: {store} failed" in r.stderr.decode()
    assert "op=NEW_VDI" in alice.nodes[0].log()  # logging went to STORE_DIR/sheep.log
    assert_intact(alice)
