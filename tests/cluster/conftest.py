"""Cluster fixtures: every test gets its own cluster, torn down by pid."""
from __future__ import annotations

import pytest

from .harness import DOG, SHEEP, Cluster, free_ports, pid_gone  # noqa: F401  (re-exported for tests)


@pytest.fixture
def make_cluster(tmp_path):
    made: list[Cluster] = []

    def make(n: int = 3, start: bool = True) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", n)
        made.append(c)
        return c.start() if start else c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """Three formatted nodes (copies=3)."""
    c = make_cluster(3)
    c.format(3)
    return c
