"""Cluster fixtures shared by every test directory: each test gets its own cluster, torn
down by pid."""
from __future__ import annotations

import time

import pytest

from sheep.proto.constants import ClusterFlag

from tests.cluster.harness import Cluster


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


@pytest.fixture
def lock_cluster(make_cluster) -> Cluster:
    """Three nodes formatted with USE_LOCK (`dog cluster format --lock`), copies=3."""
    c = make_cluster(3)
    t = time.time()
    with c.client() as cl:
        cl.make_fs(3, 0, ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK,
                   (int(t) << 32) | (int(t % 1 * 1e6) * 1000))
    return c
