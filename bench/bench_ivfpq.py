"""IVF-PQ versus faiss-cpu: recall@10 against single-thread QPS, training / add time, bytes per vector.

Compares, with the same nlist and code size:
  annforge IVFPQIndex(nbits=8, refine=None)      vs  faiss "IVF{nlist},PQ{m8}"
  annforge IVFPQIndex(nbits=4, refine="f32")     vs  faiss "IVF{nlist},PQ{m4}x4fs,RFlat"
  (faiss's "x4fs" codes are not residuals -- by_residual is False for that factory string -- so the
  annforge fast-scan configs use residual=False too; --fs-residual switches them to residual codes)
  (plus annforge nbits=8 + f32 and nbits=4 without re-ranking, for the picture)
Each library runs in its own process; every setting is timed after a warm-up, fastest of --repeats.

    python bench/bench_ivfpq.py --data ~/.cache/annforge-dev/debian-minilm --nlist 256 --out bench/results/ivfpq.json
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

NPROBES = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
REFINE_FACTORS = [1, 2, 3, 4, 6, 8, 12, 16]


def load(data: str, limit: int):
    x = np.load(os.path.join(data, "base.npy"))[: limit or None]
    q = np.load(os.path.join(data, "queries.npy"))
    gt_path = os.path.join(data, "gt_ip.npy")
    if limit or not os.path.exists(gt_path):
        gt = np.argsort(-(q @ x.T), axis=1)[:, :10]
    else:
        gt = np.load(gt_path)[:, :10]
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32), gt


def in_calls(search_ids, q: np.ndarray, batch: int) -> np.ndarray:
    """Result ids of all queries, searched `batch` queries per call (0: all in one call)."""
    if batch <= 0 or batch >= len(q):
        return search_ids(q)
    return np.vstack([search_ids(q[i:i + batch]) for i in range(0, len(q), batch)])


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


def sweep(search, q, gt, with_refine: bool, repeats: int, nlist: int, nprobes=None, rfs=None) -> List[Dict]:
    rows = []
    for nprobe in [p for p in (nprobes or NPROBES) if p <= nlist]:
        for rf in (rfs or REFINE_FACTORS) if with_refine else [0]:
            secs, ids = timed(lambda: search(nprobe, rf), repeats)
            rows.append({"nprobe": nprobe, "refine_factor": rf, "recall": recall(ids, gt), "qps": len(q) / secs})
            print(f"    nprobe={nprobe:4d} rf={rf:3d} recall={rows[-1]['recall']:.4f} qps={rows[-1]['qps']:.0f}",
                  file=sys.stderr)
        if rows and rows[-1]["recall"] >= 0.999:
            break
    return rows


def selected(args, name: str) -> bool:
    """--configs: keep only configurations whose name contains one of the given substrings."""
    return not args.configs or any(part in name for part in args.configs)


def run_annforge(args) -> Dict:
    import annforge as af

    x, q, gt = load(args.data, args.limit)
    if args.fast_scan_level:
        af._core._set_pq4_scan_level(args.fast_scan_level)
    out = {"library": "annforge", "simd": af.simd_level(), "fast_scan_simd": af._core._pq4_scan_level(), "configs": {}}
    configs = [
        ("annforge PQ%dx8" % args.m8, dict(m=args.m8, nbits=8, refine=None)),
        ("annforge PQ%dx4fs+f32" % args.m4, dict(m=args.m4, nbits=4, refine="f32", residual=args.fs_residual)),
        ("annforge PQ%dx8+f32" % args.m8, dict(m=args.m8, nbits=8, refine="f32")),
        ("annforge PQ%dx4fs" % args.m4, dict(m=args.m4, nbits=4, refine=None, residual=args.fs_residual)),
    ]
    for name, kw in configs:
        if not selected(args, name):
            continue
        print(name, file=sys.stderr)
        index = af.IVFPQIndex(x.shape[1], args.nlist, kw["m"], nbits=kw["nbits"], refine=kw["refine"], opq=args.opq,
                              residual=kw.get("residual", True))
        t = time.perf_counter()
        index.train(x, num_threads=args.threads)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        index.add(x, num_threads=args.threads)
        add_s = time.perf_counter() - t
        refine = kw["refine"] is not None

        def search(nprobe, rf, index=index, refine=refine):
            params = {"nprobe": nprobe}
            if refine:
                params["refine_factor"] = rf
            return in_calls(lambda part: index.search(part, 10, num_threads=1, **params)[0], q, args.batch)

        out["configs"][name] = {
            "train_s": train_s, "add_s": add_s, "bytes_per_vector": index.bytes_per_vector(),
            "points": sweep(search, q, gt, refine, args.repeats, args.nlist, args.nprobes, args.rfs),
        }
    return out


def run_faiss(args) -> Dict:
    import faiss

    faiss.omp_set_num_threads(args.threads if args.threads > 0 else os.cpu_count())
    x, q, gt = load(args.data, args.limit)
    d = x.shape[1]
    out = {"library": "faiss", "version": faiss.__version__, "configs": {}}
    for spec in (f"IVF{args.nlist},PQ{args.m8}", f"IVF{args.nlist},PQ{args.m4}x4fs,RFlat"):
        if not selected(args, "faiss " + spec):
            continue
        print(spec, file=sys.stderr)
        faiss.omp_set_num_threads(args.threads if args.threads > 0 else os.cpu_count())
        index = faiss.index_factory(d, spec)
        t = time.perf_counter()
        index.train(x)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        add_s = time.perf_counter() - t
        faiss.omp_set_num_threads(1)
        refine = "RFlat" in spec
        ivf = faiss.extract_index_ivf(index)
        code = ivf.code_size

        def search(nprobe, rf, index=index, refine=refine):
            if refine:
                params = faiss.IndexRefineSearchParameters(
                    k_factor=float(rf), base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))
            else:
                params = faiss.SearchParametersIVF(nprobe=nprobe)
            return in_calls(lambda part: index.search(part, 10, params=params)[1], q, args.batch)

        out["configs"]["faiss " + spec] = {
            "train_s": train_s, "add_s": add_s, "bytes_per_vector": code + 8 + (4 * d if refine else 0),
            "points": sweep(search, q, gt, refine, args.repeats, args.nlist, args.nprobes, args.rfs),
        }
    return out


def merge_rounds(runs: List[Dict]) -> Dict:
    """One result per library: each setting's fastest round (recall is the same in every round, the
    indexes being built from the same seed); training and add time also the fastest."""
    merged = json.loads(json.dumps(runs[0]))
    for run in runs[1:]:
        for name, c in run["configs"].items():
            m = merged["configs"][name]
            m["train_s"] = min(m["train_s"], c["train_s"])
            m["add_s"] = min(m["add_s"], c["add_s"])
            for mp, p in zip(m["points"], c["points"]):
                mp["qps"] = max(mp["qps"], p["qps"])
    merged["rounds"] = len(runs)
    return merged


def round_agreement(rounds: Dict[str, List[Dict]]) -> str:
    """How far a library's rounds disagree: per configuration, the median and largest relative QPS
    difference between its slowest and fastest round over all settings."""
    lines = []
    for lib, runs in rounds.items():
        for name in runs[0]["configs"]:
            spreads = []
            for i, p in enumerate(runs[0]["configs"][name]["points"]):
                qps = [run["configs"][name]["points"][i]["qps"] for run in runs]
                spreads.append(max(qps) / min(qps) - 1)
            lines.append(f"rounds agree ({len(runs)} rounds) {name}: median {100 * float(np.median(spreads)):.1f}% "
                         f"max {100 * max(spreads):.1f}% apart")
    return "\n".join(lines)


def best_qps_at(points: List[Dict], target: float) -> float:
    ok = [p["qps"] for p in points if p["recall"] >= target]
    return max(ok) if ok else float("nan")


def summarise(results: Dict) -> str:
    lines = []
    configs = {}
    for r in results.values():
        configs.update(r["configs"])
    lines.append(f"{'config':40s} {'train s':>8s} {'add s':>7s} {'B/vec':>6s} {'max rec':>8s} "
                 f"{'QPS@.90':>8s} {'QPS@.95':>8s} {'QPS@.99':>8s}")
    for name, c in configs.items():
        pts = c["points"]
        lines.append(f"{name:40s} {c['train_s']:8.2f} {c['add_s']:7.2f} {c['bytes_per_vector']:6d} "
                     f"{max(p['recall'] for p in pts):8.4f} " +
                     " ".join(f"{best_qps_at(pts, t):8.0f}" for t in (0.90, 0.95, 0.99)))
    names = list(configs)
    fs_a = next((n for n in names if n.startswith("annforge") and "x4fs+f32" in n), None)
    fs_f = next((n for n in names if n.startswith("faiss") and "RFlat" in n), None)
    if fs_a and fs_f:
        for t in (0.90, 0.95):
            ratio = best_qps_at(configs[fs_a]["points"], t) / best_qps_at(configs[fs_f]["points"], t)
            lines.append(f"QPS ratio annforge fast-scan+f32 / faiss fast-scan+RFlat at recall {t:.2f}: {ratio:.2f}x")
        lines.append(f"training time ratio (annforge / faiss): {configs[fs_a]['train_s'] / configs[fs_f]['train_s']:.2f}")
    p8a = next((n for n in names if n.startswith("annforge") and n.endswith("x8")), None)
    p8f = next((n for n in names if n.startswith("faiss") and "RFlat" not in n), None)
    if p8a and p8f:
        for npb in (8, 32, 128):
            ra = [p["recall"] for p in configs[p8a]["points"] if p["nprobe"] == npb]
            rf = [p["recall"] for p in configs[p8f]["points"] if p["nprobe"] == npb]
            if ra and rf:
                lines.append(f"no re-ranking, nprobe={npb}: recall annforge {ra[0]:.4f} vs faiss {rf[0]:.4f}")
        lines.append(f"PQ8 training time ratio (annforge / faiss): {configs[p8a]['train_s'] / configs[p8f]['train_s']:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/annforge-dev/debian-minilm"),
                    help="folder with base.npy, queries.npy (and gt_ip.npy), L2-normalised embeddings")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N base vectors (0 = all)")
    ap.add_argument("--nlist", type=int, default=256)
    ap.add_argument("--m8", type=int, default=48, help="sub-quantizers of the 8-bit PQ")
    ap.add_argument("--m4", type=int, default=96, help="sub-quantizers of the 4-bit fast-scan PQ")
    ap.add_argument("--opq", action="store_true", help="annforge: learn an OPQ rotation")
    ap.add_argument("--fs-residual", action="store_true",
                    help="annforge fast-scan configs encode residuals (default: not, like faiss's x4fs)")
    ap.add_argument("--threads", type=int, default=1, help="threads for training and add (search is 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["annforge", "faiss"], help="run one library in this process")
    ap.add_argument("--configs", nargs="+", help="only configurations whose name contains one of these "
                    "substrings, e.g. --configs x4fs  (quick runs while iterating)")
    ap.add_argument("--nprobes", type=int, nargs="+", help=f"nprobe values to sweep (default {NPROBES})")
    ap.add_argument("--rfs", type=int, nargs="+", help=f"refine factors to sweep (default {REFINE_FACTORS})")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ivfpq.json"),
                    help="results as JSON (default bench/results/ivfpq.json; per-round parts are written beside it)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate the two library processes this many times and keep each setting's "
                         "fastest round; with 2 or more the summary says how far the rounds agree")
    ap.add_argument("--batch", type=int, default=0,
                    help="queries per search call (default 0: all in one call; 1: one query per call, latency-style)")
    ap.add_argument("--fast-scan-level", choices=["scalar", "avx2", "avx512", "avx512-vbmi"],
                    help="pin annforge's 4-bit fast-scan kernel (default: the best this CPU runs)")
    args = ap.parse_args()

    if args.only:
        res = run_annforge(args) if args.only == "annforge" else run_faiss(args)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        return
    passthrough, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--out", "--rounds"):
            skip = True
            continue
        if not a.startswith(("--out=", "--rounds=")):
            passthrough.append(a)
    rounds: Dict[str, List[Dict]] = {"faiss": [], "annforge": []}
    for r in range(max(1, args.rounds)):
        for lib in ("faiss", "annforge"):  # alternated: both see the same spells of machine load
            part = args.out + f".{lib}.{r}.json"
            subprocess.run([sys.executable, __file__, "--only", lib, "--out", part] + passthrough, check=True)
            with open(part) as f:
                rounds[lib].append(json.load(f))
    results = {lib: merge_rounds(runs) for lib, runs in rounds.items()}
    summary = summarise(results)
    if args.rounds >= 2:
        summary += "\n" + round_agreement(rounds)
    results["summary"] = summary
    results["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(summary)


if __name__ == "__main__":
    main()
