"""FlatIndex: exact results against a float64 reference, ids, upsert/remove, filters, range search."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import annforge as af
from conftest import brute_force, clustered

METRICS = ["l2", "ip", "cosine"]


def assert_exact(index: af.FlatIndex, x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, **kw) -> None:
    """Results equal brute force up to ties: same distances (float32 tolerance) and ids whose true
    distance equals the reported one."""
    got_ids, got_d = index.search(q, k, **kw)
    ref = brute_force(x, q, index.metric)
    kk = min(k, len(x))
    order = np.argsort(ref, axis=1, kind="stable")[:, :kk]
    ref_d = np.take_along_axis(ref, order, 1)
    scale = np.abs(ref).max() + 1.0
    np.testing.assert_allclose(got_d[:, :kk], ref_d, atol=2e-5 * scale, rtol=1e-4)
    pos = {int(i): p for p, i in enumerate(ids)}
    for row in range(len(q)):
        for col in range(kk):
            true_d = ref[row, pos[int(got_ids[row, col])]]
            assert abs(true_d - ref_d[row, col]) <= 2e-5 * scale + 1e-4 * abs(true_d)
        assert len(set(got_ids[row, :kk].tolist())) == kk
    if k > len(x):
        assert (got_ids[:, kk:] == -1).all() and np.isinf(got_d[:, kk:]).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 3, 4, 17, 130])
@pytest.mark.parametrize("dim", [1, 7, 33, 128])
def test_exact_against_float64(metric: str, nq: int, dim: int) -> None:
    x = clustered(700, dim, seed=dim)
    q = clustered(nq, dim, seed=dim + 1)
    index = af.FlatIndex(dim, metric)
    ids = index.add(x)
    assert ids.tolist() == list(range(700))
    assert_exact(index, x, ids, q, 10)


@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 40),
    k=st.integers(1, 70),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**31 - 1),
    threads=st.sampled_from([0, 1, 2]),
)
def test_exact_property(n: int, dim: int, k: int, metric: str, seed: int, threads: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((5, dim)).astype(np.float32)
    index = af.FlatIndex(dim, metric)
    ids = index.add(x, ids=rng.permutation(10 * n)[:n])
    assert_exact(index, x, ids, q, k, num_threads=threads)


@pytest.mark.parametrize("nq", [1, 64])
def test_threads_give_identical_results(nq: int) -> None:
    x = clustered(20000, 48, seed=3)
    q = clustered(nq, 48, seed=4)
    index = af.FlatIndex(48)
    index.add(x)
    a = index.search(q, 15, num_threads=1)
    b = index.search(q, 15, num_threads=0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_one_dimensional_query_and_empty_index() -> None:
    index = af.FlatIndex(4)
    ids, dist = index.search(np.zeros(4, np.float32), 3)
    assert ids.shape == (1, 3) and (ids == -1).all() and np.isinf(dist).all()
    index.add(np.eye(4, dtype=np.float32))
    ids, dist = index.search([1, 0, 0, 0], 1)
    assert ids.tolist() == [[0]] and dist.tolist() == [[0.0]]
    empty_ids, empty_d = index.search(np.zeros((0, 4), np.float32), 2)
    assert empty_ids.shape == (0, 2) and empty_d.shape == (0, 2)


def test_auto_ids_continue_after_explicit_ids() -> None:
    index = af.FlatIndex(2)
    assert index.add(np.zeros((2, 2))).tolist() == [0, 1]
    assert index.add(np.zeros((1, 2)), ids=[10]).tolist() == [10]
    assert index.add(np.zeros((2, 2))).tolist() == [11, 12]
    assert sorted(index.ids().tolist()) == [0, 1, 10, 11, 12]


@given(ops=st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.lists(st.integers(0, 30), max_size=8)),
                    max_size=25),
       seed=st.integers(0, 1000))
def test_upsert_remove_matches_a_dict_model(ops, seed) -> None:
    rng = np.random.default_rng(seed)
    dim = 5
    index = af.FlatIndex(dim)
    model: dict[int, np.ndarray] = {}
    for op, raw in ops:
        ids = list(dict.fromkeys(raw))  # unique, order kept
        if op == "add":
            x = rng.standard_normal((len(ids), dim)).astype(np.float32)
            index.add(x, ids=np.array(ids, dtype=np.int64))
            for i, row in zip(ids, x):
                model[i] = row
        else:
            removed = index.remove(ids)
            assert removed == sum(i in model for i in ids)
            for i in ids:
                model.pop(i, None)
        assert len(index) == len(model)
        assert sorted(index.ids().tolist()) == sorted(model)
    if model:
        keys = np.array(sorted(model), dtype=np.int64)
        np.testing.assert_array_equal(index.reconstruct(keys), np.stack([model[int(i)] for i in keys]))
        q = rng.standard_normal((3, dim)).astype(np.float32)
        got, _ = index.search(q, len(model))
        assert set(got[0].tolist()) == set(model)
        assert_exact(index, np.stack([model[int(i)] for i in keys]), keys, q, min(4, len(model)))


def test_removed_ids_never_returned() -> None:
    x = clustered(3000, 16)
    index = af.FlatIndex(16)
    index.add(x)
    gone = np.arange(0, 3000, 2)
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0
    ids, _ = index.search(x[:50], 20)
    assert not np.isin(ids, gone).any()
    assert (ids % 2 == 1).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5])
def test_filter_array_and_callable(metric: str, fraction: float) -> None:
    x = clustered(4000, 24, seed=5)
    q = clustered(9, 24, seed=6)
    index = af.FlatIndex(24, metric)
    ids = index.add(x, ids=np.arange(4000) * 3)
    rng = np.random.default_rng(1)
    allowed = rng.choice(ids, size=max(12, int(fraction * 4000)), replace=False)
    got, dist = index.search(q, 10, filter=allowed)
    assert np.isin(got, allowed).all()
    mask = np.isin(ids, allowed)
    assert_exact(index, x[mask], ids[mask], q, 10, filter=allowed)
    allowed_set = set(allowed.tolist())
    got_c, dist_c = index.search(q, 10, filter=lambda i: i in allowed_set)
    np.testing.assert_array_equal(got_c, got)
    np.testing.assert_allclose(dist_c, dist, rtol=1e-5, atol=1e-5)


def test_filter_returns_k_when_k_allowed_exist_and_pads_otherwise() -> None:
    x = clustered(500, 8)
    index = af.FlatIndex(8)
    index.add(x)
    got, dist = index.search(x[:2], 5, filter=[7, 9, 400, 123456])
    assert sorted(got[0, :3].tolist()) == [7, 9, 400]
    assert (got[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all()


@pytest.mark.errors
def test_filter_callable_exception_propagates() -> None:
    index = af.FlatIndex(3)
    index.add(np.eye(3))

    def boom(i: int) -> bool:
        raise KeyError("from the filter")

    with pytest.raises(KeyError, match="from the filter"):
        index.search(np.ones(3), 2, filter=boom)


@pytest.mark.parametrize("metric", METRICS)
def test_search_range_matches_brute_force(metric: str) -> None:
    x = clustered(1500, 12, seed=8)
    q = clustered(6, 12, seed=9)
    index = af.FlatIndex(12, metric)
    index.add(x)
    ref = brute_force(x, q, metric)
    radius = float(np.quantile(ref, 0.02))
    ids, dists = index.search_range(q, radius)
    for row in range(len(q)):
        expect = set(np.nonzero(ref[row] < radius)[0].tolist())
        got = set(ids[row].tolist())
        # allow disagreement only for points within float32 rounding of the radius
        border = set(np.nonzero(np.abs(ref[row] - radius) < 1e-4 * (1 + abs(radius)))[0].tolist())
        assert got ^ expect <= border
        assert (np.diff(dists[row]) >= 0).all()
    ids_f, _ = index.search_range(q, radius, filter=np.arange(0, 1500, 3))
    for row in range(len(q)):
        assert (ids_f[row] % 3 == 0).all()


def test_pickle_and_bytes_round_trip() -> None:
    x = clustered(300, 10)
    index = af.FlatIndex(10, "cosine")
    index.add(x, ids=np.arange(300) + 1000)
    clone = pickle.loads(pickle.dumps(index))
    assert isinstance(clone, af.FlatIndex) and len(clone) == 300 and clone.metric == "cosine"
    for a, b in zip(index.search(x[:5], 7), clone.search(x[:5], 7)):
        np.testing.assert_array_equal(a, b)
    assert clone.add(np.ones((1, 10))).tolist() == [1300]


def test_cosine_stores_normalised_vectors_and_zero_vectors_are_safe() -> None:
    index = af.FlatIndex(3, "cosine")
    index.add(np.array([[3, 0, 4], [0, 0, 0]], dtype=np.float32))
    np.testing.assert_allclose(index.reconstruct([0]), [[0.6, 0, 0.8]], rtol=1e-6)
    ids, dist = index.search([0, 0, 1], 2)
    assert ids[0, 0] == 0 and abs(dist[0, 0] - 0.2) < 1e-6
    assert abs(dist[0, 1] - 1.0) < 1e-6


def test_accepts_array_likes_and_other_dtypes() -> None:
    index = af.FlatIndex(2)
    index.add([[1, 2], [3, 4]])
    index.add(np.array([[5, 6]], dtype=np.float64))
    index.add(np.asfortranarray(np.array([[7, 8], [9, 10]], dtype=np.float32)))

    class Wrapper:
        def __array__(self, dtype=None, copy=None):
            return np.array([[11, 12]], dtype=np.float32)

    index.add(Wrapper())
    index.add(np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2])  # strided view
    assert len(index) == 9
    ids, _ = index.search(np.array([[9, 10]], dtype=np.int32), 1)
    assert ids.tolist() == [[4]]
