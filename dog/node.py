"""`dog node ...` (dog/node.c; dog.md §5).  Output formatting lives in pure functions."""
from __future__ import annotations

import errno
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import STORE_LEN, Flag, Op, Res
from sheep.proto.header import NodeRsp, Request
from sheep.proto.sizes import strnumber
from sheep.proto.structs import RecoveryState, RecoveryThrottling, SdNode, SdStat, pad
from sheep.server.logger import LEVEL_NAMES

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context, DogExit, c_strtol, cpad, err,
    is_numeric, out, parse_vdi, report_conn_error, run_nested, send_light_req, show_progress,
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


# ---------------------------------------------------------------- recovery, stat, log, vnodes

RECOVERY_HEADER = ("Nodes In Recovery:\n"
                   "  Id   Host:Port         V-Nodes       Zone       Progress\n")
RW_PREPARE_LIST, RW_RECOVER_OBJ, RW_NOTIFY_COMPLETION = 0, 1, 2
STAT_HEADER = "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"
WATCH_COLUMNS = "\tWRBW\tRDBW\tRPS"
NODE_CONFIG = "node_config"  # written by `dog node format`, read by sheep at start-up
NODE_STORES = ("plain", "tree")
UINT32_MAX = (1 << 32) - 1
LONG_MAX = (1 << 63) - 1


def c_int(value: int) -> int:
    """A u32 printed with ``%d``."""
    return value - (1 << 32) if value >= 1 << 31 else value


def recovery_row(i: int, n: SdNode, st: RecoveryState, raw: bool = False) -> str:
    """One node of `node recovery`: finished/total, or the percentage done."""
    if raw:
        return f"{i} {n.nid} {n.nr_vnodes} {c_int(n.zone)} {st.nr_finished} {st.nr_total}\n"
    pct = 100 * st.nr_finished / st.nr_total if st.nr_total else 0.0
    return (f"{i:4d}   {cpad(str(n.nid), 20, left=True)}{n.nr_vnodes:5d}{c_int(n.zone):11d}"
            f"{pct:11.1f}%\n")


def stat_text(s: SdStat, raw: bool = False, last: SdStat | None = None) -> str:
    """`node stat` (``last``: the previous sample of ``-w``, adding bandwidth and rate).

    Deviation from sheep 1.0 (dog.md §5 recommends it): without ``-w`` the original printed
    the read count under ``Write`` and the write count under ``Read``; here both modes put
    each count under its own header."""
    def row(label: str, active: int, total: int, write: int, read: int, remove: int,
            flush: int, rx: int, tx: int, last_rx: int, last_tx: int, last_total: int) -> str:
        text = ("" if raw else label) + (f"{active}\t{total}\t{write}\t{read}\t{remove}\t{flush}\t"
                                         f"{strnumber(rx, raw)}\t{strnumber(tx, raw)}")
        if last is not None:
            text += (f"\t{strnumber(rx - last_rx, raw)}\t{strnumber(tx - last_tx, raw)}"
                     f"\t{total - last_total}")
        return text + "\n"

    p = last or SdStat()
    head = "" if raw else STAT_HEADER + (WATCH_COLUMNS if last is not None else "") + "\n"
    return (head
            + row("Client\t", s.gway_active_nr, s.gway_total_nr, s.gway_total_write_nr,
                  s.gway_total_read_nr, s.gway_total_remove_nr, s.gway_total_flush_nr,
                  s.gway_total_rx, s.gway_total_tx, p.gway_total_rx, p.gway_total_tx,
                  p.gway_total_nr)
            + row("Peer\t", s.peer_active_nr, s.peer_total_nr, s.peer_total_write_nr,
                  s.peer_total_read_nr, s.peer_total_remove_nr, 0, s.peer_total_rx,
                  s.peer_total_tx, p.peer_total_rx, p.peer_total_tx, p.peer_total_nr))


def parse_throttle(args: list[str]) -> RecoveryThrottling:
    """`node_recovery_set`'s checks: both non-negative integers, both zero or both not.
    Every refusal exits 64 after its message (no usage text, as in dog)."""
    if len(args) < 2:
        err(f"Invalid interval max ({args[0] if args else '(null)'}), interval ((null))")
        raise DogExit(EXIT_USAGE)
    value, used = c_strtol(args[0])
    if not used or used != len(args[0]) or not 0 <= value <= UINT32_MAX:
        err(f"Invalid max ({args[0]})")
        raise DogExit(EXIT_USAGE)
    interval, used = c_strtol(args[1])
    if not used or used != len(args[1]) or not 0 <= interval <= LONG_MAX:
        err(f"Invalid interval ({args[1]})")
        raise DogExit(EXIT_USAGE)
    if bool(value) != bool(interval):
        err(f"Invalid interval max ({value}), interval ({interval})")
        raise DogExit(EXIT_USAGE)
    return RecoveryThrottling(max_exec_count=value, queue_work_interval=interval)


def _exec(ctx: Context, req: Request, payload: bytes | None = None,
          node: SdNode | None = None) -> tuple[int, bytes] | None:
    """One request to the target sheep (or ``node``): (result, reply data), or None after
    reporting a connection failure."""
    try:
        cl = ctx.node_client(node) if node is not None else ctx.client()
        rsp, data = cl.call(req, payload)
    except SheepConnectionError as e:
        report_conn_error(e)
        return None
    return rsp.result, bytes(data)


def _exec_checked(ctx: Context, req: Request, payload: bytes | None = None) -> bytes | None:
    """`_exec` whose every failure is "Failed to execute request": the reply data, or None."""
    got = _exec(ctx, req, payload)
    if got is None or got[0] != Res.SUCCESS:
        err("Failed to execute request")
        return None
    return got[1]


def _recovery_state(ctx: Context) -> RecoveryState | None:
    """`get_recovery_state`: STAT_RECOVERY of the target sheep."""
    got = _exec(ctx, Request(Op.STAT_RECOVERY, data_length=RecoveryState.SIZE))
    if got is None:
        err("Failed to execute request")
        return None
    if got[0] != Res.SUCCESS:
        err(str(SheepError(got[0])))
        return None
    return RecoveryState.decode(got[1].ljust(RecoveryState.SIZE, b"\0"))


def recovery_progress(ctx: Context) -> int:
    """``-P``: follow the target node's recovery every second until it ends."""
    st = _recovery_state(ctx)
    if st is None:
        return EXIT_SYSFAIL
    if not st.in_recovery:
        return EXIT_SUCCESS
    while True:
        prev_total = st.nr_total
        st = _recovery_state(ctx)
        if st is None:
            return EXIT_SYSFAIL
        if not st.in_recovery:
            show_progress(prev_total, prev_total, True)
            return EXIT_SUCCESS
        if st.state == RW_PREPARE_LIST:
            out("\rpreparing a checked object list...")
        elif st.state == RW_NOTIFY_COMPLETION:
            out("\rnotifying a completion of recovery...")
        else:
            show_progress(st.nr_finished, st.nr_total, True)
        sys.stdout.flush()
        time.sleep(1)


def recovery_info(ctx: Context, args: list[str]) -> int:
    """STAT_RECOVERY to every node; the ones in recovery are listed."""
    if ctx.opts.recovery_progress:
        return recovery_progress(ctx)
    if not ctx.raw:
        out(RECOVERY_HEADER)
    for i, n in enumerate(ctx.nodes):
        req = Request(Op.STAT_RECOVERY, data_length=RecoveryState.SIZE)
        got = _exec(ctx, req, node=n)
        if got is None:
            return EXIT_SYSFAIL
        if got[0] != Res.SUCCESS:
            err(str(SheepError(got[0])))
            return EXIT_FAILURE
        st = RecoveryState.decode(got[1].ljust(RecoveryState.SIZE, b"\0"))
        if st.in_recovery:
            out(recovery_row(i, n, st, ctx.raw))
    return EXIT_SUCCESS


def recovery_set_throttle(ctx: Context, args: list[str]) -> int:
    data = parse_throttle(args).encode()
    ok = _exec_checked(ctx, Request(Op.SET_RECOVERY, Flag.CMD_WRITE, len(data)), data)
    return EXIT_FAILURE if ok is None else EXIT_SUCCESS


def recovery_get_throttle(ctx: Context, args: list[str]) -> int:
    data = _exec_checked(ctx, Request(Op.GET_RECOVERY, data_length=RecoveryThrottling.SIZE))
    if data is None:
        return EXIT_FAILURE
    t = RecoveryThrottling.decode(data.ljust(RecoveryThrottling.SIZE, b"\0"))
    err(f"max ({t.max_exec_count}), interval ({t.queue_work_interval})")
    return EXIT_SUCCESS


RECOVERY_HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "info": recovery_info,
    "set-throttle": recovery_set_throttle,
    "get-throttle": recovery_get_throttle,
}


def node_recovery(ctx: Context, args: list[str]) -> int:
    """`dog node recovery` alone is `dog node recovery info`."""
    if not args:
        return recovery_info(ctx, args)
    return run_nested(ctx, args, RECOVERY_HANDLERS)


def node_stat(ctx: Context, args: list[str]) -> int:
    """STAT of the target sheep; ``-w`` samples it every second until interrupted."""
    last: SdStat | None = None
    while True:
        got = _exec(ctx, Request(Op.STAT, data_length=SdStat.SIZE))
        if got is None:
            return EXIT_SYSFAIL
        if got[0] != Res.SUCCESS:
            err(f"failed to get stat information: {SheepError(got[0])}")
            return EXIT_FAILURE
        stat = SdStat.decode(got[1].ljust(SdStat.SIZE, b"\0"))
        if not ctx.opts.watch:
            out(stat_text(stat, ctx.raw))
            return EXIT_SUCCESS
        out(stat_text(stat, ctx.raw, last or stat))
        sys.stdout.flush()
        last = stat
        time.sleep(1)


def dump_loglevels() -> None:
    for i, name in enumerate(LEVEL_NAMES):
        err(f"{name}\t({i})")


def log_level_set(ctx: Context, args: list[str]) -> int:
    name = args[0]
    if name not in LEVEL_NAMES:
        err(f"invalid loglevel: {name}")
        err("available loglevels:")
        dump_loglevels()
        raise DogExit(EXIT_USAGE)
    data = struct.pack("<i", LEVEL_NAMES.index(name))
    ok = _exec_checked(ctx, Request(Op.SET_LOGLEVEL, Flag.CMD_WRITE, len(data)), data)
    return EXIT_FAILURE if ok is None else EXIT_SUCCESS


def log_level_get(ctx: Context, args: list[str]) -> int:
    got = _exec(ctx, Request(Op.GET_LOGLEVEL, data_length=4))
    if got is None or got[0] != Res.SUCCESS or len(got[1]) < 4:
        err("Failed to execute request")
        return EXIT_FAILURE
    (level,) = struct.unpack_from("<i", got[1])
    name = LEVEL_NAMES[level] if 0 <= level < len(LEVEL_NAMES) else "(null)"
    err(f"{name} ({level})")
    return EXIT_SUCCESS


def log_level_list(ctx: Context, args: list[str]) -> int:
    dump_loglevels()
    return EXIT_SUCCESS


LOG_LEVEL_SUBS: dict[str, tuple[bool, Callable[[Context, list[str]], int]]] = {
    "set": (True, log_level_set),  # needs an argument
    "get": (False, log_level_get),
    "list": (False, log_level_list),
}


def _log_level(ctx: Context, args: list[str]) -> int:
    """The second nesting level (`node log level {set|get|list}`), as dog's
    `do_generic_subcommand`: unknown name -> usage, 1; missing argument -> usage, 64."""
    found = LOG_LEVEL_SUBS.get(args[0]) if args else None
    if found is None:
        out(ctx.usage())
        raise DogExit(EXIT_FAILURE)
    needs_arg, fn = found
    if needs_arg and len(args) < 2:
        out(ctx.usage())
        raise DogExit(EXIT_USAGE)
    return fn(ctx, args[1:])


def node_log(ctx: Context, args: list[str]) -> int:
    return run_nested(ctx, args, {"level": _log_level})


def vnodes_set(ctx: Context, args: list[str]) -> int:
    text = args[0]
    value, used = c_strtol(text)
    if not used or used != len(text) or not 1 <= value <= 65535:
        err(f"Invalid number of vnodes '{text}': must be an integer between 1 and 65535")
        raise DogExit(EXIT_USAGE)
    data = struct.pack("<i4x", value)  # dog sends sizeof(a pointer) bytes, the value first
    ok = _exec_checked(ctx, Request(Op.SET_VNODES, Flag.CMD_WRITE, len(data)), data)
    return EXIT_FAILURE if ok is None else EXIT_SUCCESS


def node_vnodes(ctx: Context, args: list[str]) -> int:
    return run_nested(ctx, args, {"set": vnodes_set})


def node_format(ctx: Context, args: list[str]) -> int:
    """Offline: record the store format a node's sheep will use (``DIR/node_config``)."""
    if len(args) < 2:
        err("specify store format")
        return EXIT_USAGE
    directory, store = args[0], args[1]
    if store not in NODE_STORES:
        err("expected store format: plain, tree")
        return EXIT_SYSFAIL
    path = f"{directory}/{NODE_CONFIG}"
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        err(f"failed to check existence of config ({path}): {os.strerror(e.errno or errno.EIO)}")
        return EXIT_SYSFAIL
    else:
        err(f"config file already exists: {path}")
        return EXIT_SYSFAIL
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError as e:
        err(f"failed to create a config file ({path}): {os.strerror(e.errno or errno.EIO)}")
        return EXIT_SYSFAIL
    try:
        os.write(fd, pad(store, STORE_LEN))
    except OSError as e:
        err(f"failed to write a config file ({path}): {os.strerror(e.errno or errno.EIO)}")
        return EXIT_SYSFAIL
    finally:
        os.close(fd)
    return EXIT_SUCCESS


def node_md(ctx: Context, args: list[str]) -> int:
    """`dog node md ...` lives in node_md.py (imported here lazily: it uses this module)."""
    from .node_md import node_md as run
    return run(ctx, args)


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "kill": node_kill,
    "list": node_list,
    "info": node_info,
    "recovery": node_recovery,
    "md": node_md,
    "stat": node_stat,
    "log": node_log,
    "vnodes": node_vnodes,
    "format": node_format,
}
