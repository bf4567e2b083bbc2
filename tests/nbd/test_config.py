"""The plugin's parameters: the rules (pure) and what nbdkit prints for a bad one."""
from __future__ import annotations

import errno

import pytest

from frontends.nbd import PLUGIN
from frontends.nbd.config import ConfigError, ExportConfig
from frontends.nbd.export import errno_of
from sheep.client.sync import SheepConnectionError, SheepError
from sheep.proto.constants import Res

from .nbdenv import run


def parse(*params: str) -> ExportConfig:
    cfg = ExportConfig()
    for p in params:
        k, v = p.split("=", 1)
        cfg.set(k, v)
    cfg.complete()
    return cfg


def test_defaults_and_values():
    c = parse("vdi=Alice")
    assert (c.vdi, c.snapid, c.tag, c.readonly, c.route) == ("Alice", 0, "", False, True)
    assert c.connect_args == dict(host="127.0.0.1", port=7000, timeout=90.0)
    c = parse("vdi=Alice", "snapshot=3", "address=10.0.0.1", "port=7001", "timeout=2.5")
    assert (c.snapid, c.tag, c.readonly) == (3, "", True)  # a snapshot is read-only
    assert c.connect_args == dict(host="10.0.0.1", port=7001, timeout=2.5)
    c = parse("vdi=Alice", "snapshot=before-upgrade", "socket=/run/sheep.sock", "readonly=yes")
    assert (c.snapid, c.tag, c.readonly) == (0, "before-upgrade", True)
    assert c.connect_args == dict(unix_path="/run/sheep.sock", timeout=90.0)
    assert parse("vdi=A", "readonly=off", "route=false").readonly is False
    assert parse("vdi=A").shortcircuit is True
    assert parse("vdi=A", "shortcircuit=no").shortcircuit is False
    assert parse("vdi=A", "route=false", "shortcircuit=false").shortcircuit is False


@pytest.mark.parametrize("params, message", [
    (["vdi=A", "size=1G"], "unknown parameter 'size'"),
    (["vdi=A", "port=70000"], "port='70000': expected a TCP port number"),
    (["vdi=A", "port=abc"], "port='abc'"),
    (["vdi=A", "readonly=maybe"], "readonly='maybe': expected true or false"),
    (["vdi=A", "timeout=-1"], "timeout='-1'"),
    (["vdi=A", "snapshot=0"], "snapshot=0: a snapshot id is between 1"),
    (["vdi=A", "vdi=B"], "parameter 'vdi' given twice"),
    (["vdi=" + "x" * 256], "at most 255 bytes"),
    (["snapshot=s"], "vdi=NAME is required"),
    (["vdi=A", "socket=/s", "port=7000"], "socket= excludes address= and port="),
    (["vdi=A", "snapshot=s", "readonly=false"], "a snapshot export is read-only"),
    (["vdi=A", "shortcircuit=sometimes"], "shortcircuit='sometimes': expected true or false"),
    (["vdi=A", "route=false", "shortcircuit=true"], "shortcircuit=true needs route=true"),
])
def test_rejected(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse(*params)


def test_errno_mapping():
    assert errno_of(SheepError(Res.READONLY)) == errno.EROFS
    assert errno_of(SheepError(Res.NO_SPACE)) == errno.ENOSPC
    assert errno_of(SheepError(Res.NO_OBJ)) == errno.EIO
    assert errno_of(SheepConnectionError("gone")) == errno.EIO
    assert errno_of(PermissionError("ro")) == errno.EPERM
    assert errno_of(TimeoutError(errno.ETIMEDOUT, "slow")) == errno.ETIMEDOUT
    assert errno_of(RuntimeError("bug")) == errno.EIO


@pytest.mark.parametrize("params, message", [
    (["vdi=Alice", "bogus=1"], "unknown parameter 'bogus'; the parameters are vdi, snapshot"),
    (["vdi=Alice", "port=x"], "port='x': expected a TCP port number (1-65535)"),
    (["address=h"], "the parameter vdi=NAME is required"),
    (["vdi=Alice", "snapshot=1", "readonly=false"], "a snapshot export is read-only"),
])
def test_nbdkit_rejects_bad_parameters(tmp_path, params, message):
    """At config time, before any connection: one clear line, no traceback."""
    r = run("nbdkit", "-f", "-U", tmp_path / "s.sock", "python", PLUGIN, *params,
            check=False, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "s.sock").exists()
