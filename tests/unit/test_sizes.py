"""dog size / copies syntax (dog.md §2, §3; objects.md §10.1)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sheep.proto.sizes import ec_policy_to_dp, format_copies, parse_copies, parse_size, strnumber

K, M, G, T, P = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("4096", 4096), ("10B", 10), ("10b", 10), ("1k", K), ("1K", K), ("4M", 4 * M),
    ("4m", 4 * M), ("1G", G), ("1g", G), ("1.5G", G + G // 2), ("2T", 2 * T), ("1P", P),
    ("1p", P), ("0.5", 0), ("1.9", 1), ("1e3", 1000), ("1.5e1K", 15 * K), ("0x1000", 4096),
    (".5K", 512), ("1.", 1), ("+3M", 3 * M), (" 8", 8), ("16P", 16 * P), ("8388708", 8388708),
])
def test_parse_size_ok(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [
    "", "abc", "1GB", "1 G", "1G ", "-1", "-1K", "1X", "K", "inf", "nan", "1e", "0x", "99999P",
])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_size(text)
    assert str(err.value) == f"Invalid size '{text}'"


@given(st.integers(0, 2**33), st.sampled_from(["", "B", "K", "M", "G", "k", "m", "g", "b"]))
def test_parse_size_integers(n: int, suffix: str) -> None:
    shift = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30}[suffix.lower()]
    assert parse_size(f"{n}{suffix}") == int(float(n) * (1 << shift))


@pytest.mark.parametrize("n, text", [
    (0, "0.0 MB"), (4 * M, "4.0 MB"), (12 * M, "12 MB"), (64 * M, "64 MB"), (G, "1.0 GB"),
    (5 * T, "5.0 TB"), (79 * G, "79 GB"), (1023 * M, "1023 MB"), (1024 * M, "1.0 GB"),
    (M // 2, "0.5 MB"), (int(9.96 * M), "10.0 MB"), (int(9.94 * M), "9.9 MB"), (P, "1.0 PB"),
    (1 << 60, "1.0 EB"), (2**64 - 1, "16 EB"),
])
def test_strnumber(n: int, text: str) -> None:
    assert strnumber(n) == text


def test_strnumber_raw() -> None:
    assert strnumber(1073741824, raw=True) == "1073741824"


@pytest.mark.parametrize("text, copies, policy", [
    ("1", 1, 0), ("3", 3, 0), ("31", 31, 0), ("2:1", 3, 0x11), ("4:2", 6, 0x22),
    ("8:3", 11, 0x43), ("16:15", 31, 0x8F),
])
def test_parse_copies_ok(text: str, copies: int, policy: int) -> None:
    assert parse_copies(text) == (copies, policy)
    assert format_copies(copies, policy) == text


@pytest.mark.parametrize("text, msg", [
    ("99", "Invalid parameter 99"), ("0", "Invalid parameter 0"), ("32", "Invalid parameter 32"),
    # dog names the text before the colon (its strtok cut the string there)
    ("3:1", "Invalid parameter 3"), ("2:0", "Invalid parameter 2"), ("2:16", "Invalid parameter 2"),
    ("x", "Invalid parameter x"), ("2:1:1", "Invalid parameter 2"), ("", "Invalid parameter "),
    ("-1", "Invalid parameter -1"), ("2:", "Invalid parameter 2"),
])
def test_parse_copies_invalid(text: str, msg: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_copies(text)
    assert str(err.value) == msg


@given(st.sampled_from([2, 4, 8, 16]), st.integers(1, 15))
def test_ec_policy_round_trip(d: int, p: int) -> None:
    copies, policy = parse_copies(f"{d}:{p}")
    assert ec_policy_to_dp(policy) == (d, p) and copies == d + p


def test_ec_policy_examples() -> None:
    assert ec_policy_to_dp(0x11) == (2, 1)
    assert ec_policy_to_dp(0x8F) == (16, 15)
    assert format_copies(3, 0) == "3"
