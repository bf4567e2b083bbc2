"""`dog node recovery/stat/log/vnodes`, `dog cluster recover/reweight/check/alter-copy` and
REPAIR_REPLICA against real sheep processes."""
from __future__ import annotations

import hashlib
import re
import subprocess
import time

from sheep.client.api import Client
from sheep.proto.constants import Op, Res
from sheep.proto.header import ForwArgs, Request
from sheep.proto.oid import vid_to_data_oid
from sheep.proto.placement import Ring
from sheep.proto.structs import SheepdogConfig

from tests.cluster.harness import DOG

RECOVERY_HEADER = "Nodes In Recovery:\n  Id   Host:Port         V-Nodes       Zone       Progress\n"


def text(r: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def epoch_of(cluster, i: int = 0) -> int:
    with cluster.client(i) as c:
        return c.cluster_info().epoch


def vnodes_by_port(cluster) -> dict[int, int]:
    out = cluster.dog("node", "list", "-r").stdout.decode()
    return {int(row.split()[1].rsplit(":", 1)[1]): int(row.split()[2]) for row in out.splitlines()}


def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- node recovery


def test_recovery_info_when_idle(cluster):
    cluster.wait_redundant()
    wait_for(lambda: cluster.dog("node", "recovery", "-r").stdout == b"", what="idle nodes")
    assert text(cluster.dog("node", "recovery")) == (0, RECOVERY_HEADER, "")
    assert text(cluster.dog("node", "recovery", "info")) == (0, RECOVERY_HEADER, "")
    assert text(cluster.dog("node", "recovery", "-r")) == (0, "", "")
    assert text(cluster.dog("node", "recovery", "-P")) == (0, "", "")  # nothing to follow


def test_throttle_set_then_get(cluster):
    assert text(cluster.dog("node", "recovery", "get-throttle")) == (0, "", "max (0), interval (0)\n")
    assert text(cluster.dog("node", "recovery", "set-throttle", "10", "500")) == (0, "", "")
    assert text(cluster.dog("node", "recovery", "get-throttle")) == (0, "", "max (10), interval (500)\n")
    # throttling is per node: the others keep theirs
    port1 = cluster.nodes[1].port
    assert text(cluster.dog("node", "recovery", "get-throttle", port=port1))[2] == "max (0), interval (0)\n"
    bad = [
        (["10"], "Invalid interval max (10), interval ((null))\n"),
        (["10", "0"], "Invalid interval max (10), interval (0)\n"),
        (["0", "7"], "Invalid interval max (0), interval (7)\n"),
        (["x", "1"], "Invalid max (x)\n"),
        (["-1", "1"], "Invalid max (-1)\n"),
        (["4294967296", "1"], "Invalid max (4294967296)\n"),
        (["5", "1.5"], "Invalid interval (1.5)\n"),
        (["5", "-3"], "Invalid interval (-3)\n"),
    ]
    port0 = str(cluster.nodes[0].port)
    for args, message in bad:  # after "--", "-1" is an operand, not an option
        r = cluster.dog("node", "recovery", "set-throttle", "-p", port0, "--", *args, port=False, check=False)
        assert text(r) == (64, "", message)
    r = cluster.dog("node", "recovery", "set-throttle", check=False)
    assert r.returncode == 64 and r.stdout.decode().startswith("Usage: dog node recovery {info|set-throttle|")
    # the refused commands changed nothing
    assert text(cluster.dog("node", "recovery", "get-throttle"))[2] == "max (10), interval (500)\n"
    cluster.dog("node", "recovery", "set-throttle", "0", "0")
    assert text(cluster.dog("node", "recovery", "get-throttle"))[2] == "max (0), interval (0)\n"
    r = cluster.dog("node", "recovery", "bogus", check=False)
    assert r.returncode == 1 and r.stdout.decode().startswith("Usage: dog node recovery ")


def test_disabled_recovery_moves_nothing_until_enabled(make_cluster):
    """Disable, add a node: nothing moves.  Throttle the new node, enable: it recovers
    slowly (listed with its progress), then completely once the throttle is lifted."""
    c = make_cluster(4, start=False)
    for s in c.nodes[:3]:
        s.start()
    c.wait_members(3)
    c.format(3)
    data = c.write_volume("Alice", 40 << 20)
    c.wait_redundant()
    assert text(c.dog("cluster", "recover", "disable")) == (0, "Cluster recovery: disable\n", "")
    info = c.dog("cluster", "info").stdout.decode()
    assert info.startswith("Cluster status: running, auto-recovery disabled\n")
    new = c.nodes[3]
    new.start()
    c.wait_members(4)
    time.sleep(2)  # time enough for a recovery that should not happen
    assert all(new.port not in ports for ports in c.holdings().values())
    assert c.misplaced(), "the new node owns objects under the new placement"
    assert c.dog("node", "recovery").stdout.decode() == RECOVERY_HEADER
    assert c.read_volume("Alice") == data  # still served from the old replicas

    c.dog("node", "recovery", "set-throttle", "1", "1500", port=new.port)
    assert text(c.dog("cluster", "recover", "enable")) == (0, "Cluster recovery: enable\n", "")
    assert c.dog("cluster", "info").stdout.decode().startswith(
        "Cluster status: running, auto-recovery enabled\n")
    rows: list[str] = []

    def new_node_listed() -> bool:
        rows[:] = c.dog("node", "recovery").stdout.decode().splitlines()[2:]
        return any(f"127.0.0.1:{new.port}" in row for row in rows)

    wait_for(new_node_listed, what="the new node in `dog node recovery`")
    (row,) = [r for r in rows if f"127.0.0.1:{new.port}" in r]
    ids = {f"127.0.0.1:{n.port}": i for i, n in enumerate(sorted(c.nodes, key=lambda s: s.port))}
    assert re.fullmatch(rf"{ids[f'127.0.0.1:{new.port}']:4d}   127\.0\.0\.1:{new.port} *"
                        rf" +\d+ +3 +\d+\.\d%", row), row
    raw = [r.split() for r in c.dog("node", "recovery", "-r").stdout.decode().splitlines()]
    mine = [r for r in raw if r[1] == f"127.0.0.1:{new.port}"]
    if mine:  # still recovering: finished/total
        assert len(mine[0]) == 6 and int(mine[0][4]) <= int(mine[0][5])
    assert c.holdings() and c.misplaced()  # throttled: not done yet
    follow = subprocess.Popen([DOG, "node", "recovery", "-P", "-p", str(new.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        assert follow.poll() is None  # -P follows the recovery while it lasts
        c.dog("node", "recovery", "set-throttle", "0", "0", port=new.port)
        assert follow.wait(60) == 0
    finally:
        follow.kill()
        follow.wait(10)
    assert follow.stderr.read() == b""
    c.wait_redundant(copies=3)
    assert any(new.port in ports for ports in c.holdings().values())
    assert c.read_volume("Alice", via=3) == data
    wait_for(lambda: c.dog("node", "recovery").stdout.decode() == RECOVERY_HEADER,
             what="every node to finish recovery")


# ---------------------------------------------------------------- node stat


def test_node_stat_counts_requests(cluster):
    port = cluster.nodes[0].port
    cluster.write_volume("Alice", 8 << 20)

    def sample() -> tuple[list[int], list[int]]:
        rows = cluster.dog("node", "stat", "-r", port=port).stdout.decode().splitlines()
        assert len(rows) == 2
        return ([int(v) for v in rows[0].split("\t")], [int(v) for v in rows[1].split("\t")])

    (client, peer) = sample()
    assert client[0] == 0 and client[2] >= 2 and client[6] >= 8 << 20  # writes, bytes written
    before_reads = client[3]
    cluster.read_volume("Alice")
    client2, _ = sample()
    assert client2[3] > before_reads  # reads land under Read ...
    assert client2[2] == client[2]  # ... not under Write
    out = cluster.dog("node", "stat", port=port).stdout.decode().splitlines()
    assert out[0] == "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"
    assert out[1].startswith("Client\t") and out[2].startswith("Peer\t")
    # another node received the replicas as peer writes
    _, peer_other = ([int(v) for v in row.split("\t")] for row in
                     cluster.dog("node", "stat", "-r", port=cluster.nodes[1].port)
                     .stdout.decode().splitlines())
    assert peer_other[2] >= 2 and peer_other[5] == 0  # writes; the Flush column is always 0


def test_node_stat_watch(cluster):
    p = subprocess.Popen([DOG, "node", "stat", "-w", "-p", str(cluster.nodes[0].port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [p.stdout.readline() for _ in range(6)]
    finally:
        p.kill()
        p.wait(10)
    header = "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\tWRBW\tRDBW\tRPS\n"
    assert lines[0] == header and lines[3] == header  # one sample per second, header each time
    assert lines[1].startswith("Client\t") and lines[1].count("\t") == 11
    assert lines[2].startswith("Peer\t")


# ---------------------------------------------------------------- node log level


def test_log_level(cluster):
    assert text(cluster.dog("node", "log", "level", "get")) == (0, "", "debug (7)\n")
    assert text(cluster.dog("node", "log", "level", "set", "warning")) == (0, "", "")
    assert text(cluster.dog("node", "log", "level", "get")) == (0, "", "warning (4)\n")
    port1 = cluster.nodes[1].port
    assert text(cluster.dog("node", "log", "level", "get", port=port1))[2] == "debug (7)\n"
    levels = "".join(f"{n}\t({i})\n" for i, n in enumerate(
        ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]))
    assert text(cluster.dog("node", "log", "level", "list")) == (0, "", levels)
    assert text(cluster.dog("node", "log", "level", "set", "loud", check=False)) == (
        64, "", "invalid loglevel: loud\navailable loglevels:\n" + levels)
    assert text(cluster.dog("node", "log", "level", "get"))[2] == "warning (4)\n"
    r = cluster.dog("node", "log", "level", "set", check=False)
    assert r.returncode == 64 and r.stdout.decode().startswith("Usage: dog node log level ")
    r = cluster.dog("node", "log", "level", "louder", check=False)
    assert r.returncode == 1 and r.stdout.decode().startswith("Usage: dog node log level ")
    r = cluster.dog("node", "log", "nothing", check=False)
    assert r.returncode == 1


# ---------------------------------------------------------------- node vnodes


def test_vnodes_set_on_fixed_vnodes_cluster(make_cluster):
    c = make_cluster(3, start=False)
    for s in c.nodes:
        s.start("-V", "32")
    c.wait_members(3)
    c.dog("cluster", "format", "-V", "-c", "2")
    target = c.nodes[1]
    assert vnodes_by_port(c) == {s.port: 32 for s in c.nodes}
    epoch = epoch_of(c)
    assert text(c.dog("node", "vnodes", "set", "64", port=target.port)) == (0, "", "")
    wait_for(lambda: vnodes_by_port(c)[target.port] == 64, what="vnodes to change")
    assert {p: v for p, v in vnodes_by_port(c).items() if p != target.port} == \
        {s.port: 32 for s in c.nodes if s is not target}
    assert epoch_of(c) == epoch + 1
    for bad in ("0", "65536", "x", "12abc"):
        assert text(c.dog("node", "vnodes", "set", bad, check=False)) == (
            64, "", f"Invalid number of vnodes '{bad}': must be an integer between 1 and 65535\n")
    assert vnodes_by_port(c)[target.port] == 64


def test_vnodes_set_refused_with_auto_vnodes(cluster):
    assert text(cluster.dog("node", "vnodes", "set", "64", check=False)) == (
        1, "", "Failed to execute request\n")
    assert set(vnodes_by_port(cluster).values()) == {128}


# ---------------------------------------------------------------- cluster recover force


def test_recover_force(make_cluster):
    c = make_cluster(3)
    c.format(3)
    data = c.write_volume("Alice", 8 << 20)
    r = c.dog("cluster", "recover", "force", "-f", check=False)
    assert text(r) == (1, "", "failed to execute request, Cluster is running/halted and cannot be "
                              "force recovered\n")
    c.dog("cluster", "shutdown")
    for s in c.nodes:
        assert s.proc.wait(20) == 0
    for s in c.nodes[:2]:
        s.start()
    assert c.dog("cluster", "info", check=False).stdout.decode().startswith(
        "Cluster status: Waiting for other nodes to join cluster\n")
    r = c.dog("cluster", "recover", "force", input=b"", check=False)  # declined: nothing done
    assert r.returncode == 0 and r.stdout.decode().startswith(
        "Caution! Please try starting all the cluster nodes normally before\nrunning this command.\n")
    assert r.stdout.decode().endswith("Are you sure you want to continue? [yes/no]: ")
    assert c.dog("cluster", "info", check=False).stdout.decode().startswith(
        "Cluster status: Waiting for other nodes to join cluster\n")
    epoch = epoch_of(c)
    r = c.dog("cluster", "recover", "force", input=b"yes\n")
    assert r.returncode == 0
    wait_for(lambda: c.dog("cluster", "info").stdout.decode().startswith(
        "Cluster status: running, auto-recovery enabled\n"), what="the cluster to run")
    assert epoch_of(c) == epoch + 1
    assert c.read_volume("Alice") == data


# ---------------------------------------------------------------- cluster reweight


def test_reweight_updates_vnodes(cluster):
    victim = cluster.nodes[2]
    victim.stop()
    cluster.wait_members(2)
    path = victim.store / "config"
    cfg = SheepdogConfig.decode(path.read_bytes())
    cfg.space //= 2  # as if its disk had been half the size when it last measured
    path.write_bytes(cfg.encode())
    victim.start()
    cluster.wait_members(3)
    before = vnodes_by_port(cluster)
    assert before[victim.port] < 100 < min(v for p, v in before.items() if p != victim.port)
    epoch = epoch_of(cluster)
    assert text(cluster.dog("cluster", "reweight")) == (0, "", "")
    wait_for(lambda: 120 <= vnodes_by_port(cluster)[victim.port] <= 136, what="reweighted vnodes")
    after = vnodes_by_port(cluster)
    assert all(120 <= v <= 136 for v in after.values()), after
    assert epoch_of(cluster) > epoch
    assert SheepdogConfig.decode(path.read_bytes()).space > cfg.space
    cluster.wait_redundant()


# ---------------------------------------------------------------- check and repair


def _object_file(node, oid: int):
    return node.store / "obj" / f"{oid:016x}"


def _digest(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_vdi_check_repairs_through_repair_replica(cluster):
    cluster.dog("vdi", "create", "Alice", "64M")
    cluster.dog("vdi", "write", "Alice", "0", "12M", input=bytes(range(256)) * (48 << 10))
    with cluster.client() as c:
        vid = c.get_vdi_info("Alice").vdi_id
        ring = Ring(c.get_node_list())
    by_port = {s.port: s for s in cluster.nodes}
    oid_a, oid_b = vid_to_data_oid(vid, 0), vid_to_data_oid(vid, 1)
    bad_holder = by_port[ring.oid_to_nodes(oid_a, 3)[0].nid.port]
    good = _digest(_object_file(bad_holder, oid_a))
    with open(_object_file(bad_holder, oid_a), "r+b") as f:
        f.write(b"corrupted!")
    lost_holder = by_port[ring.oid_to_nodes(oid_b, 3)[1].nid.port]
    good_b = _digest(_object_file(lost_holder, oid_b))
    _object_file(lost_holder, oid_b).unlink()

    r = cluster.dog("vdi", "check", "Alice")
    assert r.stdout.decode() == (f"fixed replica {oid_a:016x}\nfixed missing {oid_b:016x}\n"
                                 "finish check&repair Alice\n")
    assert r.stderr.decode() == ""
    assert all(_digest(_object_file(s, oid_a)) == good for s in cluster.nodes
               if s.port in {n.nid.port for n in ring.oid_to_nodes(oid_a, 3)})
    assert _digest(_object_file(lost_holder, oid_b)) == good_b
    assert "repaired from" in lost_holder.log()  # the node fetched it itself (REPAIR_REPLICA)
    assert cluster.dog("vdi", "check", "Alice").stdout.decode() == "finish check&repair Alice\n"


def test_repair_replica_op(cluster):
    cluster.write_volume("Alice", 4 << 20)
    with cluster.client() as c:
        oid = vid_to_data_oid(c.get_vdi_info("Alice").vdi_id, 0)
        nodes = c.get_node_list()
        epoch = c.cluster_info().epoch
    by_port = {s.port: s for s in cluster.nodes}
    src, dst = (by_port[n.nid.port] for n in Ring(nodes).oid_to_nodes(oid, 3)[:2])
    want = _object_file(src, oid).read_bytes()
    _object_file(dst, oid).unlink()
    with Client("127.0.0.1", dst.port) as c:
        # a source without the object: NO_OBJ, nothing created
        stranger = next(s for s in cluster.nodes if s not in (src, dst))
        _object_file(stranger, oid).unlink()
        rsp, _ = c.call(Request(Op.REPAIR_REPLICA, epoch=epoch, args=ForwArgs(
            oid=oid, addr=nodes[0].nid.addr, port=stranger.port)))
        assert rsp.result == Res.NO_OBJ
        assert not _object_file(dst, oid).exists()
        rsp, _ = c.call(Request(Op.REPAIR_REPLICA, epoch=epoch, args=ForwArgs(
            oid=oid, addr=nodes[0].nid.addr, port=dst.port)))  # from itself: refused
        assert rsp.result == Res.INVALID_PARMS
        rsp, _ = c.call(Request(Op.REPAIR_REPLICA, epoch=epoch, args=ForwArgs(
            oid=oid, addr=nodes[0].nid.addr, port=src.port)))
        assert rsp.result == Res.SUCCESS
    assert _object_file(dst, oid).read_bytes() == want


def test_cluster_check(cluster):
    cluster.dog("vdi", "create", "Alice", "16M")
    cluster.dog("vdi", "write", "Alice", "0", "5", input=b"hello")
    cluster.dog("vdi", "snapshot", "-s", "snap1", "Alice")
    cluster.dog("vdi", "create", "Bob", "16M")
    cluster.dog("vdi", "write", "Alice", "4M", "5", input=b"world")
    with cluster.client() as c:
        vids = {(n, t): c.get_vdi_info(n, t).vdi_id for n, t in
                (("Alice", "snap1"), ("Alice", ""), ("Bob", ""))}
        ring = Ring(c.get_node_list())
    blocks = {("Alice", "snap1"): 'fix snapshot Alice (id: 1, tag: "snap1")\nfinish check&repair Alice\n',
              ("Alice", ""): "fix vdi Alice\nfinish check&repair Alice\n",
              ("Bob", ""): "fix vdi Bob\nfinish check&repair Bob\n"}
    expected = "".join(blocks[k] for k in sorted(vids, key=vids.get))
    assert text(cluster.dog("cluster", "check")) == (0, expected, "")
    # a lost replica of the working VDI's own object comes back
    oid = vid_to_data_oid(vids["Alice", ""], 1)
    holder = next(s for s in cluster.nodes if s.port == ring.oid_to_nodes(oid, 3)[2].nid.port)
    _object_file(holder, oid).unlink()
    out = cluster.dog("cluster", "check").stdout.decode()
    assert out == expected.replace("fix vdi Alice\n", f"fix vdi Alice\nfixed missing {oid:016x}\n")
    assert _object_file(holder, oid).exists()


# ---------------------------------------------------------------- alter-copy


def test_cluster_alter_copy(cluster):
    r = cluster.dog("cluster", "alter-copy", "-c", "2", input=b"")  # declined (stdin at EOF)
    assert r.stdout.decode().endswith("Caution! Changing cluster's redundancy level will affect\n"
                                      "  /  |   all the VDIs to be created later.\n"
                                      "(/_)_|_  Are you sure you want to continue? [yes/no]: ")
    assert "with 3 redundancy policy" in cluster.dog("cluster", "info", "-v").stdout.decode()
    r = cluster.dog("cluster", "alter-copy", "-c", "5", input=b"")
    assert r.stdout.decode() == ("Number of copies (5) is larger than number of nodes (3).\n"
                                 "Are you sure you want to continue? [yes/no]: ")
    assert text(cluster.dog("cluster", "alter-copy", "-c", "2", "-f")) == (
        0, "", "The cluster's redundancy level is set to 2, the old one was 3.\n")
    for i in range(3):
        assert "Cluster store: plain with 2 redundancy policy\n" in \
            cluster.dog("cluster", "info", "-v", port=cluster.nodes[i].port).stdout.decode()
    cluster.dog("vdi", "create", "Later", "16M")
    with cluster.client() as c:
        assert c.read_inode(c.get_vdi_info("Later").vdi_id, header_only=True).header.nr_copies == 2
    assert text(cluster.dog("cluster", "alter-copy", "-c", "2", "-f", check=False)) == (
        1, "", "The cluster's redundancy level is already set to 2, nothing changed.\n")
    r = cluster.dog("cluster", "alter-copy", "-f", input=b"")
    assert r.stdout.decode() == "The cluster's redundancy level is not specified, use 3 as default.\n"
    assert "with 3 redundancy policy" in cluster.dog("cluster", "info", "-v").stdout.decode()
    r = cluster.dog("cluster", "alter-copy", "-c", "2:1", check=False)
    assert r.returncode == 64
    assert r.stderr.decode() == "Changing redundancy level of erasure coded vdi is not supported yet.\n"
    assert r.stdout.decode().startswith("Usage: dog cluster alter-copy ")
    r = cluster.dog("cluster", "alter-copy", "-c", "99", check=False)
    assert r.returncode == 1 and r.stderr.decode().startswith("Invalid parameter 99\n")


def test_cluster_recover_usage(cluster):
    r = cluster.dog("cluster", "recover", check=False)
    assert r.returncode == 64 and r.stdout.decode().startswith(
        "Usage: dog cluster recover {force|enable|disable} ")
    r = cluster.dog("cluster", "recover", "sideways", check=False)
    assert r.returncode == 1 and r.stdout.decode().startswith("Usage: dog cluster recover ")
