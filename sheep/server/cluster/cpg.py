"""ctypes bindings for corosync's CPG (closed process groups) library, libcpg.so.4.

Only what the corosync driver needs: connect, join/leave a group, multicast with agreed
(total) order, and dispatch of the two callbacks (message delivery, configuration change)
from a file descriptor the caller polls.  Structures and constants follow
``<corosync/cpg.h>`` and ``<corosync/corotypes.h>``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import Callable

CS_OK = 1
CS_ERR_TRY_AGAIN = 6
CS_DISPATCH_ALL = 2
CPG_TYPE_AGREED = 2
CPG_MAX_NAME_LENGTH = 128

ERROR_NAMES = {
    1: "CS_OK", 2: "CS_ERR_LIBRARY", 3: "CS_ERR_VERSION", 4: "CS_ERR_INIT", 5: "CS_ERR_TIMEOUT",
    6: "CS_ERR_TRY_AGAIN", 7: "CS_ERR_INVALID_PARAM", 8: "CS_ERR_NO_MEMORY", 9: "CS_ERR_BAD_HANDLE",
    10: "CS_ERR_BUSY", 11: "CS_ERR_ACCESS", 12: "CS_ERR_NOT_EXIST", 13: "CS_ERR_NAME_TOO_LONG",
    14: "CS_ERR_EXIST", 15: "CS_ERR_NO_SPACE", 16: "CS_ERR_INTERRUPT", 17: "CS_ERR_NAME_NOT_FOUND",
    18: "CS_ERR_NO_RESOURCES", 19: "CS_ERR_NOT_SUPPORTED", 20: "CS_ERR_BAD_OPERATION",
    21: "CS_ERR_FAILED_OPERATION", 22: "CS_ERR_MESSAGE_ERROR", 23: "CS_ERR_QUEUE_FULL",
    24: "CS_ERR_QUEUE_NOT_AVAILABLE", 25: "CS_ERR_BAD_FLAGS", 26: "CS_ERR_TOO_BIG",
    27: "CS_ERR_NO_SECTIONS", 28: "CS_ERR_CONTEXT_NOT_FOUND", 30: "CS_ERR_TOO_MANY_GROUPS",
    100: "CS_ERR_SECURITY",
}


class CpgError(Exception):
    def __init__(self, call: str, code: int) -> None:
        self.call, self.code = call, code
        hint = " (is corosync running?)" if code == 2 else ""
        super().__init__(f"{call}: {ERROR_NAMES.get(code, code)}{hint}")


class CpgName(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * CPG_MAX_NAME_LENGTH)]


class CpgAddress(ctypes.Structure):
    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("reason", ctypes.c_uint32)]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_handle_t = ctypes.c_uint64
DELIVER_FN = ctypes.CFUNCTYPE(None, _handle_t, ctypes.POINTER(CpgName), ctypes.c_uint32,
                              ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
_ADDRS = ctypes.POINTER(CpgAddress)
CONFCHG_FN = ctypes.CFUNCTYPE(None, _handle_t, ctypes.POINTER(CpgName), _ADDRS, ctypes.c_size_t,
                              _ADDRS, ctypes.c_size_t, _ADDRS, ctypes.c_size_t)


class Callbacks(ctypes.Structure):
    _fields_ = [("deliver", DELIVER_FN), ("confchg", CONFCHG_FN)]


@dataclass(frozen=True, slots=True)
class Address:
    """A group member: a process (``pid``) on a corosync node (``nodeid``)."""
    nodeid: int
    pid: int
    reason: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.nodeid, self.pid)


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """Load libcpg once (Debian: package libcpg4); a clear error if it is missing."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("cpg") or "libcpg.so.4"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise CpgError(f"loading {name} ({e}); install corosync's libcpg4", 2) from e
        h = ctypes.POINTER(_handle_t)
        lib.cpg_initialize.argtypes = [h, ctypes.POINTER(Callbacks)]
        lib.cpg_finalize.argtypes = [_handle_t]
        lib.cpg_fd_get.argtypes = [_handle_t, ctypes.POINTER(ctypes.c_int)]
        lib.cpg_dispatch.argtypes = [_handle_t, ctypes.c_int]
        lib.cpg_join.argtypes = [_handle_t, ctypes.POINTER(CpgName)]
        lib.cpg_leave.argtypes = [_handle_t, ctypes.POINTER(CpgName)]
        lib.cpg_mcast_joined.argtypes = [_handle_t, ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_uint]
        lib.cpg_local_get.argtypes = [_handle_t, ctypes.POINTER(ctypes.c_uint)]
        for fn in ("cpg_initialize", "cpg_finalize", "cpg_fd_get", "cpg_dispatch", "cpg_join",
                   "cpg_leave", "cpg_mcast_joined", "cpg_local_get"):
            getattr(lib, fn).restype = ctypes.c_int
        _lib = lib
    return _lib


def _addrs(ptr, n: int) -> list[Address]:
    return [Address(ptr[i].nodeid, ptr[i].pid, ptr[i].reason) for i in range(n)]


def _check(call: str, rc: int) -> None:
    if rc != CS_OK:
        raise CpgError(call, rc)


class CpgGroup:
    """One CPG connection joined to one group.

    ``on_deliver(sender, payload)`` and ``on_confchg(members, left, joined)`` run
    synchronously inside `dispatch`, in corosync's total order; they must not block.
    """

    def __init__(self, group: str,
                 on_deliver: Callable[[Address, bytes], None],
                 on_confchg: Callable[[list[Address], list[Address], list[Address]], None]) -> None:
        raw = group.encode()
        if len(raw) > CPG_MAX_NAME_LENGTH:
            raise ValueError(f"CPG group name longer than {CPG_MAX_NAME_LENGTH} bytes: {group!r}")
        self.name = CpgName(len(raw), raw)
        self._lib = library()
        self._on_deliver, self._on_confchg = on_deliver, on_confchg
        # keep the C callables alive as long as the handle
        self._callbacks = Callbacks(DELIVER_FN(self._deliver), CONFCHG_FN(self._confchg))
        self.handle = _handle_t(0)
        self._open = False
        self._raised: BaseException | None = None

    # ctypes only prints what a callback raises: keep it for `dispatch` to raise instead
    def _deliver(self, handle, group, nodeid, pid, msg, msg_len) -> None:
        try:
            self._on_deliver(Address(nodeid, pid), ctypes.string_at(msg, msg_len))
        except BaseException as e:
            self._raised = self._raised or e

    def _confchg(self, handle, group, members, n_members, left, n_left, joined, n_joined) -> None:
        try:
            self._on_confchg(_addrs(members, n_members), _addrs(left, n_left), _addrs(joined, n_joined))
        except BaseException as e:
            self._raised = self._raised or e

    def initialize(self) -> None:
        _check("cpg_initialize", self._lib.cpg_initialize(ctypes.byref(self.handle),
                                                          ctypes.byref(self._callbacks)))
        self._open = True

    def local_address(self) -> Address:
        nodeid = ctypes.c_uint(0)
        _check("cpg_local_get", self._lib.cpg_local_get(self.handle, ctypes.byref(nodeid)))
        return Address(nodeid.value, os.getpid())

    def fd(self) -> int:
        fd = ctypes.c_int(-1)
        _check("cpg_fd_get", self._lib.cpg_fd_get(self.handle, ctypes.byref(fd)))
        return fd.value

    def join(self) -> bool:
        """Join the group; False means corosync is busy (CS_ERR_TRY_AGAIN): call again."""
        rc = self._lib.cpg_join(self.handle, ctypes.byref(self.name))
        if rc == CS_ERR_TRY_AGAIN:
            return False
        _check("cpg_join", rc)
        return True

    def leave(self) -> bool:
        rc = self._lib.cpg_leave(self.handle, ctypes.byref(self.name))
        if rc == CS_ERR_TRY_AGAIN:
            return False
        _check("cpg_leave", rc)
        return True

    def mcast(self, payload: bytes) -> bool:
        """Multicast in agreed order; False means flow control (CS_ERR_TRY_AGAIN): retry."""
        buf = ctypes.create_string_buffer(payload, len(payload))
        iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
        rc = self._lib.cpg_mcast_joined(self.handle, CPG_TYPE_AGREED, ctypes.byref(iov), 1)
        if rc == CS_ERR_TRY_AGAIN:
            return False
        _check("cpg_mcast_joined", rc)
        return True

    def dispatch(self) -> None:
        """Run the callbacks for everything already received; never blocks."""
        rc = self._lib.cpg_dispatch(self.handle, CS_DISPATCH_ALL)
        raised, self._raised = self._raised, None
        if raised is not None:
            raise raised
        if rc not in (CS_OK, CS_ERR_TRY_AGAIN):
            raise CpgError("cpg_dispatch", rc)

    def finalize(self) -> None:
        if self._open:
            self._open = False
            self._lib.cpg_finalize(self.handle)
