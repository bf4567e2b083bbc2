"""What a cluster driver gives the daemon: membership events and totally ordered messages.

Drivers (local, zookeeper, corosync) differ only in transport.  They all deliver the same
events, in the same order, to every member, through a `ClusterHandler`:

* ``join_check`` runs on one member (the master) when a node asks to join; its reply
  bytes (the master's cluster state) reach every member with the accept event.
* ``on_accept`` / ``on_leave`` change membership; ``on_notify`` carries a broadcast.

Nodes are opaque bytes to the driver (an encoded ``sd_node``); ``uid`` tells two
incarnations of the same address apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Member:
    uid: str
    node: bytes  # encoded struct sd_node (80 bytes)


class JoinRejected(Exception):
    """The master refused this node (e.g. it belongs to another cluster)."""


class ClusterHandler(Protocol):
    def join_check(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        """On the master: accept or refuse ``joiner``; the bytes go to every member."""

    async def on_accept(self, joiner: Member, members: list[Member], reply: bytes, is_me: bool) -> None:
        """``joiner`` is now a member (``members`` includes it, in join order)."""

    async def on_leave(self, left: Member, members: list[Member]) -> None:
        """``left`` is gone (clean exit or crash); ``members`` is what remains."""

    async def on_update(self, member: Member, members: list[Member]) -> None:
        """``member`` changed its sd_node (weight or vnodes): a membership change."""

    async def on_notify(self, sender: Member, data: bytes) -> None:
        """A broadcast, delivered to every member in the same total order."""


class ClusterDriver(Protocol):
    name: str

    async def run(self, handler: ClusterHandler, me: bytes, opaque: bytes, *, task_status) -> None:
        """Join, then deliver events until cancelled or `leave` is called."""

    async def sync(self) -> None:
        """Process every event the driver has already delivered: a client that got a
        reply from one node must see its effect on any other node it talks to next."""

    async def notify(self, data: bytes) -> None:
        """Broadcast ``data``; returns once this node has processed it itself."""

    def exclusive(self):
        """Async context manager: a cluster-wide mutex held while a cluster op does its
        work step, with every earlier event already processed locally."""

    async def update_node(self, node: bytes) -> None:
        """Announce that this node's sd_node changed."""

    async def leave(self) -> None:
        """Leave cleanly (others see a leave event at once)."""
