"""A progress bar that uses tqdm when it is installed (it comes with transformers) and a tiny
stderr fallback otherwise. Imports nothing heavy."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TextBar:
    """Fallback: one carriage-return line on stderr, redrawn at most twice a second."""

    def __init__(self, total: Optional[int], desc: str) -> None:
        self.total, self.desc, self.count = total, desc, 0
        self.start = self.last_draw = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self.last_draw >= 0.5:
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


def progress_bar(total: Optional[int], desc: str, enabled: bool) -> Any:
    """An object with ``update(n)`` and ``close()``; a no-op when ``enabled`` is false."""
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True)
