"""NBD frontend: an nbdkit Python plugin (plugin.py) exporting VDIs to QEMU, qemu-img,
nbdcopy and nbd-client, and the `sheepdog-nbd` command that starts it (cli.py)."""
from pathlib import Path

PLUGIN = str(Path(__file__).resolve().parent / "plugin.py")
