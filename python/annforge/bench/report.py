"""Pareto frontier, terminal table (rich), JSON/CSV files and the recall-QPS plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional


def _frontier(group: List[Dict[str, Any]]) -> List[int]:
    keep = []
    for i, r in enumerate(group):
        dominated = any(o["recall"] >= r["recall"] and o["qps"] >= r["qps"]
                        and (o["recall"] > r["recall"] or o["qps"] > r["qps"]) for o in group)
        if not dominated:
            keep.append(i)
    return keep


def mark_pareto(rows: List[Dict[str, Any]], series_key: str = "algo", overall_key: Optional[str] = None) -> None:
    """Set ``pareto`` (best within its series) and ``global_pareto`` (best overall) on each row.

    A series is the rows sharing ``r[series_key]``; with ``overall_key`` (``--compare``: the run) the
    overall frontier is computed within each group of rows sharing that key, not across groups.

    >>> rows = [dict(algo="a", recall=0.9, qps=100.0), dict(algo="a", recall=0.8, qps=50.0),
    ...         dict(algo="b", recall=0.95, qps=10.0)]
    >>> mark_pareto(rows)
    >>> [(r["pareto"], r["global_pareto"]) for r in rows]
    [(True, True), (False, False), (True, True)]
    """
    for r in rows:
        r["pareto"] = r["global_pareto"] = False
    groups = [rows] if overall_key is None else [[r for r in rows if r[overall_key] == g]
                                                 for g in dict.fromkeys(r[overall_key] for r in rows)]
    for group in groups:
        for i in _frontier(group):
            group[i]["global_pareto"] = True
    for name in dict.fromkeys(r[series_key] for r in rows):
        series = [r for r in rows if r[series_key] == name]
        for i in _frontier(series):
            series[i]["pareto"] = True


def _fmt_params(p: Dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items()) or "-"


_SHORT_PARAM = {"nprobe": "np", "refine_factor": "rf", "leaves_to_search": "l", "reorder_k": "r"}


def short_params(p: Dict[str, Any]) -> str:
    """Compact parameter label for plot points.

    >>> short_params({"nprobe": 16, "refine_factor": 4}), short_params({"ef": 40}), short_params({})
    ('np16 rf4', 'ef40', '')
    """
    return " ".join(f"{_SHORT_PARAM.get(k, k)}{v}" for k, v in p.items())


def print_table(rows: List[Dict[str, Any]], k: int, title: str, all_rows: bool = False, console: Any = None,
                note: str = "Per-algorithm Pareto frontier (recall vs QPS); * = on the overall frontier.") -> None:
    """The terminal table (frontier rows unless ``all_rows``); every user string is escaped for rich."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col, just in [("algorithm", "left"), ("params", "left"), (f"recall@{k}" if k else "recall", "right"),
                      ("QPS", "right"), ("p50 ms", "right"), ("p99 ms", "right"), ("build s", "right"),
                      ("bytes/vec", "right")]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    shown = [r for r in rows if all_rows or r.get("pareto")]
    for r in sorted(shown, key=lambda r: (r.get("series", r["algo"]), r["recall"])):
        star = " *" if r.get("global_pareto") else ""
        bpv = r.get("bytes_per_vector")
        table.add_row(escape(r.get("series", r["algo"])) + star, escape(_fmt_params(r["params"])),
                      f"{r['recall']:.4f}", f"{r['qps']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                      f"{r['build_s']:.2f}", "-" if bpv is None else f"{bpv:,.0f}")
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # files and pipes: do not squeeze the table to 80 columns
    console.print(table)
    console.print(escape(note))


def print_minhash_table(rows: List[Dict[str, Any]], title: str) -> None:
    """The ``--workload minhash`` table: every sweep point (each threshold has its own exact truth)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
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


# Distinguishable styles for many series: 10 colours x 12 markers x 3 line styles.
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]
_LINESTYLES = ["-", "--", ":"]


def series_style(i: int) -> Dict[str, Any]:
    """Colour, marker and line style of the ``i``-th series; distinct for 360 series.

    The marker advances by 11 (coprime with 12) every 10 series, so the 120 (colour, marker) pairs
    all differ before the line style changes.

    >>> len({tuple(series_style(i).values()) for i in range(360)})
    360
    """
    return {"color": f"C{i % 10}", "marker": _MARKERS[(i + i // 10) % len(_MARKERS)],
            "linestyle": _LINESTYLES[(i // 120) % len(_LINESTYLES)]}


def _recall_axis(ax: Any, recalls: List[float], floor: float) -> None:
    """Recall on a "nines" scale: x -> -log10(1 - x), so 0.9, 0.99 and 0.999 are equally far apart and
    the region where good algorithms differ is not squeezed against 1.0. Recall 1.0 sits at ``1 - floor``."""
    import numpy as np

    def forward(x: Any) -> Any:
        return -np.log10(np.maximum(1.0 - np.asarray(x, dtype=float), floor))

    def inverse(y: Any) -> Any:
        return 1.0 - 10.0 ** (-np.asarray(y, dtype=float))

    ax.set_xscale("function", functions=(forward, inverse))
    low = min(recalls) if recalls else 0.5
    start = 0.0 if low < 0.5 else 0.5 if low < 0.9 else 0.9 if low < 0.99 else 0.99
    ticks = [t for t in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999) if start <= t < 1 - floor]
    ax.set_xlim(start, 1 - floor * 0.4)
    ax.set_xticks(ticks + [1 - floor])
    ax.set_xticklabels([f"{t:g}" for t in ticks] + ["1.0"])
    ax.axvline(0.95, color="0.6", linewidth=0.8, linestyle=":")


def write_plot(path: Path, rows: List[Dict[str, Any]], k: int, title: str, series_key: str = "algo",
               overall_key: Optional[str] = None) -> Optional[str]:
    """Recall (x, "nines" scale) vs QPS (log y): each series' frontier with its points labelled by their
    parameters, and the overall Pareto frontier (one per ``overall_key`` group) as a thick grey line.

    Returns a reason when skipped (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'annforge[bench]'); PNG skipped"
    series = sorted({r[series_key] for r in rows})
    many = len(series) > 12  # legend below the axes, in columns, so the plot keeps its width
    fig, ax = plt.subplots(figsize=(11, 7 + 0.12 * len(series) if many else 7))
    # recall 1.0 is drawn one step beyond the finest recall a run can resolve (1 / (queries * k))
    floor = 1e-4
    groups = [None] if overall_key is None else list(dict.fromkeys(r[overall_key] for r in rows))
    for j, group in enumerate(groups):
        front = sorted((r["recall"], r["qps"]) for r in rows
                       if r.get("global_pareto") and (overall_key is None or r[overall_key] == group))
        label = "overall Pareto frontier" + ("" if group is None else f" [{group}]")
        ax.plot([p[0] for p in front], [p[1] for p in front], color="0.55", linewidth=5, alpha=0.35,
                linestyle=_LINESTYLES[j % len(_LINESTYLES)], zorder=1, label=label, solid_capstyle="round")
    for i, name in enumerate(series):
        pts = sorted((r["recall"], r["qps"], short_params(r["params"])) for r in rows
                     if r[series_key] == name and r.get("pareto"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, markersize=6, linewidth=1.3, zorder=3,
                **series_style(i))
        for x, y, text in pts:
            if text:
                ax.annotate(text, (min(x, 1 - floor), y), textcoords="offset points", xytext=(4, 3),
                            fontsize=6.5, color=series_style(i)["color"], zorder=4)
    _recall_axis(ax, [r["recall"] for r in rows if r.get("pareto")], floor)
    ax.set_yscale("log")
    ax.set_xlabel((f"recall@{k}" if k else "recall") + "   (scale: -log10(1 - recall); dotted line at 0.95)")
    ax.set_ylabel("queries per second (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, borderaxespad=0)
    else:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
