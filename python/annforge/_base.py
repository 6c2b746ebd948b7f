"""The behaviour every vector index family shares: add / search / remove, persistence, pickling."""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Iterable, Optional, Tuple, Type, Union

import numpy as np

from . import _core, _progress
from ._arrays import as_float_matrix, as_ids

if TYPE_CHECKING:  # the families import this module; their names are only needed for annotations
    from .flat import FlatIndex
    from .hnsw import HNSWIndex
    from .ivf_rabitq import IVFRaBitQIndex
    from .ivfpq import IVFPQIndex
    from .lsh import MinHashLSH, MinHashLSHForest
    from .scann import ScaNNIndex

    #: What :func:`load` returns: one of the index families.
    AnyIndex = Union[FlatIndex, HNSWIndex, IVFPQIndex, IVFRaBitQIndex, ScaNNIndex, MinHashLSH, MinHashLSHForest]

FilterLike = Union[None, Iterable[int], np.ndarray, Callable[[int], bool]]
PathLike = Union[str, "os.PathLike[str]"]

# Every spelling of a metric the Python layer accepts -> the name the compiled core knows. Only names
# whose meaning is unambiguous: "euclidean" ranks exactly as the squared distance annforge computes (the
# distances stay squared), "angular" is ann-benchmarks' name for cosine distance.
METRIC_ALIASES: Dict[str, str] = {
    "l2": "l2", "euclidean": "l2", "sqeuclidean": "l2", "l2sq": "l2",
    "ip": "ip", "inner_product": "ip", "dot": "ip", "dot_product": "ip",
    "cosine": "cosine", "cos": "cosine", "angular": "cosine",
}


def parse_metric(metric: Any) -> str:
    """The canonical metric name (``"l2"``, ``"ip"`` or ``"cosine"``) for any accepted spelling.

    Case and ``-`` / ``_`` do not matter. ``euclidean`` / ``sqeuclidean`` / ``l2sq`` mean ``l2`` (the
    distances annforge returns are squared Euclidean either way), ``inner_product`` / ``dot`` /
    ``dot_product`` mean ``ip``, ``angular`` / ``cos`` mean ``cosine``.

    >>> parse_metric("Euclidean"), parse_metric("inner-product"), parse_metric("angular")
    ('l2', 'ip', 'cosine')
    """
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string, got {type(metric).__name__}")
    key = metric.strip().lower().replace("-", "_")
    try:
        return METRIC_ALIASES[key]
    except KeyError:
        accepted = ", ".join(sorted(METRIC_ALIASES))
        raise ValueError(f"unknown metric {metric!r}: expected 'l2', 'ip' or 'cosine' (accepted spellings: {accepted})") from None


def as_filter(filter: Any, live_ids: Callable[[], np.ndarray]) -> Any:
    """What the compiled ``search`` takes for ``filter=``: None, a callable, or an int64 array of allowed ids.

    Accepted: an array-like of ids (list, NumPy, torch), a ``set`` / ``frozenset`` (any ``Set``) of
    ints, or a boolean mask *indexed by id*: ``mask[i]`` allows id ``i``, so the mask must be longer
    than the largest live id (``live_ids`` is called to check that; with the automatic ids 0..n-1 a mask
    of length ``len(index)`` fits).
    """
    if filter is None or callable(filter):
        return filter
    if isinstance(filter, AbstractSet):
        values = list(filter)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"a filter set must hold integer ids, found {value!r} ({type(value).__name__})")
        try:
            return np.array(sorted(int(v) for v in values), dtype=np.int64)
        except OverflowError:
            raise ValueError("a filter set holds an id outside the int64 range") from None
    if type(filter).__module__.startswith("torch"):
        filter = filter.detach().cpu().numpy()
    arr = np.asarray(filter)
    if arr.dtype == np.bool_:
        if arr.ndim != 1:
            raise ValueError(f"a boolean filter mask must be 1-d (indexed by id), got shape {arr.shape}")
        ids = live_ids()
        if ids.size and int(ids.max()) >= arr.shape[0]:
            raise ValueError(
                f"the boolean filter mask has length {arr.shape[0]} but the index holds id {int(ids.max())}: "
                "the mask is indexed by id (mask[i] allows id i), so it needs length > the largest id; "
                "pass an array of allowed ids instead"
            )
        return np.flatnonzero(arr).astype(np.int64)
    allowed = as_ids(arr, "filter")
    return np.empty(0, dtype=np.int64) if allowed is None or allowed.size == 0 else allowed

# Class name stored in a file -> Python class that loads it (filled by register_family).
_FAMILIES: Dict[str, Type["VectorIndex"]] = {}


def register_family(cls: Type["VectorIndex"]) -> Type["VectorIndex"]:
    """Class decorator: make ``annforge.load`` and unpickling recognise this family's files."""
    _FAMILIES[cls.__name__] = cls
    return cls


def family_for(kind: str) -> Type["VectorIndex"]:
    try:
        return _FAMILIES[kind]
    except KeyError:
        raise OSError(f"this annforge build cannot load a {kind} file") from None


class VectorIndex:
    """Base class of the vector index families (not instantiated directly).

    Distances are always "smaller is closer": ``l2`` is the squared Euclidean distance, ``ip`` is
    ``1 - <q, x>``, ``cosine`` is ``1 - cos(q, x)``.
    """

    _impl: Any
    _core_class: ClassVar[Any]

    @classmethod
    def _wrap(cls, impl: Any) -> "VectorIndex":
        obj = cls.__new__(cls)
        obj._impl = impl
        return obj

    # -- introspection ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return int(self._impl.dim)

    @property
    def metric(self) -> str:
        """``"l2"``, ``"ip"`` or ``"cosine"``."""
        return str(self._impl.metric)

    def __len__(self) -> int:
        return int(len(self._impl))

    def __contains__(self, id: int) -> bool:
        return bool(self._impl.__contains__(int(id)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, size={len(self)})"

    def ids(self) -> np.ndarray:
        """Every live id (int64), in storage order."""
        return self._impl.ids()

    def reconstruct(self, ids: Any) -> np.ndarray:
        """Stored vectors for ``ids`` (normalised for cosine); ValueError for an unknown id."""
        return self._impl.reconstruct(as_ids(ids))

    def memory_bytes(self) -> int:
        """Bytes of memory the index holds (vectors, ids, links, codes)."""
        return int(self._impl.memory_bytes())

    # -- updates ---------------------------------------------------------------------------------
    #: ``add`` shows a progress bar by default from this many rows on (when stderr is a terminal).
    _auto_progress_rows: ClassVar[float] = float("inf")

    def add(
        self, x: Any, ids: Any = None, *, num_threads: int = 0, show_progress: Optional[bool] = None
    ) -> np.ndarray:
        """Add vectors (``[n, dim]`` or ``[dim]``); an id that exists is replaced (upsert).

        ``ids=None`` continues from the largest id used so far. Returns the int64 ids.

        ``show_progress``: draw a progress bar on stderr (the batch is then added in about 100 ordered
        chunks, with the same result); the default ``None`` shows it for large batches of the slow-to-build
        families when stderr is a terminal. Start and end of large adds are logged at INFO on the
        ``annforge`` logger (``logging.basicConfig(level=logging.INFO)`` to see them).

        >>> import annforge as af, numpy as np
        >>> index = af.FlatIndex(4)
        >>> index.add(np.eye(4, dtype=np.float32)).tolist()
        [0, 1, 2, 3]
        """
        arr, id_arr = as_float_matrix(x, "vectors"), as_ids(ids)
        n = int(arr.shape[0]) if arr.ndim == 2 else 1
        show = _progress.want_progress(show_progress, n, self._auto_progress_rows)
        if not show and n < 10_000:  # the common path: one call, nothing else
            return self._impl.add(arr, id_arr, num_threads)
        return _progress.observed_add(type(self).__name__, lambda a, i: self._impl.add(a, i, num_threads), arr,
                                      id_arr, show_progress=show, chunkable=self._chunkable_add(id_arr))

    def _chunkable_add(self, ids: Optional[np.ndarray]) -> bool:
        """Whether adding in chunks equals one call (not when ids repeat: a batch may treat that differently)."""
        return ids is None or len(np.unique(ids)) == len(ids)

    def remove(self, ids: Any) -> int:
        """Remove ``ids``; returns how many of them existed. Removed ids never come back from search."""
        arr = as_ids(ids)
        if arr is None:
            raise TypeError("ids must be an array-like of integers, not None")
        return int(self._impl.remove(arr))

    # -- search ----------------------------------------------------------------------------------
    def search(
        self, q: Any, k: int, *, filter: FilterLike = None, num_threads: int = 0, **params: Any
    ) -> Tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query: ``(ids [nq, k] int64, distances [nq, k] float32)``.

        Best first; rows with fewer than ``k`` hits are padded with id -1 and distance +inf.
        ``filter`` restricts the results to some ids: an array-like or a ``set`` of allowed ids, a
        boolean mask indexed by id (``mask[i]`` allows id ``i``; it must be longer than the largest
        id), or a callable ``id -> bool``. ``params`` are the family's search knobs (see the class
        docstring).

        >>> import annforge as af, numpy as np
        >>> index = af.FlatIndex(2)
        >>> _ = index.add(np.array([[0, 0], [1, 0], [5, 5]], dtype=np.float32))
        >>> ids, dist = index.search([0.9, 0.0], k=2)
        >>> ids.tolist(), dist.astype(np.float64).round(2).tolist()
        ([[1, 0]], [[0.01, 0.81]])
        >>> index.search([0.9, 0.0], k=2, filter={0, 2})[0].tolist()
        [[0, 2]]
        >>> index.search([0.9, 0.0], k=2, filter=np.array([False, True, True]))[0].tolist()
        [[1, 2]]
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        filter = as_filter(filter, self._impl.ids)
        return self._impl.search(as_float_matrix(q, "queries"), int(k), filter, num_threads, params)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Write the index to one self-describing file (atomically: temporary file, fsync, rename).

        Load it back with ``annforge.load(path)``.
        """
        self._impl.save(os.fspath(path))

    def to_bytes(self) -> bytes:
        """The index in the file format, as bytes (what pickling uses)."""
        return self._impl.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "VectorIndex":
        """Rebuild an index from ``to_bytes()`` output."""
        return cls._wrap(cls._core_class.from_bytes(bytes(data)))

    @classmethod
    def _load(cls, path: str, mmap: bool) -> "VectorIndex":
        return cls._wrap(cls._core_class.load(path, mmap))

    def __getstate__(self) -> Dict[str, Any]:
        return {"annforge": self.to_bytes()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._impl = self._core_class.from_bytes(state["annforge"])


def load(path: PathLike, *, mmap: bool = False) -> AnyIndex:
    """Load any annforge index file; returns an instance of the class that saved it.

    The return type is the union ``FlatIndex | HNSWIndex | IVFPQIndex | IVFRaBitQIndex | ScaNNIndex | MinHashLSH |
    MinHashLSHForest``; narrow it with ``isinstance`` (or annotate the variable) to reach a family's
    own methods and search knobs.

    ``mmap=True`` maps the file read-only: vectors stay in the page cache instead of being copied into
    memory (the first modification copies them). Every checksum is verified either way; a truncated,
    corrupted or foreign file raises OSError.

    >>> import annforge as af, numpy as np, tempfile, os
    >>> index = af.FlatIndex(3); _ = index.add(np.ones((2, 3), dtype=np.float32))
    >>> path = os.path.join(tempfile.mkdtemp(), "idx.af"); index.save(path)
    >>> af.load(path, mmap=True)
    FlatIndex(dim=3, metric='l2', size=2)
    """
    p = os.fspath(path)
    if not isinstance(p, str):
        p = os.fsdecode(p)
    kind = _core.file_kind(p)
    return family_for(kind)._load(p, bool(mmap))  # type: ignore[return-value]
