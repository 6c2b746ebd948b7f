#!/usr/bin/env python3
"""annforge.HNSWIndex against hnswlib, faiss IndexHNSWFlat and usearch: recall@10 vs QPS.

Every library runs in its own process. Each builds once with the same M, efConstruction and build
threads (build time, bytes/vector), saves its index, and then the search sweeps are run in rounds,
interleaved across libraries (lib A, lib B, ..., lib A, ...), each round loading the saved index in a
fresh process with a warm-up pass; the fastest of the rounds is kept per (library, ef). Searches are
single-threaded batch calls unless --search-threads says otherwise.

    python bench/bench_hnsw.py --help
    python bench/bench_hnsw.py --data minilm --rounds 3                 # real 384-d embeddings
    python bench/bench_hnsw.py --data synthetic --n 1000000 --dim 128   # clustered synthetic
    python bench/bench_hnsw.py --data minilm --filtered                 # 1% / 10% filters vs hnswlib

The ratios printed at the end (annforge QPS / best peer QPS at recall@10 0.95 and 0.99) are
interpolated on each library's recall/QPS curve. Timings on a shared machine are noisy.
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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

LIBS = ("annforge", "hnswlib", "faiss", "usearch")
# annforge with a compressed traversal storage is benchmarked as "annforge-f16" / "annforge-sq8".
DEFAULT_EFS = [10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 200, 256, 320, 400]


# --- data ----------------------------------------------------------------------------------------


def load_data(args: argparse.Namespace) -> Tuple[np.ndarray, np.ndarray, str]:
    if args.data == "minilm":
        root = Path(args.minilm_dir).expanduser()
        base = np.load(root / "base.npy").astype(np.float32)
        queries = np.load(root / "queries.npy").astype(np.float32)
        if args.n:
            base = base[: args.n]
        return np.ascontiguousarray(base), np.ascontiguousarray(queries[: args.nq]), "ip"
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(16, args.n // 1000), args.dim)).astype(np.float32) * 2
    def draw(n: int) -> np.ndarray:
        lab = rng.integers(0, len(centres), n)
        return (centres[lab] + rng.standard_normal((n, args.dim)).astype(np.float32)).astype(np.float32)
    return draw(args.n), draw(args.nq), "l2"


def ground_truth(base: np.ndarray, queries: np.ndarray, metric: str, k: int, cache: Path,
                 allowed: Optional[np.ndarray] = None) -> np.ndarray:
    if cache.exists():
        return np.load(cache)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import annforge as af

    flat = af.FlatIndex(base.shape[1], metric)
    flat.add(base)
    gt, _ = flat.search(queries, k, filter=allowed)
    np.save(cache, gt)
    return gt


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    t = truth[:, :k]
    return float(np.mean([len(np.intersect1d(a[:k], b)) / k for a, b in zip(found, t)]))


# --- one library per process ---------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Lib:
    """Uniform build / save / load / search over the four libraries."""

    def __init__(self, name: str, dim: int, metric: str, M: int, efc: int) -> None:
        self.storage = name.split("-", 1)[1] if name.startswith("annforge-") else "f32"
        name = "annforge" if name.startswith("annforge") else name
        self.name, self.dim, self.metric, self.M, self.efc = name, dim, metric, M, efc
        self.index: Any = None

    def build(self, x: np.ndarray, threads: int) -> None:
        n = len(x)
        if self.name == "annforge":
            import annforge as af

            self.index = af.HNSWIndex(self.dim, self.metric, M=self.M, ef_construction=self.efc,
                                      storage=self.storage)
            self.index.add(x, num_threads=threads)
        elif self.name == "hnswlib":
            import hnswlib

            self.index = hnswlib.Index(space="ip" if self.metric == "ip" else "l2", dim=self.dim)
            self.index.init_index(max_elements=n, M=self.M, ef_construction=self.efc, random_seed=0)
            self.index.set_num_threads(threads)
            self.index.add_items(x, np.arange(n))
        elif self.name == "faiss":
            import faiss

            faiss.omp_set_num_threads(threads)
            mt = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
            self.index = faiss.IndexHNSWFlat(self.dim, self.M, mt)
            self.index.hnsw.efConstruction = self.efc
            self.index.add(x)
        elif self.name == "usearch":
            from usearch.index import Index

            self.index = Index(ndim=self.dim, metric="ip" if self.metric == "ip" else "l2sq", dtype="f32",
                               connectivity=self.M, expansion_add=self.efc)
            self.index.add(np.arange(n), x, threads=threads)

    def save(self, path: str) -> int:
        if self.name == "annforge":
            self.index.save(path)
        elif self.name == "hnswlib":
            self.index.save_index(path)
        elif self.name == "faiss":
            import faiss

            faiss.write_index(self.index, path)
        else:
            self.index.save(path)
        return os.path.getsize(path)

    def load(self, path: str, n: int) -> None:
        if self.name == "annforge":
            import annforge as af

            self.index = af.load(path)
        elif self.name == "hnswlib":
            import hnswlib

            self.index = hnswlib.Index(space="ip" if self.metric == "ip" else "l2", dim=self.dim)
            self.index.load_index(path, max_elements=n)
        elif self.name == "faiss":
            import faiss

            self.index = faiss.read_index(path)
        else:
            from usearch.index import Index

            self.index = Index.restore(path)

    def search(self, q: np.ndarray, k: int, ef: int, threads: int, filter_ids: Optional[np.ndarray] = None
               ) -> np.ndarray:
        if self.name == "annforge":
            return self.index.search(q, k, ef=ef, num_threads=threads, filter=filter_ids)[0]
        if self.name == "hnswlib":
            self.index.set_ef(max(ef, k))
            self.index.set_num_threads(threads)
            if filter_ids is not None:
                allowed = set(filter_ids.tolist())
                return self.index.knn_query(q, k, num_threads=threads, filter=lambda i: i in allowed)[0]
            return self.index.knn_query(q, k, num_threads=threads)[0]
        if self.name == "faiss":
            import faiss

            faiss.omp_set_num_threads(threads)
            self.index.hnsw.efSearch = max(ef, k)
            return self.index.search(q, k)[1]
        self.index.expansion_search = max(ef, k)
        return np.asarray(self.index.search(q, k, threads=threads).keys)


def worker_build(args: argparse.Namespace) -> Dict[str, Any]:
    base, _, metric = load_data(args)
    lib = Lib(args.worker, base.shape[1], metric, args.M, args.efc)
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    lib.build(base, args.build_threads)
    build_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    size = lib.save(args.index_path)
    own = lib.index.memory_bytes() if lib.name == "annforge" else None
    return {"lib": args.worker, "build_s": build_s, "file_bytes_per_vector": size / len(base),
            "rss_bytes_per_vector": (rss1 - rss0) / len(base),
            "memory_bytes_per_vector": None if own is None else own / len(base)}


def worker_search(args: argparse.Namespace) -> Dict[str, Any]:
    base, queries, metric = load_data(args)
    gt = np.load(args.gt_path)
    lib = Lib(args.worker, base.shape[1], metric, args.M, args.efc)
    lib.load(args.index_path, len(base))
    filter_ids = np.load(args.filter_path) if args.filter_path else None
    out = []
    lib.search(queries[: min(100, len(queries))], 10, max(args.efs), args.search_threads, filter_ids)  # warm-up
    for ef in args.efs:
        t0 = time.perf_counter()
        found = lib.search(queries, 10, ef, args.search_threads, filter_ids)
        dt = time.perf_counter() - t0
        out.append({"ef": ef, "qps": len(queries) / dt, "recall": recall(np.asarray(found), gt, 10)})
    return {"lib": args.worker, "points": out}


# --- driver --------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace, mode: str, lib: str, extra: List[str]) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", lib, "--mode", mode] + extra
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def qps_at(points: List[Dict[str, float]], target: float) -> Optional[float]:
    """Best QPS reaching a recall target, interpolating linearly between neighbouring sweep points."""
    pts = sorted(points, key=lambda p: p["recall"])
    cands = [p["qps"] for p in pts if p["recall"] >= target]
    for a, b in zip(pts, pts[1:]):
        if a["recall"] < target <= b["recall"]:
            t = (target - a["recall"]) / (b["recall"] - a["recall"])
            cands.append(a["qps"] + t * (b["qps"] - a["qps"]))
    return max(cands) if cands else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=["minilm", "synthetic"], default="minilm")
    ap.add_argument("--minilm-dir", default="~/.cache/annforge-dev/debian-minilm")
    ap.add_argument("--n", type=int, default=0, help="base vectors (synthetic: required size; minilm: cap)")
    ap.add_argument("--dim", type=int, default=128, help="synthetic dimension")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--search-threads", type=int, default=1)
    ap.add_argument("--efs", type=lambda s: [int(v) for v in s.split(",")], default=DEFAULT_EFS)
    ap.add_argument("--libs", type=lambda s: s.split(","), default=list(LIBS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--filtered", action="store_true", help="also run 1%% and 10%% filters (annforge vs hnswlib)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--reuse-indexes", action="store_true",
                    help="search the indexes an earlier run left in --workdir instead of building them again")
    # worker-only arguments
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--index-path", help=argparse.SUPPRESS)
    ap.add_argument("--gt-path", help=argparse.SUPPRESS)
    ap.add_argument("--filter-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--filter-as-array", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data == "synthetic" and not args.n:
        args.n = 100_000

    if args.worker:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
        res = worker_build(args) if args.mode == "build" else worker_search(args)
        print(json.dumps(res))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_hnsw_"))
    work.mkdir(parents=True, exist_ok=True)
    base, queries, metric = load_data(args)
    tag = f"{args.data}-{len(base)}-{base.shape[1]}"
    gt = ground_truth(base, queries, metric, 100, work / f"gt-{tag}.npy")
    common = ["--data", args.data, "--minilm-dir", args.minilm_dir, "--n", str(args.n), "--dim", str(args.dim),
              "--nq", str(args.nq), "--seed", str(args.seed), "--M", str(args.M), "--efc", str(args.efc),
              "--build-threads", str(args.build_threads), "--search-threads", str(args.search_threads),
              "--efs", ",".join(map(str, args.efs))]
    results: Dict[str, Any] = {"config": vars(args) | {"n": len(base), "dim": base.shape[1], "metric": metric},
                               "build": {}, "search": {}, "filtered": {}}
    print(f"# {tag}, metric={metric}, M={args.M}, efC={args.efc}, build threads={args.build_threads}, "
          f"search threads={args.search_threads}")
    for lib in args.libs:
        if args.reuse_indexes and (work / f"{lib}-{tag}.idx").exists():
            print(f"build {lib:9s} reused {work / f'{lib}-{tag}.idx'}", flush=True)
            continue
        r = run_worker(args, "build", lib, common + ["--index-path", str(work / f"{lib}-{tag}.idx"),
                                                     "--gt-path", str(work / f"gt-{tag}.npy")])
        results["build"][lib] = r
        print(f"build {lib:9s} {r['build_s']:7.2f} s   file {r['file_bytes_per_vector']:7.1f} B/vec   "
              f"rss {r['rss_bytes_per_vector']:7.1f} B/vec", flush=True)

    best: Dict[str, Dict[int, Dict[str, float]]] = {lib: {} for lib in args.libs}
    for rnd in range(args.rounds):
        for lib in args.libs:
            r = run_worker(args, "search", lib, common + ["--index-path", str(work / f"{lib}-{tag}.idx"),
                                                          "--gt-path", str(work / f"gt-{tag}.npy")])
            for p in r["points"]:
                cur = best[lib].get(p["ef"])
                if cur is None or p["qps"] > cur["qps"]:
                    best[lib][p["ef"]] = p
    for lib in args.libs:
        pts = [best[lib][ef] for ef in sorted(best[lib])]
        results["search"][lib] = pts
        print(f"\n{lib}: " + "  ".join(f"ef={p['ef']}:{p['recall']:.3f}/{p['qps']:.0f}" for p in pts))
    print()
    for target in (0.95, 0.99):
        row = {lib: qps_at(results["search"][lib], target) for lib in args.libs}
        peers = [v for lib, v in row.items() if not lib.startswith("annforge") and v]
        print(f"recall {target}: " + "  ".join(f"{lib}={v:.0f}" if v else f"{lib}=n/a" for lib, v in row.items()))
        for lib, ours in row.items():
            if lib.startswith("annforge") and ours and peers:
                ratio = ours / max(peers)
                print(f"   {lib}/best-peer = {ratio:.2f}x")
                results[f"ratio_{lib}_at_{target}"] = ratio

    if args.filtered:
        rng = np.random.default_rng(1)
        for sel in (0.01, 0.10):
            allowed = np.sort(rng.choice(len(base), max(10, int(len(base) * sel)), replace=False)).astype(np.int64)
            fpath = work / f"filter-{sel}.npy"
            np.save(fpath, allowed)
            fgt = ground_truth(base, queries, metric, 10, work / f"gt-{tag}-f{sel}.npy", allowed)
            res = {}
            for lib in [name for name in args.libs if name.startswith("annforge")] + ["hnswlib"]:
                if lib not in args.libs:
                    continue
                bestf: Dict[int, Dict[str, float]] = {}
                for rnd in range(args.rounds):
                    r = run_worker(args, "search", lib, common + [
                        "--index-path", str(work / f"{lib}-{tag}.idx"), "--gt-path", str(work / f"gt-{tag}-f{sel}.npy"),
                        "--filter-path", str(fpath), "--efs", "10,12,16,20,24,32,48,64,128"])
                    for p in r["points"]:
                        if p["ef"] not in bestf or p["qps"] > bestf[p["ef"]]["qps"]:
                            bestf[p["ef"]] = p
                res[lib] = [bestf[e] for e in sorted(bestf)]
                print(f"filtered {sel:.0%} {lib}: " + "  ".join(
                    f"ef={p['ef']}:{p['recall']:.3f}/{p['qps']:.0f}" for p in res[lib]))
            results["filtered"][str(sel)] = res
            theirs = qps_at(res.get("hnswlib", []), 0.95)
            for lib in res:
                if lib.startswith("annforge"):
                    ours = qps_at(res[lib], 0.95)
                    print(f"filtered {sel:.0%} at recall 0.95: {lib}={ours} hnswlib={theirs}"
                          + (f"  ratio {ours / theirs:.2f}x" if ours and theirs else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
