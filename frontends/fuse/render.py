"""The text files (cluster/info, node/list, node/info, vdi/list): dog's own output, made
in-process by running the project's dog command table with stdout captured.

The original sheepfs ran ``dog ... -a HOST -p PORT`` through popen(3) and served what it
printed.  Here the same command line goes to `dog.cli.run` in this process, so the text is
byte for byte what ``dog`` prints, with no child process and no dependence on ``PATH``.

dog writes through ``sys.stdout``/``sys.stderr``; `install_capture` replaces both with a
router that sends a thread's writes to that thread's buffers while a capture is active on
it (and everything else to the original stream), so renders may run in several worker
threads at once without mixing their output.
"""
from __future__ import annotations

import io
import sys
import threading
from dataclasses import dataclass

from dog import cli as dog_cli
from dog.common import EXIT_SYSFAIL, DogExit

# file name in the tree -> dog command
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster/info": ("cluster", "info"),
    "node/list": ("node", "list"),
    "node/info": ("node", "info"),
    "vdi/list": ("vdi", "list"),
}

_local = threading.local()


class _Router(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` stand-in: the calling thread's capture buffer if it has
    one, else the stream that was there before."""

    def __init__(self, which: str, default) -> None:
        self._which = which
        self._default = default

    def _target(self):
        return getattr(_local, self._which, None) or self._default

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        t = self._target()
        return t is self._default and t.isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._target(), "encoding", "utf-8")

    @property
    def buffer(self):
        return self._target().buffer

    def __getattr__(self, name: str):
        return getattr(self._target(), name)


def install_capture() -> None:
    """Route ``sys.stdout``/``sys.stderr`` per thread (idempotent)."""
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router("out", sys.stdout)
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router("err", sys.stderr)


@dataclass
class Rendered:
    text: bytes        # what dog printed on stdout
    messages: str      # what it printed on stderr
    code: int          # its exit code

    @property
    def unreachable(self) -> bool:
        """dog could not talk to the cluster (exit 2: connection refused, no node answered)."""
        return self.code == EXIT_SYSFAIL


def run_dog(argv: list[str]) -> Rendered:
    """Run one dog command line in this thread with its output captured (blocking)."""
    install_capture()
    out, err = io.StringIO(), io.StringIO()
    _local.out, _local.err = out, err
    try:
        try:
            code = dog_cli.run(argv)
        except DogExit as e:
            code = e.code
    finally:
        _local.out = _local.err = None
    return Rendered(out.getvalue().encode("utf-8", "surrogateescape"), err.getvalue(), code)


def render(path: str, host: str, port: int) -> Rendered:
    """The text of one of `COMMANDS` as ``dog <cmd> <sub> -a HOST -p PORT`` prints it."""
    cmd, sub = COMMANDS[path]
    return run_dog([cmd, sub, "-a", host, "-p", str(port)])


__all__ = ["COMMANDS", "Rendered", "install_capture", "render", "run_dog"]
