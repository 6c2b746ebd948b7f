"""Feedback for long index builds: a progress bar on stderr and ``logging`` records under the ``annforge``
logger. Nothing here runs on the default path of a short ``add``.

The bar is drawn with rich when it is installed (it comes with the ``bench`` extra, not with annforge
itself); without it, :class:`TextBar` redraws one plain line instead."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np

log = logging.getLogger("annforge")

# Rows per chunk when an add is split to report progress: small enough for a smooth bar, large enough
# that the per-call overhead (thread start, GIL release) stays far below the insertion work.
_MIN_CHUNK = 2048
_STEPS = 100


class NullBar:
    """A progress bar that draws nothing (``show_progress=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class TextBar:
    """A plain progress line on stderr, redrawn in place at most every ``interval`` seconds and once more,
    with the final count, by :meth:`close`. Used when rich (or tqdm) is not installed.

    >>> import io, contextlib
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     bar = TextBar(10, "demo")
    ...     bar.update(4); bar.update(6); bar.close()
    >>> err.getvalue().strip().split(" [")[0]
    'demo: 10/10'
    """

    def __init__(self, total: Optional[int], desc: str, interval: float = 0.5) -> None:
        self.total, self.desc, self.count, self.interval = total, desc, 0, interval
        self.start = self.last_draw = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"\r{self.desc}: {self.count}{of} [{rate:,.0f}/s]")
        sys.stderr.flush()

    def close(self) -> None:
        self._draw(time.perf_counter())
        sys.stderr.write("\n")
        sys.stderr.flush()


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
    parts = []
    with _add_bar(family, n) as completed:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            parts.append(add_chunk(x[lo:hi], None if ids is None else ids[lo:hi]))
            completed(hi)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@contextlib.contextmanager
def _add_bar(family: str, n: int) -> Iterator[Callable[[int], None]]:
    """A bar for ``n`` vectors; yields a function that takes the number of vectors added so far.
    rich draws it when installed (the ``bench`` extra); otherwise a :class:`TextBar` line."""
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
    except ImportError:
        line = TextBar(n, f"{family}.add")
        try:
            yield lambda done: line.update(done - line.count)
        finally:
            line.close()
        return
    columns: Any = (TextColumn(f"{family}.add"), BarColumn(), MofNCompleteColumn(), TextColumn("vectors"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("add", total=n)
        yield lambda done: bar.update(task, completed=done)


def log_phase(family: str, phase: str, n: int) -> Callable[[], None]:
    """Log the start of a build phase (``train``...) at INFO; the returned function logs its end."""
    start = time.perf_counter()
    log.info("%s.%s: %d vectors", family, phase, n)

    def done() -> None:
        log.info("%s.%s: done in %.2f s", family, phase, time.perf_counter() - start)

    return done
