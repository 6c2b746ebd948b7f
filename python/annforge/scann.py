"""ScaNN-style index: k-means leaves, anisotropic (score-aware) 4-bit codes, exact reorder."""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from . import _core, _progress
from ._arrays import as_float_matrix
from ._base import FilterLike, VectorIndex, parse_metric, register_family


def parallel_cost_multiplier(threshold: float, sq_norm: float, dim: int) -> float:
    """eta = h_par / h_perp of Guo et al. (2020) for a datapoint of squared norm ``sq_norm``.

    ``eta = (dim - 1) * t / (1 - t)`` with ``t = threshold**2 / sq_norm`` (ScaNN's
    ``ComputeParallelCostMultiplier``); for unit vectors ``(dim - 1) T^2 / (1 - T^2)``.

    >>> round(parallel_cost_multiplier(0.2, 1.0, 101), 4)
    4.1667
    """
    return float(_core._scann_eta(float(threshold), float(sq_norm), int(dim)))


@register_family
class ScaNNIndex(VectorIndex):
    """ScaNN-style maximum-inner-product index (Guo et al., ICML 2020).

    Vectors go to the nearest of ``num_leaves`` k-means leaves (spherical k-means for ``ip`` /
    ``cosine``); the residual to the leaf centre is cut into blocks of ``dims_per_block`` dimensions,
    each encoded by one of 16 centres (4 bits, scanned with the SIMD fast-scan kernels). With
    ``anisotropic_threshold=T`` (ip / cosine) the codes minimise the score-aware loss that weights the
    error parallel to the datapoint by ``eta = h_par / h_perp`` (see :func:`parallel_cost_multiplier`)
    and the codebooks are refitted for that loss; ``None`` gives plain (isotropic) codes. ``reorder``
    keeps an ``"f32"``, ``"f16"`` or ``"sq8"`` copy to rescore the best ``reorder_k`` candidates
    exactly (``None``: no copy, distances are the code estimates).

    ``num_leaves=None`` (or 0) picks ``round(sqrt(n))`` at :meth:`train`. Search parameters:
    ``leaves_to_search`` (default ``min(num_leaves, max(8, ceil(num_leaves / 10)))``) and ``reorder_k`` (default
    ``max(100, 4 k)``). Distances: ``ip`` is ``1 - <q, x>``, ``cosine`` ``1 - cos``, ``l2`` squared.
    A batch of queries is scanned leaf by leaf (same answers as one query at a time, more throughput).

    The default metric is ``"ip"``, unlike the other families (``"l2"``): this family exists for
    maximum-inner-product search, and its score-aware loss only applies to ``ip`` / ``cosine`` (with
    ``"l2"`` the codes are plain isotropic ones). Pass ``metric="l2"`` (or ``"cosine"``) explicitly
    when comparing with an index of another family.

    >>> import annforge as af, numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = af.ScaNNIndex(16, 32)
    >>> index.train(x)
    >>> _ = index.add(x)
    >>> ids, dist = index.search(x[:3], k=1, leaves_to_search=8)
    >>> ids[:, 0].tolist()
    [0, 1, 2]
    """

    _core_class = _core.ScaNNIndex
    _auto_progress_rows = 200_000

    def __init__(
        self,
        dim: int,
        num_leaves: Optional[int] = None,
        *,
        dims_per_block: int = 2,
        anisotropic_threshold: Optional[float] = 0.2,
        metric: str = "ip",
        reorder: Optional[str] = "f32",
        seed: int = 0,
        training_sample_size: int = 0,
        codebook_iterations: int = 4,
        encode_rounds: int = 4,
    ) -> None:
        if num_leaves is None:
            num_leaves = 0
        for name, value in (("dim", dim), ("num_leaves", num_leaves), ("dims_per_block", dims_per_block),
                            ("seed", seed), ("training_sample_size", training_sample_size),
                            ("codebook_iterations", codebook_iterations), ("encode_rounds", encode_rounds)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
            low = 1 if name in ("dim", "dims_per_block") else 0
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        metric = parse_metric(metric)
        if reorder is not None and not isinstance(reorder, str):
            raise TypeError(f"reorder must be 'f32', 'f16', 'sq8' or None, got {type(reorder).__name__}")
        if anisotropic_threshold is not None:
            if isinstance(anisotropic_threshold, bool) or not isinstance(anisotropic_threshold, (int, float, np.floating, np.integer)):
                raise TypeError("anisotropic_threshold must be a number or None")
            if not math.isfinite(float(anisotropic_threshold)) or anisotropic_threshold < 0:
                raise ValueError(f"anisotropic_threshold must be finite and >= 0, got {anisotropic_threshold}")
            anisotropic_threshold = float(anisotropic_threshold)
        self._impl = _core.ScaNNIndex(int(dim), int(num_leaves), int(dims_per_block), anisotropic_threshold, metric,
                                      reorder, int(seed))
        self._impl.set_training_options(int(training_sample_size), int(codebook_iterations), int(encode_rounds))

    def search(
        self,
        q: Any,
        k: int,
        *,
        leaves_to_search: Optional[int] = None,
        reorder_k: Optional[int] = None,
        filter: FilterLike = None,
        num_threads: int = 0,
        **params: Any,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query: ``(ids [nq, k] int64, distances [nq, k] float32)``.

        ``leaves_to_search``: leaves scanned (default ``min(num_leaves, max(8, ceil(num_leaves / 10)))``);
        ``reorder_k``: candidates rescored exactly with the ``reorder`` copy (default ``max(100, 4 k)``).
        ``filter`` and the rest as in :meth:`VectorIndex.search`.
        """
        if leaves_to_search is not None:
            params["leaves_to_search"] = leaves_to_search
        if reorder_k is not None:
            params["reorder_k"] = reorder_k
        return super().search(q, k, filter=filter, num_threads=num_threads, **params)

    def train(self, x: Any, *, num_threads: int = 0, device: Any = "cpu") -> None:
        """Learn the leaves and the (anisotropic) codebooks. Training again discards every stored vector.

        Needs at least ``max(16, num_leaves)`` rows. ``device="cuda"`` runs the leaf k-means's distance
        steps on the GPU.
        """
        from .gpu import kmeans_accelerator

        accelerator = kmeans_accelerator(device)
        arr = as_float_matrix(x, "training vectors")
        done = _progress.log_phase("ScaNNIndex", "train", len(arr))
        self._impl.train(arr, num_threads, accelerator)
        done()

    @property
    def is_trained(self) -> bool:
        return bool(self._impl.is_trained)

    @property
    def num_leaves(self) -> int:
        """Number of leaves (0 before training when it is derived from n)."""
        return int(self._impl.num_leaves)

    @property
    def dims_per_block(self) -> int:
        return int(self._impl.dims_per_block)

    @property
    def anisotropic_threshold(self) -> Optional[float]:
        return self._impl.anisotropic_threshold

    @property
    def anisotropic(self) -> bool:
        """Whether codes use the score-aware loss (a threshold is set and the metric is ip / cosine)."""
        return bool(self._impl.anisotropic)

    @property
    def reorder(self) -> Optional[str]:
        return self._impl.reorder

    def bytes_per_vector(self) -> int:
        """Code bytes + reorder copy bytes + 8 bytes of id per stored vector."""
        return int(self._impl.code_bytes + self._impl.refine_bytes + 8)

    def leaf_sizes(self) -> np.ndarray:
        """Number of vectors in each leaf (int64 ``[num_leaves]``)."""
        return self._impl.leaf_sizes()

    def leaf_centres(self) -> np.ndarray:
        """The ``[num_leaves, dim]`` leaf centres."""
        return self._impl.leaf_centres()

    def codebooks(self) -> np.ndarray:
        """The ``[dim / dims_per_block, 16, dims_per_block]`` block codebooks."""
        return self._impl.codebooks()

    def __repr__(self) -> str:
        return (
            f"ScaNNIndex(dim={self.dim}, num_leaves={self.num_leaves}, dims_per_block={self.dims_per_block}, "
            f"anisotropic_threshold={self.anisotropic_threshold!r}, metric={self.metric!r}, "
            f"reorder={self.reorder!r}, size={len(self)})"
        )
