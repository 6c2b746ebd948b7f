"""Pieces the benchmark scripts share: recall against ground truth and QPS at a recall target.

    import bench_common  # the scripts put their own folder first on sys.path
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k neighbours (k = truth's width) among its first k results."""
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found[:, :k], truth)]))


def frontier_qps_at(points: List[Dict[str, Any]], target: float, key: str = "qps") -> Optional[float]:
    """Best `key` (queries/s) reaching `target` recall on the recall/QPS frontier, linear between
    neighbouring frontier points; None when no point reaches the target.

    >>> frontier_qps_at([{"recall": 0.8, "qps": 1000.0}, {"recall": 1.0, "qps": 200.0}], 0.9)
    600.0
    """
    front: List[Dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (-p["recall"], -p[key])):
        if not front or p[key] > front[-1][key]:
            front.append(p)  # faster than every point of higher recall
    front.reverse()  # recall ascending, QPS descending
    best = max((p[key] for p in front if p["recall"] >= target), default=None)
    for lo, hi in zip(front, front[1:]):
        if lo["recall"] < target <= hi["recall"]:
            t = (target - lo["recall"]) / (hi["recall"] - lo["recall"])
            val = lo[key] + t * (hi[key] - lo[key])
            best = val if best is None else max(best, val)
    return best
