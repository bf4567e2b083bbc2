"""The export as people reach it: a QEMU guest booting from a VDI, the kernel's NBD client,
and the `sheepdog-nbd` command."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from frontends.nbd import PLUGIN
from tests.cluster.harness import BIN

from . import guest
from .nbdenv import clean_env, dog_read, dog_write, run, which

MiB = 1 << 20


@pytest.fixture(scope="session")
def guest_image() -> tuple[Path, Path]:
    """Debian's kernel and a busybox initramfs (built once per machine, see guest.py)."""
    return guest.build()


def test_qemu_boots_a_guest_from_a_vdi(env, guest_image):
    kernel, initrd = guest_image
    c = env.cluster(3, copies=3)
    env.vdi(c, "vm", "64M")
    src, dst, note = 3 * MiB + guest.CHUNK, 11 * MiB + guest.CHUNK, 9 * MiB  # across objects
    pattern = os.urandom(MiB)
    dog_write(c, "vm", src, pattern)
    s = env.nbdkit(c, "vdi=vm")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256M", "-smp", "1", "-nographic",
           "-no-reboot", "-net", "none", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", f"console=ttyS0 panic=-1 quiet sdtest.src={src} sdtest.dst={dst} "
                      f"sdtest.note={note}",
           "-drive", f"file={s.uri},format=raw,if=virtio"]
    r = subprocess.run(cmd, capture_output=True, timeout=300, env=clean_env(),
                       stdin=subprocess.DEVNULL)
    console = r.stdout.decode(errors="replace")
    assert r.returncode == 0, console[-3000:] + r.stderr.decode()
    assert "SDTEST-FAIL" not in console, console[-3000:]
    md5 = hashlib.md5(pattern).hexdigest()
    assert f"SDTEST-MD5 {md5}" in console, console[-3000:]  # the guest read what dog wrote
    assert "SDTEST-DONE" in console and "reboot: Power down" in console
    s.stop()  # nbdkit's cleanup releases the VDI; dog reads what the guest wrote
    assert dog_read(c, "vm", dst, MiB) == pattern
    assert dog_read(c, "vm", note, 64).startswith(f"written by the guest: {md5}\n".encode())


def _nbd_module() -> bool:
    if Path("/sys/module/nbd").exists():
        return True
    modprobe = which("modprobe")
    return bool(modprobe) and subprocess.run([modprobe, "nbd"], capture_output=True).returncode == 0


def test_nbd_client(env):
    """This machine's kernel has no nbd module: nbd-client negotiates with the export and
    then fails for that reason only.  Where the module exists, /dev/nbd0 is used for real."""
    c = env.cluster(1, copies=1)
    env.vdi(c, "Alice", "16M")
    s = env.nbdkit(c, "vdi=Alice")
    nbd_client = which("nbd-client")
    if not _nbd_module():
        r = run(nbd_client, "-unix", s.sock, "/dev/nbd0", check=False, timeout=60)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode != 0
        assert "size = 16MB" in out, out            # the handshake with the plugin worked
        assert "make sure the nbd module is loaded" in out, out
        assert not Path("/dev/nbd0").exists()
        r = run(nbd_client, "-unix", s.sock, "/dev/nbd0", "-nonetlink", check=False, timeout=60)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode != 0 and "Cannot open NBD: No such file or directory" in out, out
        assert "Please ensure the 'nbd' module is loaded" in out, out
        return
    run(nbd_client, "-unix", s.sock, "/dev/nbd0")  # pragma: no cover (kernels with nbd)
    try:
        with open("/dev/nbd0", "r+b", buffering=0) as dev:
            dev.write(b"\x7e" * 4096)
            os.fsync(dev.fileno())
    finally:
        run(nbd_client, "-d", "/dev/nbd0")
    assert dog_read(c, "Alice", 0, 4096) == b"\x7e" * 4096


def _sheepdog_nbd(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "sheepdog-nbd"), *args], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_sheepdog_nbd_command(env, tmp_path):
    c = env.cluster(1, copies=1)
    env.vdi(c, "Alice", "16M")
    port = str(c.nodes[0].port)
    sock = tmp_path / "alice.sock"
    p = _sheepdog_nbd("-p", port, "-U", str(sock), "Alice")
    try:
        line = p.stdout.readline().decode().strip()
        assert line == f"nbd+unix:///?socket={sock}"
        run("qemu-io", "-f", "raw", line, "-c", "write -P 0x77 0 4k")
        info = run("nbdinfo", line).stdout.decode()
        assert "export-size: 16777216" in info and "sheepdog VDI Alice" in info
        p.send_signal(signal.SIGINT)  # Ctrl-C stops nbdkit and the command
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not sock.exists()
    assert dog_read(c, "Alice", 0, 4096) == b"\x77" * 4096

    # -b: returns once serving, nbdkit stays up with a pidfile
    pidfile = tmp_path / "bg.pid"
    p = _sheepdog_nbd("-p", port, "-U", str(sock), "-r", "-b", "-P", str(pidfile), "Alice")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    assert out.decode().strip() == f"nbd+unix:///?socket={sock}"
    pid = int(pidfile.read_text())
    try:
        assert "is_read_only: true" in run("nbdinfo", f"nbd+unix:///?socket={sock}").stdout.decode()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    # --run: captive, like nbdkit's
    p = _sheepdog_nbd("-p", port, "-U", str(sock), "--run", 'nbdinfo --size "$uri"', "Alice")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    assert out.decode().split() == [f"nbd+unix:///?socket={sock}", "16777216"]

    # bad options never start nbdkit; a missing VDI stops it with the sheep's reason
    for args, message in ((["--port", "x", "Alice"], "port='x'"),
                          (["-s", "0", "Alice"], "snapshot=0"),
                          (["--bind", "::", "Alice"], "--bind needs --nbd-port")):
        p = _sheepdog_nbd(*args)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 2 and message in err.decode(), err.decode()
    p = _sheepdog_nbd("-p", port, "-U", str(sock), "Bob")
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and b"No VDI found" in err and not out


def test_plugin_path_and_dry_run():
    r = run(BIN / "sheepdog-nbd", "--plugin-path")
    assert r.stdout.decode().strip() == PLUGIN
    r = run(BIN / "sheepdog-nbd", "-n", "-a", "10.0.0.2", "-p", "7001", "--nbd-port", "10809",
            "Alice")
    line = r.stdout.decode()
    assert "nbdkit --foreground --exit-with-parent --port 10809 --ipaddr 127.0.0.1" in line
    assert f"python {PLUGIN} vdi=Alice address=10.0.0.2 port=7001" in line
