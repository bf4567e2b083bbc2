"""Helpers shared by the dog command groups (the Python side of dog/common.c and dog/dog.c).

Output goes through ``out``/``err`` so that stdout carries results and stderr every message
(dog.md §1.1), and so that tests can capture both.  Commands return exit codes like the C
functions do; ``DogExit`` plays the role of C's ``exit()`` deep inside helpers.
"""
from __future__ import annotations

import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from sheep.client.api import Client
from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import (
    EPOCH_LOG_SIZE, SD_DEFAULT_COPIES, SD_INODE_DATA_INDEX, SD_INODE_DATA_INDEX_SIZE, SD_INODE_HEADER_SIZE,
    SD_INODE_SIZE, SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN, Flag, Op, Res,
)
from sheep.proto.header import ClusterArgs, Request
from sheep.proto.inode import STORE_POLICY_HYPER, Inode, InodeHeader, hyper_index_entries
from sheep.proto.oid import vid_to_vdi_oid
from sheep.proto.placement import Ring
from sheep.proto.sizes import parse_copies, parse_size
from sheep.proto.structs import EpochLog, SdNode

from . import helptext
from .helptext import Command, Sub

# include/exits.h (dog.md §1.2)
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_SYSFAIL = 2
EXIT_EXISTS = 3
EXIT_FULL = 4
EXIT_MISSING = 5
EXIT_USAGE = 64

SIZE_HINT = ("You may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, "
             "gigabytes, terabytes and petabytes.")
COPIES_HINT = ("To create replicated vdi, set -c x\n"
               "  x(1 to 31)   - number of replicated copies\n"
               "To create erasure coded vdi, set -c x:y\n"
               "  x(2,4,8,16)  - number of data strips\n"
               "  y(1 to 15)   - number of parity strips")


class DogExit(Exception):
    """C's ``exit(code)`` from anywhere below the dispatcher."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------- output


def out(text: str) -> None:
    """Results: stdout, text exactly as given."""
    sys.stdout.write(text)


def err(msg: str) -> None:
    """Errors, warnings and sd_info: stderr, the bare message plus a newline."""
    sys.stdout.flush()
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def out_bytes(data: bytes | bytearray | memoryview) -> None:
    """Raw bytes to stdout (vdi read), after any pending text."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)


def report_conn_error(exc: SheepConnectionError) -> None:
    """dog's socket cache tries a connection twice, so a refused connect is reported twice."""
    msg = str(exc)
    err(msg)
    if msg.startswith("failed to connect"):
        err(msg)


def cpad(s: str, width: int, left: bool = False) -> str:
    """printf ``%-Ns`` / ``%Ns``: the width counts bytes, as in C."""
    n = len(s.encode("utf-8", "surrogateescape"))
    fill = " " * max(0, width - n)
    return s + fill if left else fill + s


def localtime_str(t: int, fmt: str) -> str:
    """strftime of a time_t in the local time zone (dog.md §3)."""
    try:
        return time.strftime(fmt, time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return str(t)


def show_progress(done: int, total: int, raw: bool = False) -> None:
    """`show_progress`: ``" 45.0 % [====>   ] 180 MB / 400 MB"``, only on a terminal."""
    if not sys.stdout.isatty() or total <= 0:
        return
    from sheep.proto.sizes import strnumber
    width = shutil.get_terminal_size((80, 24)).columns
    bar_length = width - 30
    cells = []
    for i in range(max(0, bar_length)):
        if total * (i + 1) // bar_length <= done:
            cells.append("=")
        elif total * i // bar_length <= done < total * (i + 1) // bar_length:
            cells.append(">")
        else:
            cells.append(" ")
    line = (f"{done / total * 100:5.1f} % [{''.join(cells)}] "
            f"{strnumber(done, raw)} / {strnumber(total, raw)}")
    out("\r" + line[:width].ljust(width))
    if done == total:
        out("\n")
    sys.stdout.flush()


def confirm(message: str) -> None:
    """`confirm`: anything not starting with "yes" (case-insensitive), EOF included, exits 0."""
    out(message)
    sys.stdout.flush()
    try:
        line = sys.stdin.readline(7) if sys.stdin is not None else ""  # fgets(input, 8, stdin)
    except (OSError, ValueError):
        line = ""
    if not line.lower().startswith("yes"):
        raise DogExit(EXIT_SUCCESS)



def alter_copy_target(ctx: "Context", copies: int, force: bool, whose: str) -> int:
    """The copy count `vdi alter-copy` / `cluster alter-copy` move to: the default when
    none was given (said on stdout), confirmed when it exceeds the node count."""
    if not copies:
        copies = SD_DEFAULT_COPIES
        out(f"{whose} redundancy level is not specified, use {copies} as default.\n")
    nr_nodes = len(ctx.nodes)
    if not force and copies > nr_nodes:
        confirm(f"Number of copies ({copies}) is larger than number of nodes ({nr_nodes}).\n"
                f"Are you sure you want to continue? [yes/no]: ")
    return copies

# ---------------------------------------------------------------- argument syntax


def c_strtol(text: str, base: int = 10) -> tuple[int, int]:
    """``strtol``: (value, characters consumed); consumed == 0 means no number (dog.md §2)."""
    m = re.match(r"\s*([+-]?)", text)
    pos = m.end() if m else 0
    if base == 16 and text[pos:pos + 2].lower() == "0x" and \
            re.match(r"[0-9a-fA-F]", text[pos + 2:pos + 3]):
        pos += 2
    digits = re.match(r"[0-9a-fA-F]+" if base == 16 else r"[0-9]+", text[pos:])
    if not digits:
        return 0, 0
    value = int(digits.group(), base)
    return (-value if m and m.group(1) == "-" else value), pos + digits.end()


def is_numeric(text: str) -> bool:
    """dog's ``is_numeric``: non-empty and all ASCII digits."""
    return bool(text) and text.isascii() and text.isdigit()


def parse_size_arg(text: str) -> int | None:
    """`option_parse_size`: None after printing the two-line message (callers exit 64)."""
    try:
        return parse_size(text)
    except ValueError as e:
        err(str(e))
        err(SIZE_HINT)
        return None


def parse_copies_opt(text: str) -> tuple[int, int]:
    """``-c`` of vdi and cluster: (copies, policy), or exit 1 with dog's explanation."""
    try:
        return parse_copies(text)
    except ValueError as e:
        err(f"{e}\n{COPIES_HINT}")
        raise DogExit(EXIT_FAILURE) from None


def parse_shift_opt(text: str) -> int:
    """``-z``: ``(uint8_t)atoi(opt)`` limited to 20..31, else exit 1."""
    value, _ = c_strtol(text)
    shift = value & 0xFF
    if shift > 31:
        err("Object Size is limited to 2^31. Please set shift bit lower than 31")
        raise DogExit(EXIT_FAILURE)
    if shift < 20:
        err("Object Size is larger than 2^20. Please set shift bit larger than 20")
        raise DogExit(EXIT_FAILURE)
    return shift


def parse_snapshot_opt(text: str) -> tuple[int, str]:
    """``-s``/``-F``: a decimal snapshot id (0 refused) or a tag, as (snapid, tag)."""
    value, used = c_strtol(text)
    if used == 0 or used != len(text):
        return 0, text
    if value == 0:
        err("The snapshot id must be larger than zero")
        raise DogExit(EXIT_FAILURE)
    return value & 0xFFFFFFFF, ""


def c_name(text: str, size: int = SD_MAX_VDI_LEN) -> bytes:
    """``pstrcpy(buf, size, s)``: at most size-1 bytes go on the wire."""
    return text.encode("utf-8", "surrogateescape")[:size - 1]


def c_text(text: str, size: int) -> str:
    """`c_name` as text: what a ``char[size]`` filled by ``pstrcpy`` holds."""
    return c_name(text, size).decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- the running command


@dataclass
class Context:
    """What dog's globals hold: target sheep, output modes, node list, cached connections."""

    cmd: Command
    sub: Sub
    opts: Any = None  # the command group's option dataclass
    host: str = "127.0.0.1"
    port: int = 7000
    raw: bool = False
    verbose: bool = False
    elapsed: bool = False
    json: bool = False
    nodes: list[SdNode] = field(default_factory=list)
    epoch: int = 0
    cluster_flags: int = 0
    _clients: dict[tuple[str, int], Client] = field(default_factory=dict)
    _ring: Ring | None = None

    def usage(self, sub: Sub | None = None) -> str:
        return helptext.subcommand_usage(self.cmd, sub or self.sub)

    def client(self, host: str | None = None, port: int | None = None) -> Client:
        """A cached connection to the target sheep (or another node); may raise
        SheepConnectionError."""
        key = (host or self.host, port or self.port)
        cl = self._clients.get(key)
        if cl is None or cl.conn.closed:
            cl = Client(key[0], key[1])
            self._clients[key] = cl
        return cl

    def node_client(self, node: SdNode) -> Client:
        return self.client(node.nid.host, node.nid.port)

    def close(self) -> None:
        for cl in self._clients.values():
            cl.close()
        self._clients.clear()

    @property
    def ring(self) -> Ring:
        if self._ring is None:
            self._ring = Ring(self.nodes)
        return self._ring

    @property
    def nr_zones(self) -> int:
        return len({n.zone for n in self.nodes})

    def update_node_list(self) -> None:
        """`update_node_list`: GET_NODE_LIST then a 48-byte STAT_CLUSTER (epoch and flags)."""
        try:
            cl = self.client()
            nodes = cl.get_node_list()
        except SheepConnectionError as e:
            report_conn_error(e)
            err("Failed to get node list")
            raise DogExit(EXIT_SYSFAIL) from None
        except SheepError as e:
            err(f"Failed to update node list: {e}")
            err("Failed to get node list")
            raise DogExit(EXIT_SYSFAIL) from None
        if not nodes:
            err("There are no active sheep daemons")
            raise DogExit(EXIT_FAILURE)
        try:
            rsp, data = cl.call(Request(Op.STAT_CLUSTER, 0, EPOCH_LOG_SIZE, args=ClusterArgs()))
        except SheepConnectionError as e:
            report_conn_error(e)
            err("Failed to get node list")
            raise DogExit(EXIT_SYSFAIL) from None
        self.nodes = nodes
        self._ring = None
        self.epoch = rsp.epoch
        if rsp.data_length >= EPOCH_LOG_SIZE:
            self.cluster_flags = EpochLog.decode(data, 0, 0).flags


# ---------------------------------------------------------------- VDIs


def describe_open_failure(name: str, snapid: int, tag: str, result: int | str) -> str:
    text = result if isinstance(result, str) else str(SheepError(result))
    return f"Failed to open VDI {name} (snapshot id: {snapid} snapshot tag: {tag}): {text}"


def find_vdi(ctx: Context, name: str, snapid: int = 0, tag: str = "") -> tuple[int, int]:
    """`find_vdi_name`: (result, vid); a transport failure reads as EIO, as in dog."""
    try:
        rsp = ctx.client().get_vdi_info(c_name(name), c_name(tag, SD_MAX_VDI_TAG_LEN), snapid)
    except SheepError as e:
        return e.result, 0
    except SheepConnectionError as e:
        report_conn_error(e)
        return Res.EIO, 0
    return Res.SUCCESS, rsp.vdi_id


def dog_read_object(ctx: Context, oid: int, length: int, offset: int = 0,
                    direct: bool = True) -> bytes | bytearray | memoryview | None:
    """`dog_read_object`: None after "Failed to read object ..." (dog's own message)."""
    try:
        return ctx.client().read_object(oid, offset, length,
                                        flags=Flag.CMD_DIRECT if direct else 0)
    except SheepConnectionError as e:
        report_conn_error(e)
        err(f"Failed to read object {oid:x}")
    except SheepError as e:
        err(f"Failed to read object {oid:x} {e}")
    return None


def dog_write_object(ctx: Context, req: Request, data: bytes | None) -> bool:
    """`dog_write_object` for a prepared request: False after "Failed to write object ..."."""
    oid = req.args.oid
    try:
        ctx.client().checked(req, data)
    except SheepConnectionError as e:
        report_conn_error(e)
        err(f"Failed to write object {oid:x}")
        return False
    except SheepError as e:
        err(f"Failed to write object {oid:x}: {e}")
        return False
    return True


_obj_request = Client.obj_request  # bound early: tests swap ``Client`` for a fake connector


def obj_req(opcode: int, oid: int, length: int, offset: int, h: InodeHeader, flags: int = 0,
            cow_oid: int = 0) -> Request:
    """An object request carrying the VDI's redundancy, as dog_write_object builds it."""
    return _obj_request(opcode, oid, length, offset, flags=flags, copies=h.nr_copies,
                              copy_policy=h.copy_policy, cow_oid=cow_oid)


def all_ok(ctx: Context, items: list[tuple[Request, bytes | bytearray | memoryview | None]]
           ) -> bool:
    """Pipelined object writes; the first failure is reported as dog_write_object does."""
    for (req, _), (rsp, _) in zip(items, ctx.client().conn.call_many(items)):
        if rsp.result != Res.SUCCESS:
            err(f"Failed to write object {req.args.oid:x}: {SheepError(rsp.result)}")
            return False
    return True


def vdi_flag(h: InodeHeader, raw: bool = False) -> str:
    """The list/lock-list flag: ``s`` snapshot, ``c`` clone, else a space (``=`` raw)."""
    if h.is_snapshot:
        return "s"
    if h.snap_id == 1 and h.parent_vdi_id != 0:
        return "c"
    return "=" if raw else " "


def read_vdi_obj(ctx: Context, name: str, snapid: int = 0, tag: str = "", *,
                 header_only: bool = False) -> tuple[int, Inode] | None:
    """`read_vdi_obj`: resolve and read the inode (DIRECT); None after the error message."""
    result, vid = find_vdi(ctx, name, snapid, tag)
    if result != Res.SUCCESS:
        err(describe_open_failure(name, snapid, tag, result))
        return None
    data = dog_read_object(ctx, vid_to_vdi_oid(vid),
                           SD_INODE_HEADER_SIZE if header_only else SD_INODE_SIZE)
    if data is None:
        if snapid:
            err(f"Failed to read a snapshot {name}:{snapid}")
        elif tag:
            err(f"Failed to read a snapshot {name}:{tag}")
        else:
            err(f"Failed to read a vdi {name}")
        return None
    return vid, Inode.decode(data)


def _set_bits(bitmap: bytes | bytearray | memoryview) -> Iterator[int]:
    """Set bit numbers of a vid bitmap (bit v = byte v>>3, bit v&7), ascending."""
    for m in re.finditer(rb"[^\x00]", bytes(bitmap)):
        byte, base = m.group()[0], m.start() * 8
        for bit in range(8):
            if byte >> bit & 1:
                yield base + bit


def read_inode_for_scan(ctx: Context, vid: int, with_index: bool) -> Inode | None:
    """The header, plus (``with_index``) only the used part of the index, as `parse_vdi`
    reads it (`sd_inode_get_meta_size`); None after dog's messages."""
    oid = vid_to_vdi_oid(vid)
    head = dog_read_object(ctx, oid, SD_INODE_HEADER_SIZE)
    if head is None:
        err("Failed to read inode header")
        return None
    if not with_index:
        return Inode.decode(head)
    hdr = Inode.decode(head).header
    if hdr.store_policy == STORE_POLICY_HYPER:
        length = SD_INODE_DATA_INDEX_SIZE
    else:
        length = min(hdr.count_data_objs * 4, SD_INODE_DATA_INDEX_SIZE)
    body = dog_read_object(ctx, oid, length, SD_INODE_HEADER_SIZE) if length else b""
    if body is None:
        err("Failed to read inode")
        return None
    return Inode.decode(bytes(head[:SD_INODE_HEADER_SIZE]) + bytes(body))


def parse_vdi(ctx: Context, with_index: bool, no_deleted: bool = True
              ) -> Iterator[tuple[int, Inode]]:
    """`parse_vdi`: (vid, inode) of every live VDI in ascending vid order.

    A READ_VDIS/READ_DEL_VDIS error result prints its text and ends the scan quietly (dog
    then exits 0); a transport error propagates (exit 2).
    """
    cl = ctx.client()
    try:
        inuse = cl.read_vdis()
        deleted = cl.read_del_vdis()
    except SheepError as e:
        err(str(e))
        return
    dele = bytes(deleted)
    for vid in _set_bits(inuse):
        if no_deleted and dele[vid >> 3] >> (vid & 7) & 1:
            continue
        inode = read_inode_for_scan(ctx, vid, with_index)
        if inode is None or not inode.header.name:
            continue
        yield vid, inode


def index_entries(ctx: Context, inode: Inode) -> Iterator[tuple[int, int]]:
    """(idx, vid) of every allocated entry below ``count_data_objs``, flat or B-tree
    (hyper volumes; their B-tree node objects are read through the target sheep)."""
    h = inode.header
    limit = h.count_data_objs
    if h.store_policy != STORE_POLICY_HYPER:
        for idx in inode.used_indexes():
            if idx >= limit:
                break
            yield idx, inode.data_vdi_id[idx]
        return
    cl = ctx.client()

    def read_node(oid: int, offset: int, length: int) -> bytes | bytearray | memoryview:
        return cl.read_object(oid, offset, length, flags=Flag.CMD_DIRECT)

    for idx, vid in hyper_index_entries(inode.data_vdi_id, read_node):
        if idx < limit:
            yield idx, vid


def index_get(ctx: Context, inode: Inode, idx: int) -> int:
    """``sd_inode_get_vid``: the entry of ``idx`` (0 when unallocated or out of range)."""
    if inode.header.store_policy != STORE_POLICY_HYPER:
        return inode.get_vid(idx) if 0 <= idx < SD_INODE_DATA_INDEX else 0
    for i, vid in index_entries(ctx, inode):
        if i == idx:
            return vid
    return 0


def resolve_host(text: str) -> str | None:
    """`str_to_addr`: getaddrinfo, first answer, as numeric text (None if unresolvable)."""
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    if not infos:
        return None
    return str(infos[0][4][0])



def run_nested(ctx: Context, args: list[str],
               handlers: dict[str, Callable[[Context, list[str]], int]]) -> int:
    """`do_generic_subcommand`: ``dog vdi object location ...`` style second-level commands.

    An unknown or missing nested name prints the usage and exits 1; a missing operand
    prints the usage and exits 64.
    """
    name = args[0] if args else None
    nested = next((s for s in ctx.sub.subs if s.name == name), None)
    if nested is None:
        out(ctx.usage())
        raise DogExit(EXIT_FAILURE)
    if nested.flags & helptext.NEED_NODELIST:
        ctx.update_node_list()
    if nested.flags & helptext.NEED_ARG and len(args) < 2:
        out(ctx.usage())
        raise DogExit(EXIT_USAGE)
    fn = handlers.get(nested.name)
    if fn is None:
        err(f"{ctx.cmd.name} {ctx.sub.name} {nested.name}: not implemented yet")
        return EXIT_FAILURE
    return fn(ctx, args[1:])


def send_light_req(ctx: Context, req: Request, host: str | None = None,
                   port: int | None = None) -> bool:
    """`send_light_req`: a header-only request; False after reporting a failure."""
    try:
        rsp, _ = ctx.client(host, port).call(req)
    except SheepConnectionError as e:
        report_conn_error(e)
        return False
    if rsp.result != Res.SUCCESS:
        err(f"Response's result: {SheepError(rsp.result)}")
        return False
    return True
