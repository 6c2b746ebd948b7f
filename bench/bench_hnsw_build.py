#!/usr/bin/env python3
"""HNSW build time: annforge (f32 / f16 / sq8 storage) against hnswlib (and faiss, usearch), same M,
efConstruction and threads.

Every build runs in its own process (the first large index built in a process is slower than a later
one), the libraries are interleaved round by round, and the fastest of the rounds is kept.

    python bench/bench_hnsw_build.py --rounds 3 --libs annforge-f32,hnswlib,annforge-f16
    python bench/bench_hnsw_build.py --data ~/.cache/annforge-dev/minilm-105k --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

DEFAULT_DATA = "~/.cache/annforge-dev/minilm-105k"


def build_once(lib: str, data: str, threads: int, M: int, efc: int, metric: str) -> float:
    """Seconds for one build, through bench_hnsw.Lib (the same construction bench_hnsw.py times)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "python"))
    sys.path.insert(0, here)
    from bench_hnsw import Lib

    x = np.ascontiguousarray(np.load(os.path.join(os.path.expanduser(data), "base.npy")).astype(np.float32))
    index = Lib(lib, x.shape[1], metric, M, efc)
    t0 = time.perf_counter()
    index.build(x, threads)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with base.npy")
    ap.add_argument("--libs", default="annforge-f32,hnswlib,annforge-f16",
                    help="comma list of annforge-<storage>, hnswlib, faiss, usearch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--metric", default="ip", choices=["ip", "l2"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(build_once(a.worker, a.data, a.threads, a.M, a.efc, a.metric))
        return
    libs = a.libs.split(",")
    times: dict = {lib: [] for lib in libs}
    for rnd in range(a.rounds):
        for lib in libs:
            cmd = [sys.executable, __file__, "--worker", lib, "--data", a.data, "--threads", str(a.threads),
                   "--M", str(a.M), "--efc", str(a.efc), "--metric", a.metric]
            t = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())
            times[lib].append(t)
            print(f"round {rnd} {lib:14s} {t:7.2f} s", flush=True)
    ref = min(times["hnswlib"]) if "hnswlib" in times else None
    for lib in libs:
        ratio = f"  {min(times[lib]) / ref:.2f}x hnswlib" if ref else ""
        print(f"{lib:14s} best {min(times[lib]):7.2f} s  runs {' '.join(f'{v:.2f}' for v in times[lib])}{ratio}")


if __name__ == "__main__":
    main()
