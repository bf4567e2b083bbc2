"""The man pages stay in step with the programs' own help texts."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def roff_text(name: str) -> str:
    """The page with roff escapes for '-' undone, so options can be searched for."""
    return (ROOT / "man" / name).read_text().replace("\\-", "-")


def test_sheep_man_covers_every_option():
    help_text = subprocess.run([str(BIN / "sheep"), "-h"], capture_output=True, text=True, check=True).stdout
    options = re.findall(r"^  (-\w), (--[a-z-]+?)(?=\s|specify)", help_text, re.M)
    assert len(options) == 21
    page = roff_text("sheep.8")
    missing = [long for short, long in options if long not in page or short not in page]
    assert missing == []


def test_dog_man_covers_every_command():
    help_text = subprocess.run([str(BIN / "dog"), "--help"], capture_output=True, text=True, check=True).stdout
    commands = re.findall(r"^  (\w+) ([\w-]+) ", help_text, re.M)
    assert len(commands) > 40
    page = roff_text("dog.8")
    missing = [f"{c} {s}" for c, s in commands
               if not re.search(rf"\b{c} {re.escape(s)}\b", page) and not re.search(rf"\b{c}\b.*\b{re.escape(s)}\b", page)]
    assert missing == []
