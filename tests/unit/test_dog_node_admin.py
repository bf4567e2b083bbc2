"""Pure parts of `dog node recovery/stat/format` and `dog cluster check`: row formats,
argument checks, the offline node_config file."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from dog.cli import main
from dog.cluster import check_line
from dog.common import DogExit
from dog.node import parse_throttle, recovery_row, stat_text
from sheep.proto.inode import Inode, InodeHeader
from sheep.proto.structs import NodeId, RecoveryState, SdNode, SdStat


def dog(*args: str):
    return CliRunner().invoke(main, list(args))


NODE = SdNode(NodeId.from_host("127.0.0.1", 7001), 128, 1, 0)


def test_recovery_rows():
    st = RecoveryState(in_recovery=1, state=1, nr_finished=1, nr_total=3)
    assert recovery_row(1, NODE, st) == "   1   127.0.0.1:7001        128          1       33.3%\n"
    assert recovery_row(1, NODE, st, raw=True) == "1 127.0.0.1:7001 128 1 1 3\n"
    preparing = RecoveryState(in_recovery=1, state=0)
    assert recovery_row(0, NODE, preparing).endswith("        0.0%\n")
    far = SdNode(NODE.nid, 7, 0xFFFFFFFF, 0)  # a u32 zone printed with %d, as dog does
    assert recovery_row(2, far, st, raw=True) == "2 127.0.0.1:7001 7 -1 1 3\n"


def test_stat_text():
    s = SdStat(gway_active_nr=1, gway_total_nr=81, gway_total_read_nr=16, gway_total_write_nr=64,
               gway_total_rx=64 << 20, gway_total_tx=188 << 20, peer_total_nr=16,
               peer_total_read_nr=15, peer_total_rx=64 << 20)
    assert stat_text(s) == ("Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\n"
                            "Client\t1\t81\t64\t16\t0\t0\t64 MB\t188 MB\n"
                            "Peer\t0\t16\t0\t15\t0\t0\t64 MB\t0.0 MB\n")
    assert stat_text(s, raw=True) == (f"1\t81\t64\t16\t0\t0\t{64 << 20}\t{188 << 20}\n"
                                      f"0\t16\t0\t15\t0\t0\t{64 << 20}\t0\n")
    last = SdStat(gway_total_nr=80, gway_total_rx=63 << 20, gway_total_tx=188 << 20)
    watch = stat_text(s, last=last).splitlines()
    assert watch[0].endswith("\tAll RD\tWRBW\tRDBW\tRPS")
    assert watch[1] == "Client\t1\t81\t64\t16\t0\t0\t64 MB\t188 MB\t1.0 MB\t0.0 MB\t1"
    assert watch[2] == "Peer\t0\t16\t0\t15\t0\t0\t64 MB\t0.0 MB\t64 MB\t0.0 MB\t16"


@pytest.mark.parametrize("args,value", [(["0", "0"], (0, 0)), (["10", "500"], (10, 500)),
                                        (["4294967295", "1"], (4294967295, 1))])
def test_parse_throttle_accepts(args, value):
    t = parse_throttle(args)
    assert (t.max_exec_count, t.queue_work_interval) == value


@pytest.mark.parametrize("args,message", [
    ([], "Invalid interval max ((null)), interval ((null))"),
    (["1"], "Invalid interval max (1), interval ((null))"),
    (["1x", "1"], "Invalid max (1x)"),
    (["", "1"], "Invalid max ()"),
    (["1", "9223372036854775808"], "Invalid interval (9223372036854775808)"),
    (["0", "1"], "Invalid interval max (0), interval (1)"),
])
def test_parse_throttle_refuses(args, message, capsys):
    with pytest.raises(DogExit) as e:
        parse_throttle(args)
    assert e.value.code == 64
    assert capsys.readouterr().err == message + "\n"


def test_check_lines():
    snap = Inode(InodeHeader(name="Alice", tag="snap1", snap_id=1, snap_ctime=1, vdi_id=0x15d167))
    assert check_line(snap) == 'fix snapshot Alice (id: 1, tag: "snap1")\n'
    assert check_line(Inode(InodeHeader(name="Bob", snap_id=1, vdi_id=0x316b4))) == "fix vdi Bob\n"


def test_node_format_writes_node_config(tmp_path):
    r = dog("node", "format", str(tmp_path), "tree")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""
    path = tmp_path / "node_config"
    assert path.read_bytes() == b"tree" + bytes(12)
    assert path.stat().st_mode & 0o777 == 0o600
    r = dog("node", "format", str(tmp_path), "plain")
    assert (r.exit_code, r.stderr) == (2, f"config file already exists: {path}\n")
    assert path.read_bytes() == b"tree" + bytes(12)  # untouched


def test_node_format_bad_arguments(tmp_path):
    r = dog("node", "format", str(tmp_path), "btrfs")
    assert (r.exit_code, r.stderr) == (2, "expected store format: plain, tree\n")
    r = dog("node", "format", str(tmp_path))
    assert (r.exit_code, r.stderr) == (64, "specify store format\n")
    assert r.stdout.startswith("Usage: dog node format [-a address] [-p port] [-h] [-T] "
                               "<directory of sheep> <a name of store format>\n")
    r = dog("node", "format")
    assert r.exit_code == 64 and r.stderr == "" and r.stdout.startswith("Usage: dog node format ")
    r = dog("node", "format", str(tmp_path / "missing"), "plain")
    assert r.exit_code == 2
    assert r.stderr == (f"failed to create a config file ({tmp_path}/missing/node_config): "
                        "No such file or directory\n")
    assert not (tmp_path / "node_config").exists()


def test_commands_without_sheep():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
    s.close()
    refused = f"failed to connect to 127.0.0.1:{port}: Connection refused\n"
    r = dog("node", "recovery", "get-throttle", "-p", port)
    assert (r.exit_code, r.stderr) == (2, refused * 2 + "Failed to get node list\n")
    r = dog("node", "stat", "-p", port)
    assert (r.exit_code, r.stderr) == (2, refused * 2)
    r = dog("node", "log", "level", "get", "-p", port)
    assert (r.exit_code, r.stderr) == (1, refused * 2 + "Failed to execute request\n")
    r = dog("cluster", "reweight", "-p", port)
    assert (r.exit_code, r.stderr) == (1, refused * 2)
    r = dog("cluster", "recover", "enable", "-p", port)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", refused * 2)
