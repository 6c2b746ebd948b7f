"""Adapters: one small class per library/family with a build step, search knobs and a default sweep.

An adapter is enabled when its library imports (annforge families when ``hasattr(annforge, name)``).
Every adapter runs inside its own worker process (see ``worker.py``); only the registry of names,
default build parameters and sweeps is used by the parent.
"""

from __future__ import annotations

import importlib
import itertools
from typing import Any, Callable, Dict, List, Optional

import numpy as np


def _grid(**axes: List[Any]) -> List[Dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


class Adapter:
    """Base: ``build(x)``, ``search(q, k, params) -> ids``, optional ``memory_bytes()``."""

    def __init__(self, dim: int, metric: str, threads: int, build_threads: int, **build: Any) -> None:
        self.dim, self.metric, self.threads, self.build_threads = dim, metric, threads, build_threads
        self.build_params = build

    def build(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def prepare(self, params: Dict[str, Any]) -> None:
        """Apply search knobs before timing (peers keep them as index state)."""
        self.params = dict(params)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def memory_bytes(self) -> Optional[int]:
        return None


# ---- annforge families -------------------------------------------------------------------------
class _AnnforgeAdapter(Adapter):
    index: Any

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        ids, _ = self.index.search(q, k, num_threads=self.threads, **self.params)
        return ids

    def memory_bytes(self) -> Optional[int]:
        return int(self.index.memory_bytes())


class AnnforgeFlat(_AnnforgeAdapter):
    def build(self, x: np.ndarray) -> None:
        import annforge

        self.index = annforge.FlatIndex(self.dim, metric=self.metric)
        self.index.add(x, num_threads=self.build_threads)


class AnnforgeHNSW(_AnnforgeAdapter):
    def build(self, x: np.ndarray) -> None:
        import annforge

        self.index = annforge.HNSWIndex(self.dim, metric=self.metric, **self.build_params)
        self.index.add(x, num_threads=self.build_threads)


class AnnforgeIVFPQ(_AnnforgeAdapter):
    def build(self, x: np.ndarray) -> None:
        import annforge

        p = dict(self.build_params)
        nlist = int(p.pop("nlist", 0)) or _default_nlist(len(x))
        m = int(p.pop("m", 0)) or _default_m(self.dim)
        self.index = annforge.IVFPQIndex(self.dim, nlist, m, metric=self.metric, **p)
        self.index.train(x)
        self.index.add(x, num_threads=self.build_threads)


class AnnforgeScaNN(_AnnforgeAdapter):
    def build(self, x: np.ndarray) -> None:
        import annforge

        p = dict(self.build_params)
        leaves = int(p.pop("num_leaves", 0)) or _default_nlist(len(x))
        self.index = annforge.ScaNNIndex(self.dim, leaves, metric=self.metric, **p)
        self.index.train(x)
        self.index.add(x, num_threads=self.build_threads)


def _default_nlist(n: int) -> int:
    return int(max(8, min(4096, round(np.sqrt(n)))))


def _default_m(dim: int) -> int:
    """PQ sub-quantizers: two dimensions each (4-bit fast-scan codes, half a byte per dimension).

    With 4-bit codes this keeps the PQ ranking good enough that re-ranking ``16 k`` candidates reaches
    recall@10 >= 0.95 on clustered and on weakly clustered angular data (coarser codes, e.g. 8
    dimensions per 8-bit sub-quantizer, stalled at 0.85-0.94 there).
    """
    for m in range(dim // 2, 0, -1):
        if dim % m == 0:
            return m
    return 1


def _fractions_of(total: int, fractions: List[float]) -> List[int]:
    return sorted({max(1, min(total, int(round(total * f)))) for f in fractions})


def ivfpq_sweep(n: int, dim: int, quick: bool = False) -> List[Dict[str, Any]]:
    """Default IVF-PQ sweep for ``n`` vectors: ``nprobe`` from 1/32 to 1/2 of the lists, ``refine_factor`` 4-64.

    Chosen from the data size (``nlist = sqrt(n)``); reaches recall@10 >= 0.95 on the built-in dataset
    and on a 64-d weakly clustered angular set (see tests/test_bench.py::test_default_sweeps_reach_095).

    >>> [(p["nprobe"], p["refine_factor"]) for p in ivfpq_sweep(20_000, 128)][-3:]
    [(35, 4), (35, 16), (70, 64)]
    """
    nlist = _default_nlist(n)
    if quick:
        return _grid(nprobe=_fractions_of(nlist, [1 / 8, 1 / 4]), refine_factor=[16])
    points = _grid(nprobe=_fractions_of(nlist, [1 / 32, 1 / 8, 1 / 4]), refine_factor=[4, 16])
    return points + [{"nprobe": max(1, nlist // 2), "refine_factor": 64}]


def scann_sweep(n: int, dim: int, quick: bool = False) -> List[Dict[str, Any]]:
    """Default ScaNN sweep: ``leaves_to_search`` from 1/64 to 2/3 of the leaves, ``reorder_k`` 20 and 100.

    >>> [p["leaves_to_search"] for p in scann_sweep(20_000, 128)][::2]
    [2, 9, 35, 94]
    """
    leaves = _default_nlist(n)
    if quick:
        return _grid(leaves_to_search=_fractions_of(leaves, [1 / 8, 1 / 2]), reorder_k=[100])
    return _grid(leaves_to_search=_fractions_of(leaves, [1 / 64, 1 / 16, 1 / 4, 2 / 3]), reorder_k=[20, 100])


# ---- faiss ---------------------------------------------------------------------------------------
class _FaissAdapter(Adapter):
    index: Any

    def _metric(self) -> int:
        import faiss

        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    def _threads(self, n: int) -> None:
        import faiss

        faiss.omp_set_num_threads(n if n > 0 else _cpu_count())

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(q, k)
        return ids


class FaissFlat(_FaissAdapter):
    def build(self, x: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
        self.index.add(x)
        self._threads(self.threads)

    def memory_bytes(self) -> Optional[int]:
        return int(self.index.ntotal) * self.dim * 4


class FaissHNSW(_FaissAdapter):
    def build(self, x: np.ndarray) -> None:
        import faiss

        self._threads(self.build_threads)
        self.index = faiss.IndexHNSWFlat(self.dim, int(self.build_params.get("M", 16)), self._metric())
        self.index.hnsw.efConstruction = int(self.build_params.get("ef_construction", 100))
        self.index.add(x)
        self._threads(self.threads)

    def prepare(self, params: Dict[str, Any]) -> None:
        super().prepare(params)
        self.index.hnsw.efSearch = int(params["ef"])


class FaissIVFPQ(_FaissAdapter):
    def build(self, x: np.ndarray) -> None:
        import faiss

        self._threads(self.build_threads)
        nlist = int(self.build_params.get("nlist", 0)) or _default_nlist(len(x))
        m = int(self.build_params.get("m", 0)) or _default_m(self.dim)
        self.ivf = faiss.index_factory(self.dim, f"IVF{nlist},PQ{m}x4fs", self._metric())
        self.index = faiss.IndexRefineFlat(self.ivf)
        self.index.train(x)
        self.index.add(x)
        self._threads(self.threads)

    def prepare(self, params: Dict[str, Any]) -> None:
        import faiss

        super().prepare(params)
        faiss.extract_index_ivf(self.ivf).nprobe = int(params["nprobe"])
        self.index.k_factor = float(params["refine_factor"])


# ---- hnswlib / usearch / scann ---------------------------------------------------------------------
class Hnswlib(Adapter):
    def build(self, x: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="l2" if self.metric == "l2" else "ip", dim=self.dim)
        self.index.init_index(max_elements=len(x), M=int(self.build_params.get("M", 16)),
                              ef_construction=int(self.build_params.get("ef_construction", 100)), random_seed=0)
        self.index.add_items(x, np.arange(len(x)), num_threads=self.build_threads or -1)

    def prepare(self, params: Dict[str, Any]) -> None:
        super().prepare(params)
        self.index.set_ef(int(params["ef"]))

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        ids, _ = self.index.knn_query(q, k=k, num_threads=self.threads or -1)
        return ids.astype(np.int64)


class USearch(Adapter):
    def build(self, x: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(ndim=self.dim, metric="l2sq" if self.metric == "l2" else "ip", dtype="f32",
                           connectivity=int(self.build_params.get("M", 16)),
                           expansion_add=int(self.build_params.get("ef_construction", 100)))
        self.index.add(np.arange(len(x)), x, threads=self.build_threads)

    def prepare(self, params: Dict[str, Any]) -> None:
        super().prepare(params)
        self.index.expansion_search = int(params["ef"])  # type: ignore[misc]  # settable, stub says read-only

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        matches = self.index.search(q, k, threads=self.threads)
        keys = np.asarray(matches.keys).reshape(len(q), -1).astype(np.int64)
        counts = getattr(matches, "counts", None)
        counts = np.full(len(q), keys.shape[1]) if counts is None else np.asarray(counts).reshape(-1)
        mask = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        keys[mask] = -1
        return keys

    def memory_bytes(self) -> Optional[int]:
        return int(self.index.memory_usage)


class ScaNNPeer(Adapter):
    def build(self, x: np.ndarray) -> None:
        import scann

        leaves = int(self.build_params.get("num_leaves", 0)) or _default_nlist(len(x))
        dist = "squared_l2" if self.metric == "l2" else "dot_product"
        self.index = (scann.scann_ops_pybind.builder(x, 100, dist)
                      .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10), training_sample_size=len(x))
                      .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(100).build())

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        ids, _ = self.index.search_batched(q, final_num_neighbors=k,
                                           leaves_to_search=int(self.params["leaves_to_search"]),
                                           pre_reorder_num_neighbors=int(self.params["reorder_k"]))
        return ids.astype(np.int64)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _has_module(name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            importlib.import_module(name)
            return True
        except Exception:
            return False
    return check


def _has_family(name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            import annforge

            return hasattr(annforge, name)
        except Exception:
            return False
    return check


EF_SWEEP = [10, 20, 40, 80, 160, 320]

# name -> (adapter class, availability check, default build params, default sweep, quick sweep)
REGISTRY: Dict[str, Dict[str, Any]] = {
    "annforge-flat": dict(cls=AnnforgeFlat, available=_has_family("FlatIndex"), build={}, sweep=[{}], quick=[{}]),
    "annforge-hnsw": dict(cls=AnnforgeHNSW, available=_has_family("HNSWIndex"),
                          build={"M": 16, "ef_construction": 100},
                          sweep=_grid(ef=EF_SWEEP), quick=_grid(ef=[10, 40])),
    # Sweeps given as functions are sized from the dataset (n, dim) by the parent process.
    "annforge-ivfpq": dict(cls=AnnforgeIVFPQ, available=_has_family("IVFPQIndex"),
                           build={"nbits": 4, "refine": "f32"}, sweep=ivfpq_sweep,
                           quick=lambda n, dim: ivfpq_sweep(n, dim, quick=True)),
    "annforge-scann": dict(cls=AnnforgeScaNN, available=_has_family("ScaNNIndex"), build={"reorder": "f32"},
                           sweep=scann_sweep, quick=lambda n, dim: scann_sweep(n, dim, quick=True)),
    "faiss-flat": dict(cls=FaissFlat, available=_has_module("faiss"), build={}, sweep=[{}], quick=[{}]),
    "faiss-hnsw": dict(cls=FaissHNSW, available=_has_module("faiss"), build={"M": 16, "ef_construction": 100},
                       sweep=_grid(ef=EF_SWEEP), quick=_grid(ef=[10, 40])),
    # Not in the default set: faiss' PQ training took 17-27 s on 3k x 128 on the 2-core dev box.
    "faiss-ivfpq": dict(cls=FaissIVFPQ, available=_has_module("faiss"), build={}, default=False,
                        sweep=ivfpq_sweep, quick=lambda n, dim: ivfpq_sweep(n, dim, quick=True)),
    "hnswlib": dict(cls=Hnswlib, available=_has_module("hnswlib"), build={"M": 16, "ef_construction": 100},
                    sweep=_grid(ef=EF_SWEEP), quick=_grid(ef=[10, 40])),
    "usearch": dict(cls=USearch, available=_has_module("usearch.index"), build={"M": 16, "ef_construction": 100},
                    sweep=_grid(ef=EF_SWEEP), quick=_grid(ef=[10, 40])),
    "scann": dict(cls=ScaNNPeer, available=_has_module("scann"), build={},
                  sweep=scann_sweep, quick=lambda n, dim: scann_sweep(n, dim, quick=True)),
}


def sweep_points(algo: str, n: int, dim: int, quick: bool = False,
                 registry: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The default sweep of ``algo`` for ``n`` vectors of ``dim`` dimensions (``quick``: the short one).

    >>> sweep_points("annforge-hnsw", 1000, 8, quick=True)
    [{'ef': 10}, {'ef': 40}]
    """
    spec = (REGISTRY if registry is None else registry)[algo]
    grid = spec["quick"] if quick else spec["sweep"]
    return [dict(p) for p in (grid(n, dim) if callable(grid) else grid)]


def available_algorithms() -> List[str]:
    """Names of every adapter whose library is importable here."""
    return [name for name, spec in REGISTRY.items() if spec["available"]()]


def default_algorithms() -> List[str]:
    """The available adapters a run uses without ``--algos`` (excludes the ones marked slow)."""
    return [name for name in available_algorithms() if REGISTRY[name].get("default", True)]


# ---- Jaccard / MinHash workload (``annforge bench --workload minhash``) ----------------------------
class SetAdapter:
    """Base for set-similarity adapters: ``sign(docs)``, ``insert(sigs)``, ``query(sig) -> keys``.

    ``docs`` are lists of ``bytes`` tokens (the same encoding for every library); keys are the
    document positions. ``params`` carries the sweep point (``threshold``, ``num_perm``, and optionally
    ``bands`` and ``rows``). Without ``bands``/``rows`` every library picks them by datasketch's rule
    (the weighted false-positive / false-negative integral around the threshold), so all libraries
    band the same way; with them, every library uses exactly that banding.
    """

    def __init__(self, threads: int, params: Dict[str, Any], seed: int = 1) -> None:
        self.threads, self.params, self.seed = threads, dict(params), seed
        self.threshold, self.num_perm = float(params["threshold"]), int(params["num_perm"])
        self.bands_rows = (int(params["bands"]), int(params["rows"])) if "bands" in params else None

    def sign(self, docs: List[List[bytes]]) -> Any:
        raise NotImplementedError

    def insert(self, sigs: Any) -> None:
        raise NotImplementedError

    def query(self, sigs: Any, i: int) -> List[int]:
        raise NotImplementedError


class AnnforgeMinHashLSH(SetAdapter):
    """``af.minhash_signatures`` (one call for the corpus) + ``af.MinHashLSH.insert_batch`` / ``query``."""

    def sign(self, docs: List[List[bytes]]) -> Any:
        import annforge

        return annforge.minhash_signatures(docs, num_perm=self.num_perm, seed=self.seed, num_threads=self.threads)

    def insert(self, sigs: Any) -> None:
        import annforge

        self.lsh = annforge.MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, params=self.bands_rows)
        self.lsh.insert_batch(np.arange(len(sigs), dtype=np.int64), sigs, num_threads=self.threads)

    def query(self, sigs: Any, i: int) -> List[int]:
        return self.lsh.query(sigs[i])


class DatasketchLSH(SetAdapter):
    """``datasketch.MinHash.update_batch`` per document + ``datasketch.MinHashLSH`` (insertion session)."""

    def sign(self, docs: List[List[bytes]]) -> Any:
        import datasketch

        out = []
        for toks in docs:
            m = datasketch.MinHash(num_perm=self.num_perm, seed=self.seed)
            m.update_batch(toks)
            out.append(m)
        return out

    def insert(self, sigs: Any) -> None:
        import datasketch

        self.lsh = datasketch.MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, params=self.bands_rows)
        with self.lsh.insertion_session() as session:
            for i, m in enumerate(sigs):
                session.insert(i, m)

    def query(self, sigs: Any, i: int) -> List[int]:
        return self.lsh.query(sigs[i])


MINHASH_SWEEP = _grid(threshold=[0.5, 0.7, 0.9], num_perm=[128])

MINHASH_REGISTRY: Dict[str, Dict[str, Any]] = {
    "annforge-minhash-lsh": dict(cls=AnnforgeMinHashLSH, available=_has_family("MinHashLSH"), build={},
                                 sweep=MINHASH_SWEEP, quick=MINHASH_SWEEP),
    "datasketch-lsh": dict(cls=DatasketchLSH, available=_has_module("datasketch"), build={},
                           sweep=MINHASH_SWEEP, quick=MINHASH_SWEEP),
}
