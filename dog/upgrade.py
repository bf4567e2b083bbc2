"""`dog upgrade ...` (dog/upgrade.c; dog.md §7): offline converters, not implemented yet."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .common import Context


@dataclass
class Options:
    orig_version: str = ""


def parse_option(o: Options, ch: str, arg: str) -> None:
    if ch == "o":
        o.orig_version = arg


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {}
