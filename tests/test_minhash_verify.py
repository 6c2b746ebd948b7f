"""MinHashLSH(verify=True): the check's cut and banding (binomial model), what the queries return, and pair
recall / precision against exact Jaccard compared with plain banding and with datasketch."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import annforge as af
from annforge._lsh_verify import RECALL_LOSS, verify_bands_rows, verify_min_matches

datasketch = pytest.importorskip("datasketch")


def _binom_cdf_exact(n: int, p: Fraction, k: int) -> Fraction:
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), t=st.integers(0, 100), w=st.integers(0, 20))
def test_cut_is_the_smallest_count_whose_posterior_passes(n, t, w):
    """Exact rational arithmetic: m is the smallest count with P(Binomial(n + 1, t) <= m) >= fp / (fp +
    fn), or num_perm when no count up to num_perm gets there (identical signatures always pass)."""
    threshold, fp = Fraction(t, 100), Fraction(w, 20)
    m = verify_min_matches(float(threshold), n, float(fp), float(1 - fp))
    assert 0 <= m <= n
    tol = Fraction(1, 10**11)  # the float search may land one count early within 1e-12 of fp
    if m < n:
        assert _binom_cdf_exact(n + 1, threshold, m) >= fp - tol
    if m > 0:
        assert _binom_cdf_exact(n + 1, threshold, m - 1) < fp + tol


@pytest.mark.parametrize("n,t,weights", [(32, 0.5, (0.5, 0.5)), (64, 0.8, (0.5, 0.5)), (64, 0.7, (0.2, 0.8)),
                                         (128, 0.8, (0.5, 0.5)), (100, 0.9, (0.7, 0.3))])
def test_cut_minimises_the_weighted_fp_fn_integral(n, t, weights):
    """datasketch's criterion applied to the check: w_fp * int_0^t P(keep|s) + w_fn * int_t^1 P(drop|s) is
    smallest at the chosen cut among every possible one (numerical integration, no shared code)."""
    s = np.linspace(0.0, 1.0, 20001)
    pmf = np.array([[math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(n + 1)] for x in s])
    survival = pmf[:, ::-1].cumsum(axis=1)[:, ::-1]  # P(M >= k | s), k = 0..n
    below, above = s <= t, s >= t

    def cost(k):
        keep = survival[:, k] if k <= n else np.zeros_like(s)
        return weights[0] * np.trapezoid(keep[below], s[below]) + weights[1] * np.trapezoid(1 - keep[above], s[above])

    costs = [cost(k) for k in range(n + 2)]
    m = verify_min_matches(t, n, *weights)
    assert costs[m] <= min(costs) + 1e-9, (m, int(np.argmin(costs)))


@pytest.mark.parametrize("n,t", [(64, 0.6), (128, 0.5), (128, 0.8), (128, 0.9), (256, 0.8)])
def test_banding_loses_at_most_the_allowed_share_and_longer_bands_would_not(n, t):
    m = verify_min_matches(t, n, 0.5, 0.5)
    bands, rows = verify_bands_rows(t, n, m)
    assert bands == n // rows
    s = np.linspace(t, 1.0, 4001)
    keep = np.array([sum(math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(m, n + 1)) for x in s])

    def loss(r):
        b = n // r
        return np.trapezoid(keep * (1 - s**r) ** b, s) / np.trapezoid(keep, s)

    assert loss(rows) <= RECALL_LOSS * 1.001
    assert loss(rows + 1) > RECALL_LOSS
    # The banding feeds the check: it catches more than datasketch's banding, which is the filter itself.
    ds = datasketch.MinHashLSH(threshold=t, num_perm=n)
    assert rows < ds.r


def test_documented_parameters_and_edges():
    lsh = af.MinHashLSH(threshold=0.8, num_perm=128, verify=True)
    assert (lsh.bands, lsh.rows, lsh.min_matches, lsh.verify) == (16, 8, 103, True)
    plain = af.MinHashLSH(threshold=0.8, num_perm=128)
    assert (plain.bands, plain.rows, plain.min_matches, plain.verify) == (9, 13, None, False)
    assert af.MinHashLSH(threshold=1.0, num_perm=64, verify=True).min_matches == 64  # identical sets pass
    assert af.MinHashLSH(threshold=0.0, num_perm=64, verify=True).min_matches == 0
    assert af.MinHashLSH(0.8, 128, params=(4, 5), verify=True).bands == 4
    # A heavier false-negative weight lowers the cut; a heavier false-positive weight raises it.
    assert af.MinHashLSH(0.8, 128, weights=(0.2, 0.8), verify=True).min_matches < 103
    assert af.MinHashLSH(0.8, 128, weights=(0.8, 0.2), verify=True).min_matches > 103


def test_bad_parameters():
    for bad in ("yes", 1, None, 0.5):
        with pytest.raises(TypeError):
            af.MinHashLSH(0.8, 128, verify=bad)
    for weights in ((-0.5, 1.5), (0.3, 0.3), (float("nan"), 0.5), (1.0,)):
        with pytest.raises(ValueError):
            af.MinHashLSH(0.8, 128, weights=weights, verify=True)
    for threshold in (-0.1, 1.5):
        with pytest.raises(ValueError):
            af.MinHashLSH(threshold, 128, verify=True)
    lsh = af.MinHashLSH(0.8, 64, verify=True)
    with pytest.raises(TypeError):
        lsh.candidate_pairs(min_score="0.5")
    with pytest.raises(ValueError):
        lsh.candidate_pairs(min_score=float("nan"))
    with pytest.raises(TypeError):
        lsh.query_with_scores(np.zeros(64, dtype=np.uint64), min_score=True)
    with pytest.raises(TypeError):
        af.dedup([["a"], ["a"]], verify="no")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(2, 5), threshold=st.sampled_from([0.3, 0.5, 0.7, 0.8]))
def test_verified_answers_equal_band_then_count_by_hand(seed, vocab, threshold):
    """Signatures from a tiny alphabet (many collisions): every verified answer is exactly "shares a band
    and has >= min_matches equal values", for query, query_batch, query_with_scores and candidate_pairs."""
    rng = np.random.default_rng(seed)
    n, num_perm = 40, 16
    sigs = rng.integers(0, vocab, (n, num_perm)).astype(np.uint64)
    lsh = af.MinHashLSH(threshold, num_perm, verify=True)
    keys = np.arange(100, 100 + n)
    lsh.insert_batch(keys, sigs)
    b, r, m = lsh.bands, lsh.rows, lsh.min_matches

    def passes(x, y):
        share = any(np.array_equal(x[i * r:(i + 1) * r], y[i * r:(i + 1) * r]) for i in range(b))
        return share and int((x == y).sum()) >= m

    batch = lsh.query_batch(sigs)
    for i in range(n):
        want = {int(keys[j]) for j in range(n) if passes(sigs[i], sigs[j])}
        got = lsh.query(sigs[i])
        assert set(got) == want and len(got) == len(want)
        scored = lsh.query_with_scores(sigs[i])
        assert [k for k, _ in scored] == got
        assert all(s >= m / num_perm - 1e-7 for _, s in scored)
        assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
        assert batch[i].tolist() == got
    f, g, scores = lsh.candidate_pairs()
    want = {(int(keys[i]), int(keys[j])) for i in range(n) for j in range(i + 1, n) if passes(sigs[i], sigs[j])}
    assert set(zip(f.tolist(), g.tolist())) == want and len(f) == len(want)
    assert np.all(scores >= m / num_perm - 1e-7)
    # An explicit min_score still overrides the check.
    assert len(lsh.candidate_pairs(min_score=-1)[0]) >= len(f)


def test_verify_survives_save_load_and_pickle(tmp_path):
    import pickle

    sigs = af.minhash_signatures([["a", "b", "c", "d"], ["a", "b", "c", "e"], ["x", "y"]], num_perm=64)
    lsh = af.MinHashLSH(0.5, 64, verify=True)
    lsh.insert_batch([0, 1, 2], sigs)
    lsh.save(tmp_path / "v.afx")
    for other in (af.load(str(tmp_path / "v.afx")), pickle.loads(pickle.dumps(lsh)),
                  af.MinHashLSH.from_bytes(lsh.to_bytes())):
        assert (other.verify, other.min_matches, other.bands, other.rows) == (True, lsh.min_matches, lsh.bands, lsh.rows)
        assert other.query(sigs[0]) == lsh.query(sigs[0])
        assert [a.tolist() for a in other.candidate_pairs()] == [a.tolist() for a in lsh.candidate_pairs()]
    plain = af.MinHashLSH(0.5, 64)
    plain.insert_batch([0, 1, 2], sigs)
    assert af.MinHashLSH.from_bytes(plain.to_bytes()).verify is False


def _pairs_with_known_jaccard(rng, n_pairs=500, size=60):
    """Pairs of sets from disjoint vocabularies, Jaccard drawn uniformly from [0.5, 1] (so pairs across
    pairs have Jaccard 0): returns token lists and the exact Jaccard of each within-pair."""
    docs, jac = [], []
    for p in range(n_pairs):
        target = rng.uniform(0.5, 1.0)
        common = int(round(2 * size * target / (1 + target)))
        common = min(common, size)
        shared = [f"p{p}c{i}" for i in range(common)]
        a = shared + [f"p{p}a{i}" for i in range(size - common)]
        b = shared + [f"p{p}b{i}" for i in range(size - common)]
        docs += [a, b]
        jac.append(common / (2 * size - common))
    return docs, np.array(jac)


def test_verified_pairs_beat_plain_banding_and_datasketch_on_recall_and_precision():
    """Synthetic sets with exact Jaccard: over 6 seeds of the hash functions, the verified pairs'
    mean recall and mean precision (truth: Jaccard >= 0.8) are both above plain banding's and
    datasketch's candidate pairs, and recall by a clear margin."""
    docs, jac = _pairs_with_known_jaccard(np.random.default_rng(11))
    truth = {(2 * p, 2 * p + 1) for p in np.nonzero(jac >= 0.8)[0].tolist()}
    assert 100 < len(truth) < 400
    enc = [[t.encode() for t in d] for d in docs]
    keys = np.arange(len(docs))
    stats = {"verified": [], "plain": [], "datasketch": []}

    def score(found):
        hit = len(found & truth)
        return hit / len(truth), hit / max(1, len(found))

    for seed in range(1, 7):
        sigs = af.minhash_signatures(docs, 128, seed=seed)
        for name, verify in (("verified", True), ("plain", False)):
            lsh = af.MinHashLSH(0.8, 128, verify=verify)
            lsh.insert_batch(keys, sigs)
            f, g, _ = lsh.candidate_pairs()
            stats[name].append(score(set(zip(f.tolist(), g.tolist()))))
        hv = af.minhash_signatures(enc, 128, seed=seed, hashfunc="sha1_32")  # bit-identical to datasketch
        ds = datasketch.MinHashLSH(threshold=0.8, num_perm=128)
        mhs = [datasketch.MinHash(num_perm=128, seed=seed, hashvalues=row, scheme="affine32") for row in hv]
        for i, m in enumerate(mhs):
            ds.insert(i, m)
        found = {(min(i, j), max(i, j)) for i, m in enumerate(mhs) for j in ds.query(m) if j != i}
        stats["datasketch"].append(score(found))
    mean = {k: np.mean(v, axis=0) for k, v in stats.items()}
    for other in ("plain", "datasketch"):
        assert mean["verified"][0] > mean[other][0] + 0.05, mean
        assert mean["verified"][1] > mean[other][1], mean


def test_verified_query_takes_minhash_objects_and_refuses_mixed_schemes():
    docs = [["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "f"], ["x", "y"]]
    sigs = af.minhash_signatures(docs, num_perm=64)
    lsh = af.MinHashLSH(0.5, 64, verify=True)
    lsh.insert_batch([0, 1, 2], sigs)
    m = af.MinHash(num_perm=64)
    m.update_batch(docs[0])
    assert lsh.query(m) == lsh.query(sigs[0]) == [k for k, _ in lsh.query_with_scores(sigs[0])]
    assert lsh.query(sigs[0])[0] == 0  # itself first: best first
    wide = af.minhash_signatures(docs, num_perm=64, scheme="mersenne61")
    old = af.MinHash(num_perm=64, scheme="mersenne61")
    old.update_batch(docs[0])
    checked = af.MinHashLSH(0.5, 64, verify=True, scheme="cminhash")
    checked.insert_batch([0, 1, 2], sigs)
    for bad in (wide[0], old):
        with pytest.raises(ValueError, match="different MinHash schemes"):
            checked.query(bad)


def test_verified_banding_lowers_datasketchs_weighted_error_below_the_check_on_its_banding():
    """Why dedup defaults to verify=True: under datasketch's own criterion (0.5 FP + 0.5 FN, Jaccard
    uniform) the verified filter errs less than datasketch's banding alone and than that banding followed
    by the same check (the pair step of dedup(verify=False))."""
    n, t = 128, 0.8
    s = np.linspace(0.0, 1.0, 4001)
    m = verify_min_matches(t, n, 0.5, 0.5)
    check = np.array([sum(math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(m, n + 1)) for x in s])

    def error(keep):
        return 0.5 * np.trapezoid(keep[s <= t], s[s <= t]) + 0.5 * np.trapezoid(1 - keep[s >= t], s[s >= t])

    plain, verified = af.MinHashLSH(t, n), af.MinHashLSH(t, n, verify=True)
    banding = lambda lsh: 1 - (1 - s**lsh.rows) ** lsh.bands  # noqa: E731
    alone, checked, ours = error(banding(plain)), error(banding(plain) * check), error(banding(verified) * check)
    assert ours < checked < alone, (ours, checked, alone)
