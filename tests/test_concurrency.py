"""Searches from many Python threads, concurrently with adds and removes, are safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import annforge as af
from conftest import clustered


@pytest.mark.sanitize
def test_concurrent_search_add_remove() -> None:
    dim = 32
    base = clustered(4000, dim, seed=1)
    index = af.FlatIndex(dim)
    index.add(base)  # ids 0..3999 stay forever
    errors: list[BaseException] = []
    removed_for_good: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = base[rng.integers(0, len(base), size=int(rng.integers(1, 40)))]
                with lock:
                    banned = set(removed_for_good)
                ids, dist = index.search(q, 10, num_threads=int(rng.integers(0, 3)))
                assert ids.shape == (len(q), 10)
                assert not (set(ids.ravel().tolist()) & banned), "a removed id came back"
                assert np.isfinite(dist).all()
                np.testing.assert_array_equal(ids[:, 0] < 4000, True)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def writer() -> None:
        rng = np.random.default_rng(99)
        try:
            next_id = 100_000
            for _ in range(150):
                new = rng.standard_normal((20, dim)).astype(np.float32) * 50 + 500  # far from the base data
                ids = np.arange(next_id, next_id + 20)
                next_id += 20
                index.add(new, ids=ids)
                index.remove(ids[:10])
                with lock:
                    removed_for_good.update(ids[:10].tolist())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    w = threading.Thread(target=writer)
    for t in threads:
        t.start()
    w.start()
    w.join(timeout=120)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(index) == 4000 + 150 * 10


def test_searches_release_the_gil() -> None:
    """While one thread is inside a long search, another Python thread keeps running."""
    index = af.FlatIndex(64)
    index.add(clustered(60000, 64))
    q = clustered(200, 64, seed=3)
    ticks = 0
    done = threading.Event()

    def counter() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=counter)
    t.start()
    before = ticks
    index.search(q, 5, num_threads=1)
    progressed = ticks - before
    done.set()
    t.join()
    assert progressed > 1000


@pytest.mark.sanitize
@pytest.mark.parametrize("family", ["flat", "hnsw", "ivfpq", "scann"])
def test_serialising_through_the_base_class_holds_the_index_lock(family: str) -> None:
    """Saving through a ``VectorIndex&`` (as any generic caller does) keeps add() out until the bytes are out.

    The hook serialises through the base reference and, with the writer's sections not yet emitted,
    starts an add on another thread: the add must wait for the serialiser's lock, and the bytes must be
    the index without the new rows. A family whose save ran without its lock lets the add through (and
    the writer would then read arrays that the add may have reallocated).
    """
    from annforge import _core

    dim = 16
    base = clustered(600, dim, seed=3)
    extra = clustered(50, dim, seed=4)
    index = {
        "flat": lambda: af.FlatIndex(dim),
        "hnsw": lambda: af.HNSWIndex(dim, M=8, ef_construction=32),
        "ivfpq": lambda: af.IVFPQIndex(dim, nlist=4, m=4),
        "scann": lambda: af.ScaNNIndex(dim, num_leaves=4),
    }[family]()
    if family in ("ivfpq", "scann"):
        index.train(base)
    index.add(base)
    finished_inside, data = _core._testing._add_during_serialise(index._impl, extra, 0.3)
    assert not finished_inside, "add() completed while the index was being serialised"
    assert len(type(index).from_bytes(data)) == len(base)
    assert len(index) == len(base) + len(extra)  # the add ran once the lock was released
