"""`dog cluster ...` (dog/cluster.c; dog.md §6).  Output formatting lives in pure functions."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import (
    SD_MAX_NODES, SD_NODE_SIZE, STORE_LEN, ClusterFlag, Op, Res,
)
from sheep.proto.header import ClusterArgs, Request
from sheep.proto.inode import Inode
from sheep.proto.sizes import format_copies
from sheep.proto.structs import EpochLog, NodeId

from .common import (
    EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Context, alter_copy_target, confirm, err,
    localtime_str, out, parse_copies_opt, parse_shift_opt, parse_vdi, report_conn_error, run_nested,
    send_light_req,
)
from .vdi_check import check_repair

DEFAULT_STORE = "plain"

FORMAT_PRINT = ("    __\n"
                "   ()'`;\n"
                "   /\\|`\n"
                "  /  |   Caution! The cluster is not empty.\n"
                "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


@dataclass
class Options:
    """`struct cluster_cmd_data`."""

    copies: int = 0
    copy_policy: int = 0
    multithread: bool = False
    block_size_shift: int = 0
    force: bool = False
    strict: bool = False
    diff: bool = False
    store: str = ""
    fixed_vnodes: bool = False
    use_lock: bool = False
    recycle_vid: bool = False
    avoid_diskfull: bool = False


_FLAGS = {"f": "force", "F": "avoid_diskfull", "l": "use_lock", "R": "recycle_vid",
          "t": "strict", "V": "fixed_vnodes", "d": "diff"}


def parse_option(o: Options, ch: str, arg: str) -> None:
    """`cluster_parser`."""
    if ch == "b":
        o.store = arg
    elif ch == "c":
        o.copies, o.copy_policy = parse_copies_opt(arg)
    elif ch == "m":
        # sheep 1.0 bug kept on purpose: 'm' falls through to 't' (dog.md §6)
        o.multithread = True
        o.strict = True
    elif ch == "z":
        o.block_size_shift = parse_shift_opt(arg)
    elif ch in _FLAGS:
        setattr(o, _FLAGS[ch], True)


# ---------------------------------------------------------------- formatting (pure)


def _node_set(log: EpochLog) -> list[NodeId]:
    return [n.nid for n in log.nodes]


def nodes_diff(log: EpochLog, older: EpochLog) -> str:
    """`print_nodes_diff`: "+joined" then "-left"; the two lists are not separated (as in dog)."""
    def one(a: EpochLog, b: EpochLog, act: str) -> str:
        theirs = {(nid.addr, nid.port) for nid in _node_set(b)}
        return ", ".join(f"{act}{nid}" for nid in _node_set(a)
                         if (nid.addr, nid.port) not in theirs)
    return one(log, older, "+") + one(older, log, "-")


def cluster_info_text(result: int, logs: list[EpochLog], *, verbose: bool = False,
                      raw: bool = False, diff: bool = False) -> str:
    """The whole `cluster_info` output (dog.md §6); ``logs`` newest first."""
    first = logs[0] if logs else EpochLog()
    ok = result == Res.SUCCESS
    parts = [] if raw else ["Cluster status: "]
    if ok:
        parts.append(f"running, auto-recovery "
                     f"{'disabled' if first.disable_recovery else 'enabled'}\n")
    else:
        parts.append(f"{SheepError(result)}\n")
    if verbose:
        parts.append("" if raw else "Cluster store: ")
        if ok:
            parts.append(f"{first.drv_name} with "
                         f"{format_copies(first.nr_copies, first.copy_policy)} redundancy policy\n")
            parts.append("" if raw else "Cluster vnodes strategy: ")
            parts.append("auto\n" if first.flags & ClusterFlag.AUTO_VNODES else "fixed\n")
        else:
            parts.append(f"{SheepError(result)}\n")
        parts.append("" if raw else "Cluster vnode mode: ")
        parts.append("disk\n" if first.flags & ClusterFlag.DISKMODE else "node\n")
    else:
        parts.append("\n")
    if not raw and logs:
        parts.append(f"Cluster created at {time.ctime(first.ctime >> 32)}\n\n")
        parts.append("Epoch Time           Version [Host:Port:V-Nodes,,,]\n")
    for i, log in enumerate(logs):
        if raw:
            parts.append(f"{log.time} {log.epoch} [")
        else:
            parts.append(f"{localtime_str(log.time, '%Y-%m-%d %H:%M:%S')} {log.epoch:6d} [")
        if diff:
            parts.append("formated" if i == len(logs) - 1 else nodes_diff(log, logs[i + 1]))
        else:
            parts.append(", ".join(f"{n.nid}:{n.nr_vnodes}" for n in log.nodes))
        parts.append("]\n")
    return "".join(parts)


def cluster_info_json(result: int, logs: list[EpochLog]) -> dict:
    first = logs[0] if logs else EpochLog()
    ok = result == Res.SUCCESS
    doc: dict = {"status": "running" if ok else str(SheepError(result)), "result": result}
    if ok:
        doc["auto_recovery"] = not first.disable_recovery
        doc["store"] = {"driver": first.drv_name, "nr_copies": first.nr_copies,
                        "copy_policy": first.copy_policy,
                        "redundancy": format_copies(first.nr_copies, first.copy_policy)}
        doc["vnode_strategy"] = "auto" if first.flags & ClusterFlag.AUTO_VNODES else "fixed"
    doc["vnode_mode"] = "disk" if first.flags & ClusterFlag.DISKMODE else "node"
    doc["flags"] = first.flags
    doc["creation_time"] = first.ctime >> 32 if logs else None
    doc["epochs"] = [{"epoch": log.epoch, "time": log.time,
                      "nodes": [{"address": str(n.nid), "vnodes": n.nr_vnodes, "zone": n.zone}
                                for n in log.nodes]} for log in logs]
    return doc


# ---------------------------------------------------------------- commands


def cluster_info(ctx: Context, args: list[str]) -> int:
    result, logs = ctx.client().stat_cluster(len(ctx.nodes), max_epochs=ctx.epoch)
    if ctx.json:
        out(json.dumps(cluster_info_json(result, logs), indent=2) + "\n")
    else:
        out(cluster_info_text(result, logs, verbose=ctx.verbose, raw=ctx.raw,
                              diff=ctx.opts.diff))
    return EXIT_SUCCESS


def _list_store(ctx: Context) -> int:
    try:
        stores = ctx.client().get_store_list()
    except SheepError as e:
        err(f"Restore failed: {e}")
        return EXIT_FAILURE
    out("Available stores:\n" + "-" * 39 + "\n" + stores + "\n")
    return EXIT_SYSFAIL


def cluster_format(ctx: Context, args: list[str]) -> int:
    o = ctx.opts
    for n in ctx.nodes:
        try:
            cinfo = ctx.node_client(n).cluster_info()
        except SheepConnectionError as e:
            report_conn_error(e)
            err("Fail to execute request")
            return EXIT_FAILURE
        except SheepError as e:
            err(str(e))
            return EXIT_FAILURE
        if n.nr_vnodes != 0:
            auto = bool(cinfo.flags & ClusterFlag.AUTO_VNODES)
            if auto and o.fixed_vnodes:
                err("Can not apply the option of '-V', because there are vnode strategy of sheep "
                    "is auto in the cluster")
                return EXIT_FAILURE
            if not auto and not o.fixed_vnodes:
                err("Need to specify the option of '-V', because there are vnode strategy of "
                    "sheep is fixed in the cluster")
                return EXIT_FAILURE
    if o.copies > ctx.nr_zones:
        confirm(f"Number of copies ({o.copies}) is larger than number of zones ({ctx.nr_zones})."
                f"\nAre you sure you want to continue? [yes/no]: ")
    cl = ctx.client()
    try:
        inuse = cl.read_vdis()
    except SheepError as e:
        err(str(e))
        return EXIT_FAILURE
    if any(inuse) and not o.force:
        confirm(FORMAT_PRINT)

    store = (o.store or DEFAULT_STORE).encode("utf-8", "surrogateescape")[:STORE_LEN - 1]
    flags = 0
    if o.strict:
        flags |= ClusterFlag.STRICT
    if o.use_lock:
        flags |= ClusterFlag.USE_LOCK
    if o.recycle_vid:
        flags |= ClusterFlag.RECYCLE_VID
    if not o.fixed_vnodes:
        flags |= ClusterFlag.AUTO_VNODES
    if o.avoid_diskfull:
        flags |= ClusterFlag.AVOID_DISKFULL
    now = time.time_ns()
    ctime = (now // 1_000_000_000) << 32 | ((now // 1000) % 1_000_000) * 1000
    name = store.decode("utf-8", "surrogateescape")
    out(f"using backend {name} store\n")
    try:
        cl.make_fs(o.copies, o.copy_policy, int(flags), ctime,
                   block_size_shift=o.block_size_shift, store=name)
    except SheepError as e:
        err(f"Format failed: {e}")
        return _list_store(ctx) if e.result == Res.NO_STORE else EXIT_SYSFAIL
    return EXIT_SUCCESS


def cluster_shutdown(ctx: Context, args: list[str]) -> int:
    if not send_light_req(ctx, Request(Op.SHUTDOWN)):
        err("failed to execute request")
        return EXIT_FAILURE
    return EXIT_SUCCESS


# ---------------------------------------------------------------- recover, reweight, check, alter-copy

RECOVER_PRINT = ("Caution! Please try starting all the cluster nodes normally before\n"
                 "running this command.\n\n"
                 "The cluster may need to be force recovered if:\n"
                 "  - the master node fails to start because of epoch mismatch; or\n"
                 "  - some nodes fail to start after a cluster shutdown.\n\n"
                 "Are you sure you want to continue? [yes/no]: ")
ALTER_CLUSTER_COPY_PRINT = ("    __\n"
                            "   ()'`;\n"
                            "   /\\|`  Caution! Changing cluster's redundancy level will affect\n"
                            "  /  |   all the VDIs to be created later.\n"
                            "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


def recover_force(ctx: Context, args: list[str]) -> int:
    """FORCE_RECOVER: a cluster waiting for missing nodes goes on with the ones present."""
    if not ctx.opts.force:
        confirm(RECOVER_PRINT)
    rsp, _ = ctx.client().call(Request(Op.FORCE_RECOVER, data_length=SD_MAX_NODES * SD_NODE_SIZE))
    if rsp.result != Res.SUCCESS:
        err(f"failed to execute request, {SheepError(rsp.result)}")
        return EXIT_FAILURE
    return EXIT_SUCCESS


def _switch_recovery(ctx: Context, opcode: int, word: str) -> int:
    if not send_light_req(ctx, Request(opcode)):
        return EXIT_FAILURE
    out(f"Cluster recovery: {word}\n")
    return EXIT_SUCCESS


def recover_enable(ctx: Context, args: list[str]) -> int:
    return _switch_recovery(ctx, Op.ENABLE_RECOVER, "enable")


def recover_disable(ctx: Context, args: list[str]) -> int:
    return _switch_recovery(ctx, Op.DISABLE_RECOVER, "disable")


RECOVER_HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "force": recover_force,
    "enable": recover_enable,
    "disable": recover_disable,
}


def cluster_recover(ctx: Context, args: list[str]) -> int:
    return run_nested(ctx, args, RECOVER_HANDLERS)


def cluster_reweight(ctx: Context, args: list[str]) -> int:
    """REWEIGHT: every node re-measures its store; a changed weight starts a new epoch."""
    return EXIT_SUCCESS if send_light_req(ctx, Request(Op.REWEIGHT)) else EXIT_FAILURE


def check_line(inode: Inode) -> str:
    h = inode.header
    if h.is_snapshot:
        return f'fix snapshot {h.name} (id: {h.snap_id}, tag: "{h.tag}")\n'
    return f"fix vdi {h.name}\n"


def cluster_check(ctx: Context, args: list[str]) -> int:
    """`vdi check` (compare and repair) of every VDI and snapshot, in vid order."""
    for _, inode in parse_vdi(ctx, with_index=True):
        out(check_line(inode))
        check_repair(ctx, inode)
    return EXIT_SUCCESS


def cluster_alter_copy(ctx: Context, args: list[str]) -> int:
    """ALTER_CLUSTER_COPY: the default copy count of VDIs created from now on."""
    o = ctx.opts
    if o.copy_policy:
        err("Changing redundancy level of erasure coded vdi is not supported yet.")
        return EXIT_USAGE
    copies = alter_copy_target(ctx, o.copies, o.force, "The cluster's")
    nr_nodes = len(ctx.nodes)
    result, logs = ctx.client().stat_cluster(nr_nodes, max_epochs=1)
    if result != Res.SUCCESS or not logs:
        err(f"Response's result: {SheepError(result)}")
        return EXIT_FAILURE
    old = logs[0].nr_copies
    if logs[0].copy_policy:
        err("The cluster's copy policy is erasure code, changing it is not supported yet.")
        return EXIT_FAILURE
    if old == copies:
        err(f"The cluster's redundancy level is already set to {copies}, nothing changed.")
        return EXIT_FAILURE
    if not o.force:
        confirm(ALTER_CLUSTER_COPY_PRINT)
    if not send_light_req(ctx, Request(Op.ALTER_CLUSTER_COPY,
                                       args=ClusterArgs(copies=copies, copy_policy=0))):
        err("Changing the cluster's redundancy level failure.")
        return EXIT_FAILURE
    err(f"The cluster's redundancy level is set to {copies}, the old one was {old}.")
    return EXIT_SUCCESS


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "info": cluster_info,
    "format": cluster_format,
    "shutdown": cluster_shutdown,
    "recover": cluster_recover,
    "reweight": cluster_reweight,
    "check": cluster_check,
    "alter-copy": cluster_alter_copy,
}
