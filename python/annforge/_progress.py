"""Feedback for long index builds: a progress bar on stderr (rich, a core dependency) and ``logging``
records under the ``annforge`` logger. Nothing here runs on the default path of a short ``add``."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger("annforge")

# Rows per chunk when an add is split to report progress: small enough for a smooth bar, large enough
# that the per-call overhead (thread start, GIL release) stays far below the insertion work.
_MIN_CHUNK = 2048
_STEPS = 100


def want_progress(show_progress: Optional[bool], n: int, auto_rows: float) -> bool:
    """``show_progress`` when given; by default on for ``n >= auto_rows`` when stderr is a terminal.

    >>> want_progress(True, 1, float("inf")), want_progress(None, 10, 1e6), want_progress(False, 10**9, 1)
    (True, False, False)
    """
    if show_progress is not None:
        return bool(show_progress)
    return n >= auto_rows and sys.stderr.isatty()


def observed_add(
    family: str,
    add_chunk: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray],
    x: np.ndarray,
    ids: Optional[np.ndarray],
    *,
    show_progress: bool,
    chunkable: bool,
) -> np.ndarray:
    """Run ``add_chunk(x, ids)``, logging its start and end; with ``show_progress`` (and ``chunkable``)
    split it into about 100 chunks and draw a bar. Chunks are added in order, so ids assigned by the
    index (``ids=None``) are the same as in one call."""
    n = int(x.shape[0]) if x.ndim == 2 else 1
    level = logging.INFO if n >= 10_000 else logging.DEBUG
    log.log(level, "%s.add: %d vectors of dim %d", family, n, x.shape[-1] if x.ndim else 0)
    start = time.perf_counter()
    chunk = max(_MIN_CHUNK, -(-n // _STEPS))
    if not show_progress or not chunkable or x.ndim != 2 or n <= chunk:
        if show_progress:
            print(f"{family}.add: {n:,} vectors ...", file=sys.stderr, flush=True)
        out = add_chunk(x, ids)
    else:
        out = _chunked_with_bar(family, add_chunk, x, ids, n, chunk)
    seconds = time.perf_counter() - start
    log.log(level, "%s.add: %d vectors added in %.2f s (%.0f vectors/s)", family, n, seconds,
            n / max(seconds, 1e-9))
    return out


def _chunked_with_bar(family: str, add_chunk: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray],
                      x: np.ndarray, ids: Optional[np.ndarray], n: int, chunk: int) -> np.ndarray:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    parts = []
    columns: Any = (TextColumn(f"{family}.add"), BarColumn(), MofNCompleteColumn(), TextColumn("vectors"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("add", total=n)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            parts.append(add_chunk(x[lo:hi], None if ids is None else ids[lo:hi]))
            bar.update(task, completed=hi)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def log_phase(family: str, phase: str, n: int) -> Callable[[], None]:
    """Log the start of a build phase (``train``...) at INFO; the returned function logs its end."""
    start = time.perf_counter()
    log.info("%s.%s: %d vectors", family, phase, n)

    def done() -> None:
        log.info("%s.%s: done in %.2f s", family, phase, time.perf_counter() - start)

    return done
