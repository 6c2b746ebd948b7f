"""GPU support: exact search, IVF-PQ search and k-means on an NVIDIA GPU.

The CUDA kernels live in a separate extension module, ``annforge._cuda``, built only when asked for
(``pip install . -C cmake.define.ANNFORGE_CUDA=ON``) and imported only when a GPU feature is used:
``import annforge`` never loads the CUDA runtime. Without that module, or without a GPU, every GPU
entry point raises RuntimeError saying which is missing; :func:`gpu_available` tells beforehand.

>>> import annforge as af, numpy as np
>>> x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
>>> ids, dist = af.knn(x, x[:2], k=1)          # exact ground truth on the CPU
>>> ids.ravel().tolist()
[0, 1]
>>> isinstance(af.gpu_available(), bool)
True
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from ._arrays import as_float_matrix, as_ids

DeviceLike = Union[str, int, None]

_MISSING_MODULE = (
    "annforge was built without CUDA support (the annforge._cuda module is missing): rebuild with "
    "`pip install . -C cmake.define.ANNFORGE_CUDA=ON` on a machine with nvcc"
)


def _module() -> Any:
    """The CUDA extension module; RuntimeError when this build has none."""
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        if "_cuda" in str(exc) or isinstance(exc, ModuleNotFoundError):
            raise RuntimeError(_MISSING_MODULE) from None
        raise RuntimeError(f"annforge._cuda could not be loaded: {exc}") from None
    return _cuda


def cuda_built() -> bool:
    """Whether this copy of annforge has the CUDA module (it may still find no GPU at run time)."""
    import importlib.util

    return importlib.util.find_spec("annforge._cuda") is not None


def cuda_architectures() -> list:
    """GPU architectures the CUDA module was compiled for (``["80-real", "90-real", "90-virtual"]``), or []."""
    if not cuda_built():
        return []
    try:
        return [a for a in str(_module().architectures).split(",") if a]
    except RuntimeError:
        return []


def device_count() -> int:
    """Number of usable CUDA devices (0 without the CUDA module, a driver or a GPU)."""
    if not cuda_built():
        return 0
    try:
        return int(_module().device_count())
    except RuntimeError:
        return 0


def gpu_available() -> bool:
    """True when GPU features can run here: the CUDA module is built and a device is visible.

    >>> import annforge as af
    >>> af.gpu_available() in (True, False)
    True
    """
    return device_count() > 0


def parse_device(device: DeviceLike) -> Optional[int]:
    """``"cpu"`` / None -> None; ``"cuda"`` -> 0; ``"cuda:1"`` or ``1`` -> 1. ValueError otherwise.

    >>> parse_device("cpu"), parse_device("cuda"), parse_device("cuda:2"), parse_device(1)
    (None, 0, 2, 1)
    """
    if device is None:
        return None
    if isinstance(device, bool):
        raise TypeError("device must be 'cpu', 'cuda', 'cuda:N' or an int, not a bool")
    if isinstance(device, (int, np.integer)):
        if device < 0:
            raise ValueError(f"device must be >= 0, got {device}")
        return int(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu', 'cuda', 'cuda:N' or an int, got {type(device).__name__}")
    if device == "cpu":
        return None
    match = re.fullmatch(r"(?:cuda|gpu)(?::(\d+))?", device)
    if not match:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return int(match.group(1) or 0)


def _require_device(device: int) -> Any:
    """The CUDA module, after checking that `device` exists (RuntimeError / ValueError otherwise)."""
    mod = _module()
    count = int(mod.device_count())
    if count == 0:
        raise RuntimeError(f"no CUDA GPU is available: {mod.unavailable_reason()}")
    if not 0 <= device < count:
        raise ValueError(f"device must be in [0, {count}), got {device}")
    return mod


def kmeans_accelerator(device: DeviceLike = "cuda") -> Any:
    """A fresh k-means accelerator for ``device`` (what ``train(..., device="cuda")`` passes to the core).

    Make one per k-means / train call: it keeps the matrices of that call on the device.
    """
    dev = parse_device(device)
    if dev is None:
        return None
    return _require_device(dev).kmeans_accelerator(dev)


def _mask(filter: Any, slot_ids: np.ndarray) -> Optional[np.ndarray]:
    """A filter (ids or callable) as one byte per stored vector, in the GPU copy's order."""
    if filter is None:
        return None
    if callable(filter):
        return np.fromiter((bool(filter(int(i))) for i in slot_ids), dtype=np.uint8, count=len(slot_ids))
    allowed = as_ids(filter, "filter")
    if allowed is None:
        allowed = np.empty(0, dtype=np.int64)
    return np.isin(slot_ids, allowed.astype(np.int64, copy=False)).astype(np.uint8)


def _to_ids(labels: np.ndarray, dist: np.ndarray, slot_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """GPU row / entry numbers -> ids, each row ordered by (distance, id) like the CPU indexes."""
    ids = np.where(labels >= 0, slot_ids[np.clip(labels, 0, max(len(slot_ids) - 1, 0))] if len(slot_ids) else -1, -1)
    ids = ids.astype(np.int64, copy=False)
    if ids.size:
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), dist), axis=-1)
        ids = np.take_along_axis(ids, order, axis=-1)
        dist = np.take_along_axis(dist, order, axis=-1)
    return ids, dist


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


class _GpuIndex:
    """What the GPU copies share: the id order of the copy, the CPU snapshot for ``to_cpu``."""

    _impl: Any
    _slot_ids: np.ndarray
    _snapshot: bytes
    _cpu_class: Any
    _dim: int
    _metric: str
    _device: int

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def device(self) -> int:
        """The CUDA device ordinal holding the data."""
        return self._device

    def __len__(self) -> int:
        return len(self._slot_ids)

    def ids(self) -> np.ndarray:
        """Every id, in the order of the GPU copy."""
        return self._slot_ids.copy()

    def memory_bytes(self) -> int:
        """Device memory the copy holds."""
        return int(self._impl.memory_bytes())

    def to_cpu(self) -> Any:
        """The CPU index this copy was made from (as it was at ``to_gpu`` time)."""
        return self._cpu_class.from_bytes(self._snapshot)

    def _queries(self, q: Any) -> np.ndarray:
        return as_float_matrix(q, "queries")


class GpuFlatIndex(_GpuIndex):
    """Exact search on a GPU: a copy of a :class:`~annforge.FlatIndex` made by ``to_gpu()``.

    ``search`` takes the same arguments and returns the same ids and distances as the CPU index (the
    winners' distances are recomputed directly, as the CPU does; ties are ordered by id). Vectors are
    kept as float32 or, with ``dtype="f16"``, as half floats (half the memory; distances are then to
    the rounded vectors). The copy is a snapshot: later changes to the CPU index do not reach it.
    ``k`` is at most 1024 on the GPU. A callable ``filter`` is called once per stored id (the GPU
    reads the resulting mask); an id array costs one ``np.isin``.
    """

    def __init__(self, index: Any, device: int = 0, dtype: str = "f32") -> None:
        from .flat import FlatIndex

        if not isinstance(index, FlatIndex):
            raise TypeError(f"expected a FlatIndex, got {type(index).__name__}")
        if dtype not in ("f32", "f16"):
            raise ValueError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
        dev = parse_device(device)
        if dev is None:
            raise ValueError("to_gpu needs a CUDA device, not 'cpu'")
        mod = _require_device(dev)
        self._slot_ids = np.ascontiguousarray(index.ids(), dtype=np.int64)
        vectors = index.reconstruct(self._slot_ids) if len(self._slot_ids) else np.zeros((0, index.dim), np.float32)
        self._dim, self._metric, self._device = index.dim, index.metric, dev
        self._snapshot = index.to_bytes()
        self._cpu_class = FlatIndex
        self.dtype = dtype
        self._impl = mod.FlatIndex(dev, np.ascontiguousarray(vectors, dtype=np.float32), self._metric, dtype == "f16")

    def search(
        self, q: Any, k: int, *, filter: Any = None, num_threads: int = 0, **params: Any
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``(ids [nq, k] int64, distances [nq, k] float32)``, best first, padded with -1 / +inf."""
        if params:
            raise ValueError(f"unknown search parameter(s) {sorted(params)} for FlatIndex (none: it is exact)")
        k = _check_k(k)
        labels, dist = self._impl.search(self._queries(q), k, _mask(filter, self._slot_ids))
        return _to_ids(labels, dist, self._slot_ids)

    def __repr__(self) -> str:
        return f"GpuFlatIndex(dim={self.dim}, metric={self.metric!r}, size={len(self)}, device={self.device}, dtype={self.dtype!r})"


class GpuIVFPQIndex(_GpuIndex):
    """IVF-PQ search on a GPU: a copy of a trained :class:`~annforge.IVFPQIndex` made by ``to_gpu()``.

    Same ``search(q, k, filter=..., nprobe=..., refine_factor=...)`` as the CPU index: coarse probing,
    the list scan (8-bit or 4-bit codes, look-up tables in shared memory) and the exact re-ranking all
    run on the device. 4-bit tables stay in float (the CPU rounds them to 8 bits), so candidate sets can
    differ slightly at the margin; re-ranked distances agree. ``k * refine_factor`` and ``nprobe`` are
    at most 1024 on the GPU.
    """

    def __init__(self, index: Any, device: int = 0) -> None:
        from .ivfpq import IVFPQIndex

        if not isinstance(index, IVFPQIndex):
            raise TypeError(f"expected an IVFPQIndex, got {type(index).__name__}")
        if not index.is_trained:
            raise ValueError("index is not trained: call train(x) before to_gpu()")
        dev = parse_device(device)
        if dev is None:
            raise ValueError("to_gpu needs a CUDA device, not 'cpu'")
        mod = _require_device(dev)
        layout = index._impl._layout()
        self._slot_ids = np.ascontiguousarray(layout["ids"], dtype=np.int64)
        self._dim, self._metric, self._device = index.dim, index.metric, dev
        self._nlist = index.nlist
        self._refine = index.refine
        self._snapshot = index.to_bytes()
        self._cpu_class = IVFPQIndex
        self._impl = mod.IVFPQIndex(dev, layout, index.dim, index.nlist, index.m, index.nbits, index.metric,
                                    index.residual, index.refine)

    def search(
        self, q: Any, k: int, *, filter: Any = None, num_threads: int = 0, nprobe: Optional[int] = None,
        refine_factor: int = 4, **params: Any
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``(ids [nq, k] int64, distances [nq, k] float32)``; knobs as :class:`~annforge.IVFPQIndex`."""
        if params:
            raise ValueError(f"unknown search parameter(s) {sorted(params)} for IVFPQIndex (nprobe, refine_factor)")
        k = _check_k(k)
        if nprobe is None:
            nprobe = min(self._nlist, 16)
        for name, value in (("nprobe", nprobe), ("refine_factor", refine_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        labels, dist = self._impl.search(self._queries(q), k, int(nprobe), int(refine_factor),
                                         _mask(filter, self._slot_ids), self._dim)
        return _to_ids(labels, dist, self._slot_ids)

    def __repr__(self) -> str:
        return f"GpuIVFPQIndex(dim={self.dim}, metric={self.metric!r}, size={len(self)}, device={self.device})"


def knn(
    base: Any, queries: Any, k: int, metric: str = "l2", *, device: DeviceLike = "cpu", num_threads: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``base`` for every query, in one call: ``(ids [nq, k], distances)``.

    Ids are row numbers of ``base``; distances follow the index convention (``l2`` squared, ``ip``
    ``1 - <q, x>``, ``cosine`` ``1 - cos``), ties ordered by row. ``device="cpu"`` runs the FlatIndex
    kernels on all cores; ``device="cuda"`` (or ``"cuda:N"``) the GPU kernels (k <= 1024).

    >>> import annforge as af, numpy as np
    >>> base = np.array([[0, 0], [1, 0], [0, 3]], dtype=np.float32)
    >>> ids, dist = af.knn(base, [[0.9, 0.1]], k=2)
    >>> ids.tolist(), [round(float(v), 2) for v in dist[0]]
    ([[1, 0]], [0.02, 0.82])
    """
    from .flat import FlatIndex

    k = _check_k(k)
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a string, got {type(metric).__name__}")
    x = as_float_matrix(base, "base")
    if x.ndim != 2:
        raise ValueError(f"base must be a 2-D array [n, dim], got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError("base must have at least one column")
    dev = parse_device(device)
    if dev is None:
        index = FlatIndex(x.shape[1], metric)
        index.add(x, num_threads=num_threads)
        return index.search(queries, k, num_threads=num_threads)
    mod = _require_device(dev)
    q = as_float_matrix(queries, "queries")
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"queries must have shape (n, {x.shape[1]}), got {q.shape}")
    metric = FlatIndex(x.shape[1], metric).metric  # the core's name (and its ValueError for an unknown one)
    if not (np.isfinite(x).all() and np.isfinite(q).all()):
        raise ValueError("base and queries must not contain NaN or infinity")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.where(norms > 0, x / np.maximum(norms, 1e-30), 0).astype(np.float32)
    gpu = mod.FlatIndex(dev, x, metric, False)
    labels, dist = gpu.search(q, k, None)
    return _to_ids(labels, dist, np.arange(len(x), dtype=np.int64))


__all__ = ["GpuFlatIndex", "GpuIVFPQIndex", "cuda_architectures", "cuda_built", "device_count", "gpu_available",
           "kmeans_accelerator", "knn", "parse_device"]
