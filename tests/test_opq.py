"""OPQ in the core (codec/opq.h): the Procrustes step's polar factor (one-sided Jacobi SVD), the
alternating rotation training, and IVFPQIndex(opq=True) calling it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import annforge as af
from annforge import _core

testing = _core._testing


def anisotropic(n: int, dim: int, seed: int) -> np.ndarray:
    """Variance falling off over the dimensions, then mixed by a random rotation: PQ's sub-spaces get
    very unequal shares unless a rotation re-balances them."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, dim)) * np.geomspace(10, 0.1, dim)
    mix, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (z @ mix).astype(np.float32)


def assert_orthonormal(r: np.ndarray, atol: float) -> None:
    r = np.asarray(r, dtype=np.float64)
    assert r.shape[0] == r.shape[1] and np.isfinite(r).all()
    np.testing.assert_allclose(r @ r.T, np.eye(len(r)), atol=atol)
    np.testing.assert_allclose(r.T @ r, np.eye(len(r)), atol=atol)


# -- the polar factor -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_polar_factor_matches_numpy_svd(d: int, seed: int) -> None:
    a = np.random.default_rng(seed).standard_normal((d, d))
    r = testing._orthogonal_polar_factor(a)
    u, _, vt = np.linalg.svd(a)
    np.testing.assert_allclose(r, u @ vt, atol=1e-9)  # unique for a full-rank matrix
    assert_orthonormal(r, 1e-12)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 30), rank=st.integers(0, 30), scale=st.sampled_from([1e-6, 1.0, 1e6]),
       seed=st.integers(0, 2**32 - 1))
def test_polar_factor_of_rank_deficient_matrices(d: int, rank: int, scale: float, seed: int) -> None:
    # Not unique then, but it must still be orthonormal and reach the Procrustes optimum:
    # max over orthonormal R of trace(R^T a) = the sum of the singular values.
    rng = np.random.default_rng(seed)
    rank = min(rank, d)
    a = scale * rng.standard_normal((d, rank)) @ rng.standard_normal((rank, d))
    r = testing._orthogonal_polar_factor(a)
    assert_orthonormal(r, 1e-10)
    best = np.linalg.svd(a, compute_uv=False).sum()
    assert np.trace(r.T @ a) == pytest.approx(best, rel=1e-9, abs=1e-9 * scale)


def test_polar_factor_of_a_graded_matrix() -> None:
    # Singular values over twelve orders of magnitude (what a sample with a few dominant directions
    # gives): the large ones must be resolved to working precision; those below ~1e-7 of the largest
    # are left unresolved by design (they hardly move the Procrustes objective) but may not disturb
    # orthonormality.
    rng = np.random.default_rng(3)
    d = 64
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma = np.geomspace(1e6, 1e-6, d)
    a = u @ np.diag(sigma) @ v.T
    r = testing._orthogonal_polar_factor(a)
    assert_orthonormal(r, 1e-10)
    assert np.trace(r.T @ a) == pytest.approx(sigma.sum(), rel=1e-6)
    big = sigma > 1e-4 * sigma[0]
    np.testing.assert_allclose(r @ v[:, big], u[:, big], atol=1e-6)  # the dominant directions map


def test_polar_factor_bad_input() -> None:
    with pytest.raises(ValueError):
        testing._orthogonal_polar_factor(np.ones((3, 4)))
    with pytest.raises(ValueError):
        testing._orthogonal_polar_factor(np.array([[1.0, np.nan], [0.0, 1.0]]))


# -- the rotation -----------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(dim=st.sampled_from([4, 8, 12, 16]), n=st.integers(16, 300), kind=st.sampled_from(["gauss", "rank2", "zeros"]),
       seed=st.integers(0, 1000))
def test_rotation_is_orthonormal(dim: int, n: int, kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        x = rng.standard_normal((n, dim))
    elif kind == "rank2":  # data in a plane: most of M's singular values are zero
        x = rng.standard_normal((n, 2)) @ rng.standard_normal((2, dim))
    else:
        x = np.zeros((n, dim))
    r = testing._opq_rotation(x.astype(np.float32), dim // 4, 4, seed=seed, niter=3)
    assert r.dtype == np.float32 and r.shape == (dim, dim)
    assert_orthonormal(r, 1e-5)


def pq_error(x: np.ndarray, m: int) -> float:
    recon = testing._pq_fit_reconstruct(x, m, 4, seed=1)
    return float(((recon - x) ** 2).sum(1).mean())


def test_rotation_lowers_pq_error_against_identity() -> None:
    x = anisotropic(4000, 32, 5)
    r = testing._opq_rotation(x, 8, 4, seed=0)
    rotated = x @ r.T  # distances are unchanged, so the PQ errors compare directly
    plain, with_opq = pq_error(x, 8), pq_error(rotated.astype(np.float32), 8)
    assert with_opq < 0.6 * plain, (plain, with_opq)


def test_more_iterations_do_not_hurt() -> None:
    x = anisotropic(3000, 32, 6)
    errors = [pq_error((x @ testing._opq_rotation(x, 8, 4, niter=it).T).astype(np.float32), 8) for it in (1, 8)]
    assert errors[1] <= 1.02 * errors[0], errors


def test_rotation_is_deterministic_for_a_seed() -> None:
    x = anisotropic(3000, 16, 7)
    a = testing._opq_rotation(x, 4, 4, seed=3, num_threads=1)
    b = testing._opq_rotation(x, 4, 4, seed=3, num_threads=2)
    np.testing.assert_array_equal(a, b)
    # The sample (max_points < n) and the PQ seeds follow the seed.
    c = testing._opq_rotation(x, 4, 4, seed=3, max_points=1000)
    d = testing._opq_rotation(x, 4, 4, seed=4, max_points=1000)
    np.testing.assert_array_equal(c, testing._opq_rotation(x, 4, 4, seed=3, max_points=1000))
    assert not np.array_equal(c, d)


@pytest.mark.parametrize(
    "kwargs, rows, match",
    [
        (dict(m=3, nbits=4), 100, "multiple|divis"),  # 16 % 3 != 0
        (dict(m=4, nbits=5), 100, "nbits"),
        (dict(m=4, nbits=4), 15, "at least"),  # fewer rows than PQ centres
        (dict(m=4, nbits=8), 200, "at least"),
        (dict(m=4, nbits=4, niter=0), 100, "niter"),
    ],
)
def test_rotation_bad_input(kwargs, rows: int, match: str) -> None:
    x = anisotropic(rows, 16, 8)
    with pytest.raises(ValueError, match=match):
        testing._opq_rotation(x, **kwargs)


def test_rotation_rejects_non_finite_rows() -> None:
    x = anisotropic(100, 16, 9)
    x[37, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        testing._opq_rotation(x, 4, 4)


# -- IVFPQIndex(opq=True) ---------------------------------------------------------------------------


def test_index_learns_the_core_rotation() -> None:
    x = anisotropic(3000, 32, 10)
    index = af.IVFPQIndex(32, 8, 8, nbits=4, refine=None, opq=True, seed=5)
    index.train(x)
    assert index.opq
    np.testing.assert_array_equal(index.rotation(), testing._opq_rotation(x, 8, 4, seed=5))
    again = af.IVFPQIndex(32, 8, 8, nbits=4, refine=None, opq=True, seed=5)
    again.train(x)
    np.testing.assert_array_equal(again.rotation(), index.rotation())


def test_index_cosine_rotation_is_learnt_on_normalised_rows() -> None:
    # Unit rows (four entries of +-0.5) scaled by powers of two: normalising them is exact, so the
    # index must learn exactly the rotation of the unit rows, not that of the scaled ones.
    rng = np.random.default_rng(11)
    n, dim = 2000, 16
    unit = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(dim, 4, replace=False, p=np.geomspace(1, 0.05, dim) / np.geomspace(1, 0.05, dim).sum())
        unit[i, cols] = rng.choice([-0.5, 0.5], 4)
    scaled = unit * (2.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)
    index = af.IVFPQIndex(dim, 8, 4, nbits=4, metric="cosine", refine=None, opq=True)
    index.train(scaled)
    np.testing.assert_array_equal(index.rotation(), testing._opq_rotation(unit, 4, 4))
    assert not np.array_equal(index.rotation(), testing._opq_rotation(scaled, 4, 4))


def test_index_without_opq_has_no_rotation_and_keeps_it_through_save(tmp_path) -> None:
    x = anisotropic(2000, 16, 12)
    plain = af.IVFPQIndex(16, 8, 4, nbits=4)
    plain.train(x)
    assert plain.rotation() is None and not plain.opq
    index = af.IVFPQIndex(16, 8, 4, nbits=4, opq=True)
    index.train(x)
    index.add(x[:100])
    index.save(tmp_path / "opq.afi")
    loaded = af.load(tmp_path / "opq.afi")
    assert loaded.opq
    np.testing.assert_array_equal(loaded.rotation(), index.rotation())
    np.testing.assert_array_equal(loaded.search(x[:5], 3)[0], index.search(x[:5], 3)[0])


def test_index_opq_bad_training_input() -> None:
    index = af.IVFPQIndex(16, 4, 4, nbits=4, opq=True)
    bad = anisotropic(100, 16, 13)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError):
        index.train(bad)
    with pytest.raises(ValueError):
        index.train(anisotropic(10, 16, 13))  # fewer than 2^nbits rows
    assert not index.is_trained and index.rotation() is None
