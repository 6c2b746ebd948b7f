"""IVFPQIndex: recall, ADC / fast-scan consistency, SIMD levels, updates, persistence, bad input."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import annforge as af
from annforge import _core
from conftest import brute_force, clustered

DIM = 32


@pytest.fixture(scope="module")
def data() -> tuple:
    x = clustered(6000, DIM, seed=11, clusters=64)
    q = clustered(60, DIM, seed=12, clusters=64)
    return x, q


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def build(x: np.ndarray, **kw) -> af.IVFPQIndex:
    params = dict(nlist=32, m=8)
    params.update(kw)
    index = af.IVFPQIndex(DIM, **params)
    index.train(x)
    index.add(x)
    return index


@pytest.fixture(scope="module")
def fast4(data) -> af.IVFPQIndex:
    return build(data[0], nbits=4, refine=None)


# -- accuracy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("residual", [True, False])
def test_recall_with_refine(data, nbits: int, metric: str, residual: bool) -> None:
    x, q = data
    truth = np.argsort(brute_force(x, q, metric), axis=1)[:, :10]
    index = build(x, nbits=nbits, metric=metric, m=16, residual=residual)
    assert index.residual is residual
    ids, dist = index.search(q, 10, nprobe=32, refine_factor=10)
    # Without residuals 16 centres per sub-space must also cover the 64 cluster offsets of this
    # synthetic data, so the 4-bit candidates are coarser (real embeddings: see the class docstring).
    assert recall(ids, truth) >= (0.85 if nbits == 4 and not residual else 0.95)
    assert np.all(np.diff(dist, axis=1) >= 0)
    # Few cells visited: lower but still sensible recall.
    ids1, _ = index.search(q, 10, nprobe=4, refine_factor=10)
    assert recall(ids1, truth) >= 0.6


@pytest.mark.parametrize("refine", ["f32", "f16", "sq8"])
def test_refined_distances_are_exact(data, refine: str) -> None:
    x, q = data
    index = build(x, refine=refine)
    ids, dist = index.search(q[:10], 5, nprobe=32)
    ref = brute_force(x, q[:10], "l2")
    exact = np.take_along_axis(ref, ids, axis=1)
    tol = {"f32": 1e-4, "f16": 2e-3, "sq8": 3e-2}[refine]
    np.testing.assert_allclose(dist, exact, rtol=tol, atol=tol * float(np.median(ref)))


def adc_reference(index: af.IVFPQIndex, q: np.ndarray) -> tuple:
    """||q - (centroid + decoded residual)||^2 for every stored id (refine=None reconstructs that)."""
    ids = index.ids()
    rec = index.reconstruct(ids).astype(np.float64)
    d = ((q[:, None, :].astype(np.float64) - rec[None]) ** 2).sum(-1)
    return ids, d


@pytest.mark.parametrize("residual", [True, False])
def test_8bit_adc_distances_match_decoded_vectors(data, residual: bool) -> None:
    x, q = data
    index = build(x, nbits=8, refine=None, residual=residual)
    ids, dist = index.search(q, 10, nprobe=32)
    all_ids, ref = adc_reference(index, q)
    order = np.argsort(all_ids)
    pos = order[np.searchsorted(all_ids[order], ids)]
    expected = np.take_along_axis(ref, pos, axis=1)
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-3)
    # The ranking is exactly the ADC ranking (up to float ties).
    kth = np.sort(ref, axis=1)[:, 9]
    assert np.all(expected.max(1) <= kth * (1 + 1e-5) + 1e-4)


@pytest.mark.parametrize("residual", [True, False])
def test_fast_scan_equals_adc_up_to_lut_quantization(data, fast4, residual: bool) -> None:
    _, q = data
    if not residual:
        fast4 = build(data[0], nbits=4, refine=None, residual=False)
    ids, dist = fast4.search(q, 10, nprobe=32)
    all_ids, ref = adc_reference(fast4, q)
    order = np.argsort(all_ids)
    pos = order[np.searchsorted(all_ids[order], ids)]
    expected = np.take_along_axis(ref, pos, axis=1)
    # 8-bit tables: each of the m table entries is off by at most half a quantization step, where a
    # step is (largest table range) / 255. Bound it generously by m * spread / 255.
    spread = float(np.median(ref.max(1) - ref.min(1)))
    tol = fast4.m * spread / 255.0
    assert np.abs(dist - expected).max() <= tol
    assert np.abs(dist - expected).max() > 0  # it really is the quantized path
    kth = np.sort(ref, axis=1)[:, 9]
    assert np.all(expected.max(1) <= kth + 2 * tol)
    # ...and that is tight enough to agree with the float-table ranking on most neighbours.
    truth = np.take(all_ids, np.argsort(ref, axis=1)[:, :10])
    assert recall(ids, truth) >= 0.9


def test_every_fast_scan_level_agrees_with_scalar(data, fast4) -> None:
    _, q = data
    levels = _core._pq4_scan_levels()
    assert "scalar" in levels
    results = {}
    try:
        for level in levels:
            _core._set_pq4_scan_level(level)
            results[level] = fast4.search(q, 20, nprobe=32)
    finally:
        _core._set_pq4_scan_level(None)
    for level, (ids, dist) in results.items():
        np.testing.assert_array_equal(ids, results["scalar"][0], err_msg=level)
        np.testing.assert_array_equal(dist, results["scalar"][1], err_msg=level)


def test_every_kernel_level_gives_same_neighbours(data) -> None:
    x, q = data
    index = build(x, nbits=8, refine="f32")
    expected = None
    try:
        for level in af.available_simd_levels():
            af.set_simd_level(level)
            ids, dist = index.search(q, 10, nprobe=32)
            if expected is None:
                expected = (ids, dist)
            else:
                np.testing.assert_array_equal(ids, expected[0])
                np.testing.assert_allclose(dist, expected[1], rtol=1e-5, atol=1e-5)
    finally:
        af.set_simd_level(_core.detected_simd_level())


@pytest.mark.sanitize
@pytest.mark.parametrize("metric,residual,refine,m", [
    ("l2", True, None, 8), ("l2", False, "f32", 8), ("ip", False, None, 2), ("ip", True, "sq8", 16),
    ("cosine", False, "f16", 8)])
def test_batch_search_equals_one_query_at_a_time(data, metric: str, residual: bool, refine, m: int) -> None:
    """A batch of 4-bit queries is scanned list by list (several queries per pass over a list's codes,
    each list once per block of queries); every row must equal that query searched on its own, at
    every fast-scan level, with and without a filter, on one thread and on several."""
    x, q = data
    index = build(x, nbits=4, metric=metric, residual=residual, refine=refine, m=m)
    allowed = np.arange(0, len(x), 3)
    levels = _core._pq4_scan_levels()
    try:
        for level in levels:
            _core._set_pq4_scan_level(level)
            for kw in ({}, {"filter": allowed}):
                alone = [index.search(q[i:i + 1], 7, nprobe=12, refine_factor=3, num_threads=1, **kw)
                         for i in range(len(q))]
                ids1 = np.vstack([a[0] for a in alone])
                dist1 = np.vstack([a[1] for a in alone])
                for threads in (1, 3):
                    ids, dist = index.search(q, 7, nprobe=12, refine_factor=3, num_threads=threads, **kw)
                    np.testing.assert_array_equal(ids, ids1, err_msg=f"{level} {threads} {kw.keys()}")
                    np.testing.assert_array_equal(dist, dist1, err_msg=f"{level} {threads} {kw.keys()}")
                if kw:
                    assert np.isin(ids[ids >= 0], allowed).all()
            # A filter that allows everything takes the general path (no first-list shortcut on
            # the 16-bit sums): same answers.
            everything = index.search(q, 7, nprobe=12, refine_factor=3, filter=np.arange(len(x)))
            plain = index.search(q, 7, nprobe=12, refine_factor=3)
            np.testing.assert_array_equal(everything[0], plain[0], err_msg=level)
            np.testing.assert_array_equal(everything[1], plain[1], err_msg=level)
    finally:
        _core._set_pq4_scan_level(None)


def test_odd_m_fast_scan_layout() -> None:
    # m = 3 pads the fast-scan blocks to an even number of sub-quantizers; every level must agree.
    x = clustered(1500, 12, seed=4)
    index = af.IVFPQIndex(12, 4, 3, nbits=4, refine=None)
    index.train(x)
    index.add(x)
    out = []
    try:
        for level in _core._pq4_scan_levels():
            _core._set_pq4_scan_level(level)
            out.append(index.search(x[:20], 5, nprobe=4))
    finally:
        _core._set_pq4_scan_level(None)
    for ids, dist in out[1:]:
        np.testing.assert_array_equal(ids, out[0][0])
        np.testing.assert_array_equal(dist, out[0][1])


def test_opq_rotation(data) -> None:
    x, q = data
    index = af.IVFPQIndex(DIM, 32, 8, nbits=4, refine="f32", opq=True)
    index.train(x)
    index.add(x)
    r = index.rotation()
    assert r is not None and index.opq
    np.testing.assert_allclose(r @ r.T, np.eye(DIM), atol=1e-4)
    np.testing.assert_allclose(index.reconstruct([5, 17]), x[[5, 17]], atol=1e-4)  # back in input space
    truth = np.argsort(brute_force(x, q, "l2"), axis=1)[:, :10]
    assert recall(index.search(q, 10, nprobe=32, refine_factor=20)[0], truth) >= 0.9


def test_opq_lowers_quantization_error() -> None:
    # Variance concentrated in a few directions mixed over all dimensions: plain PQ splits it badly.
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4000, DIM)) * np.geomspace(10, 0.1, DIM)
    mix, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    x = (z @ mix).astype(np.float32)
    errors = []
    for opq in (False, True):
        index = af.IVFPQIndex(DIM, 8, 8, nbits=4, refine=None, opq=opq)
        index.train(x)
        index.add(x)
        errors.append(float(((index.reconstruct(index.ids()) - x[index.ids()]) ** 2).sum(1).mean()))
    assert errors[1] < 0.9 * errors[0], errors


# -- updates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [8, 4])
def test_remove_and_upsert(data, nbits: int) -> None:
    x, _ = data
    index = build(x[:2000], nbits=nbits, refine="f32")
    gone = np.arange(0, 2000, 3)
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0
    assert len(index) == 2000 - len(gone)
    assert 3 not in index and 4 in index
    ids, _ = index.search(x[:200], 5, nprobe=32)
    assert not np.isin(ids, gone).any()
    # Survivors moved inside their lists; each is still its own nearest neighbour.
    keep = np.setdiff1d(np.arange(2000), gone)[:150]
    ids, dist = index.search(x[keep], 1, nprobe=32)
    np.testing.assert_array_equal(ids[:, 0], keep)
    # Upsert: same ids, new vectors.
    new = x[3000:3010]
    index.add(new, ids=keep[:10])
    assert len(index) == 2000 - len(gone)
    np.testing.assert_allclose(index.reconstruct(keep[:10]), new)
    ids, _ = index.search(new, 1, nprobe=32)
    np.testing.assert_array_equal(ids[:, 0], keep[:10])
    assert sorted(index.ids().tolist()) == sorted(set(range(2000)) - set(gone.tolist()))
    # Re-add removed ids: they are live again.
    index.add(x[gone[:5]], ids=gone[:5])
    assert all(int(i) in index for i in gone[:5])


def test_add_in_several_batches_and_auto_ids(data) -> None:
    x, q = data
    index = af.IVFPQIndex(DIM, 32, 8)
    index.train(x)
    assert index.add(x[:100]).tolist() == list(range(100))
    assert index.add(x[100:200]).tolist() == list(range(100, 200))
    index.add(x[200:300], ids=np.arange(1000, 1100))
    assert index.add(x[300:301]).tolist() == [1100]
    assert len(index) == 301
    assert int(index.list_sizes().sum()) == 301


def test_filter(data) -> None:
    x, q = data
    index = build(x, nbits=4)
    allowed = np.arange(0, 6000, 7)
    ids, _ = index.search(q, 10, nprobe=32, filter=allowed)
    assert np.isin(ids[ids >= 0], allowed).all()
    assert (ids >= 0).all()
    ids2, _ = index.search(q[:5], 10, nprobe=32, filter=lambda i: i % 7 == 0)
    np.testing.assert_array_equal(ids2, ids[:5])


def test_fewer_results_than_k_are_padded() -> None:
    x = clustered(300, 8, seed=1)
    index = af.IVFPQIndex(8, 4, 2, nbits=8)
    index.train(x)
    index.add(x[:3])
    ids, dist = index.search(x[:2], 5, nprobe=4)
    assert (ids[:, 3:] == -1).all() and np.isinf(dist[:, 3:]).all()


# -- persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nbits,refine,residual", [(8, "f32", True), (4, None, True), (4, "sq8", True),
                                                   (8, "f16", True), (4, "f32", False), (8, None, False)])
def test_save_load_mmap_pickle(tmp_path, data, nbits: int, refine, residual: bool) -> None:
    x, q = data
    index = build(x[:3000], nbits=nbits, refine=refine, residual=residual)
    index.remove(np.arange(0, 3000, 5))
    expected = index.search(q, 10, nprobe=8)
    path = os.fspath(tmp_path / "ivf.af")
    index.save(path)
    for loaded in (af.load(path), af.load(path, mmap=True), pickle.loads(pickle.dumps(index))):
        assert isinstance(loaded, af.IVFPQIndex)
        assert (loaded.nlist, loaded.m, loaded.nbits, loaded.refine) == (32, 8, nbits, refine)
        assert loaded.residual is residual
        got = loaded.search(q, 10, nprobe=8)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    mapped = af.load(path, mmap=True)
    mapped.remove([1, 2, 3])
    mapped.add(x[3000:3010])
    assert len(mapped) == len(index) - 3 + 10
    assert len(af.load(path)) == len(index)  # the file did not change


def test_untrained_index_is_not_saved(tmp_path) -> None:
    # Loading refuses untrained files (issue 15), so saving refuses to write one; train, then save.
    index = af.IVFPQIndex(16, 4, 4, nbits=4, refine="sq8")
    path = os.fspath(tmp_path / "u.af")
    with pytest.raises(ValueError, match="not trained"):
        index.save(path)
    x = clustered(500, 16)
    index.train(x)
    index.save(path)
    loaded = af.load(path)
    assert loaded.is_trained and loaded.refine == "sq8"
    loaded.add(x)
    assert len(loaded) == 500


@pytest.mark.errors
def test_corrupted_file_is_refused(tmp_path, data) -> None:
    x, _ = data
    index = build(x[:500], nbits=4)
    path = tmp_path / "c.af"
    index.save(os.fspath(path))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        af.load(os.fspath(path))
    with pytest.raises(OSError):
        af.IVFPQIndex.from_bytes(index.to_bytes()[:-100])


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.errors
def test_untrained_index_refuses_add_and_search() -> None:
    index = af.IVFPQIndex(8, 4, 2)
    with pytest.raises(ValueError, match="index is not trained"):
        index.add(np.zeros((2, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="index is not trained"):
        index.search(np.zeros((1, 8), dtype=np.float32), 1)


@pytest.mark.errors
def test_bad_parameters(data) -> None:
    x, q = data
    with pytest.raises(ValueError, match="multiple of m"):
        af.IVFPQIndex(10, 4, 3)
    with pytest.raises(ValueError, match="nbits"):
        af.IVFPQIndex(8, 4, 2, nbits=5)
    with pytest.raises(ValueError, match="refine"):
        af.IVFPQIndex(8, 4, 2, refine="f64")
    with pytest.raises(ValueError, match="metric"):
        af.IVFPQIndex(8, 4, 2, metric="hamming")
    with pytest.raises(TypeError, match="residual"):
        af.IVFPQIndex(8, 4, 2, residual="no")
    with pytest.raises(ValueError):
        af.IVFPQIndex(8, 0, 2)
    with pytest.raises(TypeError):
        af.IVFPQIndex(8, 4, 2, refine=3)  # type: ignore[arg-type]
    small = af.IVFPQIndex(DIM, 100, 8)
    with pytest.raises(ValueError, match="at least"):
        small.train(x[:50])
    index = build(x[:1000], nbits=4)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(q, 5, nprobe=0)
    with pytest.raises(ValueError, match="unknown search parameter"):
        index.search(q, 5, ef=10)
    with pytest.raises(ValueError, match="k must be"):
        index.search(q, 0)
    with pytest.raises(ValueError):
        index.search(np.zeros((1, DIM + 1), dtype=np.float32), 5)
    bad = x[:3].copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        index.add(bad)
    with pytest.raises(ValueError):
        index.add(x[:2], ids=[5, 5])
    with pytest.raises(ValueError):
        index.add(x[:2], ids=[-1, 4])
    with pytest.raises(ValueError, match="not in the index"):
        index.reconstruct([10**9])


@pytest.mark.sanitize
@settings(max_examples=40, deadline=None)
@given(
    pm=st.integers(1, 128).map(lambda h: 2 * h),
    nblocks=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
    saturate=st.booleans(),
)
def test_fast_scan_kernels_match_numpy(pm: int, nblocks: int, seed: int, saturate: bool) -> None:
    """Raw kernel sums at every level equal a numpy reference, including sums close to 2^16 (the
    AVX paths recover even-byte sums modulo 2^16), and the threshold masks match `acc < bound`."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=nblocks * pm * 16, dtype=np.uint8)
    table = (np.full(pm * 16, 255, np.uint8) if saturate
             else rng.integers(0, 256, size=pm * 16, dtype=np.uint8))
    b = blocks.reshape(nblocks, pm, 16).astype(np.int64)
    t = table.reshape(pm, 16).astype(np.int64)
    lo = np.take_along_axis(t[None], b & 15, axis=2).sum(axis=1)   # vectors 0-15 of each block
    hi = np.take_along_axis(t[None], b >> 4, axis=2).sum(axis=1)   # vectors 16-31
    expected = np.concatenate([lo, hi], axis=1).reshape(-1)
    assert expected.max() < 2**16
    bounds = [0, 1, int(rng.integers(0, 2**16)), int(np.median(expected)), 65535]
    try:
        for level in _core._pq4_scan_levels():
            _core._set_pq4_scan_level(level)
            acc = _core._testing._pq4_scan_raw(blocks, pm, table)
            np.testing.assert_array_equal(acc, expected, err_msg=level)
            # The several-tables kernel (list-major search), where the level has one: 1..6 tables,
            # this one among random others, each with its own sums.
            others = rng.integers(0, 256, size=(5, pm * 16), dtype=np.uint8)
            for n in range(1, 7):
                tables = np.vstack([table[None], others])[:n]
                multi = _core._testing._pq4_scan_multi_raw(blocks, pm, tables)
                if multi is None:
                    break
                for t_i in range(n):
                    ti = tables[t_i].reshape(pm, 16).astype(np.int64)
                    want = np.concatenate([np.take_along_axis(ti[None], b & 15, axis=2).sum(axis=1),
                                           np.take_along_axis(ti[None], b >> 4, axis=2).sum(axis=1)], axis=1)
                    np.testing.assert_array_equal(multi[t_i], want.reshape(-1), err_msg=f"{level} multi {n}/{t_i}")
            for bound in bounds + [None]:  # None: a different bound per block
                per_block = (rng.integers(0, 2**16, size=nblocks) if bound is None
                             else np.full(nblocks, bound)).astype(np.uint16)
                masks = _core._testing._pq4_below_raw(acc, per_block)
                bits = ((acc.reshape(-1, 32) < per_block[:, None]).astype(np.uint64)
                        << np.arange(32, dtype=np.uint64))
                np.testing.assert_array_equal(masks, bits.sum(axis=1).astype(np.uint32), err_msg=f"{level} {bound}")
    finally:
        _core._set_pq4_scan_level(None)


# -- candidate selection ---------------------------------------------------------------------------


@pytest.mark.sanitize
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 600), distinct=st.integers(1, 1000), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_kth_smallest_matches_numpy(n: int, distinct: int, seed: int, data) -> None:
    # Few distinct values (many ties) exercise the pivot-is-minimum step.
    rng = np.random.default_rng(seed)
    values = rng.integers(0, distinct, size=n).astype(np.float32) * np.float32(0.37)
    k = data.draw(st.integers(0, n - 1))
    assert _core._testing._kth_smallest(values, k) == np.partition(values, k)[k]


@pytest.mark.sanitize
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), k=st.integers(1, 200), distinct=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1))
def test_topk_buffer_keeps_the_k_best_with_ties_by_label(n: int, k: int, distinct: int, seed: int) -> None:
    """Offered only what is at or under its (lagging) threshold, the buffer still ends with exactly the
    k smallest (distance, label) pairs: the property the list-order independence of IVF-PQ rests on."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, distinct, size=n).astype(np.float32)
    labels = rng.permutation(n).astype(np.int64) * 7
    got_d, got_l = _core._testing._topk_buffer(dist, labels, k)
    order = np.lexsort((labels, dist))[:k]
    np.testing.assert_array_equal(got_d, dist[order])
    np.testing.assert_array_equal(got_l, labels[order])
