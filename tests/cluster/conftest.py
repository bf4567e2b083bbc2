"""Fixtures live in tests/conftest.py (shared with the FUSE, NBD and ZooKeeper tests)."""
