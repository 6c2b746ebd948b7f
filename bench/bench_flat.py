#!/usr/bin/env python
"""Exact search: annforge.FlatIndex against faiss IndexFlatL2 / IndexFlatIP.

Same data, same thread count (1 and all cores), query batch sizes 1, 16 and 1000, one run. Each
library lives in its own worker process for the whole run; the parent interleaves the repeats
(annforge, faiss, annforge, faiss, ...) so background load hits both alike, and keeps the best of
``--repeats``. Prints QPS and the annforge/faiss ratio per configuration.

    python bench/bench_flat.py                       # real MiniLM embeddings (ip) + synthetic (l2)
    python bench/bench_flat.py --datasets synthetic --threads 1 --batches 1,1000
    python bench/bench_flat.py --datasets real --threads 1 --timing cpu   # shared, overloaded machine

Real embeddings: ~/.cache/annforge-dev/debian-minilm/base.npy (made by make_dev_embeddings.py;
``--real PATH`` for another .npy). ``--extend-to N`` adds perturbed, renormalised copies of real
rows until there are N (labelled "extended" in the output; the rows are then not all genuine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

DEFAULT_REAL = os.path.expanduser("~/.cache/annforge-dev/debian-minilm/base.npy")


def synthetic(n: int, dim: int, seed: int = 7) -> np.ndarray:
    """Clustered Gaussian mixture (256 centres), not normalised: the l2 case."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dim)).astype(np.float32) * 2
    labels = rng.integers(0, 256, n)
    return (centres[labels] + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def worker(lib: str, data_dir: str, metric: str) -> None:
    """Build one index, then answer "threads batch nq" lines with the seconds one pass took."""
    base = np.load(os.path.join(data_dir, "base.npy"))
    queries = np.load(os.path.join(data_dir, "queries.npy"))
    if lib == "annforge":
        import annforge

        index = annforge.FlatIndex(base.shape[1], metric=metric)
        index.add(base)

        def search(q: np.ndarray, k: int, threads: int) -> None:
            index.search(q, k, num_threads=threads)
    else:
        import faiss

        index = faiss.IndexFlatL2(base.shape[1]) if metric == "l2" else faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        cpus = len(os.sched_getaffinity(0))

        def search(q: np.ndarray, k: int, threads: int) -> None:
            faiss.omp_set_num_threads(threads or cpus)
            index.search(q, k)
    print("ready", flush=True)
    for line in sys.stdin:
        threads, batch, nq, k = (int(v) for v in line.split())
        chunks = [queries[i:i + batch] for i in range(0, nq, batch)]
        search(chunks[0], k, threads)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for c in chunks:
            search(c, k, threads)
        print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="real,synthetic")
    p.add_argument("--real", default=DEFAULT_REAL, help="real embeddings .npy (ip metric)")
    p.add_argument("--extend-to", type=int, default=0, help="pad real data with perturbed copies up to N rows")
    p.add_argument("--synthetic-n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384, help="synthetic dimension")
    p.add_argument("--batches", default="1,16,1000")
    p.add_argument("--threads", default="1,0", help="0 = all cores")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--queries-single", type=int, default=200, help="queries timed at batch sizes < 100")
    p.add_argument("--queries-batch", type=int, default=1000, help="queries timed at batch sizes >= 100")
    p.add_argument("--timing", choices=("wall", "cpu"), default="wall",
                   help="cpu: the worker process's CPU time (for one thread on a shared, overloaded machine)")
    p.add_argument("--worker", nargs=3, metavar=("LIB", "DIR", "METRIC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0

    import annforge

    print(f"annforge {annforge.__version__} simd={annforge.simd_level()} cpus={len(os.sched_getaffinity(0))} "
          f"timing={args.timing}")
    rows = []
    for name in args.datasets.split(","):
        if name == "real":
            if not os.path.exists(args.real):
                print(f"skip real: {args.real} not found (run shared/tools/make_dev_embeddings.py)")
                continue
            data = np.load(args.real).astype(np.float32)
            label, metric = f"real {Path(args.real).parent.name}", "ip"
            if args.extend_to > len(data):
                rng = np.random.default_rng(3)
                extra = data[rng.integers(0, len(data), args.extend_to - len(data))]
                extra = extra + rng.standard_normal(extra.shape).astype(np.float32) * 0.02
                extra /= np.linalg.norm(extra, axis=1, keepdims=True)
                data = np.vstack([data, extra])
                label += " (extended)"
        else:
            data, label, metric = synthetic(args.synthetic_n + args.queries_batch, args.dim), "synthetic", "l2"
        rng = np.random.default_rng(11)
        perm = rng.permutation(len(data))
        nqb = args.queries_batch
        queries, base = data[perm[:nqb]], data[perm[nqb:]]
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "base.npy"), base)
            np.save(os.path.join(tmp, "queries.npy"), queries)
            procs: Dict[str, subprocess.Popen] = {}
            for lib in ("annforge", "faiss"):
                procs[lib] = subprocess.Popen([sys.executable, __file__, "--worker", lib, tmp, metric],
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert procs[lib].stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            configs = [(int(t), int(b)) for t in args.threads.split(",") for b in args.batches.split(",")]
            best: Dict[tuple, Dict[str, float]] = {c: {} for c in configs}
            for _ in range(args.repeats):
                for threads, batch in configs:
                    nq = args.queries_single if batch < 100 else nqb
                    for lib, proc in procs.items():
                        proc.stdin.write(f"{threads} {batch} {nq} {args.k}\n")  # type: ignore[union-attr]
                        proc.stdin.flush()  # type: ignore[union-attr]
                        secs = json.loads(proc.stdout.readline())[args.timing]  # type: ignore[union-attr]
                        qps = nq / secs
                        best[(threads, batch)][lib] = max(best[(threads, batch)].get(lib, 0.0), qps)
            for proc in procs.values():
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait()
        for (threads, batch), q in best.items():
            rows.append((f"{label} {len(base)}x{base.shape[1]}", metric, threads or "all", batch,
                         q["annforge"], q["faiss"], q["annforge"] / q["faiss"]))
            r = rows[-1]
            print(f"{r[0]:<34} {r[1]:<3} threads={str(r[2]):<4} batch={r[3]:<5} annforge={r[4]:>10,.0f} QPS "
                  f"faiss={r[5]:>10,.0f} QPS  ratio={r[6]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
