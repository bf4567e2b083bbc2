"""dog's size and redundancy syntax (dog.md §2, §3; objects.md §10.1).

Shared by dog (argument parsing, human output) and the server (EC policy decoding), so
that both sides read ``-c 4:2`` and ``1.5G`` exactly as the C tools do.
"""
from __future__ import annotations

import re

from .constants import SD_EC_MAX_STRIP, SD_MAX_COPIES

_SUFFIX_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
# What strtod accepts as a finite number (decimal or C99 hex float); inf/nan are refused.
_NUMBER = re.compile(
    r"\s*[+-]?(?:0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?"
    r"|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
)
_HUMAN_UNITS = ("MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_EC_DATA_STRIPS = (2, 4, 8, 16)


def _strtod(text: str) -> tuple[float, str]:
    """Longest numeric prefix as a double, and the rest (like ``strtod``'s endptr)."""
    m = _NUMBER.match(text)
    if not m:
        raise ValueError
    num = m.group().strip()
    unsigned = num.lstrip("+-")
    value = float.fromhex(unsigned) if unsigned[:2] in ("0x", "0X") else float(unsigned)
    return (-value if num.startswith("-") else value), text[m.end():]


def parse_size(text: str) -> int:
    """`option_parse_size`: number (fractions allowed) + at most one B/K/M/G/T/P suffix."""
    try:
        value, rest = _strtod(text)
        shift = _SUFFIX_SHIFT[rest.lower()] if len(rest) <= 1 else None
        if shift is None or value < 0:
            raise ValueError
        size = int(value * (1 << shift))
        if size >= 1 << 64:
            raise ValueError
    except (ValueError, KeyError, OverflowError):
        raise ValueError(f"Invalid size '{text}'") from None
    return size


def strnumber(n: int, raw: bool = False) -> str:
    """`strnumber`: MB upward, ``%.0lf`` at >= 10 else ``%.1lf`` (raw mode: plain bytes)."""
    if raw:
        return str(n)
    value = n / (1 << 20)
    unit = 0
    while value >= 1024 and unit < len(_HUMAN_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.{0 if value >= 10 else 1}f} {_HUMAN_UNITS[unit]}"


def parse_copies(text: str) -> tuple[int, int]:
    """`parse_copy`: ``N`` (1-31 replicas) or ``D:P`` (EC) -> (nr_copies, copy_policy).

    Errors name the text before the colon, as dog does (its strtok cut the string there)."""
    parts = text.split(":")
    bad = ValueError(f"Invalid parameter {parts[0]}")
    if len(parts) > 2 or not all(p.isdigit() and p.isascii() for p in parts):
        raise bad
    copies = int(parts[0])
    if len(parts) == 1:
        if not 1 <= copies <= SD_MAX_COPIES:
            raise bad
        return copies, 0
    parity = int(parts[1])
    if copies not in _EC_DATA_STRIPS or not 1 <= parity < SD_EC_MAX_STRIP:
        raise bad
    return copies + parity, ((copies // 2) << 4) | parity


def ec_policy_to_dp(policy: int) -> tuple[int, int]:
    """(data strips, parity strips) of an EC policy byte; policy 0 means replication."""
    return (policy >> 4) * 2, policy & 0x0F


def format_copies(nr_copies: int, copy_policy: int) -> str:
    """How dog lists redundancy: ``3`` for replication, ``2:1`` for EC."""
    if copy_policy:
        d, p = ec_policy_to_dp(copy_policy)
        return f"{d}:{p}"
    return str(nr_copies)


__all__ = ["parse_size", "strnumber", "parse_copies", "ec_policy_to_dp", "format_copies"]
