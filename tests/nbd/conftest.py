"""Fixtures of the NBD tests (helpers in nbdenv.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .nbdenv import SYSTEM_PYTHON, TOOLS, Env, which


@pytest.fixture(scope="session", autouse=True)
def _tools() -> None:
    """scripts/bootstrap installs these (Debian packages); without them, fail loudly."""
    missing = [t for t in TOOLS if which(t) is None]
    if not missing and subprocess.run(["nbdkit", "python", "--version"],
                                      capture_output=True).returncode != 0:
        missing.append("nbdkit-plugin-python")
    if not missing and subprocess.run([SYSTEM_PYTHON, "-c", "import nbd"],
                                      capture_output=True).returncode != 0:
        missing.append("python3-libnbd")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/bootstrap as root", pytrace=False)


@pytest.fixture
def env(tmp_path: Path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()
