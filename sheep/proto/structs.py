"""Fixed-layout structures carried on the wire or stored on disk (wire.md §10, objects.md §4, §11).

Pure codecs: ``encode()`` returns exactly the C struct's bytes (padding zero), and
``decode(buf, offset=0)`` reads them back ignoring padding.  Counted arrays (``nr_nodes``,
``nr_participants``, ``nr``) are read-only properties derived from the Python list, so they
cannot disagree with it; the constructors still accept them (and ignore them).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import InitVar, dataclass, field, fields
from typing import Any, ClassVar, Iterable

from .constants import (
    CLUSTER_INFO_SIZE, EPOCH_LOG_SIZE, SD_ATTR_OBJ_SIZE, SD_CONFIG_SIZE, SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_DEFAULT_VNODES, SD_FORMAT_VERSION, SD_MAX_COPIES, SD_MAX_NODES, SD_MAX_VDI_ATTR_KEY_LEN,
    SD_MAX_VDI_ATTR_VALUE_LEN, SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN, SD_NODE_SIZE, SD_SHEEP_PROTO_VER,
    STORE_LEN, VDI_STATE_SIZE,
)

Buf = bytes | bytearray | memoryview


# ---------------------------------------------------------------- strings


def to_bytes(s: str | bytes | bytearray | memoryview) -> bytes:
    """Text to wire bytes (utf-8; surrogateescape so that `cstr` output round-trips)."""
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)


def pad(s: str | bytes, size: int) -> bytes:
    """A NUL-padded fixed-size C char array; longer input is an error, never silently cut."""
    raw = to_bytes(s)
    if len(raw) > size:
        raise ValueError(f"string of {len(raw)} bytes does not fit in {size}")
    return raw.ljust(size, b"\0")


def cstr(b: Buf) -> str:
    """The C string in a char array: bytes up to the first NUL."""
    raw = bytes(b)
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


def _counted(name: str, items: str):
    """Class decorator (outside @dataclass): InitVar ``name`` becomes ``len(self.<items>)``."""

    def apply(cls: Any) -> Any:
        setattr(cls, name, property(lambda self: len(getattr(self, items)),
                                    doc=f"len({items}); written to the wire on encode"))
        return cls

    return apply


def _need(buf: Buf, offset: int, size: int, what: str) -> None:
    if len(buf) - offset < size:
        raise ValueError(f"{what} needs {size} bytes at offset {offset}, buffer has {len(buf)}")


# ---------------------------------------------------------------- node_id / sd_node (§10.1)


def addr_to_str(addr: bytes) -> str:
    """`addr_to_str`: dotted quad for 12 zero bytes + non-zero byte 12, else inet_ntop IPv6."""
    if addr[12] != 0 and not any(addr[:12]):
        return socket.inet_ntop(socket.AF_INET, addr[12:16])
    return socket.inet_ntop(socket.AF_INET6, addr)


def str_to_addr(host: str) -> bytes:
    """Numeric host text to the 16-byte form (IPv4 = 12 zero bytes + 4, not ``::ffff:``)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        if ":" in host:
            return socket.inet_pton(socket.AF_INET6, host)
        return b"\0" * 12 + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(f"not a numeric IP address: {host!r}") from None


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """`struct node_id` (40 bytes). Ordering is `node_id_cmp`: addr bytes, then port."""

    addr: bytes
    port: int
    io_addr: bytes = b"\0" * 16
    io_port: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("<16sH16sH4x")
    SIZE: ClassVar[int] = 40

    @classmethod
    def from_host(cls, host: str, port: int) -> "NodeId":
        return cls(str_to_addr(host), port)

    @property
    def host(self) -> str:
        return addr_to_str(self.addr)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def log_str(self) -> str:
        """`node_id_to_str` form used in sheep logs."""
        family = "IPv4" if self.addr[12] != 0 and not any(self.addr[:12]) else "IPv6"
        return f"{family} ip:{self.host} port:{self.port}"

    def sort_key(self) -> tuple[bytes, int]:
        return (self.addr, self.port)

    def encode(self) -> bytes:
        return self._S.pack(self.addr, self.port, self.io_addr, self.io_port)

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "NodeId":
        _need(buf, offset, cls.SIZE, "node_id")
        return cls(*cls._S.unpack_from(buf, offset))


def default_zone(addr16: bytes) -> int:
    """Zone of a node started without ``-z``: last 4 address bytes as LE u32 (objects.md §9.4)."""
    return int.from_bytes(addr16[12:16], "little")


@dataclass(frozen=True, slots=True)
class SdNode:
    """`struct sd_node` (80 bytes). The 24-byte ``rb`` area is sent as zeros and ignored."""

    nid: NodeId
    nr_vnodes: int = SD_DEFAULT_VNODES
    zone: int = 0
    space: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("<24x16sH16sH4xH2xIQ")
    SIZE: ClassVar[int] = SD_NODE_SIZE

    def sort_key(self) -> tuple[bytes, int]:
        return self.nid.sort_key()

    def __str__(self) -> str:
        return str(self.nid)

    def encode(self) -> bytes:
        n = self.nid
        return self._S.pack(n.addr, n.port, n.io_addr, n.io_port, self.nr_vnodes, self.zone, self.space)

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "SdNode":
        _need(buf, offset, cls.SIZE, "sd_node")
        addr, port, io_addr, io_port, vnodes, zone, space = cls._S.unpack_from(buf, offset)
        return cls(NodeId(addr, port, io_addr, io_port), vnodes, zone, space)


def encode_nodes(nodes: Iterable[SdNode]) -> bytes:
    return b"".join(n.encode() for n in nodes)


def decode_nodes(buf: Buf, count: int, offset: int = 0) -> list[SdNode]:
    return [SdNode.decode(buf, offset + i * SD_NODE_SIZE) for i in range(count)]


def sort_nodes(nodes: Iterable[SdNode]) -> list[SdNode]:
    """Node order used by every node list (and by dog's node numbering)."""
    return sorted(nodes, key=SdNode.sort_key)


# ---------------------------------------------------------------- cluster_info (§10.3)


@_counted("nr_nodes", "nodes")
@dataclass
class ClusterInfo:
    """`struct cluster_info`: the join message and CLUSTER_INFO reply (491,568 bytes)."""

    proto_ver: int = SD_SHEEP_PROTO_VER
    disable_recovery: int = 0
    nr_nodes: InitVar[int | None] = None
    epoch: int = 0
    ctime: int = 0
    flags: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    status: int = 0
    block_size_shift: int = 0
    default_store: str = ""
    nodes: list[SdNode] = field(default_factory=list)

    _S: ClassVar[struct.Struct] = struct.Struct("<BBhIQHBBBB3x16s7x")
    SIZE: ClassVar[int] = CLUSTER_INFO_SIZE

    def __post_init__(self, nr_nodes: int | None) -> None:
        """``nr_nodes`` is accepted for symmetry with the C struct; ``len(nodes)`` wins."""

    def encode(self) -> bytes:
        if len(self.nodes) > SD_MAX_NODES:
            raise ValueError(f"{len(self.nodes)} nodes exceed SD_MAX_NODES")
        head = self._S.pack(
            self.proto_ver, self.disable_recovery, len(self.nodes), self.epoch, self.ctime,
            self.flags, self.nr_copies, self.copy_policy, self.status, self.block_size_shift,
            pad(self.default_store, STORE_LEN),
        )
        return (head + encode_nodes(self.nodes)).ljust(self.SIZE, b"\0")

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "ClusterInfo":
        _need(buf, offset, cls.SIZE, "cluster_info")
        (ver, dis, nr, epoch, ctime, flags, copies, policy, status, shift,
         store) = cls._S.unpack_from(buf, offset)
        nr = max(0, min(nr, SD_MAX_NODES))
        nodes = decode_nodes(buf, nr, offset + cls._S.size)
        return cls(proto_ver=ver, disable_recovery=dis, epoch=epoch, ctime=ctime, flags=flags,
                   nr_copies=copies, copy_policy=policy, status=status, block_size_shift=shift,
                   default_store=cstr(store), nodes=nodes)


# ---------------------------------------------------------------- epoch_log (§10.4)


@_counted("nr_nodes", "nodes")
@dataclass
class EpochLog:
    """`struct epoch_log`: one STAT_CLUSTER entry, a 48-byte header plus node slots."""

    ctime: int = 0
    time: int = 0
    epoch: int = 0
    nr_nodes: InitVar[int | None] = None
    disable_recovery: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    flags: int = 0
    drv_name: str = ""
    nodes: list[SdNode] = field(default_factory=list)

    _S: ClassVar[struct.Struct] = struct.Struct("<QQIIBBB3xH16s")
    HEADER_SIZE: ClassVar[int] = EPOCH_LOG_SIZE

    def __post_init__(self, nr_nodes: int | None) -> None:
        """``nr_nodes`` is accepted for symmetry with the C struct; ``len(nodes)`` wins."""

    @staticmethod
    def size(slots: int) -> int:
        return EPOCH_LOG_SIZE + slots * SD_NODE_SIZE

    def encode(self, slots: int) -> bytes:
        if len(self.nodes) > slots:
            raise ValueError(f"{len(self.nodes)} nodes do not fit in {slots} slots")
        head = self._S.pack(
            self.ctime, self.time, self.epoch, len(self.nodes), self.disable_recovery,
            self.nr_copies, self.copy_policy, self.flags, pad(self.drv_name, STORE_LEN),
        )
        return (head + encode_nodes(self.nodes)).ljust(self.size(slots), b"\0")

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0, slots: int = 0) -> "EpochLog":
        _need(buf, offset, cls.size(slots), "epoch_log")
        ctime, tm, epoch, nr, dis, copies, policy, flags, drv = cls._S.unpack_from(buf, offset)
        nodes = decode_nodes(buf, min(nr, slots), offset + EPOCH_LOG_SIZE)
        return cls(ctime=ctime, time=tm, epoch=epoch, disable_recovery=dis, nr_copies=copies,
                   copy_policy=policy, flags=flags, drv_name=cstr(drv), nodes=nodes)


def encode_epoch_file(nodes: Iterable[SdNode], time: int) -> bytes:
    """`epoch/%08u` content: the node array then a time_t (objects.md §11.3)."""
    return encode_nodes(nodes) + struct.pack("<q", time)


def decode_epoch_file(buf: Buf) -> tuple[list[SdNode], int]:
    if len(buf) < 8 or (len(buf) - 8) % SD_NODE_SIZE:
        raise ValueError(f"epoch file of {len(buf)} bytes is not nodes*80 + 8")
    count = (len(buf) - 8) // SD_NODE_SIZE
    (tm,) = struct.unpack_from("<q", buf, len(buf) - 8)
    return decode_nodes(buf, count), tm


# ---------------------------------------------------------------- vdi_state (§10.5)

LOCK_STATE_UNLOCKED = 1
LOCK_STATE_LOCKED = 2
LOCK_STATE_SHARED = 3
SHARED_LOCK_STATE_MODIFIED = 1
SHARED_LOCK_STATE_SHARED = 2
SHARED_LOCK_STATE_INVALIDATED = 3

_ZERO_NID = NodeId(b"\0" * 16, 0)


@_counted("nr_participants", "participants")
@dataclass
class VdiState:
    """`struct vdi_state`: per-vid state exchanged by GET_VDI_COPIES and checkpoints."""

    vid: int = 0
    nr_copies: int = 0
    snapshot: int = 0
    deleted: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    parent_vid: int = 0
    lock_state: int = LOCK_STATE_UNLOCKED
    lock_owner: NodeId = _ZERO_NID
    nr_participants: InitVar[int | None] = None
    participants_state: list[int] = field(default_factory=list)
    participants: list[NodeId] = field(default_factory=list)

    _S: ClassVar[struct.Struct] = struct.Struct("<IBBBBB3xII40sI")
    _STATES: ClassVar[struct.Struct] = struct.Struct(f"<{SD_MAX_COPIES}I")
    SIZE: ClassVar[int] = VDI_STATE_SIZE

    def __post_init__(self, nr_participants: int | None) -> None:
        """``nr_participants`` is accepted for symmetry; ``len(participants)`` wins."""

    def encode(self) -> bytes:
        n = len(self.participants)
        if n > SD_MAX_COPIES or len(self.participants_state) != n:
            raise ValueError("participants and participants_state must have equal length <= 31")
        states = list(self.participants_state) + [0] * (SD_MAX_COPIES - n)
        return (
            self._S.pack(self.vid, self.nr_copies, self.snapshot, self.deleted, self.copy_policy,
                         self.block_size_shift, self.parent_vid, self.lock_state,
                         self.lock_owner.encode(), n)
            + self._STATES.pack(*states)
            + b"".join(p.encode() for p in self.participants)
        ).ljust(self.SIZE, b"\0")

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "VdiState":
        _need(buf, offset, cls.SIZE, "vdi_state")
        (vid, copies, snap, deleted, policy, shift, parent, lock_state, owner,
         nr) = cls._S.unpack_from(buf, offset)
        nr = min(nr, SD_MAX_COPIES)
        states = list(cls._STATES.unpack_from(buf, offset + 64))[:nr]
        parts = [NodeId.decode(buf, offset + 188 + i * NodeId.SIZE) for i in range(nr)]
        return cls(vid=vid, nr_copies=copies, snapshot=snap, deleted=deleted, copy_policy=policy,
                   block_size_shift=shift, parent_vid=parent, lock_state=lock_state,
                   lock_owner=NodeId.decode(owner), participants_state=states, participants=parts)


# ---------------------------------------------------------------- sheepdog_config (objects.md §11.2)


@dataclass
class SheepdogConfig:
    """The 40-byte ``config`` file of a store directory."""

    ctime: int = 0
    flags: int = 0
    copies: int = 0
    default_store: str = ""
    shutdown: int = 0
    copy_policy: int = 0
    block_size_shift: int = SD_DEFAULT_BLOCK_SIZE_SHIFT
    version: int = SD_FORMAT_VERSION
    space: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("<QHB16sBBBHQ")
    SIZE: ClassVar[int] = SD_CONFIG_SIZE

    def encode(self) -> bytes:
        return self._S.pack(self.ctime, self.flags, self.copies, pad(self.default_store, STORE_LEN),
                            self.shutdown, self.copy_policy, self.block_size_shift, self.version,
                            self.space)

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "SheepdogConfig":
        _need(buf, offset, cls.SIZE, "sheepdog_config")
        ctime, flags, copies, store, shutdown, policy, shift, version, space = \
            cls._S.unpack_from(buf, offset)
        return cls(ctime, flags, copies, cstr(store), shutdown, policy, shift, version, space)


# ---------------------------------------------------------------- sheepdog_vdi_attr (objects.md §4)


@dataclass
class VdiAttr:
    """`struct sheepdog_vdi_attr` (66,320 bytes). ``value`` holds the first ``value_len`` bytes."""

    name: str = ""
    tag: str = ""
    ctime: int = 0
    snap_id: int = 0
    value_len: int = 0
    key: str = ""
    value: bytes = b""

    _S: ClassVar[struct.Struct] = struct.Struct(
        f"<{SD_MAX_VDI_LEN}s{SD_MAX_VDI_TAG_LEN}sQII{SD_MAX_VDI_ATTR_KEY_LEN}s")
    VALUE_OFFSET: ClassVar[int] = 784
    SIZE: ClassVar[int] = SD_ATTR_OBJ_SIZE

    def encode(self, size: int = SD_ATTR_OBJ_SIZE) -> bytes:
        """Encode to ``size`` bytes (a client may send only the header and the value)."""
        if len(self.value) > SD_MAX_VDI_ATTR_VALUE_LEN:
            raise ValueError("attribute value longer than 65,536 bytes")
        head = self._S.pack(pad(self.name, SD_MAX_VDI_LEN), pad(self.tag, SD_MAX_VDI_TAG_LEN),
                            self.ctime, self.snap_id, self.value_len,
                            pad(self.key, SD_MAX_VDI_ATTR_KEY_LEN))
        return (head + bytes(self.value)).ljust(self.SIZE, b"\0")[:size]

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "VdiAttr":
        """Short buffers (a partial create-write) read as zero-padded."""
        raw = bytes(buf[offset:offset + cls.SIZE])
        _need(raw, 0, cls.VALUE_OFFSET, "vdi_attr header")
        name, tag, ctime, snap_id, value_len, key = cls._S.unpack_from(raw, 0)
        vlen = min(value_len, SD_MAX_VDI_ATTR_VALUE_LEN)
        value = raw[cls.VALUE_OFFSET:cls.VALUE_OFFSET + vlen].ljust(vlen, b"\0")
        return cls(cstr(name), cstr(tag), ctime, snap_id, value_len, cstr(key), value)


# ---------------------------------------------------------------- recovery, stats, md (§10.6-10.8)


@dataclass
class RecoveryState:
    in_recovery: int = 0
    state: int = 0
    nr_finished: int = 0
    nr_total: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("<B3xIQQ")
    SIZE: ClassVar[int] = 24

    def encode(self) -> bytes:
        return self._S.pack(self.in_recovery, self.state, self.nr_finished, self.nr_total)

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "RecoveryState":
        _need(buf, offset, cls.SIZE, "recovery_state")
        return cls(*cls._S.unpack_from(buf, offset))


@dataclass
class RecoveryThrottling:
    max_exec_count: int = 0
    queue_work_interval: int = 0
    throttling: bool = False

    _S: ClassVar[struct.Struct] = struct.Struct("<I4xQ?7x")
    SIZE: ClassVar[int] = 24

    def encode(self) -> bytes:
        return self._S.pack(self.max_exec_count, self.queue_work_interval, self.throttling)

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "RecoveryThrottling":
        _need(buf, offset, cls.SIZE, "recovery_throttling")
        return cls(*cls._S.unpack_from(buf, offset))


@dataclass
class SdStat:
    """`struct sd_stat`: 15 u64 request counters, in wire order."""

    gway_active_nr: int = 0
    peer_active_nr: int = 0
    gway_total_nr: int = 0
    peer_total_nr: int = 0
    gway_total_rx: int = 0
    gway_total_tx: int = 0
    peer_total_rx: int = 0
    peer_total_tx: int = 0
    gway_total_remove_nr: int = 0
    gway_total_read_nr: int = 0
    gway_total_write_nr: int = 0
    gway_total_flush_nr: int = 0
    peer_total_remove_nr: int = 0
    peer_total_read_nr: int = 0
    peer_total_write_nr: int = 0

    _S: ClassVar[struct.Struct] = struct.Struct("<15Q")
    SIZE: ClassVar[int] = 120

    def encode(self) -> bytes:
        return self._S.pack(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "SdStat":
        _need(buf, offset, cls.SIZE, "sd_stat")
        return cls(*cls._S.unpack_from(buf, offset))


MD_MAX_DISK = 64
MD_PATH_LEN = 4096


@dataclass
class MdInfo:
    """`struct md_info`: one disk of a multi-disk node (4,120 bytes)."""

    idx: int = 0
    free: int = 0
    used: int = 0
    path: str = ""

    _S: ClassVar[struct.Struct] = struct.Struct(f"<i4xQQ{MD_PATH_LEN}s")
    SIZE: ClassVar[int] = 4120

    def encode(self) -> bytes:
        return self._S.pack(self.idx, self.free, self.used, pad(self.path, MD_PATH_LEN))

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "MdInfo":
        _need(buf, offset, cls.SIZE, "md_info")
        idx, free, used, path = cls._S.unpack_from(buf, offset)
        return cls(idx, free, used, cstr(path))


@_counted("nr", "disks")
@dataclass
class SdMdInfo:
    """`struct sd_md_info`: MD_INFO reply, 64 disk slots then ``nr`` (263,688 bytes)."""

    disks: list[MdInfo] = field(default_factory=list)
    nr: InitVar[int | None] = None

    NR_OFFSET: ClassVar[int] = MD_MAX_DISK * MdInfo.SIZE
    SIZE: ClassVar[int] = NR_OFFSET + 8

    def __post_init__(self, nr: int | None) -> None:
        """``nr`` is accepted for symmetry with the C struct; ``len(disks)`` wins."""

    def encode(self) -> bytes:
        if len(self.disks) > MD_MAX_DISK:
            raise ValueError(f"{len(self.disks)} disks exceed {MD_MAX_DISK}")
        body = b"".join(d.encode() for d in self.disks).ljust(self.NR_OFFSET, b"\0")
        return body + struct.pack("<i4x", len(self.disks))

    @classmethod
    def decode(cls, buf: Buf, offset: int = 0) -> "SdMdInfo":
        _need(buf, offset, cls.SIZE, "sd_md_info")
        (nr,) = struct.unpack_from("<i", buf, offset + cls.NR_OFFSET)
        nr = max(0, min(nr, MD_MAX_DISK))
        return cls([MdInfo.decode(buf, offset + i * MdInfo.SIZE) for i in range(nr)])


__all__ = [
    "to_bytes", "pad", "cstr", "addr_to_str", "str_to_addr", "NodeId", "SdNode", "default_zone",
    "encode_nodes", "decode_nodes", "sort_nodes", "ClusterInfo", "EpochLog", "encode_epoch_file",
    "decode_epoch_file", "VdiState", "SheepdogConfig", "VdiAttr", "RecoveryState",
    "RecoveryThrottling", "SdStat", "MdInfo", "SdMdInfo", "MD_MAX_DISK", "MD_PATH_LEN",
    "LOCK_STATE_UNLOCKED", "LOCK_STATE_LOCKED", "LOCK_STATE_SHARED",
    "SHARED_LOCK_STATE_MODIFIED", "SHARED_LOCK_STATE_SHARED", "SHARED_LOCK_STATE_INVALIDATED",
]
