"""Distance kernels at every SIMD level this machine runs, against float64 NumPy references.

Each kernel is called through the private ``_core._testing._kernel*`` hooks, which (with ``guard=True``) copy
every input and output into buffers that end at an inaccessible page, so a kernel that reads or
writes one element past its data crashes the test. Dimensions cover vector-width tails (1, 3, 17, 97)
and the multi-block paths (384, 1000); row/query counts cover the 4-row groups and the GEMM micro-tile
and panel tails of every level.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import annforge as af
from annforge import _core

LEVELS = af.available_simd_levels()
DIMS = [1, 3, 17, 97, 384, 1000]
ROW_COUNTS = [1, 5, 33]
FILL = np.float32(-12345.0)

# float32 accumulation error is bounded by (d / lanes + lanes) * eps * sum|terms|; 1e-5 of the
# magnitude covers d = 1000 at every level with room, and is far below any real bug (a missing or
# doubled element is ~1/d of the magnitude).
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _restore_level():
    before = af.simd_level()
    yield
    af.set_simd_level(before)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def assert_close(got, ref, magnitude) -> None:
    got = np.asarray(got, dtype=np.float64)
    tol = RTOL * np.asarray(magnitude, dtype=np.float64) + 1e-30
    err = np.abs(got - ref)
    assert np.all(err <= tol), f"max error {err.max():.3g} (tol {np.min(tol):.3g}..{np.max(tol):.3g})"


def ref_l2(q: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = q.astype(np.float64) - x.astype(np.float64)
    return (t * t).sum(-1), (t * t).sum(-1)


def ref_dot(q: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = q.astype(np.float64) * x.astype(np.float64)
    return p.sum(-1), np.abs(p).sum(-1)


def test_test_hooks_live_only_in_the_testing_submodule():
    """The production module carries no test hook; ``_core._testing`` holds them all."""
    hooks = ["_kernel", "_kernel_dot_packed", "_kernel_panel_rows", "_hnsw_patch_u32_for_tests",
             "permute_level_check", "_scann_loss", "_scann_encode", "_pq4_scan_raw", "_pq4_scan_multi_raw",
             "_kth_smallest", "_topk_buffer", "_pq4_below_raw"]
    assert [h for h in hooks if hasattr(_core, h)] == []
    assert [h for h in hooks if not callable(getattr(_core._testing, h, None))] == []
    assert _core._testing.__name__ == "annforge._core._testing"


def test_levels_include_scalar_and_detected():
    assert "scalar" in LEVELS
    assert _core.detected_simd_level() in LEVELS
    assert af.simd_level() in LEVELS


# --- float32 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("d", DIMS)
def test_f32_pairs_and_rows(level: str, d: int):
    rng = np.random.default_rng(d)
    q = rand(rng, d)
    for n in ROW_COUNTS:
        x = rand(rng, n, d) * np.float32(3)
        for name, ref in (("l2_sqr", ref_l2), ("dot", ref_dot)):
            want, mag = ref(q, x)
            assert_close(_core._testing._kernel(level, name, q, x[0]), want[0], mag[0])
            got = _core._testing._kernel(level, name + "_rows", q, x)
            assert got.shape == (n,)
            assert_close(got, want, mag)


@pytest.mark.parametrize("level", LEVELS)
def test_f32_unaligned_inputs(level: str):
    """Kernels use unaligned loads: inputs offset by one float must give the same results."""
    rng = np.random.default_rng(7)
    d, n = 97, 9
    buf_q = rand(rng, d + 1)
    buf_x = rand(rng, n * d + 1)
    q, x = buf_q[1:], buf_x[1:].reshape(n, d)
    assert q.ctypes.data % 8 == 4
    for name, ref in (("l2_sqr", ref_l2), ("dot", ref_dot)):
        want, mag = ref(q, x)
        assert_close(_core._testing._kernel(level, name + "_rows", q, x, guard=False), want, mag)


@pytest.mark.parametrize("level", LEVELS)
def test_f32_large_magnitudes_and_zero(level: str):
    d = 1000
    q = np.zeros(d, np.float32)
    x = np.zeros((5, d), np.float32)
    assert _core._testing._kernel(level, "dot", q, x[0]) == 0.0
    assert np.all(_core._testing._kernel(level, "l2_sqr_rows", q, x) == 0.0)
    x[:, -1] = 1e18  # a single last (tail) element must not be dropped
    assert np.allclose(_core._testing._kernel(level, "l2_sqr_rows", q, x), 1e36, rtol=1e-6)


# --- packed many-to-many ------------------------------------------------------------------------------

GEMM_SHAPES = [(1, 1), (1, 33), (5, 5), (5, 257), (33, 17), (33, 257), (257, 1), (257, 33), (257, 257)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("d", DIMS)
def test_pack_rows_layout(level: str, d: int):
    rng = np.random.default_rng(d + 1)
    R = _core._testing._kernel_panel_rows(level)
    for n in (1, R - 1, R, R + 3, 2 * R + 5):
        if n < 1:
            continue
        x = rand(rng, n, d)
        got = _core._testing._kernel(level, "pack_rows", x)
        panels = -(-n // R)
        assert got.shape == (panels * R * d,)
        padded = np.zeros((panels * R, d), np.float32)
        padded[:n] = x
        want = padded.reshape(panels, R, d).transpose(0, 2, 1).reshape(-1)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("d", DIMS)
def test_dot_packed(level: str, d: int):
    rng = np.random.default_rng(d + 2)
    for nq, n in GEMM_SHAPES:
        if level == "scalar" and nq * n * d > 10_000_000:
            continue  # the reference level is slow; its loop has no tiles to get wrong
        q = rand(rng, nq, d)
        x = rand(rng, n, d)
        got = _core._testing._kernel_dot_packed(level, q, x, d, n)
        prod = q.astype(np.float64)[:, None, :] * x.astype(np.float64)[None, :, :]
        assert got.shape == (nq, n)
        assert_close(got, prod.sum(-1), np.abs(prod).sum(-1))


@pytest.mark.parametrize("level", LEVELS)
def test_dot_packed_strides(level: str):
    """Query stride ldq > d (only d columns used) and output stride ldo > n (padding untouched)."""
    rng = np.random.default_rng(3)
    for d, nq, n in ((17, 13, 35), (384, 9, 50), (1000, 7, 19)):
        q_wide = rand(rng, nq, d + 5)
        x = rand(rng, n, d)
        ldo = n + 11
        got = _core._testing._kernel_dot_packed(level, q_wide, x, d, ldo)
        prod = q_wide[:, :d].astype(np.float64)[:, None, :] * x.astype(np.float64)[None, :, :]
        assert_close(got[:, :n], prod.sum(-1), np.abs(prod).sum(-1))
        assert np.all(got[:, n:] == FILL)


@pytest.mark.parametrize("level", LEVELS)
def test_dot_packed_exact_on_small_integers(level: str):
    """Integer data: every partial sum is exact in float32, so every level must agree bit for bit."""
    rng = np.random.default_rng(4)
    nq, n, d = 37, 71, 300
    q = rng.integers(-8, 9, (nq, d)).astype(np.float32)
    x = rng.integers(-8, 9, (n, d)).astype(np.float32)
    got = _core._testing._kernel_dot_packed(level, q, x, d, n)
    np.testing.assert_array_equal(got, (q.astype(np.int64) @ x.astype(np.int64).T).astype(np.float32))


# --- float16 storage ----------------------------------------------------------------------------------


def f16_bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint16)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("d", DIMS)
def test_f16_kernels(level: str, d: int):
    rng = np.random.default_rng(d + 3)
    q = rand(rng, d)
    for n in ROW_COUNTS:
        x = rand(rng, n, d)
        h = f16_bits(x)
        xd = h.view(np.float16).astype(np.float64)
        for name, ref in (("l2_sqr_f16", ref_l2), ("dot_f16", ref_dot)):
            want, mag = ref(q, xd)
            assert_close(_core._testing._kernel(level, name, q, h[0]), want[0], mag[0])
            assert_close(_core._testing._kernel(level, name + "_rows", q, h), want, mag)


def special_f32() -> np.ndarray:
    """Values that stress binary16 rounding: subnormals, overflow, halfway cases, inf, NaN payloads."""
    bits = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000,
            0xFFBFFFFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000, 0x33000000, 0x33000001, 0x337FFFFF,
            0x38800000, 0x387FC000, 0x387FE000, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x00000001, 0x80800000]
    rng = np.random.default_rng(5)
    rand_bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32)
    # Random values in and around the binary16 range, plus exact halfway points between two halves.
    around = (rng.standard_normal(4000) * np.exp2(rng.integers(-26, 18, 4000))).astype(np.float32)
    # Exact midpoints between neighbouring binary16 normals (ties must round to even).
    mids = ((np.arange(0x0400, 0x7BFF, 13, dtype=np.uint32) << 13) + 0x38000000 + 0x1000).view(np.float32)
    return np.concatenate([np.array(bits, np.uint32).view(np.float32), rand_bits.view(np.float32), around, mids])


@pytest.mark.parametrize("level", LEVELS)
def test_f32_to_f16_bit_exact(level: str):
    x = special_f32()
    for n in (len(x), 1, 7, 15, 17):  # lengths that leave every tail size
        got = _core._testing._kernel(level, "f32_to_f16", x[:n])
        ref = _core._testing._kernel("scalar", "f32_to_f16", x[:n])
        np.testing.assert_array_equal(got, ref)
    finite_or_inf = ~np.isnan(x)
    with np.errstate(over="ignore"):  # NumPy's own rounding is the reference for everything but NaN
        np.testing.assert_array_equal(_core._testing._kernel(level, "f32_to_f16", x)[finite_or_inf],
                                      f16_bits(x[finite_or_inf]))
    nan_out = _core._testing._kernel(level, "f32_to_f16", x[~finite_or_inf])
    assert np.all((nan_out & 0x7FFF) == 0x7E00)  # quiet NaN, sign kept
    np.testing.assert_array_equal(nan_out >> 15, (x[~finite_or_inf].view(np.uint32) >> 31).astype(np.uint16))


@pytest.mark.parametrize("level", LEVELS)
def test_f16_to_f32_all_patterns(level: str):
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = _core._testing._kernel(level, "f16_to_f32", h)
    want = _core._testing._kernel("scalar", "f16_to_f32", h)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    not_nan = (h & 0x7FFF) <= 0x7C00
    np.testing.assert_array_equal(got[not_nan], h[not_nan].view(np.float16).astype(np.float32))
    for n in (1, 7, 9, 23):
        np.testing.assert_array_equal(_core._testing._kernel(level, "f16_to_f32", h[-n:]), got[-n:])


# --- sq8 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("d", DIMS)
def test_sq8_kernels(level: str, d: int):
    rng = np.random.default_rng(d + 4)
    q = rand(rng, d)
    scale = (rng.random(d) * 0.05 + 0.001).astype(np.float32)
    for n in ROW_COUNTS:
        codes = rng.integers(0, 256, (n, d)).astype(np.uint8)
        xhat = codes.astype(np.float64) * scale.astype(np.float64)
        t = q.astype(np.float64) - xhat
        want = (t * t).sum(-1)
        mag = ((np.abs(q.astype(np.float64)) + np.abs(xhat)) ** 2).sum(-1)
        assert_close(_core._testing._kernel(level, "l2_sqr_sq8", q, codes[0], scale), want[0], mag[0])
        assert_close(_core._testing._kernel(level, "l2_sqr_sq8_rows", q, codes, scale), want, mag)
        p = q.astype(np.float64) * codes.astype(np.float64)
        assert_close(_core._testing._kernel(level, "dot_u8", q, codes[0]), p[0].sum(), np.abs(p[0]).sum())
        assert_close(_core._testing._kernel(level, "dot_u8_rows", q, codes), p.sum(-1), np.abs(p).sum(-1))


# --- selection ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_indices_at_least(level: str):
    rng = np.random.default_rng(6)
    for n in (0, 1, 7, 8, 15, 16, 17, 33, 256, 1000):
        x = rand(rng, max(n, 1))[:n]
        if n > 3:
            x[2] = np.nan  # never selected
        for bound in (-np.inf, -0.5, 0.0, 1.0, 2.5, np.inf, np.nan):
            got = _core._testing._kernel(level, "indices_at_least", x, np.array([bound], np.float32))
            with np.errstate(invalid="ignore"):
                want = np.flatnonzero(x >= np.float32(bound))
            np.testing.assert_array_equal(got, want, err_msg=f"n={n} bound={bound}")
    x = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(_core._testing._kernel(level, "indices_at_least", x, np.array([42.0], np.float32)),
                                  np.arange(42, 100))


# --- dispatch -----------------------------------------------------------------------------------------


def test_set_simd_level_switches_and_rejects():
    for level in LEVELS:
        af.set_simd_level(level)
        assert af.simd_level() == level
    with pytest.raises(ValueError):
        af.set_simd_level("sse9")
    missing = [lv for lv in ("neon", "avx2", "avx512") if lv not in LEVELS]
    for level in missing:
        with pytest.raises(ValueError):
            af.set_simd_level(level)
    with pytest.raises(ValueError):
        _core._testing._kernel("scalar", "no_such_kernel", np.zeros(3, np.float32))


def _level_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("ANNFORGE_SIMD", None)
    if env_value is not None:
        env["ANNFORGE_SIMD"] = env_value
    out = subprocess.run([sys.executable, "-c", "import annforge; print(annforge.simd_level())"], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_env_var_lowers_level():
    detected = _core.detected_simd_level()
    assert _level_in_subprocess(None) == detected
    for level in LEVELS:
        assert _level_in_subprocess(level) == level
    # It can only lower: an unknown value, or one above what the CPU runs, leaves the detected level.
    assert _level_in_subprocess("bogus") == detected
    for level in ("avx2", "avx512", "neon"):
        if level not in LEVELS:
            assert _level_in_subprocess(level) == detected


# --- FlatIndex across levels --------------------------------------------------------------------------


def _flat_results(level: str, x: np.ndarray, q: np.ndarray, metric: str, k: int):
    af.set_simd_level(level)
    index = af.FlatIndex(x.shape[1], metric=metric)
    index.add(x)
    single = [index.search(q[i : i + 1], k=k, num_threads=1) for i in range(min(len(q), 6))]
    return index.search(q, k=k, num_threads=1), single


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_identical_across_levels_exact_data(metric: str):
    """Small-integer data: every distance is exact at every level, so ids and distances must match."""
    rng = np.random.default_rng(11)
    d = 97
    x = rng.integers(-3, 4, (3000, d)).astype(np.float32)
    q = rng.integers(-3, 4, (70, d)).astype(np.float32)
    if metric == "ip":  # keep 1 - <q, x> exact: small dots
        x, q = x / 8, q / 8
    results = {lv: _flat_results(lv, x, q, metric, k=10) for lv in LEVELS}
    base_batch, base_single = results["scalar"]
    for lv, (batch, single) in results.items():
        np.testing.assert_array_equal(batch[0], base_batch[0], err_msg=lv)
        np.testing.assert_array_equal(batch[1], base_batch[1], err_msg=lv)
        for (ids, dist), (bids, bdist) in zip(single, base_single):
            np.testing.assert_array_equal(ids, bids, err_msg=lv)
            np.testing.assert_array_equal(dist, bdist, err_msg=lv)
        np.testing.assert_array_equal(batch[0][: len(single)], np.vstack([s[0] for s in single]), err_msg=lv)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_identical_across_levels_float_data(metric: str):
    """Gaussian data (no near-ties at this size): ids must be identical across levels and exact."""
    rng = np.random.default_rng(12)
    d = 384
    x = rand(rng, 2000, d)
    q = rand(rng, 40, d)
    k = 5
    from conftest import brute_force

    ref = np.argsort(brute_force(x, q, metric), axis=1, kind="stable")[:, :k]
    results = {lv: _flat_results(lv, x, q, metric, k=k) for lv in LEVELS}
    for lv, (batch, single) in results.items():
        np.testing.assert_array_equal(batch[0], ref, err_msg=lv)
        np.testing.assert_array_equal(np.vstack([s[0] for s in single]), ref[: len(single)], err_msg=lv)
        np.testing.assert_allclose(batch[1], results["scalar"][0][1], rtol=1e-5, atol=1e-4, err_msg=lv)


# --- fast Walsh-Hadamard transform ---------------------------------------------------------------------


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("level", LEVELS)
def test_fwht_matches_the_hadamard_matrix(level: str):
    rng = np.random.default_rng(5)
    for n in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]:
        h = _hadamard(n)
        # Small integers: every partial sum is exact, so every level must agree bit for bit.
        xi = rng.integers(-8, 9, n).astype(np.float32)
        np.testing.assert_array_equal(_core._testing._kernel(level, "fwht", xi), (h @ xi.astype(np.float64)).astype(np.float32))
        x = rng.standard_normal(n).astype(np.float32)
        want = h @ x.astype(np.float64)
        got = _core._testing._kernel(level, "fwht", x)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.sqrt(n) * (1 + np.log2(n)))
    with pytest.raises(ValueError, match="power-of-two"):
        _core._testing._kernel(level, "fwht", np.zeros(24, np.float32))
