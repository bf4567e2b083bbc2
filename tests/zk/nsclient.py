"""Run inside a host's network namespace (`ip netns exec NS python -m tests.zk.nsclient`):
one WRITE_OBJ to that host's sheep; prints ``ACKED`` or ``FAILED <why>`` and the seconds taken.
Used where the test's own side of the network is cut off from that host."""
from __future__ import annotations

import sys
import time

from sheep.client.api import Client


def main() -> None:
    host, port, oid, data_hex, timeout = sys.argv[1:6]
    t = time.monotonic()
    try:
        with Client(host, int(port), timeout=float(timeout)) as c:
            c.write_object(int(oid, 16), bytes.fromhex(data_hex))
        print(f"ACKED {time.monotonic() - t:.1f}")
    except Exception as e:  # every way of not acknowledging is reported as such
        print(f"FAILED {time.monotonic() - t:.1f} {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
