"""nbdkit Python plugin (API v2) exporting a Sheepdog VDI over NBD.

    nbdkit python /path/to/frontends/nbd/plugin.py vdi=Alice [snapshot=TAG|ID] \\
        [address=HOST] [port=7000 | socket=PATH] [readonly=true] [timeout=SECONDS]

`sheepdog-nbd` starts it for you (and prints the NBD URI); see sheepdog-nbd(8) and
nbdkit-sheepdog-plugin(3).  This file is loaded by the Python that nbdkit embeds, not by
the project's virtualenv: it finds the project through ``$SHEEPDOG_NBD_SITE`` (site
directories, added with `site.addsitedir` so editable installs' .pth files count) and
through the tree it lives in.  The work is done by frontends/nbd/export.py.
"""
from __future__ import annotations

import os
import site
import sys
import traceback
from pathlib import Path


def _find_project() -> None:
    for d in os.environ.get("SHEEPDOG_NBD_SITE", "").split(os.pathsep):
        if d and d not in sys.path:
            site.addsitedir(d)
    root = str(Path(__file__).resolve().parents[2])  # the dir holding frontends/ and sheep/
    if root not in sys.path:
        sys.path.insert(0, root)


_find_project()

import nbdkit  # noqa: E402  (provided by nbdkit's embedded interpreter)

from frontends.nbd.config import ConfigError, ExportConfig  # noqa: E402
from frontends.nbd.export import Export, Session, errno_of  # noqa: E402
from sheep.client.sync import SheepConnectionError, SheepError  # noqa: E402

API_VERSION = 2
MAX_REQUEST = 32 << 20  # nbdkit's and most clients' largest request
PREFERRED_REQUEST = 1 << 20  # see block_size

# nbdkit prints an exception raised by a callback with its traceback; expected failures
# (bad parameters, sheep errors) read better as their one-line message.  Unexpected ones
# get their traceback put in the message by `_fail`.
sys.tracebacklimit = 0

_cfg = ExportConfig()
_export: Export | None = None

_EXPECTED = (ConfigError, SheepError, SheepConnectionError, OSError, ValueError)


def _fail(exc: BaseException) -> BaseException:
    """Record the errno for the NBD client and return the exception to raise."""
    nbdkit.set_error(errno_of(exc))
    if isinstance(exc, _EXPECTED):
        return exc
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=30))
    return RuntimeError(f"unexpected error: {tb}")


# ---------------------------------------------------------------------------- set-up


def config(key: str, value: str) -> None:
    try:
        _cfg.set(key, value)
    except ConfigError as e:
        raise _fail(e) from None


def config_complete() -> None:
    try:
        _cfg.complete()
    except ConfigError as e:
        raise _fail(e) from None


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def get_ready() -> None:
    """Open the VDI before serving, so that a missing VDI or a taken lock stops nbdkit."""
    global _export
    try:
        _export = Export(_cfg)
    except BaseException as e:
        raise _fail(e) from None
    nbdkit.debug(f"sheepdog: exporting {_cfg.describe()}, vid {_export.vid:x}, "
                 f"{_export.size} bytes{' read-only' if _export.readonly else ''}")


def cleanup() -> None:
    if _export is not None:
        sc = _export.shortcircuit
        if sc is not None:
            nbdkit.debug(f"sheepdog: short-circuit I/O: {sc.hits} requests direct, "
                         f"{sc.misses} through the sheep")
        try:
            _export.close()
        except Exception as e:  # the lock dies with its connection anyway
            nbdkit.debug(f"sheepdog: releasing the VDI: {e}")


# ---------------------------------------------------------------------------- connections


def open(readonly: bool) -> Session:  # noqa: A001  (nbdkit's name)
    assert _export is not None
    return Session(_export, readonly)


def close(h: Session) -> None:
    h.close()


def export_description(h: Session) -> str:
    return _cfg.describe()


def get_size(h: Session) -> int:
    return h.export.size


def is_rotational(h: Session) -> bool:
    return False


def block_size(h: Session) -> tuple[int, int, int]:
    """NBD_INFO_BLOCK_SIZE: any alignment works, 32 MiB at most, and 1 MiB preferred
    (or the object, if smaller).  Clients such as nbdcopy then send 1 MiB requests: four
    per 4 MiB object instead of sixteen of 256 KiB, each a Python call here (measured:
    about +30 % copy throughput).  Not the whole object: the kernel caches data written in
    big pieces in big folios, which makes later 4 KiB random writes into it slower (up
    to -30 % IOPS with 4 MiB pieces, -10 % with 1 MiB; the same with nbdkit's file
    plugin)."""
    return 1, min(h.export.object_size, PREFERRED_REQUEST), MAX_REQUEST


def can_write(h: Session) -> bool:
    return not h.export.readonly


def can_flush(h: Session) -> bool:
    return True


def can_trim(h: Session) -> bool:
    return not h.export.readonly


def can_zero(h: Session) -> bool:
    return not h.export.readonly


def can_fast_zero(h: Session) -> bool:
    return not h.export.readonly


def can_extents(h: Session) -> bool:
    return True


def can_multi_conn(h: Session) -> bool:
    """True: every connection of this process shares one in-memory index and locking
    (export.py), and FLUSH_VDI covers the whole VDI, so a flush on any connection makes
    the writes completed on all of them durable, and all see the same data."""
    return True


def can_fua(h: Session) -> int:
    return nbdkit.FUA_EMULATE  # nbdkit follows a FUA write with our flush


def can_cache(h: Session) -> int:
    return nbdkit.CACHE_NONE


# ---------------------------------------------------------------------------- I/O


def pread(h: Session, buf, offset: int, flags: int) -> None:
    try:
        h.pread(buf, offset)
    except BaseException as e:
        raise _fail(e) from None


def pwrite(h: Session, buf, offset: int, flags: int) -> None:
    try:
        h.pwrite(buf, offset)
    except BaseException as e:
        raise _fail(e) from None


def flush(h: Session, flags: int) -> None:
    try:
        h.flush()
    except BaseException as e:
        raise _fail(e) from None


def trim(h: Session, count: int, offset: int, flags: int) -> None:
    try:
        h.trim(count, offset)
    except BaseException as e:
        raise _fail(e) from None


def zero(h: Session, count: int, offset: int, flags: int) -> None:
    try:
        h.zero(count, offset, bool(flags & nbdkit.FLAG_MAY_TRIM),
               bool(flags & nbdkit.FLAG_FAST_ZERO))
    except BaseException as e:
        raise _fail(e) from None


def extents(h: Session, count: int, offset: int, flags: int):
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    try:
        runs = h.export.extents(count, offset, bool(flags & nbdkit.FLAG_REQ_ONE))
    except BaseException as e:
        raise _fail(e) from None
    return [(off, n, 0 if allocated else hole) for off, n, allocated in runs]
