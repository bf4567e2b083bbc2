"""The corosync cluster driver against a real corosync (CPG) on loopback."""
from __future__ import annotations

import fcntl
import signal
import struct
import hashlib
import subprocess
import threading
import time
import uuid

import pytest

from sheep.proto.constants import Flag, Op, Status
from sheep.proto.header import Request
from tests.cluster.harness import SHEEP, Cluster, free_ports, wait_until

from .conftest import LOCK_PATH, cpg_socket_owned


def cs_cluster(tmp_path, n: int = 3, group: str | None = None) -> Cluster:
    group = group or f"g{uuid.uuid4().hex[:8]}"
    return Cluster(tmp_path / group, n, driver=f"corosync:{group}")


def info(c: Cluster, i: int):
    with c.client(i) as cl:
        return cl.cluster_info()




def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_cluster_over_corosync(tmp_path, corosync):
    """Format, I/O, a kill -9, a rejoin, `dog cluster shutdown` and a cold restart."""
    c = cs_cluster(tmp_path).start()
    try:
        c.format(3)
        data = c.write_volume("alice", 12 << 20)
        for i in range(3):
            assert md5(c.read_volume("alice", via=i)) == md5(data)
        before = info(c, 0).epoch

        c.nodes[2].kill9()
        c.wait_members(2)
        after = info(c, 0)
        assert after.epoch == before + 1
        assert sorted(n.nid.port for n in after.nodes) == sorted(s.port for s in c.nodes[:2])
        assert md5(c.read_volume("alice", via=1)) == md5(data)

        c.nodes[2].start()
        c.wait_members(3)
        assert info(c, 2).epoch == before + 2
        c.wait_redundant()
        assert md5(c.read_volume("alice", via=2)) == md5(data)

        epoch = info(c, 0).epoch
        r = c.dog("cluster", "shutdown")
        assert r.returncode == 0
        for s in c.nodes:
            assert s.proc is not None and s.proc.wait(20) == 0

        # cold restart: the last epoch's nodes come back at the same epoch
        for s in c.nodes:
            s.start()
        c.wait_members(3)
        wait_until("status OK", lambda: info(c, 0).status == Status.OK)
        assert info(c, 1).epoch == epoch
        assert md5(c.read_volume("alice", via=1)) == md5(data)
    finally:
        c.stop()


def test_simultaneous_start_and_master_death(tmp_path, corosync):
    """Sheep started together make one cluster; when the master dies, the next oldest
    member answers a newcomer's join."""
    c = cs_cluster(tmp_path, 4)
    try:
        for s in c.nodes[:3]:
            s.start(wait=False)
        for s in c.nodes[:3]:
            s.wait_serving()
        wait_until("one 3-node view", lambda: all(len(info(c, i).nodes) == 3 for i in range(3)))
        c.format(3)
        data = c.write_volume("bob", 8 << 20)
        starters = [s for s in c.nodes[:3] if "starting the cluster" in s.log()]
        assert len(starters) == 1, [s.log() for s in c.nodes[:3]]
        master = starters[0]
        master.kill9()
        rest = [i for i in range(3) if c.nodes[i] is not master]
        wait_until("the master's leave", lambda: all(len(info(c, i).nodes) == 2 for i in rest))

        c.nodes[3].start()
        wait_until("the newcomer accepted",
                   lambda: all(len(info(c, i).nodes) == 3 for i in rest + [3]))
        assert len({info(c, i).epoch for i in rest + [3]}) == 1
        assert md5(c.read_volume("bob", via=3)) == md5(data)
    finally:
        c.stop()


def test_cluster_ops_from_every_node_at_once(tmp_path, corosync):
    """VDI creation takes the cluster-wide mutex and broadcasts: concurrent creates from
    all nodes get distinct ids and every node lists every VDI."""
    c = cs_cluster(tmp_path).start()
    try:
        c.format(3)
        ids: dict[str, int] = {}
        errors: list[BaseException] = []

        def create(i: int) -> None:
            try:
                with c.client(i) as cl:
                    for k in range(6):
                        name = f"v{i}-{k}"
                        cl.new_vdi(name, 1 << 30)
                        ids[name] = cl.get_vdi_info(name).vdi_id
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(ids) == 18 and len(set(ids.values())) == 18
        for i in range(3):
            with c.client(i) as cl:
                assert {name: cl.get_vdi_info(name).vdi_id for name in ids} == ids
    finally:
        c.stop()


def test_groups_are_separate_clusters(tmp_path, corosync):
    """Two CPG groups on one corosync are two clusters."""
    a = cs_cluster(tmp_path, 2, group="alpha")
    b = cs_cluster(tmp_path, 2, group="beta")
    try:
        a.start()
        b.start()
        a.format(2)
        b.format(2)
        for c in (a, b):
            ports = {s.port for s in c.nodes}
            for i in range(2):
                assert {n.nid.port for n in info(c, i).nodes} == ports
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("ipc", ["corosync", "corosync_socket_ipc"])
def test_corosync_dying_stops_the_sheep(tmp_path, ipc, request):
    """Without its group communication a sheep must not go on serving: it exits."""
    corosync = request.getfixturevalue(ipc)
    c = cs_cluster(tmp_path, 2).start()
    try:
        c.format(2)
        corosync.stop()
        for s in c.nodes:
            assert s.proc is not None
            assert s.proc.wait(20) != 0
            assert "lost the connection to corosync" in s.log()
    finally:
        c.stop()


@pytest.fixture
def no_corosync():
    """Hold the machine-wide corosync test lock while no corosync serves @cpg."""
    with open(LOCK_PATH, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cpg_socket_owned():
            pytest.fail("a corosync serves @cpg on this machine: cannot test its absence")
        yield


def test_no_corosync_is_a_clear_error(tmp_path, no_corosync):
    r = subprocess.run([SHEEP, "-f", "-c", "corosync", "-p", str(free_ports(1)[0]), str(tmp_path / "s")],
                       capture_output=True, timeout=60)
    assert r.returncode == 1
    assert b"cannot connect to corosync" in r.stderr and b"CS_ERR_LIBRARY" in r.stderr, r.stderr


@pytest.mark.parametrize("arg", ["corosync:a/b", "corosync:" + "x" * 129, "corosync:a b"])
def test_bad_group_name_is_refused(tmp_path, arg):
    r = subprocess.run([SHEEP, "-f", "-c", arg, str(tmp_path / "s")], capture_output=True, timeout=60)
    assert r.returncode == 1
    assert f"Invalid cluster driver option '{arg}'".encode() in r.stderr, r.stderr


def test_version_lists_corosync():
    r = subprocess.run([SHEEP, "-v"], capture_output=True, timeout=60)
    assert b"Cluster drivers: local zookeeper corosync" in r.stdout


def test_joiners_left_without_a_master_start_the_cluster(tmp_path, corosync):
    """The only member stops answering (SIGSTOP) while two sheep wait for their accept,
    then dies: the two waiting sheep start a cluster of their own."""
    c = cs_cluster(tmp_path)
    try:
        c.nodes[0].start()
        c.nodes[0].proc.send_signal(signal.SIGSTOP)
        for s in c.nodes[1:]:
            s.start(wait=False)
        time.sleep(1)
        for s in c.nodes[1:]:
            assert "joined (" not in s.log()  # nobody can answer them yet
        c.nodes[0].kill9()
        for s in c.nodes[1:]:
            s.wait_serving()
        wait_until("a 2-node view", lambda: all(len(info(c, i).nodes) == 2 for i in (1, 2)))
        starters = [s for s in c.nodes[1:] if "no member left to answer our join" in s.log()]
        assert len(starters) == 1
    finally:
        c.stop()


def test_node_update_is_an_ordered_membership_change(tmp_path, corosync):
    """SET_VNODES on one node (update_node): every node sees its new vnode count at the
    next epoch."""
    c = cs_cluster(tmp_path)
    try:
        for s in c.nodes:
            s.start("-V", "32")
        c.wait_members(3)
        with c.client() as cl:
            cl.make_fs(2, 0, 0, int(time.time()) << 32)  # fixed vnodes: no AUTO_VNODES flag
        epoch = info(c, 0).epoch
        with c.client(1) as cl:
            cl.checked(Request(Op.SET_VNODES, Flag.CMD_WRITE, 4), struct.pack("<i", 64))

        def vnodes(i: int) -> dict[int, int]:
            with c.client(i) as cl:
                return {n.nid.port: n.nr_vnodes for n in cl.get_node_list()}

        want = {s.port: 64 if s is c.nodes[1] else 32 for s in c.nodes}
        wait_until("the new vnode count everywhere", lambda: all(vnodes(i) == want for i in range(3)))
        assert {info(c, i).epoch for i in range(3)} == {epoch + 1}
    finally:
        c.stop()
