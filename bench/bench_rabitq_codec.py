"""The RaBitQ codec alone (no index yet): estimator error and encode / estimate throughput, annforge vs faiss.

annforge: `_core._testing._RaBitQCodec` (codec/rabitq.h), centroid = mean of the base, default query bits
(bits + 3). faiss: `index_factory(d, "RR{d},RaBitQ{bits}")` (a random rotation in front of
IndexRaBitQ, which does not rotate by itself; centroid = mean of the base), one OpenMP thread, `qb` set to
the same query bits as annforge (at most 8, faiss's limit) unless --faiss-qb says otherwise. Each library runs in its own process.

What is measured, per bits value, on the whole base:
  encode     rows/s of annforge encode() vs faiss add() (training -- the centroid -- not counted)
  estimate   query x row pairs/s. annforge: estimate() returns every row's estimate and bounds; "stage 1"
             is the sign-code estimate of the same multi-bit codes (the first stage of a pruned search).
             faiss: search(k=10), which for multi-bit codes refines only rows whose 1-bit bound can still
             enter the top 10, so it is not an all-pairs number there.
  error      over all pairs of the first --error-queries queries: mean (bias), RMS and max |error| of the
             estimated inner product; annforge also the share of pairs inside its bound at eps0 1.9 / 3.0
             (faiss has no bound to report); recall@10 of the top 10 by estimate alone against exact ground truth.
  bytes      bytes per vector of the codes with their factors.
Times are CPU time of the process (time.process_time), steadier than wall time on a shared machine.

    python bench/bench_rabitq_codec.py --data ~/.cache/annforge-dev/debian-minilm --bits 1,2,4,8 \
        --out bench/results/rabitq_codec_minilm_2026-12-05.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def load(data: str, limit: int):
    x = np.ascontiguousarray(np.load(os.path.join(data, "base.npy"))[: limit or None], dtype=np.float32)
    q = np.ascontiguousarray(np.load(os.path.join(data, "queries.npy")), dtype=np.float32)
    return x, q


def default_query_bits(bits: int) -> int:
    """annforge's default for 384-d codes (codec/rabitq.h: bits + 3)."""
    return bits + 3


def error_stats(est_ip: np.ndarray, true_ip: np.ndarray) -> dict:
    err = (est_ip - true_ip).astype(np.float64)
    return {"bias": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean())), "max_abs": float(np.abs(err).max())}


def recall_at_10(scores: np.ndarray, exact_top: np.ndarray) -> float:
    """scores: larger is closer, one row per query."""
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top, exact_top)]))


def run_annforge(args, x, q, true_ip, exact_top) -> list:
    from annforge._core import _testing as T

    out = []
    for bits in args.bits:
        codec = T._RaBitQCodec(x.shape[1], "ip", bits, 0)
        codec.fit(x)
        t = time.process_time()
        codes = codec.encode(x)
        encode_s = time.process_time() - t
        nq = args.speed_queries
        codec.estimate(q[0], codes)  # warm-up
        t = time.process_time()
        for i in range(nq):
            codec.estimate(q[i], codes)
        estimate_s = time.process_time() - t
        stage1_s = None
        if bits > 1:
            t = time.process_time()
            for i in range(nq):
                codec.estimate(q[i], codes, stage_bits=1)
            stage1_s = time.process_time() - t
        ne = args.error_queries
        est = np.empty((ne, len(x)), dtype=np.float32)
        inside = {1.9: 0, 3.0: 0}
        half = []
        for i in range(ne):
            for eps0 in inside:
                e, lo, hi = codec.estimate(q[i], codes, eps0=eps0)
                slack = 1e-5 * (1 + np.abs(1 - true_ip[i]))
                inside[eps0] += int(((lo - slack <= 1 - true_ip[i]) & (1 - true_ip[i] <= hi + slack)).sum())
                if eps0 == 1.9:
                    est[i] = 1.0 - e
                    half.append(float(np.mean(hi - e)))
        row = {"library": "annforge", "bits": bits, "query_bits": codec.default_query_bits,
               "bytes_per_vector": codec.record_bytes, "encode_rows_per_s": len(x) / encode_s,
               "estimate_pairs_per_s": nq * len(x) / estimate_s,
               "stage1_pairs_per_s": nq * len(x) / stage1_s if stage1_s else None,
               "bound_coverage_eps1.9": inside[1.9] / (ne * len(x)), "bound_coverage_eps3": inside[3.0] / (ne * len(x)),
               "bound_half_width_eps1.9": float(np.mean(half)), "recall10_by_estimate": recall_at_10(est, exact_top)}
        row.update(error_stats(est, true_ip[:ne]))
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return out


def run_faiss(args, x, q, true_ip, exact_top) -> list:
    import faiss

    faiss.omp_set_num_threads(1)
    d = x.shape[1]
    out = []
    for bits in args.bits:
        index = faiss.index_factory(d, f"RR{d},RaBitQ{bits if bits > 1 else ''}", faiss.METRIC_INNER_PRODUCT)
        qb = args.faiss_qb if args.faiss_qb is not None else min(8, default_query_bits(bits))
        faiss.downcast_index(index.index).qb = qb
        index.train(x)
        t = time.process_time()
        index.add(x)
        encode_s = time.process_time() - t
        nq = args.speed_queries
        index.search(q[:1], 10)  # warm-up
        t = time.process_time()
        index.search(q[:nq], 10)
        search_s = time.process_time() - t
        ne = args.error_queries
        dist, ids = index.search(q[:ne], len(x))  # every row: the estimates of all pairs
        est = np.empty((ne, len(x)), dtype=np.float32)
        for i in range(ne):
            est[i, ids[i]] = dist[i]
        row = {"library": "faiss", "bits": bits, "query_bits": qb, "bytes_per_vector": index.sa_code_size(),
               "encode_rows_per_s": len(x) / encode_s, "search10_pairs_per_s": nq * len(x) / search_s,
               "recall10_by_estimate": recall_at_10(est, exact_top)}
        row.update(error_stats(est, true_ip[:ne]))
        out.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return out


def worker(args) -> None:
    x, q = load(args.data, args.limit)
    ne = args.error_queries
    true_ip = (q[:max(ne, 1)].astype(np.float64) @ x.T.astype(np.float64))
    exact_top = np.argpartition(-true_ip, 10, axis=1)[:, :10]
    fn = run_annforge if args.worker == "annforge" else run_faiss
    print(json.dumps(fn(args, x, q, true_ip, exact_top)))


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.expanduser("~/.cache/annforge-dev/debian-minilm"))
    p.add_argument("--limit", type=int, default=0, help="use the first N base rows (0: all)")
    p.add_argument("--bits", default="1,2,4,8")
    p.add_argument("--speed-queries", type=int, default=50)
    p.add_argument("--error-queries", type=int, default=100)
    p.add_argument("--faiss-qb", type=int, default=None)
    p.add_argument("--libraries", default="annforge,faiss")
    p.add_argument("--out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.bits = [int(b) for b in str(args.bits).split(",")]
    if args.worker:
        worker(args)
        return
    cmd = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    rows = []
    for lib in args.libraries.split(","):
        proc = subprocess.run([sys.executable, __file__, "--worker", lib] + sys.argv[1:], check=True,
                              stdout=subprocess.PIPE, text=True)
        rows += json.loads(proc.stdout.strip().splitlines()[-1])
    x_shape = np.load(os.path.join(args.data, "base.npy"), mmap_mode="r").shape
    n = min(x_shape[0], args.limit) if args.limit else x_shape[0]
    load_avg = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
    lines = [cmd, f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; data {args.data}: {n} x {x_shape[1]}, "
                  f"inner product; CPU time (process_time), one thread; {os.cpu_count()} CPUs, load average "
                  f"{load_avg} at the end",
             "",
             "| library | bits | query bits | bytes/vec | encode rows/s | estimate pairs/s (all) | stage-1 pairs/s "
             "| faiss search k=10 pairs/s | bias | RMSE | max abs | recall@10 by estimate | bound cover 1.9 / 3.0 "
             "| mean half-width (1.9) |",
             "| --- " * 14 + "|"]
    for r in sorted(rows, key=lambda r: (r["bits"], r["library"])):
        cover = (f"{r['bound_coverage_eps1.9']:.4f} / {r['bound_coverage_eps3']:.4f}"
                 if "bound_coverage_eps3" in r else "-")
        lines.append(
            f"| {r['library']} | {r['bits']} | {r['query_bits']} | {r['bytes_per_vector']} | "
            f"{r['encode_rows_per_s']:,.0f} | {fmt(r.get('estimate_pairs_per_s'), ',.0f')} | "
            f"{fmt(r.get('stage1_pairs_per_s'), ',.0f')} | {fmt(r.get('search10_pairs_per_s'), ',.0f')} | "
            f"{r['bias']:+.5f} | {r['rmse']:.5f} | {r['max_abs']:.4f} | {r['recall10_by_estimate']:.3f} | {cover} | "
            f"{fmt(r.get('bound_half_width_eps1.9'), '.4f')} |")
    lines += ["", "raw:"] + [json.dumps(r) for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
