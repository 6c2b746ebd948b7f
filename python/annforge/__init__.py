"""annforge: approximate-nearest-neighbour index engine with hand-written SIMD kernels.

>>> import annforge as af, numpy as np
>>> x = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32)
>>> index = af.FlatIndex(8, metric="cosine")
>>> _ = index.add(x)
>>> ids, dist = index.search(x[:2], k=3)
>>> ids.shape, dist.dtype
((2, 3), dtype('float32'))
"""

from __future__ import annotations

from typing import Any, Dict, List, Union

from . import _core
from ._base import VectorIndex, load
from .flat import FlatIndex
from .io_formats import read_bvecs, read_fvecs, read_ivecs, write_bvecs, write_fvecs, write_ivecs
from .merge import merge_topk
from .lsh import MinHash, MinHashLSH, MinHashLSHForest, dedup, minhash_signatures
from .ivfpq import IVFPQIndex, kmeans
from .ivf_rabitq import IVFRaBitQIndex
from .hnsw import HNSWIndex
from .scann import ScaNNIndex
from .gpu import gpu_available, knn

__version__: str = getattr(_core, "__version__", "0.0.0")

#: What :func:`load` returns: any of the index families (narrow it with ``isinstance``).
AnyIndex = Union[FlatIndex, HNSWIndex, IVFPQIndex, IVFRaBitQIndex, ScaNNIndex, MinHashLSH, MinHashLSHForest]

__all__ = [
    "AnyIndex",
    "FlatIndex",
    "MinHash",
    "MinHashLSH",
    "MinHashLSHForest",
    "dedup",
    "merge_topk",
    "minhash_signatures",
    "IVFPQIndex",
    "IVFRaBitQIndex",
    "kmeans",
    "HNSWIndex",
    "ScaNNIndex",
    "VectorIndex",
    "build_info",
    "gpu_available",
    "knn",
    "embed",
    "store",
    "load",
    "set_simd_level",
    "simd_level",
    "available_simd_levels",
    "read_fvecs", "read_ivecs", "read_bvecs", "write_fvecs", "write_ivecs", "write_bvecs",
]


def __getattr__(name: str) -> Any:
    # `af.embed` / `af.store` / `af.distributed` load on first use: optional layers that must not slow
    # `import annforge`.
    if name in ("embed", "store", "distributed"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def simd_level() -> str:
    """The SIMD level the kernels run at: ``"scalar"``, ``"neon"``, ``"avx2"`` or ``"avx512"``.

    The best level the CPU supports is chosen at import; ``ANNFORGE_SIMD=scalar|avx2|avx512`` lowers it.
    """
    return str(_core.simd_level())


def available_simd_levels() -> List[str]:
    """Every SIMD level this CPU and build can run, lowest first."""
    return list(_core.available_simd_levels())


def set_simd_level(level: str) -> None:
    """Switch the kernels at run time (tests, benchmarks); ValueError when the level is unavailable."""
    _core.set_simd_level(level)


def build_info() -> Dict[str, Any]:
    """How this copy of annforge was built and what it runs with.

    Keys: ``version``, ``compiler``, ``build_type``, ``native_build`` (``-march=native``; never true
    for a published wheel), ``simd_compiled`` (kernel levels in the binary), ``simd_available`` (those
    this CPU runs), ``simd_detected`` (the best of them), ``simd_selected`` (the active one, lowered by
    ``ANNFORGE_SIMD``), ``pq4_scan_compiled`` / ``pq4_scan_level`` (IVF-PQ fast-scan), ``threads``,
    ``openmp`` (annforge uses its own thread pool: ``False``), ``cuda`` (the optional CUDA module is
    built) and ``cuda_architectures`` (what it was compiled for, e.g. ``["80-real", "90-real",
    "90-virtual"]``; ``[]`` without it),
    ``format_version``, ``platform`` and ``python``.

    >>> info = build_info()
    >>> info["version"] == __version__ and "scalar" in info["simd_compiled"]
    True
    """
    import os
    import platform
    import sys

    from . import gpu as _gpu

    return {
        "version": __version__,
        "compiler": str(getattr(_core, "compiler", "unknown")),
        "build_type": str(getattr(_core, "build_type", "unknown")),
        "native_build": bool(getattr(_core, "native_build", False)),
        "simd_compiled": list(_core.compiled_simd_levels()),
        "simd_available": available_simd_levels(),
        "simd_detected": str(_core.detected_simd_level()),
        "simd_selected": simd_level(),
        "simd_env": os.environ.get("ANNFORGE_SIMD"),
        "pq4_scan_compiled": list(_core.compiled_pq4_scan_levels()),
        "pq4_scan_level": str(_core._pq4_scan_level()),
        "threads": os.cpu_count() or 1,
        "openmp": False,
        "cuda": _gpu.cuda_built(),
        "cuda_architectures": _gpu.cuda_architectures(),
        "format_version": int(_core.FORMAT_VERSION),
        "platform": f"{sys.platform}-{platform.machine()}",
        "python": platform.python_version(),
    }
