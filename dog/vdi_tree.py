"""`dog vdi tree` and `dog vdi graph` (dog/vdi.c, dog/treeview.c; dog.md §4.7, §4.8).

The forest and both drawings are pure functions of (vid, inode header) pairs, so they can be
checked against dog.md §8 without a cluster.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from sheep.proto.inode import InodeHeader
from sheep.proto.sizes import strnumber

from .common import EXIT_SUCCESS, Context, cpad, err, localtime_str, out, parse_vdi

TEXT_BOLD = "\033[1m"
TEXT_NORMAL = "\033[0m"


@dataclass(eq=False)
class TreeNode:
    """`struct vdi_tree`: one VDI of the forest."""

    name: str
    label: str
    vid: int
    pvid: int
    highlight: bool = False
    children: list["TreeNode"] = field(default_factory=list)


def _find(parent: TreeNode, vid: int, name: str) -> TreeNode | None:
    """Depth-first search for (vid, name) below ``parent`` (`find_vdi`)."""
    for child in parent.children:
        if child.vid == vid and child.name == name:
            return child
        found = _find(child, vid, name)
        if found is not None:
            return found
    return None


def _contains(node: TreeNode, other: TreeNode) -> bool:
    return node is other or any(_contains(c, other) for c in node.children)


def build_forest(entries: Iterable[tuple[str, str, int, int, bool]]) -> TreeNode:
    """The root of the forest of (name, label, vid, parent vid, highlight) in scan order.

    A VDI hangs under the VDI with vid ``pvid`` *and the same name*, else under the root
    (`add_vdi_tree`); VDIs met before their parent are moved under it afterwards
    (`compaction`).
    """
    root = TreeNode("", "", 0, 0)
    for name, label, vid, pvid, highlight in entries:
        parent = _find(root, pvid, name) or root
        parent.children.append(TreeNode(name, label, vid, pvid, highlight))

    def compaction(parent: TreeNode) -> None:
        for node in list(parent.children):
            new_parent = _find(root, node.pvid, node.name)
            if new_parent is not None and new_parent is not parent \
                    and not _contains(node, new_parent):
                parent.children.remove(node)
                new_parent.children.append(node)
            compaction(node)

    compaction(root)
    return root


def _clen(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def render_tree(root: TreeNode) -> str:
    """`dump_tree`: each root's name, then its chain of labels (dog.md §4.7)."""
    parts: list[str] = []
    width: dict[int, int] = {}
    more: dict[int, bool] = {}

    def indent(level: int, first: bool, last: bool) -> None:
        if first:
            parts.append("---" if last else "-+-")
            return
        for lvl in range(level - 1):
            parts.append(" " * (width[lvl] + 1) + ("| " if more[lvl + 1] else "  "))
        parts.append(" " * (width[level - 1] + 1) + ("`-" if last else "|-"))

    def dump(node: TreeNode, level: int, first: bool, last: bool) -> None:
        indent(level, first, last)
        parts.append(f"{TEXT_BOLD}{node.label}{TEXT_NORMAL}" if node.highlight else node.label)
        if not node.children:
            parts.append("\n")
            return
        more[level] = not last
        width[level] = _clen(node.label)
        n = len(node.children)
        for i, child in enumerate(node.children):
            dump(child, level + 1, i == 0, i == n - 1)

    for vdi in root.children:
        parts.append(vdi.name)
        more[0] = False
        width[0] = _clen(vdi.name)
        dump(vdi, 1, True, True)
    return "".join(parts)


def tree_label(h: InodeHeader) -> str:
    """Snapshots show their creation time, the working VDI ``(you are here)``."""
    if h.is_snapshot:
        return localtime_str(h.create_time >> 32, "[%Y-%m-%d %H:%M]")
    return "(you are here)"


def tree_text(vdis: Iterable[tuple[int, InodeHeader]], highlight: bool = False) -> str:
    """The whole `vdi tree` output for (vid, header) pairs in ascending vid order."""
    return render_tree(build_forest(
        (h.name, tree_label(h), vid, h.parent_vdi_id, highlight and not h.is_snapshot)
        for vid, h in vdis))


GRAPH_HEADER = ('digraph G {\n  node [shape = "box", fontname = "Courier"];\n\n'
                '  "0" [shape = "ellipse", label = "root"];\n\n')


def graph_node(vid: int, h: InodeHeader) -> str:
    """One VDI of `vdi graph`: its edge and its node block."""
    t = h.create_time >> 32
    snapid = h.snap_id if h.is_snapshot else 0
    label = (f"Name: {cpad(h.name, 10)}\\nTag:  {snapid:10x}\\n"
             f"Size: {cpad(strnumber(h.vdi_size), 10)}\\n"
             f"Date: {cpad(localtime_str(t, '%Y-%m-%d'), 10)}\\n"
             f"Time: {cpad(localtime_str(t, '%H:%M:%S'), 10)}")
    tail = '"\n  ];\n\n' if h.is_snapshot else '",\n    color="red"\n  ];\n\n'
    return (f'  "{h.parent_vdi_id:x}" -> "{vid:x}";\n'
            f'  "{vid:x}" [\n    group = "{h.name}",\n    label = "{label}{tail}')


def _headers(ctx: Context) -> Iterator[tuple[int, InodeHeader]]:
    return ((vid, inode.header) for vid, inode in parse_vdi(ctx, with_index=False))


def vdi_tree(ctx: Context, args: list[str]) -> int:
    highlight = sys.stdout.isatty() and not ctx.raw
    out(tree_text(list(_headers(ctx)), highlight))
    return EXIT_SUCCESS


def vdi_graph(ctx: Context, args: list[str]) -> int:
    out(GRAPH_HEADER)
    for vid, h in _headers(ctx):
        out(graph_node(vid, h))
    out("}\n")
    return EXIT_SUCCESS


def is_vdi_standalone(ctx: Context, vid: int, name: str) -> bool:
    """`is_vdi_standalone` (vdi alter-copy): no parent and no children in the forest."""
    root = build_forest((h.name, h.tag, v, h.parent_vdi_id, False) for v, h in _headers(ctx))
    node = _find(root, vid, name)
    if node is None:
        err("failed to construct vdi tree")
        return False
    return not node.pvid and not node.children
