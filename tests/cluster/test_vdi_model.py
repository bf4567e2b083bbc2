"""Random VDI lifecycles against an in-memory model (objects.md §5-§8, dog.md §4.2-§4.5).

A hypothesis state machine drives write (dog- or QEMU-style index update) / discard /
snapshot / clone / rollback / rebase / delete on small VDIs (3 objects of 4 MiB) of one real
3-node cluster, which is reformatted (stores purged) before every example; half of the names
share a vid run.  Every read must equal the model; writing a snapshot's data must fail with
READONLY; lookups by name, tag and snapid must find the model's vid.  At the end of each
example everything is deleted, in random order, and no data or ledger object may be left in
any store: only the inode objects stay, cleared, with their in-use and deleted bits set.
"""
from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, rule, run_state_machine_as_test,
)

from sheep.client.api import Client, SheepError
from sheep.client.volume import Volume
from sheep.proto.constants import SD_INODE_HEADER_SIZE, SD_MAX_VDI_TAG_LEN, Res
from sheep.proto.hashing import hash_vdi
from sheep.proto.inode import Inode, InodeHeader
from sheep.proto.oid import (
    data_vid_offset, is_data_obj, is_ledger_obj, is_vdi_obj, oid_to_vid, vid_to_data_oid,
    vid_to_vdi_oid,
)
from sheep.proto.structs import pad

from .harness import Cluster

OBJ = 4 << 20
NOBJ = 3
SIZE = NOBJ * OBJ
TAG_OFFSET = 256  # InodeHeader: name[256], then tag[256]
MAX_WORKING = 5
MAX_SNAPS = 8
# Names whose vid runs interleave (objects.md §5.3): the first three share one FNV hash,
# the last starts one vid after them; fresh names come from here half of the time.
CLOSE_NAMES = ("n133954", "n180589", "n59533", "n5589", "n71131", "n126674")


@dataclass
class Vdi:
    """A live VDI as the model sees it; snapshots carry their tag and snap_id."""

    name: str
    vid: int
    data: bytearray
    tag: str = ""
    snapid: int = 0

    def label(self) -> str:
        return f"{self.name}@{self.tag or self.snapid}" if self.snapid else self.name


# ---------------------------------------------------------------------------- strategies

@st.composite
def ranges(draw) -> tuple[int, int]:
    """(offset, length) inside the VDI: often near or across object boundaries, unaligned."""
    offset = draw(st.one_of(
        st.builds(lambda k, d: k * OBJ + d, st.integers(1, NOBJ - 1), st.integers(-700, 700)),
        st.integers(0, NOBJ - 1).map(lambda k: k * OBJ),
        st.integers(0, SIZE - 1),
    ))
    length = draw(st.one_of(
        st.integers(1, 4096),
        st.integers(1, 1 << 17),
        st.sampled_from([OBJ - 1, OBJ, OBJ + 1]),
    ))
    return offset, min(length, SIZE - offset)


payloads = st.one_of(st.integers(0, 2**32), st.just(-1))  # -1: all zeros
picks = st.integers(0, 1000)  # an element of a model list, taken modulo its length
nodes = st.integers(0, 2)


def make_payload(seed: int, n: int) -> bytes:
    return bytes(n) if seed < 0 else random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------------- helpers

def load_inode(c: Client, vid: int) -> Inode:
    """Header and the VDI's few index entries (the rest of the index decodes as zeros)."""
    return Inode.decode(c.read_object(vid_to_vdi_oid(vid), 0, SD_INODE_HEADER_SIZE + 4 * NOBJ))


def zero_index(c: Client, vid: int) -> None:
    """dog's delete prelude (objects.md §6.6): zero the used part of data_vdi_id[]."""
    used = [i for i in range(NOBJ) if load_inode(c, vid).get_vid(i)]
    if used:
        lo, hi = used[0], used[-1] + 1
        c.write_object(vid_to_vdi_oid(vid), bytes(4 * (hi - lo)), data_vid_offset(lo))


def expect_error(results: set[int], fn, *args, **kw) -> int:
    try:
        fn(*args, **kw)
    except SheepError as e:
        assert e.result in results, f"{fn.__name__}{args}: got {e} ({e.result:#x})"
        return e.result
    raise AssertionError(f"{fn.__name__}{args} succeeded, expected one of "
                         f"{[hex(r) for r in results]}")


def leftover_objects(cluster: Cluster) -> tuple[list[str], list[str]]:
    """(files other than inode objects, inode object files) in every node's obj/ tree.

    Only inode objects may survive the deletion of every VDI: a data object (no bit of 59-63
    set) or a ledger (bit 59) is a leak, and so is a .tmp or .stale leftover.
    """
    bad, inodes = [], []
    for s in cluster.nodes:
        for root, _, files in os.walk(s.store / "obj"):
            for f in files:
                path = os.path.join(root, f)
                try:
                    oid = int(f, 16) if len(f) == 16 else None
                except ValueError:
                    oid = None
                if oid is not None and is_vdi_obj(oid):
                    inodes.append(path)
                else:
                    kind = ("data" if is_data_obj(oid) else "ledger" if is_ledger_obj(oid)
                            else "other") if oid is not None else "other"
                    bad.append(f"node {s.idx} {kind}: {os.path.relpath(path, s.store)}")
    return bad, inodes


def bitmap_vids(bitmap: bytes | bytearray | memoryview) -> set[int]:
    """The vids set in a READ_VDIS / READ_DEL_VDIS bitmap (bit v = byte v>>3, bit v&7)."""
    return {m.start() * 8 + b for m in re.finditer(rb"[^\0]", bytes(bitmap))
            for b in range(8) if m.group()[0] >> b & 1}


def reformat(cluster: Cluster) -> None:
    """MAKE_FS (purges every store), then wait until every node has applied it."""
    cluster.format(3)
    with cluster.client(0) as c:
        ctime = c.cluster_info().ctime
    deadline = time.monotonic() + 10
    for i in range(1, len(cluster.nodes)):
        with cluster.client(i) as c:
            while c.cluster_info().ctime != ctime:
                assert time.monotonic() < deadline, f"node {i} did not apply the format"
                time.sleep(0.01)


# ---------------------------------------------------------------------------- operations
#
# One rule draws one of these (rather than a rule per operation, which hypothesis' swarm
# testing would switch off at random): `write`, `read` and `snapshot` are drawn more often.

@dataclass(frozen=True)
class Create:
    name_pick: int
    node: int
    NAME = "create"


@dataclass(frozen=True)
class Write:
    pick: int
    offset: int
    length: int
    seed: int
    qemu: bool  # index update as QEMU does it: one WRITE_OBJ over min..max of the changes
    node: int
    NAME = "write"


@dataclass(frozen=True)
class Discard:
    pick: int
    idx: int
    node: int
    NAME = "discard"


@dataclass(frozen=True)
class Read:
    pick: int
    offset: int
    length: int
    node: int
    NAME = "read"


@dataclass(frozen=True)
class Snapshot:
    pick: int
    tagged: bool
    node: int
    NAME = "snapshot"


@dataclass(frozen=True)
class Clone:
    pick: int
    name_pick: int
    node: int
    NAME = "clone"


@dataclass(frozen=True)
class Rollback:
    pick: int
    zero_first: bool
    node: int
    NAME = "rollback"


@dataclass(frozen=True)
class Rebase:
    pick: int
    node: int
    NAME = "rebase"


@dataclass(frozen=True)
class DeleteWorking:
    pick: int
    zero_first: bool
    node: int
    NAME = "delete_working"


@dataclass(frozen=True)
class DeleteSnapshot:
    pick: int
    zero_first: bool
    by_tag: bool
    node: int
    NAME = "delete_snapshot"


@dataclass(frozen=True)
class Readonly:
    pick: int
    idx: int
    create: bool
    cow: bool
    node: int
    NAME = "readonly"


@dataclass(frozen=True)
class Lookups:
    node: int
    NAME = "lookups"


def _ranged(cls, **kw):
    return st.builds(lambda r, **k: cls(offset=r[0], length=r[1], **k), ranges(), **kw)


_write = _ranged(Write, pick=picks, seed=payloads, qemu=st.booleans(), node=nodes)
_read = _ranged(Read, pick=picks, node=nodes)
_snapshot = st.builds(Snapshot, pick=picks, tagged=st.booleans(), node=nodes)
OPS = st.one_of(
    _write, _read,
    _snapshot,
    _write,
    st.builds(Clone, pick=picks, name_pick=picks, node=nodes),
    st.builds(Rollback, pick=picks, zero_first=st.booleans(), node=nodes),
    _read,
    st.builds(DeleteSnapshot, pick=picks, zero_first=st.booleans(), by_tag=st.booleans(),
              node=nodes),
    st.builds(DeleteWorking, pick=picks, zero_first=st.booleans(), node=nodes),
    _write,
    _snapshot,
    st.builds(Rebase, pick=picks, node=nodes),
    st.builds(Create, name_pick=picks, node=nodes),
    st.builds(Readonly, pick=picks, idx=st.integers(0, NOBJ - 1), create=st.booleans(),
              cow=st.booleans(), node=nodes),
    st.builds(Lookups, node=nodes),
    st.builds(Discard, pick=picks, idx=st.integers(0, NOBJ - 1), node=nodes),
)


# ---------------------------------------------------------------------------- the machine

class VdiModel(RuleBasedStateMachine):
    cluster: Cluster  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        reformat(self.cluster)
        self.clients = [self.cluster.client(i) for i in range(len(self.cluster.nodes))]
        self.working: dict[str, Vdi] = {}
        self.snaps: list[Vdi] = []
        self.names = 0
        self.used_names: set[str] = set()
        self.tags = 0
        self.seed = 0
        self.vids: set[int] = set()  # every vid NEW_VDI allocated in this example
        self.broken = False  # a step failed: teardown only closes the connections

    # -- plumbing

    def c(self, node: int) -> Client:
        return self.clients[node % len(self.clients)]

    def live(self) -> list[Vdi]:
        return [*self.working.values(), *self.snaps]

    def pick_working(self, pick: int) -> Vdi:
        return list(self.working.values())[pick % len(self.working)]

    def pick_snap(self, pick: int) -> Vdi:
        return self.snaps[pick % len(self.snaps)]

    def target_name(self, pick: int) -> str:
        """A fresh name, or a name that has snapshots but no working VDI."""
        orphans = sorted({s.name for s in self.snaps} - set(self.working))
        if pick % 3 == 0 and orphans:
            return orphans[pick % len(orphans)]
        close = [n for n in CLOSE_NAMES if n not in self.used_names]
        if pick % 2 and close:
            name = close[0]
        else:
            self.names += 1
            name = f"v{self.names}"
        self.used_names.add(name)
        return name

    def volume(self, c: Client, v: Vdi) -> Volume:
        return Volume(c, load_inode(c, v.vid), readonly=bool(v.snapid))

    def check_read(self, c: Client, v: Vdi, offset: int, length: int) -> None:
        got = self.volume(c, v).read(offset, length)
        want = v.data[offset:offset + length]
        if got != want:
            bad = next(i for i in range(length) if got[i] != want[i])
            raise AssertionError(f"{v.label()} (vid {v.vid:#x}): read {offset}+{length} differs "
                                 f"first at VDI offset {offset + bad}: {got[bad]:#x} != "
                                 f"{want[bad]:#x}")

    def check_lookups(self, c: Client) -> None:
        for v in self.working.values():
            assert c.get_vdi_info(v.name).vdi_id == v.vid, v.label()
        for s in self.snaps:
            assert c.get_vdi_info(s.name, snapid=s.snapid).vdi_id == s.vid, s.label()
            if s.tag:
                assert c.get_vdi_info(s.name, s.tag).vdi_id == s.vid, s.label()

    def delete(self, c: Client, v: Vdi, *, zero_first: bool, by_tag: bool = True) -> None:
        """DEL_VDI (optionally after dog's index zeroing); the lookup must then fail."""
        if zero_first:
            zero_index(c, v.vid)
        if not v.snapid:
            assert c.del_vdi(v.name).vdi_id == v.vid
            del self.working[v.name]
            expect_error({Res.NO_VDI}, c.get_vdi_info, v.name)
            return
        sel = {"tag": v.tag} if by_tag and v.tag else {"snapid": v.snapid}
        assert c.del_vdi(v.name, **sel).vdi_id == v.vid
        self.snaps.remove(v)
        expect_error({Res.NO_VDI, Res.NO_TAG}, c.get_vdi_info, v.name, **sel)

    def new_working(self, c: Client, name: str, base: Vdi | None) -> Vdi:
        """Create (base None) or clone/rollback from a snapshot: NEW_VDI snapid=0."""
        rsp = c.new_vdi(name, SIZE, base_vid=base.vid if base else 0)
        hdr = load_inode(c, rsp.vdi_id).header
        assert (hdr.name, hdr.vdi_size, hdr.snap_ctime) == (name, SIZE, 0)
        assert hdr.parent_vdi_id == (base.vid if base else 0)
        v = Vdi(name, rsp.vdi_id, bytearray(base.data) if base else bytearray(SIZE))
        self.vids.add(v.vid)
        self.working[name] = v
        return v

    # -- operations (one hypothesis rule dispatches them, see `step`)

    def op_create(self, op: Create) -> None:
        c = self.c(op.node)
        if len(self.working) >= MAX_WORKING:
            return
        name = self.target_name(op.name_pick)
        self.new_working(c, name, None)
        expect_error({Res.VDI_EXIST}, c.new_vdi, name, SIZE)

    def op_write(self, op: Write) -> None:
        if not self.working:
            return
        c = self.c(op.node)
        v = self.pick_working(op.pick)
        data = make_payload(op.seed, op.length)
        vol = self.volume(c, v)
        if op.qemu:
            done = vol.send_writes(list(vol.chunks(op.offset, op.length)), memoryview(data))
            if done.error:
                raise SheepError(done.error)
            vol.update_index_range({idx: vol.vid for idx, old in done.done if old != vol.vid})
        else:
            vol.write(op.offset, data)
        v.data[op.offset:op.offset + op.length] = data

    def op_discard(self, op: Discard) -> None:
        """QEMU's discard of a whole object: its index entry of the working VDI set to 0."""
        if not self.working:
            return
        c = self.c(op.node)
        v = self.pick_working(op.pick)
        c.write_object(vid_to_vdi_oid(v.vid), bytes(4), data_vid_offset(op.idx))
        assert load_inode(c, v.vid).get_vid(op.idx) == 0
        v.data[op.idx * OBJ:(op.idx + 1) * OBJ] = bytes(OBJ)

    def op_read(self, op: Read) -> None:
        live = self.live()
        if live:
            self.check_read(self.c(op.node), live[op.pick % len(live)], op.offset, op.length)

    def op_snapshot(self, op: Snapshot) -> None:
        """dog vdi snapshot: tag into the working inode, then NEW_VDI snapid=1, base=working."""
        if not self.working or len(self.snaps) >= MAX_SNAPS:
            return
        c = self.c(op.node)
        w = self.pick_working(op.pick)
        tag = ""
        if op.tagged:
            self.tags += 1
            tag = f"t{self.tags}"
        c.write_object(vid_to_vdi_oid(w.vid), pad(tag, SD_MAX_VDI_TAG_LEN), TAG_OFFSET)
        old = load_inode(c, w.vid).header
        rsp = c.new_vdi(w.name, SIZE, base_vid=w.vid, snapid=1)
        snap = load_inode(c, w.vid)
        new = load_inode(c, rsp.vdi_id)
        assert rsp.vdi_id != w.vid
        assert snap.header.snap_ctime != 0 and snap.header.tag == tag
        assert snap.header.snap_id == old.snap_id
        assert (new.header.name, new.header.tag, new.header.snap_ctime) == (w.name, "", 0)
        assert new.header.parent_vdi_id == w.vid and new.header.snap_id == old.snap_id + 1
        assert [new.get_vid(i) for i in range(NOBJ)] == [snap.get_vid(i) for i in range(NOBJ)]
        self.snaps.append(Vdi(w.name, w.vid, bytearray(w.data), tag, old.snap_id))
        w.vid = rsp.vdi_id
        self.vids.add(w.vid)

    def op_clone(self, op: Clone) -> None:
        """dog vdi clone -s: NEW_VDI(new name, snapid 0, base = the snapshot)."""
        if not self.snaps or len(self.working) >= MAX_WORKING:
            return
        c = self.c(op.node)
        s = self.pick_snap(op.pick)
        if self.working and op.name_pick % 4 == 0:  # a name with a working VDI is refused
            taken = self.pick_working(op.name_pick).name
            expect_error({Res.VDI_EXIST}, c.new_vdi, taken, SIZE, base_vid=s.vid)
        self.new_working(c, self.target_name(op.name_pick), s)

    def op_rollback(self, op: Rollback) -> None:
        """dog vdi rollback: delete the working VDI, NEW_VDI(same name, snapid 0, base=snap)."""
        if not self.snaps:
            return
        c = self.c(op.node)
        s = self.pick_snap(op.pick)
        if s.name in self.working:
            self.delete(c, self.working[s.name], zero_first=op.zero_first)
        self.new_working(c, s.name, s)

    def op_rebase(self, op: Rebase) -> None:
        """NEW_VDI snapid=1 with a base other than the working VDI (objects.md §6.5)."""
        cands = [s for s in self.snaps if s.name in self.working]
        if not cands or len(self.snaps) >= MAX_SNAPS:
            return
        c = self.c(op.node)
        s = cands[op.pick % len(cands)]
        w = self.working[s.name]
        old = load_inode(c, w.vid).header
        rsp = c.new_vdi(s.name, SIZE, base_vid=s.vid, snapid=1)
        new = load_inode(c, rsp.vdi_id).header
        assert new.parent_vdi_id == s.vid and new.snap_id == old.snap_id + 1
        assert load_inode(c, w.vid).header.snap_ctime != 0
        self.snaps.append(Vdi(w.name, w.vid, w.data, old.tag, old.snap_id))
        self.working[s.name] = Vdi(s.name, rsp.vdi_id, bytearray(s.data))
        self.vids.add(rsp.vdi_id)

    def op_delete_working(self, op: DeleteWorking) -> None:
        if self.working:
            self.delete(self.c(op.node), self.pick_working(op.pick), zero_first=op.zero_first)

    def op_delete_snapshot(self, op: DeleteSnapshot) -> None:
        if self.snaps:
            self.delete(self.c(op.node), self.pick_snap(op.pick), zero_first=op.zero_first,
                        by_tag=op.by_tag)

    def op_readonly(self, op: Readonly) -> None:
        """WRITE_OBJ on an object the snapshot owns, or CREATE_AND_WRITE_OBJ under its vid."""
        if not self.snaps:
            return
        c = self.c(op.node)
        s = self.pick_snap(op.pick)
        inode = load_inode(c, s.vid)
        index = [inode.get_vid(i) for i in range(NOBJ)]
        owned = [i for i in range(NOBJ) if index[i] == s.vid]
        if owned and not op.create:
            i = owned[op.idx % len(owned)]
            expect_error({Res.READONLY}, c.write_object, vid_to_data_oid(s.vid, i), b"\xee" * 9,
                         op.idx * 1000 + 3, copies=3)
        else:
            src = index[op.idx]
            cow = vid_to_data_oid(src, op.idx) if op.cow and src else 0
            expect_error({Res.READONLY}, c.create_and_write_object,
                         vid_to_data_oid(s.vid, op.idx), b"\xee" * 9, 5, cow_oid=cow, copies=3)
        # the index is untouched; the data is checked by later reads
        inode = load_inode(c, s.vid)
        assert [inode.get_vid(i) for i in range(NOBJ)] == index

    def op_lookups(self, op: Lookups) -> None:
        self.check_lookups(self.c(op.node))

    @initialize(seed=st.integers(0, 2**32), node=nodes,
                first=st.one_of(st.none(), _write.map(lambda w: (w, Snapshot(0, True, w.node)))))
    def start(self, seed: int, node: int, first: tuple[Write, Snapshot] | None) -> None:
        """One VDI; often already written and snapshotted, so that most steps apply."""
        self.broken = True
        self.seed = seed
        self.new_working(self.c(node), self.target_name(1), None)
        if first:
            self.op_write(first[0])
            self.op_snapshot(first[1])
        self.broken = False

    @rule(op=OPS)
    def step(self, op) -> None:
        """One operation; one that does not apply to the current state is a no-op."""
        self.broken = True
        getattr(self, "op_" + op.NAME)(op)
        self.broken = False

    # -- end of the example: full compare, delete everything, nothing may be left

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.finish()
        finally:
            for cl in self.clients:
                cl.close()

    def finish(self) -> None:
        rnd = random.Random(self.seed)
        for v in self.live():
            self.check_read(self.clients[rnd.randrange(len(self.clients))], v, 0, SIZE)
        self.check_lookups(self.clients[0])
        order = self.live()
        rnd.shuffle(order)
        for v in order:
            self.delete(self.clients[rnd.randrange(len(self.clients))], v,
                        zero_first=rnd.random() < 0.3, by_tag=rnd.random() < 0.5)
        bad, inodes = leftover_objects(self.cluster)
        assert not bad, f"objects left after deleting every VDI: {sorted(bad)}"
        # copies=3 on 3 nodes: every node keeps every inode, each cleared (objects.md §6.6)
        assert len(inodes) == 3 * len(self.vids)
        assert {oid_to_vid(int(os.path.basename(p), 16)) for p in inodes} == self.vids
        for path in inodes:
            with open(path, "rb") as f:
                hdr = InodeHeader.decode(f.read(SD_INODE_HEADER_SIZE))
            assert (hdr.name, hdr.vdi_size) == ("", 0), f"{path}: {hdr.name!r} not cleared"
        # the in-use bits stay set and the deleted bits are set
        c = self.clients[0]
        assert bitmap_vids(c.read_vdis()) == self.vids
        assert bitmap_vids(c.read_del_vdis()) == self.vids


@pytest.fixture(scope="module")
def model_cluster(tmp_path_factory):
    """One 3-node cluster for the whole module; each example reformats it."""
    c = Cluster(tmp_path_factory.mktemp("vdi_model"), 3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_vdi_lifecycle_matches_model(model_cluster):
    hashes = [hash_vdi(n.encode()) for n in CLOSE_NAMES]
    assert len(set(hashes[:3])) == 1 and hashes[5] == hashes[3] + 1 == hashes[4] + 1
    VdiModel.cluster = model_cluster
    run_state_machine_as_test(VdiModel, settings=settings(
        max_examples=30, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
