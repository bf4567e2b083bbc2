"""Gateway: place an object and forward the request to its replicas (wire.md §6.4, §9.1).

Any node accepts object I/O.  Writes go to every replica in parallel and are
acknowledged only when all of them answered; reads try the local replica first, then the
others from a random one.  Results that mean "the membership is changing" (a peer died,
epochs differ) are never shown to the client: the gateway waits for the next epoch and
retries with the new placement, up to `RETRY_TIMEOUT`.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from ..proto.constants import GATEWAY_TO_PEER, SD_SHEEP_PROTO_VER, ClusterFlag, Flag, Op, Res
from ..proto.header import ObjArgs, Request, Response
from ..proto.oid import is_data_obj, object_size, oid_to_vid
from ..proto.structs import SdNode
from .node import Reply

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("sheep.gateway")

RETRY_RESULTS = frozenset({Res.OLD_NODE_VER, Res.NEW_NODE_VER, Res.NETWORK_ERROR,
                           Res.WAIT_FOR_JOIN, Res.WAIT_FOR_FORMAT, Res.KILLED})
RETRY_TIMEOUT = 60.0
EPOCH_WAIT = 1.0


def obj_copies(node: "Node", oid: int, requested: int = 0) -> int:
    return requested or node.vdis.copies(oid_to_vid(oid), node.nr_copies)


def obj_size(node: "Node", oid: int) -> int:
    return object_size(oid, node.vdis.shift(oid_to_vid(oid), node.block_size_shift))


def _peer_request(opcode: int, epoch: int, oid: int, offset: int, length: int, copies: int,
                  flags: int, cow_oid: int = 0, args: Any = None) -> Request:
    """``epoch`` is the one whose ring chose the targets: a target at a newer epoch then
    answers OLD_NODE_VER (retried with the new placement) instead of acting on a request
    that the new placement does not send it (e.g. NO_OBJ from a node that just gave the
    object up, while its new owner never sees the write)."""
    return Request(GATEWAY_TO_PEER[opcode], flags=flags | Flag.CMD_FWD, data_length=length,
                   epoch=epoch, proto_ver=SD_SHEEP_PROTO_VER,
                   args=args or ObjArgs(oid=oid, cow_oid=cow_oid, copies=copies, offset=offset))


async def send_to(node: "Node", target: SdNode, req: Request,
                  payload: bytes | bytearray | memoryview | None) -> tuple[int, bytes | bytearray | memoryview]:
    """Run a peer request on ``target``: in-process when it is this node."""
    if target.nid == node.me.nid:
        from .ops import execute_peer
        reply = await execute_peer(node, req, payload if payload is not None else b"")
        return reply.result, reply.data
    rsp, data = await node.peers.call(target.nid, req, payload)
    return rsp.result, data


EPOCH_RESULTS = frozenset({Res.NETWORK_ERROR, Res.OLD_NODE_VER})


async def _retry_wait(node: "Node", epoch: int, results: list[int]) -> None:
    """A dead peer or a newer epoch elsewhere: wait for our epoch to move.  A peer that is
    still catching up (formatting, joining): a short pause is enough."""
    if any(r in EPOCH_RESULTS for r in results):
        await node.wait_epoch_change(epoch, EPOCH_WAIT)
    else:
        await trio.sleep(0.05)


Attempt = Callable[[list[SdNode], int], Awaitable[tuple[Reply | None, list[int]]]]


async def _retrying(node: "Node", oid: int, copies: int, attempt: Attempt) -> Reply:
    """Run ``attempt`` on the object's current replicas until it has an answer a client may
    see: a success, or a failure that is not about membership changing.  ``attempt`` gets
    the targets and the epoch whose ring chose them, to stamp on its peer requests (the
    epoch may move while the attempt runs)."""
    with trio.move_on_after(RETRY_TIMEOUT):
        while True:
            epoch = node.epoch
            targets = node.ring.oid_to_nodes(oid, copies)
            if not targets:
                return Reply(Res.HALT)
            reply, failed = await attempt(targets, epoch)
            if reply is not None:
                return reply
            retry = [r for r in failed if r in RETRY_RESULTS]
            if not retry:
                log.debug("request on %016x at epoch %d failed on %s: %s", oid, epoch,
                          [str(t.nid) for t in targets], [hex(r) for r in failed])
                return Reply(failed[-1])
            log.info("request on %016x: %s, retrying at the next epoch", oid, [hex(r) for r in failed])
            await _retry_wait(node, epoch, retry)
    return Reply(Res.NETWORK_ERROR)


async def read_obj(node: "Node", oid: int, offset: int, length: int, copies: int = 0,
                   flags: int = 0) -> Reply:
    """READ_OBJ: the local replica first, then the others from a random one; first SUCCESS wins."""
    copies = obj_copies(node, oid, copies)

    async def attempt(targets: list[SdNode], epoch: int) -> tuple[Reply | None, list[int]]:
        local = [t for t in targets if t.nid == node.me.nid]
        others = [t for t in targets if t.nid != node.me.nid]
        if others:
            k = random.randrange(len(others))
            others = others[k:] + others[:k]
        req = _peer_request(Op.READ_OBJ, epoch, oid, offset, length, copies, flags & ~Flag.CMD_WRITE)
        results = []
        for target in local + others:
            result, data = await send_to(node, target, req, None)
            if result == Res.SUCCESS:
                return Reply(Res.SUCCESS, data), []
            results.append(result)
        return None, results

    return await _retrying(node, oid, copies, attempt)


async def fanout(node: "Node", opcode: int, oid: int, offset: int = 0,
                 data: bytes | bytearray | memoryview = b"", copies: int = 0, flags: int = 0,
                 cow_oid: int = 0, args: Any = None) -> Reply:
    """CREATE_AND_WRITE / WRITE / REMOVE / DECREF on every replica; SUCCESS only if all
    succeeded.  ``args`` replaces the object union (DECREF carries a `RefArgs`)."""
    copies = obj_copies(node, oid, copies)
    if (node.flags & ClusterFlag.STRICT and opcode in (Op.CREATE_AND_WRITE_OBJ, Op.WRITE_OBJ)
            and node.ring.nr_zones < copies):
        return Reply(Res.HALT)  # strict mode: no write with fewer zones than copies
    has_payload = len(data) > 0 and opcode not in (Op.REMOVE_OBJ, Op.DECREF_OBJ)
    wflags = (flags | Flag.CMD_WRITE) if has_payload else (flags & ~Flag.CMD_WRITE)

    async def attempt(targets: list[SdNode], epoch: int) -> tuple[Reply | None, list[int]]:
        results: list[int] = [Res.SUCCESS] * len(targets)

        async def one(i: int, target: SdNode) -> None:
            req = _peer_request(opcode, epoch, oid, offset, len(data), copies, wflags, cow_oid, args)
            results[i], _ = await send_to(node, target, req, data if has_payload else None)

        if len(targets) == 1:  # (copies=1: no nursery to pay for)
            await one(0, targets[0])
        else:
            async with trio.open_nursery() as nursery:
                for i, target in enumerate(targets):
                    nursery.start_soon(one, i, target)
        failed = [r for r in results if r != Res.SUCCESS]
        return (None, failed) if failed else (Reply(Res.SUCCESS), [])

    return await _retrying(node, oid, copies, attempt)


def readonly(node: "Node", oid: int) -> bool:
    """Data objects of snapshots are immutable (objects.md §6.1)."""
    return is_data_obj(oid) and node.vdis.is_snapshot(oid_to_vid(oid))


async def create_and_write(node: "Node", oid: int, offset: int, data: bytes | bytearray | memoryview,
                           copies: int = 0, flags: int = 0, cow_oid: int = 0) -> Reply:
    """CREATE_AND_WRITE_OBJ, with copy-on-write from ``cow_oid`` when asked (wire.md §9.1)."""
    size = obj_size(node, oid)
    if offset + len(data) > size:
        return Reply(Res.INVALID_PARMS)
    if readonly(node, oid):
        return Reply(Res.READONLY)
    if flags & Flag.CMD_COW and len(data) != size:
        base = await read_obj(node, cow_oid, 0, size)
        if base.result != Res.SUCCESS:
            return base
        merged = bytearray(base.data)
        merged[offset:offset + len(data)] = data
        data, offset = merged, 0
    return await fanout(node, Op.CREATE_AND_WRITE_OBJ, oid, offset, data, copies,
                        flags & ~Flag.CMD_COW)


__all__ = ["read_obj", "fanout", "create_and_write", "readonly", "obj_copies", "obj_size",
           "send_to", "Response"]
