"""The short-circuit contract's byte layouts (sheep/proto/shortcircuit.py): bytes in,
values out, and every malformed input refused."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sheep.proto.shortcircuit import (
    GEN_OFFSET, LEASE_SIZE, TOKEN_LEN, Grant, decode_lease, encode_lease,
)

paths = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=200)


@given(st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN), st.integers(0, 2**64 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), paths, paths)
def test_grant_round_trip(token, gen, epoch, owners, lease_path, path):
    g = Grant(token, gen, epoch, owners, lease_path, path)
    assert Grant.decode(g.encode()) == g


@given(st.integers(0, 2**64 - 1), st.binary(min_size=TOKEN_LEN, max_size=TOKEN_LEN),
       st.integers(0, 2**63))
def test_lease_round_trip_and_generation_offset(gen, token, pid):
    raw = encode_lease(gen, token, pid)
    assert len(raw) == LEASE_SIZE
    assert decode_lease(raw) == (gen, token, pid)
    assert int.from_bytes(raw[GEN_OFFSET:GEN_OFFSET + 8], "little") == gen  # what clients map


@pytest.mark.parametrize("raw", [b"", bytes(20), Grant(bytes(16), 1, 1, 1, "/l", "/p").encode()[:32],
                                 Grant(bytes(16), 1, 1, 1, "/l", "/p").encode()[:34]])
def test_malformed_grants_are_refused(raw):
    with pytest.raises(ValueError):
        Grant.decode(raw)


@pytest.mark.parametrize("raw", [b"", b"SDLEASE1", b"NOTLEASE" + bytes(56)])
def test_malformed_leases_are_refused(raw):
    with pytest.raises(ValueError):
        decode_lease(raw)
