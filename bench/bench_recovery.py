"""Time to restore full redundancy after losing a node (4 nodes, copies=3).

Writes a VDI large enough that each node holds about ``--gib`` GiB, kills one node with
SIGKILL, and measures until every object again has 3 replicas exactly where placement
says (and no stale copy is left).  Runs twice: throttle off, and throttled with
SET_RECOVERY (``--max`` objects per ``--interval`` ms) on every node.  Reports MiB/s of
data re-replicated (what the lost node held) per second.

    .venv/bin/python bench/bench_recovery.py [--gib 1] [--max 4] [--interval 100]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sheep.client.volume import Volume  # noqa: E402
from sheep.proto.constants import Flag, Op, Res  # noqa: E402
from sheep.proto.header import Request  # noqa: E402
from sheep.proto.structs import RecoveryThrottling  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402


def run(root: Path, gib: float, throttle: tuple[int, int] | None) -> tuple[float, float]:
    cluster = Cluster(root, 4).start()
    try:
        cluster.format(3)
        size = int(gib * 4 / 3 * (1 << 30)) >> 25 << 25  # whole 32 MiB writes
        chunk = os.urandom(4 << 20)
        with cluster.client() as c:
            c.new_vdi("bench", size)
            vol = Volume(c, c.read_inode(c.get_vdi_info("bench").vdi_id))
            for off in range(0, size, 32 << 20):
                vol.write(off, chunk * 8)
        if throttle:
            body = RecoveryThrottling(max_exec_count=throttle[0], queue_work_interval=throttle[1],
                                      throttling=True).encode()
            for i in range(4):
                with cluster.client(i) as c:
                    rsp, _ = c.call(Request(Op.SET_RECOVERY, Flag.CMD_WRITE, len(body)), body)
                    assert rsp.result == Res.SUCCESS
        victim = cluster.nodes[3]
        lost = sum(os.path.getsize(victim.store / "obj" / n) for n in os.listdir(victim.store / "obj")
                   if len(n) == 16)
        t = time.perf_counter()
        victim.kill9()
        cluster.wait_members(3)
        cluster.wait_redundant(timeout=3600)
        elapsed = time.perf_counter() - t
        return elapsed, lost / (1 << 20) / elapsed
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="data held by the node that is lost")
    ap.add_argument("--max", type=int, default=4, help="throttled run: objects per interval")
    ap.add_argument("--interval", type=int, default=100, help="throttled run: interval in ms")
    args = ap.parse_args()
    rows = []
    for label, throttle in (("throttle off", None), (f"max={args.max},interval={args.interval}",
                                                     (args.max, args.interval))):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
            rows.append((label, *run(Path(tmp), args.gib, throttle)))
    base = rows[0][2]
    print(f"{'recovery':<28}{'seconds':>10}{'MiB/s':>10}{'ratio':>8}")
    for label, secs, rate in rows:
        print(f"{label:<28}{secs:>10.1f}{rate:>10.1f}{rate / base:>8.2f}")


if __name__ == "__main__":
    main()
