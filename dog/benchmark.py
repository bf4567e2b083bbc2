"""`dog benchmark io` (dog/benchmark.c; dog.md §7): not implemented yet."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .common import Context


@dataclass
class Options:
    force: bool = False
    workqueue: str = ""
    total: str = ""
    nr_threads: str = ""


def parse_option(o: Options, ch: str, arg: str) -> None:
    if ch == "f":
        o.force = True
    elif ch == "w":
        o.workqueue = arg
    elif ch == "t":
        o.total = arg
    elif ch == "n":
        o.nr_threads = arg


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {}
