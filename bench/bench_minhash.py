"""MinHash / LSH: annforge vs rensa (RMinHash, CMinHash) vs datasketch on Debian package descriptions.

    python bench/bench_minhash.py --docs 40000 --dups 4000 --rounds 3 --threads 1,2

Corpus: the long package descriptions of Debian's Translation-en lists (``--apt-lists``, default
/var/lib/apt/lists; ``apt-get update -o Acquire::Languages=en`` fetches them), falling back to the short
descriptions of ``apt-cache dumpavail``; then ``--dups`` near-duplicates (1-4 words of a random document
replaced). Every library sees the same word-3-shingle token sets (str); annforge's raw-text path shingles
the same texts in C++ (``shingle="word3"``, identical shingles).

Each library runs in its own process per round, rounds interleave the libraries, and each figure is the
best over rounds (the machine is shared). Threads: annforge's ``num_threads``; rensa's rayon pool via
RAYON_NUM_THREADS (its default, all cores, is the 2-thread lane on a 2-core machine); datasketch is
single-threaded Python. Pair recall / precision: LSH candidate pairs against every pair with exact
Jaccard >= threshold (prefix filtering), at each library's own banding for the threshold (annforge and
datasketch: the same (bands, rows) rule; rensa needs a band count dividing num_perm: the rule's, rounded
to the nearest divisor, rows = num_perm // bands), and at 8 x 16 for all. annforge also runs
``MinHashLSH(threshold, num_perm, verify=True)``: its own banding for the signature check, pairs with at
least ``min_matches`` equal values (the "verified" rows), and the same check on datasketch's banding (the
"checked" rows: the pair step of ``dedup(verify=False)``); mean ± standard error over the seeds.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


# ---- corpus -------------------------------------------------------------------------------------------
def _descriptions(apt_lists):
    descs = []
    files = sorted(glob.glob(os.path.join(apt_lists, "*Translation-en*")))
    for f in files:
        txt = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", f], capture_output=True, text=True).stdout
        cur = None
        for line in txt.splitlines() + [""]:
            if line.startswith("Description-en:"):
                cur = [line.split(":", 1)[1].strip()]
            elif cur is not None and line.startswith(" "):
                if line.strip() != ".":
                    cur.append(line.strip())
            elif cur is not None:
                descs.append(" ".join(cur))
                cur = None
    source = f"Translation-en long descriptions ({len(files)} files in {apt_lists})"
    if not descs:
        out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True).stdout
        descs = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Description")]
        source = "apt-cache dumpavail short descriptions"
    return sorted(set(d for d in descs if len(d.split()) >= 20)), source


def corpus(n_docs, n_dups, seed, apt_lists):
    descs, source = _descriptions(apt_lists)
    rng = np.random.default_rng(seed)
    base = [descs[i] for i in rng.permutation(len(descs))[:n_docs]]
    docs = list(base)
    for _ in range(n_dups):
        w = base[int(rng.integers(len(base)))].split()
        for _ in range(int(rng.integers(1, 5))):
            w[int(rng.integers(len(w)))] = "edit%d" % int(rng.integers(1 << 30))
        docs.append(" ".join(w))
    return docs, source


def shingles(text, n=3):
    w = text.split()
    k = min(n, len(w))
    return list(dict.fromkeys(" ".join(w[i:i + k]) for i in range(len(w) - k + 1)))


# ---- workers (one process per library and round) --------------------------------------------------------
_clock = time.perf_counter  # --timer cpu: time.process_time (steadier on a shared machine, one thread)


def _best(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = _clock()
        out = fn()
        best = min(best, _clock() - t0)
    return best, out


def _pairs(cands):
    return {(min(i, int(j)), max(i, int(j))) for i, keys in enumerate(cands) for j in keys if int(j) != i}


def _quality(found, truth):
    hit = len(found & truth)
    return dict(recall=hit / max(1, len(truth)), precision=hit / max(1, len(found)), candidates=len(found))


def _mean_quality(qs):
    """Means over seeds with standard errors, plus each seed's recall / precision (one seed moves them by
    points)."""
    out = {key: float(np.mean([q[key] for q in qs])) for key in ("recall", "precision", "candidates")}
    for key in ("recall", "precision"):
        vals = [q[key] for q in qs]
        out[key + "_se"] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    out["seeds"] = [[round(q["recall"], 4), round(q["precision"], 4)] for q in qs]
    return out


def worker_annforge(w, texts, toks, k, t, threads, rep, truth, seeds):
    import annforge as af

    out = {}
    sign = lambda: af.minhash_signatures(toks, k, num_threads=threads)  # noqa: E731
    sign()
    s, sigs = _best(sign, rep)
    out["sign_tokens"] = len(toks) / s
    s, _ = _best(lambda: af.minhash_signatures(texts, k, shingle="word3", num_threads=threads), rep)
    out["sign_raw_text"] = len(texts) / s
    keys = np.arange(len(sigs))
    for label, params in (("", None), ("_8x16", (8, 16))):
        def build():
            lsh = af.MinHashLSH(threshold=t, num_perm=k, params=params)
            lsh.insert_batch(keys, sigs, num_threads=threads)
            return lsh
        build()  # warm-up
        s, lsh = _best(build, rep)
        out["insert" + label] = len(sigs) / s
        nq = min(len(sigs), 20000)
        rows = list(sigs[:nq])
        s, cands = _best(lambda: [lsh.query(r) for r in rows], rep)
        out["query" + label] = nq / s
        s, _ = _best(lambda: lsh.query_batch(sigs, num_threads=threads), rep)
        out["query_batch" + label] = len(sigs) / s
        out["bands_rows" + label] = [lsh.bands, lsh.rows]
        if not label:  # candidate pairs, then the same with the signature check (verify=True)
            s, _ = _best(lambda: lsh.candidate_pairs(num_threads=threads), rep)
            out["pairs"] = len(sigs) / s
            def build_verified():
                v = af.MinHashLSH(threshold=t, num_perm=k, verify=True)
                v.insert_batch(keys, sigs, num_threads=threads)
                return v
            build_verified()  # warm-up, as for the plain index
            s, vlsh = _best(build_verified, rep)
            out["insert_verified"] = len(sigs) / s
            s, _ = _best(lambda: vlsh.candidate_pairs(num_threads=threads), rep)
            out["pairs_verified"] = len(sigs) / s
            s, _ = _best(lambda: [vlsh.query(r) for r in rows], rep)
            out["query_verified"] = nq / s
            out["bands_rows_verified"] = [vlsh.bands, vlsh.rows, vlsh.min_matches]
        if seeds:
            qs, vqs, cqs = [], [], []
            for seed in seeds:
                sg = af.minhash_signatures(toks, k, seed=seed, num_threads=threads)
                lsh = af.MinHashLSH(threshold=t, num_perm=k, params=params)
                lsh.insert_batch(keys, sg, num_threads=threads)
                f, g, _ = lsh.candidate_pairs()
                qs.append(_quality(set(zip(f.tolist(), g.tolist())), truth))
                if not label:
                    vlsh = af.MinHashLSH(threshold=t, num_perm=k, verify=True)
                    vlsh.insert_batch(keys, sg, num_threads=threads)
                    f, g, _ = vlsh.candidate_pairs()
                    vqs.append(_quality(set(zip(f.tolist(), g.tolist())), truth))
                    # datasketch's banding with the same check: the pair step of dedup(verify=False)
                    f, g, _ = lsh.candidate_pairs(min_score=(vlsh.min_matches - 0.5) / k)
                    cqs.append(_quality(set(zip(f.tolist(), g.tolist())), truth))
            out["quality" + label] = _mean_quality(qs)
            if vqs:
                out["quality_verified"] = _mean_quality(vqs)
                out["quality_checked"] = _mean_quality(cqs)
                out["bands_rows_checked"] = [lsh.bands, lsh.rows, vlsh.min_matches]
    # Where signing time goes: num_perm=1 leaves the Python boundary and the token hashing alone.
    s, _ = _best(lambda: af.minhash_signatures(toks, 1, num_threads=threads), rep)
    out["sign_tokens_k1"] = len(toks) / s
    s, groups = _best(lambda: af.dedup(texts, t, num_perm=k, shingle="word3", num_threads=threads), rep)
    out["dedup_docs_per_s"] = len(texts) / s
    out["dedup_groups"] = len(groups)
    s, groups = _best(lambda: af.dedup(texts, t, num_perm=k, shingle="word3", num_threads=threads,
                                       verify=False), rep)
    out["dedup_unverified_docs_per_s"] = len(texts) / s
    out["dedup_unverified_groups"] = len(groups)
    return out


def worker_rensa(w, texts, toks, k, t, threads, rep, truth, variant, seeds):
    import rensa

    cls = rensa.RMinHash if variant == "R" else rensa.CMinHash
    out = {}

    def objects():
        res = []
        for tk in toks:
            m = cls(k, 42)
            m.update(tk)
            res.append(m)
        return res

    objects()
    s, objs = _best(objects, rep)
    out["sign_tokens"] = len(toks) / s
    if variant == "R":
        s, mat = _best(lambda: rensa.RMinHash.digest_matrix_from_token_sets(toks, k, 42), rep)
        out["sign_tokens_matrix"] = len(toks) / s
        for label, bands in (("", None), ("_8x16", 8)):
            if bands is None:  # the datasketch rule's band count, rounded to a divisor of k (rensa needs one)
                import annforge as af
                b0 = af.MinHashLSH(threshold=t, num_perm=k).bands
                bands = min((b for b in range(1, k + 1) if k % b == 0), key=lambda b: (abs(b - b0), b))
            def build():
                lsh = rensa.RMinHashLSH(t, k, bands)
                lsh.insert_matrix(mat)
                return lsh
            build()  # warm-up
            s, lsh = _best(build, rep)
            out["insert" + label] = len(toks) / s
            nq = min(len(objs), 20000)
            s, _ = _best(lambda: [lsh.query(m) for m in objs[:nq]], rep)
            out["query" + label] = nq / s
            s, cands = _best(lambda: lsh.query_all(objs), rep)
            out["query_batch" + label] = len(objs) / s
            out["bands_rows" + label] = [bands, k // bands]
            if seeds:
                qs = []
                for seed in seeds:
                    q_objs = rensa.RMinHash.from_token_sets(toks, k, 41 + seed)
                    q_lsh = rensa.RMinHashLSH(t, k, bands)
                    q_lsh.insert_matrix(rensa.RMinHash.digest_matrix_from_token_sets(toks, k, 41 + seed))
                    qs.append(_quality(_pairs(q_lsh.query_all(q_objs)), truth))
                out["quality" + label] = _mean_quality(qs)

        def dedup():
            d = rensa.RMinHashDeduplicator(t, k, True, 8, 42)
            dup = 0
            for i, text in enumerate(texts):
                m = rensa.RMinHash(k, 42)
                m.update(shingles(text))
                if d.is_duplicate(str(i), m):
                    dup += 1
                else:
                    d.add(str(i), m)
            return dup
        s, dup = _best(dedup, rep)
        out["dedup_docs_per_s"] = len(texts) / s
        out["dedup_flagged"] = dup
    else:
        # No LSH class takes CMinHash: its signatures are banded by annforge's index (the same rule as
        # datasketch) for the quality figures only.
        import annforge as af

        qs = []
        for seed in seeds:
            sigs = np.array(rensa.CMinHash.digests64_from_token_sets(toks, k, 41 + seed), dtype=np.uint64)
            lsh = af.MinHashLSH(threshold=t, num_perm=k)
            lsh.insert_batch(np.arange(len(sigs)), sigs)
            f, g, _ = lsh.candidate_pairs()
            qs.append(_quality(set(zip(f.tolist(), g.tolist())), truth))
            out["bands_rows"] = [lsh.bands, lsh.rows]
        if qs:
            out["quality"] = _mean_quality(qs)
    return out


def worker_datasketch(w, texts, toks, k, t, threads, rep, truth, sample, seeds):
    import annforge as af
    import datasketch

    out = {}
    enc = [[x.encode() for x in tk] for tk in toks]

    def sign():
        res = []
        for tk in enc[:sample]:
            m = datasketch.MinHash(num_perm=k, seed=1)
            m.update_batch(tk)
            res.append(m)
        return res
    s, _ = _best(sign, 1)
    out["sign_tokens"] = min(sample, len(enc)) / s
    # The full corpus' datasketch signatures, built fast: annforge's sha1_32 mode is bit-identical.
    hv = af.minhash_signatures(enc, k, seed=1, hashfunc="sha1_32")
    mhs = [datasketch.MinHash(num_perm=k, seed=1, hashvalues=row, scheme="affine32") for row in hv]

    def build():
        lsh = datasketch.MinHashLSH(threshold=t, num_perm=k)
        with lsh.insertion_session() as session:
            for i, m in enumerate(mhs):
                session.insert(i, m)
        return lsh
    s, lsh = _best(build, 1)
    out["insert"] = len(mhs) / s
    nq = min(len(mhs), 20000)
    s, _ = _best(lambda: [lsh.query(m) for m in mhs[:nq]], 1)
    out["query"] = nq / s
    out["bands_rows"] = [lsh.b, lsh.r]
    qs = []
    for seed in seeds:
        hv = af.minhash_signatures(enc, k, seed=seed, hashfunc="sha1_32")
        q_lsh = datasketch.MinHashLSH(threshold=t, num_perm=k)
        q_mhs = [datasketch.MinHash(num_perm=k, seed=seed, hashvalues=row, scheme="affine32") for row in hv]
        with q_lsh.insertion_session() as session:
            for i, m in enumerate(q_mhs):
                session.insert(i, m)
        qs.append(_quality(_pairs([q_lsh.query(m) for m in q_mhs]), truth))
    if qs:
        out["quality"] = _mean_quality(qs)
    return out


def run_worker(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    with open(spec["data"]) as f:
        data = json.load(f)
    texts, toks = data["texts"], data["tokens"]
    truth = set(map(tuple, data["truth"]))
    lib, k, t, threads, rep = spec["lib"], spec["num_perm"], spec["threshold"], spec["threads"], spec["repeats"]
    global _clock
    if spec.get("timer") == "cpu":
        _clock = time.process_time
    seeds = spec["quality_seeds"]
    if lib == "annforge":
        out = worker_annforge(spec, texts, toks, k, t, threads, rep, truth, seeds)
    elif lib in ("rensa-R", "rensa-C"):
        out = worker_rensa(spec, texts, toks, k, t, threads, rep, truth, lib[-1], seeds)
    else:
        out = worker_datasketch(spec, texts, toks, k, t, threads, rep, truth, spec["ds_sample"], seeds)
    print("RESULT " + json.dumps(out), flush=True)


# ---- driver -----------------------------------------------------------------------------------------------
def merge_best(acc, new):
    for key, v in new.items():
        if key.startswith("quality") and key in acc:
            continue  # measured once
        if isinstance(v, (int, float)) and not key.startswith("dedup_") or key.endswith("docs_per_s"):
            acc[key] = max(acc.get(key, 0.0), v)
        else:
            acc[key] = v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=40000)
    ap.add_argument("--dups", type=int, default=4000)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats inside one worker")
    ap.add_argument("--libs", default="annforge,rensa-R,rensa-C,datasketch")
    ap.add_argument("--ds-sample", type=int, default=2000, help="documents datasketch signs (its rate is scaled)")
    ap.add_argument("--apt-lists", default="/var/lib/apt/lists")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed")
    ap.add_argument("--seeds", type=int, default=5, help="MinHash seeds averaged for pair recall / precision")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (steadier on a shared machine; meaningful with --threads 1)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return run_worker(a.worker)

    from annforge.bench.datasets import exact_pairs

    texts, source = corpus(a.docs, a.dups, a.seed, a.apt_lists)
    toks = [shingles(d) for d in texts]
    t0 = time.perf_counter()
    truth = sorted(exact_pairs(toks, a.threshold))
    print(f"corpus: {source}; {len(texts)} documents ({a.dups} injected near-duplicates), "
          f"mean {np.mean([len(d.split()) for d in texts]):.1f} words, {np.mean([len(x) for x in toks]):.1f} "
          f"word-3 shingles; num_perm={a.num_perm}, threshold={a.threshold}; "
          f"{len(truth)} pairs with exact Jaccard >= {a.threshold} ({time.perf_counter() - t0:.0f} s)", flush=True)
    libs = a.libs.split(",")
    lanes = [int(x) for x in a.threads.split(",")]
    best = {(lib, n): {} for lib in libs for n in lanes}
    with tempfile.TemporaryDirectory(prefix="bench-minhash-") as work:
        data = os.path.join(work, "data.json")
        with open(data, "w") as f:
            json.dump(dict(texts=texts, tokens=toks, truth=truth), f)
        for r in range(a.rounds):
            for n in lanes:
                for lib in libs:
                    if lib == "datasketch" and (n != lanes[0] or r > 0):
                        continue  # single-threaded and slow: one round, reported in every lane
                    spec = os.path.join(work, "spec.json")
                    with open(spec, "w") as f:
                        json.dump(dict(lib=lib, data=data, num_perm=a.num_perm, threshold=a.threshold, threads=n,
                                       repeats=a.repeats, ds_sample=a.ds_sample, timer=a.timer,
                                       # pair quality does not depend on threads or timing: first round only
                                       quality_seeds=list(range(1, a.seeds + 1)) if r == 0 and n == lanes[0]
                                       else []), f)
                    env = dict(os.environ, RAYON_NUM_THREADS=str(n), OMP_NUM_THREADS=str(n))
                    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True,
                                          text=True, env=env)
                    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                    if proc.returncode or not lines:
                        print(f"{lib} threads={n} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                        continue
                    merge_best(best[(lib, n)], json.loads(lines[-1][7:]))
                    print(f"round {r + 1} {lib} threads={n} done", flush=True)
    report(best, libs, lanes)


def report(best, libs, lanes):
    metrics = [("sign_tokens", "signatures/s, token lists (objects for rensa / datasketch)"),
               ("sign_tokens_k1", "  same with num_perm=1: boundary + token hashing only"),
               ("sign_tokens_matrix", "signatures/s, rensa digest_matrix_from_token_sets"),
               ("sign_raw_text", "signatures/s, raw text shingled in C++ (word3)"),
               ("insert", "LSH inserts/s (batch, threshold banding)"), ("query", "LSH queries/s (one at a time)"),
               ("query_batch", "LSH queries/s (batch)"), ("insert_8x16", "LSH inserts/s (batch, 8x16 bands)"),
               ("query_8x16", "LSH queries/s (one at a time, 8x16)"), ("query_batch_8x16", "LSH queries/s (batch, 8x16)"),
               ("pairs", "candidate_pairs(), indexed docs/s (threshold banding)"),
               ("insert_verified", "LSH inserts/s (batch, verify=True banding)"),
               ("pairs_verified", "candidate_pairs(), indexed docs/s (verify=True)"),
               ("query_verified", "LSH queries/s (one at a time, verify=True)"),
               ("dedup_docs_per_s", "dedup end to end, docs/s (raw text; verify=True, default)"),
               ("dedup_unverified_docs_per_s", "dedup end to end, docs/s (raw text; verify=False)")]
    for n in lanes:
        print(f"\n== threads={n} (datasketch: 1 thread) ==")
        cols = [lib for lib in libs]
        print(f"{'':58s}" + "".join(f"{c:>14s}" for c in cols))
        for key, label in metrics:
            vals = [(best[(lib, n)] or best[(lib, lanes[0])]).get(key) for lib in cols]
            if all(v is None for v in vals):
                continue
            print(f"{label:58s}" + "".join(f"{v:14,.0f}" if v is not None else f"{'-':>14s}" for v in vals))
        for suffix in ("", "_verified", "_checked", "_8x16"):
            for lib in cols:
                res = best[(lib, lanes[0])]
                q = res.get("quality" + suffix)
                if q:
                    shape = "bands x rows" + (" x min_matches" if suffix in ("_verified", "_checked") else "")
                    print(f"pair quality{suffix or ''} {lib:12s} {shape} {res.get('bands_rows' + suffix)}: "
                          f"mean recall {q['recall']:.4f} ± {q.get('recall_se', float('nan')):.4f} precision "
                          f"{q['precision']:.4f} ± {q.get('precision_se', float('nan')):.4f} candidates "
                          f"{q['candidates']:.0f}; per seed (recall, precision) {q['seeds']}")
        a = best.get(("annforge", n), {})
        for lib in ("rensa-R", "rensa-C"):
            r = best.get((lib, n), {})
            for key in ("sign_tokens", "insert_8x16", "query_8x16", "query_batch_8x16", "insert", "query"):
                if a.get(key) and r.get(key):
                    print(f"annforge / {lib} {key}: {a[key] / r[key]:.2f}x")
        if a.get("sign_tokens") and best.get(("rensa-R", n), {}).get("sign_tokens_matrix"):
            print(f"annforge sign_tokens / rensa-R sign_tokens_matrix: "
                  f"{a['sign_tokens'] / best[('rensa-R', n)]['sign_tokens_matrix']:.2f}x")


if __name__ == "__main__":
    main()
