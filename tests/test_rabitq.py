"""The RaBitQ codec (cpp/include/annforge/codec/rabitq.h) through its test hooks in `_core._testing`.

Checks the rotation, the bit-plane kernels at every SIMD level against a NumPy reference, the extended-code
search against an exhaustive sweep, the estimator's bias over many random rotations, the coverage of its
error bound on random and (when cached) real embeddings, that more bits give smaller errors, and errors on
bad input. Estimates are integer kernel sums followed by the same float arithmetic, so every SIMD level
must return bit-identical results.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import annforge as af
from annforge._core import _testing as T

LEVELS = af.available_simd_levels()
# Kernel tables to compare: every level, plus the AVX-512 variants by name where they run here.
KERNELS = T._rabitq_kernel_variants()
METRICS = ["l2", "ip", "cosine"]
ROTATIONS = ["dense", "hadamard"]
REAL_BASE = os.path.expanduser("~/.cache/annforge-dev/debian-minilm/base.npy")
REAL_QUERIES = os.path.expanduser("~/.cache/annforge-dev/debian-minilm/queries.npy")
# Float32 factors after the bit planes: |r|^2 (l2) or <r, c>, |r|/a1, err1, #positive signs, and for
# bits > 1 |r|/a, err, sum u, scale (codec/rabitq.h).
ADD, SIGN_INV_A, SIGN_COUNT, INV_A = 0, 1, 3, 4


@pytest.fixture(autouse=True)
def _restore_level():
    before = af.simd_level()
    yield
    af.set_simd_level(before)


def factors(codes: np.ndarray, codec) -> np.ndarray:
    return np.ascontiguousarray(codes[:, -4 * codec.num_factors:]).view(np.float32)


def cosine_to_code(f: np.ndarray, bits: int) -> np.ndarray:
    """a = <x_bar, o> of each full code of an l2 codec, from |r|^2 and |r|/a."""
    return np.sqrt(f[:, ADD]) / f[:, INV_A if bits > 1 else SIGN_INV_A]


def true_distance(metric: str, x: np.ndarray, q: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "l2":
        return ((x - q) ** 2).sum(axis=1)
    if metric == "ip":
        return 1.0 - x @ q
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1.0 - xn @ (q / np.linalg.norm(q))


def codec_for(dim, metric, bits, seed, data, rotation="dense"):
    c = T._RaBitQCodec(dim, metric, bits, seed, rotation=rotation)
    c.fit(data)
    return c


# --- rotation -------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(dim=st.integers(1, 600), seed=st.integers(0, 2**64 - 1), rotation=st.sampled_from(ROTATIONS))
def test_rotation_has_orthonormal_columns(dim, seed, rotation):
    c = T._RaBitQCodec(dim, "l2", 1, seed, rotation=rotation)
    r = c.rotation().astype(np.float64)
    assert r.shape == (c.padded_dim, dim)
    assert c.padded_dim % 64 == 0 and dim <= c.padded_dim < dim + 64
    assert np.abs(r.T @ r - np.eye(dim)).max() < 1e-5
    if dim == c.padded_dim:
        assert np.abs(r @ r.T - np.eye(dim)).max() < 1e-5


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_rotation_depends_on_seed_only(rotation):
    a, b, c = (T._RaBitQCodec(64, "l2", 1, s, rotation=rotation).rotation() for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # Entries of a random 64 x 64 rotation have mean 0 and variance 1/64.
    assert abs(a.mean()) < 0.02 and abs(a.var() * 64 - 1) < 0.1
    assert not np.allclose(a, T._RaBitQCodec(64, "l2", 1, 7, rotation=[r for r in ROTATIONS if r != rotation][0]).rotation())


@pytest.mark.parametrize("dim", [64, 100, 384, 1000])
def test_hadamard_rotation_spreads_every_coordinate(dim):
    """No entry of the structured rotation is far above a dense one's (~sqrt(2 log(D dim) / D)): a unit vector along
    any axis, or a sparse one, lands spread over all padded_dim coordinates (what the estimator's error
    analysis needs). A transform that left part of the entries unmixed would put 0 or 1 entries here."""
    c = T._RaBitQCodec(dim, "l2", 1, 3, rotation="hadamard")
    r = c.rotation().astype(np.float64)
    D = c.padded_dim
    assert np.abs(r).max() < 1.5 * np.sqrt(2 * np.log(D * dim) / D)  # ~ the max of D * dim normals of variance 1/D
    assert (np.abs(r) > 1e-6).mean() > 0.95  # dense: (almost) every coordinate of every column reached


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("metric", METRICS)
def test_decode_inverts_the_rotation(rotation, metric):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((40, 100)).astype(np.float32)
    c = codec_for(100, metric, 8, 2, x, rotation)
    want = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    err = np.linalg.norm(c.decode(c.encode(x)) - want, axis=1) / np.linalg.norm(want - c.centroid, axis=1)
    assert err.max() < 0.02  # 8-bit codes: ~0.5% relative error; a wrong inverse gives ~1.4


# --- kernels --------------------------------------------------------------------------------------------
def reference_dot(codes, nwords, cbits, qplanes):
    """sum_a 2^(cbits-1-a) sum_j 2^j popcount(plane_a & qplane_j), with the bits expanded in NumPy."""
    def bits_of(words):
        return np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little").astype(np.int64)
    q = sum((1 << j) * bits_of(qplanes[j]) for j in range(len(qplanes)))
    out = []
    for row in codes:
        u = sum((1 << (cbits - 1 - a)) * bits_of(row[a * nwords:(a + 1) * nwords]) for a in range(cbits))
        out.append(int((u * q).sum()))
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("level", KERNELS)
@settings(max_examples=40, deadline=None)
@given(nwords=st.integers(1, 19), cbits=st.integers(1, 8), qbits=st.integers(1, 16), n=st.integers(0, 9),
       pad=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_kernels_match_reference(level, nwords, cbits, qbits, n, pad, seed):
    assume(64 * nwords * (2**cbits - 1) * (2**qbits - 1) < 2**32)  # the codec keeps sums in 32 bits
    rng = np.random.default_rng(seed)
    stride = cbits * nwords + pad
    codes = rng.integers(0, 2**64, size=(n, stride), dtype=np.uint64)
    qplanes = rng.integers(0, 2**64, size=(qbits, nwords), dtype=np.uint64)
    multi = T._rabitq_kernel(level, "multibit_dot", codes, nwords, cbits, qplanes)
    assert np.array_equal(multi.astype(np.int64), reference_dot(codes, nwords, cbits, qplanes))
    binary = T._rabitq_kernel(level, "binary_dot", codes, nwords, cbits, qplanes)
    assert np.array_equal(binary.astype(np.int64), reference_dot(codes, nwords, 1, qplanes))
    rows = rng.integers(0, max(n, 1), size=rng.integers(0, 12) if n else 0).astype(np.uint32)
    picked = T._rabitq_kernel(level, "binary_dot_rows", codes, nwords, cbits, qplanes, rows=rows)
    assert np.array_equal(picked.astype(np.int64), reference_dot(codes[rows], nwords, 1, qplanes))


@pytest.mark.parametrize("level", KERNELS)
@settings(max_examples=30, deadline=None)
@given(nwords=st.integers(1, 9), qbits=st.integers(1, 8), n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_binary_dot_rows_short_codes(level, nwords, qbits, n, seed):
    # The VPOPCNTDQ table packs four codes' sums into 16-bit fields when they fit (codes of <= 8 words):
    # every row count around the groups of four, sums near the 16-bit limit, repeated and reordered rows.
    rng = np.random.default_rng(seed)
    stride = nwords + 2
    codes = rng.integers(0, 2**64, size=(n, stride), dtype=np.uint64)
    codes[rng.random(n) < 0.3, :nwords] = np.uint64(2**64 - 1)
    qplanes = rng.integers(0, 2**64, size=(qbits, nwords), dtype=np.uint64)
    qplanes[:, rng.random(nwords) < 0.5] = np.uint64(2**64 - 1)
    rows = rng.integers(0, n, size=rng.integers(0, 3 * n)).astype(np.uint32)
    got = T._rabitq_kernel(level, "binary_dot_rows", codes, nwords, 1, qplanes, rows=rows)
    assert np.array_equal(got.astype(np.int64), reference_dot(codes[rows], nwords, 1, qplanes))


def test_kernel_extremes_all_ones():
    # Every bit set: the largest sums the kernels produce (255 * 255 per dimension), no byte overflow.
    nwords = 13
    codes = np.full((2, 8 * nwords), np.uint64(2**64 - 1), dtype=np.uint64)
    qplanes = np.full((8, nwords), np.uint64(2**64 - 1), dtype=np.uint64)
    wide = np.full((16, 4), np.uint64(2**64 - 1), dtype=np.uint64)  # 16 query bits, 256 dims
    for level in KERNELS:
        got = T._rabitq_kernel(level, "multibit_dot", codes, nwords, 8, qplanes)
        assert list(got) == [255 * 255 * 64 * nwords] * 2
        got = T._rabitq_kernel(level, "binary_dot", codes, nwords, 8, qplanes)
        assert list(got) == [255 * 64 * nwords] * 2
        got = T._rabitq_kernel(level, "multibit_dot", codes[:, :32], 4, 8, wide)
        assert list(got) == [255 * 65535 * 256] * 2


def test_default_kernels_follow_the_active_level():
    for level in LEVELS:
        af.set_simd_level(level)
        assert T._rabitq_kernel_level() == ("scalar" if level == "neon" else level)
    assert set(LEVELS) <= set(KERNELS)
    assert ("avx512_plain" in KERNELS) == ("avx512" in LEVELS)


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_every_level_gives_identical_estimates(metric, bits, rotation):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((300, 200)).astype(np.float32)
    q = rng.standard_normal(200).astype(np.float32)
    c = codec_for(200, metric, bits, 5, x, rotation)
    codes = c.encode(x)
    results = {lv: c.estimate(q, codes, level=lv) for lv in KERNELS}
    for stage in (1, bits):
        base = c.estimate(q, codes, level="scalar", stage_bits=stage)
        for lv in KERNELS:
            got = c.estimate(q, codes, level=lv, stage_bits=stage)
            for a, b in zip(base, got):
                assert np.array_equal(a, b), lv
    assert all(np.array_equal(results["scalar"][0], r[0]) for r in results.values())


# --- codes ----------------------------------------------------------------------------------------------
def best_cosine(o: np.ndarray, bits: int) -> float:
    """max over t of <y, o>/|y|, y_i = min(floor(t o_i), K - 1) + 1/2: every critical t, exhaustively."""
    k_max = 2 ** (bits - 1)
    d = len(o)
    if k_max == 1:
        return float(o.sum() / np.sqrt(d))
    m = np.arange(1, k_max)
    ts = (m[None, :] / np.maximum(o[:, None], 1e-300)).ravel()
    order = np.argsort(ts, kind="stable")
    ip = 0.5 * o.sum() + np.concatenate([[0.0], np.cumsum(np.repeat(o, k_max - 1)[order])])
    sq = 0.25 * d + np.concatenate([[0.0], np.cumsum(2.0 * np.tile(m, d)[order])])
    return float((ip / np.sqrt(sq)).max())


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_extended_code_search_finds_the_best_rescaling(bits, rotation):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal((60, 128)).astype(np.float32) * rng.uniform(0.1, 3, size=(60, 1)).astype(np.float32)
    c = codec_for(128, "l2", bits, 11, x, rotation)
    f = factors(c.encode(x), c)
    a = cosine_to_code(f, bits)
    r = (x.astype(np.float64) - c.centroid) @ c.rotation().astype(np.float64).T
    for i in range(len(x)):
        o = np.abs(r[i]) / np.linalg.norm(r[i])
        assert a[i] >= best_cosine(o, bits) - 1e-5
        assert a[i] <= 1.0 + 1e-6
    assert np.allclose(f[:, ADD], (r ** 2).sum(axis=1), rtol=1e-4)


@pytest.mark.parametrize("rotation", ROTATIONS)
def test_codes_are_deterministic_and_one_bit_is_the_sign(rotation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    c = codec_for(64, "l2", 4, 9, x, rotation)
    a, b = c.encode(x), c.encode(x)
    assert np.array_equal(a, b) and a.shape == (50, c.record_bytes)
    assert c.record_bytes == 4 * 64 // 8 + 4 * 8 and c.num_factors == 8
    r = (x.astype(np.float64) - c.centroid) @ c.rotation().astype(np.float64).T
    sign_plane = np.unpackbits(a[:, :8], axis=1, bitorder="little").astype(bool)
    assert np.array_equal(sign_plane, r >= 0)
    assert np.array_equal(factors(a, c)[:, SIGN_COUNT], (r >= 0).sum(axis=1))
    assert T._RaBitQCodec(64, "l2", 1, 9).record_bytes == 64 // 8 + 4 * 4


@pytest.mark.parametrize("metric", METRICS)
def test_batched_and_single_row_encodes_agree(metric):
    # Batches rotate through the blocked GEMM kernel, single rows through dot_rows: the same codes up to
    # float rounding (a sign can flip only for a coordinate within rounding of 0).
    rng = np.random.default_rng(6)
    x = rng.standard_normal((150, 100)).astype(np.float32)
    c = codec_for(100, metric, 3, 4, x)
    batch = c.encode(x)
    single = np.vstack([c.encode(row[None, :]) for row in x])
    planes = c.record_bytes - 4 * c.num_factors
    differ = np.unpackbits(batch[:, :planes] ^ single[:, :planes], axis=1).sum()
    assert differ <= 0.001 * x.shape[0] * planes * 8
    assert np.allclose(factors(batch, c), factors(single, c), rtol=1e-3, atol=1e-4)


def test_first_stage_of_a_multibit_code_is_the_one_bit_estimate():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 96)).astype(np.float32)
    q = rng.standard_normal(96).astype(np.float32)
    one = codec_for(96, "ip", 1, 21, x)
    four = codec_for(96, "ip", 4, 21, x)
    e1 = one.estimate(q, one.encode(x), query_bits=4)
    e4 = four.estimate(q, four.encode(x), query_bits=4, stage_bits=1)
    for a, b in zip(e1, e4):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vector_at_the_centroid_is_exact():
    rng = np.random.default_rng(5)
    c = T._RaBitQCodec(40, "l2", 2, 1)
    centroid = rng.standard_normal(40).astype(np.float32)
    c.fit(centroid)
    q = rng.standard_normal(40).astype(np.float32)
    est, lo, hi = c.estimate(q, c.encode(centroid[None, :]))
    want = float(((q.astype(np.float64) - centroid) ** 2).sum())
    assert est[0] == pytest.approx(want, rel=1e-5) and lo[0] == est[0] and hi[0] == est[0]


# --- estimator: bias, bound, bits ----------------------------------------------------------------------
@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bits", [1, 3])
def test_estimator_is_unbiased_over_random_rotations(metric, bits, rotation):
    """For fixed vectors, the mean error over many seeds (rotations and query roundings) is ~0: each pair's
    mean error stays within 4.5 standard errors, while the spread itself is far from 0."""
    rng = np.random.default_rng(100 + bits)
    dim, pairs, seeds = 64, 12, 300
    x = rng.standard_normal((pairs, dim)).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32) + 0.3 * x[0]
    centroid = (0.2 * rng.standard_normal(dim)).astype(np.float32)
    truth = true_distance(metric, x, q)
    errors = np.empty((seeds, pairs))
    for s in range(seeds):
        c = T._RaBitQCodec(dim, metric, bits, 1000 + s, rotation=rotation)
        c.fit(centroid)
        errors[s] = c.estimate(q, c.encode(x))[0] - truth
    mean, sem = errors.mean(axis=0), errors.std(axis=0, ddof=1) / np.sqrt(seeds)
    assert (sem > 0).all()
    assert np.abs(mean / sem).max() < 4.5, mean / sem


def bound_coverage(metric, bits, x, queries, eps0, seed=0, stage_bits=None, rotation="dense"):
    c = codec_for(x.shape[1], metric, bits, seed, x, rotation)
    codes = c.encode(x)
    inside = total = 0
    for q in queries:
        est, lo, hi = c.estimate(q, codes, eps0=eps0, stage_bits=stage_bits)
        truth = true_distance(metric, x, q)
        slack = 1e-5 * (1 + np.abs(truth))  # float32 rounding of the returned numbers
        inside += int(((lo - slack <= truth) & (truth <= hi + slack)).sum())
        total += len(truth)
    return inside / total


@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bound_holds_on_random_data(metric, bits, rotation):
    rng = np.random.default_rng(bits)
    centres = rng.standard_normal((8, 128)) * 2
    x = (centres[rng.integers(0, 8, 2000)] + rng.standard_normal((2000, 128))).astype(np.float32)
    queries = (centres[rng.integers(0, 8, 10)] + rng.standard_normal((10, 128))).astype(np.float32)
    assert bound_coverage(metric, bits, x, queries, eps0=3.0, rotation=rotation) >= 0.99
    # The paper's eps0 = 1.9: about 94% in the worst case (query orthogonal to the residual).
    assert bound_coverage(metric, bits, x, queries, eps0=1.9, rotation=rotation) >= 0.9
    # A bound of width 0 holds on (almost) nothing: the check above is not vacuous.
    assert bound_coverage(metric, bits, x, queries, eps0=0.0, rotation=rotation) < 0.05


@pytest.mark.skipif(not (os.path.exists(REAL_BASE) and os.path.exists(REAL_QUERIES)),
                    reason="real embeddings not cached (tools/make_dev_embeddings.py)")
@pytest.mark.parametrize("rotation", ROTATIONS)
@pytest.mark.parametrize("bits", [1, 4])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_bound_holds_on_real_embeddings(metric, bits, rotation):
    x = np.load(REAL_BASE, mmap_mode="r")[:4000].astype(np.float32)
    queries = np.load(REAL_QUERIES, mmap_mode="r")[:20].astype(np.float32)
    assert bound_coverage(metric, bits, x, queries, eps0=3.0, rotation=rotation) >= 0.99
    if bits > 1:
        assert bound_coverage(metric, bits, x, queries, eps0=3.0, stage_bits=1, rotation=rotation) >= 0.99


def test_more_bits_give_smaller_errors():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1500, 128)).astype(np.float32)
    queries = rng.standard_normal((5, 128)).astype(np.float32)
    rmse = {}
    for bits in range(1, 9):
        c = codec_for(128, "l2", bits, 2, x)
        codes = c.encode(x)
        err = np.concatenate([c.estimate(q, codes)[0] - true_distance("l2", x, q) for q in queries])
        rmse[bits] = float(np.sqrt((err ** 2).mean()))
    for bits in range(1, 6):
        assert rmse[bits + 1] < 0.75 * rmse[bits], rmse
    assert rmse[8] < rmse[7] < rmse[6], rmse


# --- bad input ------------------------------------------------------------------------------------------
def test_bad_input_raises_value_error():
    with pytest.raises(ValueError):
        T._RaBitQCodec(0, "l2", 1, 0)
    for bits in (0, 9):
        with pytest.raises(ValueError):
            T._RaBitQCodec(8, "l2", bits, 0)
    with pytest.raises(ValueError):
        T._RaBitQCodec(8, "hamming", 1, 0)
    with pytest.raises(ValueError, match="rotation"):
        T._RaBitQCodec(8, "l2", 1, 0, rotation="givens")
    c = T._RaBitQCodec(8, "cosine", 2, 0)
    x = np.ones((3, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="fit"):
        c.encode(x)
    with pytest.raises(ValueError):
        c.fit(np.ones(7, dtype=np.float32))
    c.fit(x)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError):
        c.encode(bad)
    with pytest.raises(ValueError):
        c.encode(np.zeros((1, 8), dtype=np.float32))  # cosine of a zero vector
    with pytest.raises(ValueError):
        c.encode(np.ones((2, 9), dtype=np.float32))
    codes = c.encode(x)
    q = np.ones(8, dtype=np.float32)
    assert c.max_query_bits == 16 and c.default_query_bits == 5
    wide = T._RaBitQCodec(512, "l2", 8, 0)  # 512 * 255 * (2^15 - 1) < 2^32 <= 512 * 255 * (2^16 - 1)
    assert wide.max_query_bits == 15 and wide.default_query_bits == 11
    with pytest.raises(ValueError):
        T._RaBitQCodec(4097, "l2", 1, 0)
    for kwargs in ({"query_bits": 0}, {"query_bits": 17}, {"stage_bits": 3}, {"eps0": -1.0},
                   {"eps0": float("nan")}, {"level": "sse9"}):
        with pytest.raises(ValueError):
            c.estimate(q, codes, **kwargs)
    with pytest.raises(ValueError):
        c.estimate(q, codes[:, :-1])
    with pytest.raises(ValueError):
        c.estimate(np.full(8, np.inf, dtype=np.float32), codes)
    with pytest.raises(ValueError):
        c.estimate(np.zeros(8, dtype=np.float32), codes)
    with pytest.raises(ValueError):
        T._rabitq_kernel("scalar", "nope", np.zeros((1, 2), np.uint64), 1, 1, np.zeros((1, 1), np.uint64))
