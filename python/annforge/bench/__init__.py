"""``annforge bench``: recall / QPS / latency benchmarks of annforge families and peer libraries.

>>> from annforge.bench import main  # doctest: +SKIP
>>> main(["--quick", "--algos", "annforge-flat,faiss-flat", "--out", "/tmp/ab"])  # doctest: +SKIP

``--workload minhash`` benchmarks Jaccard search instead (annforge's MinHash LSH against datasketch):
signature, insert and one-at-a-time query throughput and pair recall / precision against exact Jaccard.

>>> main(["--workload", "minhash", "--quick", "--out", "/tmp/ab-mh"])  # doctest: +SKIP

Every algorithm runs in its own subprocess (``python -m annforge.bench.worker``) with a warm-up
before timing and the best of ``--repeats`` runs; results go to ``<out>/results.json``,
``results.csv`` and ``recall_qps.png``.
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

from .algorithms import MINHASH_REGISTRY, REGISTRY, default_algorithms
from .datasets import (Dataset, SetDataset, ensure_ground_truth, exact_pairs, load_dataset, load_text_sets,
                       minhash_corpus)
from .report import (MINHASH_CSV_FIELDS, mark_pareto, print_minhash_table, print_table, write_csv, write_json,
                     write_minhash_plot, write_plot)

__all__ = ["main", "run_benchmark", "run_minhash_benchmark"]


def _parse_value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return None if text.lower() == "none" else text


def _parse_overrides(items: List[str]) -> Dict[str, Dict[str, List[Any]]]:
    """``algo.param=v1,v2`` → {algo: {param: [v1, v2]}}."""
    out: Dict[str, Dict[str, List[Any]]] = {}
    for item in items:
        key, _, values = item.partition("=")
        algo, _, param = key.partition(".")
        if not values or not param:
            raise SystemExit(f"bad override {item!r}; expected algo.param=v1,v2")
        out.setdefault(algo, {})[param] = [_parse_value(v) for v in values.split(",")]
    return out


def _load_config(path: str) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise SystemExit("TOML config files need Python 3.11+ or `pip install tomli`") from None
    with open(path, "rb") as f:
        return tomllib.load(f)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="annforge bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["vectors", "minhash"], default=None,
                   help="vectors (k-NN, default) or minhash (Jaccard: MinHash LSH vs datasketch)")
    p.add_argument("--dataset", help="'default', an ann-benchmarks .hdf5 file, or base vectors (.fvecs/.bvecs/.npy); "
                                     "with --workload minhash a text file with one document per line")
    p.add_argument("--shingle", default=None, help="minhash text shingles: word1 (default), word3, char5, ...")
    p.add_argument("--queries", help="query vectors file when --dataset is a vector file")
    p.add_argument("--gt", help="ground-truth ids (.ivecs/.npy); computed with FlatIndex and cached if missing")
    p.add_argument("--metric", default=None, help="l2, ip or cosine for vector-file datasets (default l2)")
    p.add_argument("--algos", help=f"comma-separated subset of: {', '.join(REGISTRY)} (default: all available)")
    p.add_argument("--k", type=int, default=None, help="neighbours per query (default 10)")
    p.add_argument("--threads", type=int, default=None, help="search threads (default 1; 0 = all cores)")
    p.add_argument("--build-threads", type=int, default=None, help="build threads (default 0 = all cores)")
    p.add_argument("--batch", type=int, default=None, help="queries per search call in QPS mode (0 = all)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3)")
    p.add_argument("--latency-queries", type=int, default=None, help="single queries timed for p50/p95/p99")
    p.add_argument("--sweep", action="append", default=[], metavar="ALGO.PARAM=V1,V2",
                   help="override one sweep axis, e.g. hnswlib.ef=10,50,200 (repeatable)")
    p.add_argument("--build", action="append", default=[], metavar="ALGO.PARAM=V",
                   help="override a build parameter, e.g. faiss-hnsw.M=32 (repeatable)")
    p.add_argument("--config", help="TOML file with the same keys (dataset, algos, k, threads, [sweep.ALGO] ...)")
    p.add_argument("--out", default=None, help="output folder (default ./annforge-bench)")
    p.add_argument("--quick", action="store_true", help="small dataset and sweeps (also ANNFORGE_BENCH_QUICK=1)")
    p.add_argument("--all-rows", action="store_true", help="print every sweep point, not only the frontier")
    p.add_argument("--compare", nargs="+", metavar="RUN.json", help="merge earlier results files into one table/plot")
    p.add_argument("--list", action="store_true", help="list the algorithms available here and exit")
    return p


def _settings(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = _load_config(args.config) if args.config else {}
    defaults = dict(workload="vectors", dataset=None, queries=None, gt=None, metric="l2", shingle="word1", algos=None,
                    k=10, threads=1, build_threads=0, batch=0, repeats=3, latency_queries=200, out="annforge-bench")
    s = {key: cfg.get(key, cfg.get(key.replace("_", "-"), d)) for key, d in defaults.items()}
    for key in defaults:
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    s["quick"] = bool(args.quick or cfg.get("quick") or os.environ.get("ANNFORGE_BENCH_QUICK") == "1")
    if s["quick"]:
        if args.repeats is None and "repeats" not in cfg:
            s["repeats"] = 1
        if args.latency_queries is None and "latency_queries" not in cfg:
            s["latency_queries"] = 20
    sweep = {a: {p: list(v) if isinstance(v, list) else [v] for p, v in axes.items()}
             for a, axes in cfg.get("sweep", {}).items()}
    for a, axes in _parse_overrides(args.sweep).items():
        sweep.setdefault(a, {}).update(axes)
    build = {a: dict(v) for a, v in cfg.get("build", {}).items()}
    for a, axes in _parse_overrides(args.build).items():
        build.setdefault(a, {}).update({p: v[0] for p, v in axes.items()})
    s["sweep_overrides"], s["build_overrides"] = sweep, build
    if isinstance(s["algos"], str):
        s["algos"] = [a.strip() for a in s["algos"].split(",") if a.strip()]
    return s


def _registry(s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return MINHASH_REGISTRY if s.get("workload") == "minhash" else REGISTRY


def _sweep_for(algo: str, s: Dict[str, Any]) -> List[Dict[str, Any]]:
    spec = _registry(s)[algo]
    points = [dict(p) for p in (spec["quick"] if s["quick"] else spec["sweep"])]
    override = s["sweep_overrides"].get(algo)
    if override:
        import itertools

        base = points[0] if points else {}
        keys = list(override)
        points = []
        for values in itertools.product(*(override[k] for k in keys)):
            points.append({**base, **dict(zip(keys, values))})
        points = [dict(t) for t in {tuple(sorted(p.items())): None for p in points}]
    return points


def _child_env(search_threads: int = 0) -> Dict[str, str]:
    env = dict(os.environ)
    if search_threads > 0:
        # faiss' batched flat search runs in OpenBLAS, whose thread count is fixed when it loads: pin it to the
        # search threads, or a "1 thread" faiss run oversubscribes the cores and looks several times slower.
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(search_threads))
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_benchmark(ds: Dataset, s: Dict[str, Any], progress: Any = None, task: Any = None) -> List[Dict[str, Any]]:
    """Run every selected algorithm in its own subprocess; returns one row per sweep point."""
    k = int(s["k"])
    gt_ids, gt_dist = ensure_ground_truth(ds, k)
    algos = s["algos"] or default_algorithms()
    unknown = [a for a in algos if a not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown algorithm(s) {unknown}; known: {', '.join(REGISTRY)}")
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="annforge-bench-") as work:
        for name, arr in [("base", ds.base), ("queries", ds.queries), ("gt_ids", gt_ids), ("gt_dist", gt_dist)]:
            np.save(os.path.join(work, f"{name}.npy"), arr)
        for algo in algos:
            if not REGISTRY[algo]["available"]():
                _say(progress, f"[yellow]skipping {algo}: its library is not installed[/]")
                continue
            sweep = _sweep_for(algo, s)
            spec = dict(algo=algo, work_dir=work, metric=ds.metric, k=k, threads=s["threads"],
                        build_threads=s["build_threads"], batch=s["batch"], repeats=s["repeats"],
                        latency_queries=s["latency_queries"], sweep=sweep,
                        build={**REGISTRY[algo]["build"], **s["build_overrides"].get(algo, {})})
            spec_path = os.path.join(work, f"{algo}.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            if progress is not None:
                progress.update(task, description=f"{algo}: building")
            proc = subprocess.Popen([sys.executable, "-m", "annforge.bench.worker", spec_path],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=_child_env(int(s["threads"])))
            build: Dict[str, Any] = {}
            done = 0
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if msg["event"] == "build":
                    build = msg
                elif msg["event"] == "result":
                    done += 1
                    mem = build.get("memory_bytes")
                    rows.append(dict(algo=algo, params=msg["params"], recall=msg["recall"],
                                     recall_tolerant=msg["recall_tolerant"], qps=msg["qps"], p50_ms=msg["p50_ms"],
                                     p95_ms=msg["p95_ms"], p99_ms=msg["p99_ms"], build_s=build.get("build_s"),
                                     memory_bytes=mem, rss_growth=build.get("rss_growth"),
                                     bytes_per_vector=(mem if mem is not None else build.get("rss_growth", 0))
                                     / max(1, len(ds.base)), build_params=spec["build"]))
                    if progress is not None:
                        progress.update(task, advance=1, description=f"{algo}: {done}/{len(sweep)}")
                elif msg["event"] == "error":
                    _say(progress, f"[red]{algo} failed: {msg['message']}[/]")
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.wait() != 0 and done == 0:
                tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
                _say(progress, f"[red]{algo} exited with {proc.returncode}[/] {' '.join(tail)}")
            if progress is not None and done < len(sweep):
                progress.update(task, advance=len(sweep) - done)
    return rows


def load_set_dataset(s: Dict[str, Any]) -> SetDataset:
    """The minhash workload's corpus: built-in (``None``/``default``) or a text file, one document per line."""
    if s["dataset"] in (None, "default"):
        return minhash_corpus(1000, 200) if s["quick"] else minhash_corpus()
    return load_text_sets(str(s["dataset"]), s["shingle"])


def run_minhash_benchmark(ds: SetDataset, s: Dict[str, Any], progress: Any = None,
                          task: Any = None) -> List[Dict[str, Any]]:
    """Exact Jaccard pairs per threshold, then each MinHash library in its own subprocess; one row per point."""
    algos = s["algos"] or [a for a, spec in MINHASH_REGISTRY.items() if spec["available"]()]
    unknown = [a for a in algos if a not in MINHASH_REGISTRY]
    if unknown:
        raise SystemExit(f"unknown minhash algorithm(s) {unknown}; known: {', '.join(MINHASH_REGISTRY)}")
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="annforge-bench-") as work:
        with open(os.path.join(work, "docs.json"), "w") as f:
            json.dump(ds.sets, f)
        thresholds = sorted({float(p["threshold"]) for a in algos for p in _sweep_for(a, s)})
        for t in thresholds:
            if progress is not None:
                progress.update(task, description=f"exact pairs J>={t:g}")
            pairs = np.array(sorted(exact_pairs(ds.sets, t)), dtype=np.int64).reshape(-1, 2)
            np.save(os.path.join(work, f"truth_{t:.6f}.npy"), pairs)
        for algo in algos:
            sweep = _sweep_for(algo, s)
            if not MINHASH_REGISTRY[algo]["available"]():
                _say(progress, f"[yellow]skipping {algo}: its library is not installed[/]")
                if progress is not None:
                    progress.update(task, advance=len(sweep))
                continue
            spec = dict(workload="minhash", algo=algo, work_dir=work, threads=s["threads"], repeats=s["repeats"],
                        sweep=sweep)
            spec_path = os.path.join(work, f"{algo}.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            if progress is not None:
                progress.update(task, description=f"{algo}: signing")
            proc = subprocess.Popen([sys.executable, "-m", "annforge.bench.worker", spec_path],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=_child_env(int(s["threads"])))
            done = 0
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if msg["event"] == "result":
                    done += 1
                    rows.append(dict(algo=algo, **{k: v for k, v in msg.items() if k != "event"}))
                    if progress is not None:
                        progress.update(task, advance=1, description=f"{algo}: {done}/{len(sweep)}")
                elif msg["event"] == "error":
                    _say(progress, f"[red]{algo} failed: {msg['message']}[/]")
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.wait() != 0 and done == 0:
                tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
                _say(progress, f"[red]{algo} exited with {proc.returncode}[/] {' '.join(tail)}")
            if progress is not None and done < len(sweep):
                progress.update(task, advance=len(sweep) - done)
    return rows


def _main_minhash(s: Dict[str, Any], console: Any, t_start: float) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(s["out"])
    ds = load_set_dataset(s)
    sizes = [len(x) for x in ds.sets]
    console.print(f"dataset [bold]{ds.name}[/]: {len(ds.sets):,} documents, {np.mean(sizes):.1f} shingles on average, "
                  f"threads={s['threads']}")
    algos = s["algos"] or [a for a, spec in MINHASH_REGISTRY.items() if spec["available"]()]
    s["algos"] = algos
    total = sum(len(_sweep_for(a, s)) for a in algos if a in MINHASH_REGISTRY)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total)
        rows = run_minhash_benchmark(ds, s, progress, task)
    if not rows:
        console.print("[red]no results[/]")
        return 1
    import annforge

    meta = dict(workload="minhash", dataset=ds.name, n=len(ds.sets), mean_set_size=float(np.mean(sizes)),
                shingle=s["shingle"], threads=s["threads"], repeats=s["repeats"], annforge=annforge.build_info(),
                cpu_count=os.cpu_count(), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print_minhash_table(rows, title=f"{ds.name}: MinHash LSH, pair recall vs exact Jaccard ({s['threads'] or 'all'} "
                                    f"thread(s))")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", meta, rows)
    write_csv(out / "results.csv", rows, MINHASH_CSV_FIELDS)
    why = write_minhash_plot(out / "recall_qps.png", rows, f"{ds.name}: MinHash LSH")
    written = [out / "results.json", out / "results.csv"] + ([] if why else [out / "recall_qps.png"])
    console.print("wrote " + ", ".join(str(p) for p in written) + f" in {time.perf_counter() - t_start:.0f} s")
    if why:
        console.print(f"[yellow]{why}[/]")
    return 0


def _say(progress: Any, text: str) -> None:
    if progress is not None:
        progress.console.print(text)
    else:
        print(text, file=sys.stderr)


def _compare(paths: List[str], out: Path) -> int:
    rows: List[Dict[str, Any]] = []
    k = 10
    for path in paths:
        data = json.loads(Path(path).read_text())
        label = Path(path).stem if Path(path).stem != "results" else Path(path).parent.name
        k = int(data.get("meta", {}).get("k", k))
        for r in data["results"]:
            rows.append({**r, "algo": f"{r['algo']} [{label}]", "run": label})
    mark_pareto(rows)
    out.mkdir(parents=True, exist_ok=True)
    print_table(rows, k, title=f"annforge bench --compare ({len(paths)} runs)")
    write_json(out / "compare.json", {"compared": paths, "k": k}, rows)
    write_csv(out / "compare.csv", rows)
    why = write_plot(out / "compare.png", rows, k, "recall vs QPS (compare)")
    print(why or f"wrote {out / 'compare.json'}, {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, spec in {**REGISTRY, **MINHASH_REGISTRY}.items():
            print(f"{name:20s} {'available' if spec['available']() else 'not installed'}")
        return 0
    s = _settings(args)
    out = Path(s["out"])
    if args.compare:
        return _compare(args.compare, out)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    t_start = time.perf_counter()
    if s["workload"] == "minhash":
        return _main_minhash(s, console, t_start)
    ds = load_dataset(s["dataset"], metric=s["metric"], queries=s["queries"], gt=s["gt"], quick=s["quick"])
    console.print(f"dataset [bold]{ds.name}[/]: {len(ds.base):,} x {ds.dim} base, {len(ds.queries):,} queries, "
                  f"metric {ds.metric}, k={s['k']}, search threads={s['threads']}")
    algos = s["algos"] or default_algorithms()
    s["algos"] = algos
    total = sum(len(_sweep_for(a, s)) for a in algos if a in REGISTRY)
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total)
        rows = run_benchmark(ds, s, progress, task)
    if not rows:
        console.print("[red]no results[/]")
        return 1
    mark_pareto(rows)
    import annforge

    meta = dict(dataset=ds.name, n=len(ds.base), nq=len(ds.queries), dim=ds.dim, metric=ds.metric, k=s["k"],
                threads=s["threads"], build_threads=s["build_threads"], batch=s["batch"], repeats=s["repeats"],
                annforge=annforge.build_info(), cpu_count=os.cpu_count(),
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print_table(rows, int(s["k"]), title=f"{ds.name}: recall@{s['k']} vs QPS ({s['threads'] or 'all'} thread(s))",
                all_rows=args.all_rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", meta, rows)
    write_csv(out / "results.csv", rows)
    why = write_plot(out / "recall_qps.png", rows, int(s["k"]), f"{ds.name}, k={s['k']}")
    written = [out / "results.json", out / "results.csv"] + ([] if why else [out / "recall_qps.png"])
    console.print("wrote " + ", ".join(str(p) for p in written) + f" in {time.perf_counter() - t_start:.0f} s")
    if why:
        console.print(f"[yellow]{why}[/]")
    return 0
