"""The plugin's ``key=value`` parameters: parsed and checked at nbdkit's config time.

Pure Python (no nbdkit, no sockets), so the rules are unit-tested directly.  Every
problem raises `ConfigError` with the one-line message nbdkit prints before exiting.
"""
from __future__ import annotations

from dataclasses import dataclass

from sheep.proto.constants import SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN

KEYS = ("vdi", "snapshot", "address", "port", "socket", "readonly", "timeout", "route",
        "shortcircuit")
DEFAULT_PORT = 7000
DEFAULT_TIMEOUT = 90.0  # seconds a sheep may stay silent before a request fails with EIO
# (longer than the 60 s a gateway keeps retrying a write across membership changes)

HELP = """\
vdi=NAME             (required) the VDI to export
snapshot=TAG|ID      export a snapshot (read-only): a decimal id or a tag
address=HOST         a sheep to talk to (default 127.0.0.1)
port=PORT            its port (default 7000)
socket=PATH          or its unix socket (instead of address/port)
readonly=true|false  refuse writes (default false; a snapshot is always read-only)
timeout=SECONDS      fail a request with EIO when the sheep is silent that long (default 90)
route=true|false     send object I/O straight to a sheep holding the object (default true);
                     false: everything through the one sheep
shortcircuit=true|false  read and write the object files of sheep on this host
                     directly, under their grants (default true; needs route=true)"""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A bad parameter; ``str()`` is the message for the user."""


@dataclass
class ExportConfig:
    vdi: str = ""
    snapid: int = 0
    tag: str = ""
    address: str | None = None
    port: int | None = None
    socket: str | None = None
    readonly: bool | None = None  # None: not given
    timeout: float = DEFAULT_TIMEOUT
    route: bool = True
    shortcircuit: bool = True
    _seen: tuple[str, ...] = ()

    # ------------------------------------------------------------------ parsing

    def set(self, key: str, value: str) -> None:
        """One ``key=value`` from the command line (nbdkit's ``config`` callback)."""
        if key not in KEYS:
            raise ConfigError(f"unknown parameter {key!r}; the parameters are "
                              f"{', '.join(KEYS)}")
        if key in self._seen:
            raise ConfigError(f"parameter {key!r} given twice")
        self._seen += (key,)
        if key == "vdi":
            self.vdi = _name(value, "vdi", SD_MAX_VDI_LEN)
        elif key == "snapshot":
            self.snapid, self.tag = parse_snapshot(value)
        elif key == "address":
            if not value or any(c.isspace() for c in value):
                raise ConfigError(f"address={value!r}: expected a host name or IP address")
            self.address = value
        elif key == "port":
            self.port = parse_port(value)
        elif key == "socket":
            if not value:
                raise ConfigError("socket=: expected the path of a sheep's unix socket")
            self.socket = value
        elif key == "readonly":
            self.readonly = parse_bool(value, "readonly")
        elif key == "route":
            self.route = parse_bool(value, "route")
        elif key == "shortcircuit":
            self.shortcircuit = parse_bool(value, "shortcircuit")
        elif key == "timeout":
            try:
                t = float(value)
            except ValueError:
                t = -1.0
            if not t > 0 or t == float("inf"):
                raise ConfigError(f"timeout={value!r}: expected a positive number of seconds")
            self.timeout = t

    def complete(self) -> None:
        """nbdkit's ``config_complete``: what needs more than one key."""
        if not self.vdi:
            raise ConfigError("the parameter vdi=NAME is required")
        if self.socket is not None and (self.address is not None or self.port is not None):
            raise ConfigError("socket= excludes address= and port=")
        if "shortcircuit" in self._seen and self.shortcircuit and not self.route:
            raise ConfigError("shortcircuit=true needs route=true (it places objects with the ring)")
        if self.is_snapshot:
            if self.readonly is False:
                raise ConfigError("a snapshot export is read-only: readonly=false is refused")
            self.readonly = True
        elif self.readonly is None:
            self.readonly = False

    # ------------------------------------------------------------------ results

    @property
    def is_snapshot(self) -> bool:
        return bool(self.snapid or self.tag)

    @property
    def connect_args(self) -> dict:
        """Keyword arguments for VdiClient/Client: where the sheep is."""
        if self.socket is not None:
            return dict(unix_path=self.socket, timeout=self.timeout)
        return dict(host=self.address or "127.0.0.1", port=self.port or DEFAULT_PORT,
                    timeout=self.timeout)

    @property
    def home(self) -> tuple[str, int] | None:
        """The configured sheep as the node list names it (None: a unix socket)."""
        if self.socket is not None:
            return None
        return self.address or "127.0.0.1", self.port or DEFAULT_PORT

    @property
    def where(self) -> str:
        if self.socket is not None:
            return self.socket
        return f"{self.address or '127.0.0.1'}:{self.port or DEFAULT_PORT}"

    def describe(self) -> str:
        snap = f" snapshot {self.snapid or self.tag}" if self.is_snapshot else ""
        return f"sheepdog VDI {self.vdi}{snap} at {self.where}"


def _name(value: str, key: str, limit: int) -> str:
    if not value:
        raise ConfigError(f"{key}=: expected a VDI name")
    if "\0" in value or len(value.encode()) >= limit:
        raise ConfigError(f"{key}={value!r}: a name is at most {limit - 1} bytes, without NUL")
    return value


def parse_snapshot(value: str) -> tuple[int, str]:
    """QEMU's rule (``sheepdog:vdi:snap``): a decimal number is a snapshot id, else a tag."""
    if not value:
        raise ConfigError("snapshot=: expected a snapshot tag or id")
    if value.isdigit():
        snapid = int(value)
        if not 0 < snapid < 1 << 32:
            raise ConfigError(f"snapshot={value}: a snapshot id is between 1 and {(1 << 32) - 1}")
        return snapid, ""
    return 0, _name(value, "snapshot", SD_MAX_VDI_TAG_LEN)


def parse_port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"port={value!r}: expected a TCP port number (1-65535)")
    return int(value)


def parse_bool(value: str, key: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


__all__ = ["ConfigError", "ExportConfig", "HELP", "KEYS", "parse_snapshot", "parse_port",
           "parse_bool"]
