"""A tiny Linux guest for the boot test, built once per machine from Debian packages.

The kernel is the one Debian's ``linux-image-amd64`` depends on (virtio_blk is a module
there); the initramfs holds busybox-static, virtio_pci and virtio_blk with the modules
they need (``depends=`` read from each module's .modinfo), and an /init that:

1. loads the modules and waits for /dev/vda;
2. prints ``SDTEST-MD5 <md5>`` of the 1 MiB at ``sdtest.src`` (bytes, on the kernel
   command line), which the test wrote with ``dog vdi write``;
3. copies those bytes to ``sdtest.dst`` and writes a one-line record at ``sdtest.note``,
   with an fsync (an NBD flush), and prints ``SDTEST-DONE``;
4. powers off (any failure prints ``SDTEST-FAIL`` and panics, which ``panic=-1`` and
   QEMU's ``-no-reboot`` turn into an exit).

Artifacts live in ``build/nbd-guest/<kernel package>/`` (gitignored); only the kernel
and the initramfs are kept.
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "nbd-guest"
WANTED = ("virtio_pci", "virtio_blk")  # the PCI transport is no dependency of the disk driver
CHUNK = 512 * 1024  # dd block size used by /init: offsets are multiples of it

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "SDTEST-FAIL $*"; echo c > /proc/sysrq-trigger; exit 1; }
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko || fail "insmod $m"; done
i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1)); [ $i -gt 300 ] && fail "no /dev/vda"; sleep 0.1
done
arg() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
SRC=$(arg sdtest.src); DST=$(arg sdtest.dst); NOTE=$(arg sdtest.note); BS=%(bs)d
SUM=$(dd if=/dev/vda bs=$BS skip=$((SRC / BS)) count=$((1048576 / BS)) 2>/dev/null | md5sum | cut -d' ' -f1)
echo "SDTEST-MD5 $SUM"
dd if=/dev/vda of=/dev/vda bs=$BS skip=$((SRC / BS)) seek=$((DST / BS)) count=$((1048576 / BS)) conv=notrunc,fsync 2>/dev/null || fail "copy"
echo "written by the guest: $SUM" | dd of=/dev/vda bs=512 seek=$((NOTE / 512)) conv=notrunc,fsync 2>/dev/null || fail "note"
sync
echo "SDTEST-DONE"
poweroff -f
""" % {"bs": CHUNK}


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def kernel_package() -> str:
    """``linux-image-<abi>-amd64``, the package linux-image-amd64 depends on."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                             capture_output=True, text=True).stdout
        m = re.search(r"Depends:\s*(linux-image-\d\S*)", out)
        if m:
            return m.group(1)
        if attempt == 0:  # no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise RuntimeError("apt-cache knows no linux-image-amd64 (is this Debian?)")


def _download(pkgs: list[str], where: Path) -> list[Path]:
    for attempt in range(2):
        r = subprocess.run(["apt-get", "download", "-q", *pkgs], cwd=where,
                           capture_output=True, text=True)
        if r.returncode == 0:
            return sorted(where.glob("*.deb"))
        if attempt == 0:  # stale package lists: the version moved on
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise RuntimeError(f"apt-get download {' '.join(pkgs)} failed: {r.stderr}")


def _ko_bytes(ko: Path) -> bytes:
    """A module's ELF bytes (Debian may ship them xz-compressed; busybox insmod wants
    them plain)."""
    data = ko.read_bytes()
    return lzma.decompress(data) if ko.name.endswith(".xz") else data


def _modinfo_depends(ko: Path) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", _ko_bytes(ko))
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _module_closure(moddir: Path, names: tuple[str, ...]) -> list[Path]:
    """``names`` and their dependencies, dependencies first."""
    by_name = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko*")}
    order: list[Path] = []

    def visit(n: str) -> None:
        p = by_name[n.replace("-", "_")]
        if p in order:
            return
        for d in _modinfo_depends(p):
            visit(d)
        order.append(p)

    for name in names:
        visit(name)
    return order


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed newc archive of (name, mode, data); directories have no data."""
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nb
        pad4()
        out += data
        pad4()
    return bytes(out)


def build(cache: Path = CACHE) -> tuple[Path, Path]:
    """(vmlinuz, initrd), built if the cache does not have them yet."""
    pkg = kernel_package()
    dest = cache / pkg
    kernel, initrd = dest / "vmlinuz", dest / "initrd.cpio"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="tmp-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt-get download drops privileges to _apt when it can
        debs = _download([pkg, "busybox-static"], work)
        root = work / "root"
        for deb in debs:
            _run("dpkg-deb", "-x", str(deb), str(root))
        vmlinuz = next((root / "boot").glob("vmlinuz-*"))
        moddir = next((root / "lib" / "modules").iterdir())
        mods = _module_closure(moddir, WANTED)
        busybox = root / "bin" / "busybox"
        entries: list[tuple[str, int, bytes]] = [
            (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
        entries.append(("init", 0o100755, INIT.encode()))
        entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
        entries.append(("modules.order", 0o100644,
                        "".join(p.name.split(".ko")[0] + "\n" for p in mods).encode()))
        for p in mods:
            entries.append((f"lib/modules/{p.name.split('.ko')[0]}.ko", 0o100644, _ko_bytes(p)))
        stage = work / "out"
        stage.mkdir()
        shutil.copyfile(vmlinuz, stage / "vmlinuz")
        (stage / "initrd.cpio").write_bytes(_cpio_newc(entries))
        if dest.exists():
            shutil.rmtree(dest)
        stage.rename(dest)
    return kernel, initrd


if __name__ == "__main__":
    print(*build())
