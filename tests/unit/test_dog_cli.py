"""dog's command line without a cluster: help texts, usage errors, option checks, exit codes.

Expected texts come from the spec itself (/work/shared/spec/dog.md) wherever it has them, so a
drifting help table or message is caught against the original's verbatim output.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from dog.cli import main
from dog.helptext import COMMANDS, command_list, subcommand_usage, top_usage
from sheep.proto.inode import Inode, InodeHeader

SPEC = Path("/work/shared/spec/dog.md")
TRY = "Try 'dog --help' for more information.\n"


def _spec() -> str:
    if not SPEC.exists():
        pytest.skip(f"spec file {SPEC} is not available; verbatim texts cannot be checked")
    return SPEC.read_text()


def _spec_help_blocks() -> list[tuple[str, str, str]]:
    if not SPEC.exists():
        return []
    sec = SPEC.read_text().split("## 11.", 1)[1]
    return re.findall(r"#### `dog (\S+) (\S+) --help`\n\n```\n(.*?)```\n", sec, re.S)


def dog(*args: str, input: str | bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(main, list(args), input=input, env=env)


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def refused(port: int) -> str:
    return f"failed to connect to 127.0.0.1:{port}: Connection refused\n"


# ---------------------------------------------------------------- help texts


def test_top_level_help_matches_spec():
    spec = _spec()
    block = re.search(r"\(`dog/dog.c:271`; verbatim\):\n\n```\n(.*?)```", spec, re.S).group(1)
    assert top_usage() == block
    for argv in ([], ["help"], ["--help"], ["-h"]):
        r = dog(*argv)
        assert r.exit_code == 0, argv
        assert r.stdout == block
        assert r.stderr == ""


def test_every_subcommand_of_the_spec_exists():
    blocks = _spec_help_blocks() or pytest.skip(f"{SPEC} not available")
    spec_pairs = {(c, s) for c, s, _ in blocks}
    ours = {(c.name, s.name) for c in COMMANDS for s in c.subs}
    assert spec_pairs == ours


@pytest.mark.parametrize("cmd,sub,text", _spec_help_blocks() or [pytest.param(
    "", "", "", marks=pytest.mark.skip(reason=f"{SPEC} not available"))])
def test_subcommand_help_is_verbatim(cmd, sub, text):
    for flag in ("--help", "-h"):
        r = dog(cmd, sub, flag)
        assert r.exit_code == 0
        assert r.stdout == text
        assert r.stderr == ""


def test_help_wins_over_later_options_but_not_earlier_errors():
    r = dog("vdi", "create", "-h", "-p", "abc")
    assert r.exit_code == 0 and r.stdout.startswith("Usage: dog vdi create")
    r = dog("vdi", "create", "-p", "abc", "-h")
    assert r.exit_code == 64 and r.stderr == "Invalid port number 'abc'\n"


def test_help_via_abbreviated_long_option():
    r = dog("cluster", "shutdown", "--he")
    assert r.exit_code == 0 and r.stdout.startswith("Usage: dog cluster shutdown")


def test_vdi_object_without_valid_subcommand_prints_usage_exit_1():
    spec = _spec()
    block = re.search(r"\$ dog vdi object Alice\n(.*?)```", spec, re.S).group(1)
    r = dog("vdi", "object", "Alice")
    assert r.exit_code == 1
    assert r.stdout == block


def test_subcommand_missing_required_argument_prints_usage_exit_64():
    r = dog("vdi", "delete")
    assert r.exit_code == 64
    assert r.stdout == subcommand_usage(COMMANDS[0], next(s for s in COMMANDS[0].subs
                                                           if s.name == "delete"))


# ---------------------------------------------------------------- command lookup


def test_invalid_command():
    r = dog("foo")
    assert r.exit_code == 64
    assert r.stdout == ""
    assert r.stderr == "Invalid command 'foo'\n" + TRY


def test_group_without_subcommand_lists_commands():
    spec = _spec()
    block = re.search(r"\$ dog vdi\n(Available vdi commands:\n.*?)```", spec, re.S).group(1)
    r = dog("vdi")
    assert r.exit_code == 64
    assert r.stdout == ""
    assert r.stderr == block
    for word in ("help", "--help", "-h"):
        r = dog("vdi", word)
        assert r.exit_code == 64 and r.stderr == block


def test_invalid_subcommand():
    r = dog("vdi", "bogus")
    assert r.exit_code == 64
    assert r.stderr.startswith("Invalid command 'vdi bogus'\nAvailable vdi commands:\n  vdi check\n")


@pytest.mark.parametrize("group", ["node", "cluster", "upgrade", "benchmark"])
def test_other_group_lists(group):
    r = dog(group)
    assert r.exit_code == 64
    cmd = next(c for c in COMMANDS if c.name == group)
    assert r.stderr == command_list(cmd)
    assert r.stderr.startswith(f"Available {group} commands:\n  {group} {cmd.subs[0].name}\n")


# ---------------------------------------------------------------- getopt behaviour


@pytest.mark.parametrize("argv,message", [
    (["vdi", "list", "-q"], "dog: invalid option -- 'q'"),
    (["vdi", "list", "-rq"], "dog: invalid option -- 'q'"),
    (["vdi", "create", "-c"], "dog: option requires an argument -- 'c'"),
    (["vdi", "list", "--bogus"], "dog: unrecognized option '--bogus'"),
    (["vdi", "list", "--bogus=1"], "dog: unrecognized option '--bogus=1'"),
    (["vdi", "create", "--copies"], "dog: option '--copies' requires an argument"),
    (["vdi", "list", "--raw=1"], "dog: option '--raw' doesn't allow an argument"),
    (["cluster", "format", "--f"],
     "dog: option '--f' is ambiguous; possibilities: '--fixedvnodes' '--force'"),
    (["vdi", "create", "--format", "json"], "dog: unrecognized option '--format'"),
    (["vdi", "read", "-c", "3"], "dog: invalid option -- 'c'"),  # not in read's option string
])
def test_option_errors_print_getopt_message_and_exit_64(argv, message):
    r = dog(*argv)
    assert r.exit_code == 64
    assert r.stdout == ""
    assert r.stderr == message + "\n" + TRY


def test_options_may_follow_operands_and_use_every_spelling(tmp_path):
    path = tmp_path / "inode"
    path.write_bytes(Inode(InodeHeader(name="x", vdi_size=4 << 20, nr_copies=3)).encode())
    for argv in (["vdi", "object", "dump-inode", str(path), "-T"],
                 ["vdi", "object", "-T", "dump-inode", str(path)],
                 ["vdi", "object", "--time", "dump-inode", str(path)],
                 ["vdi", "object", "--ti", "dump-inode", str(path)]):
        r = dog(*argv)
        assert r.exit_code == 0, (argv, r.stderr)
        assert r.stdout.startswith("name: x\n")
        assert re.search(r"\n\nElapsed time: \d+\.\d{3} seconds\n$", r.stdout)


def test_double_dash_ends_options(tmp_path):
    r = dog("vdi", "object", "dump-inode", "--", "-T")
    assert r.exit_code == 1
    assert r.stderr == "failed to open inode object file: No such file or directory\n"


# ---------------------------------------------------------------- value checks


@pytest.mark.parametrize("port", ["abc", "0", "65536", "12x", "-1", "", "+80"])
def test_bad_port(port):
    r = dog("vdi", "list", "-p", port)
    assert r.exit_code == 64
    assert r.stderr == f"Invalid port number '{port}'\n"
    r = dog("vdi", "list", f"--port={port}")
    assert r.exit_code == 64


def test_bad_port_from_environment():
    r = dog("vdi", "list", env={"SHEEPDOG_DOG_PORT": "seven"})
    assert r.exit_code == 64
    assert r.stderr == "Invalid port number 'seven'\n"


def test_bad_address():
    r = dog("vdi", "list", "-a", "1.2.3.4.5")
    assert r.exit_code == 1
    assert r.stderr == "Invalid ip address 1.2.3.4.5\n"
    r = dog("vdi", "list", env={"SHEEPDOG_DOG_ADDR": "1.2.3.4.5"})
    assert r.exit_code == 1
    assert r.stderr == "Invalid ip address 1.2.3.4.5\n"


def test_bad_size_prints_hint_then_usage():
    port = closed_port()
    r = dog("vdi", "read", "Alice", "12Q", "-p", str(port))
    assert r.exit_code == 64
    assert r.stderr == ("Invalid size '12Q'\nYou may use B, K, M, G, T or P suffixes for bytes, "
                        "kilobytes, megabytes, gigabytes, terabytes and petabytes.\n")
    assert r.stdout.startswith("Usage: dog vdi read [-s snapshot]")


def test_bad_copies():
    spec = _spec()
    block = re.search(r"Anything\s+else \(\*observed\*, exit 1\):\n  ```\n(.*?)  ```", spec,
                      re.S).group(1)
    expected = "".join(line[2:] + "\n" for line in block.splitlines())
    r = dog("vdi", "create", "-c", "99", "a", "1G")
    assert r.exit_code == 1
    assert r.stderr == expected
    r = dog("cluster", "format", "--copies=99")
    assert r.exit_code == 1 and r.stderr == expected


@pytest.mark.parametrize("argv,message", [
    (["vdi", "create", "-z", "19", "a", "1G"],
     "Object Size is larger than 2^20. Please set shift bit larger than 20"),
    (["vdi", "create", "-z", "32", "a", "1G"],
     "Object Size is limited to 2^31. Please set shift bit lower than 31"),
    (["cluster", "format", "-z", "abc"],
     "Object Size is larger than 2^20. Please set shift bit larger than 20"),
    (["vdi", "create", "-y", "-z", "22", "a", "1G"], "Don't specify both -y and -z options, please"),
    (["vdi", "create", "-z", "22", "-y", "a", "1G"], "Don't specify both -y and -z options, please"),
    (["vdi", "read", "-s", "0", "a"], "The snapshot id must be larger than zero"),
    (["vdi", "object", "-i", "x", "map", "a"],
     "The index must be a decimal integer or a hexadecimal integer started with 0x"),
    (["vdi", "list", "-o", "zz"], "object id must be a hex integer"),
    (["vdi", "delete", "-B", "x", "a"], "The number of batched reclamation is invalid: x"),
    (["vdi", "delete", "-B", "0", "a"], "The number of batched reclamation must bepositive integer"),
    (["vdi", "delete", "-I", "-3", "a"],
     "The interval of batched reclamation must bepositive integer"),
    (["vdi", "delete", "-m", "q", "a"], "The maximum number of reclamation is invalid: q"),
])
def test_option_value_errors_exit_1(argv, message):
    r = dog(*argv)
    assert r.exit_code == 1
    assert r.stderr == message + "\n"
    assert r.stdout == ""


def test_json_format_value_is_checked():
    r = dog("node", "list", "--format", "yaml")
    assert r.exit_code == 64
    assert "yaml" in r.stderr


# ---------------------------------------------------------------- no sheep


@pytest.mark.parametrize("argv", [["node", "list"], ["node", "info"], ["cluster", "info"],
                                  ["cluster", "format"], ["vdi", "create", "a", "1G"],
                                  ["vdi", "create"], ["node", "kill", "0"]])
def test_needs_node_list_without_sheep_exits_2(argv):
    port = closed_port()
    r = dog(*argv, "-p", str(port))
    assert r.exit_code == 2
    assert r.stdout == ""
    assert r.stderr == refused(port) * 2 + "Failed to get node list\n"


def test_spec_example_port_7999():
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 7999)) == 0:
            pytest.skip("something listens on 127.0.0.1:7999")
    r = dog("node", "list", "-p", "7999")
    assert r.exit_code == 2
    assert r.stderr == ("failed to connect to 127.0.0.1:7999: Connection refused\n" * 2
                        + "Failed to get node list\n")
    r = dog("node", "list", env={"SHEEPDOG_DOG_PORT": "7999"})
    assert r.exit_code == 2 and r.stderr.endswith("Failed to get node list\n")


def test_vdi_list_without_sheep_prints_header_then_exits_2():
    port = closed_port()
    r = dog("vdi", "list", "-p", str(port))
    assert r.exit_code == 2
    assert r.stdout.startswith("  Name        Id    Size")
    assert r.stderr == refused(port) * 2
    r = dog("vdi", "list", "-r", "-p", str(port))
    assert r.exit_code == 2 and r.stdout == ""


def test_other_commands_without_sheep():
    port = closed_port()
    r = dog("cluster", "shutdown", "-p", str(port))
    assert r.exit_code == 1
    assert r.stderr == refused(port) * 2 + "failed to execute request\n"
    r = dog("vdi", "read", "nosuch", "-p", str(port))
    assert r.exit_code == 1
    assert r.stderr == refused(port) * 2 + \
        "Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): I/O error\n"


# ---------------------------------------------------------------- not yet implemented


@pytest.mark.parametrize("argv", [["cluster", "snapshot", "list", "a"],
                                  ["upgrade", "config-convert", "a", "b"], ["benchmark", "io", "a"]])
def test_unimplemented_subcommands(argv):
    r = dog(*argv)
    assert r.exit_code == 1
    assert r.stderr == f"{argv[0]} {argv[1]}: not implemented yet\n"


def test_dog_operation_log(tmp_path):
    log = tmp_path / "dog.log"
    dog("vdi", "list", "-h", env={"SHEEPDOG_DOG_LOG": "1", "SHEEPDOG_DOG_LOG_PATH": str(log)})
    line = log.read_text()
    assert re.fullmatch(r"\d{4} \w{3} [ \d]\d \d\d:\d\d:\d\d :  \S+ vdi list -h\n", line)
