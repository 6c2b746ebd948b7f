"""annforge.kmeans: determinism, objective, assignment, empty clusters, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import annforge as af
from conftest import clustered


def test_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[-10, 0], [0, 10], [10, 0]], dtype=np.float32)
    x = (centres[rng.integers(0, 3, 600)] + rng.normal(0, 0.5, (600, 2))).astype(np.float32)
    res = af.kmeans(x, 3, niter=15, seed=3)
    found = sorted(map(tuple, np.round(res.centroids).astype(int).tolist()))
    assert found == sorted(map(tuple, centres.astype(int).tolist()))


def test_deterministic_for_seed_and_thread_count() -> None:
    x = clustered(5000, 24, seed=1, clusters=40)
    a = af.kmeans(x, 32, niter=8, seed=7, num_threads=1)
    b = af.kmeans(x, 32, niter=8, seed=7, num_threads=2)
    c = af.kmeans(x, 32, niter=8, seed=7, num_threads=0)
    for other in (b, c):
        np.testing.assert_array_equal(a.centroids, other.centroids)
        np.testing.assert_array_equal(a.assignment, other.assignment)
        np.testing.assert_array_equal(a.objective, other.objective)
    d = af.kmeans(x, 32, niter=8, seed=8)
    assert not np.array_equal(a.centroids, d.centroids)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_objective_decreases(init: str) -> None:
    x = clustered(4000, 16, seed=2, clusters=30)
    res = af.kmeans(x, 20, niter=12, seed=0, init=init)
    obj = res.objective
    assert obj.shape == (12,)
    assert np.all(np.diff(obj) <= 1e-4 * obj[0]), obj
    assert obj[-1] < obj[0]


def test_assignment_is_nearest_centroid_and_objective_matches() -> None:
    x = clustered(3000, 12, seed=3)
    res = af.kmeans(x, 10, niter=5, seed=1, max_points_per_centroid=0)
    d2 = ((x[:, None, :].astype(np.float64) - res.centroids[None].astype(np.float64)) ** 2).sum(-1)
    best = d2.min(1)
    chosen = d2[np.arange(len(x)), res.assignment]
    np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-3)
    assert res.assignment.dtype == np.int32 and res.assignment.shape == (3000,)


def test_subsampling_still_assigns_every_point() -> None:
    x = clustered(6000, 8, seed=4)
    res = af.kmeans(x, 4, niter=5, max_points_per_centroid=50)
    assert res.assignment.shape == (6000,)
    assert set(np.unique(res.assignment)) <= set(range(4))


def test_empty_clusters_are_split() -> None:
    # 5 distinct points, many copies: k-means++ cannot find 8 distinct seeds, so clusters start empty.
    base = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    x = np.repeat(base, 40, axis=0)
    res = af.kmeans(x, 8, niter=5, seed=0)
    assert np.isfinite(res.centroids).all()
    assert res.empty_splits > 0


def test_spherical_centroids_have_unit_norm() -> None:
    x = clustered(2000, 16, seed=5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    res = af.kmeans(x, 8, niter=6, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, rtol=1e-5)


@given(n=st.integers(1, 60), k=st.integers(1, 8), d=st.integers(1, 9), seed=st.integers(0, 3))
def test_random_shapes(n: int, k: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    if k > n:
        with pytest.raises(ValueError, match="at least k"):
            af.kmeans(x, k)
        return
    res = af.kmeans(x, k, niter=3, seed=seed)
    assert res.centroids.shape == (k, d) and np.isfinite(res.centroids).all()
    assert res.assignment.min() >= 0 and res.assignment.max() < k


@pytest.mark.errors
def test_bad_input() -> None:
    x = np.zeros((10, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        af.kmeans(x, 0)
    with pytest.raises(ValueError, match="at least k"):
        af.kmeans(x, 11)
    with pytest.raises(ValueError):
        af.kmeans(np.zeros(10, dtype=np.float32), 2)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        af.kmeans(bad, 2)
    with pytest.raises(ValueError, match="init"):
        af.kmeans(x, 2, init="farthest")
    with pytest.raises(ValueError):
        af.kmeans(x, 2, niter=-1)
    with pytest.raises(TypeError):
        af.kmeans(x, 2.5)  # type: ignore[arg-type]
