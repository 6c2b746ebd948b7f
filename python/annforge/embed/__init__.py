"""Text -> vectors -> any annforge index, with a torch model.

Needs the optional extra: ``pip install annforge[torch]`` (torch + transformers). Importing this module
does not import torch; torch is imported when an embedder class or constructor is first touched.

>>> import annforge as af                                                  # doctest: +SKIP
>>> emb = af.embed.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
>>> index = af.FlatIndex(emb.dim, metric="cosine")  # doctest: +SKIP
>>> ids = af.embed.index_texts(["a cat on a mat", "stock prices fell"], emb, index)  # doctest: +SKIP
>>> index.search(emb.encode_queries(["kitten"]), k=1)[0]  # doctest: +SKIP
array([[0]])
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import sys
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional

import numpy as np

from ._progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from ._embedder import TorchEmbedder, from_pretrained, from_sentence_transformers

__all__ = [
    "POOLING_MODES",
    "TorchEmbedder",
    "from_pretrained",
    "from_sentence_transformers",
    "index_texts",
]

POOLING_MODES = ("cls", "mean", "max", "last_token", "first_last_mean", "embedding_last_mean", "weighted_mean")

_LAZY = {"TorchEmbedder", "from_pretrained", "from_sentence_transformers"}


def __getattr__(name: str) -> Any:
    # The torch-backed names load on first use so that `import annforge.embed` stays cheap.
    if name in _LAZY:
        try:
            module = importlib.import_module("._embedder", __name__)
        except ImportError as exc:
            raise ImportError(
                f"annforge.embed.{name} needs torch and transformers: pip install 'annforge[torch]' ({exc})"
            ) from exc
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | _LAZY)


def _chunks(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def index_texts(
    texts: Iterable[str],
    embedder: Any,
    index: Any,
    ids: Optional[Iterable[int]] = None,
    chunk_size: int = 4096,
    *,
    show_progress: Optional[bool] = None,
    num_threads: Optional[int] = None,
) -> np.ndarray:
    """Embed ``texts`` with ``embedder.encode`` and add them to ``index``, ``chunk_size`` texts at a time.

    ``texts`` may be any iterable, generators included: only one chunk of texts and its vectors is held
    in memory at a time. ``ids`` (an iterable of ints, consumed in step with ``texts``) or ``None`` for
    the index's automatic ids. Returns the int64 ids of everything added, in order. ``embedder`` is any
    object with ``encode(list_of_str) -> [n, dim]`` (a :class:`TorchEmbedder` or your own).
    ``num_threads`` is passed to ``index.add`` when given (``1`` builds a graph index deterministically).

    >>> ids = index_texts((line.strip() for line in open("docs.txt")), emb, index)   # doctest: +SKIP
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single string")
    total = len(texts) if hasattr(texts, "__len__") else None  # type: ignore[arg-type]
    if show_progress is None:
        show_progress = (total is None or total > chunk_size) and sys.stderr.isatty()
    try:  # the bar is ours; silence the embedder's own per-chunk bar when it has the switch
        quiet_kw = "show_progress" in inspect.signature(embedder.encode).parameters
    except (TypeError, ValueError):
        quiet_kw = False
    id_iter = iter(ids) if ids is not None else None
    added: List[np.ndarray] = []
    bar = progress_bar(total, "indexing", bool(show_progress))
    try:
        for chunk in _chunks(texts, chunk_size):
            chunk_ids = None
            if id_iter is not None:
                chunk_ids = np.fromiter(itertools.islice(id_iter, len(chunk)), dtype=np.int64)
                if len(chunk_ids) != len(chunk):
                    raise ValueError("ids ran out before texts did")
            vectors = embedder.encode(chunk, show_progress=False) if quiet_kw else embedder.encode(chunk)
            add_kw = {} if num_threads is None else {"num_threads": num_threads}
            added.append(np.asarray(index.add(vectors, ids=chunk_ids, **add_kw), dtype=np.int64))
            bar.update(len(chunk))
    finally:
        bar.close()
    return np.concatenate(added) if added else np.empty(0, dtype=np.int64)
