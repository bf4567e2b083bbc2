"""WriteGather (frontends/nbd/streams.py): pieces of a stream that reach the plugin's
threads in any order are merged into contiguous runs; nothing is lost or reordered."""
from __future__ import annotations

import random

from hypothesis import given, strategies as st

from frontends.nbd.streams import WriteGather, _Batch, _joined

OBJ = 1 << 22
PIECE = 1 << 18


def piece(i: int) -> memoryview:
    return memoryview(bytes([i]) * PIECE)


def test_a_lone_write_opens_nothing():
    g = WriteGather(OBJ)
    assert g.enter(0, piece(0)) == (None, False)  # nothing recent: not a stream
    g.leave()


def test_stream_pieces_in_any_order_join_one_batch_and_make_one_run():
    g = WriteGather(OBJ)
    g.enter(OBJ - PIECE, piece(99))  # the object before: a stream reaches object 1
    g.leave()
    order = list(range(OBJ // PIECE))
    random.Random(5).shuffle(order)
    first, opener = g.enter(OBJ + order[0] * PIECE, piece(order[0]))
    assert opener and first is not None
    for i in order[1:]:
        b, op = g.enter(OBJ + i * PIECE, piece(i))
        assert b is first and not op
    g.collect(first)  # covered: returns at once
    runs = first.runs()
    assert len(runs) == 1 and runs[0][0] == OBJ
    data = bytes(_joined(runs[0][1]))
    assert data == b"".join(bytes([i]) * PIECE for i in range(OBJ // PIECE))
    assert first.closed


def test_overlapping_write_does_not_join():
    g = WriteGather(OBJ)
    g.enter(0, piece(1))
    g.leave()
    b, opener = g.enter(PIECE, piece(2))
    assert opener
    assert g.enter(PIECE, piece(3)) == (None, False)  # same range in flight: written alone
    assert g.enter(PIECE + PIECE // 2, piece(3)) == (None, False)


def test_a_write_across_objects_never_joins():
    g = WriteGather(OBJ)
    g.enter(0, piece(1))
    assert g.enter(OBJ - PIECE // 2, piece(2)) == (None, False)


@given(st.lists(st.integers(0, OBJ // PIECE - 1), unique=True, min_size=1))
def test_runs_are_the_merged_pieces(indexes):
    b = _Batch(0, indexes[0] * PIECE, piece(indexes[0]))
    for i in indexes[1:]:
        b.parts.append((i * PIECE, piece(i)))
    runs = b.runs()
    # runs are sorted, disjoint, not adjacent, and hold exactly the pieces' bytes
    covered = []
    prev_end = -1
    for at, pieces in runs:
        assert at > prev_end
        data = bytes(_joined(pieces))
        for k in range(len(data) // PIECE):
            idx = at // PIECE + k
            assert data[k * PIECE:(k + 1) * PIECE] == bytes([idx]) * PIECE
            covered.append(idx)
        prev_end = at + len(data)
    assert sorted(covered) == sorted(indexes)


def test_small_random_writes_never_wait_in_a_batch():
    g = WriteGather(OBJ)
    g.enter(0, piece(1))
    small = memoryview(bytes(4096))
    assert g.enter(8192, small) == (None, False)  # same object, but 4 KiB: written at once
