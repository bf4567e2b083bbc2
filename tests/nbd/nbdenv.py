"""NBD test helpers: real sheep (tests/cluster/harness.py), real nbdkit running the plugin on
a unix socket in the test's tmp dir, real QEMU and libnbd tools.  Everything a test
starts is torn down by pid at its end."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from frontends.nbd import PLUGIN
from sheep.proto.constants import ClusterFlag
from tests.cluster.harness import BIN, DOG, Cluster, read_log, stop_process

TOOLS = ("nbdkit", "qemu-img", "qemu-io", "nbdcopy", "nbdinfo", "nbd-client",
         "qemu-system-x86_64")
SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-libnbd (the `nbd` module)
DROP_ENV = ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")


def clean_env() -> dict[str, str]:
    """What a user's shell would give nbdkit and the tools: no virtualenv variables."""
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def run(*cmd: str | Path, timeout: float = 120, check: bool = True, input: bytes | None = None,
        ) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=timeout, input=input,
                       env=clean_env())
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.stdout.decode()[-2000:]}\n"
                             f"{r.stderr.decode()[-2000:]}")
    return r


def nbd_py(uri: str, code: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess:
    """Run ``code`` with ``h``, a libnbd handle connected to ``uri`` (system Python)."""
    prog = f"import nbd, errno, sys\nh = nbd.NBD()\nh.connect_uri({uri!r})\n{code}\n"
    return run(SYSTEM_PYTHON, "-c", prog, timeout=timeout, check=check)


class Nbdkit:
    """``nbdkit -f -U SOCK python plugin.py PARAMS``; `start` returns once it serves."""

    def __init__(self, root: Path, name: str, params: list[str], extra: list[str]) -> None:
        self.sock = root / f"{name}.sock"
        self.pidfile = root / f"{name}.pid"
        self.logfile = root / f"{name}.log"
        self.cmd = ["nbdkit", "-f", "-U", str(self.sock), "-P", str(self.pidfile), *extra,
                    "python", PLUGIN, *params]
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    def start(self, timeout: float = 30) -> "Nbdkit":
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, env=clean_env())
        deadline = time.monotonic() + timeout
        while not (self.pidfile.exists() and self.pidfile.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nbdkit exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nbdkit did not serve: {self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        return read_log(self.logfile)

    def stop(self) -> None:
        stop_process(self.proc, 15)


class Env:
    """Clusters and nbdkit servers of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters: list[Cluster] = []
        self.servers: list[Nbdkit] = []

    def cluster(self, nodes: int = 3, copies: int = 3, *, lock: bool = False) -> Cluster:
        """Started and formatted (``lock``: with USE_LOCK, `dog cluster format --lock`)."""
        c = Cluster(self.root / f"c{len(self.clusters)}", nodes)
        self.clusters.append(c)
        c.start()
        if lock:
            t = time.time()
            with c.client() as cl:
                cl.make_fs(copies, 0, ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK,
                           (int(t) << 32) | (int(t % 1 * 1e6) * 1000))
        else:
            c.format(copies)
        return c

    def vdi(self, cluster: Cluster, name: str, size: str, copies: int | None = None) -> None:
        args = ["vdi", "create", name, size]
        if copies:
            args[2:2] = ["-c", str(copies)]
        cluster.dog(*args)

    def nbdkit(self, cluster: Cluster | None, *params: str, node: int = 0,
               extra: list[str] | tuple[str, ...] = (), start: bool = True) -> Nbdkit:
        ps = list(params)
        if cluster is not None and not any(p.startswith(("port=", "socket=")) for p in ps):
            ps.append(f"port={cluster.nodes[node].port}")
        s = Nbdkit(self.root, f"nbd{len(self.servers)}", ps, list(extra))
        self.servers.append(s)
        return s.start() if start else s

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        for c in self.clusters:
            c.stop()


def dog_read(cluster: Cluster, vdi: str, offset: int, length: int, *extra: str,
             node: int = 0) -> bytes:
    r = cluster.dog("vdi", "read", *extra, vdi, str(offset), str(length),
                    port=cluster.nodes[node].port)
    return r.stdout


def dog_write(cluster: Cluster, vdi: str, offset: int, data: bytes) -> None:
    cluster.dog("vdi", "write", vdi, str(offset), str(len(data)), input=data)


__all__ = ["Env", "Nbdkit", "clean_env", "dog_read", "dog_write", "nbd_py", "run", "which",
           "DOG", "SYSTEM_PYTHON"]
