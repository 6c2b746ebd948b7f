"""IVF-RaBitQ: inverted lists over k-means cells holding RaBitQ codes of each vector's residual,
scanned with the 4-bit fast-scan kernels and re-ranked (the design of faiss's IndexIVFRaBitQFastScan)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _core, _progress
from ._arrays import as_float_matrix
from ._base import FilterLike, VectorIndex, parse_metric, register_family


@register_family
class IVFRaBitQIndex(VectorIndex):
    """Inverted-file index with RaBitQ codes, 4-bit SIMD fast-scan and exact re-ranking.

    ``nlist`` k-means cells. Each vector's residual to its cell centre is randomly rotated (seeded by
    ``seed``, padded to a multiple of 64 dimensions) and encoded with RaBitQ (Gao & Long, SIGMOD 2024):
    a 1-bit sign code per dimension plus per-vector factors that give an unbiased distance estimate
    with an error bound, and with ``bits`` > 1 the extended multi-bit code (arXiv 2409.09913). The
    sign codes are stored as 4-bit fast-scan codes (4 dimensions per nibble): a probed cell is scanned
    with 16-entry tables of partial sums of the rotated query residual, and each 16-bit sum becomes a
    distance estimate through the vector's factors. The best ``refine_factor * k`` estimates go on:
    with ``bits`` > 1 they are re-estimated from the full code; with a ``refine`` copy (``"f32"``,
    ``"f16"`` or ``"sq8"``) they get exact distances (with ``bits`` > 1 only those whose error bound
    leaves a chance of the top k). ``refine=None`` keeps no copy: distances are the estimates.

    Metrics ``"l2"``, ``"ip"`` (``1 - <q, x>``) and ``"cosine"``. Call :meth:`train` before
    :meth:`add` / :meth:`search`. Search parameters: ``nprobe`` (cells visited, default
    ``min(nlist, 16)``) and ``refine_factor`` (default 10).

    >>> import annforge as af, numpy as np
    >>> x = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    >>> index = af.IVFRaBitQIndex(32, nlist=16, bits=4)
    >>> index.train(x)
    >>> _ = index.add(x)
    >>> ids, dist = index.search(x[:3], k=1, nprobe=4)
    >>> ids[:, 0].tolist()
    [0, 1, 2]
    """

    _core_class = _core.IVFRaBitQIndex
    _auto_progress_rows = 500_000

    def __init__(
        self,
        dim: int,
        nlist: int,
        *,
        bits: int = 1,
        metric: str = "l2",
        refine: Optional[str] = "f32",
        seed: int = 0,
    ) -> None:
        for name, value in (("dim", dim), ("nlist", nlist), ("bits", bits), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
            if value < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be >= {0 if name == 'seed' else 1}, got {value}")
        if bits > 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        metric = parse_metric(metric)
        if refine is not None and not isinstance(refine, str):
            raise TypeError(f"refine must be 'f32', 'f16', 'sq8' or None, got {type(refine).__name__}")
        self._impl = _core.IVFRaBitQIndex(int(dim), int(nlist), int(bits), metric, refine, int(seed))

    def search(
        self,
        q: Any,
        k: int,
        *,
        nprobe: Optional[int] = None,
        refine_factor: Optional[int] = None,
        filter: FilterLike = None,
        num_threads: int = 0,
        **params: Any,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query: ``(ids [nq, k] int64, distances [nq, k] float32)``.

        ``nprobe``: cells visited (default ``min(nlist, 16)``); ``refine_factor``: the fast scan keeps
        ``refine_factor * k`` candidates for the re-ranking (default 10). ``filter`` and the rest as in
        :meth:`VectorIndex.search`.
        """
        if nprobe is not None:
            params["nprobe"] = nprobe
        if refine_factor is not None:
            params["refine_factor"] = refine_factor
        return super().search(q, k, filter=filter, num_threads=num_threads, **params)

    def train(self, x: Any, *, num_threads: int = 0) -> None:
        """Learn the coarse centroids (and the sq8 ranges). Needs at least ``nlist`` rows; training again
        discards every stored vector."""
        arr = as_float_matrix(x, "training vectors")
        done = _progress.log_phase("IVFRaBitQIndex", "train", len(arr))
        self._impl.train(arr, num_threads)
        done()

    @property
    def is_trained(self) -> bool:
        return bool(self._impl.is_trained)

    @property
    def nlist(self) -> int:
        return int(self._impl.nlist)

    @property
    def bits(self) -> int:
        return int(self._impl.bits)

    @property
    def refine(self) -> Optional[str]:
        return self._impl.refine

    def bytes_per_vector(self) -> int:
        """Code bytes (fast-scan nibbles, RaBitQ record, compact factors) + re-ranking copy + 8 bytes of id."""
        return int(self._impl.code_bytes + self._impl.refine_bytes + 8)

    def list_sizes(self) -> np.ndarray:
        """Number of vectors in each inverted list (int64 ``[nlist]``)."""
        return self._impl.list_sizes()

    def coarse_centroids(self) -> np.ndarray:
        """The ``[nlist, dim]`` cell centres."""
        return self._impl.coarse_centroids()

    def __repr__(self) -> str:
        return (
            f"IVFRaBitQIndex(dim={self.dim}, nlist={self.nlist}, bits={self.bits}, metric={self.metric!r}, "
            f"refine={self.refine!r}, size={len(self)})"
        )
