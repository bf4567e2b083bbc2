"""dog.getopt behaves like glibc getopt_long (permutation, clusters, abbreviations, messages)."""
from __future__ import annotations

import pytest

from dog.getopt import Getopt, GetoptError, LongOpt

SHORT = {"a": True, "p": True, "r": False, "h": False, "c": True, "P": False}
LONG = [LongOpt("address", "a", True), LongOpt("port", "p", True), LongOpt("raw", "r", False),
        LongOpt("help", "h", False), LongOpt("copies", "c", True), LongOpt("prealloc", "P", False)]


def parse(*args: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    g = Getopt(list(args), SHORT, LONG)
    opts = list(g)
    return opts, g.operands


def test_permutation_keeps_operand_order():
    assert parse("x", "-r", "y", "-p", "7000", "z") == ([("r", None), ("p", "7000")],
                                                          ["x", "y", "z"])


def test_short_forms():
    assert parse("-rP")[0] == [("r", None), ("P", None)]
    assert parse("-c3")[0] == [("c", "3")]
    assert parse("-rc", "2:1")[0] == [("r", None), ("c", "2:1")]
    assert parse("-c", "-r")[0] == [("c", "-r")]  # a required argument may start with '-'


def test_long_forms_and_abbreviations():
    assert parse("--port=7001")[0] == [("p", "7001")]
    assert parse("--port", "7001")[0] == [("p", "7001")]
    assert parse("--po", "1", "--cop=2", "--pr")[0] == [("p", "1"), ("c", "2"), ("P", None)]
    assert parse("--port=")[0] == [("p", "")]


def test_double_dash_and_single_dash():
    assert parse("-r", "--", "-p", "x") == ([("r", None)], ["-p", "x"])
    assert parse("-") == ([], ["-"])


def test_options_are_yielded_lazily_in_order():
    g = iter(Getopt(["-h", "-q"], SHORT, LONG))
    assert next(g) == ("h", None)
    with pytest.raises(GetoptError):
        next(g)


@pytest.mark.parametrize("args,message", [
    (["-q"], "dog: invalid option -- 'q'"),
    (["-c"], "dog: option requires an argument -- 'c'"),
    (["--nope"], "dog: unrecognized option '--nope'"),
    (["--nope=3"], "dog: unrecognized option '--nope=3'"),
    (["--p"], "dog: option '--p' is ambiguous; possibilities: '--port' '--prealloc'"),
    (["--raw=1"], "dog: option '--raw' doesn't allow an argument"),
    (["--co"], "dog: option '--copies' requires an argument"),
])
def test_errors(args, message):
    with pytest.raises(GetoptError) as e:
        parse(*args)
    assert str(e.value) == message
