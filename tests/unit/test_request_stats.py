"""The STAT counters (`sheep/server/stats.py`): what counts as a gateway or peer request."""
from __future__ import annotations

from sheep.proto.constants import Flag, Op
from sheep.proto.header import Request
from sheep.proto.structs import SdStat
from sheep.server.stats import counted


def test_gateway_requests():
    s = SdStat()
    with counted(s, Request(Op.WRITE_OBJ, Flag.CMD_WRITE, 4096), gateway=True, peer=False):
        assert (s.gway_active_nr, s.gway_total_nr) == (1, 1)
    with counted(s, Request(Op.READ_OBJ, 0, 512), gateway=True, peer=False):
        pass
    with counted(s, Request(Op.DISCARD_OBJ), gateway=False, peer=False):
        pass
    with counted(s, Request(Op.FLUSH_VDI), gateway=False, peer=False):
        pass
    assert (s.gway_active_nr, s.gway_total_nr) == (0, 4)
    assert (s.gway_total_write_nr, s.gway_total_read_nr) == (1, 1)
    assert (s.gway_total_remove_nr, s.gway_total_flush_nr) == (1, 1)
    assert (s.gway_total_rx, s.gway_total_tx) == (4096, 512)
    assert s.peer_total_nr == 0


def test_peer_requests_and_uncounted_ones():
    s = SdStat()
    for op, flags, length in ((Op.CREATE_AND_WRITE_PEER, Flag.CMD_WRITE, 100),
                              (Op.WRITE_PEER, Flag.CMD_WRITE, 10), (Op.READ_PEER, 0, 7),
                              (Op.REMOVE_PEER, 0, 0)):
        with counted(s, Request(op, flags, length), gateway=False, peer=True):
            assert s.peer_active_nr == 1
    assert (s.peer_total_nr, s.peer_total_write_nr, s.peer_total_read_nr,
            s.peer_total_remove_nr) == (4, 2, 1, 1)
    assert (s.peer_total_rx, s.peer_total_tx, s.peer_active_nr) == (110, 7, 0)
    try:
        with counted(s, Request(Op.READ_PEER, 0, 1), gateway=False, peer=True):
            raise RuntimeError("a failing handler")
    except RuntimeError:
        pass
    assert s.peer_active_nr == 0  # released even when the handler fails
    with counted(s, Request(Op.STAT_SHEEP), gateway=False, peer=False):
        pass
    assert s == SdStat(peer_total_nr=5, peer_total_rx=110, peer_total_tx=8, peer_total_read_nr=2,
                       peer_total_write_nr=2, peer_total_remove_nr=1)
