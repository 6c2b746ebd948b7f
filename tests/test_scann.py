"""ScaNNIndex: eta / loss / encoder against NumPy, anisotropic gain, recall, SIMD levels, updates,
persistence, bad input."""

from __future__ import annotations

import itertools
import os
import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

import annforge as af
from annforge import _core
from annforge.scann import parallel_cost_multiplier
from conftest import brute_force, clustered

DIM = 32


def skewed_ip_data(n: int, seed: int) -> np.ndarray:
    """Clustered directions with log-normal norms (MIPS data where the norm matters)."""
    x = clustered(n, DIM, seed=seed, clusters=32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    norms = np.exp(np.random.default_rng(seed + 1).normal(0.0, 0.4, n)).astype(np.float32)
    return (x * norms[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple:
    return skewed_ip_data(5000, 3), skewed_ip_data(60, 9)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def build(x: np.ndarray, **kw) -> af.ScaNNIndex:
    params = dict(num_leaves=32)
    params.update(kw)
    index = af.ScaNNIndex(DIM, **params)
    index.train(x)
    index.add(x)
    return index


def np_eta(t: float, sq_norm: float, d: int) -> float:
    r = min(t * t / sq_norm, 1 - 1e-6)
    return (d - 1) * r / (1 - r)


def np_loss(x: np.ndarray, xq: np.ndarray, eta: float) -> np.ndarray:
    x = x.astype(np.float64)
    e = x - xq.astype(np.float64)
    par = (e * x).sum(1) ** 2 / (x * x).sum(1)
    return eta * par + ((e * e).sum(1) - par)


# -- the loss, eta and the encoder ----------------------------------------------------------------


@pytest.mark.parametrize("t,sq,d", [(0.2, 1.0, 384), (0.2, 1.0, 2), (0.5, 2.5, 64), (0.0, 1.0, 10), (0.9, 0.25, 8)])
def test_eta_matches_reference(t: float, sq: float, d: int) -> None:
    assert parallel_cost_multiplier(t, sq, d) == pytest.approx(np_eta(t, sq, d), rel=1e-12)


def test_eta_unit_norm_closed_form() -> None:
    # (d - 1) T^2 / (1 - T^2) for unit vectors, as in the paper; isotropic for a zero vector.
    assert parallel_cost_multiplier(0.2, 1.0, 100) == pytest.approx(99 * 0.04 / 0.96)
    assert parallel_cost_multiplier(0.2, 0.0, 100) == 1.0


def test_loss_matches_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    xq = (x + 0.3 * rng.standard_normal((50, 12))).astype(np.float32)
    for eta in (0.5, 1.0, 7.0):
        np.testing.assert_allclose(_core._testing._scann_loss(x, xq, eta), np_loss(x, xq, eta), rtol=1e-9)
    # eta = 1 is the plain squared error.
    np.testing.assert_allclose(_core._testing._scann_loss(x, xq, 1.0), ((x - xq).astype(np.float64) ** 2).sum(1),
                               rtol=1e-6)


def test_coordinate_descent_against_exhaustive_search() -> None:
    rng = np.random.default_rng(1)
    m, dpb = 3, 2
    d = m * dpb
    wins = 0
    for trial in range(20):
        books = rng.standard_normal((m, 16, dpb)).astype(np.float32) * 0.5
        x = rng.standard_normal(d).astype(np.float32)
        r = (x * 0.8 + 0.2 * rng.standard_normal(d)).astype(np.float32)
        sq = float(x.astype(np.float64) @ x)
        eta = np_eta(0.6, sq, d)
        alpha = (eta - 1) / sq

        def loss(codes) -> float:
            rq = np.concatenate([books[j, c] for j, c in enumerate(codes)]).astype(np.float64)
            e = r - rq
            return float(e @ e + alpha * (e @ x) ** 2)

        nearest = np.array([np.argmin(((books[j] - r[j * dpb:(j + 1) * dpb]) ** 2).sum(1)) for j in range(m)],
                           dtype=np.uint8)
        codes = _core._testing._scann_encode(books, r, x, alpha, 10, nearest)
        got = loss(codes)
        best = min(loss(c) for c in itertools.product(range(16), repeat=m))
        assert got <= loss(nearest) + 1e-9  # never worse than the isotropic start
        assert got >= best - 1e-9
        # A fixed point: no single-block change lowers the loss.
        for j in range(m):
            for c in range(16):
                alt = codes.copy()
                alt[j] = c
                assert loss(alt) >= got - 1e-6
        wins += got < loss(nearest) - 1e-9
    assert wins >= 5  # the anisotropic term really changes the codes


def test_anisotropic_codes_lower_the_anisotropic_loss(data) -> None:
    x, _ = data
    losses = {}
    books = {}
    for name, kw in {"isotropic": dict(anisotropic_threshold=None),
                     "aniso-encode": dict(codebook_iterations=0),
                     "aniso-full": dict()}.items():
        index = build(x, reorder=None, anisotropic_threshold=kw.get("anisotropic_threshold", 0.5),
                      **{k: v for k, v in kw.items() if k != "anisotropic_threshold"})
        assert index.anisotropic == (name != "isotropic")
        ids = index.ids()
        rec = index.reconstruct(ids)
        sq = (x[ids].astype(np.float64) ** 2).sum(1)
        etas = np.array([np_eta(0.5, s, DIM) for s in sq])
        e = x[ids].astype(np.float64) - rec
        par = (e * x[ids]).sum(1) ** 2 / sq
        losses[name] = float(np.mean(etas * par + ((e * e).sum(1) - par)))
        books[name] = index.codebooks()
    # Same k-means codebooks; only the encoding differs.
    np.testing.assert_array_equal(books["isotropic"], books["aniso-encode"])
    assert losses["aniso-encode"] < 0.97 * losses["isotropic"], losses
    # The weighted codebook update lowers it further.
    assert losses["aniso-full"] < losses["aniso-encode"], losses


# -- accuracy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_recall_vs_brute_force(data, metric: str) -> None:
    x, q = data
    truth = np.argsort(brute_force(x, q, metric), axis=1)[:, :10]
    index = build(x, metric=metric)
    ids, dist = index.search(q, 10, leaves_to_search=16, reorder_k=200)
    assert recall(ids, truth) >= 0.9
    assert np.all(np.diff(dist, axis=1) >= 0)
    exact = np.take_along_axis(brute_force(x, q, metric), ids, axis=1)
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-4)
    # Ranked by the 8-byte codes alone (reorder_k = k): lower, but far above chance.
    ids_codes, _ = index.search(q, 10, leaves_to_search=16, reorder_k=10)
    assert recall(ids_codes, truth) >= 0.4


def test_default_parameters_work_without_tuning(data) -> None:
    x, q = data
    index = af.ScaNNIndex(DIM)
    assert index.num_leaves == 0
    index.train(x)
    assert index.num_leaves == round(np.sqrt(len(x)))
    index.add(x)
    truth = np.argsort(brute_force(x, q, "ip"), axis=1)[:, :10]
    assert recall(index.search(q, 10)[0], truth) >= 0.8


@pytest.mark.parametrize("reorder", ["f16", "sq8", None])
def test_reorder_storage(data, reorder) -> None:
    x, q = data
    index = build(x, reorder=reorder)
    ids, dist = index.search(q, 10, leaves_to_search=32, reorder_k=100)
    truth = np.argsort(brute_force(x, q, "ip"), axis=1)[:, :10]
    assert recall(ids, truth) >= (0.9 if reorder else 0.4)
    assert index.bytes_per_vector() == DIM // 2 // 2 + {"f16": 2 * DIM, "sq8": DIM, None: 0}[reorder] + 8


@pytest.mark.sanitize
@pytest.mark.parametrize("metric,reorder", [("ip", None), ("ip", "f32"), ("l2", "sq8")])
def test_batch_search_equals_one_query_at_a_time(data, metric: str, reorder) -> None:
    """A batch is scanned leaf by leaf for blocks of queries (several queries per pass over a leaf's
    codes); every row must equal that query searched alone, at every fast-scan level and thread count."""
    x, q = data
    index = build(x, metric=metric, reorder=reorder)
    allowed = np.arange(1, len(x), 2)
    try:
        for level in _core._pq4_scan_levels():
            _core._set_pq4_scan_level(level)
            for kw in ({}, {"filter": allowed}):
                alone = [index.search(q[i:i + 1], 7, leaves_to_search=8, reorder_k=30, num_threads=1, **kw)
                         for i in range(len(q))]
                for threads in (1, 3):
                    ids, dist = index.search(q, 7, leaves_to_search=8, reorder_k=30, num_threads=threads, **kw)
                    np.testing.assert_array_equal(ids, np.vstack([a[0] for a in alone]), err_msg=f"{level} {threads}")
                    np.testing.assert_array_equal(dist, np.vstack([a[1] for a in alone]), err_msg=f"{level} {threads}")
    finally:
        _core._set_pq4_scan_level(None)


def test_every_simd_level_agrees_with_scalar(data) -> None:
    x, q = data
    index = build(x, reorder=None)
    results = {}
    try:
        for level in _core._pq4_scan_levels():
            _core._set_pq4_scan_level(level)
            results[level] = index.search(q, 20, leaves_to_search=16)
    finally:
        _core._set_pq4_scan_level(None)
    assert "scalar" in results
    for level, (ids, dist) in results.items():
        np.testing.assert_array_equal(ids, results["scalar"][0], err_msg=level)
        np.testing.assert_array_equal(dist, results["scalar"][1], err_msg=level)
    # Float kernel levels (leaf probing, reorder) give the same neighbours.
    expected = None
    reordered = build(x[:2000], reorder="f32")
    try:
        for level in af.available_simd_levels():
            af.set_simd_level(level)
            ids, dist = reordered.search(q, 10, leaves_to_search=16)
            if expected is None:
                expected = (ids, dist)
            else:
                np.testing.assert_array_equal(ids, expected[0], err_msg=level)
                np.testing.assert_allclose(dist, expected[1], rtol=1e-5, atol=1e-5, err_msg=level)
    finally:
        af.set_simd_level(_core.detected_simd_level())


def test_parallel_search_matches_single_thread(data) -> None:
    x, q = data
    index = build(x)
    a = index.search(q, 10, leaves_to_search=8, num_threads=1)
    b = index.search(q, 10, leaves_to_search=8, num_threads=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# -- updates --------------------------------------------------------------------------------------


def test_remove_upsert_and_filter(data) -> None:
    x, q = data
    index = build(x[:2000])
    gone = np.arange(0, 2000, 3)
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0
    assert len(index) == 2000 - len(gone) and 3 not in index and 4 in index
    ids, _ = index.search(q, 10, leaves_to_search=32)
    assert not np.isin(ids, gone).any()
    assert sorted(index.ids().tolist()) == sorted(set(range(2000)) - set(gone.tolist()))
    keep = np.setdiff1d(np.arange(2000), gone)[:10]
    new = x[3000:3010]
    index.add(new, ids=keep)
    assert len(index) == 2000 - len(gone)
    np.testing.assert_allclose(index.reconstruct(keep), new)
    # Search sees the upserted vectors: exact top-1 over the live set.
    live = index.ids()
    truth = live[np.argmax(q @ index.reconstruct(live).T, axis=1)]
    ids, _ = index.search(q, 1, leaves_to_search=32, reorder_k=2000)
    np.testing.assert_array_equal(ids[:, 0], truth)
    allowed = np.arange(1, 2000, 3)
    ids, _ = index.search(q, 10, leaves_to_search=32, filter=allowed)
    assert (ids >= 0).all() and np.isin(ids, allowed).all()
    ids2, _ = index.search(q[:5], 10, leaves_to_search=32, filter=lambda i: i % 3 == 1)
    np.testing.assert_array_equal(ids2, ids[:5])


def test_fewer_results_than_k_are_padded(data) -> None:
    x, _ = data
    index = af.ScaNNIndex(DIM, 4)
    index.train(x[:500])
    index.add(x[:3])
    ids, dist = index.search(x[:2], 5, leaves_to_search=4)
    assert (ids[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all()


# -- persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric,reorder", [("ip", "f32"), ("ip", None), ("l2", "sq8"), ("cosine", "f16")])
def test_save_load_mmap_pickle(tmp_path, data, metric: str, reorder) -> None:
    x, q = data
    index = build(x[:3000], metric=metric, reorder=reorder)
    index.remove(np.arange(0, 3000, 5))
    expected = index.search(q, 10, leaves_to_search=8)
    path = os.fspath(tmp_path / "scann.af")
    index.save(path)
    for loaded in (af.load(path), af.load(path, mmap=True), pickle.loads(pickle.dumps(index))):
        assert isinstance(loaded, af.ScaNNIndex)
        assert (loaded.num_leaves, loaded.dims_per_block, loaded.reorder, loaded.metric) == (32, 2, reorder, metric)
        assert loaded.anisotropic_threshold == pytest.approx(0.2)
        got = loaded.search(q, 10, leaves_to_search=8)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    mapped = af.load(path, mmap=True)
    mapped.remove([1, 2, 3])
    mapped.add(x[3000:3010])
    assert len(mapped) == len(index) - 3 + 10
    assert len(af.load(path)) == len(index)  # the file did not change


def test_untrained_index_is_not_saved(tmp_path) -> None:
    # Loading refuses untrained files (issue 15), so saving refuses to write one; train, then save.
    index = af.ScaNNIndex(16, None, dims_per_block=4, anisotropic_threshold=None, reorder="sq8")
    path = os.fspath(tmp_path / "u.af")
    with pytest.raises(ValueError, match="not trained"):
        index.save(path)
    x = clustered(500, 16)
    index.train(x)
    index.save(path)
    loaded = af.load(path)
    assert loaded.is_trained and loaded.reorder == "sq8" and loaded.anisotropic_threshold is None
    assert loaded.dims_per_block == 4 and loaded.num_leaves == 22
    loaded.add(x)
    assert len(loaded) == 500


@pytest.mark.errors
def test_corrupted_file_is_refused(tmp_path, data) -> None:
    x, _ = data
    index = build(x[:500])
    path = tmp_path / "c.af"
    index.save(os.fspath(path))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        af.load(os.fspath(path))
    with pytest.raises(OSError):
        af.ScaNNIndex.from_bytes(index.to_bytes()[:-100])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.errors
def test_bad_parameters(data) -> None:
    x, q = data
    with pytest.raises(ValueError, match="multiple of dims_per_block"):
        af.ScaNNIndex(10, 4, dims_per_block=3)
    with pytest.raises(ValueError, match="dims_per_block"):
        af.ScaNNIndex(8, 4, dims_per_block=0)
    with pytest.raises(ValueError, match="reorder|refine"):
        af.ScaNNIndex(8, 4, reorder="f64")
    with pytest.raises(ValueError, match="metric"):
        af.ScaNNIndex(8, 4, metric="hamming")
    with pytest.raises(ValueError, match="anisotropic_threshold"):
        af.ScaNNIndex(8, 4, anisotropic_threshold=-1.0)
    with pytest.raises(ValueError, match="anisotropic_threshold"):
        af.ScaNNIndex(8, 4, anisotropic_threshold=float("nan"))
    with pytest.raises(TypeError):
        af.ScaNNIndex(8, 4, anisotropic_threshold="0.2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        af.ScaNNIndex(8, 4, reorder=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        af.ScaNNIndex(8, 4.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        af.ScaNNIndex(8, -1)
    untrained = af.ScaNNIndex(DIM, 8)
    with pytest.raises(ValueError, match="index is not trained"):
        untrained.add(x[:2])
    with pytest.raises(ValueError, match="index is not trained"):
        untrained.search(q, 1)
    with pytest.raises(ValueError, match="at least"):
        af.ScaNNIndex(DIM, 100).train(x[:50])
    index = build(x[:1000])
    with pytest.raises(ValueError, match="leaves_to_search"):
        index.search(q, 5, leaves_to_search=0)
    with pytest.raises(ValueError, match="reorder_k"):
        index.search(q, 5, reorder_k=0)
    with pytest.raises(ValueError, match="unknown search parameter"):
        index.search(q, 5, nprobe=10)
    with pytest.raises(ValueError, match="k must be"):
        index.search(q, 0)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, DIM + 1), dtype=np.float32), 5)
    bad = x[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(bad)
    with pytest.raises(ValueError):
        index.add(x[:2], ids=[5, 5])
    with pytest.raises(ValueError, match="not in the index"):
        index.reconstruct([10**9])


def test_bench_adapter(data) -> None:
    from annforge.bench.algorithms import REGISTRY, sweep_points

    x, q = data
    spec = REGISTRY["annforge-scann"]
    adapter = spec["cls"](DIM, "ip", 1, 1, **spec["build"])
    adapter.build(x)
    adapter.prepare(sweep_points("annforge-scann", len(x), DIM, quick=True)[-1])
    ids = adapter.search(q, 10)
    truth = np.argsort(brute_force(x, q, "ip"), axis=1)[:, :10]
    assert ids.shape == (len(q), 10) and recall(ids, truth) >= 0.8


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.floats(0.0, 0.95), st.integers(0, 2**32 - 1))
def test_coordinate_descent_never_increases_the_loss(m: int, dpb: int, threshold: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = m * dpb
    books = rng.standard_normal((m, 16, dpb)).astype(np.float32)
    x = rng.standard_normal(d).astype(np.float32)
    r = rng.standard_normal(d).astype(np.float32)
    sq = float(x.astype(np.float64) @ x)
    alpha = (np_eta(threshold, sq, max(d, 2)) - 1) / sq
    start = rng.integers(0, 16, m).astype(np.uint8)

    def loss(codes: np.ndarray) -> float:
        e = r.astype(np.float64) - books[np.arange(m), codes].reshape(-1)
        return float(e @ e + alpha * (e @ x) ** 2)

    codes = _core._testing._scann_encode(books, r, x, alpha, 8, start)
    assert codes.dtype == np.uint8 and codes.max() < 16
    assert loss(codes) <= loss(start) * (1 + 1e-5) + 1e-5
