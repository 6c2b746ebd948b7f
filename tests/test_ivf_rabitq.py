"""IVFRaBitQIndex (issue 17): RaBitQ residual codes in the shared inverted lists, scanned with the 4-bit
fast-scan kernels, re-ranked by the multi-bit codes and / or an exact copy."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import annforge as af
from annforge import _core


def _data(n: int, dim: int, seed: int = 0, clusters: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def _exact(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return ((q[:, None, :] - x[None]) ** 2).sum(-1)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return 1.0 - q @ x.T


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("bits,refine", [(1, "f32"), (4, "f32"), (4, None), (2, "f16"), (1, "sq8")])
def test_recall_at_full_probe(metric: str, bits: int, refine) -> None:
    x, q = _data(3000, 48, 1), _data(40, 48, 2)
    index = af.IVFRaBitQIndex(48, 16, bits=bits, metric=metric, refine=refine)
    index.train(x)
    index.add(x)
    ids, dist = index.search(q, 10, nprobe=16, refine_factor=20)
    truth = np.argsort(_exact(x, q, metric), axis=1)[:, :10]
    r = _recall(ids, truth)
    floor = {(1, None): 0.5}.get((bits, refine), 0.9 if refine else 0.75)
    assert r >= floor, r
    assert np.all(np.diff(dist, axis=1) >= -1e-5)  # sorted
    if refine == "f32":  # exact distances of the returned ids
        ex = _exact(x, q, metric)
        np.testing.assert_allclose(dist, np.take_along_axis(ex, ids, 1), rtol=1e-3, atol=1e-3)


def test_recall_grows_with_nprobe() -> None:
    x, q = _data(4000, 64, 3), _data(50, 64, 4)
    index = af.IVFRaBitQIndex(64, 32, bits=1)
    index.train(x)
    index.add(x)
    truth = np.argsort(_exact(x, q, "l2"), axis=1)[:, :10]
    r = [_recall(index.search(q, 10, nprobe=p)[0], truth) for p in (1, 4, 32)]
    assert r[0] <= r[1] <= r[2] and r[2] >= 0.9, r


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), metric=st.sampled_from(["l2", "ip"]), dim=st.sampled_from([20, 64, 100]))
def test_estimates_within_their_bound(seed: int, metric: str, dim: int) -> None:
    x, q = _data(600, dim, seed), _data(4, dim, seed + 1)
    index = af.IVFRaBitQIndex(dim, 4, metric=metric, seed=seed)
    index.train(x)
    index.add(x)
    held = total = 0
    for qi in range(len(q)):
        for lst in range(4):
            ids, est, lo, up = _core._testing.ivf_rabitq_list_estimates(index._impl, q[qi:qi + 1], lst, eps0=3.0)
            if not len(ids):
                continue
            ex = _exact(x[ids], q[qi:qi + 1], metric)[0]
            assert np.all(lo <= est + 1e-4) and np.all(est <= up + 1e-4)
            tol = 1e-4 * (1 + np.abs(ex))
            held += int(np.sum((ex >= lo - tol) & (ex <= up + tol)))
            total += len(ids)
    assert held >= 0.99 * total, (held, total)  # eps0 = 3: the codec's documented 99% confidence


def test_estimates_are_unbiased_on_average() -> None:
    x, q = _data(2000, 64, 5), _data(8, 64, 6)
    index = af.IVFRaBitQIndex(64, 8, refine=None)
    index.train(x)
    index.add(x)
    errs, scale = [], []
    for qi in range(len(q)):
        for lst in range(8):
            ids, est, _, _ = _core._testing.ivf_rabitq_list_estimates(index._impl, q[qi:qi + 1], lst)
            ex = _exact(x[ids], q[qi:qi + 1], "l2")[0]
            errs.append(est - ex)
            scale.append(ex)
    err, sc = np.concatenate(errs), np.concatenate(scale)
    assert abs(err.mean()) < 0.02 * sc.mean(), (err.mean(), sc.mean())


def test_remove_and_upsert() -> None:
    x = _data(1000, 32, 7)
    index = af.IVFRaBitQIndex(32, 8, bits=2)
    index.train(x)
    index.add(x)
    assert index.remove(np.arange(0, 1000, 3)) == 334
    assert len(index) == 666 and 3 not in index and 4 in index
    ids, _ = index.search(x[:30], 5, nprobe=8)
    assert not np.isin(ids, np.arange(0, 1000, 3)).any()
    for i in range(1, 30, 3):
        if i % 3:
            assert ids[i, 0] == i
    # Upsert: id 4 now holds x[500]'s vector; the entries that moved in its list still answer right.
    index.add(x[500:501], ids=[4])
    assert len(index) == 666
    ids, dist = index.search(x[500:501], 2, nprobe=8)
    assert set(ids[0]) == {4, 500} and dist[0, 0] == pytest.approx(0, abs=1e-4)
    for i in (1, 2, 5, 7, 8):
        assert index.search(x[i:i + 1], 1, nprobe=8)[0][0, 0] == i
    np.testing.assert_allclose(index.reconstruct([4])[0], x[500], rtol=1e-6)


def test_filters_threads_and_reconstruct_without_copy() -> None:
    x, q = _data(1500, 40, 8), _data(20, 40, 9)
    index = af.IVFRaBitQIndex(40, 8, bits=4, refine=None)
    index.train(x)
    index.add(x)
    allowed = np.arange(0, 1500, 2)
    ids, _ = index.search(q, 5, nprobe=8, filter=allowed)
    assert np.isin(ids[ids >= 0], allowed).all()
    ids_lambda, _ = index.search(q, 5, nprobe=8, filter=lambda i: i % 2 == 0)
    np.testing.assert_array_equal(ids, ids_lambda)
    one = index.search(q, 5, nprobe=8, num_threads=1)
    many = index.search(q, 5, nprobe=8, num_threads=3)
    np.testing.assert_array_equal(one[0], many[0])
    rec = index.reconstruct([0, 1])
    rel = np.linalg.norm(rec - x[:2], axis=1) / np.linalg.norm(x[:2], axis=1)
    assert np.all(rel < 0.3), rel  # the 4-bit code's reconstruction


@pytest.mark.parametrize("refine,bits,metric", [("f32", 1, "l2"), (None, 3, "ip"), ("sq8", 2, "cosine")])
def test_save_load_identical_answers(tmp_path, refine, bits: int, metric: str) -> None:
    x, q = _data(1200, 36, 10), _data(15, 36, 11)
    index = af.IVFRaBitQIndex(36, 8, bits=bits, refine=refine, metric=metric, seed=5)
    index.train(x)
    index.add(x)
    index.remove([3, 4, 5])
    want = index.search(q, 7, nprobe=4)
    path = tmp_path / "i.af"
    index.save(path)
    for other in (af.load(path), af.load(path, mmap=True), af.IVFRaBitQIndex.from_bytes(index.to_bytes()),
                  pickle.loads(pickle.dumps(index))):
        assert isinstance(other, af.IVFRaBitQIndex) and len(other) == len(index)
        got = other.search(q, 7, nprobe=4)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert other.bits == bits and other.refine == refine
    assert index.memory_bytes() > len(index) * index._impl.code_bytes


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        af.IVFRaBitQIndex(16, 4, bits=9)
    with pytest.raises(ValueError):
        af.IVFRaBitQIndex(16, 0)
    with pytest.raises(TypeError):
        af.IVFRaBitQIndex(16, 4, bits=1.5)
    with pytest.raises(ValueError):
        af.IVFRaBitQIndex(16, 4, refine="f64")
    index = af.IVFRaBitQIndex(16, 4)
    with pytest.raises(ValueError, match="not trained"):
        index.add(np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="at least nlist"):
        index.train(np.zeros((2, 16), np.float32))
    x = _data(200, 16, 12)
    index.train(x)
    with pytest.raises(ValueError):
        index.add(np.zeros((2, 15), np.float32))
    with pytest.raises(ValueError):
        index.add(np.full((2, 16), np.nan, np.float32))
    index.add(x)
    with pytest.raises(ValueError, match="unknown search parameter"):
        index.search(x[:1], 3, ef=4)
    with pytest.raises(ValueError):
        index.search(x[:1], 3, nprobe=0)
    with pytest.raises(ValueError):
        index.reconstruct([10_000])


def test_multibit_codes_estimate_better_than_sign_codes() -> None:
    # Without a copy, the returned distances are the estimates: the 4-bit code's are closer to exact, and
    # its ranking finds more true neighbours from the same fast-scan candidates.
    x, q = _data(3000, 64, 13), _data(40, 64, 14)
    ex = _exact(x, q, "l2")
    truth = np.argsort(ex, axis=1)[:, :10]
    err, rec = {}, {}
    for bits in (1, 4):
        index = af.IVFRaBitQIndex(64, 16, bits=bits, refine=None)
        index.train(x)
        index.add(x)
        ids, dist = index.search(q, 10, nprobe=16, refine_factor=10)
        err[bits] = float(np.mean(np.abs(dist - np.take_along_axis(ex, ids, 1))))
        rec[bits] = _recall(ids, truth)
    assert err[4] < 0.5 * err[1], err
    assert rec[4] > rec[1] + 0.1, rec
