"""`dog node md {info|plug|unplug}` (dog/node.c; dog.md §5): the disks of a multi-disk node.

Formatting is in pure functions; the commands send MD_INFO / MD_PLUG / MD_UNPLUG
(wire.md §9.4) to the `-a/-p` sheep (`info -A`: to every node).
"""
from __future__ import annotations

from typing import Callable

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import Flag, Op, Res
from sheep.proto.header import Request
from sheep.proto.sizes import strnumber
from sheep.proto.structs import MdInfo, NodeId, SdMdInfo

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, Context, confirm, err, out, report_conn_error, run_nested,
)
from .node import use_percent

MD_HEADER = "Id\tSize\tUsed\tAvail\tUse%\tPath\n"


def caution(sentence: str) -> str:
    """The sheep-art confirmation frame of dog.md §8 around ``sentence``."""
    return ("    __\n"
            "   ()'`;\n"
            "   /\\|`\n"
            f"  /  |   {sentence}\n"
            "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


PLUG_PROMPT = caution("Caution! The directories to be plugged will be purged.")
UNPLUG_PROMPT = caution("Caution! Recovery will be triggered after unplugging.")
REQUEST_FAILED = "Failed to execute request, look for sheep.log for more information"


def md_row(disk: MdInfo, address: str, raw: bool = False) -> str:
    """One disk: size = free + used, use% = used / size (``"%2d\\t%s\\t%s\\t%s\\t%3d%%\\t%s"``)."""
    size = disk.free + disk.used
    pct = use_percent(size, disk.free)
    cells = (strnumber(size, raw), strnumber(disk.used, raw), strnumber(disk.free, raw))
    if raw:
        return f"{address} {disk.idx} {cells[0]} {cells[1]} {cells[2]} {pct}% {disk.path}\n"
    return f"{disk.idx:2d}\t{cells[0]}\t{cells[1]}\t{cells[2]}\t{pct:3d}%\t{disk.path}\n"


def md_rows(info: SdMdInfo, address: str, raw: bool = False) -> str:
    return "".join(md_row(d, address, raw) for d in info.disks)


def _node_md_info(ctx: Context, host: str, port: int) -> int:
    """MD_INFO to one sheep and its rows."""
    try:
        rsp, data = ctx.client(host, port).call(Request(Op.MD_INFO, data_length=SdMdInfo.SIZE))
    except SheepConnectionError as e:
        report_conn_error(e)
        return EXIT_SYSFAIL
    if rsp.result != Res.SUCCESS:
        err(f"failed to get multi-disk information: {SheepError(rsp.result)}")
        return EXIT_FAILURE
    info = SdMdInfo.decode(bytes(data).ljust(SdMdInfo.SIZE, b"\0"))
    out(md_rows(info, str(NodeId.from_host(host, port)), ctx.raw))
    return EXIT_SUCCESS


def md_info(ctx: Context, args: list[str]) -> int:
    if not ctx.raw:
        out(MD_HEADER)
    if not ctx.opts.all_nodes:
        return _node_md_info(ctx, ctx.host, ctx.port)
    for i, n in enumerate(ctx.nodes):
        if not ctx.raw:
            out(f"Node {i}:\n")
        if _node_md_info(ctx, n.nid.host, n.nid.port) != EXIT_SUCCESS:
            return EXIT_FAILURE
    return EXIT_SUCCESS


def _plug_unplug(ctx: Context, disks: str, opcode: int) -> int:
    """MD_PLUG / MD_UNPLUG with the comma list as a NUL-terminated payload."""
    if not disks:
        err("Empty path isn't allowed")
        return EXIT_FAILURE
    payload = disks.encode("utf-8", "surrogateescape") + b"\0"
    try:
        rsp, _ = ctx.client().call(Request(opcode, flags=Flag.CMD_WRITE, data_length=len(payload)),
                                   payload)
    except SheepConnectionError as e:
        report_conn_error(e)
        return EXIT_SYSFAIL
    if rsp.result != Res.SUCCESS:
        err(REQUEST_FAILED)
        return EXIT_FAILURE
    return EXIT_SUCCESS


def md_plug(ctx: Context, args: list[str]) -> int:
    if not ctx.opts.force:
        confirm(PLUG_PROMPT)
    return _plug_unplug(ctx, args[0], Op.MD_PLUG)


def md_unplug(ctx: Context, args: list[str]) -> int:
    if not ctx.opts.force:
        confirm(UNPLUG_PROMPT)
    return _plug_unplug(ctx, args[0], Op.MD_UNPLUG)


MD_HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "info": md_info,
    "plug": md_plug,
    "unplug": md_unplug,
}


def node_md(ctx: Context, args: list[str]) -> int:
    """`dog node md`: the nested subcommands above."""
    return run_nested(ctx, args, MD_HANDLERS)


__all__ = ["node_md", "md_row", "md_rows", "MD_HEADER", "PLUG_PROMPT", "UNPLUG_PROMPT", "caution"]
