"""The NBD plugin against nbdkit's own file plugin, in one run, on the same disk.

Starts a 3-node cluster (stores in one temp dir), a copies=1 and a copies=3 VDI, each
exported by `nbdkit python frontends/nbd/plugin.py` on a unix socket, and
`nbdkit file` serving a sparse file in the same temp dir.  For each of the three:

* nbdcopy write of 1 GiB of random data from a file in that dir (``--flush``: durable
  at the end, the file plugin's fdatasync included), into a fresh VDI / a fresh sparse file;
* nbdcopy read of the same 1 GiB to ``null:``;
* 4 KiB random read then write IOPS with ``qemu-img bench -d 16`` (offsets stride
  7919 blocks through the whole image, so every request hits another place);

then prints one table with the ratios to the file plugin.

    .venv/bin/python bench/bench_nbd.py [--gib 1] [--ops 5000] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frontends.nbd import PLUGIN  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402

MiB = 1 << 20
STRIDE = 7919 * 4096  # a prime number of blocks: the offsets visit every block once


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV")}


class Server:
    def __init__(self, root: Path, name: str, args: list[str]) -> None:
        self.sock = root / f"{name}.sock"
        pidfile = root / f"{name}.pid"
        self.log = open(root / f"{name}.log", "wb")
        self.proc = subprocess.Popen(["nbdkit", "-f", "-U", str(self.sock), "-P", str(pidfile),
                                      *args], stdout=self.log, stderr=self.log, env=clean_env())
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdkit {args} did not start: "
                                   f"{(root / f'{name}.log').read_text()}")
            time.sleep(0.02)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=clean_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def iops(uri: str, ops: int, write: bool) -> float:
    cmd = ["qemu-img", "bench", "-f", "raw", "-c", str(ops), "-d", "16", "-s", "4096",
           "-S", str(STRIDE), *(["-w"] if write else []), uri]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=clean_env()).stdout
    secs = float(re.search(r"Run completed in ([0-9.]+) seconds", out).group(1))
    return ops / secs


def measure(uri: str, src: Path, size: int, ops: int) -> dict[str, float]:
    mib = size / MiB
    out = {}
    out["nbdcopy write MiB/s"] = mib / timed(["nbdcopy", "--flush", str(src), uri])
    out["nbdcopy read MiB/s"] = mib / timed(["nbdcopy", uri, "null:"])
    out["4 KiB random read IOPS"] = iops(uri, ops, write=False)
    out["4 KiB random write IOPS"] = iops(uri, ops, write=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="bytes copied by nbdcopy (GiB)")
    ap.add_argument("--ops", type=int, default=5000, help="requests per qemu-img bench run")
    ap.add_argument("--dir", help="where the stores, the file and the source go (one disk)")
    a = ap.parse_args()
    size = int(a.gib * 1024) * MiB
    root = Path(tempfile.mkdtemp(prefix="bench-nbd-", dir=a.dir))
    servers: list[Server] = []
    cluster = Cluster(root / "cluster", 3)
    try:
        for s in cluster.nodes:  # info, not the harness's debug log: no log I/O per request
            s.start("-l", "level=info")
        cluster.wait_members(3)
        cluster.format(3)
        cluster.dog("vdi", "create", "-c", "1", "one", str(size))
        cluster.dog("vdi", "create", "-c", "3", "three", str(size))
        src = root / "source.img"
        with open(src, "wb") as f:
            for _ in range(size // (64 * MiB)):
                f.write(os.urandom(64 * MiB))
        target = root / "file.img"
        with open(target, "wb") as f:
            f.truncate(size)
        port = str(cluster.nodes[0].port)
        file_srv = Server(root, "file", ["file", str(target)])
        servers.append(file_srv)
        one = Server(root, "one", ["python", PLUGIN, "vdi=one", f"port={port}"])
        servers.append(one)
        three = Server(root, "three", ["python", PLUGIN, "vdi=three", f"port={port}"])
        servers.append(three)
        results = {}
        for name, srv in (("file plugin", file_srv), ("copies=1", one), ("copies=3", three)):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = measure(srv.uri, src, size, a.ops)
    finally:
        for s in servers:
            s.stop()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    base = results["file plugin"]
    print(f"\nnbdkit python plugin vs nbdkit file plugin, {size // MiB} MiB, "
          f"3 sheep on one machine ({os.cpu_count()} CPUs)\n")
    head = f"{'':26} {'file plugin':>12} {'copies=1':>10} {'ratio':>6} {'copies=3':>10} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for key in base:
        f, c1, c3 = base[key], results["copies=1"][key], results["copies=3"][key]
        print(f"{key:26} {f:12.0f} {c1:10.0f} {c1 / f:6.2f} {c3:10.0f} {c3 / f:6.2f}")


if __name__ == "__main__":
    main()
