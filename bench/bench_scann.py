"""ScaNNIndex versus Google's ScaNN (PyPI ``scann``), plus the anisotropic-versus-isotropic ablation.

compare   identical num_leaves, dims_per_block, anisotropic threshold and reorder on real embeddings
          (ip, single thread, each library in its own process, warm-up, fastest of --repeats):
          recall@10 and QPS over a (leaves_to_search, reorder_k) sweep, QPS at recall 0.90 / 0.95
          (best setting reaching it), build time.
ablation  annforge only: anisotropic codes (with and without the weighted codebook update) versus plain
          isotropic codes of the same size, at fixed small reorder budgets, on the embeddings as given
          (unit norm) and rescaled by log-normal norms (ip data with varying norms); scann's own isotropic and
          anisotropic codes on the same data for reference.

    nice python bench/bench_scann.py compare --data ~/.cache/annforge-dev/debian-minilm
    nice python bench/bench_scann.py ablation --data ~/.cache/annforge-dev/debian-minilm   (--libs annforge: no peer)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

LEAVES = [4, 6, 8, 12, 16, 24, 32, 48, 64]
REORDER = [20, 40, 100]


def load(data: str, limit: int):
    x = np.load(os.path.join(data, "base.npy"))[: limit or None]
    q = np.load(os.path.join(data, "queries.npy"))
    gt_path = os.path.join(data, "gt_ip.npy")
    gt = np.argsort(-(q @ x.T), axis=1)[:, :10] if limit or not os.path.exists(gt_path) else np.load(gt_path)[:, :10]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32), gt


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / gt.shape[1] for a, b in zip(ids, gt)]))


def timed(fn, repeats: int):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def worker(args) -> None:
    x, q, gt = load(args.data, args.limit)
    leaves = args.num_leaves or int(round(np.sqrt(len(x))))
    t0 = time.perf_counter()
    if args.worker == "annforge":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
        import annforge as af

        index = af.ScaNNIndex(x.shape[1], leaves, dims_per_block=args.dims_per_block,
                              anisotropic_threshold=args.threshold, metric="ip", reorder="f32")
        index.train(x, num_threads=1)
        index.add(x, num_threads=1)

        def search(nl: int, rk: int) -> np.ndarray:
            return index.search(q, 10, leaves_to_search=nl, reorder_k=rk, num_threads=1)[0]
    else:
        import scann

        index = (scann.scann_ops_pybind.builder(x, 10, "dot_product").set_n_training_threads(1)
                 .tree(num_leaves=leaves, num_leaves_to_search=min(leaves, 16), training_sample_size=len(x))
                 .score_ah(args.dims_per_block, anisotropic_quantization_threshold=args.threshold)
                 .reorder(100).build())

        def search(nl: int, rk: int) -> np.ndarray:
            return index.search_batched(q, final_num_neighbors=10, leaves_to_search=nl, pre_reorder_num_neighbors=rk)[0]
    build = time.perf_counter() - t0
    rows = []
    for nl in [v for v in LEAVES if v <= leaves]:
        for rk in REORDER:
            secs, ids = timed(lambda: search(nl, rk), args.repeats)
            rows.append({"leaves_to_search": nl, "reorder_k": rk, "recall": recall(np.asarray(ids), gt),
                         "qps": len(q) / secs})
            print(f"  {args.worker} leaves={nl:3d} reorder={rk:4d} recall={rows[-1]['recall']:.4f} "
                  f"qps={rows[-1]['qps']:.0f}", file=sys.stderr, flush=True)
    json.dump({"build_s": build, "num_leaves": leaves, "rows": rows}, sys.stdout)


def qps_at(rows: List[Dict], target: float) -> float:
    ok = [r["qps"] for r in rows if r["recall"] >= target]
    return max(ok) if ok else float("nan")


def compare(args) -> None:
    results = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", ANNFORGE_NUM_THREADS="1")
    for lib in args.libs.split(","):
        cmd = [sys.executable, __file__, "worker", "--worker", lib, "--data", args.data, "--limit", str(args.limit),
               "--num-leaves", str(args.num_leaves), "--dims-per-block", str(args.dims_per_block),
               "--threshold", str(args.threshold), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[lib] = json.loads(out)
        print(f"{lib}: build {results[lib]['build_s']:.1f} s", flush=True)
    print(f"\n{'library':10s} {'build s':>8s} {'QPS@0.90':>9s} {'QPS@0.95':>9s}")
    for lib, r in results.items():
        print(f"{lib:10s} {r['build_s']:8.1f} {qps_at(r['rows'], 0.90):9.0f} {qps_at(r['rows'], 0.95):9.0f}")
    if "annforge" in results and "scann" in results:
        a, s = results["annforge"], results["scann"]
        print(f"ratios annforge/scann: QPS@0.90 {qps_at(a['rows'], .9) / qps_at(s['rows'], .9):.2f}x  "
              f"QPS@0.95 {qps_at(a['rows'], .95) / qps_at(s['rows'], .95):.2f}x  "
              f"build time {a['build_s'] / s['build_s']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


def ablation(args) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
    import annforge as af

    x, q, _ = load(args.data, args.limit)
    rng = np.random.default_rng(0)
    leaves = args.num_leaves or int(round(np.sqrt(len(x))))
    variants = {
        "isotropic": dict(anisotropic_threshold=None),
        "aniso, k-means codebooks": dict(anisotropic_threshold=args.threshold, codebook_iterations=0),
        "aniso, weighted codebooks": dict(anisotropic_threshold=args.threshold),
    }
    for data_name, scale in [("unit norms", np.ones(len(x))), ("log-normal norms", np.exp(rng.normal(0, 0.3, len(x))))]:
        xs = (x * scale[:, None].astype(np.float32)).astype(np.float32)
        gt = np.argsort(-(q @ xs.T), axis=1)[:, :10]
        sigma = " (sigma 0.3)" if "log" in data_name else ""
        print(f"\n{data_name}{sigma} (n={len(xs)}, leaves={leaves}, all searched): recall@10 at reorder_k")
        for name, kw in variants.items():
            t = time.perf_counter()
            index = af.ScaNNIndex(x.shape[1], leaves, dims_per_block=args.dims_per_block, reorder="f32", **kw)
            index.train(xs)
            index.add(xs)
            build = time.perf_counter() - t
            cells = []
            for rk in (10, 20, 40):
                ids, _ = index.search(q, 10, leaves_to_search=leaves, reorder_k=rk)
                cells.append(f"R={rk}: {recall(ids, gt):.4f}")
            print(f"  {name:28s} {'  '.join(cells)}   (build {build:.1f} s)", flush=True)
        if "scann" in args.libs.split(","):  # recall only, so the peer can share the process
            import scann

            for name, threshold in (("scann isotropic", float("nan")), ("scann anisotropic", args.threshold)):
                index = (scann.scann_ops_pybind.builder(xs, 10, "dot_product")
                         .tree(num_leaves=leaves, num_leaves_to_search=leaves, training_sample_size=len(xs))
                         .score_ah(args.dims_per_block, anisotropic_quantization_threshold=threshold)
                         .reorder(100).build())
                cells = []
                for rk in (10, 20, 40):
                    ids, _ = index.search_batched(q, final_num_neighbors=10, leaves_to_search=leaves,
                                                  pre_reorder_num_neighbors=rk)
                    cells.append(f"R={rk}: {recall(np.asarray(ids), gt):.4f}")
                print(f"  {name:28s} {'  '.join(cells)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["compare", "ablation", "worker"])
    p.add_argument("--data", default=os.path.expanduser("~/.cache/annforge-dev/debian-minilm"))
    p.add_argument("--limit", type=int, default=0, help="use the first N base vectors (recomputes ground truth)")
    p.add_argument("--num-leaves", type=int, default=0, help="0 = round(sqrt(n))")
    p.add_argument("--dims-per-block", type=int, default=2)
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--libs", default="annforge,scann")
    p.add_argument("--worker", choices=["annforge", "scann"])
    p.add_argument("--out", default="")
    args = p.parse_args()
    {"compare": compare, "ablation": ablation, "worker": worker}[args.mode](args)


if __name__ == "__main__":
    main()
