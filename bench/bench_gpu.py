"""GPU benchmark (issue 19): annforge's CUDA kernels against torch and against annforge on the CPU.

On one synthetic n x dim data set (default 1M x 384, clustered, float32) it measures

* exact search at batches of 1, 100 and 10,000 queries: annforge GPU (f32 and f16 storage) vs torch
  (``torch.topk`` over a chunked ``q @ x.T`` on the same GPU, in this process, what a user would
  write) vs annforge FlatIndex on all CPU cores;
* IVF-PQ at the same batches: the CPU index on all cores at the smallest nprobe reaching recall@10 >=
  the target (default 0.90) vs its GPU copy at that nprobe (recall reported for both);
* k-means of the data into 4,096 clusters: GPU vs CPU time and final objective.

Every timing is the best of ``--repeats`` after a warm-up run. ``--cpu-only`` skips the GPU and torch
parts (a quick check that the script runs anywhere: ``python bench/bench_gpu.py --cpu-only --n 20000
--dim 32 --queries 200``). Results go to stdout and, with ``--out``, to a file whose first line is the
command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

import annforge as af


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def make_data(n: int, dim: int, nq: int, seed: int = 0):
    """Clustered data (a Gaussian around each of n / 100 centres), unit-scale; queries from the same law."""
    rng = np.random.default_rng(seed)
    ncent = max(1, n // 100)
    centres = rng.standard_normal((ncent, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        x[i:i + m] = centres[rng.integers(0, ncent, m)] + 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
    q = centres[rng.integers(0, ncent, nq)] + 0.5 * rng.standard_normal((nq, dim), dtype=np.float32)
    return x, q.astype(np.float32)


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, truth)]))


def torch_topk(x_gpu: Any, q: np.ndarray, k: int, torch: Any, chunk: int = 262144):
    """What a user writes: l2 distances from a chunked q @ x.T, torch.topk per chunk, then a merge."""
    qt = torch.from_numpy(q).cuda()
    qn = (qt * qt).sum(1, keepdim=True)
    best_d, best_i = None, None
    for s in range(0, x_gpu.shape[0], chunk):
        xc = x_gpu[s:s + chunk]
        d = qn + (xc * xc).sum(1)[None, :] - 2.0 * (qt @ xc.T)
        dv, di = torch.topk(d, min(k, xc.shape[0]), dim=1, largest=False)
        di = di + s
        if best_d is None:
            best_d, best_i = dv, di
        else:
            cat_d, cat_i = torch.cat([best_d, dv], 1), torch.cat([best_i, di], 1)
            best_d, pos = torch.topk(cat_d, k, dim=1, largest=False)
            best_i = torch.gather(cat_i, 1, pos)
    torch.cuda.synchronize()
    return best_i.cpu().numpy(), best_d.cpu().numpy()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=10_000, help="largest batch (and ground-truth queries)")
    ap.add_argument("--batches", default="1,100,10000")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target-recall", type=float, default=0.90)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--m", type=int, default=48)
    ap.add_argument("--nbits", type=int, default=4)
    ap.add_argument("--kmeans-k", type=int, default=4096)
    ap.add_argument("--kmeans-iter", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    ap.add_argument("--cpu-only", action="store_true", help="skip the GPU and torch measurements")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: exact,ivfpq,kmeans")
    ap.add_argument("--out", default=None, help="also write the results here (first line: the command)")
    args = ap.parse_args(argv)

    skip = {s for s in args.skip.split(",") if s}
    batches = [b for b in (int(s) for s in args.batches.split(",")) if b <= args.queries]
    use_gpu = not args.cpu_only
    if use_gpu and not af.gpu_available():
        print("no GPU (or annforge built without CUDA): run with --cpu-only", file=sys.stderr)
        return 2
    torch = None
    if use_gpu:
        try:
            import torch as _torch

            if _torch.cuda.is_available():
                torch = _torch
        except ImportError:
            pass
    lines: List[str] = []

    def report(record: Dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        lines.append(line)

    info = af.build_info()
    report({"part": "setup", "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
            "threads": args.threads or os.cpu_count(), "cuda": info["cuda"], "archs": info["cuda_architectures"],
            "gpu": af.gpu._module().device_name(0) if use_gpu else None,
            "torch": (torch.__version__ if torch else "unavailable (no CUDA torch here)") if use_gpu else None})
    t0 = time.perf_counter()
    x, q = make_data(args.n, args.dim, args.queries)
    report({"part": "data", "seconds": round(time.perf_counter() - t0, 2)})

    # Ground truth for recall: exact k-NN of every query (GPU when there is one).
    t0 = time.perf_counter()
    truth = af.knn(x, q, args.k, device="cuda" if use_gpu else "cpu", num_threads=args.threads)[0]
    report({"part": "ground_truth", "device": "cuda" if use_gpu else "cpu", "seconds": round(time.perf_counter() - t0, 2)})

    if "exact" not in skip:
        cpu = af.FlatIndex(args.dim)
        cpu.add(x, num_threads=args.threads)
        gpu32 = cpu.to_gpu() if use_gpu else None
        gpu16 = cpu.to_gpu(dtype="f16") if use_gpu else None
        x_t = torch.from_numpy(x).cuda() if torch else None
        for b in batches:
            qb = q[:b]
            rec: Dict[str, Any] = {"part": "exact", "batch": b}
            t = best_time(lambda: cpu.search(qb, args.k, num_threads=args.threads), args.repeats)
            rec["cpu_qps"] = round(b / t, 1)
            if gpu32 is not None:
                t = best_time(lambda: gpu32.search(qb, args.k), args.repeats)
                rec["gpu_f32_qps"] = round(b / t, 1)
                rec["gpu_f32_recall"] = recall_at(gpu32.search(qb, args.k)[0], truth[:b], args.k)
                t = best_time(lambda: gpu16.search(qb, args.k), args.repeats)
                rec["gpu_f16_qps"] = round(b / t, 1)
                rec["gpu_f16_recall"] = recall_at(gpu16.search(qb, args.k)[0], truth[:b], args.k)
            if x_t is not None:
                t = best_time(lambda: torch_topk(x_t, qb, args.k, torch), args.repeats)
                rec["torch_qps"] = round(b / t, 1)
                rec["gpu_f32_vs_torch"] = round(rec["gpu_f32_qps"] / rec["torch_qps"], 2)
            report(rec)
        del gpu32, gpu16, x_t, cpu

    if "ivfpq" not in skip:
        index = af.IVFPQIndex(args.dim, nlist=min(args.nlist, args.n // 40 or 1), m=args.m, nbits=args.nbits)
        t0 = time.perf_counter()
        index.train(x, num_threads=args.threads, device="cuda" if use_gpu else "cpu")
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.add(x, num_threads=args.threads)
        report({"part": "ivfpq_build", "train_s": round(t_train, 2), "add_s": round(time.perf_counter() - t0, 2),
                "nlist": index.nlist, "m": args.m, "nbits": args.nbits})
        # The smallest nprobe at which the CPU index reaches the target recall (on up to 1,000 queries).
        probe_q = q[:1000]
        nprobe, cpu_recall = None, 0.0
        for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256):
            if p > index.nlist:
                break
            cpu_recall = recall_at(index.search(probe_q, args.k, nprobe=p, num_threads=args.threads)[0],
                                   truth[:1000], args.k)
            nprobe = p
            if cpu_recall >= args.target_recall:
                break
        g = index.to_gpu() if use_gpu else None
        for b in batches:
            qb = q[:b]
            rec = {"part": "ivfpq", "batch": b, "nprobe": nprobe}
            t = best_time(lambda: index.search(qb, args.k, nprobe=nprobe, num_threads=args.threads), args.repeats)
            rec["cpu_qps"] = round(b / t, 1)
            rec["cpu_recall"] = recall_at(index.search(qb, args.k, nprobe=nprobe, num_threads=args.threads)[0],
                                          truth[:b], args.k)
            if g is not None:
                t = best_time(lambda: g.search(qb, args.k, nprobe=nprobe), args.repeats)
                rec["gpu_qps"] = round(b / t, 1)
                rec["gpu_recall"] = recall_at(g.search(qb, args.k, nprobe=nprobe)[0], truth[:b], args.k)
                rec["gpu_vs_cpu"] = round(rec["gpu_qps"] / rec["cpu_qps"], 2)
            report(rec)
        del g, index

    if "kmeans" not in skip:
        kk = min(args.kmeans_k, args.n // 4)
        rec = {"part": "kmeans", "k": kk, "niter": args.kmeans_iter}
        t0 = time.perf_counter()
        res_c = af.kmeans(x, kk, niter=args.kmeans_iter, seed=1, num_threads=args.threads)
        rec["cpu_s"] = round(time.perf_counter() - t0, 2)
        rec["cpu_objective"] = float(res_c.objective[-1])
        if use_gpu:
            t0 = time.perf_counter()
            res_g = af.kmeans(x, kk, niter=args.kmeans_iter, seed=1, device="cuda")
            rec["gpu_s"] = round(time.perf_counter() - t0, 2)
            rec["gpu_objective"] = float(res_g.objective[-1])
            rec["speedup"] = round(rec["cpu_s"] / rec["gpu_s"], 2)
            rec["objective_rel_diff"] = round(abs(rec["gpu_objective"] - rec["cpu_objective"]) / rec["cpu_objective"], 5)
        report(rec)

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("# " + " ".join([sys.executable] + sys.argv) + "\n")
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
