"""Numbers of the Sheepdog wire contract (spec/wire.md, spec/objects.md).

Every opcode, flag, result code and size lives here once; everything else imports them.
"""
from __future__ import annotations

import enum

SD_LISTEN_PORT = 7000
SD_PROTO_VER = 0x02
SD_SHEEP_PROTO_VER = 0x0A

SD_NR_VDIS = 1 << 24
SD_DEFAULT_BLOCK_SIZE_SHIFT = 22
SD_MIN_BLOCK_SIZE_SHIFT = 20
SD_MAX_BLOCK_SIZE_SHIFT = 31
SD_DATA_OBJ_SIZE = 1 << 22
SD_INODE_DATA_INDEX = 1 << 20
MAX_DATA_OBJS = 1 << 32
SD_MAX_VDI_LEN = 256
SD_MAX_VDI_TAG_LEN = 256
SD_MAX_VDI_ATTR_KEY_LEN = 256
SD_MAX_VDI_ATTR_VALUE_LEN = 65536
SD_INODE_HEADER_SIZE = 4664
SD_INODE_DATA_INDEX_SIZE = 4 * SD_INODE_DATA_INDEX
SD_INODE_INDEX_END = SD_INODE_HEADER_SIZE + SD_INODE_DATA_INDEX_SIZE  # 4,198,968 (QEMU's inode size)
SD_INODE_SIZE = SD_INODE_INDEX_END + 8 * SD_INODE_DATA_INDEX  # 12,587,576
SD_ATTR_OBJ_SIZE = 66320
SD_LEDGER_OBJ_SIZE = 1 << 22
SD_OLD_MAX_VDI_SIZE = SD_DATA_OBJ_SIZE * SD_INODE_DATA_INDEX
SD_MAX_VDI_SIZE = SD_DATA_OBJ_SIZE * MAX_DATA_OBJS
SD_DEFAULT_COPIES = 3
SD_MAX_COPIES = 31
SD_EC_MAX_STRIP = 16
SD_EC_DATA_STRIPE_SIZE = 512
SD_DEFAULT_VNODES = 128
SD_MAX_NODES = 6144
SD_NODE_SIZE = 80
SD_FORMAT_VERSION = 6
SD_CONFIG_SIZE = 40
STORE_LEN = 16
VDI_BITMAP_SIZE = SD_NR_VDIS // 8  # 2,097,152 bytes on the wire
CLUSTER_INFO_SIZE = 48 + SD_MAX_NODES * SD_NODE_SIZE  # 491,568
EPOCH_LOG_SIZE = 48
VDI_STATE_SIZE = 1428
LOCK_TYPE_NORMAL = 0
LOCK_TYPE_SHARED = 1

# object id bits (objects.md §1)
VDI_BIT = 1 << 63
VMSTATE_BIT = 1 << 62
VDI_ATTR_BIT = 1 << 61
VDI_BTREE_BIT = 1 << 60
LEDGER_BIT = 1 << 59
VDI_SPACE_SHIFT = 32
SD_VDI_MASK = 0x00FFFFFF00000000


class Op(enum.IntEnum):
    """Opcodes (wire.md §7). Unregistered values are simply absent from the dispatch table."""

    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    MAKE_FS = 0x84
    SHUTDOWN = 0x85
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    FORCE_RECOVER = 0x8A
    GET_STORE_LIST = 0x90
    SNAPSHOT = 0x91
    RESTORE = 0x92
    GET_SNAP_FILE = 0x93
    CLEANUP = 0x94
    TRACE_STATUS = 0x95
    TRACE_READ_BUF = 0x96
    STAT_RECOVERY = 0x97
    FLUSH_DEL_CACHE = 0x98
    NOTIFY_VDI_DEL = 0x99
    KILL_NODE = 0x9A
    TRACE_ENABLE = 0x9B
    TRACE_DISABLE = 0x9C
    GET_OBJ_LIST = 0xA1
    GET_EPOCH = 0xA2
    CREATE_AND_WRITE_PEER = 0xA3
    READ_PEER = 0xA4
    WRITE_PEER = 0xA5
    REMOVE_PEER = 0xA6
    ENABLE_RECOVER = 0xA8
    DISABLE_RECOVER = 0xA9
    GET_VDI_COPIES = 0xAB
    COMPLETE_RECOVERY = 0xAC
    FLUSH_NODES = 0xAD
    FLUSH_PEER = 0xAE
    NOTIFY_VDI_ADD = 0xAF
    DELETE_CACHE = 0xB0
    MD_INFO = 0xB1
    MD_PLUG = 0xB2
    MD_UNPLUG = 0xB3
    GET_HASH = 0xB4
    REWEIGHT = 0xB5
    GET_CACHE_INFO = 0xB6
    CACHE_PURGE = 0xB7
    STAT = 0xB8
    GET_LOGLEVEL = 0xB9
    SET_LOGLEVEL = 0xBA
    NFS_CREATE = 0xBB
    NFS_DELETE = 0xBC
    EXIST = 0xBD
    CLUSTER_INFO = 0xBE
    ALTER_CLUSTER_COPY = 0xBF
    ALTER_VDI_COPY = 0xC0
    DECREF_OBJ = 0xC1
    DECREF_PEER = 0xC2
    PREVENT_INODE_UPDATE = 0xC3
    ALLOW_INODE_UPDATE = 0xC4
    REPAIR_REPLICA = 0xC5
    OIDS_EXIST = 0xC6
    VDI_STATE_CHECKPOINT_CTL = 0xC7
    INODE_COHERENCE = 0xC8
    READ_DEL_VDIS = 0xC9
    GET_RECOVERY = 0xCA
    SET_RECOVERY = 0xCB
    SET_VNODES = 0xCC
    GET_VNODES = 0xCD
    LOCAL_OBJ = 0xE0  # ours: a same-host client's grant to an object file (shortcircuit.py)


# Gateway-to-peer opcode map (wire.md §7).
GATEWAY_TO_PEER = {
    Op.CREATE_AND_WRITE_OBJ: Op.CREATE_AND_WRITE_PEER,
    Op.READ_OBJ: Op.READ_PEER,
    Op.WRITE_OBJ: Op.WRITE_PEER,
    Op.REMOVE_OBJ: Op.REMOVE_PEER,
    Op.DECREF_OBJ: Op.DECREF_PEER,
}


class Flag(enum.IntFlag):
    """Request flags (wire.md §5.1). CREAT shares its bit with WILDCARD."""

    CMD_WRITE = 0x0001
    CMD_COW = 0x0002
    CMD_CACHE = 0x0004
    CMD_DIRECT = 0x0008
    CMD_PIGGYBACK = 0x0010
    CMD_TGT = 0x0020
    CMD_FWD = 0x0040
    CMD_RECOVERY = 0x0080
    CMD_WILDCARD = 0x0100
    CMD_EXCL = 0x0200
    CMD_DEL = 0x0400


FLAG_CMD_CREAT = 0x0100  # GET_VDI_ATTR meaning of the WILDCARD bit
# Extension (not in sheep 1.0): LOCK_VDI with this bit ties the lock to the requesting
# connection, which releases it when it closes (a client that dies loses its lock).
# Clients of the original never set it and keep the original's node-owned locks.
FLAG_CMD_CONN_LOCK = 0x0800


class ClusterFlag(enum.IntFlag):
    STRICT = 0x0001
    DISKMODE = 0x0002
    AUTO_VNODES = 0x0004
    USE_LOCK = 0x0008
    RECYCLE_VID = 0x0010
    AVOID_DISKFULL = 0x0020


class Status(enum.IntEnum):
    OK = 1
    WAIT = 2
    SHUTDOWN = 3
    KILLED = 4


class Res(enum.IntEnum):
    SUCCESS = 0x00
    UNKNOWN = 0x01
    NO_OBJ = 0x02
    EIO = 0x03
    VDI_EXIST = 0x04
    INVALID_PARMS = 0x05
    SYSTEM_ERROR = 0x06
    VDI_LOCKED = 0x07
    NO_VDI = 0x08
    NO_BASE_VDI = 0x09
    VDI_READ = 0x0A
    VDI_WRITE = 0x0B
    BASE_VDI_READ = 0x0C
    BASE_VDI_WRITE = 0x0D
    NO_TAG = 0x0E
    STARTUP = 0x0F
    VDI_NOT_LOCKED = 0x10
    SHUTDOWN = 0x11
    NO_MEM = 0x12
    FULL_VDI = 0x13
    VER_MISMATCH = 0x14
    NO_SPACE = 0x15
    WAIT_FOR_FORMAT = 0x16
    WAIT_FOR_JOIN = 0x17
    JOIN_FAILED = 0x18
    HALT = 0x19
    READONLY = 0x1A
    INODE_INVALIDATED = 0x1D
    OLD_NODE_VER = 0x81
    NEW_NODE_VER = 0x82
    NOT_FORMATTED = 0x83
    INVALID_CTIME = 0x84
    INVALID_EPOCH = 0x85
    NETWORK_ERROR = 0x86
    NO_CACHE = 0x87
    BUFFER_SMALL = 0x88
    FORCE_RECOVER = 0x89
    NO_STORE = 0x8A
    NO_SUPPORT = 0x8B
    NODE_IN_RECOVERY = 0x8C
    KILLED = 0x8D
    OID_EXIST = 0x8E
    AGAIN = 0x8F
    STALE_OBJ = 0x90
    CLUSTER_ERROR = 0x91
    VDI_NOT_EMPTY = 0x92
    NOT_FOUND = 0x93
    INCOMPLETE = 0x94
    COLLECTING_CINFO = 0x95
    GATEWAY_MODE = 0x97
    INVALID_VNODES_STRATEGY = 0x98
    NO_CHECKPOINT_ENTRY = 0x99


_STRERROR = {
    Res.SUCCESS: "Success",
    Res.UNKNOWN: "Unknown error",
    Res.NO_OBJ: "No object found",
    Res.EIO: "I/O error",
    Res.VDI_EXIST: "VDI exists already",
    Res.INVALID_PARMS: "Invalid parameters",
    Res.SYSTEM_ERROR: "System error",
    Res.VDI_LOCKED: "VDI is already locked",
    Res.NO_VDI: "No VDI found",
    Res.NO_BASE_VDI: "No base VDI found",
    Res.VDI_READ: "Failed to read from requested VDI",
    Res.VDI_WRITE: "Failed to write to requested VDI",
    Res.BASE_VDI_READ: "Failed to read from base VDI",
    Res.BASE_VDI_WRITE: "Failed to write to base VDI",
    Res.NO_TAG: "Failed to find requested tag",
    Res.STARTUP: "System is still booting",
    Res.VDI_NOT_LOCKED: "VDI is not locked",
    Res.SHUTDOWN: "System is shutting down",
    Res.NO_MEM: "Out of memory on server",
    Res.FULL_VDI: "Maximum number of VDIs reached",
    Res.VER_MISMATCH: "Protocol version mismatch",
    Res.NO_SPACE: "Server has no space for new objects",
    Res.WAIT_FOR_FORMAT: "Waiting for cluster to be formatted",
    Res.WAIT_FOR_JOIN: "Waiting for other nodes to join cluster",
    Res.JOIN_FAILED: "Node has failed to join cluster",
    Res.HALT: "IO has halted as there are not enough living nodes",
    Res.READONLY: "Object is read-only",
    Res.INODE_INVALIDATED: "Inode object is invalidated",
    Res.OLD_NODE_VER: "Request has an old epoch",
    Res.NEW_NODE_VER: "Request has a new epoch",
    Res.NOT_FORMATTED: "Cluster has not been formatted",
    Res.INVALID_CTIME: "Creation times differ",
    Res.INVALID_EPOCH: "Invalid epoch",
    Res.NETWORK_ERROR: "Network error between sheep",
    Res.NO_CACHE: "No cache object found",
    Res.BUFFER_SMALL: "The buffer is too small",
    Res.FORCE_RECOVER: "Cluster is running/halted and cannot be force recovered",
    Res.NO_STORE: "Targeted backend store is not found",
    Res.NO_SUPPORT: "Operation is not supported",
    Res.NODE_IN_RECOVERY: "Targeted node is in recovery",
    Res.KILLED: "Node is killed",
    Res.OID_EXIST: "Object ID exists already",
    Res.AGAIN: "Ask to try again",
    Res.STALE_OBJ: "Object may be stale",
    Res.CLUSTER_ERROR: "Cluster driver error",
    Res.GATEWAY_MODE: "Targeted node is gateway mode",
    Res.INVALID_VNODES_STRATEGY: "Invalid cluster vnodes strategy",
}


def strerror(result: int) -> str:
    """`sd_strerror`: the text dog prints for a result code."""
    try:
        return _STRERROR[Res(result)]
    except (ValueError, KeyError):
        return f"Invalid error code {result:x}"
