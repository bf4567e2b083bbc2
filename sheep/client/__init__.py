"""Sheep client library: ``sync`` (blocking connection) -> ``api`` (typed requests) ->
``volume`` (VDI byte-range I/O) -> ``vdi`` (a VDI opened as QEMU opens it); ``trio_client``
is the async connection used by the daemon.

Nothing is imported here so that blocking users (dog) do not pay for trio.
"""
