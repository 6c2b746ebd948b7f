"""Sharded search on a local Ray cluster: QPS and recall@k against the number of shards, and the cost of
the fan-out (one Ray call per shard plus the merge) per query.

For each family and shard count the same vectors are split by hash over Ray actors (annforge.distributed.
ShardedIndex) and searched with a batch of queries (QPS) and with single queries (latency). The
reference rows are the same index in this process, without Ray. Ground truth is exact (FlatIndex).
Repeats are interleaved across shard counts and the best repeat is kept.

    python bench/bench_distributed.py --n 40000 --dim 32 --shards 1,2,4 --out bench/results/x.txt

What a 2-core machine cannot show: shards on a 2-core box share the same two cores, so more shards can
only add overhead; how QPS grows with shards needs one core (or machine) per shard.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from typing import Any, Callable, Dict, List

import numpy as np

import annforge as af


def clustered(n: int, dim: int, seed: int, clusters: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def families(dim: int) -> Dict[str, Any]:
    return {
        "flat": (lambda: af.FlatIndex(dim), [{}]),
        "hnsw": (lambda: af.HNSWIndex(dim, M=16, ef_construction=100, seed=1), [{"ef": e} for e in (16, 48, 128)]),
        "ivfpq": (lambda: af.IVFPQIndex(dim, nlist=64, m=dim // 4, nbits=4), [{"nprobe": p} for p in (2, 8, 32)]),
    }


def time_batch(search: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        search()
        best = min(best, time.perf_counter() - t)
    return best


def single_query_latency(search_one: Callable[[np.ndarray], Any], q: np.ndarray) -> float:
    """Median seconds of one-query searches."""
    times = []
    for row in q:
        t = time.perf_counter()
        search_one(row)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--nq", type=int, default=1000, help="batch of queries for QPS")
    ap.add_argument("--nq-single", type=int, default=200, help="one-query searches for the latency")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--families", default="flat,hnsw,ivfpq")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    ap.add_argument("--out", default=None, help="results file (the command is written at its top)")
    args = ap.parse_args(argv)

    import ray

    from annforge.distributed import ShardedIndex

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    shard_counts = [int(s) for s in args.shards.split(",")]
    x = clustered(args.n, args.dim, seed=1)
    q = clustered(args.nq, args.dim, seed=2)
    exact = af.FlatIndex(args.dim)
    exact.add(x)
    truth, _ = exact.search(q, args.k)

    lines = [
        f"# command: python {' '.join(shlex.quote(a) for a in ['bench/bench_distributed.py'] + argv)}",
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; annforge {af.__version__}; ray {ray.__version__}; "
        f"python {platform.python_version()}; {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at start); "
        f"Ray cluster num_cpus={args.cpus}",
        f"# data: clustered synthetic n={args.n} dim={args.dim}; {args.nq} batch queries, {args.nq_single} single "
        f"queries, k={args.k}; best of {args.repeats} interleaved repeats; hash partitioning; each shard searches "
        f"with max(1, cpus // shards) threads, the in-process index with all cores",
        "",
        f"{'family':8s} {'params':12s} {'setup':14s} {'build_s':>8s} {'batch_QPS':>10s} {'recall@k':>9s} {'1q_ms_p50':>10s} "
        f"{'fanout_ms':>10s}",
    ]
    print("\n".join(lines), flush=True)
    catalogue = families(args.dim)
    for name in args.families.split(","):
        make_index, param_sets = catalogue[name]
        # In-process reference.
        t = time.perf_counter()
        local = make_index()
        if hasattr(local, "train"):
            local.train(x)
        local.add(x)
        local_build = time.perf_counter() - t
        sharded: Dict[int, Any] = {}
        builds: Dict[int, float] = {}
        for s in shard_counts:
            t = time.perf_counter()
            sharded[s] = ShardedIndex.build(x, num_shards=s, make_index=make_index, num_threads=max(1, args.cpus // s))
            builds[s] = time.perf_counter() - t
        rows = []
        for params in param_sets:
            label = ",".join(f"{k}={v}" for k, v in params.items()) or "-"
            best_local = float("inf")
            best: Dict[int, float] = {s: float("inf") for s in shard_counts}
            for _ in range(args.repeats):  # interleaved: every setup sees the same machine noise
                best_local = min(best_local, time_batch(lambda: local.search(q, args.k, **params), 1))
                for s in shard_counts:
                    best[s] = min(best[s], time_batch(lambda: sharded[s].search(q, args.k, **params), 1))
            qs = q[: args.nq_single]
            local_lat = single_query_latency(lambda row: local.search(row, args.k, **params), qs)
            rows.append(f"{name:8s} {label:12s} {'in-process':14s} {local_build:8.2f} {args.nq / best_local:10.0f} "
                        f"{recall(local.search(q, args.k, **params)[0], truth):9.4f} {local_lat * 1e3:10.3f} {'-':>10s}")
            for s in shard_counts:
                lat = single_query_latency(lambda row: sharded[s].search(row, args.k, **params), qs)
                r = recall(sharded[s].search(q, args.k, **params)[0], truth)
                rows.append(f"{name:8s} {label:12s} {f'ray {s} shard' + ('s' if s > 1 else ''):14s} {builds[s]:8.2f} "
                            f"{args.nq / best[s]:10.0f} {r:9.4f} {lat * 1e3:10.3f} {(lat - local_lat) * 1e3:10.3f}")
        for s in shard_counts:
            sharded[s].close()
        print("\n".join(rows), flush=True)
        lines += rows
    lines += [
        "",
        "# fanout_ms: median one-query latency through the shards minus the in-process index's: the Ray calls",
        "# (one per shard, sent at once), moving the query and answers through the object store, and the merge.",
    ]
    ray.shutdown()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
