"""Quantized graph (HNSWIndex storage="rabitq") against graph-index peers: recall@10 vs single-thread QPS.

Each library runs in its own process (a worker: build + save, or load + search sweep), so allocators,
OpenMP pools and caches never mix. Search workers of all libraries run interleaved, round after round;
each worker warms up, then times every ef `--repeats` times, and the fastest time per ef over all rounds
is kept. Times are CPU time of the search process (time.process_time, one search thread), which is less
disturbed by other load on a shared machine than wall time; wall time is recorded beside it.

Peers: hnswlib (M, ef_construction), faiss IndexHNSWFlat, faiss IndexHNSWRaBitQ with an exact refine
(IndexRefineFlat, k_factor 4; faiss ships it for L2 only, so it runs L2 on the data, which is
L2-normalised: the same ranking as inner product), rabitqlib.SymqgIndex (max_degree 32, inner product),
annforge HNSW f32 / f16 and the quantized graph with f32 / f16 re-rank vectors.

Reported per library: the (recall, QPS) sweep, QPS at recall 0.95 and 0.99 (linear interpolation
between the two sweep points around the target; None when the sweep never reaches it), bytes per vector
(saved file size / n) and build time (wall, --build-threads threads).

    python bench/bench_qg.py --out bench/results/qg_minilm62k.json   # ~/.cache/annforge-dev/debian-minilm
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
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_common beside this script
from bench_common import frontier_qps_at, recall_at_k as recall  # noqa: E402

LIBS = ["hnswlib", "faiss_hnsw_flat", "faiss_hnsw_rabitq", "rabitqlib_symqg",
        "annforge_f32", "annforge_f16", "annforge_rabitq", "annforge_rabitq_f16"]
DEFAULT_EFS = [10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 200, 256]


def load_data(args: argparse.Namespace):
    d = Path(os.path.expanduser(args.minilm_dir))
    base = np.load(d / "base.npy")
    queries = np.load(d / "queries.npy")[: args.nq]
    if args.n:
        base = base[: args.n]
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return base, queries


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        sims = queries[s:s + 256] @ base.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s:s + 256] = np.take_along_axis(part, order, axis=1)
    return out


# --- one library -------------------------------------------------------------------------------------


class Lib:
    def __init__(self, name: str, dim: int, M: int, efc: int) -> None:
        self.name, self.dim, self.M, self.efc = name, dim, M, efc
        self.index: Any = None

    def build(self, x: np.ndarray, threads: int) -> None:
        n, name = len(x), self.name
        if name == "hnswlib":
            import hnswlib
            self.index = hnswlib.Index(space="ip", dim=self.dim)
            self.index.init_index(max_elements=n, M=self.M, ef_construction=self.efc, random_seed=0)
            self.index.set_num_threads(threads)
            self.index.add_items(x, np.arange(n))
        elif name.startswith("faiss"):
            import faiss
            faiss.omp_set_num_threads(threads)
            if name == "faiss_hnsw_flat":
                self.index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efConstruction = self.efc
            else:
                base = faiss.IndexHNSWRaBitQ(self.dim, self.M)  # L2 only; the data is normalised
                base.hnsw.efConstruction = self.efc
                self.index = faiss.IndexRefineFlat(base)
                self.index.k_factor = 4
                self.index.train(x)
            self.index.add(x)
        elif name == "rabitqlib_symqg":
            import rabitqlib
            self.index = rabitqlib.SymqgIndex(self.dim, 2 * self.M, "ip")
            self.index.build(x, self.efc, threads)
        else:
            import annforge as af
            kw: Dict[str, Any] = {"storage": "f32"}
            if name == "annforge_f16":
                kw = {"storage": "f16"}
            elif name == "annforge_rabitq":
                kw = {"storage": "rabitq", "rerank": "f32"}
            elif name == "annforge_rabitq_f16":
                kw = {"storage": "rabitq", "rerank": "f16"}
            self.index = af.HNSWIndex(self.dim, "ip", M=self.M, ef_construction=self.efc, **kw)
            self.index.add(x, num_threads=threads)

    def save(self, path: str) -> None:
        if self.name == "hnswlib":
            self.index.save_index(path)
        elif self.name.startswith("faiss"):
            import faiss
            faiss.write_index(self.index, path)
        else:
            self.index.save(path)

    def load(self, path: str, n: int) -> None:
        if self.name == "hnswlib":
            import hnswlib
            self.index = hnswlib.Index(space="ip", dim=self.dim)
            self.index.load_index(path, max_elements=n)
            self.index.set_num_threads(1)
        elif self.name.startswith("faiss"):
            import faiss
            faiss.omp_set_num_threads(1)
            self.index = faiss.read_index(path)
        elif self.name == "rabitqlib_symqg":
            import rabitqlib
            self.index = rabitqlib.SymqgIndex.load(path)
        else:
            import annforge as af
            self.index = af.load(path)

    def search(self, q: np.ndarray, k: int, ef: int, bound: Optional[float] = None) -> np.ndarray:
        name = self.name
        if name == "hnswlib":
            self.index.set_ef(max(ef, k))
            return self.index.knn_query(q, k=k, num_threads=1)[0]
        if name == "faiss_hnsw_flat":
            self.index.hnsw.efSearch = ef
            return self.index.search(q, k)[1]
        if name == "faiss_hnsw_rabitq":
            import faiss
            faiss.downcast_index(self.index.base_index).hnsw.efSearch = ef
            return self.index.search(q, k)[1]
        if name == "rabitqlib_symqg":
            return np.asarray(self.index.search(q, k, max(ef, k), 1)[0])
        return self.index.search(q, k, ef=ef, num_threads=1, **({} if bound is None else {"bound": bound}))[0]


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base, queries = load_data(args)
    lib = Lib(args.worker, base.shape[1], args.M, args.efc)
    if args.mode == "build":
        wall, cpu = time.perf_counter(), time.process_time()
        lib.build(base, args.build_threads)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        lib.save(args.index_path)
        return {"build_wall_s": wall, "build_cpu_s": cpu, "file_bytes": os.path.getsize(args.index_path)}
    truth = np.load(args.gt_path)
    lib.load(args.index_path, len(base))
    lib.search(queries[:100], 10, max(args.efs))  # warm-up
    points = []
    # The quantized graph has a second knob: the bound multiplier (both values swept, frontier kept).
    bounds = args.bounds if "rabitq" in args.worker and args.worker.startswith("annforge") else [None]
    for bound in bounds:
        for ef in args.efs:
            best_cpu = best_wall = float("inf")
            found = None
            for _ in range(args.repeats):
                w, c = time.perf_counter(), time.process_time()
                found = lib.search(queries, 10, ef, bound)
                best_cpu = min(best_cpu, time.process_time() - c)
                best_wall = min(best_wall, time.perf_counter() - w)
            points.append({"ef": ef, "bound": bound, "recall": recall(np.asarray(found), truth),
                           "qps_cpu": len(queries) / best_cpu, "qps_wall": len(queries) / best_wall})
    return {"points": points}


def run_worker(args: argparse.Namespace, lib: str, mode: str, index_path: str, gt_path: str) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", lib, "--mode", mode, "--index-path", index_path,
           "--gt-path", gt_path, "--minilm-dir", args.minilm_dir, "--n", str(args.n), "--nq", str(args.nq),
           "--M", str(args.M), "--efc", str(args.efc), "--build-threads", str(args.build_threads),
           "--repeats", str(args.repeats), "--efs", ",".join(map(str, args.efs)),
           "--bounds", ",".join(map(str, args.bounds))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.build_threads if mode == "build" else 1))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def qps_at(points: List[Dict[str, float]], target: float) -> Optional[float]:
    return frontier_qps_at(points, target, key="qps_cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minilm-dir", default="~/.cache/annforge-dev/debian-minilm")
    ap.add_argument("--n", type=int, default=0, help="cap on base vectors (0: all)")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--efs", type=lambda s: [int(v) for v in s.split(",")], default=DEFAULT_EFS)
    ap.add_argument("--bounds", type=lambda s: [float(v) for v in s.split(",")], default=[0.75, 1.0, 1.3, 1.9],
                    help="annforge rabitq: values of the search knob `bound` swept")
    ap.add_argument("--libs", type=lambda s: s.split(","), default=list(LIBS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--index-path", help=argparse.SUPPRESS)
    ap.add_argument("--gt-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_qg_"))
    work.mkdir(parents=True, exist_ok=True)
    base, queries = load_data(args)
    gt_path = str(work / "gt.npy")
    np.save(gt_path, ground_truth(base, queries, 10))
    n = len(base)
    print(f"data: minilm {n} x {base.shape[1]}, {len(queries)} queries, inner product; M={args.M} "
          f"efc={args.efc}; build threads {args.build_threads}, search 1 thread (CPU time)", flush=True)
    results: Dict[str, Dict[str, Any]] = {}
    for lib in args.libs:
        path = str(work / f"{lib}.idx")
        results[lib] = run_worker(args, lib, "build", path, gt_path)
        results[lib]["best"] = {}
        print(f"built {lib}: {results[lib]['build_wall_s']:.1f} s wall, "
              f"{results[lib]['file_bytes'] / n:.0f} B/vector", flush=True)
    for r in range(args.rounds):
        for lib in args.libs:  # interleaved: every library once per round
            out = run_worker(args, lib, "search", str(work / f"{lib}.idx"), gt_path)
            best = results[lib]["best"]
            for p in out["points"]:
                key = f"{p['ef']}/{p['bound']}"
                cur = best.get(key)
                if cur is None or p["qps_cpu"] > cur["qps_cpu"]:
                    best[key] = p
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = None
    lines = []
    for lib in args.libs:
        pts = sorted(results[lib]["best"].values(), key=lambda p: (p["bound"] or 0.0, p["ef"]))
        results[lib]["points"] = pts
        results[lib]["qps_at_0.95"] = qps_at(pts, 0.95)
        results[lib]["qps_at_0.99"] = qps_at(pts, 0.99)
        del results[lib]["best"]
        if lib == "hnswlib":
            ref = results[lib]
    for lib in args.libs:
        res = results[lib]
        lines.append(f"\n{lib}: build {res['build_wall_s']:.1f} s wall ({res['build_cpu_s']:.1f} s CPU), "
                     f"{res['file_bytes'] / n:.0f} B/vector (file)")
        for p in res["points"]:
            knob = "" if p["bound"] is None else f" bound={p['bound']}"
            lines.append(f"  ef={p['ef']:4d}{knob}  recall@10={p['recall']:.4f}  qps(cpu)={p['qps_cpu']:9.0f}  "
                         f"qps(wall)={p['qps_wall']:9.0f}")
    lines.append("\nsummary (QPS = single-thread CPU-time queries/s, interpolated; x = ratio to hnswlib, "
                 "s = ratio to rabitqlib_symqg)")
    symqg = results.get("rabitqlib_symqg")
    for lib in args.libs:
        res = results[lib]
        cells = []
        for t in ("0.95", "0.99"):
            v = res[f"qps_at_{t}"]
            r = ref[f"qps_at_{t}"] if ref else None
            sq = symqg[f"qps_at_{t}"] if symqg else None
            ratios = ([f"{v / r:4.2f}x"] if v and r else []) + ([f"{v / sq:4.2f}s"] if v and sq else [])
            cells.append(f"@{t}: " + ("n/a" if v is None else f"{v:8.0f}") + (f" ({', '.join(ratios)})" if ratios else ""))
        lines.append(f"  {lib:22s} {'  '.join(cells)}  {res['file_bytes'] / n:6.0f} B/vec  "
                     f"build {res['build_wall_s']:6.1f} s")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "mode")},
                       "n": n, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
