"""GPU support: the CPU-side behaviour (af.knn, device parsing, clear errors without a GPU) runs
everywhere; the tests marked ``cuda`` compare every GPU result with the CPU result and are skipped
unless the CUDA module is built and a GPU is visible (tools/verify_gpu.sh runs them)."""

from __future__ import annotations

import numpy as np
import pytest

import annforge as af
from annforge import gpu

needs_gpu = pytest.mark.skipif(not af.gpu_available(), reason="needs the CUDA module and a GPU")


def _data(n=3000, d=32, nq=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((nq, d)).astype(np.float32)


# --- CPU side (CI) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_knn_cpu_matches_brute_force(metric):
    x, q = _data(n=500, d=12, nq=7)
    ids, dist = af.knn(x, q, k=5, metric=metric)
    if metric == "l2":
        full = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    else:
        xx, qq = x, q
        if metric == "cosine":
            xx = x / np.linalg.norm(x, axis=1, keepdims=True)
            qq = q / np.linalg.norm(q, axis=1, keepdims=True)
        full = 1.0 - qq @ xx.T
    expect = np.argsort(full, axis=1, kind="stable")[:, :5]
    assert ids.dtype == np.int64 and dist.dtype == np.float32 and ids.shape == (7, 5)
    np.testing.assert_array_equal(ids, expect)
    np.testing.assert_allclose(dist, np.take_along_axis(full, expect, axis=1), rtol=1e-4, atol=1e-4)


def test_knn_cpu_pads_and_validates():
    x = np.eye(3, dtype=np.float32)
    ids, dist = af.knn(x, x[:1], k=5)
    assert ids[0, 3:].tolist() == [-1, -1] and np.isinf(dist[0, 3:]).all()
    with pytest.raises(TypeError):
        af.knn(x, x, k=1.5)
    with pytest.raises(ValueError):
        af.knn(x, x, k=0)
    with pytest.raises(ValueError):
        af.knn(x, x, k=1, metric="hamming")
    with pytest.raises(ValueError):
        af.knn(x, np.ones((1, 4), np.float32), k=1)
    with pytest.raises(ValueError):
        af.knn(x, x, k=1, device="tpu")


def test_parse_device():
    assert gpu.parse_device("cpu") is None and gpu.parse_device(None) is None
    assert gpu.parse_device("cuda") == 0 and gpu.parse_device("cuda:3") == 3 and gpu.parse_device(2) == 2
    for bad in ("cuda:", "cuda:-1", "gpu0", ""):
        with pytest.raises(ValueError):
            gpu.parse_device(bad)
    with pytest.raises(ValueError):
        gpu.parse_device(-1)
    with pytest.raises(TypeError):
        gpu.parse_device(True)
    with pytest.raises(TypeError):
        gpu.parse_device(1.0)


def test_build_info_reports_cuda():
    info = af.build_info()
    assert info["cuda"] == gpu.cuda_built()
    if info["cuda"]:
        assert "80-real" in info["cuda_architectures"] and "90-real" in info["cuda_architectures"]
        assert any(a.endswith("-virtual") for a in info["cuda_architectures"])  # PTX for newer GPUs
    else:
        assert info["cuda_architectures"] == []


def test_import_does_not_load_the_cuda_module():
    import subprocess
    import sys

    code = "import sys, annforge; annforge.FlatIndex(2); print('annforge._cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(af.gpu_available(), reason="checks the errors raised without a GPU")
def test_gpu_requests_without_a_gpu_raise_clearly():
    assert af.gpu_available() is False and gpu.device_count() == 0
    x, q = _data(n=300, d=8, nq=2)
    flat = af.FlatIndex(8)
    flat.add(x)
    ivf = af.IVFPQIndex(8, nlist=4, m=4)
    ivf.train(x)
    calls = [
        lambda: flat.to_gpu(),
        lambda: flat.to_gpu(device="cuda:0", dtype="f16"),
        lambda: ivf.to_gpu(),
        lambda: af.knn(x, q, 1, device="cuda"),
        lambda: af.kmeans(x, 4, device="cuda"),
        lambda: ivf.train(x, device="cuda"),
        lambda: af.ScaNNIndex(8, num_leaves=4).train(x, device="cuda"),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="CUDA"):
            call()
    # The CPU state is untouched by the failed requests.
    assert ivf.is_trained and len(flat) == 300


def test_kmeans_accelerator_argument_is_checked():
    x, _ = _data(n=200, d=4)
    with pytest.raises(TypeError, match="accelerator"):
        af._core.kmeans(x, 2, 5, 0, "kmeans++", 256, False, 0, object())
    assert gpu.kmeans_accelerator("cpu") is None


# --- GPU vs CPU (skipped without a GPU) ------------------------------------------------------------


def _assert_same_results(ids_g, dist_g, ids_c, dist_c, rtol=1e-4, atol=1e-4):
    """Identical ids wherever the CPU distances are not tied; distances within float tolerance."""
    np.testing.assert_allclose(dist_g, dist_c, rtol=rtol, atol=atol)
    for row in range(ids_c.shape[0]):
        dc = dist_c[row]
        for j in range(ids_c.shape[1]):
            tied = (j > 0 and abs(dc[j] - dc[j - 1]) <= atol + rtol * abs(dc[j])) or (
                j + 1 < len(dc) and abs(dc[j + 1] - dc[j]) <= atol + rtol * abs(dc[j]))
            if not tied:
                assert ids_g[row, j] == ids_c[row, j], (row, j)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("nq", [1, 7, 300])
def test_gpu_flat_matches_cpu(metric, nq):
    x, q = _data(n=20000, d=48, nq=nq, seed=nq)
    cpu = af.FlatIndex(48, metric)
    cpu.add(x, ids=np.arange(len(x)) * 3 + 1)
    g = cpu.to_gpu()
    for k in (1, 10, 100):
        _assert_same_results(*g.search(q, k), *cpu.search(q, k))
    assert type(g.to_cpu()) is af.FlatIndex and len(g.to_cpu()) == len(cpu)


@pytest.mark.cuda
@needs_gpu
def test_gpu_flat_large_k_filters_and_padding():
    x, q = _data(n=5000, d=24, nq=33, seed=3)
    cpu = af.FlatIndex(24)
    cpu.add(x)
    g = cpu.to_gpu(0)
    _assert_same_results(*g.search(q, 1024), *cpu.search(q, 1024))  # the radix-select path
    allowed = np.arange(0, 5000, 7)
    _assert_same_results(*g.search(q, 20, filter=allowed), *cpu.search(q, 20, filter=allowed))
    fn = lambda i: i % 5 == 0  # noqa: E731
    _assert_same_results(*g.search(q[:3], 20, filter=fn), *cpu.search(q[:3], 20, filter=fn))
    ids, dist = g.search(q[:2], 10, filter=[4, 9])
    assert sorted(ids[0, :2].tolist()) == [4, 9] and (ids[:, 2:] == -1).all() and np.isinf(dist[:, 2:]).all()
    with pytest.raises(ValueError):
        g.search(q, 1025)
    with pytest.raises(ValueError):
        g.search(q[:, :5], 3)


@pytest.mark.cuda
@needs_gpu
def test_gpu_flat_f16_close_to_cpu():
    x, q = _data(n=8000, d=64, nq=50, seed=5)
    cpu = af.FlatIndex(64, "ip")
    cpu.add(x)
    ids_g, dist_g = cpu.to_gpu(dtype="f16").search(q, 10)
    ids_c, dist_c = cpu.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_g, ids_c)])
    assert recall >= 0.95
    np.testing.assert_allclose(dist_g[:, 0], dist_c[:, 0], rtol=1e-2, atol=2e-2)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_gpu_knn_matches_cpu(metric):
    x, q = _data(n=10000, d=40, nq=257, seed=9)
    _assert_same_results(*af.knn(x, q, 16, metric, device="cuda"), *af.knn(x, q, 16, metric))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("nbits", [8, 4])
@pytest.mark.parametrize("metric,residual,refine", [("l2", True, "f32"), ("ip", True, "f16"), ("cosine", False, "sq8"),
                                                     ("l2", False, "f32"), ("l2", True, None)])
def test_gpu_ivfpq_matches_cpu(nbits, metric, residual, refine):
    x, q = _data(n=12000, d=32, nq=64, seed=11)
    cpu = af.IVFPQIndex(32, nlist=32, m=8, nbits=nbits, metric=metric, residual=residual, refine=refine)
    cpu.train(x)
    cpu.add(x)
    g = cpu.to_gpu()
    k, params = 10, dict(nprobe=8, refine_factor=8)
    ids_g, dist_g = g.search(q, k, **params)
    ids_c, dist_c = cpu.search(q, k, **params)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_g, ids_c)])
    exact = af.knn(x, q, k, metric)[0]
    recall_g = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_g, exact)])
    recall_c = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_c, exact)])
    if nbits == 8 and refine is not None:
        # Same float tables: the candidate sets can differ only by rounding at their margin, so nearly
        # every row is identical, and those rows agree id for id.
        same = [set(a) == set(b) for a, b in zip(ids_g, ids_c)]
        assert np.mean(same) >= 0.95
        rows = np.flatnonzero(same)
        _assert_same_results(ids_g[rows], dist_g[rows], ids_c[rows], dist_c[rows], rtol=1e-3, atol=1e-3)
    else:  # 4-bit: float tables on the GPU, 8-bit tables on the CPU
        assert overlap >= 0.9
        assert recall_g >= recall_c - 0.02
    # Distances of the ids both returned agree (re-ranked: exactly; PQ estimates: loosely).
    tol = 1e-3 if refine is not None else 0.1 if nbits == 4 else 1e-3
    for a, da, b, db in zip(ids_g, dist_g, ids_c, dist_c):
        common = {i: dv for i, dv in zip(b, db)}
        for i, dv in zip(a, da):
            if i in common:
                assert abs(dv - common[i]) <= tol * (1 + abs(dv)), (i, dv, common[i])


@pytest.mark.cuda
@needs_gpu
def test_gpu_ivfpq_opq_filter_and_to_cpu():
    x, q = _data(n=6000, d=32, nq=20, seed=12)
    cpu = af.IVFPQIndex(32, nlist=16, m=8, opq=True)
    cpu.train(x)
    cpu.add(x, ids=np.arange(6000) + 100)
    g = cpu.to_gpu()
    allowed = np.arange(100, 6100, 3)
    ids_g, dist_g = g.search(q, 5, filter=allowed, nprobe=16)
    ids_c, dist_c = cpu.search(q, 5, filter=allowed, nprobe=16)  # nprobe = nlist: only PQ ranks differ
    same = np.flatnonzero([set(a) == set(b) for a, b in zip(ids_g, ids_c)])
    assert len(same) >= 18
    _assert_same_results(ids_g[same], dist_g[same], ids_c[same], dist_c[same], rtol=1e-3, atol=1e-3)
    assert np.isin(ids_g, allowed).all()
    back = g.to_cpu()
    assert len(back) == len(cpu) and back.opq
    with pytest.raises(ValueError):
        g.search(q, 300, refine_factor=4)  # 1200 candidates > 1024
    with pytest.raises(ValueError):
        g.search(q, 5, efSearch=3)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("spherical", [False, True])
def test_gpu_kmeans_same_quality_as_cpu(spherical):
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((50, 16)).astype(np.float32) * 4
    x = (centres[rng.integers(0, 50, 20000)] + rng.standard_normal((20000, 16))).astype(np.float32)
    cpu = af.kmeans(x, 50, niter=15, seed=2, spherical=spherical)
    gpu_res = af.kmeans(x, 50, niter=15, seed=2, spherical=spherical, device="cuda")
    assert abs(gpu_res.objective[-1] - cpu.objective[-1]) <= 0.01 * abs(cpu.objective[-1])
    # The assignment is the nearest centroid of every row.
    c = gpu_res.centroids
    if spherical:
        expect = np.argmax(x @ c.T, axis=1)
    else:
        expect = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    assert np.mean(expect == gpu_res.assignment) > 0.999


@pytest.mark.cuda
@needs_gpu
def test_gpu_train_ivfpq_and_scann():
    x, q = _data(n=8000, d=32, nq=30, seed=13)
    exact = af.knn(x, q, 10)[0]
    recalls = []
    for device in ("cpu", "cuda"):
        index = af.IVFPQIndex(32, nlist=32, m=8)
        index.train(x, device=device)
        index.add(x)
        ids = index.search(q, 10, nprobe=8)[0]
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
    assert recalls[1] >= recalls[0] - 0.03
    scann = af.ScaNNIndex(32, num_leaves=20, metric="l2")
    scann.train(x, device="cuda")
    scann.add(x)
    assert scann.search(q, 10)[0].shape == (30, 10)
