"""The dog command tree as data: commands, subcommands, option tables and usage texts.

dog's help output is *generated* from these tables exactly as `subcommand_usage` in dog/dog.c
does (dog.md §11), so the tables are the single source of truth for --help, usage errors, the
top-level help, the "Available ... commands" lists and the getopt option strings.
"""
from __future__ import annotations

from dataclasses import dataclass

PROGRAM = "dog"
VERSION = "1.0"

# subcommand flags (dog.h); CMD_NEED_ROOT is not enforced by dog 1.0 and is not modelled
NEED_NODELIST = 1
NEED_ARG = 2


@dataclass(frozen=True)
class Opt:
    """One `struct sd_option`: short letter, long name (also the usage's argument name)."""

    ch: str
    name: str
    has_arg: bool
    desc: str


@dataclass(frozen=True)
class Sub:
    """One `struct subcommand`. ``opts`` is the getopt option string (order = usage order)."""

    name: str
    arg: str | None
    opts: str | None
    desc: str
    flags: int = 0
    subs: tuple["Sub", ...] = ()


@dataclass(frozen=True)
class Command:
    name: str
    subs: tuple[Sub, ...]
    options: tuple[Opt, ...] = ()


_RAW_DESC = ("raw output mode: omit headers, separate fields with\n"
             "                          single spaces and print all sizes in decimal bytes")

COMMON_OPTIONS: tuple[Opt, ...] = (
    Opt("a", "address", True, "specify the daemon address (default: localhost)"),
    Opt("p", "port", True, "specify the daemon port"),
    Opt("r", "raw", False, _RAW_DESC),
    Opt("v", "verbose", False, "print more information than default"),
    Opt("h", "help", False, "display this help and exit"),
    Opt("T", "time", False, "show elapsed time"),
)

VDI_OPTIONS: tuple[Opt, ...] = (
    Opt("P", "prealloc", False, "preallocate all the data objects"),
    Opt("n", "no-share", False, "share nothing with its parent"),
    Opt("i", "index", True, "specify the index of data objects"),
    Opt("s", "snapshot", True, "specify a snapshot id or tag name"),
    Opt("x", "exclusive", False, "write in an exclusive mode"),
    Opt("d", "delete", False, "delete a key"),
    Opt("w", "writeback", False, "use writeback mode"),
    Opt("c", "copies", True, "specify the data redundancy level"),
    Opt("F", "from", True, "create a differential backup from the snapshot"),
    Opt("f", "force", False, "do operation forcibly"),
    Opt("y", "hyper", False, "create a hyper volume"),
    Opt("o", "oid", True, "specify the object id of the tracking object"),
    Opt("e", "exist", False, "only check objects exist or not,\n"
        "                          neither comparing nor repairing"),
    Opt("z", "block_size_shift", True, "specify the bit shift num for data object size"),
    Opt("R", "reduce-identical-snapshots", False,
        "do not create snapshot if working VDI doesn't have its own objects"),
    Opt("B", "nr-batched-reclamation", True,
        "specify a number of batchedreclamation during VDI deletion"),
    Opt("I", "reclamation-interval", True,
        "specify how long (unit: second)in reclamation loop during VDI deletion"),
    Opt("m", "max-reclaim", True, "specify the maximum number of reclaimed objects "
        "(if this option is specified, an inode object won't be reclaimed)"),
)

NODE_OPTIONS: tuple[Opt, ...] = (
    Opt("A", "all", False, "show md information of all the nodes"),
    Opt("P", "progress", False, "show progress of recovery in the node"),
    Opt("w", "watch", False, "watch the stat every second"),
    Opt("l", "local", False, "issue request to local node"),
    Opt("f", "force", False, "ignore the confirmation"),
)

CLUSTER_OPTIONS: tuple[Opt, ...] = (
    Opt("b", "store", True, "specify backend store"),
    Opt("c", "copies", True, "specify the default data redundancy (number of copies)"),
    Opt("f", "force", False, "do not prompt for confirmation"),
    Opt("F", "avoid-diskfull", False, "skip recovery if recovery process can cause disk full"),
    Opt("l", "lock", False, "Lock vdi to exclude multiple users"),
    Opt("m", "multithread", False, "use multi-thread for 'cluster snapshot save'"),
    Opt("R", "recyclevid", False, "enable recycling of VID"),
    Opt("t", "strict", False, "do not serve write request if number of nodes is not sufficient"),
    Opt("z", "block_size_shift", True, "specify the shift num of default data object size"),
    Opt("V", "fixedvnodes", False, "disable automatic vnodes calculation"),
    Opt("d", "diff", False,
        "just output the changes between the two adjacent epochesfor cluster info"),
)

UPGRADE_OPTIONS: tuple[Opt, ...] = (
    Opt("o", "orig-version", True, "version of converting file"),
)

BENCHMARK_OPTIONS: tuple[Opt, ...] = (
    Opt("f", "force", False, "do not prompt for confirmation"),
    Opt("w", "workqueue", True, "specify workqueue type"),
    Opt("t", "total", True, "a number of total operation (e.g. I/O request)"),
    Opt("n", "nr-threads", True, "a number of worker threads (only used for fixed workqueue)"),
)

NL, ARG = NEED_NODELIST, NEED_ARG

VDI_SUBS: tuple[Sub, ...] = (
    Sub("check", "<vdiname>", "seaphT", "check and repair image's consistency", NL | ARG),
    Sub("create", "<vdiname> <size>", "PycaphrvzT", "create an image", NL | ARG),
    Sub("snapshot", "<vdiname>", "saphrvTR", "create a snapshot", ARG),
    Sub("clone", "<src vdi> <dst vdi>", "sPnaphrvT", "clone an image", ARG),
    Sub("delete", "<vdiname>", "saphTBIm", "delete an image", ARG),
    Sub("rollback", "<vdiname>", "saphfrvTBI", "rollback to a snapshot", ARG),
    Sub("list", "[vdiname]", "aprhoT", "list images"),
    Sub("tree", None, "aphT", "show images in tree view format"),
    Sub("graph", None, "aphT", "show images in Graphviz dot format"),
    Sub("object", "<vdiname>", "isaphT", "show object information in the image", ARG, (
        Sub("location", None, None, "show object location information", NL | ARG),
        Sub("map", None, None, "show object map information", ARG),
        Sub("dump-inode", None, None, "dump inode information", ARG),
    )),
    Sub("track", "<vdiname>", "isaphoT", "show the object epoch trace in the image", NL | ARG),
    Sub("setattr", "<vdiname> <key> [value]", "dxaphT", "set a VDI attribute", ARG),
    Sub("getattr", "<vdiname> <key>", "aphT", "get a VDI attribute", ARG),
    Sub("resize", "<vdiname> <new size>", "aphT", "resize an image", ARG),
    Sub("read", "<vdiname> [<offset> [<len>]]", "saphT", "read data from an image", ARG),
    Sub("write", "<vdiname> [<offset> [<len>]]", "apwhT", "write data to an image", ARG),
    Sub("backup", "<vdiname>", "sFaphT",
        "create an incremental backup between two snapshots and outputs to STDOUT", NL | ARG),
    Sub("restore", "<vdiname>", "saphTBI",
        "restore snapshot images from a backup provided in STDIN", NL | ARG),
    Sub("alter-copy", "<vdiname>", "caphTf", "set the vdi's redundancy level", NL | ARG),
    Sub("lock", None, "saphT", "See 'dog vdi lock' for more information", ARG, (
        Sub("list", None, None, "list locked VDIs"),
        Sub("unlock", "<vdiname>", None, "unlock locked VDI forcibly", ARG),
    )),
)

NODE_SUBS: tuple[Sub, ...] = (
    Sub("kill", "<node id>", "aprhlT", "kill node", NL),
    Sub("list", None, "aprhT", "list nodes", NL),
    Sub("info", None, "aprhT", "show information about each node", NL),
    Sub("recovery", "<max> <interval>", "aphPrT",
        "show recovery information or set/get recovery speed throttling of nodes", NL, (
            Sub("info", None, None, "show recovery information of nodes (default)"),
            Sub("set-throttle", None, None, "set new throttling", ARG),
            Sub("get-throttle", None, None, "get current throttling"),
        )),
    Sub("md", "[disks]", "aprAfhT", "See 'dog node md' for more information", ARG, (
        Sub("info", None, None, "show multi-disk information", NL),
        Sub("plug", None, None, "plug more disk(s) into node", ARG),
        Sub("unplug", None, None, "unplug disk(s) from node", ARG),
    )),
    Sub("stat", None, "aprwhT", "show stat information about the node"),
    Sub("log", None, "aphT", "show or set log level of the node", ARG, (
        Sub("level", None, None, "manipulate loglevel", ARG),
    )),
    Sub("vnodes", "<num of vnodes>", "aph", "set new vnodes", ARG, (
        Sub("set", None, None, "set new vnodes", ARG),
    )),
    Sub("format", "<directory of sheep> <a name of store format>", "aphT",
        "initialize store format of the node", ARG),
)

CLUSTER_SUBS: tuple[Sub, ...] = (
    Sub("info", None, "aprhvTd", "show cluster information", NL),
    Sub("format", None, "bcltaphzTVRfF", "create a Sheepdog store", NL),
    Sub("shutdown", None, "aphT", "stop Sheepdog"),
    Sub("snapshot", "<tag|idx> <path> [vdi1] [vdi2] ...", "aphTm", "snapshot/restore the cluster",
        ARG, (
            Sub("save", None, None, "save snapshot to localpath", NL | ARG),
            Sub("list", None, None, "list snapshot of localpath", ARG),
            Sub("load", None, None, "load snapshot from localpath", NL | ARG),
            Sub("show", None, None, "show vdi list from snapshot", NL | ARG),
        )),
    Sub("recover", None, "afphT", "See 'dog cluster recover' for more information", ARG, (
        Sub("force", None, None, "force recover cluster immediately"),
        Sub("enable", None, None, "enable automatic recovery and run once recover if necessary"),
        Sub("disable", None, None, "disable automatic recovery"),
    )),
    Sub("reweight", None, "aphT", "reweight the cluster"),
    Sub("check", None, "aphT", "check and repair cluster", NL),
    Sub("alter-copy", None, "aphTcf", "set the cluster's redundancy level", NL),
)

UPGRADE_SUBS: tuple[Sub, ...] = (
    Sub("inode-convert", "<path of original inode file> <path of new inode file>", "hTo",
        "upgrade inode object file", ARG),
    Sub("epoch-convert", "<path of original epoch log file> <path of new epoch log file>", "hTo",
        "upgrade epoch log file", ARG),
    Sub("config-convert", "<path of original config file> <path of new config file>", "hT",
        "upgrade config file", ARG),
    Sub("object-location", "<path of latest epoch file> <oid>", "hT", "print object location", ARG),
)

BENCHMARK_SUBS: tuple[Sub, ...] = (
    Sub("io", "<vdiname>", "aprhTfwtn", "benchmark I/O performance", ARG),
)

COMMANDS: tuple[Command, ...] = (
    Command("vdi", VDI_SUBS, VDI_OPTIONS),
    Command("node", NODE_SUBS, NODE_OPTIONS),
    Command("cluster", CLUSTER_SUBS, CLUSTER_OPTIONS),
    Command("upgrade", UPGRADE_SUBS, UPGRADE_OPTIONS),
    Command("benchmark", BENCHMARK_SUBS, BENCHMARK_OPTIONS),
)


def find_command(name: str | None) -> Command | None:
    return next((c for c in COMMANDS if c.name == name), None)


def find_sub(cmd: Command, name: str | None) -> Sub | None:
    return next((s for s in cmd.subs if s.name == name), None)


def find_opt(cmd: Command, ch: str) -> Opt:
    """`find_opt`: the common options first, then the command's own."""
    for opt in COMMON_OPTIONS + cmd.options:
        if opt.ch == ch:
            return opt
    raise KeyError(f"option -{ch} is not defined for '{cmd.name}'")


def sub_options(cmd: Command, sub: Sub) -> list[Opt]:
    """The options a subcommand accepts, in option-string order."""
    return [find_opt(cmd, ch) for ch in sub.opts or ""]


def top_usage() -> str:
    """`usage(commands, 0)`: the text of `dog`, `dog help`, `dog -h` (dog.md §1)."""
    lines = [f"Sheepdog administrator utility (version {VERSION})",
             f"Usage: {PROGRAM} <command> <subcommand> [options]", "", "Available commands:"]
    for cmd in COMMANDS:
        for sub in cmd.subs:
            lines.append(f"  {cmd.name + ' ' + sub.name:<24}{sub.desc}")
    lines += ["", f"For more information, run '{PROGRAM} <command> <subcommand> --help'."]
    return "\n".join(lines) + "\n"


def command_list(cmd: Command) -> str:
    """The stderr list printed for a missing or unknown subcommand."""
    lines = [f"Available {cmd.name} commands:"]
    lines += [f"  {cmd.name} {sub.name}" for sub in cmd.subs]
    return "\n".join(lines) + "\n"


def subcommand_usage(cmd: Command, sub: Sub) -> str:
    """`subcommand_usage`: the `--help` text of one subcommand (dog.md §11)."""
    opts = sub_options(cmd, sub)
    head = f"Usage: {PROGRAM} {cmd.name} {sub.name}"
    if len(sub.subs) == 1:
        head += f" {sub.subs[0].name}"
    elif sub.subs:
        head += " {" + "|".join(s.name for s in sub.subs) + "}"
    for opt in opts:
        head += f" [-{opt.ch} {opt.name}]" if opt.has_arg else f" [-{opt.ch}]"
    if sub.arg:
        head += f" {sub.arg}"
    lines = [head]
    if sub.subs:
        lines.append("Available subcommands:")
        lines += [f"  {s.name:<24}{s.desc}" for s in sub.subs]
    lines.append("Options:")
    lines += [f"  {'-' + o.ch + ', --' + o.name:<24}{o.desc}" for o in opts]
    return "\n".join(lines) + "\n"


__all__ = [
    "PROGRAM", "VERSION", "NEED_NODELIST", "NEED_ARG", "Opt", "Sub", "Command", "COMMANDS",
    "COMMON_OPTIONS", "find_command", "find_sub", "find_opt", "sub_options", "top_usage",
    "command_list", "subcommand_usage",
]
