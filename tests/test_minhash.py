"""MinHash signatures, datasketch compatibility, LSH / Forest recall, persistence and bad input."""

import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import annforge as af

datasketch = pytest.importorskip("datasketch")


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.lists(st.binary(min_size=0, max_size=80), min_size=0, max_size=30),
    num_perm=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
    scheme=st.sampled_from(["affine32", "legacy"]),
)
def test_sha1_32_bit_identical_to_datasketch(tokens, num_perm, seed, scheme):
    ours = af.MinHash(num_perm=num_perm, seed=seed, hashfunc="sha1_32", scheme=scheme)
    ours.update_batch(tokens)
    ref = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    ref.update_batch(tokens)
    assert np.array_equal(ours.hashvalues, ref.hashvalues.astype(np.uint64))
    many = af.minhash_signatures([tokens], num_perm=num_perm, seed=seed, hashfunc="sha1_32", scheme=scheme)
    assert np.array_equal(many[0], ours.hashvalues)
    back = af.MinHash.from_datasketch(ref)
    assert np.array_equal(back.hashvalues, ours.hashvalues)
    assert ours.to_datasketch() == ref


def test_own_sha1_matches_hashlib():
    import hashlib

    for n in (0, 1, 55, 56, 63, 64, 65, 200):
        assert af._core.minhash_sha1(b"q" * n) == hashlib.sha1(b"q" * n).digest()


def test_permutation_kernel_exact():
    rng = np.random.default_rng(0)
    p = (1 << 61) - 1
    a = rng.integers(1, p, 40, dtype=np.uint64)
    b = rng.integers(0, p, 40, dtype=np.uint64)
    hv = np.concatenate([rng.integers(0, p, 30, dtype=np.uint64), np.array([0, p - 1], dtype=np.uint64)])
    got = af._core._testing.permute_level_check(hv, a, b)
    assert [int(x) for x in got] == [min((int(x) * int(h) + int(y)) % p for h in hv) for x, y in zip(a, b)]


def _sets(rng, n, size, vocab):
    return [set(rng.choice(vocab, size, replace=False).tolist()) for _ in range(n)]


@pytest.mark.parametrize("method", ["perm", "oph"])
def test_jaccard_estimates_within_tolerance(method):
    rng = np.random.default_rng(1)
    errs = []
    for _ in range(30):
        a = set(rng.choice(5000, 300, replace=False).tolist())
        b = set(list(a)[: int(rng.integers(50, 300))]) | set(rng.choice(5000, 100).tolist())
        true = len(a & b) / len(a | b)
        s = af.minhash_signatures([sorted(a), sorted(b)], num_perm=256, method=method)
        errs.append(np.mean(s[0] == s[1]) - true)
    errs = np.array(errs)
    assert abs(errs.mean()) < 0.03 and np.abs(errs).max() < 0.15


def test_shingling_and_token_kinds():
    text = "alpha beta  gamma\tdelta"
    s_text = af.minhash_signatures([text], num_perm=32, shingle="word2", hashfunc="sha1_32")
    s_tok = af.minhash_signatures([[b"alpha beta", b"beta gamma", b"gamma delta"]], num_perm=32, hashfunc="sha1_32")
    assert np.array_equal(s_text, s_tok)
    s_char = af.minhash_signatures(["héllo"], num_perm=16, shingle="char3")
    s_char_tok = af.minhash_signatures([["hél", "éll", "llo"]], num_perm=16)
    assert np.array_equal(s_char, s_char_tok)
    ints = af.minhash_signatures([[1, 2, 3], np.array([1, 2, 3])], num_perm=16)
    assert np.array_equal(ints[0], ints[1])
    par = af.minhash_signatures([[str(i), str(i + 1)] for i in range(500)], num_perm=64, num_threads=2)
    one = af.minhash_signatures([[str(i), str(i + 1)] for i in range(500)], num_perm=64, num_threads=1)
    assert np.array_equal(par, one)


def _near_duplicates(rng, n_base=300, copies=2, size=60):
    docs = []
    for _ in range(n_base):
        base = rng.choice(100000, size, replace=False).tolist()
        docs.append(base)
        for _ in range(copies):
            d = list(base)
            for _ in range(int(rng.integers(0, 6))):
                d[int(rng.integers(0, size))] = int(rng.integers(100000, 200000))
            docs.append(d)
    return docs


def _exact_pairs(docs, threshold):
    sets = [set(d) for d in docs]
    out = set()
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold:
                out.add((i, j))
    return out


def test_lsh_recall_at_threshold():
    rng = np.random.default_rng(2)
    docs = _near_duplicates(rng)
    sigs = af.minhash_signatures(docs, num_perm=128)
    lsh = af.MinHashLSH(threshold=0.7, num_perm=128)
    lsh.insert_batch(np.arange(len(docs)), sigs)
    truth = _exact_pairs(docs, 0.7)
    first, second, scores = lsh.candidate_pairs()
    found = set(zip(first.tolist(), second.tolist()))
    recall = len(truth & found) / len(truth)
    assert recall >= 0.95
    # single queries agree with the self-join
    for i in range(0, len(docs), 97):
        cands = set(lsh.query(sigs[i]))
        assert i in cands
        assert all(((min(i, j), max(i, j)) in found) for j in cands if j != i)
    scored = lsh.query_with_scores(sigs[0])
    assert scored[0] == (0, 1.0) and all(s1 >= s2 for (_, s1), (_, s2) in zip(scored, scored[1:]))
    groups = af.dedup(docs, threshold=0.7)
    assert sum(len(g) for g in groups) >= 0.9 * len(docs)


def test_lsh_remove_and_duplicates():
    sigs = af.minhash_signatures([["a", "b"], ["a", "b"], ["c"]], num_perm=64)
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    lsh.insert_batch([10, 11, 12], sigs)
    with pytest.raises(ValueError):
        lsh.insert(10, sigs[0])
    lsh.remove(10)
    assert 10 not in lsh and sorted(lsh.query(sigs[0])) == [11]
    with pytest.raises(ValueError):
        lsh.remove(10)


def test_forest_top_k():
    rng = np.random.default_rng(3)
    docs = _near_duplicates(rng, n_base=100, copies=2)
    sigs = af.minhash_signatures(docs, num_perm=128)
    forest = af.MinHashLSHForest(num_perm=128, l=8)
    forest.insert_batch(np.arange(len(docs)), sigs)
    hits = 0
    for i in range(0, len(docs), 3):
        top = forest.query(sigs[i], 3)
        assert top[0][0] == i and len(top) == 3
        hits += {i + 1, i + 2} <= {k for k, _ in top}
    assert hits >= 0.9 * (len(docs) // 3)


def test_save_load_pickle(tmp_path):
    sigs = af.minhash_signatures([[str(i), str(i + 1), str(i + 2)] for i in range(200)], num_perm=64)
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    lsh.insert_batch(np.arange(200) * 3, sigs)
    forest = af.MinHashLSHForest(num_perm=64, l=4)
    forest.insert_batch(np.arange(200), sigs)
    for obj in (lsh, forest):
        path = os.path.join(tmp_path, type(obj).__name__ + ".af")
        obj.save(path)
        for loaded in (af.load(path), af.load(path, mmap=True), pickle.loads(pickle.dumps(obj))):
            assert type(loaded) is type(obj) and len(loaded) == 200
            assert loaded.query(sigs[5], 3) == obj.query(sigs[5], 3) if isinstance(obj, af.MinHashLSHForest) \
                else sorted(loaded.query(sigs[5])) == sorted(obj.query(sigs[5]))
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        bad = os.path.join(tmp_path, "bad.af")
        open(bad, "wb").write(bytes(data))
        with pytest.raises(OSError):
            af.load(bad)


@pytest.mark.errors
def test_bad_input():
    with pytest.raises(ValueError):
        af.MinHash(num_perm=0)
    with pytest.raises(ValueError):
        af.minhash_signatures([["a"]], num_perm=0)
    with pytest.raises(ValueError):
        af.minhash_signatures(["some text"], shingle="word0")
    with pytest.raises(ValueError):
        af.minhash_signatures(["some text"], shingle="tri3")
    with pytest.raises(TypeError):
        af.minhash_signatures(["raw text without shingle"])
    with pytest.raises(TypeError):
        af.minhash_signatures([[1.5]])
    with pytest.raises(ValueError):
        af.minhash_signatures([["a"]], hashfunc="md5")
    with pytest.raises(ValueError):
        af.MinHashLSH(threshold=1.5)
    with pytest.raises(ValueError):
        af.MinHashLSH(threshold=0.5, weights=(0.9, 0.9))
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    with pytest.raises(ValueError):
        lsh.insert(1, np.zeros(63, dtype=np.uint64))
    with pytest.raises(TypeError):
        lsh.insert("key", np.zeros(64, dtype=np.uint64))
    with pytest.raises(ValueError):
        af.MinHashLSHForest(num_perm=8, l=9)


def test_lsh_candidates_equal_datasketch_for_identical_signatures():
    """Same signatures (sha1_32 mode) and the same (bands, rows): exactly datasketch's candidate sets."""
    rng = np.random.default_rng(3)
    vocab = [f"w{i}".encode() for i in range(300)]
    base = [list(rng.choice(vocab, 12, replace=False)) for _ in range(150)]
    docs = base + [b[:-1] + [b"edit%d" % i] for i, b in enumerate(base[:100])]
    sigs = af.minhash_signatures(docs, num_perm=64, hashfunc="sha1_32")
    ours = af.MinHashLSH(threshold=0.6, num_perm=64)
    ours.insert_batch(np.arange(len(docs)), sigs)
    ref = datasketch.MinHashLSH(threshold=0.6, num_perm=64)
    assert (ours.bands, ours.rows) == (ref.b, ref.r)
    ref_mh = []
    for i, d in enumerate(docs):
        m = datasketch.MinHash(num_perm=64, seed=1)
        m.update_batch(d)
        ref.insert(i, m)
        ref_mh.append(m)
    for i in range(len(docs)):
        assert sorted(ours.query(sigs[i])) == sorted(ref.query(ref_mh[i]))
    for i in range(0, len(docs), 25):  # a MinHash object queries like its signature (and is left unchanged)
        m = af.MinHash.from_datasketch(ref_mh[i])
        assert sorted(ours.query(m)) == sorted(ref.query(ref_mh[i]))
        assert np.array_equal(m.hashvalues, sigs[i])


@pytest.mark.sanitize
def test_concurrent_queries_with_inserts_and_removes():
    import threading

    sigs = af.minhash_signatures([[f"t{i // 3}_{j}" for j in range(20)] for i in range(3000)], num_perm=64)
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    forest = af.MinHashLSHForest(num_perm=64)
    lsh.insert_batch(np.arange(1000), sigs[:1000])
    forest.insert_batch(np.arange(1000), sigs[:1000])
    forest.index()
    errors: list = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                i = int(rng.integers(0, 999))
                assert i in lsh.query(sigs[i])  # keys below 1000 are never removed
                assert forest.query(sigs[i], 3)[0][1] == 1.0
                lsh.query_batch(sigs[i:i + 8], num_threads=2)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in readers:
        t.start()
    try:
        for start in range(1000, 3000, 100):
            keys = np.arange(start, start + 100)
            lsh.insert_batch(keys, sigs[start:start + 100])
            forest.insert_batch(keys, sigs[start:start + 100])
            lsh.remove(int(keys[0]))
            forest.remove(int(keys[0]))
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert len(lsh) == len(forest) == 3000 - 20


def test_golden_minhash_lsh_v1_still_loads():
    """A MinHashLSH file written by format version 1 loads (plain and mmap) and answers like datasketch."""
    import sys

    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    sys.path.insert(0, data)
    try:
        from make_golden import golden_minhash_docs
    finally:
        sys.path.pop(0)
    docs = golden_minhash_docs()
    sigs = af.minhash_signatures(docs, num_perm=64, hashfunc="sha1_32")
    keys = np.arange(60, dtype=np.int64) * 7 + 1
    ref = datasketch.MinHashLSH(threshold=0.5, num_perm=64)
    ref_mh = []
    for d in docs:
        ref_mh.append(datasketch.MinHash(num_perm=64))
        ref_mh[-1].update_batch([t.encode() for t in d])
    for i in range(1, 60):  # key 1 (document 0) was removed before saving
        ref.insert(int(keys[i]), ref_mh[i])
    for mmap in (False, True):
        lsh = af.load(os.path.join(data, "golden_minhash_lsh_v1.af"), mmap=mmap)
        assert isinstance(lsh, af.MinHashLSH) and len(lsh) == 59 and 1 not in lsh
        assert (lsh.bands, lsh.rows) == (ref.b, ref.r)
        assert sorted(lsh._impl.keys().tolist()) == keys[1:].tolist()
        np.testing.assert_array_equal(lsh._impl.signature(8), sigs[1])
        for i in range(60):
            assert sorted(lsh.query(sigs[i])) == sorted(ref.query(ref_mh[i]))
        lsh.insert(1, sigs[0])  # still writable
        assert 1 in lsh.query(sigs[1])


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["insert", "remove", "save"]), st.integers(1, 40)), min_size=1, max_size=25),
    vocab=st.sampled_from([2, 3, 50, 1 << 40]),
    shape=st.sampled_from([(4, 2), (1, 8), (2, 1)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_lsh_matches_band_model_under_inserts_and_removes(ops, vocab, shape, seed):
    """Candidates equal a brute-force banding model through any mix of batch inserts, removals and
    save/load. A small value vocabulary makes big buckets (runs that grow, move and get compacted); a
    large one makes many buckets (probe runs, backward-shift deletion)."""
    rng = np.random.default_rng(seed)
    bands, rows = shape  # one band: a lost bucket cannot hide behind another band's hit
    lsh = af.MinHashLSH(threshold=0.5, num_perm=8, params=(bands, rows))
    live: dict = {}
    next_key = 0
    for op, n in ops:
        if op == "insert":
            sigs = rng.integers(0, vocab, (n, 8), dtype=np.uint64)
            keys = np.arange(next_key, next_key + n) * 3 - 50
            next_key += n
            lsh.insert_batch(keys, sigs)
            live.update(zip(keys.tolist(), sigs))
        elif op == "remove" and live:
            for k in rng.permutation(list(live))[:n].tolist():
                lsh.remove(k)
                del live[k]
        elif op == "save":
            lsh = af.MinHashLSH.from_bytes(lsh.to_bytes())
        assert len(lsh) == len(live)
        buckets: dict = {}  # (band, band values) -> keys
        for k, s in live.items():
            for b in range(bands):
                buckets.setdefault((b, s[b * rows:(b + 1) * rows].tobytes()), []).append(k)
        queries = list(live.values()) + list(rng.integers(0, vocab, (5, 8), dtype=np.uint64))
        batch = lsh.query_batch(np.array(queries, dtype=np.uint64).reshape(-1, 8), num_threads=1)
        for q, got in zip(queries, batch):
            want = sorted({k for b in range(bands) for k in buckets.get((b, q[b * rows:(b + 1) * rows].tobytes()), [])})
            assert sorted(lsh.query(q)) == want
            assert sorted(got.tolist()) == want
    first, second, _ = lsh.candidate_pairs()
    assert all(a != b for a, b in zip(first.tolist(), second.tolist()))


@pytest.mark.parametrize("shift", [0, 28, 60])
def test_band_keys_do_not_collide_on_structured_values(shift):
    """Every band of 3 values from 0..15 (low, middle or top bits) gets its own bucket."""
    grid = np.array(np.meshgrid(*[np.arange(16, dtype=np.uint64)] * 3, indexing="ij")).reshape(3, -1).T << np.uint64(shift)
    sigs = np.concatenate([grid, grid[::-1]], axis=1)  # num_perm 6; only the first 3 values are banded
    lsh = af.MinHashLSH(threshold=0.5, num_perm=6, params=(1, 3))
    lsh.insert_batch(np.arange(len(sigs)), sigs)
    assert [len(c) for c in lsh.query_batch(sigs)] == [1] * len(sigs)
    first, _, _ = lsh.candidate_pairs()
    assert len(first) == 0


# ---- C-MinHash (the default scheme) -------------------------------------------------------------------
def _estimate_stats(scheme, method, sizes, seeds=300, num_perm=128):
    """(J, bias, variance / classic MinHash variance) of the Jaccard estimate over `seeds` seeds."""
    na, inter, nb = sizes
    base = np.random.default_rng(5).choice(10**9, na + nb, replace=False)
    a, b = base[:na].tolist(), base[:inter].tolist() + base[na:na + nb - inter].tolist()
    j = inter / len(set(a) | set(b))
    est = np.array([np.mean(np.equal(*af.minhash_signatures([a, b], num_perm, seed=s, scheme=scheme, method=method)))
                    for s in range(seeds)])
    return j, est.mean() - j, est.var(ddof=1) / (j * (1 - j) / num_perm)


def _unbiased_and_not_worse(j, bias, var_ratio, seeds=300, num_perm=128):
    # Bias within 4 standard errors of the mean; variance at most 25% above J(1-J)/K (the ratio's own
    # standard error over 300 seeds is about 0.08).
    return abs(bias) < 4 * np.sqrt(j * (1 - j) / num_perm / seeds) and var_ratio < 1.25


@pytest.mark.parametrize("sizes", [(5, 3, 5), (20, 10, 20), (60, 40, 60), (300, 150, 300), (1000, 900, 1000)])
def test_cminhash_unbiased_with_variance_no_worse_than_minhash(sizes):
    j, bias, ratio = _estimate_stats("cminhash", "perm", sizes)
    assert _unbiased_and_not_worse(j, bias, ratio), (j, bias, ratio)


def test_variance_check_can_fail():
    """The same check rejects densified OPH on sets much smaller than num_perm (its variance is higher)."""
    j, bias, ratio = _estimate_stats(None, "oph", (5, 3, 5))
    assert not _unbiased_and_not_worse(j, bias, ratio), (j, bias, ratio)


def test_cminhash_is_the_default_and_recorded():
    m = af.MinHash(num_perm=64)
    assert m.scheme == "cminhash" and af.MinHash(hashfunc="sha1_32").scheme == "affine32"
    m.update_batch(["a", "b", "c"])
    assert int(m.hashvalues.max()) <= 0xFFFFFFFF
    old = af.MinHash(num_perm=64, scheme="mersenne61")
    old.update_batch(["a", "b", "c"])
    with pytest.raises(ValueError):
        m.jaccard(old)
    np.testing.assert_array_equal(af.minhash_signatures([["a", "b", "c"]], 64)[0], m.hashvalues)
    with pytest.raises(ValueError, match="xxh64"):
        af.MinHash(hashfunc="sha1_32", scheme="cminhash")


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_cminhash_every_simd_level_identical(level):
    if level not in af.available_simd_levels():
        pytest.skip(f"{level} not available here")
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 10**6, int(rng.integers(0, 300))).tolist() for _ in range(40)]
    before = af.simd_level()
    try:
        af.set_simd_level("scalar")
        ref = [af.minhash_signatures(docs, k) for k in (1, 63, 64, 130)]
        af.set_simd_level(level)
        for k, r in zip((1, 63, 64, 130), ref):
            np.testing.assert_array_equal(af.minhash_signatures(docs, k), r)
    finally:
        af.set_simd_level(before)


def test_cminhash_values_match_the_definition():
    """Reference in Python: value j = pi((sigma(token) + j) * M1), pi(z) = (z ^ z >> 16) * M2 (32-bit)."""
    m1, m2, mask = 0x85EBCA6B, 0xC2B2AE35, 0xFFFFFFFF
    h = af._core.MinHasher(16, 9, "xxh64", "cminhash", "perm")
    toks = [b"x", b"hello world", b"a" * 40, b""]
    sig = af.minhash_signatures([toks], 16, seed=9)[0]

    def pi(z):
        z ^= z >> 16
        return (z * m2) & mask

    sigma = [int(x) & mask for x in h.hash_items(toks)]
    assert [int(v) for v in sig] == [min(pi(((s + j) * m1) & mask) for s in sigma) for j in range(16)]


def test_token_kinds_threads_and_raw_text_agree():
    texts = ["alpha beta  gamma\tdelta epsilon", "one two three four", "x", "", "naïve café au lait s'il vous plaît"]
    for spec in ("word1", "word2", "word3", "char4"):
        raw = af.minhash_signatures(texts, 64, shingle=spec, num_threads=1)
        n = int(spec[4:])
        toks = []
        for t in texts:
            units = t.split() if spec.startswith("word") else list(t)
            w = min(n, len(units))
            grams = [(" " if spec.startswith("word") else "").join(units[i:i + w]) for i in range(len(units) - w + 1)]
            toks.append(grams if units else [])
        np.testing.assert_array_equal(raw, af.minhash_signatures(toks, 64, num_threads=1))
        np.testing.assert_array_equal(raw, af.minhash_signatures([[g.encode() for g in d] for d in toks], 64))
        np.testing.assert_array_equal(raw, af.minhash_signatures(texts, 64, shingle=spec, num_threads=2))
    big = [[str(i + j) for j in range(30)] for i in range(5000)]  # several boundary chunks
    np.testing.assert_array_equal(af.minhash_signatures(big, 32, num_threads=1),
                                  af.minhash_signatures(big, 32, num_threads=2))
    np.testing.assert_array_equal(af.minhash_signatures((d for d in big[:10]), 32), af.minhash_signatures(big[:10], 32))
    with pytest.raises(TypeError):
        af.minhash_signatures([["a", 1.5]], 32)


def test_lsh_refuses_mixed_schemes(tmp_path):
    docs = [["a", "b", "c", str(i)] for i in range(20)]
    new = af.minhash_signatures(docs, 64)
    old = af.minhash_signatures(docs, 64, scheme="mersenne61")
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64, scheme="cminhash")
    lsh.insert_batch(np.arange(20), new)
    for bad in (lambda: lsh.insert_batch(np.arange(20, 40), old), lambda: lsh.query(old[0]),
                lambda: lsh.query_batch(old), lambda: lsh.insert(99, old[1])):
        with pytest.raises(ValueError, match="mersenne61"):
            bad()
    path = str(tmp_path / "l.af")
    lsh.save(path)
    back = af.load(path)
    assert back.scheme == "cminhash" and 0 in back.query(new[0])
    with pytest.raises(ValueError):
        back.query(old[0])
    # Learnt from MinHash objects; raw arrays alone leave it open.
    m = af.MinHash(num_perm=64, scheme="mersenne61")
    m.update_batch(docs[0])
    learnt = af.MinHashLSH(threshold=0.5, num_perm=64)
    learnt.insert(0, m)
    assert learnt.scheme == "mersenne61"
    with pytest.raises(ValueError):
        learnt.query(new[0])
    open_ = af.MinHashLSH(threshold=0.5, num_perm=64)
    open_.insert_batch(np.arange(20), old)
    assert open_.scheme is None and 0 in open_.query(old[0])


def test_float_keys_and_float_num_perm_refused():
    sigs = af.minhash_signatures([["a"], ["b"]], 64)
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    with pytest.raises(TypeError):
        lsh.insert_batch([1.7, 2.2], sigs)
    with pytest.raises(TypeError):
        lsh.insert_batch(np.array([1.0, 2.0]), sigs)
    with pytest.raises(TypeError):
        lsh.insert_batch([True, False], sigs)
    assert len(lsh) == 0
    lsh.insert_batch(np.array([1, 2], dtype=np.uint8), sigs)
    assert sorted(lsh._impl.keys().tolist()) == [1, 2]
    forest = af.MinHashLSHForest(num_perm=64)
    with pytest.raises(TypeError):
        forest.insert_batch([1.5, 2.5], sigs)
    for bad in (64.7, 64.0, "64", True):
        with pytest.raises(TypeError):
            af.MinHashLSHForest(num_perm=bad)
    with pytest.raises(ValueError):
        af.MinHashLSHForest(num_perm=0)


@pytest.mark.parametrize("num_perm", [32, 128, 256])
def test_bands_rows_follow_datasketchs_rule(num_perm):
    for t in (0.3, 0.5, 0.7, 0.8, 0.9):
        ref = datasketch.MinHashLSH(threshold=t, num_perm=num_perm)
        ours = af.MinHashLSH(threshold=t, num_perm=num_perm)
        assert (ours.bands, ours.rows) == (ref.b, ref.r)
        assert (af.MinHashLSH(threshold=t, num_perm=num_perm, params=(2, 3)).bands, 2) == (2, 2)


def test_default_scheme_pair_precision_and_recall_not_below_datasketch():
    """Issue 18: at the same threshold and banding, the default signatures find candidate pairs at least as
    precisely as datasketch's (sha1_32 signatures are bit-identical to datasketch's), over 3 seeds."""
    from annforge.bench.datasets import exact_pairs, minhash_corpus

    ds = minhash_corpus(2000, 500)
    docs = [[t.encode() for t in s] for s in ds.sets]
    truth = set(exact_pairs(ds.sets, 0.7))
    stats = {}
    for kw in (dict(), dict(hashfunc="sha1_32")):
        rec, prec = [], []
        for seed in (1, 2, 3):
            sigs = af.minhash_signatures(docs, 128, seed=seed, **kw)
            lsh = af.MinHashLSH(threshold=0.7, num_perm=128)
            lsh.insert_batch(np.arange(len(sigs)), sigs)
            f, s, _ = lsh.candidate_pairs()
            found = set(zip(f.tolist(), s.tolist()))
            rec.append(len(found & truth) / len(truth))
            prec.append(len(found & truth) / max(1, len(found)))
        stats[kw.get("hashfunc", "default")] = (np.mean(rec), np.mean(prec))
    (r_ours, p_ours), (r_ds, p_ds) = stats["default"], stats["sha1_32"]
    assert r_ours >= r_ds - 0.02 and p_ours >= p_ds - 0.02, stats


def test_dedup_streams_chunks_and_equals_the_steps_by_hand():
    rng = np.random.default_rng(4)
    base = [[f"w{int(x)}" for x in rng.choice(5000, 40, replace=False)] for _ in range(300)]
    docs = base + [d[:-2] + ["new1", "new2"] for d in base[:60]] + [list(d) for d in base[60:90]]
    sigs = af.minhash_signatures(docs, 128)

    def by_hand(verify):
        lsh = af.MinHashLSH(threshold=0.8, num_perm=128, verify=verify)
        lsh.insert_batch(np.arange(len(docs)), sigs)
        f, s, _ = lsh.candidate_pairs() if verify else lsh.candidate_pairs(min_score=0.8)
        labels = af._core.connected_groups(len(docs), f, s)
        groups: dict = {}
        for i, lab in enumerate(labels.tolist()):
            groups.setdefault(lab, []).append(i)
        return [g for g in groups.values() if len(g) > 1]

    expected, unverified = by_hand(True), by_hand(False)
    assert len(expected) >= 60 and expected != unverified
    for chunk in (7, 100, 10_000):
        assert af.dedup(iter(docs), 0.8, chunk_size=chunk) == expected
        assert af.dedup(iter(docs), 0.8, chunk_size=chunk, verify=False) == unverified
    assert af.dedup(docs, 0.8, show_progress=True) == expected
    texts = [" ".join(d) for d in docs]
    assert af.dedup((t for t in texts), 0.8, shingle="word1", chunk_size=50) == expected
    with pytest.raises(ValueError):
        af.dedup(docs, chunk_size=0)
    with pytest.raises(TypeError):
        af.dedup("just one string")


def test_connected_groups_label_is_smallest_row_and_checks_pairs():
    """The union-find grouping (cluster/union_find.h) through its binding: chains merge, labels are minima."""
    first = np.array([4, 2, 7, 1], dtype=np.int64)
    second = np.array([2, 0, 5, 1], dtype=np.int64)
    labels = af._core.connected_groups(8, first, second)
    np.testing.assert_array_equal(labels, [0, 1, 0, 3, 0, 5, 6, 5])
    with pytest.raises(ValueError, match="out of range"):
        af._core.connected_groups(3, np.array([0], dtype=np.int64), np.array([3], dtype=np.int64))
    with pytest.raises(ValueError, match="differ in length"):
        af._core.connected_groups(3, np.array([0, 1], dtype=np.int64), np.array([1], dtype=np.int64))
