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

Data: --dataset minilm (default) reads the MiniLM embeddings (unit rows); --dataset synthetic generates
--n base rows (default 1,000,000) and --nq queries of --dim (default 384) as follows. A Gaussian mixture in
a latent space of dim/8 (at least 16) coordinates with a decaying spectrum (axis j has scale (1+j)^-0.5, so
a few directions dominate), about n/250 clusters (16 to 4,000) of uneven weights (log-normal), each with
its own spread (log-normal around the centres' rms norm, so tight and broad, overlapping clusters) and a
per-axis stretch; one more constant latent coordinate gives all rows a common mean direction (mean cosine
~0.13, as sentence embeddings have); a random orthonormal map embeds the latent space into dim, isotropic
Gaussian noise (rms norm 0.5) is added and every row is L2-normalised, so inner product = cosine and
faiss's L2-only HNSWRaBitQ ranks alike, as on minilm. Queries are fresh draws (their own random streams),
not base rows. Everything is drawn from --seed, in chunks of 32,768 rows with one random stream per chunk
(given the mixture, row i does not depend on n), written straight into a .npy file: the parent writes
base, queries and the exact top-10 (computed in base-row chunks) once, into --data-cache (reused across
runs when n, nq, dim and seed match) or the workdir, and the workers memory-map them. At 20k rows (200
queries, M 16, efc 200) hnswlib's recall@10 at ef 10 / 32 / 128 is 0.81 / 0.95 / 0.996 (MiniLM's first
20k rows: 0.87 / 0.96 / 0.996).

    python bench/bench_qg.py --out bench/results/qg_minilm62k.json   # ~/.cache/annforge-dev/debian-minilm
    python bench/bench_qg.py --dataset synthetic --n 1000000 --data-cache ~/.cache/annforge-dev/synthetic \
        --out bench/results/qg_synthetic1m.json
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
    if args.dataset == "synthetic":  # written once by the parent; workers map the same files
        base = np.load(args.base_npy, mmap_mode="r")
        queries = np.ascontiguousarray(np.load(args.queries_npy), dtype=np.float32)
        return base, queries
    d = Path(os.path.expanduser(args.minilm_dir))
    base = np.load(d / "base.npy")
    queries = np.load(d / "queries.npy")[: args.nq]
    if args.n:
        base = base[: args.n]
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return base, queries


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int, base_block: int = 1 << 17) -> np.ndarray:
    """Exact top-k by inner product: 256 queries at a time against `base_block` base rows at a time (the
    running top-k merged chunk by chunk), so a 1M base, even memory-mapped, needs ~0.5 GB of scratch."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        q = queries[s:s + 256]
        vals = ids = None
        for b in range(0, len(base), base_block):
            sims = q @ np.asarray(base[b:b + base_block], dtype=np.float32).T
            part = (np.argpartition(-sims, k, axis=1)[:, :k] if sims.shape[1] > k
                    else np.broadcast_to(np.arange(sims.shape[1]), sims.shape))
            v, i = np.take_along_axis(sims, part, axis=1), part + b
            if vals is not None:  # merge with the best of the earlier chunks
                v, i = np.concatenate([vals, v], axis=1), np.concatenate([ids, i], axis=1)
                keep = np.argpartition(-v, k - 1, axis=1)[:, :k]
                v, i = np.take_along_axis(v, keep, axis=1), np.take_along_axis(i, keep, axis=1)
            vals, ids = v, i
        order = np.argsort(-vals, axis=1, kind="stable")
        out[s:s + 256] = np.take_along_axis(ids, order, axis=1)
    return out


# --- synthetic data ----------------------------------------------------------------------------------

SYNTH_VERSION = 1  # in the cached file names: bump whenever the generator's output changes
SYNTH_CHUNK = 1 << 15  # rows per generated chunk; each chunk has its own seeded stream, so this is fixed


def synthetic_spec(n: int, dim: int) -> Dict[str, Any]:
    """The mixture's shape for a base of n rows: ~250 rows per cluster (16..4000 clusters). Scales are in
    units of the centres' rms norm in the latent space."""
    return {"clusters": int(min(4000, max(16, n // 250))), "latent_dim": int(min(dim - 1, max(16, dim // 8))),
            "spectrum_decay": 0.5, "median_spread": 1.0, "spread_log_sd": 0.8, "axis_stretch_log_sd": 0.3,
            "mean_offset": 0.65, "noise": 0.5, "version": SYNTH_VERSION}


class SyntheticMixture:
    """The fixed part of the generator (centres, spreads, weights, embedding), drawn from the seed."""

    def __init__(self, n: int, dim: int, seed: int) -> None:
        self.spec, self.dim, self.seed = synthetic_spec(n, dim), dim, seed
        sp = self.spec
        K, L = sp["clusters"], sp["latent_dim"]
        rng = np.random.default_rng([seed, 0, 0])
        axis_std = (1.0 + np.arange(L)) ** -sp["spectrum_decay"]  # a few dominant latent directions
        rms = float(np.sqrt((axis_std ** 2).sum()))
        axis_std /= rms  # centres of rms norm 1
        # one more latent coordinate, constant: the common mean direction real embeddings share
        self.centres = np.concatenate([rng.standard_normal((K, L)) * axis_std, np.full((K, 1), sp["mean_offset"])], 1)
        # per cluster: overall spread (log-normal) times a per-axis stretch (anisotropic clusters)
        spread = sp["median_spread"] * np.exp(sp["spread_log_sd"] * rng.standard_normal(K))
        self.scales = np.zeros((K, L + 1))
        stretch = np.exp(sp["axis_stretch_log_sd"] * rng.standard_normal((K, L)))
        self.scales[:, :L] = spread[:, None] * stretch * axis_std
        w = np.exp(0.7 * rng.standard_normal(K))
        self.weights = w / w.sum()  # uneven cluster sizes
        self.embed = np.linalg.qr(rng.standard_normal((dim, L + 1)))[0].T.astype(np.float32)  # orthonormal rows
        self.noise_std = float(sp["noise"] / np.sqrt(dim))  # isotropic, over all dim coordinates

    def fill(self, out: np.ndarray, stream: int) -> None:
        """Writes len(out) unit rows into out (an array or a .npy memmap) chunk by chunk; stream 1 is the
        base, stream 2 the queries, so queries are fresh draws of the same distribution."""
        for c, s in enumerate(range(0, len(out), SYNTH_CHUNK)):
            m = min(SYNTH_CHUNK, len(out) - s)
            # one stream per chunk and per kind of draw: row i is the same whatever the number of rows
            lab_rng, lat_rng, noise_rng = (np.random.default_rng([self.seed, stream, c, j]) for j in range(3))
            lab = lab_rng.choice(len(self.weights), size=m, p=self.weights)
            lat = self.centres[lab] + lat_rng.standard_normal((m, self.centres.shape[1])) * self.scales[lab]
            x = lat.astype(np.float32) @ self.embed
            x += self.noise_std * noise_rng.standard_normal((m, self.dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:s + m] = x


def make_synthetic(n: int, nq: int, dim: int, seed: int, base_path: Optional[str] = None):
    """(base, queries, spec). With base_path, the base is written there as .npy chunk by chunk and
    returned memory-mapped (read-only), so a 1M x 384 base never sits in memory as a whole."""
    mix = SyntheticMixture(n, dim, seed)
    if base_path is None:
        base = np.empty((n, dim), dtype=np.float32)
        mix.fill(base, 1)
    else:
        part = base_path + ".part"
        mm = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(n, dim))
        mix.fill(mm, 1)
        mm.flush()
        del mm
        os.replace(part, base_path)
        base = np.load(base_path, mmap_mode="r")
    queries = np.empty((nq, dim), dtype=np.float32)
    mix.fill(queries, 2)
    return base, queries, mix.spec


def synthetic_files(folder: Path, n: int, nq: int, dim: int, seed: int) -> Dict[str, Path]:
    stem = f"synthetic_v{SYNTH_VERSION}_n{n}_nq{nq}_d{dim}_s{seed}"
    return {part: folder / f"{stem}_{part}.npy" for part in ("base", "queries", "gt10")}


def prepare_synthetic(args: argparse.Namespace, work: Path):
    """Generates base, queries and exact top-10 into --data-cache (or the workdir), reusing files whose
    names and shapes match; returns (base memmap, queries, the files, spec, seconds spent)."""
    folder = Path(os.path.expanduser(args.data_cache)) if args.data_cache else work
    folder.mkdir(parents=True, exist_ok=True)
    files = synthetic_files(folder, args.n, args.nq, args.dim, args.seed)
    spec = synthetic_spec(args.n, args.dim)
    t = time.perf_counter()
    try:
        base = np.load(files["base"], mmap_mode="r")
        queries = np.load(files["queries"])
        gt = np.load(files["gt10"], mmap_mode="r")
        if base.shape != (args.n, args.dim) or queries.shape != (args.nq, args.dim) or gt.shape != (args.nq, 10):
            raise ValueError("shape mismatch")
        print(f"reusing cached synthetic data in {folder}", flush=True)
        return base, queries, files, spec, {}
    except (OSError, ValueError):
        pass
    base, queries, spec = make_synthetic(args.n, args.nq, args.dim, args.seed, base_path=str(files["base"]))
    np.save(files["queries"], queries)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    gt = ground_truth(base, queries, 10)
    gt_s = time.perf_counter() - t
    np.save(str(files["gt10"]) + ".part.npy", gt)  # renamed last: its presence marks a complete set
    os.replace(str(files["gt10"]) + ".part.npy", files["gt10"])
    print(f"generated synthetic data in {folder}: {gen_s:.1f} s, exact top-10 {gt_s:.1f} s (wall)", flush=True)
    return base, queries, files, spec, {"generate_s": gen_s, "ground_truth_s": gt_s}


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
    if args.dataset == "synthetic":
        cmd += ["--dataset", "synthetic", "--dim", str(args.dim), "--seed", str(args.seed),
                "--base-npy", args.base_npy, "--queries-npy", args.queries_npy]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.build_threads if mode == "build" else 1))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def qps_at(points: List[Dict[str, float]], target: float) -> Optional[float]:
    return frontier_qps_at(points, target, key="qps_cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["minilm", "synthetic"], default="minilm")
    ap.add_argument("--minilm-dir", default="~/.cache/annforge-dev/debian-minilm")
    ap.add_argument("--n", type=int, default=None,
                    help="minilm: cap on base vectors (default 0: all); synthetic: base size (default 1000000)")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=None, help="synthetic only: dimension (default 384)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    ap.add_argument("--data-cache", default=None,
                    help="synthetic: folder where generated base/queries/ground truth are kept and reused")
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
    ap.add_argument("--base-npy", help=argparse.SUPPRESS)
    ap.add_argument("--queries-npy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dataset == "minilm":
        if args.dim is not None or args.data_cache is not None:
            ap.error("--dim and --data-cache apply to --dataset synthetic only")
        args.n = 0 if args.n is None else args.n
    else:
        args.n = 1_000_000 if args.n is None else args.n
        args.dim = 384 if args.dim is None else args.dim
        if args.n <= 10 or args.nq < 1 or args.dim < 2 or args.seed < 0:
            ap.error("synthetic needs --n > 10, --nq >= 1, --dim >= 2, --seed >= 0")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_qg_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset == "synthetic":
        base, queries, files, spec, gen_times = prepare_synthetic(args, work)
        gt_path, args.base_npy, args.queries_npy = str(files["gt10"]), str(files["base"]), str(files["queries"])
        dataset = dict(name="synthetic", n=args.n, nq=args.nq, dim=args.dim, seed=args.seed, **spec, **gen_times)
        what = (f"synthetic {len(base)} x {base.shape[1]} (mixture of {spec['clusters']} clusters, latent dim "
                f"{spec['latent_dim']}, noise {spec['noise']}, seed {args.seed}, unit rows)")
    else:
        base, queries = load_data(args)
        gt_path = str(work / "gt.npy")
        np.save(gt_path, ground_truth(base, queries, 10))
        dataset = {"name": "minilm", "dir": args.minilm_dir, "n": len(base), "nq": len(queries), "dim": base.shape[1]}
        what = f"minilm {len(base)} x {base.shape[1]}"
    n = len(base)
    print(f"data: {what}, {len(queries)} queries, inner product; M={args.M} "
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
                       "n": n, "dataset": dataset, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
