"""OPQ training: CPU time of ``IVFPQIndex(opq=True).train`` (minus the plain train), PQ reconstruction
error and recall@10, with and without OPQ.

    PYTHONPATH=python python bench/bench_opq.py                       # synthetic anisotropic data
    PYTHONPATH=python python bench/bench_opq.py --real ~/.cache/annforge-dev/debian-minilm

Times are ``time.process_time()`` (CPU seconds of this process, all threads), the median of ``--reps``
runs; they are steadier than wall time on a shared machine but still move with contention.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import annforge as af


def synthetic(n: int, nq: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Variance concentrated in a few directions, mixed over every dimension (where OPQ helps)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10, 0.1, dim)
    mix, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    x = ((rng.standard_normal((n + nq, dim)) * scales) @ mix).astype(np.float32)
    return x[:n], x[n:]


def recall_at_10(x: np.ndarray, q: np.ndarray, ids: np.ndarray) -> float:
    d = (q**2).sum(1)[:, None] - 2 * q @ x.T + (x**2).sum(1)[None, :]
    truth = np.argsort(d, axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids[:, :10], truth)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--nbits", type=int, default=4)
    ap.add_argument("--nlist", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--real", help="folder with base.npy / queries.npy (l2 on the stored vectors)")
    args = ap.parse_args()

    if args.real:
        x = np.load(os.path.join(os.path.expanduser(args.real), "base.npy"))[: args.n]
        q = np.load(os.path.join(os.path.expanduser(args.real), "queries.npy"))[: args.nq]
        data = f"real {args.real} {x.shape}"
    else:
        x, q = synthetic(args.n, args.nq, args.dim, 0)
        data = f"synthetic anisotropic {x.shape}"
    dim = x.shape[1]
    print(f"# {' '.join(sys.argv)}")
    print(f"# annforge {af.__version__}, simd {af.simd_level()}, data {data}, m={args.m} nbits={args.nbits} "
          f"nlist={args.nlist}; times: process_time, median of {args.reps}")
    rows = {}
    for opq in (False, True):
        times = []
        for _ in range(args.reps):
            index = af.IVFPQIndex(dim, args.nlist, args.m, nbits=args.nbits, refine=None, opq=opq)
            t0 = time.process_time()
            index.train(x, num_threads=args.threads)
            times.append(time.process_time() - t0)
        index.add(x)
        ids = index.ids()
        mse = float(((index.reconstruct(ids) - x[ids]) ** 2).sum(1).mean())
        rec = recall_at_10(x, q, index.search(q, 10, nprobe=args.nlist // 4)[0])
        rows[opq] = statistics.median(times)
        print(f"opq={opq!s:5}  train {rows[opq]:7.2f} s CPU  (runs {', '.join(f'{t:.2f}' for t in times)})  "
              f"PQ mse {mse:.4f}  recall@10 (PQ ranking, nprobe {args.nlist // 4}) {rec:.3f}")
    print(f"OPQ's share of training: {rows[True] - rows[False]:.2f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
