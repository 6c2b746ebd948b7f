"""Approximate search on a hierarchical navigable small-world graph (HNSW)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import as_float_matrix
from ._base import FilterLike, VectorIndex, parse_metric, register_family

_STORAGES = ("f32", "f16", "sq8", "rabitq")
_RERANKS = ("f32", "f16")
_CODE_ROTATIONS = ("hadamard", "dense")


def _check_rabitq_option(name: str, value: Any, allowed: Tuple[str, ...], storage: str) -> None:
    """An option of storage="rabitq" only: a string among ``allowed``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if storage != "rabitq":
        raise ValueError(f"{name} applies to storage='rabitq' only")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


@register_family
class HNSWIndex(VectorIndex):
    """HNSW graph index: incremental, parallel build; upsert, remove with slot reuse, filters.

    Parameters: ``M`` links per node on the upper levels (``2*M`` on level 0), ``ef_construction``
    candidates examined per insertion, ``seed`` for the level draws, ``storage`` for the vectors the
    graph walks on: ``"f32"`` (exact), ``"f16"`` (half the vector bytes; distances in f16 precision) or
    ``"sq8"`` (8-bit per dimension, per-dimension min/step learnt from the first ``add`` batch and
    clamped afterwards; an f32 copy is kept to re-rank the final candidates exactly, so it speeds up
    traversal but does not save memory) or ``"rabitq"`` (the quantized graph: each node also keeps
    the 1-bit RaBitQ codes of its level-0 neighbours beside its links, so one contiguous read scores
    all of them; a neighbour enters the candidate queue only if its error bound says it may beat the
    current results, and the nodes the walk expands are re-ranked with exact distances from the
    stored vectors). ``rerank`` (``"rabitq"`` only): ``"f32"`` (default) or ``"f16"`` re-rank
    vectors. The codes are relative to the mean of the first ``add`` batch. ``code_rotation``
    (``"rabitq"`` only): the random rotation applied before the codes are taken, ``"hadamard"``
    (default: four rounds of random signs and fast Walsh-Hadamard transforms, O(d log d) per vector)
    or ``"dense"`` (a Haar-random orthogonal matrix, O(d^2) per vector and d^2 floats; what files saved
    before the choice existed use). Both give estimates of the same accuracy on real embeddings; the
    Hadamard one makes each query about 3 µs cheaper at 384-d (of ~20 µs at ef=10).

    Search knob: ``ef`` (candidate list size, default ``default_ef`` = 64 or what ``tune`` chose;
    ``max(ef, k)`` is used).

    Bytes per vector (384-d): f32 about 1.7 kB (vector and level-0 links in one record), f16 about
    0.95 kB, sq8 about 2.1 kB (codes + the f32 copy for re-ranking), rabitq about 4.1 kB (2*M = 32
    neighbour codes of 64 bytes, its own code, the f32 vector; about 3.4 kB with ``rerank="f16"``).
    Removed ids are tombstoned at once and their slots are reused (with their old neighbours
    re-linked, and for rabitq every neighbour code of a reused slot rewritten) by later adds, so
    memory stays flat under add/remove churn.

    Filters (``filter=`` an id array or a callable): the number of allowed vectors is counted (array)
    or estimated by sampling (callable); when scanning them exactly is cheaper than walking the
    graph, they are scanned (exact results); otherwise the walk only accepts allowed nodes and, below
    30% selectivity with an id array, expands two hops through filtered-out nodes so that distances
    are only computed for allowed ones. ``k`` results are returned whenever ``k`` allowed vectors
    exist (an exact scan completes a walk that found fewer).

    Searches may run from many threads while another thread adds or removes; a removed id is never
    returned by a search that starts after ``remove`` returned, and vectors being inserted are hidden
    until their links are in place.

    >>> import annforge as af, numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    >>> index = af.HNSWIndex(16, M=16, ef_construction=100)
    >>> _ = index.add(x)
    >>> ids, dist = index.search(x[:3], k=1, ef=64)
    >>> ids[:, 0].tolist()
    [0, 1, 2]
    >>> quantized = af.HNSWIndex(16, storage="rabitq", rerank="f16")
    >>> _ = quantized.add(x)
    >>> quantized.search(x[:3], k=1, ef=32)[0][:, 0].tolist()
    [0, 1, 2]
    """

    _core_class = _core.HNSWIndex
    _auto_progress_rows = 50_000  # a progress bar by default from here (about 10 s on 2 cores at 384-d)

    def _chunkable_add(self, ids: Optional[np.ndarray]) -> bool:
        # sq8 learns its value ranges from the first batch: splitting the first add would change them
        return super()._chunkable_add(ids) and not (self.storage == "sq8" and len(self) == 0)

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        *,
        M: int = 16,
        ef_construction: int = 200,
        seed: int = 0,
        storage: str = "f32",
        rerank: Optional[str] = None,
        code_rotation: Optional[str] = None,
    ) -> None:
        dim = _check_int("dim", dim, 1)
        M = _check_int("M", M, 2)
        ef_construction = _check_int("ef_construction", ef_construction, 1)
        seed = _check_int("seed", seed, 0)
        metric = parse_metric(metric)
        if not isinstance(storage, str):
            raise TypeError(f"storage must be a string, got {type(storage).__name__}")
        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {_STORAGES}, got {storage!r}")
        core_storage = storage
        if rerank is not None:
            _check_rabitq_option("rerank", rerank, _RERANKS, storage)
            if rerank == "f16":
                core_storage = "rabitq-f16"
        if code_rotation is not None:
            _check_rabitq_option("code_rotation", code_rotation, _CODE_ROTATIONS, storage)
        self._impl = _core.HNSWIndex(dim, metric, M, ef_construction, seed, core_storage,
                                     code_rotation or "hadamard")

    def __repr__(self) -> str:
        return (
            f"HNSWIndex(dim={self.dim}, metric={self.metric!r}, M={self.M}, "
            f"ef_construction={self.ef_construction}, storage={self.storage!r}"
            + (f", rerank={self.rerank!r}" if self.rerank else "")
            + f", size={len(self)})"
        )

    @property
    def M(self) -> int:
        return int(self._impl.M)

    @property
    def ef_construction(self) -> int:
        return int(self._impl.ef_construction)

    @property
    def seed(self) -> int:
        return int(self._impl.seed)

    @property
    def storage(self) -> str:
        return str(self._impl.storage).split("-")[0]

    @property
    def rerank(self) -> Optional[str]:
        """Precision of the re-rank vectors of ``storage="rabitq"`` (``"f32"`` or ``"f16"``), else None."""
        s = str(self._impl.storage)
        if not s.startswith("rabitq"):
            return None
        return "f16" if s.endswith("-f16") else "f32"

    @property
    def code_rotation(self) -> Optional[str]:
        """Rotation of the RaBitQ codes of ``storage="rabitq"`` (``"hadamard"`` or ``"dense"``), else None."""
        value = self._impl.code_rotation
        return None if value is None else str(value)

    @property
    def default_ef(self) -> int:
        """``ef`` used when ``search`` is not given one (saved with the index)."""
        return int(self._impl.default_ef)

    @default_ef.setter
    def default_ef(self, ef: int) -> None:
        self._impl.default_ef = _check_int("ef", ef, 1)

    def search(
        self,
        q: Any,
        k: int,
        *,
        ef: Optional[int] = None,
        filter: FilterLike = None,
        num_threads: int = 0,
        bound: Optional[float] = None,
        **params: Any,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query: ``(ids [nq, k] int64, distances [nq, k] float32)``.

        ``ef``: candidate list size (default :attr:`default_ef`; ``max(ef, k)`` is used). Larger is
        slower and more accurate. ``bound`` (``storage="rabitq"`` only, default 1.9): how many
        standard errors of the code estimates the walk allows for when it decides which neighbours
        may still beat the results; smaller is faster and less accurate (1.0 was about 1.4x faster at
        recall 0.95 on 384-d embeddings, 1.9 faster from 0.98 up). ``filter`` and the rest as in
        :meth:`VectorIndex.search`.
        """
        if ef is not None:
            params["ef"] = ef
        if bound is not None:
            params["bound"] = bound
        return super().search(q, k, filter=filter, num_threads=num_threads, **params)

    def tune(
        self,
        queries: Any,
        k: int = 10,
        target_recall: float = 0.95,
        *,
        sample: int = 200,
        max_ef: int = 4096,
        num_threads: int = 0,
    ) -> int:
        """Smallest ``ef`` whose recall@k on (a sample of) ``queries`` reaches ``target_recall``.

        Ground truth comes from an exact scan of the stored vectors. The chosen ``ef`` becomes
        ``default_ef`` and is returned (``max_ef`` when even that misses the target).

        >>> import annforge as af, numpy as np
        >>> x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
        >>> index = af.HNSWIndex(8); _ = index.add(x)
        >>> ef = index.tune(x[:100] + 0.01, k=10, target_recall=0.9)
        >>> index.default_ef == ef
        True
        """
        k = _check_int("k", k, 1)
        if not 0.0 < float(target_recall) <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        q = np.atleast_2d(as_float_matrix(queries, "queries"))
        if q.shape[0] == 0:
            raise ValueError("tune needs at least one query")
        if q.shape[0] > sample:
            q = q[np.random.default_rng(0).choice(q.shape[0], sample, replace=False)]
        from .flat import FlatIndex

        exact = FlatIndex(self.dim, self.metric)
        ids = self.ids()
        if len(ids) == 0:
            raise ValueError("tune needs a non-empty index")
        exact.add(self.reconstruct(ids), ids, num_threads=num_threads)
        kk = min(k, len(ids))
        truth, _ = exact.search(q, kk, num_threads=num_threads)

        def recall(ef: int) -> float:
            got, _ = self.search(q, kk, num_threads=num_threads, ef=ef)
            hits = sum(len(np.intersect1d(a, b)) for a, b in zip(got, truth))
            return hits / truth.size

        # Double until the target is met, then bisect between the last miss and the first hit.
        lo, hi = 0, max(1, kk)
        while recall(hi) < target_recall:
            if hi >= max_ef:
                self.default_ef = max_ef
                return int(max_ef)
            lo, hi = hi, min(max_ef, hi * 2)
        while hi - lo > max(1, hi // 16):
            mid = (lo + hi) // 2
            if recall(mid) >= target_recall:
                hi = mid
            else:
                lo = mid
        self.default_ef = hi
        return int(hi)
