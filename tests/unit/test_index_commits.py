"""IndexCommits (frontends/nbd/streams.py): index entries of new objects written in groups
by the writers that wait for them.  Threads and a recorded `write`, no sockets."""
from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from frontends.nbd.streams import IndexCommits


class Index:
    """The in-memory side: which entries are written, and every group written."""

    def __init__(self, refuse: frozenset[int] = frozenset(), fail_all: bool = False) -> None:
        self.entries: set[int] = set()
        self.groups: list[list[int]] = []
        self.refuse, self.fail_all = refuse, fail_all
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def written(self, idx: int) -> bool:
        return idx in self.entries

    def write(self, group: list[int]) -> None:
        self.entered.set()
        self.release.wait(10)
        with self.lock:
            self.groups.append(group)
        if self.fail_all:
            raise ConnectionError("sheep gone")
        for i in group:
            if i not in self.refuse:
                self.entries.add(i)
        if any(i in self.refuse for i in group):
            raise PermissionError("snapshot")


def run_writers(commits: IndexCommits, index: Index, per_writer: list[list[int]]
                ) -> list[dict[int, BaseException]]:
    results: list[dict[int, BaseException]] = [{} for _ in per_writer]

    def writer(k: int, idxs: list[int]) -> None:
        for i in idxs:
            commits.add(i)
        results[k] = commits.wait(idxs, index.write)

    threads = [threading.Thread(target=writer, args=(k, idxs)) for k, idxs in enumerate(per_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a writer never got its entries"
    return results


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), max_size=6), min_size=1, max_size=8))
def test_every_entry_written_once_and_before_its_writer_returns(per_writer):
    index = Index()
    commits = IndexCommits(index.written)
    results = run_writers(commits, index, per_writer)
    assert all(r == {} for r in results)
    wanted = set().union(*map(set, per_writer))
    assert index.entries == wanted
    flat = [i for g in index.groups for i in g]
    assert sorted(flat) == sorted(set(flat)) and set(flat) == wanted  # once each
    assert all(g == sorted(g) for g in index.groups)


def test_entries_added_meanwhile_go_in_one_group():
    index = Index()
    commits = IndexCommits(index.written)
    index.release.clear()
    first = threading.Thread(target=run_writers, args=(commits, index, [[0]]))
    first.start()
    assert index.entered.wait(10)  # the first group ([0]) is being written
    for i in (1, 2, 3):
        commits.add(i)
    index.release.set()
    results = run_writers(commits, index, [[1], [2, 3]])
    first.join(10)
    assert results == [{}, {}]
    assert sorted(index.groups) == [[0], [1, 2, 3]]


def test_failures_reach_every_writer_of_the_entry_and_only_them():
    index = Index(refuse=frozenset({5}))
    commits = IndexCommits(index.written)
    results = run_writers(commits, index, [[4, 5]])
    assert set(results[0]) == {5} and isinstance(results[0][5], PermissionError)
    assert index.written(4)
    # a later attempt at the same entry starts clean, and fails again on its own
    again = run_writers(commits, index, [[5], [5]])
    assert all(set(r) == {5} for r in again)


def test_a_broken_write_fails_its_whole_group():
    index = Index(fail_all=True)
    commits = IndexCommits(index.written)
    results = run_writers(commits, index, [[1, 2]])
    assert set(results[0]) == {1, 2}
    assert all(isinstance(e, ConnectionError) for e in results[0].values())
