"""Two builds of annforge side by side: is a refactor as fast as what it replaced?

Each build is a folder holding an importable ``annforge`` package (a repository's ``python/`` folder with
its compiled module, or a ``site-packages``). For every family configuration, each build trains and adds
once in its own process (build time, file size) and saves its index; then the search sweeps run in
rounds that alternate the builds (A B, B A, A B, ...), each round loading the saved index in a fresh
process, warming up, and keeping the fastest of ``--repeats`` calls per setting. The report gives, per
configuration, each build's QPS at recall@10 targets (interpolated on its recall/QPS frontier) and
the ratio B / A, plus the build-time ratio. Searches are single-threaded batch calls.

    python bench/bench_ab_builds.py --a /path/to/before/python --b python \\
        --configs hnsw-f32,hnsw-f16,ivfpq-fs,ivfpq-pq8,scann --rounds 3

``--data`` is a folder with base.npy and queries.npy (``../shared/tools/make_dev_embeddings.py`` makes the
real 62,697 x 384 MiniLM set under ~/.cache/annforge-dev/debian-minilm); the metric is inner product.
Timings on a shared machine are noisy: run the same build as A and B (``--a python --b python``) to see
how far two identical contenders drift apart in one run.
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
from typing import Any, Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_common beside this script
from bench_common import frontier_qps_at, recall_at_k  # noqa: E402

HNSW_EFS = [10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 200, 256]
NPROBES = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
REFINE_FACTORS = [1, 2, 4, 8]
SCANN_LEAVES = [2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
SCANN_REORDER = [20, 40, 80, 160]

# name -> family, constructor keyword arguments, and the search keyword settings swept
CONFIGS: Dict[str, Dict[str, Any]] = {
    "hnsw-f32": {"family": "hnsw", "args": {"storage": "f32"}, "sweep": [{"ef": e} for e in HNSW_EFS]},
    "hnsw-f16": {"family": "hnsw", "args": {"storage": "f16"}, "sweep": [{"ef": e} for e in HNSW_EFS]},
    "hnsw-sq8": {"family": "hnsw", "args": {"storage": "sq8"}, "sweep": [{"ef": e} for e in HNSW_EFS]},
    # The quantized graph with f16 re-rank vectors, both ends of the `bound` knob (1.0 fast, 1.9 default).
    "hnsw-rabitq-f16": {"family": "hnsw", "args": {"storage": "rabitq", "rerank": "f16"},
                        "sweep": [{"ef": e, "bound": b} for e in HNSW_EFS for b in (1.0, 1.9)]},
    # IVF-PQ code sizes as bench_ivfpq.py's defaults at 384 dimensions: m = dim / 8 (8-bit), dim / 4 (4-bit).
    "ivfpq-pq8": {"family": "ivfpq", "dims_per_m": 8, "args": {"nbits": 8, "refine": None},
                  "sweep": [{"nprobe": p} for p in NPROBES]},
    "ivfpq-fs": {"family": "ivfpq", "dims_per_m": 4, "args": {"nbits": 4, "refine": "f32", "residual": False},
                 "sweep": [{"nprobe": p, "refine_factor": r} for p in NPROBES for r in REFINE_FACTORS]},
    "scann": {"family": "scann", "args": {"reorder": "f32"},
              "sweep": [{"leaves_to_search": n, "reorder_k": r} for n in SCANN_LEAVES for r in SCANN_REORDER]},
}


def load_data(folder: str, limit: int, nq: int):
    root = Path(folder).expanduser()
    base = np.load(root / "base.npy").astype(np.float32)[: limit or None]
    queries = np.load(root / "queries.npy").astype(np.float32)[:nq]
    return np.ascontiguousarray(base), np.ascontiguousarray(queries)


def exact_top10(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact inner-product top 10, in blocks so the score matrix stays small."""
    out = np.empty((len(queries), 10), np.int64)
    for s in range(0, len(queries), 256):
        scores = queries[s:s + 256] @ base.T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        out[s:s + 256] = np.take_along_axis(top, order, 1)
    return out


# --- worker (one build, one configuration, in its own process) ------------------------------------


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    sys.path.insert(0, os.path.abspath(args.package_dir))
    import annforge as af

    cfg = CONFIGS[args.config]
    base, queries = load_data(args.data, args.limit, args.nq)
    dim = base.shape[1]
    if args.mode == "build":
        t0 = time.perf_counter()
        if cfg["family"] == "hnsw":
            index = af.HNSWIndex(dim, "ip", M=16, ef_construction=200, **cfg["args"])
        elif cfg["family"] == "ivfpq":
            m = max(1, dim // cfg["dims_per_m"])
            index = af.IVFPQIndex(dim, args.nlist, m, metric="ip", **cfg["args"])
            index.train(base, num_threads=args.build_threads)
        else:
            index = af.ScaNNIndex(dim, int(round(np.sqrt(len(base)))), metric="ip", **cfg["args"])
            index.train(base, num_threads=args.build_threads)
        index.add(base, num_threads=args.build_threads)
        build_s = time.perf_counter() - t0
        index.save(args.index_path)
        return {"build_s": build_s, "bytes_per_vector": os.path.getsize(args.index_path) / len(base),
                "module": af.__file__}
    gt = np.load(args.gt_path)
    index = af.load(args.index_path)
    points = []
    for setting in cfg["sweep"]:
        call: Callable[[], Any] = lambda: index.search(queries, 10, num_threads=1, **setting)  # noqa: E731
        call()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            found, _ = call()
            best = min(best, time.perf_counter() - t0)
        points.append({**setting, "recall": recall_at_k(np.asarray(found), gt), "qps": len(queries) / best})
    return {"points": points}


# --- driver ----------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, package_dir: str, mode: str, config: str, index_path: Path,
               gt_path: Path) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--package-dir", package_dir,
           "--config", config, "--index-path", str(index_path), "--gt-path", str(gt_path), "--data", args.data,
           "--limit", str(args.limit), "--nq", str(args.nq), "--nlist", str(args.nlist),
           "--build-threads", str(args.build_threads), "--repeats", str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} {mode} with {package_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", help="folder holding the 'before' annforge package")
    ap.add_argument("--b", help="folder holding the 'after' annforge package")
    ap.add_argument("--configs", default="hnsw-f32,hnsw-f16,ivfpq-fs,scann",
                    help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--data", default="~/.cache/annforge-dev/debian-minilm")
    ap.add_argument("--limit", type=int, default=0, help="use the first N base vectors (0: all)")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--nlist", type=int, default=256)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--targets", default="0.90,0.95,0.99")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="all results as JSON")
    # worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--package-dir", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--index-path", help=argparse.SUPPRESS)
    ap.add_argument("--gt-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not args.a or not args.b:
        ap.error("--a and --b are required")
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    targets = [float(t) for t in args.targets.split(",")]
    builds = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ab_"))
    work.mkdir(parents=True, exist_ok=True)
    base, queries = load_data(args.data, args.limit, args.nq)
    gt_path = work / f"gt-{len(base)}-{len(queries)}.npy"
    if not gt_path.exists():
        np.save(gt_path, exact_top10(base, queries))
    print(f"# {len(base)} x {base.shape[1]} base, {len(queries)} queries, inner product; A = {builds['A']}, "
          f"B = {builds['B']}; {args.rounds} rounds alternating A/B, fastest of {args.repeats} per setting")
    results: Dict[str, Any] = {"config": vars(args), "builds": builds, "build": {}, "search": {}}
    for config in configs:
        for name, folder in builds.items():
            r = run_worker(args, folder, "build", config, work / f"{config}-{name}.af", gt_path)
            results["build"].setdefault(config, {})[name] = r
            print(f"build {config:10s} {name}: {r['build_s']:7.2f} s  {r['bytes_per_vector']:7.1f} B/vec  "
                  f"({r['module']})", flush=True)
    for config in configs:
        best: Dict[str, Dict[str, Dict[str, Any]]] = {"A": {}, "B": {}}
        for rnd in range(args.rounds):
            for name in ("AB" if rnd % 2 == 0 else "BA"):
                r = run_worker(args, builds[name], "search", config, work / f"{config}-{name}.af", gt_path)
                for p in r["points"]:
                    key = json.dumps({k: v for k, v in p.items() if k not in ("recall", "qps")}, sort_keys=True)
                    if key not in best[name] or p["qps"] > best[name][key]["qps"]:
                        best[name][key] = p
        results["search"][config] = {name: list(pts.values()) for name, pts in best.items()}
        build = results["build"][config]
        cells = []
        for t in targets:
            qa = frontier_qps_at(results["search"][config]["A"], t)
            qb = frontier_qps_at(results["search"][config]["B"], t)
            ratio = f"{qb / qa:.3f}x" if qa and qb else "n/a"
            cells.append(f"@{t}: A {qa or 0:8.0f} B {qb or 0:8.0f} B/A {ratio}")
        print(f"{config:10s} " + " | ".join(cells)
              + f" | build B/A {build['B']['build_s'] / build['A']['build_s']:.3f}x", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
