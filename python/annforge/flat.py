"""Exact search: every stored vector is compared with every query."""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from . import _core
from ._arrays import as_float_matrix
from ._base import FilterLike, VectorIndex, as_filter, parse_metric, register_family


@register_family
class FlatIndex(VectorIndex):
    """Exact k-nearest-neighbour search with SIMD kernels (no search parameters).

    Batches run through a register-tiled many-to-many kernel with per-query top-k selection; single
    queries stream the rows. Supports upsert, remove, filters, range search, save/load/mmap, pickle.

    >>> import annforge as af, numpy as np
    >>> x = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    >>> index = af.FlatIndex(16, metric="l2")
    >>> _ = index.add(x)
    >>> ids, dist = index.search(x[:3], k=1)
    >>> ids[:, 0].tolist()
    [0, 1, 2]
    """

    _core_class = _core.FlatIndex

    def __init__(self, dim: int, metric: str = "l2") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an integer, got {type(dim).__name__}")
        metric = parse_metric(metric)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self._impl = _core.FlatIndex(int(dim), metric)

    def to_gpu(self, device: Any = 0, *, dtype: str = "f32") -> Any:
        """A copy on a CUDA device with the same ``search`` (:class:`annforge.gpu.GpuFlatIndex`).

        ``dtype="f16"`` stores half floats. RuntimeError without the CUDA module or a GPU.
        """
        from .gpu import GpuFlatIndex

        return GpuFlatIndex(self, device, dtype)

    def search_range(
        self, q: Any, radius: float, *, filter: FilterLike = None, num_threads: int = 0
    ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """Every vector closer than ``radius`` (same distance as ``search``), per query, nearest first.

        Returns ``(ids, distances)``: two lists with one array per query.

        >>> import annforge as af, numpy as np
        >>> index = af.FlatIndex(1); _ = index.add(np.array([[0.0], [1.0], [3.0]], dtype=np.float32))
        >>> ids, dist = index.search_range([[0.0]], radius=2.0)
        >>> ids[0].tolist(), dist[0].tolist()
        ([0, 1], [0.0, 1.0])
        """
        filter = as_filter(filter, self._impl.ids)
        lims, ids, dist = self._impl.search_range(as_float_matrix(q, "queries"), float(radius), filter, num_threads)
        bounds = lims.tolist()
        return (
            [ids[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)],
            [dist[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)],
        )
