"""The NBD plugin against nbdkit's own file plugin, in one run, on the same disk.

Starts a 3-node cluster (stores in one temp dir), a copies=1 and a copies=3 VDI, each
exported by `nbdkit python frontends/nbd/plugin.py` on a unix socket, and
`nbdkit file` serving a sparse file in the same temp dir.  For each of the three:

* nbdcopy write of 1 GiB of random data from a file in that dir into a fresh VDI / a
  fresh sparse file, then one NBD flush: "write" is the copy (the data path, which is
  what the plugin is: CPU and copies), "durable" includes the flush (which this
  machine's disk dominates: it writes about 300-450 MB/s once a burst of about 1 GB at
  1.3 GB/s is spent, so durable rates depend on what ran before);
* nbdcopy read of the same 1 GiB to ``null:``;
* 4 KiB random read then write IOPS with ``qemu-img bench -d 16`` (offsets stride
  7919 blocks through the whole image, so every request hits another place);

in ``--rounds`` rounds (fresh targets each, the order rotating; the page cache is
written back before each copy), then prints the best of each measurement with its ratio
to the file plugin's best, and every round's numbers: the machines here are noisy.

    .venv/bin/python bench/bench_nbd.py [--gib 1] [--ops 5000] [--rounds 3] [--dir DIR]
                                        [--param KEY=VALUE ...]
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


def warm_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of memory and free it again.  In the VMs here a page the guest
    has not used for a while costs the host a fault on first touch: page-cache writes
    into such memory run at ~350 MB/s, into recently freed pages at ~4 GB/s (dd, 512
    MiB).  Without this, whichever target writes first after a quiet spell loses."""
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    buf = bytearray(min(nbytes, avail // 2))
    del buf


def measure(uri: str, src: Path, size: int, ops: int) -> dict[str, float]:
    mib = size / MiB
    out = {}
    os.sync()  # what an earlier run left dirty is not this run's to write back
    warm_memory(4 * size + (1 << 30))  # room for three replicas and the rest
    copy = timed(["nbdcopy", str(src), uri])
    flush = timed(["/usr/bin/python3", "-m", "nbd", "-u", uri, "-c", "h.flush()"])
    out["nbdcopy write MiB/s"] = mib / copy
    out["  + flush: durable MiB/s"] = mib / (copy + flush)
    out["nbdcopy read MiB/s"] = mib / timed(["nbdcopy", uri, "null:"])
    out["4 KiB random read IOPS"] = iops(uri, ops, write=False)
    out["4 KiB random write IOPS"] = iops(uri, ops, write=True)
    return out


TARGETS = ("file plugin", "copies=1", "copies=3")


def one_round(cluster: Cluster, root: Path, src: Path, size: int, ops: int, rnd: int,
              params: list[str]) -> dict[str, dict[str, float]]:
    """Fresh targets (an empty file, two new VDIs), measured in an order that rotates
    from round to round, so that no target always follows the same one."""
    target = root / f"file{rnd}.img"
    with open(target, "wb") as f:
        f.truncate(size)
    cluster.dog("vdi", "create", "-c", "1", f"one{rnd}", str(size))
    cluster.dog("vdi", "create", "-c", "3", f"three{rnd}", str(size))
    port = str(cluster.nodes[0].port)
    servers = {
        "file plugin": Server(root, f"file{rnd}", ["file", str(target)]),
        "copies=1": Server(root, f"one{rnd}", ["python", PLUGIN, f"vdi=one{rnd}", f"port={port}",
                                               *params]),
        "copies=3": Server(root, f"three{rnd}", ["python", PLUGIN, f"vdi=three{rnd}",
                                                  f"port={port}", *params]),
    }
    results = {}
    try:
        for i in range(len(TARGETS)):
            name = TARGETS[(i + rnd) % len(TARGETS)]
            print(f"round {rnd + 1}: measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = measure(servers[name].uri, src, size, ops)
    finally:
        for srv in servers.values():
            srv.stop()
    target.unlink()
    for vdi in (f"one{rnd}", f"three{rnd}"):
        cluster.dog("vdi", "delete", vdi)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="bytes copied by nbdcopy (GiB)")
    ap.add_argument("--ops", type=int, default=5000, help="requests per qemu-img bench run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best of each is shown")
    ap.add_argument("--dir", help="where the stores, the file and the source go (one disk)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a plugin parameter, e.g. shortcircuit=false (repeatable)")
    a = ap.parse_args()
    size = int(a.gib * 1024) * MiB
    root = Path(tempfile.mkdtemp(prefix="bench-nbd-", dir=a.dir))
    cluster = Cluster(root / "cluster", 3)
    rounds = []
    try:
        for s in cluster.nodes:  # info, not the harness's debug log: no log I/O per request
            s.start("-l", "level=info")
        cluster.wait_members(3)
        cluster.format(3)
        src = root / "source.img"
        with open(src, "wb") as f:
            for _ in range(size // (64 * MiB)):
                f.write(os.urandom(64 * MiB))
        for rnd in range(a.rounds):
            rounds.append(one_round(cluster, root, src, size, a.ops, rnd, a.param))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    best = {t: {k: max(r[t][k] for r in rounds) for k in rounds[0][t]} for t in TARGETS}
    base = best["file plugin"]
    print(f"\nnbdkit python plugin{''.join(' ' + p for p in a.param)} vs nbdkit file plugin, "
          f"{size // MiB} MiB, 3 sheep on one machine ({os.cpu_count()} CPUs), "
          f"best of {len(rounds)} rounds\n")
    head = f"{'':26} {'file plugin':>12} {'copies=1':>10} {'ratio':>6} {'copies=3':>10} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for key in base:
        f, c1, c3 = base[key], best["copies=1"][key], best["copies=3"][key]
        print(f"{key:26} {f:12.0f} {c1:10.0f} {c1 / f:6.2f} {c3:10.0f} {c3 / f:6.2f}")
    print("\nevery round (file plugin / copies=1 / copies=3):")
    for key in base:
        cells = "   ".join("/".join(f"{r[t][key]:.0f}" for t in TARGETS) for r in rounds)
        print(f"{key:26} {cells}")


if __name__ == "__main__":
    main()
