"""sheepfs's command line (dog.md §9) and its man page."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import SHEEPFS

ROOT = Path(__file__).resolve().parents[2]

# dog.md §9, verbatim
HELP = """\
Usage: sheepfs [OPTION]... MOUNTPOINT
Options:
  -a, --address           specify the sheep address (default: 127.0.0.1)
  -d, --debug             enable debug output (implies -f)
  -f, --foreground        sheepfs run in the foreground
  -k, --pagecache         use local kernel's page cache to access volume
  -o, --objectcache       enable object cache of the connected sheep daemon
  -p, --port              specify the sheep port (default: 7000)
  -h, --help              display this help and exit
"""


def sheepfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SHEEPFS, *args], capture_output=True, text=True, timeout=30)


def test_help_is_verbatim():
    for flag in ("-h", "--help", "--he"):
        r = sheepfs(flag)
        assert (r.returncode, r.stdout, r.stderr) == (0, HELP, "")


def test_usage_errors(tmp_path):
    r = sheepfs()
    assert (r.returncode, r.stderr) == (1, "Try 'sheepfs --help' for help.\n")
    r = sheepfs("-p", "0", str(tmp_path))
    assert (r.returncode, r.stderr) == (1, "Invalid port number '0'\n")
    r = sheepfs("-p", "70000", str(tmp_path))
    assert (r.returncode, r.stderr) == (1, "Invalid port number '70000'\n")
    r = sheepfs("-q", str(tmp_path))
    assert (r.returncode, r.stderr) == (1, "sheepfs: invalid option -- 'q'\n"
                                           "Try 'sheepfs --help' for help.\n")
    r = sheepfs("-a", "no such host.invalid", str(tmp_path))
    assert (r.returncode, r.stderr) == (1, "Invalid ip address no such host.invalid\n")


def test_log_file_inside_the_mount_point_is_refused(tmp_path):
    # the event loop thread would write into its own file system and hang
    r = sheepfs("-f", "--log", str(tmp_path / "sheepfs.log"), str(tmp_path))
    assert r.returncode == 1
    assert "must not be inside the mount point" in r.stderr


def test_man_page_covers_every_option_and_file():
    page = (ROOT / "man" / "sheepfs.8").read_text().replace("\\-", "-")
    for short, long in re.findall(r"^  (-\w), (--[a-z]+)", HELP, re.M):
        assert short in page and long in page, long
    for name in ("cluster/info", "node/list", "node/info", "vdi/list", "vdi/mount",
                 "vdi/unmount", "volume/", "config/page_cache", "config/object_cache",
                 "config/sheep_info", "fusermount3 -u", "--log"):
        assert name in page, name
