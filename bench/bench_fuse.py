"""Sequential dd through sheepfs's volume/<vdi> against the NBD path, same cluster, same run.

Starts a 3-node local cluster (copies=3), then for each path writes the same random data
into a fresh VDI (so every path pays for allocating the objects) and reads it back:

* sheepfs, direct I/O (the default): ``dd bs=4M conv=notrunc,fsync`` / ``dd bs=4M``;
* sheepfs with the kernel page cache (config/page_cache = 1, as ``sheepfs -k``);
* NBD: ``sheepdog-nbd`` (nbdkit + the project's Python plugin), copied with nbdcopy once
  as dd does it (one connection, one 4 MiB request at a time, flush at the end) and once
  with nbdcopy's defaults (several connections, many requests in flight);
* ``dog vdi write`` / ``dog vdi read`` as a reference.

Without /dev/nbd* there is no kernel NBD device to run dd on, hence nbdcopy for NBD.
Every VDI is checked afterwards (md5 through dog) unless --no-verify.

    .venv/bin/python bench/bench_fuse.py [--mib 256] [--no-verify]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.harness import BIN, Cluster, stop_process  # noqa: E402

SHEEPFS = str(BIN / "sheepfs")
SHEEPDOG_NBD = str(BIN / "sheepdog-nbd")


def timed(cmd: list[str] | str, **kw) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, shell=isinstance(cmd, str), timeout=3600, **kw)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} exited {r.returncode}: {r.stderr.decode(errors='replace')}")
    return elapsed


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class Sheepfs:
    def __init__(self, root: Path, port: int) -> None:
        self.mnt = root / "mnt"
        self.mnt.mkdir()
        self.proc = subprocess.Popen([SHEEPFS, "-f", "-p", str(port), "--log",
                                      str(root / "sheepfs.log"), str(self.mnt)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sheepfs did not mount: {self.proc.stderr.read().decode()}")
            time.sleep(0.02)

    def mount(self, vdi: str) -> Path:
        (self.mnt / "vdi/mount").write_text(vdi + "\n")
        return self.mnt / "volume" / vdi

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, timeout=60)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)


class NbdExport:
    """``sheepdog-nbd`` in the foreground (it prints the URI once nbdkit serves); stopped
    with SIGTERM, which it forwards to nbdkit."""

    def __init__(self, root: Path, port: int, vdi: str) -> None:
        sock = root / f"{vdi}.sock"
        self.proc = subprocess.Popen([SHEEPDOG_NBD, "-p", str(port), "-U", str(sock), vdi],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.uri = (self.proc.stdout.readline() if self.proc.stdout else "").strip()
        if not self.uri.startswith("nbd"):
            self.stop()
            raise RuntimeError(f"sheepdog-nbd did not serve {vdi}: "
                               f"{self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> None:
        stop_process(self.proc, 20)


def nbd_available() -> str | None:
    """None if the NBD path can run, else why not."""
    if not os.path.exists(SHEEPDOG_NBD):
        return "sheepdog-nbd is not installed"
    for tool in ("nbdkit", "nbdcopy"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt: nbdkit nbdkit-plugin-python libnbd-bin)"
    return None


Row = tuple[str, str, float, float]  # path, tool, write MiB/s, read MiB/s


def run(root: Path, mib: int, verify: bool) -> tuple[list[Row], list[str]]:
    cluster = Cluster(root / "cluster", 3).start()
    rows: list[Row] = []
    notes: list[str] = []
    fs: Sheepfs | None = None
    try:
        cluster.format(3)
        port = cluster.nodes[0].port
        data = root / "data"
        data.write_bytes(os.urandom(mib << 20))
        want = hashlib.md5(data.read_bytes()).hexdigest()
        written: list[str] = []

        def vdi(name: str) -> str:
            cluster.dog("vdi", "create", name, f"{mib}M")
            written.append(name)
            return name

        fs = Sheepfs(root, port)
        for label, page_cache in (("sheepfs volume/, direct I/O", "0"),
                                  ("sheepfs volume/, page cache (-k)", "1")):
            (fs.mnt / "config/page_cache").write_text(page_cache + "\n")
            vol = fs.mount(vdi(f"fuse{page_cache}"))
            w = timed(["dd", f"if={data}", f"of={vol}", "bs=4M", "conv=notrunc,fsync"])
            r = timed(["dd", f"if={vol}", "of=/dev/null", "bs=4M"])
            rows.append((label, "dd bs=4M", mib / w, mib / r))
        fs.stop()
        fs = None

        why = nbd_available()
        if why is None:
            for label, tool, opts in (
                    ("NBD (sheepdog-nbd), as dd", "nbdcopy -C1 -R1, 4M requests",
                     ["-C", "1", "-R", "1", "--request-size=4194304"]),
                    ("NBD (sheepdog-nbd), parallel", "nbdcopy defaults", [])):
                name = vdi(f"nbd{len(rows)}")
                exp = NbdExport(root, port, name)
                try:
                    w = timed(["nbdcopy", "--flush", "-S", "0", *opts, str(data), exp.uri])
                    r = timed(["nbdcopy", "--no-extents", *opts, exp.uri, "null:"])
                finally:
                    exp.stop()
                rows.append((label, tool, mib / w, mib / r))
        else:
            notes.append(f"NBD path skipped: {why}; compare with the dog rows instead")

        name = vdi("dog")
        dog = str(BIN / "dog")
        w = timed(f"{dog} vdi write -p {port} {name} 0 {mib}M < {data}")
        r = timed(f"{dog} vdi read -p {port} {name} 0 {mib}M > /dev/null")
        rows.append(("dog (reference)", "vdi write / vdi read", mib / w, mib / r))

        if verify:
            for name in written:
                got = hashlib.md5(cluster.dog("vdi", "read", name, "0", f"{mib}M").stdout)
                if got.hexdigest() != want:
                    raise AssertionError(f"VDI {name} does not hold the data written")
            notes.append(f"verified: all {len(written)} VDIs hold the data (md5 via dog)")
    finally:
        if fs is not None:
            fs.stop()
        cluster.stop()
    return rows, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB written and read per path")
    ap.add_argument("--no-verify", action="store_true", help="skip the md5 check")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuse-") as tmp:
        rows, notes = run(Path(tmp), a.mib, not a.no_verify)
    print(f"sequential I/O, {a.mib} MiB per path, 3-node local cluster, copies=3")
    print()
    print(f"| {'path':34} | {'tool':29} | {'write MiB/s':>11} | {'read MiB/s':>10} |")
    print(f"|{'-' * 36}|{'-' * 31}|{'-' * 12}:|{'-' * 11}:|")
    for label, tool, w, r in rows:
        print(f"| {label:34} | {tool:29} | {w:11.1f} | {r:10.1f} |")
    for n in notes:
        print(f"\n{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
