"""IVF-RaBitQ versus faiss-cpu: recall@10 against single-thread QPS, build time, bytes per vector.

Compares, with the same nlist:
  annforge IVFRaBitQIndex(bits=1, refine="f32")   vs  faiss IndexIVFRaBitQFastScan (1-bit) + IndexRefineFlat
  annforge IVFRaBitQIndex(bits=4, refine="f32")       (the multi-bit codes with the bound-driven re-rank)
  annforge IVFRaBitQIndex(bits=4, refine=None)        (no copy: the multi-bit estimates rank; --libs annforge_b4_none)
  faiss "IVF{nlist},PQ{m}x4fs" + IndexRefineFlat  (m = dim / 4: 4-bit PQ codes as large as the 1-bit RaBitQ codes)
The embeddings are compared by inner product; faiss's RaBitQ supports L2 only, so base and queries are
normalised and every index uses l2 (same neighbours as inner product on unit vectors).
Each library runs in its own process (a fresh one per round); every setting is timed after a warm-up,
fastest of --repeats, by process CPU time (steadier than wall time on a shared machine); rounds alternate the
libraries and the best per setting is kept. QPS at recall 0.90 / 0.95 is interpolated (linearly in recall,
on the upper frontier of the settings).

    python bench/bench_ivf_rabitq.py --data ~/.cache/annforge-dev/debian-minilm --nlist 256 --rounds 2
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_common beside this script
import bench_common  # noqa: E402

NPROBES = [2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 96]
REFINE_FACTORS = [2, 3, 4, 6, 10]
TARGETS = (0.90, 0.95)


def load(data: str):
    x = np.load(os.path.join(data, "base.npy")).astype(np.float32)
    q = np.load(os.path.join(data, "queries.npy")).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gt = np.argsort(-(q @ x.T), axis=1)[:, :10]  # exact, on the normalised rows
    return np.ascontiguousarray(x), np.ascontiguousarray(q), gt


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return bench_common.recall_at_k(ids, gt)


def sweep(search, q: np.ndarray, gt: np.ndarray, repeats: int) -> List[Dict]:
    points = []
    for nprobe in NPROBES:
        for rf in REFINE_FACTORS:
            search(q, nprobe, rf)  # warm-up
            best, ids = float("inf"), None
            for _ in range(repeats):
                t = time.process_time()
                ids = search(q, nprobe, rf)
                best = min(best, time.process_time() - t)
            points.append(dict(nprobe=nprobe, rf=rf, recall=recall(ids, gt), qps=len(q) / max(best, 1e-9)))
    return points


def worker(args) -> Dict:
    x, q, gt = load(args.data)
    d = x.shape[1]
    if args.worker.startswith("annforge"):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
        import annforge as af

        bits = int(args.worker.split("_b")[1].split("_")[0])
        refine = None if args.worker.endswith("_none") else "f32"
        t = time.process_time()
        index = af.IVFRaBitQIndex(d, args.nlist, bits=bits, metric="l2", refine=refine)
        index.train(x, num_threads=1)
        index.add(x, num_threads=1)
        build = time.process_time() - t
        bpv = len(index.to_bytes()) / len(x)  # serialized, as faiss's below

        def search(qq, nprobe, rf):
            return index.search(qq, 10, nprobe=nprobe, refine_factor=rf, num_threads=1)[0]
    else:
        import faiss

        faiss.omp_set_num_threads(1)
        spec = f"IVF{args.nlist},RaBitQfs" if args.worker == "faiss_rabitq" else f"IVF{args.nlist},PQ{d // 4}x4fs"
        t = time.process_time()
        base = faiss.index_factory(d, spec, faiss.METRIC_L2)
        index = faiss.IndexRefineFlat(base)
        index.train(x)
        index.add(x)
        build = time.process_time() - t
        ivf = faiss.extract_index_ivf(base)
        bpv = len(faiss.serialize_index(index)) / len(x)

        def search(qq, nprobe, rf):
            ivf.nprobe = nprobe
            index.k_factor = rf
            return index.search(qq, 10)[1]
    points = sweep(search, q, gt, args.repeats)
    return dict(build_s=build, bytes_per_vector=bpv, points=points)


def frontier_qps_at(points: List[Dict], target: float) -> float:
    """QPS at `target` recall on the recall/QPS frontier (bench_common); NaN when never reached."""
    v = bench_common.frontier_qps_at(points, target)
    return float("nan") if v is None else v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/annforge-dev/debian-minilm"))
    ap.add_argument("--nlist", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--libs", nargs="*", default=["annforge_b1", "annforge_b4", "faiss_rabitq", "faiss_pq4fs"])
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", default="")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    runs: Dict[str, List[Dict]] = {lib: [] for lib in args.libs}
    for r in range(args.rounds):
        order = args.libs if r % 2 == 0 else list(reversed(args.libs))
        for lib in order:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--data", args.data, "--nlist",
                   str(args.nlist), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[lib].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r} {lib} done", file=sys.stderr, flush=True)
    lines = [f"# python bench/bench_ivf_rabitq.py --nlist {args.nlist} --rounds {args.rounds} --repeats {args.repeats}",
             "# data: " + args.data + " (normalised; l2 on unit vectors = inner-product neighbours)",
             "# QPS: one search thread, 1000 queries per call, process CPU time, best per setting over rounds",
             ""]
    summary = {}
    for lib, rs in runs.items():
        merged = {}
        for run in rs:
            for p in run["points"]:
                key = (p["nprobe"], p["rf"])
                if key not in merged or p["qps"] > merged[key]["qps"]:
                    merged[key] = dict(p)
        points = list(merged.values())
        at = {t: frontier_qps_at(points, t) for t in TARGETS}
        build = min(r["build_s"] for r in rs)
        bpv = rs[0]["bytes_per_vector"]
        summary[lib] = dict(at=at, build=build, bpv=bpv, points=points)
        lines.append(f"{lib:14s} build {build:6.2f} s CPU   bytes/vector {bpv:7.1f}   "
                     + "   ".join(f"QPS@{t:.2f} {at[t]:8.0f}" for t in TARGETS))
    lines.append("")
    ref = "faiss_rabitq"
    if ref in summary:
        for lib in summary:
            if lib != ref:
                lines.append(f"{lib} / {ref}: " + "   ".join(
                    f"@{t:.2f} {summary[lib]['at'][t] / summary[ref]['at'][t]:.2f}x" for t in TARGETS))
    lines.append("")
    lines.append("settings (lib nprobe rf recall qps):")
    for lib, s in summary.items():
        for p in sorted(s["points"], key=lambda p: (p["nprobe"], p["rf"])):
            lines.append(f"  {lib:14s} {p['nprobe']:4d} {p['rf']:3d} {p['recall']:.4f} {p['qps']:9.0f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
