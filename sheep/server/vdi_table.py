"""Per-node VDI bookkeeping (objects.md §5.2, §6.1): the in-use and deleted vid bitmaps
and the per-vid state (copies, policy, object size, snapshot flag, parent, lock).

Pure in-memory data; every node keeps an identical copy, updated by cluster ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..proto.constants import SD_NR_VDIS, VDI_BITMAP_SIZE
from ..proto.structs import NodeId, VdiState

LOCK_UNLOCKED, LOCK_LOCKED, LOCK_SHARED = 1, 2, 3
PARTICIPANT_SHARED = 2  # participants_state: 1 modified, 2 shared, 3 invalidated
MAX_PARTICIPANTS = 31


@dataclass
class VdiEntry:
    nr_copies: int
    copy_policy: int = 0
    block_size_shift: int = 22
    snapshot: bool = False
    deleted: bool = False
    parent_vid: int = 0
    lock_state: int = LOCK_UNLOCKED
    lock_owner: NodeId | None = None
    participants: list[NodeId] = field(default_factory=list)  # shared locks (iSCSI multipath)


class Bitmap:
    """2^24 bits, LSB-first within each byte, as READ_VDIS puts them on the wire."""

    def __init__(self) -> None:
        self.bits = bytearray(VDI_BITMAP_SIZE)

    def set(self, vid: int) -> None:
        self.bits[vid >> 3] |= 1 << (vid & 7)

    def clear(self, vid: int) -> None:
        self.bits[vid >> 3] &= ~(1 << (vid & 7)) & 0xFF

    def test(self, vid: int) -> bool:
        return bool(self.bits[vid >> 3] & (1 << (vid & 7)))

    def reset(self) -> None:
        self.bits[:] = bytes(VDI_BITMAP_SIZE)

    def find_next_zero(self, start: int, end: int = SD_NR_VDIS) -> int:
        """First clear bit in [start, end), or ``end`` if none (find_next_zero_bit)."""
        vid = start
        while vid < end:
            byte = self.bits[vid >> 3]
            if byte == 0xFF and vid & 7 == 0:
                # skip whole full bytes quickly
                i = vid >> 3
                j = i
                limit = (end + 7) >> 3
                while j < limit and self.bits[j] == 0xFF:
                    j += 1
                vid = j << 3
                continue
            if not byte & (1 << (vid & 7)):
                return vid
            vid += 1
        return end

    def iter_set(self):
        """Set bits in ascending order; all-zero 4 KiB chunks are skipped whole."""
        bits = self.bits
        zero = bytes(4096)
        for base in range(0, len(bits), 4096):
            if bits[base:base + 4096] == zero:
                continue
            for j in range(base, base + 4096):
                byte = bits[j]
                if byte:
                    for b in range(8):
                        if byte & (1 << b):
                            yield (j << 3) | b


class VdiTable:
    def __init__(self) -> None:
        self.inuse = Bitmap()
        self.deleted = Bitmap()
        self.entries: dict[int, VdiEntry] = {}
        self.moved_locks: dict[int, int] = {}  # old vid -> vid its lock moved to
        self.handover: dict[bytes, int] = {}  # name -> deleted locked working vid (see DEL_VDI)

    def reset(self) -> None:
        self.inuse.reset()
        self.deleted.reset()
        self.entries.clear()
        self.moved_locks.clear()
        self.handover.clear()

    def move_lock(self, old_vid: int, new_vid: int) -> None:
        """The lock of ``old_vid`` now protects ``new_vid`` (same owner)."""
        old, new = self.entries.get(old_vid), self.entries.get(new_vid)
        if old is None or new is None:
            return
        new.lock_state, new.lock_owner = old.lock_state, old.lock_owner
        old.lock_state, old.lock_owner = LOCK_UNLOCKED, None
        self.moved_locks[old_vid] = new_vid

    def lock_holder(self, vid: int) -> int:
        """Where a lock taken on ``vid`` lives now (after snapshots and branches)."""
        seen = set()
        while vid in self.moved_locks and vid not in seen:
            seen.add(vid)
            vid = self.moved_locks[vid]
        return vid

    def copies(self, vid: int, default: int) -> int:
        e = self.entries.get(vid)
        return e.nr_copies if e else default

    def shift(self, vid: int, default: int) -> int:
        e = self.entries.get(vid)
        return e.block_size_shift if e else default

    def is_snapshot(self, vid: int) -> bool:
        e = self.entries.get(vid)
        return bool(e and e.snapshot)

    def add(self, vid: int, entry: VdiEntry) -> None:
        old = self.entries.get(vid)
        if old is not None:
            entry.lock_state, entry.lock_owner = old.lock_state, old.lock_owner
        self.entries[vid] = entry

    def to_states(self) -> list[VdiState]:
        """`GET_VDI_COPIES` payload entries, ascending vid."""
        out = []
        for vid in sorted(self.entries):
            e = self.entries[vid]
            out.append(VdiState(
                vid=vid, nr_copies=e.nr_copies, snapshot=int(e.snapshot), deleted=int(e.deleted),
                copy_policy=e.copy_policy, block_size_shift=e.block_size_shift,
                parent_vid=e.parent_vid, lock_state=e.lock_state,
                lock_owner=e.lock_owner or NodeId(bytes(16), 0),
                participants_state=[PARTICIPANT_SHARED] * len(e.participants),
                participants=list(e.participants)))
        return out

    def merge_state(self, st: VdiState) -> None:
        """Learn a vid from a peer's GET_VDI_COPIES (join)."""
        self.inuse.set(st.vid)
        if st.deleted:
            self.deleted.set(st.vid)
        if st.vid not in self.entries:
            self.entries[st.vid] = VdiEntry(
                nr_copies=st.nr_copies, copy_policy=st.copy_policy,
                block_size_shift=st.block_size_shift, snapshot=bool(st.snapshot),
                deleted=bool(st.deleted), parent_vid=st.parent_vid)
