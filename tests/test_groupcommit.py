"""Group commit (storage/groupcommit.py): every item committed once, in batches when
threads overlap, each thread answered with its own item's result or its batch's error."""

from __future__ import annotations

import threading
import time

import pytest

from storage.groupcommit import GroupCommit


def test_one_thread_commits_each_item_alone() -> None:
    batches: list[list[int]] = []
    group = GroupCommit(lambda items: (batches.append(items), [i * 10 for i in items])[1])
    assert [group.submit(i) for i in range(3)] == [0, 10, 20]
    assert batches == [[0], [1], [2]]


def test_overlapping_threads_share_commits() -> None:
    batches: list[list[int]] = []

    def commit(items: list[int]) -> list[int]:
        batches.append(items)
        time.sleep(0.01)  # an fsync
        return [-i for i in items]

    group = GroupCommit(commit)
    results: dict[int, int] = {}

    def worker(t: int) -> None:
        for i in range(t * 100, t * 100 + 20):
            results[i] = group.submit(i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert results == {i: -i for t in range(6) for i in range(t * 100, t * 100 + 20)}
    committed = [i for b in batches for i in b]
    assert sorted(committed) == sorted(results)  # each exactly once
    assert len(batches) < 120 / 2  # shared: far fewer commits than items


def test_a_failed_batch_fails_its_items_only() -> None:
    gate = threading.Event()
    calls: list[list[str]] = []

    def commit(items: list[str]) -> list[str]:
        calls.append(items)
        if "slow" in items:
            gate.wait(5)
            return items
        if "bad" in items:
            raise OSError("disk full")
        return items

    group = GroupCommit(commit)
    out: dict[str, object] = {}

    def submit(name: str) -> None:
        try:
            out[name] = group.submit(name)
        except OSError as exc:
            out[name] = exc

    first = threading.Thread(target=submit, args=("slow",))
    first.start()
    time.sleep(0.1)  # "slow" is committing: the next two wait and go together
    others = [threading.Thread(target=submit, args=(n,)) for n in ("bad", "also")]
    for th in others:
        th.start()
    time.sleep(0.1)
    gate.set()
    for th in [first, *others]:
        th.join(5)
    assert out["slow"] == "slow"
    assert isinstance(out["bad"], OSError) and out["also"] is out["bad"]
    assert calls[0] == ["slow"] and sorted(calls[1]) == ["also", "bad"]
    assert group.submit("later") == "later"


@pytest.mark.parametrize("n", [1, 2])
def test_results_follow_items(n: int) -> None:
    group: GroupCommit[int, str] = GroupCommit(lambda items: [str(i) for i in items])
    assert group.submit(n) == str(n)
