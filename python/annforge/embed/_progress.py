"""A progress bar that uses tqdm when it is installed (it comes with transformers) and a tiny
stderr line (``annforge._progress.TextBar``) otherwise. Imports nothing heavy."""

from __future__ import annotations

from typing import Any, Optional

from .._progress import NullBar, TextBar


def progress_bar(total: Optional[int], desc: str, enabled: bool) -> Any:
    """An object with ``update(n)`` and ``close()``; a no-op when ``enabled`` is false."""
    if not enabled:
        return NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit="text", dynamic_ncols=True)
