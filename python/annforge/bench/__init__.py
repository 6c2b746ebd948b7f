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
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .algorithms import MINHASH_REGISTRY, REGISTRY, default_algorithms, sweep_points
from .datasets import (Dataset, DatasetError, SetDataset, ensure_ground_truth, exact_pairs, ground_truth_cache_path,
                       load_dataset, load_text_sets, minhash_corpus)
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
    p.add_argument("--dataset", help="'default' (built-in, 20k x 128 clustered), 'angular-64' (built-in, 20k x 64 "
                                     "weakly clustered, angular), a local ann-benchmarks .hdf5 file, or base vectors "
                                     "(.fvecs/.bvecs/.npy, with --queries); nothing is downloaded. With --workload "
                                     "minhash a text file with one document per line")
    p.add_argument("--shingle", default=None, help="minhash text shingles: word1 (default), word3, char5, ...")
    p.add_argument("--queries", help="query vectors file when --dataset is a vector file")
    p.add_argument("--gt", help="ground-truth ids (.ivecs/.npy); otherwise computed with FlatIndex and cached under "
                                "$ANNFORGE_CACHE/bench-gt (default ~/.cache/annforge/bench-gt)")
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
    p.add_argument("--compare", nargs="+", metavar="RUN.json",
                   help="put earlier results files side by side in one table/plot (each run its own series)")
    p.add_argument("--label", action="append", default=[],
                   help="name of this run (stored in results.json), or with --compare one name per file, "
                        "in order (repeat it or separate by commas); default: the run's folder")
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
    # sized from the dataset (n and dim are set by main / run_benchmark)
    points = sweep_points(algo, int(s.get("n") or 20_000), int(s.get("dim") or 128), bool(s["quick"]),
                          _registry(s))
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


def run_benchmark(ds: Dataset, s: Dict[str, Any], progress: Any = None, task: Any = None,
                  log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Run every selected algorithm in its own subprocess; returns one row per sweep point.

    ``progress``/``task`` drive a rich progress bar; ``log`` (used when the output is not a terminal)
    receives one line per finished algorithm instead.
    """
    k = int(s["k"])
    s["n"], s["dim"] = len(ds.base), ds.dim
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
            t_algo = time.perf_counter()
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
                    _say(progress, f"[red]{algo} failed: {escape(str(msg['message']))}[/]")
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.wait() != 0 and done == 0:
                tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
                _say(progress, f"[red]{algo} exited with {proc.returncode}[/] {escape(' '.join(tail))}")
            if progress is not None and done < len(sweep):
                progress.update(task, advance=len(sweep) - done)
            if log is not None and done:
                mine = [r for r in rows if r["algo"] == algo]
                best = max(mine, key=lambda r: (r["recall"], r["qps"]))
                log(f"{algo}: {done}/{len(sweep)} points in {time.perf_counter() - t_algo:.1f} s, build "
                    f"{mine[0]['build_s']:.2f} s, best recall@{k} {best['recall']:.4f} at {best['qps']:,.0f} QPS")
    return rows


def load_set_dataset(s: Dict[str, Any]) -> SetDataset:
    """The minhash workload's corpus: built-in (``None``/``default``) or a text file, one document per line."""
    if s["dataset"] in (None, "default"):
        return minhash_corpus(1000, 200) if s["quick"] else minhash_corpus()
    return load_text_sets(str(s["dataset"]), s["shingle"])


def run_minhash_benchmark(ds: SetDataset, s: Dict[str, Any], progress: Any = None, task: Any = None,
                          log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Exact Jaccard pairs per threshold, then each MinHash library in its own subprocess; one row per point.

    ``log`` (output that is not a terminal) receives one line per finished library.
    """
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
                    _say(progress, f"[red]{algo} failed: {escape(str(msg['message']))}[/]")
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.wait() != 0 and done == 0:
                tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
                _say(progress, f"[red]{algo} exited with {proc.returncode}[/] {escape(' '.join(tail))}")
            if progress is not None and done < len(sweep):
                progress.update(task, advance=len(sweep) - done)
            if log is not None and done:
                log(f"{algo}: {done}/{len(sweep)} points, pair recall "
                    + ", ".join(f"{r['recall']:.3f}" for r in rows if r["algo"] == algo))
    return rows


def _main_minhash(s: Dict[str, Any], console: Any, t_start: float) -> int:
    out = Path(s["out"])
    try:
        ds = load_set_dataset(s)
    except FileNotFoundError:
        return _fail(f"dataset {s['dataset']!r}: no such file (--workload minhash reads a text file, one document "
                     f"per line, or 'default')")
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    sizes = [len(x) for x in ds.sets]
    console.print(f"dataset [bold]{escape(ds.name)}[/]: {len(ds.sets):,} documents, {np.mean(sizes):.1f} shingles "
                  f"on average, threads={s['threads']}")
    algos = s["algos"] or [a for a, spec in MINHASH_REGISTRY.items() if spec["available"]()]
    s["algos"] = algos
    total = sum(len(_sweep_for(a, s)) for a in algos if a in MINHASH_REGISTRY)
    rows = _run_with_progress(console, total, lambda **kw: run_minhash_benchmark(ds, s, **kw))
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


def _run_with_progress(console: Any, total: int, run: Callable[..., Any]) -> Any:
    """``run(progress=, task=)`` under a rich bar in a terminal; on a pipe or a file ``run(log=)`` prints one
    line per finished algorithm instead (a bar there prints nothing for a minute)."""
    if not console.is_terminal:
        return run(log=lambda line: console.print(escape(line), soft_wrap=True))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        return run(progress=progress, task=progress.add_task("starting", total=total))


def escape(text: str) -> str:
    """``text`` with rich markup escaped, so that user strings like ``run[h5]`` print as they are."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _say(progress: Any, text: str) -> None:
    """Print a rich-markup line above the progress bar, or as plain text on stderr without one."""
    if progress is not None:
        progress.console.print(text)
    else:
        from rich.text import Text

        print(Text.from_markup(text).plain, file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    """One-line error for bad input (no traceback); exit status 2 like argparse's usage errors."""
    print(f"annforge bench: error: {message}", file=sys.stderr)
    return 2


def _split_labels(items: List[str]) -> List[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _default_labels(paths: List[str], metas: List[Dict[str, Any]]) -> List[str]:
    """Distinct run names: the stored ``--label``, else the run's folder as given; then dataset + time; then #i."""
    def folder(path: str) -> str:
        pth = Path(path)
        return str(pth.parent) if pth.name == "results.json" else str(pth.with_suffix(""))

    labels = [str(m.get("label") or folder(p)) for p, m in zip(paths, metas)]
    if len(set(labels)) == len(labels):
        return labels
    stamped = [f"{lab} ({m.get('dataset', '?')} {m.get('time', '?')})" for lab, m in zip(labels, metas)]
    if len(set(stamped)) == len(stamped):
        return stamped
    return [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]


# Settings that make two runs' recall / QPS figures incomparable when they differ.
_COMPARABLE_KEYS = [("dataset", "dataset"), ("metric", "metric"), ("k", "k"), ("nq", "query count"),
                    ("n", "base size"), ("threads", "search threads")]


def run_differences(labels: List[str], metas: List[Dict[str, Any]]) -> List[str]:
    """One warning line per setting on which the runs differ (dataset, metric, k, query count, ...).

    >>> run_differences(["a", "b"], [{"dataset": "x", "k": 10}, {"dataset": "y", "k": 10}])
    ['runs differ in dataset: a=x, b=y']
    """
    lines = []
    for key, what in _COMPARABLE_KEYS:
        values = [m.get(key) for m in metas]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            lines.append(f"runs differ in {what}: " + ", ".join(f"{lab}={v}" for lab, v in zip(labels, values)))
    return lines


def _compare(paths: List[str], out: Path, labels: Optional[List[str]] = None) -> int:
    """``--compare``: every run keeps its own series, per-series frontiers and its own overall frontier."""
    from rich.console import Console

    metas: List[Dict[str, Any]] = []
    results: List[List[Dict[str, Any]]] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return _fail(f"--compare {path!r}: no such file (pass the results.json of earlier runs)")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _fail(f"--compare {path!r}: not a readable JSON file ({exc})")
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            return _fail(f"--compare {path!r}: not an annforge bench results.json (no 'results' list)")
        if data.get("meta", {}).get("workload") == "minhash":
            return _fail(f"--compare {path!r}: a --workload minhash run; --compare reads vector-search runs")
        metas.append(dict(data.get("meta", {})))
        results.append(data["results"])
    if labels:
        if len(labels) != len(paths):
            return _fail(f"--label gave {len(labels)} name(s) for {len(paths)} --compare file(s); give one per file")
        if len(set(labels)) < len(labels):
            return _fail(f"--label names must differ, got {labels}")
    else:
        labels = _default_labels(paths, metas)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    for line in run_differences(labels, metas):
        console.print(f"[yellow]warning: {escape(line)}; their figures are not comparable[/]", soft_wrap=True)
    rows: List[Dict[str, Any]] = []
    for label, run_rows in zip(labels, results):
        for r in run_rows:
            rows.append({**r, "run": label, "series": f"{r['algo']} [{label}]"})
    mark_pareto(rows, series_key="series", overall_key="run")
    ks = {int(m.get("k", 10)) for m in metas}
    k = ks.pop() if len(ks) == 1 else 0
    out.mkdir(parents=True, exist_ok=True)
    for label, path, meta in zip(labels, paths, metas):
        console.print(f"run [bold]{escape(label)}[/]: {escape(path)} ({escape(str(meta.get('dataset', '?')))}, "
                      f"k={meta.get('k', '?')}, {meta.get('nq', '?')} queries, {escape(str(meta.get('time', '?')))})",
                      soft_wrap=True)
    print_table(rows, k, title=f"annforge bench --compare ({len(paths)} runs)", console=console,
                note="Per-series Pareto frontier (recall vs QPS); * = on its run's overall frontier.")
    write_json(out / "compare.json", {"compared": paths, "labels": labels, "runs": metas, "k": k or None}, rows)
    write_csv(out / "compare.csv", rows)
    why = write_plot(out / "compare.png", rows, k, "recall vs QPS (compare)", series_key="series", overall_key="run")
    console.print(escape(why or f"wrote {out / 'compare.json'}, {out / 'compare.csv'}, {out / 'compare.png'}"),
                  soft_wrap=True)
    return 0


def _ground_truth(ds: Dataset, k: int, console: Any) -> None:
    """Exact neighbours before the timed runs, saying where they come from and where the cache lives."""
    if ds.gt_ids is not None and ds.gt_ids.shape[1] >= k:
        console.print("ground truth: from the dataset file", soft_wrap=True)
        return
    path = ground_truth_cache_path(ds, k)
    cached = path.exists()
    t0 = time.perf_counter()
    ensure_ground_truth(ds, k)
    if cached:
        console.print(f"ground truth: cached in {escape(str(path))}", soft_wrap=True)
    elif path.exists():
        console.print(f"ground truth: computed in {time.perf_counter() - t0:.1f} s, cached in {escape(str(path))} "
                      f"(set ANNFORGE_CACHE to move the cache)", soft_wrap=True)
    else:
        console.print(f"ground truth: computed in {time.perf_counter() - t0:.1f} s; could not write the cache "
                      f"{escape(str(path))} (set ANNFORGE_CACHE to a writable folder)", soft_wrap=True)


def main(argv: Optional[List[str]] = None) -> int:
    """``annforge bench`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, spec in {**REGISTRY, **MINHASH_REGISTRY}.items():
            print(f"{name:20s} {'available' if spec['available']() else 'not installed'}")
        return 0
    try:  # the one optional dependency every bench path draws with; annforge itself does not need it
        import rich  # noqa: F401
    except ImportError:
        return _fail('rich is not installed (it comes with the bench extra): pip install "annforge[bench]"')
    try:
        s = _settings(args)
    except FileNotFoundError as exc:
        return _fail(f"--config {exc.filename!r}: no such file")
    except (OSError, ValueError) as exc:
        return _fail(f"--config {args.config!r}: {exc}")
    out = Path(s["out"])
    labels = _split_labels(args.label)
    if args.compare:
        return _compare(args.compare, out, labels)
    if len(labels) > 1:
        return _fail(f"--label takes one name for a run (several only with --compare), got {labels}")
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    t_start = time.perf_counter()
    if s["workload"] == "minhash":
        return _main_minhash(s, console, t_start)
    try:
        ds = load_dataset(s["dataset"], metric=s["metric"], queries=s["queries"], gt=s["gt"], quick=s["quick"])
    except (DatasetError, ValueError, OSError, ImportError, KeyError) as exc:
        return _fail(str(exc))
    console.print(f"dataset [bold]{escape(ds.name)}[/]: {len(ds.base):,} x {ds.dim} base, {len(ds.queries):,} "
                  f"queries, metric {ds.metric}, k={s['k']}, search threads={s['threads']}")
    if int(s["k"]) < 1 or int(s["k"]) > len(ds.base):
        return _fail(f"--k must be between 1 and the base size {len(ds.base)}, got {s['k']}")
    _ground_truth(ds, int(s["k"]), console)
    algos = s["algos"] or default_algorithms()
    s["algos"] = algos
    s["n"], s["dim"] = len(ds.base), ds.dim
    total = sum(len(_sweep_for(a, s)) for a in algos if a in REGISTRY)
    rows = _run_with_progress(console, total, lambda **kw: run_benchmark(ds, s, **kw))
    if not rows:
        console.print("[red]no results[/]")
        return 1
    mark_pareto(rows)
    import annforge

    meta = dict(dataset=ds.name, n=len(ds.base), nq=len(ds.queries), dim=ds.dim, metric=ds.metric, k=s["k"],
                threads=s["threads"], build_threads=s["build_threads"], batch=s["batch"], repeats=s["repeats"],
                annforge=annforge.build_info(), cpu_count=os.cpu_count(),
                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if labels:
        meta["label"] = labels[0]
    print_table(rows, int(s["k"]), title=f"{ds.name}: recall@{s['k']} vs QPS ({s['threads'] or 'all'} thread(s))",
                all_rows=args.all_rows, console=console)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", meta, rows)
    write_csv(out / "results.csv", rows)
    why = write_plot(out / "recall_qps.png", rows, int(s["k"]), f"{ds.name}, k={s['k']}")
    written = [out / "results.json", out / "results.csv"] + ([] if why else [out / "recall_qps.png"])
    console.print(escape("wrote " + ", ".join(str(p) for p in written) + f" in {time.perf_counter() - t_start:.0f} s"),
                  soft_wrap=True)
    if why:
        console.print(f"[yellow]{escape(why)}[/]")
    return 0
