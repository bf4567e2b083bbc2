"""A GNU `getopt_long` work-alike, because dog's option handling is glibc's.

Why not click/argparse/getopt.gnu_getopt: dog must accept and reject exactly what glibc
accepts (permutation of options and operands, clustered short options, attached or separate
arguments, unique-prefix abbreviation of long options, ``--``) and print glibc's own error
messages (``dog: invalid option -- 'q'``).  Options are yielded lazily, in command-line order,
so that side effects happen in the same order as in dog (``-h`` before a later bad option
prints the help; a bad ``-p`` before a later ``-h`` is an error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class LongOpt:
    name: str
    key: str  # what the parser yields: the short letter, or a name for long-only options
    has_arg: bool


class GetoptError(Exception):
    """A command-line error; ``str()`` is glibc's message without the trailing newline."""


class Getopt:
    """Iterate ``(key, optarg)`` pairs; afterwards ``operands`` holds the non-options in order.

    ``shortopts`` maps each accepted short letter to whether it takes an argument.
    """

    def __init__(self, args: list[str], shortopts: dict[str, bool], longopts: list[LongOpt],
                 prog: str = "dog") -> None:
        self.args = list(args)
        self.shortopts = shortopts
        self.longopts = longopts
        self.prog = prog
        self.operands: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        args, i = self.args, 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                self.operands.extend(args[i:])
                return
            if arg.startswith("--"):
                key, optarg, i = self._long(arg[2:], args, i)
                yield key, optarg
            elif arg.startswith("-") and arg != "-":
                pos = 1
                while pos < len(arg):
                    ch = arg[pos]
                    pos += 1
                    if ch not in self.shortopts:
                        raise GetoptError(f"{self.prog}: invalid option -- '{ch}'")
                    if not self.shortopts[ch]:
                        yield ch, None
                        continue
                    if pos < len(arg):
                        optarg = arg[pos:]
                    elif i < len(args):
                        optarg = args[i]
                        i += 1
                    else:
                        raise GetoptError(
                            f"{self.prog}: option requires an argument -- '{ch}'")
                    yield ch, optarg
                    break
            else:
                self.operands.append(arg)

    def _long(self, text: str, args: list[str], i: int) -> tuple[str, str | None, int]:
        name, eq, value = text.partition("=")
        exact = [o for o in self.longopts if o.name == name]
        if exact:
            opt = exact[0]
        else:
            matches = [o for o in self.longopts if o.name.startswith(name)] if name else []
            if not matches:
                raise GetoptError(f"{self.prog}: unrecognized option '--{text}'")
            if len({(o.key, o.has_arg) for o in matches}) > 1:
                choices = "".join(f" '--{o.name}'" for o in matches)
                raise GetoptError(
                    f"{self.prog}: option '--{text}' is ambiguous; possibilities:{choices}")
            opt = matches[0]
        if not opt.has_arg:
            if eq:
                raise GetoptError(f"{self.prog}: option '--{opt.name}' doesn't allow an argument")
            return opt.key, None, i
        if eq:
            return opt.key, value, i
        if i < len(args):
            return opt.key, args[i], i + 1
        raise GetoptError(f"{self.prog}: option '--{opt.name}' requires an argument")


__all__ = ["Getopt", "GetoptError", "LongOpt"]
