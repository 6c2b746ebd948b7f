"""One algorithm in its own process: build, then for each sweep point warm up, time, measure recall.

Run by the parent as ``python -m annforge.bench.worker spec.json``; prints one JSON line per result
(``{"event": "build"|"result"|"error", ...}``) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def recall_figures(found: np.ndarray, gt_ids: np.ndarray, gt_dist: np.ndarray, found_dist: np.ndarray,
                   k: int) -> Dict[str, float]:
    """recall@k (id overlap) and ann-benchmarks' tolerant recall (distance ≤ k-th true × (1+1e-3))."""
    hits = sum(len(np.intersect1d(f[f >= 0], g)) for f, g in zip(found[:, :k], gt_ids[:, :k]))
    kth = gt_dist[:, k - 1:k].astype(np.float64)
    threshold = kth + 1e-3 * np.abs(kth) + 1e-7
    tolerant = np.sum(found_dist[:, :k] <= threshold)
    total = found.shape[0] * k
    return {"recall": hits / total, "recall_tolerant": float(tolerant) / total}


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def pair_figures(found: set, truth: set) -> Dict[str, float]:
    """Pair recall and precision of candidate pairs ``found`` against the exact pairs ``truth``.

    >>> pair_figures({(0, 1), (2, 3)}, {(0, 1), (1, 2)})
    {'recall': 0.5, 'precision': 0.5}
    """
    hits = len(found & truth)
    return {"recall": hits / len(truth) if truth else 1.0, "precision": hits / len(found) if found else 1.0}


def _best_time(fn: Any, repeats: int) -> Any:
    """Fastest of ``repeats`` calls: (seconds, last result)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_minhash(spec: Dict[str, Any]) -> int:
    """The ``--workload minhash`` loop: per sweep point sign, insert, query every document one at a time."""
    from .algorithms import MINHASH_REGISTRY

    work, repeats, threads = spec["work_dir"], int(spec["repeats"]), int(spec["threads"])
    with open(os.path.join(work, "docs.json")) as f:
        docs = [[t.encode() for t in toks] for toks in json.load(f)]
    cls = MINHASH_REGISTRY[spec["algo"]]["cls"]
    signed: Dict[int, Any] = {}  # num_perm -> (seconds, signatures): signing does not depend on the threshold
    for params in spec["sweep"]:
        adapter = cls(threads, params)
        if adapter.num_perm not in signed:
            adapter.sign(docs[:50])  # warm-up: imports, hash tables
            signed[adapter.num_perm] = _best_time(lambda: adapter.sign(docs), repeats)
        sig_s, sigs = signed[adapter.num_perm]
        insert_s, _ = _best_time(lambda: adapter.insert(sigs), repeats)
        for i in range(min(50, len(docs))):  # warm-up
            adapter.query(sigs, i)
        query_s, results = _best_time(lambda: [adapter.query(sigs, i) for i in range(len(docs))], repeats)
        found = {(min(i, int(j)), max(i, int(j))) for i, keys in enumerate(results) for j in keys if int(j) != i}
        truth_arr = np.load(os.path.join(work, f"truth_{adapter.threshold:.6f}.npy"))
        truth = set(map(tuple, truth_arr.tolist()))
        emit("result", params=params, **pair_figures(found, truth), sig_docs_per_s=len(docs) / sig_s,
             insert_per_s=len(docs) / insert_s, qps=len(docs) / query_s, sig_s=sig_s, insert_s=insert_s,
             truth_pairs=len(truth), candidate_pairs=len(found))
    return 0


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("workload") == "minhash":
        return run_minhash(spec)
    from .algorithms import REGISTRY
    from .datasets import Dataset, true_distances

    work = spec["work_dir"]
    base = np.load(os.path.join(work, "base.npy"))
    queries = np.load(os.path.join(work, "queries.npy"))
    gt_ids = np.load(os.path.join(work, "gt_ids.npy"))
    gt_dist = np.load(os.path.join(work, "gt_dist.npy"))
    ds = Dataset("work", base, queries, spec["metric"])
    k, batch, repeats = int(spec["k"]), int(spec["batch"]) or len(queries), int(spec["repeats"])
    n_latency = min(int(spec["latency_queries"]), len(queries))

    adapter = REGISTRY[spec["algo"]]["cls"](ds.dim, ds.metric, int(spec["threads"]), int(spec["build_threads"]),
                                            **spec["build"])
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    adapter.build(base)
    build_s = time.perf_counter() - t0
    rss_growth = max(0, rss_bytes() - rss0)
    mem = adapter.memory_bytes()
    emit("build", build_s=build_s, rss_growth=rss_growth, memory_bytes=mem)

    for params in spec["sweep"]:
        adapter.prepare(params)
        chunks = [queries[i:i + batch] for i in range(0, len(queries), batch)]
        adapter.search(chunks[0], k)  # warm-up: caches, lazy allocations, thread start
        best = float("inf")
        found: List[np.ndarray] = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = [adapter.search(c, k) for c in chunks]
            best = min(best, time.perf_counter() - t0)
            found = out
        ids = np.vstack(found).astype(np.int64)
        fig = recall_figures(ids, gt_ids, gt_dist, true_distances(ds, ids), k)
        lat = []
        for i in range(n_latency):
            q = queries[i:i + 1]
            t0 = time.perf_counter_ns()
            adapter.search(q, k)
            lat.append(time.perf_counter_ns() - t0)
        lat_ms = np.asarray(lat, dtype=np.float64) / 1e6 if lat else np.zeros(1)
        emit("result", params=params, qps=len(queries) / best, **fig,
             p50_ms=float(np.percentile(lat_ms, 50)), p95_ms=float(np.percentile(lat_ms, 95)),
             p99_ms=float(np.percentile(lat_ms, 99)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as exc:  # reported to the parent, which keeps going with the next algorithm
        emit("error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
