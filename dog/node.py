"""`dog node ...` (dog/node.c; dog.md §5).  Output formatting lives in pure functions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import Op, Res
from sheep.proto.header import NodeRsp, Request
from sheep.proto.sizes import strnumber
from sheep.proto.structs import SdNode

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context, DogExit, cpad, err,
    is_numeric, out, parse_vdi, report_conn_error, send_light_req,
)


@dataclass
class Options:
    """`struct node_cmd_data`."""

    all_nodes: bool = False
    recovery_progress: bool = False
    watch: bool = False
    local: bool = False
    force: bool = False


_FLAGS = {"A": "all_nodes", "P": "recovery_progress", "w": "watch", "l": "local", "f": "force"}


def parse_option(o: Options, ch: str, arg: str) -> None:
    """`node_parser`: every node option is a flag."""
    if ch in _FLAGS:
        setattr(o, _FLAGS[ch], True)


# ---------------------------------------------------------------- formatting (pure)

LIST_HEADER = "  Id   Host:Port         V-Nodes       Zone\n"
INFO_HEADER = "Id\tSize\tUsed\tAvail\tUse%\n"


def node_list_row(i: int, n: SdNode, raw: bool = False) -> str:
    if raw:
        return f"{i} {n.nid} {n.nr_vnodes} {n.zone}\n"
    return f"{i:4d}   {cpad(str(n.nid), 20, left=True)}\t{n.nr_vnodes:2d}{n.zone:11d}\n"


def node_list_text(nodes: list[SdNode], raw: bool = False) -> str:
    rows = "".join(node_list_row(i, n, raw) for i, n in enumerate(nodes))
    return rows if raw else LIST_HEADER + rows


def use_percent(size: int, free: int) -> int:
    """``(int)((double)(size - free) / size * 100)``; 0 for an empty store (gateways)."""
    return int((size - free) / size * 100) if size else 0


def node_info_row(i: int, size: int, free: int, raw: bool = False) -> str:
    cells = (strnumber(size, raw), strnumber(size - free, raw), strnumber(free, raw))
    if raw:
        return f"{i} {cells[0]} {cells[1]} {cells[2]} {use_percent(size, free)}%\n"
    return f"{i:2d}\t{cells[0]}\t{cells[1]}\t{cells[2]}\t{use_percent(size, free):3d}%\n"


def node_info_total(size: int, free: int, vdi_size: int, raw: bool = False) -> str:
    cells = (strnumber(size, raw), strnumber(size - free, raw), strnumber(free, raw),
             strnumber(vdi_size, raw))
    pct = use_percent(size, free)
    if raw:
        return f"Total {cells[0]} {cells[1]} {cells[2]} {pct}% {cells[3]}\n"
    return (f"Total\t{cells[0]}\t{cells[1]}\t{cells[2]}\t{pct:3d}%\n\n"
            f"Total virtual image size\t{cells[3]}\n")


def node_json(i: int, n: SdNode) -> dict:
    return {"id": i, "address": str(n.nid), "host": n.nid.host, "port": n.nid.port,
            "vnodes": n.nr_vnodes, "zone": n.zone, "gateway": n.nr_vnodes == 0}


# ---------------------------------------------------------------- commands


def node_list(ctx: Context, args: list[str]) -> int:
    if ctx.json:
        out(json.dumps([node_json(i, n) for i, n in enumerate(ctx.nodes)], indent=2) + "\n")
    else:
        out(node_list_text(ctx.nodes, ctx.raw))
    return EXIT_SUCCESS


def _stat_sheep(ctx: Context, n: SdNode) -> tuple[int, int] | None:
    """STAT_SHEEP to one node as `send_light_req` does it (failures reported, None)."""
    try:
        rsp, _ = ctx.node_client(n).call(Request(Op.STAT_SHEEP))
    except SheepConnectionError as e:
        report_conn_error(e)
        return None
    if rsp.result != Res.SUCCESS:
        err(f"Response's result: {SheepError(rsp.result)}")
        return None
    assert isinstance(rsp.args, NodeRsp)
    return rsp.args.store_size, rsp.args.store_free


def node_info(ctx: Context, args: list[str]) -> int:
    text = not ctx.json
    if text and not ctx.raw:
        out(INFO_HEADER)
    rows, i = [], 0
    total_size = total_free = 0
    for n in ctx.nodes:
        stat = _stat_sheep(ctx, n)
        if stat is None:
            continue
        size, free = stat
        if text:
            out(node_info_row(i, size, free, ctx.raw))
        rows.append({"id": i, "address": str(n.nid), "size": size, "used": size - free,
                     "avail": free, "use_percent": use_percent(size, free)})
        i += 1  # dog numbers only the nodes that answered
        total_size += size
        total_free += free
    if not rows:
        err("Cannot get information from any nodes")
        return EXIT_SYSFAIL
    vdi_size = sum(inode.header.vdi_size for _, inode in parse_vdi(ctx, with_index=False)
                   if not inode.header.is_snapshot)
    if text:
        out(node_info_total(total_size, total_free, vdi_size, ctx.raw))
    else:
        doc = {"nodes": rows,
               "total": {"size": total_size, "used": total_size - total_free,
                         "avail": total_free, "use_percent": use_percent(total_size, total_free)},
               "total_virtual_image_size": vdi_size}
        out(json.dumps(doc, indent=2) + "\n")
    return EXIT_SUCCESS


def node_kill(ctx: Context, args: list[str]) -> int:
    """KILL_NODE to the N-th node, or with -l to the -a/-p node."""
    host = port = None
    if args:
        if ctx.opts.local:
            err("don't use -l option and specify node id at the same time")
            raise DogExit(EXIT_USAGE)
        text = args[0]
        if not is_numeric(text):
            err(f"Invalid node id '{text}', please specify a numeric value")
            raise DogExit(EXIT_USAGE)
        node_id = int(text)
        if node_id >= len(ctx.nodes):
            err(f"Invalid node id '{node_id}'")
            raise DogExit(EXIT_USAGE)
        nid = ctx.nodes[node_id].nid
        host, port = nid.host, nid.port
    elif not ctx.opts.local:
        err("please specify -l option or node id")
        raise DogExit(EXIT_USAGE)
    if not send_light_req(ctx, Request(Op.KILL_NODE), host, port):
        err("Failed to execute request")
        raise DogExit(EXIT_FAILURE)
    return EXIT_SUCCESS


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "kill": node_kill,
    "list": node_list,
    "info": node_info,
}
