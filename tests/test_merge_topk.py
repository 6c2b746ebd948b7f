"""af.merge_topk: the exact gather step of a sharded search (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import annforge as af


def _split_search(x: np.ndarray, q: np.ndarray, owner: np.ndarray, k: int, metric: str, shard_k: int):
    answers = []
    for s in np.unique(owner):
        rows = np.flatnonzero(owner == s)
        shard = af.FlatIndex(x.shape[1], metric=metric)
        shard.add(x[rows], rows)
        answers.append(shard.search(q, shard_k))
    return answers


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    num_shards=st.integers(1, 5),
    k=st.integers(1, 20),
    metric=st.sampled_from(["l2", "ip", "cosine"]),
    duplicates=st.booleans(),
)
def test_merge_of_disjoint_shards_equals_one_index(seed, n, num_shards, k, metric, duplicates):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (n, 6)).astype(np.float32) if duplicates else rng.standard_normal((n, 6)).astype(np.float32)
    q = rng.standard_normal((7, 6)).astype(np.float32)
    owner = rng.integers(0, num_shards, n)
    single = af.FlatIndex(6, metric=metric)
    single.add(x)
    want_ids, want_dist = single.search(q, k)
    got_ids, got_dist = af.merge_topk(_split_search(x, q, owner, k, metric, k), k)
    # Ties (many with small integer vectors) are settled by the smaller id on both sides.
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_dist, want_dist)
    assert got_ids.dtype == np.int64 and got_dist.dtype == np.float32


def test_shard_order_does_not_matter_and_ties_go_to_the_smaller_id():
    a = (np.array([[5, 1]]), np.array([[1.0, 2.0]], dtype=np.float32))
    b = (np.array([[3, 8]]), np.array([[1.0, 1.5]], dtype=np.float32))
    for results in ([a, b], [b, a]):
        ids, dist = af.merge_topk(results, 3)
        assert ids.tolist() == [[3, 5, 8]]
        assert dist.tolist() == [[1.0, 1.0, 1.5]]


def test_padding_is_ignored_and_short_rows_are_padded():
    a = (np.array([[2, -1, -1]]), np.array([[0.5, np.inf, np.inf]], dtype=np.float32))
    b = (np.array([[-1]]), np.array([[np.inf]], dtype=np.float32))
    ids, dist = af.merge_topk([a, b], 3)
    assert ids.tolist() == [[2, -1, -1]]
    assert dist[0, 0] == 0.5 and np.isinf(dist[0, 1:]).all()


def test_an_id_from_two_shards_counts_once_at_its_best_distance():
    a = (np.array([[7, 1]]), np.array([[0.3, 0.9]], dtype=np.float32))
    b = (np.array([[7, 2]]), np.array([[0.2, 0.4]], dtype=np.float32))
    ids, dist = af.merge_topk([a, b], 3)
    assert ids.tolist() == [[7, 2, 1]]
    np.testing.assert_allclose(dist, [[0.2, 0.4, 0.9]])


def test_shards_may_return_different_k_and_one_query_rows():
    ids, dist = af.merge_topk([(np.array([4, 6, 9]), np.array([0.1, 0.2, 0.3])), (np.array([1]), np.array([0.15]))], 2)
    assert ids.tolist() == [4, 1] and dist.dtype == np.float32


def test_bad_input_raises_clear_errors():
    good = (np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        af.merge_topk([], 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        af.merge_topk([good], 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        af.merge_topk([good], 2.0)
    with pytest.raises(ValueError, match="queries"):
        af.merge_topk([good, (np.zeros((3, 3), dtype=np.int64), np.zeros((3, 3)))], 3)
    with pytest.raises(ValueError, match="differ in shape"):
        af.merge_topk([(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 2)))], 3)
    with pytest.raises(TypeError, match="ids must be integers"):
        af.merge_topk([(np.zeros((2, 3)), np.zeros((2, 3)))], 3)
    with pytest.raises(TypeError, match="pair"):
        af.merge_topk([np.zeros(3)], 3)
    with pytest.raises(TypeError, match="sequence of"):
        af.merge_topk(good, 3)
    with pytest.raises(ValueError, match="NaN"):
        af.merge_topk([(np.array([1]), np.array([np.nan]))], 1)
    with pytest.raises(ValueError, match="mix"):
        af.merge_topk([(np.array([1]), np.array([0.0])), good], 1)
