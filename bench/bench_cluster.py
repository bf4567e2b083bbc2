"""Object I/O through a 3-node local cluster (copies=3) against plain files on the same disk.

Prints one table with both measured in the same run, so the ratio means something on a
noisy machine:

* sequential write / read, 4 MiB requests, 8 in flight (client library, pipelined);
* 4 KiB random write / read, 16 in flight.

The baseline does the same pattern with `os.pwrite`/`os.pread` on files in the same
temp dir: each write goes to three files (one per replica), with O_DSYNC like the sheep
store, from a pool of threads as deep as the pipeline.

    .venv/bin/python bench/bench_cluster.py [--mib 512] [--ops 4000]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sheep.client.api import Client  # noqa: E402
from sheep.proto.constants import Op  # noqa: E402
from sheep.proto.oid import vid_to_data_oid  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402

OBJ = 4 << 20
BLOCK = 4096


def cluster_run(root: Path, mib: int, ops: int) -> dict[str, float]:
    cluster = Cluster(root / "cluster", 3).start()
    try:
        cluster.format(3)
        out = {}
        with Client("127.0.0.1", cluster.nodes[0].port) as c:
            vid = c.new_vdi("bench", mib << 20).vdi_id
            nobj = mib * (1 << 20) // OBJ
            payload = os.urandom(OBJ)
            conn = c.conn
            t = time.perf_counter()
            items = ((Client.obj_request(Op.CREATE_AND_WRITE_OBJ, vid_to_data_oid(vid, i), OBJ), payload, None)
                     for i in range(nobj))
            for rsp, _ in conn.iter_many(items, window=8):
                assert rsp.result == 0, rsp
            out["seq write MiB/s"] = mib / (time.perf_counter() - t)
            t = time.perf_counter()
            buf = bytearray(OBJ)
            items = ((Client.obj_request(Op.READ_OBJ, vid_to_data_oid(vid, i), OBJ), None, buf)
                     for i in range(nobj))
            for rsp, _ in conn.iter_many(items, window=8):
                assert rsp.result == 0, rsp
            out["seq read MiB/s"] = mib / (time.perf_counter() - t)
            rng = random.Random(1)
            spots = [(rng.randrange(nobj), rng.randrange(OBJ // BLOCK) * BLOCK) for _ in range(ops)]
            small = os.urandom(BLOCK)
            t = time.perf_counter()
            items = ((Client.obj_request(Op.WRITE_OBJ, vid_to_data_oid(vid, i), BLOCK, off), small, None)
                     for i, off in spots)
            for rsp, _ in conn.iter_many(items, window=16):
                assert rsp.result == 0, rsp
            out["4k rand write IOPS"] = ops / (time.perf_counter() - t)
            rbuf = bytearray(BLOCK)
            t = time.perf_counter()
            items = ((Client.obj_request(Op.READ_OBJ, vid_to_data_oid(vid, i), BLOCK, off), None, rbuf)
                     for i, off in spots)
            for rsp, _ in conn.iter_many(items, window=16):
                assert rsp.result == 0, rsp
            out["4k rand read IOPS"] = ops / (time.perf_counter() - t)
        return out
    finally:
        cluster.stop()


def file_run(root: Path, mib: int, ops: int) -> dict[str, float]:
    root.mkdir(parents=True, exist_ok=True)
    nobj = mib * (1 << 20) // OBJ
    payload = os.urandom(OBJ)
    out = {}

    def create(i: int) -> None:
        for r in range(3):  # three replicas
            fd = os.open(root / f"{r}-{i}", os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
            os.pwrite(fd, payload, 0)
            os.close(fd)

    def read(i: int) -> None:
        fd = os.open(root / f"0-{i}", os.O_RDONLY)
        os.pread(fd, OBJ, 0)
        os.close(fd)

    rng = random.Random(1)
    spots = [(rng.randrange(nobj), rng.randrange(OBJ // BLOCK) * BLOCK) for _ in range(ops)]
    small = os.urandom(BLOCK)

    def rwrite(spot: tuple[int, int]) -> None:
        for r in range(3):
            fd = os.open(root / f"{r}-{spot[0]}", os.O_WRONLY | os.O_DSYNC)
            os.pwrite(fd, small, spot[1])
            os.close(fd)

    def rread(spot: tuple[int, int]) -> None:
        fd = os.open(root / f"0-{spot[0]}", os.O_RDONLY)
        os.pread(fd, BLOCK, spot[1])
        os.close(fd)

    for name, fn, work, depth, unit in (("seq write MiB/s", create, range(nobj), 8, mib),
                                        ("seq read MiB/s", read, range(nobj), 8, mib),
                                        ("4k rand write IOPS", rwrite, spots, 16, ops),
                                        ("4k rand read IOPS", rread, spots, 16, ops)):
        with ThreadPoolExecutor(depth) as pool:
            t = time.perf_counter()
            list(pool.map(fn, work))
            out[name] = unit / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="data for the sequential runs (MiB)")
    ap.add_argument("--ops", type=int, default=4000, help="random 4 KiB operations")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        files = file_run(Path(tmp) / "files", args.mib, args.ops)
        sheep = cluster_run(Path(tmp), args.mib, args.ops)
    print(f"{'pattern':<22}{'sheep (copies=3)':>18}{'files x3':>14}{'ratio':>9}")
    for key in sheep:
        print(f"{key:<22}{sheep[key]:>18.1f}{files[key]:>14.1f}{sheep[key] / files[key]:>9.2f}")


if __name__ == "__main__":
    main()
