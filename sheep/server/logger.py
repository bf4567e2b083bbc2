"""sheep.log in the original's formats (dog.md §10, `-l format=server|default|json`).

`server`: ``Nov 25 08:29:08   INFO [main] func(line) message``.  Levels use the syslog
numbers of `dog node log level` (0 emerg … 7 debug).
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time

LEVEL_NAMES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]
_TO_PY = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
          4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}
_TAG = {logging.CRITICAL: "EMERG", logging.ERROR: "ERROR", logging.WARNING: "WARN",
        logging.INFO: "INFO", logging.DEBUG: "DEBUG"}


class ServerFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        stamp = stamp[:4] + f"{int(stamp[4:6]):2d}" + stamp[6:]
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {_TAG.get(record.levelno, 'INFO'):>6} [main] {record.funcName}({record.lineno}) {msg}"


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": _TAG.get(record.levelno, "INFO").lower(),
                           "func": record.funcName, "line": record.lineno, "msg": record.getMessage()})


FORMATTERS = {"server": ServerFormatter, "default": PlainFormatter, "json": JsonFormatter}


def setup(path: str | None, level: int, fmt: str = "server", dst: str = "default") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if dst == "stdout" or path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    elif dst == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.handlers.WatchedFileHandler(path)  # reopened after rotation (SIGHUP)
    handler.setFormatter(FORMATTERS.get(fmt, ServerFormatter)())
    root.addHandler(handler)
    set_level(level)


def set_level(level: int) -> None:
    logging.getLogger().setLevel(_TO_PY.get(level, logging.INFO))


def level_from_name(name: str) -> int:
    if name.isdigit() and 0 <= int(name) <= 7:
        return int(name)
    return LEVEL_NAMES.index(name)  # ValueError for unknown names
