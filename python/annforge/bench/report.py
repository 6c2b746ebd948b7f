"""Pareto frontier, terminal table (rich), JSON/CSV files and the recall-QPS plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional


def mark_pareto(rows: List[Dict[str, Any]]) -> None:
    """Set ``pareto`` (best within its algorithm) and ``global_pareto`` (best overall) on each row."""
    def frontier(group: List[Dict[str, Any]]) -> List[int]:
        keep = []
        for i, r in enumerate(group):
            dominated = any(o["recall"] >= r["recall"] and o["qps"] >= r["qps"]
                            and (o["recall"] > r["recall"] or o["qps"] > r["qps"]) for o in group)
            if not dominated:
                keep.append(i)
        return keep
    for r in rows:
        r["pareto"] = r["global_pareto"] = False
    for i in frontier(rows):
        rows[i]["global_pareto"] = True
    for algo in {r["algo"] for r in rows}:
        group = [r for r in rows if r["algo"] == algo]
        for i in frontier(group):
            group[i]["pareto"] = True


def _fmt_params(p: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items()) or "-"


def print_table(rows: List[Dict[str, Any]], k: int, title: str, all_rows: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in [("algorithm", "left"), ("params", "left"), (f"recall@{k}", "right"), ("QPS", "right"),
                      ("p50 ms", "right"), ("p99 ms", "right"), ("build s", "right"), ("bytes/vec", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    shown = [r for r in rows if all_rows or r.get("pareto")]
    for r in sorted(shown, key=lambda r: (r["algo"], r["recall"])):
        star = " *" if r.get("global_pareto") else ""
        bpv = r.get("bytes_per_vector")
        table.add_row(r["algo"] + star, _fmt_params(r["params"]), f"{r['recall']:.4f}", f"{r['qps']:,.0f}",
                      f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['build_s']:.2f}",
                      "-" if bpv is None else f"{bpv:,.0f}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # files and pipes: do not squeeze the table to 80 columns
    console.print(table)
    console.print("Per-algorithm Pareto frontier (recall vs QPS); * = on the overall frontier.")


def print_minhash_table(rows: List[Dict[str, Any]], title: str) -> None:
    """The ``--workload minhash`` table: every sweep point (each threshold has its own exact truth)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in [("algorithm", "left"), ("params", "left"), ("pair recall", "right"), ("precision", "right"),
                      ("sig docs/s", "right"), ("insert/s", "right"), ("queries/s", "right"),
                      ("true pairs", "right"), ("candidates", "right")]:
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for r in sorted(rows, key=lambda r: (r["algo"], r["params"].get("threshold", 0), r["params"].get("num_perm", 0))):
        table.add_row(r["algo"], _fmt_params(r["params"]), f"{r['recall']:.4f}", f"{r['precision']:.4f}",
                      f"{r['sig_docs_per_s']:,.0f}", f"{r['insert_per_s']:,.0f}", f"{r['qps']:,.0f}",
                      f"{r['truth_pairs']:,}", f"{r['candidate_pairs']:,}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    console.print("pair recall / precision: LSH candidate pairs (each document queried once) against every pair "
                  "with exact Jaccard >= threshold.")


def write_json(path: Path, meta: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))


CSV_FIELDS = ["run", "algo", "params", "recall", "recall_tolerant", "qps", "p50_ms", "p95_ms", "p99_ms",
              "build_s", "memory_bytes", "bytes_per_vector", "rss_growth", "pareto", "global_pareto"]


MINHASH_CSV_FIELDS = ["run", "algo", "params", "recall", "precision", "sig_docs_per_s", "insert_per_s", "qps",
                      "truth_pairs", "candidate_pairs", "sig_s", "insert_s"]


def write_csv(path: Path, rows: List[Dict[str, Any]], fields: Optional[List[str]] = None) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "params": _fmt_params(r["params"])})


def write_plot(path: Path, rows: List[Dict[str, Any]], k: int, title: str) -> Optional[str]:
    """Recall (x) vs QPS (log y), one line per algorithm's frontier. Returns a reason when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'annforge[bench]'); PNG skipped"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for algo in sorted({r["algo"] for r in rows}):
        pts = sorted((r["recall"], r["qps"]) for r in rows if r["algo"] == algo and r.get("pareto"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=algo)
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k}")
    ax.set_ylabel("queries per second (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_minhash_plot(path: Path, rows: List[Dict[str, Any]], title: str) -> Optional[str]:
    """Pair recall (x) vs one-at-a-time queries/s (log y), one line per algorithm, points labelled by threshold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'annforge[bench]'); PNG skipped"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for algo in sorted({r["algo"] for r in rows}):
        pts = sorted((r["params"].get("threshold", 0), r["recall"], r["qps"]) for r in rows if r["algo"] == algo)
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=algo)
        for t, x, y in pts:
            ax.annotate(f"t={t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_yscale("log")
    ax.set_xlabel("pair recall at the threshold (exact Jaccard truth)")
    ax.set_ylabel("queries per second, one at a time (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
