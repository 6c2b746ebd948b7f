"""A vector collection split into shards, each held by a Ray actor; searches fan out and merge exactly."""

from __future__ import annotations

import json
import os
import threading
import uuid
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import ray

from .._arrays import as_float_matrix, as_ids
from .._base import VectorIndex, family_for
from ..flat import FlatIndex
from ..ivfpq import kmeans
from ..merge import merge_topk

MANIFEST = "manifest.json"
_FORMAT = "annforge-sharded"
_VERSION = 1
_PARTITIONS = ("hash", "kmeans")
_WRITES = ("add", "remove")
_HASH = "splitmix64"  # the id -> shard mapping of hash partitioning (hash_shards)


class ShardError(RuntimeError):
    """A shard's actor failed, or came back from a restart without the data the driver expects.

    ``shard`` is the shard's number (0-based).
    """

    def __init__(self, shard: int, message: str) -> None:
        super().__init__(message)
        self.shard = shard


class ShardRestartedWarning(UserWarning):
    """A shard's actor was restarted by Ray and reloaded its last saved file; no change was lost."""


class _ShardLost(Exception):
    """Raised inside an actor that was restarted but has nothing to reload (never saved)."""


def shard_file_name(shard: int) -> str:
    """The file of shard ``shard`` inside a saved directory."""
    return f"shard-{shard:05d}.af"


def hash_shards(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each id under hash partitioning: a 64-bit mix of the id (splitmix64) mod ``num_shards``.

    Mixing first spreads consecutive ids (the common case) evenly. Saved hash-partitioned collections
    depend on this mapping (the manifest names it ``"splitmix64"``), so it must never change.

    >>> hash_shards(np.arange(8), 3).tolist()
    [1, 2, 1, 0, 1, 2, 2, 0]
    """
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(num_shards)).astype(np.int64)


class _Shard:
    """The actor that holds one shard (wrapped by ``ray.remote`` at first use).

    ``source`` is the shard's saved file. Ray re-runs this constructor with the same arguments when it
    restarts the actor after a failure, so a shard that was loaded from files reloads them; a shard built
    in memory (``source=None``) comes back empty and says so (:class:`_ShardLost`) until the driver hands
    it its latest saved file.
    """

    def __init__(self, shard: int, source: Optional[str], mmap: bool, template: Optional[bytes]) -> None:
        self.shard = shard
        self.incarnation = uuid.uuid4().hex
        with warnings.catch_warnings():  # Ray's property reads a deprecated attribute internally
            warnings.simplefilter("ignore")
            self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.source: Optional[str] = None
        self.index: Optional[VectorIndex] = None
        self.lost_reason = ""
        self._lock = threading.Lock()
        if source is not None:
            try:
                self._load(source, mmap)
            except Exception as exc:  # a restarted actor must come up to report why it is empty
                if not self.restarted:
                    raise
                self.lost_reason = f"reloading {source} failed: {exc}"
        elif not self.restarted and template is not None:
            self.index = _from_bytes(template)
        else:
            self.lost_reason = "it was built in memory and never saved"

    def _load(self, path: str, mmap: bool) -> None:
        from .._base import load

        index = load(path, mmap=mmap)
        if not isinstance(index, VectorIndex):
            raise OSError(f"{path} holds a {type(index).__name__}, not a vector index")
        self.index, self.source, self.lost_reason = index, path, ""

    def _live(self) -> VectorIndex:
        index = self.index
        if index is None:
            raise _ShardLost(self.lost_reason)
        return index

    def info(self) -> Dict[str, Any]:
        index = self.index
        return {
            "incarnation": self.incarnation,
            "restarted": self.restarted,
            "source": self.source,
            "lost": index is None,
            "lost_reason": self.lost_reason,
            "size": len(index) if index is not None else 0,
            "dim": index.dim if index is not None else None,
            "metric": index.metric if index is not None else None,
            "family": type(index).__name__ if index is not None else None,
            "memory_bytes": index.memory_bytes() if index is not None else 0,
        }

    def search(self, q: np.ndarray, k: int, params: Dict[str, Any]) -> Tuple[str, np.ndarray, np.ndarray]:
        ids, dist = self._live().search(q, k, **params)
        return self.incarnation, ids, dist

    def add(self, x: np.ndarray, ids: np.ndarray, num_threads: int) -> Tuple[str, int]:
        self._live().add(x, ids, num_threads=num_threads)
        return self.incarnation, len(ids)

    def remove(self, ids: np.ndarray) -> Tuple[str, int]:
        return self.incarnation, self._live().remove(ids)

    def ids(self) -> Tuple[str, np.ndarray]:
        return self.incarnation, self._live().ids()

    def save(self, path: str) -> Tuple[str, int]:
        with self._lock:
            index = self._live()
            index.save(path)
            self.source = path
            return self.incarnation, len(index)

    def restore(self, path: str, mmap: bool) -> Tuple[str, int]:
        with self._lock:
            self._load(path, mmap)
            return self.incarnation, len(self._live())


def _from_bytes(data: bytes) -> VectorIndex:
    import pickle

    index = pickle.loads(data)
    if not isinstance(index, VectorIndex):
        raise TypeError("the shard template is not a vector index")
    return index


_REMOTE_SHARD: Any = None


def _remote_shard() -> Any:
    global _REMOTE_SHARD
    if _REMOTE_SHARD is None:
        _REMOTE_SHARD = ray.remote(_Shard)
    return _REMOTE_SHARD


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


class ShardedIndex:
    """A collection split over ``num_shards`` Ray actors, each holding an annforge vector index.

    Build one with :meth:`build` or open a saved one with :meth:`load`; ``ray.init()`` must have run.
    :meth:`search` sends the queries to every shard at once (or, with ``partition="kmeans"``, to the
    ``shards_to_probe`` shards whose centroids are nearest each query) and merges the answers exactly
    with :func:`annforge.merge_topk`, so a sharded :class:`~annforge.FlatIndex` answers exactly like one
    index holding every vector.

    Failures: a shard whose actor dies during a call raises :class:`ShardError` naming the shard. Ray
    restarts the actor (up to ``max_restarts`` times); the restarted actor reloads the shard's saved
    file, so the next call works again (with a :class:`ShardRestartedWarning`). A shard changed since it
    was last saved, or never saved, cannot be brought back: calls raise :class:`ShardError` saying so.

    >>> import ray, numpy as np, annforge as af
    >>> from annforge.distributed import ShardedIndex
    >>> _ = ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    >>> x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    >>> sharded = ShardedIndex.build(x, num_shards=2, make_index=lambda: af.FlatIndex(8))
    >>> ids, dist = sharded.search(x[:2], k=1)
    >>> ids[:, 0].tolist(), len(sharded)
    ([0, 1], 1000)
    >>> sharded.close()
    """

    _num_shards: int
    _partition: str
    _dim: int
    _metric: str
    _family: str
    _router: Optional[FlatIndex]
    _next_id: int
    _mmap: bool
    _num_threads: int
    _lock: "threading.RLock"
    _saved_dir: Optional[str]
    _saved_path: List[Optional[str]]
    _dirty: List[bool]
    _loss_reported: List[bool]
    _actors: List[Any]
    _incarnation: List[str]
    _sizes_at_open: List[int]

    def __init__(self) -> None:  # use build() or load()
        raise TypeError("create a ShardedIndex with ShardedIndex.build(...) or ShardedIndex.load(path)")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def _start(
        cls,
        *,
        num_shards: int,
        partition: str,
        dim: int,
        metric: str,
        family: str,
        router: Optional[FlatIndex],
        next_id: int,
        sources: Sequence[Optional[str]],
        mmap: bool,
        template: Optional[bytes],
        max_restarts: int,
        actor_options: Optional[Dict[str, Any]],
        num_threads: int,
        saved_dir: Optional[str],
    ) -> "ShardedIndex":
        self = cls.__new__(cls)
        self._num_shards = num_shards
        self._partition = partition
        self._dim = dim
        self._metric = metric
        self._family = family
        self._router = router
        self._next_id = next_id
        self._mmap = mmap
        self._num_threads = num_threads
        self._lock = threading.RLock()
        self._saved_dir = saved_dir
        # Per shard: the file that holds its latest saved state and whether it changed since.
        self._saved_path = list(sources)
        self._dirty = [False] * num_shards
        self._loss_reported = [False] * num_shards  # a failure already told the caller the changes are lost
        options = {"max_restarts": int(max_restarts), "max_task_retries": 0, "max_concurrency": 4}
        options.update(actor_options or {})
        remote = _remote_shard().options(**options)
        self._actors = [remote.remote(i, sources[i], mmap, template) for i in range(num_shards)]
        try:
            infos = self._gather("info", [(i, ()) for i in range(num_shards)], raw=True)
            for i, info in enumerate(infos):
                if info["lost"]:
                    raise ShardError(i, f"shard {i} could not be opened: {info['lost_reason']}")
                if info["dim"] != dim or info["metric"] != metric:
                    raise OSError(
                        f"shard {i} holds dim={info['dim']}, metric={info['metric']!r}; "
                        f"the collection is dim={dim}, metric={metric!r}"
                    )
        except BaseException:
            self.close()
            raise
        self._incarnation = [info["incarnation"] for info in infos]
        self._sizes_at_open = [int(info["size"]) for info in infos]
        return self

    @classmethod
    def build(
        cls,
        vectors_or_dataset: Any,
        ids: Any = None,
        *,
        num_shards: int,
        make_index: Callable[[], VectorIndex],
        partition: str = "hash",
        column: str = "embedding",
        id_column: Optional[str] = None,
        train_size: int = 100_000,
        seed: int = 0,
        max_restarts: int = 3,
        actor_options: Optional[Dict[str, Any]] = None,
        num_threads: int = 0,
        chunk_size: int = 65_536,
    ) -> "ShardedIndex":
        """Split vectors over ``num_shards`` actors and index each part with an index from ``make_index()``.

        ``vectors_or_dataset``: an ``[n, dim]`` array-like (``ids`` optional, default ``0..n-1``) or a
        Ray Data dataset whose ``column`` holds the vectors (and ``id_column``, if given, the int64 ids;
        otherwise ids are numbered in the order the rows arrive).

        ``make_index()`` is called once, on the driver: the empty (or already trained) index it returns
        is copied to every shard, so all shards share its parameters. An index that needs training
        (IVF-PQ, ScaNN) and is not yet trained is trained here, once, on up to ``train_size`` vectors
        (the whole array when smaller), so every shard shares one set of centroids and codebooks, as in
        a single index with the same parameters.

        ``partition="hash"`` places each id by a hash of the id (balanced; every search visits every
        shard). ``partition="kmeans"`` runs a coarse k-means with one centroid per shard (on up to
        ``train_size`` vectors) and places each vector in its nearest centroid's shard, so that
        ``search(..., shards_to_probe=p)`` can visit only the ``p`` shards nearest each query.

        ``max_restarts`` is how often Ray may restart a failed shard actor; ``actor_options`` go to
        ``ray.remote(...).options`` (e.g. ``{"num_cpus": 2}``); ``num_threads`` is the thread count of
        each shard's add and search (0: annforge's default).
        """
        num_shards = _check_count("num_shards", num_shards, 1)
        train_size = _check_count("train_size", train_size, 1)
        chunk_size = _check_count("chunk_size", chunk_size, 1)
        if partition not in _PARTITIONS:
            raise ValueError(f"partition must be 'hash' or 'kmeans', got {partition!r}")
        if not callable(make_index):
            raise TypeError("make_index must be a callable returning an empty annforge vector index")
        template = make_index()
        if not isinstance(template, VectorIndex):
            raise TypeError(f"make_index() must return an annforge vector index, got {type(template).__name__}")
        if len(template):
            raise ValueError("make_index() must return an empty index (the shards get the vectors)")

        is_dataset = _is_dataset(vectors_or_dataset)
        sample: Optional[np.ndarray]
        if is_dataset:
            if ids is not None:
                raise ValueError("with a Ray dataset, give the ids as id_column, not ids=")
            needs_sample = partition == "kmeans" or getattr(template, "is_trained", True) is False
            sample = _dataset_sample(vectors_or_dataset, column, train_size, seed) if needs_sample else None
            chunks: Iterator[Tuple[np.ndarray, Optional[np.ndarray]]] = _dataset_chunks(
                vectors_or_dataset, column, id_column, chunk_size
            )
        else:
            x = as_float_matrix(vectors_or_dataset, "vectors")
            if x.ndim != 2 or x.shape[1] != template.dim:
                raise ValueError(f"vectors must be [n, {template.dim}] (the index's dim), got shape {x.shape}")
            all_ids = _check_ids(ids, len(x))
            sample = x if len(x) <= train_size else x[np.random.default_rng(seed).choice(len(x), train_size, replace=False)]
            chunks = ((x[s : s + chunk_size], all_ids[s : s + chunk_size]) for s in range(0, len(x), chunk_size))

        if getattr(template, "is_trained", True) is False:
            assert sample is not None
            if not len(sample):
                raise ValueError("no vectors to train the index on")
            getattr(template, "train")(sample, num_threads=num_threads)
        router = None
        if partition == "kmeans":
            assert sample is not None
            router = _train_router(sample, num_shards, template.metric, seed, num_threads)

        import pickle

        sharded = cls._start(
            num_shards=num_shards, partition=partition, dim=template.dim, metric=template.metric,
            family=type(template).__name__, router=router, next_id=0, sources=[None] * num_shards, mmap=False,
            template=pickle.dumps(template), max_restarts=max_restarts, actor_options=actor_options,
            num_threads=num_threads, saved_dir=None,
        )
        try:
            for chunk_x, chunk_ids in chunks:
                sharded._add(chunk_x, chunk_ids, replace=False)
        except BaseException:
            sharded.close()
            raise
        return sharded

    @classmethod
    def load(
        cls,
        path: Any,
        *,
        mmap: bool = True,
        max_restarts: int = 3,
        actor_options: Optional[Dict[str, Any]] = None,
        num_threads: int = 0,
    ) -> "ShardedIndex":
        """Open a directory written by :meth:`save`: one actor per shard file.

        ``mmap=True`` maps each shard file read-only (the actor's memory holds only what search touches;
        the first change copies it). The directory must be readable from every node that runs a shard
        (a shared filesystem on a multi-node cluster). A restarted actor reloads its file by itself.
        """
        root = os.fspath(path)
        manifest = _read_manifest(root)
        sources = [os.path.join(root, shard["file"]) for shard in manifest["shards"]]
        for i, source in enumerate(sources):
            if not os.path.isfile(source):
                raise OSError(f"shard {i}: {source} is missing")
        router: Optional[FlatIndex] = None
        if manifest["partition"] == "kmeans":
            router_path = os.path.join(root, manifest["router"])
            loaded = family_for("FlatIndex")._load(router_path, False)
            if not isinstance(loaded, FlatIndex):
                raise OSError(f"{router_path} does not hold the shard centroids")
            router = loaded
            if len(router) != manifest["num_shards"] or router.dim != manifest["dim"]:
                raise OSError(f"{router_path} does not hold {manifest['num_shards']} centroids of dim {manifest['dim']}")
        sharded = cls._start(
            num_shards=manifest["num_shards"], partition=manifest["partition"], dim=manifest["dim"],
            metric=manifest["metric"], family=manifest["family"], router=router, next_id=manifest["next_id"],
            sources=sources, mmap=bool(mmap), template=None, max_restarts=max_restarts,
            actor_options=actor_options, num_threads=num_threads, saved_dir=os.path.abspath(root),
        )
        for i, shard in enumerate(manifest["shards"]):
            if sharded._sizes_at_open[i] != shard["size"]:
                sharded.close()
                raise OSError(f"shard {i}: {sources[i]} holds {sharded._sizes_at_open[i]} vectors, the manifest says {shard['size']}")
        return sharded

    # -- introspection -----------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return self._num_shards

    @property
    def partition(self) -> str:
        """``"hash"`` or ``"kmeans"``."""
        return self._partition

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def actors(self) -> List[Any]:
        """The shard actors' handles, shard 0 first."""
        return list(self._actors)

    def shard_sizes(self) -> List[int]:
        """Number of vectors in each shard."""
        return [int(info["size"]) for info in self._gather("info", [(i, ()) for i in range(self._num_shards)], raw=True)]

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def __repr__(self) -> str:
        return (f"ShardedIndex(num_shards={self._num_shards}, partition={self._partition!r}, "
                f"family={self._family}, dim={self._dim}, metric={self._metric!r})")

    def ids(self) -> np.ndarray:
        """Every live id (int64), shard by shard."""
        parts = self._gather("ids", [(i, ()) for i in range(self._num_shards)])
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # -- search ------------------------------------------------------------------------------------
    def search(
        self,
        q: Any,
        k: int,
        *,
        shards_to_probe: Optional[int] = None,
        filter: Any = None,
        num_threads: Optional[int] = None,
        **params: Any,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours over all shards: ``(ids [nq, k] int64, distances [nq, k] float32)``.

        The queries go to the shards concurrently; their answers merge exactly (:func:`annforge.merge_topk`).
        ``shards_to_probe=p`` (``partition="kmeans"`` only) sends each query to the ``p`` shards with the
        nearest centroids. ``filter`` and ``params`` (``ef``, ``nprobe``, ...) go to every shard's search.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = as_float_matrix(q, "queries")
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries must be [nq, {self._dim}] or [{self._dim}], got shape {queries.shape}")
        shard_params = dict(params)
        shard_params["num_threads"] = self._num_threads if num_threads is None else int(num_threads)
        if filter is not None:
            shard_params["filter"] = filter
        nq = len(queries)
        plan = self._probe_plan(queries, shards_to_probe)
        if plan is None:  # every shard sees every query
            q_ref = ray.put(queries)
            answers = self._gather("search", [(i, (q_ref, int(k), shard_params)) for i in range(self._num_shards)])
            return merge_topk(answers, int(k))
        calls = [(s, (queries[rows], int(k), shard_params)) for s, rows in plan if len(rows)]
        answers = self._gather("search", calls)
        padded = []
        for (s, rows), (ids, dist) in zip([p for p in plan if len(p[1])], answers):
            full_ids = np.full((nq, ids.shape[1]), -1, dtype=np.int64)
            full_dist = np.full((nq, ids.shape[1]), np.inf, dtype=np.float32)
            full_ids[rows], full_dist[rows] = ids, dist
            padded.append((full_ids, full_dist))
        if not padded:
            return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), np.inf, dtype=np.float32)
        return merge_topk(padded, int(k))

    def _probe_plan(self, queries: np.ndarray, shards_to_probe: Optional[int]) -> Optional[List[Tuple[int, np.ndarray]]]:
        if shards_to_probe is None:
            return None
        p = _check_count("shards_to_probe", shards_to_probe, 1)
        if self._partition != "kmeans":
            raise ValueError("shards_to_probe needs partition='kmeans' (hash partitioning spreads every neighbourhood over all shards)")
        if p >= self._num_shards:
            return None
        assert self._router is not None
        nearest, _ = self._router.search(queries, p, num_threads=self._num_threads)
        return [(s, np.flatnonzero((nearest == s).any(axis=1))) for s in range(self._num_shards)]

    # -- updates -----------------------------------------------------------------------------------
    def add(self, x: Any, ids: Any = None) -> np.ndarray:
        """Add vectors, each to the shard its id (hash) or its nearest centroid (kmeans) selects.

        An id that exists is replaced; ``ids=None`` continues from the largest id used so far. With
        ``partition="kmeans"`` a replaced vector may move to another shard: its old copy is removed
        there in the same round of calls. Returns the int64 ids.
        """
        return self._add(x, ids, replace=True)

    def _add(self, x: Any, ids: Any, replace: bool) -> np.ndarray:
        # replace=False (build): the ids are new, so no shard holds an old copy to remove.
        vectors = as_float_matrix(x, "vectors")
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            raise ValueError(f"vectors must be [n, {self._dim}], got shape {vectors.shape}")
        explicit = ids is not None and replace
        with self._lock:
            new_ids = _check_ids(ids, len(vectors), first=self._next_id)
            if not len(new_ids):
                return new_ids
            target = self._route(vectors, new_ids)
            calls: List[Tuple[int, Tuple[Any, ...]]] = []
            removals: List[Tuple[int, Tuple[Any, ...]]] = []
            for s in range(self._num_shards):
                mine = target == s
                if mine.any():
                    calls.append((s, ("add", vectors[mine], new_ids[mine], self._num_threads)))
                if explicit and self._partition == "kmeans" and not mine.all():
                    removals.append((s, ("remove", new_ids[~mine])))
            self._gather_methods(calls + removals)
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` from the shards that hold them; returns how many existed.

        With hash partitioning each id goes to its own shard; with kmeans partitioning the shard of an
        id depends on its vector, so every shard is asked (one concurrent call each).
        """
        arr = as_ids(ids)
        if arr is None:
            raise TypeError("ids must be an array-like of integers, not None")
        arr = arr.astype(np.int64, copy=False).ravel()
        if not len(arr):
            return 0
        with self._lock:
            if self._partition == "hash":
                owner = hash_shards(arr, self._num_shards)
                calls = [(s, ("remove", arr[owner == s])) for s in range(self._num_shards) if (owner == s).any()]
            else:
                calls = [(s, ("remove", arr)) for s in range(self._num_shards)]
            return int(sum(self._gather_methods(calls)))

    def _route(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self._partition == "hash":
            return hash_shards(ids, self._num_shards)
        assert self._router is not None
        nearest, _ = self._router.search(vectors, 1, num_threads=self._num_threads)
        return nearest[:, 0].astype(np.int64)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: Any) -> None:
        """Write a directory: ``manifest.json`` plus one annforge file per shard (and ``router.af``, the
        centroids, for kmeans partitioning). Each actor writes its own file (atomically); the manifest is
        written last. The directory must be writable from every node that runs a shard.

        Afterwards a shard actor that fails and is restarted reloads its file.
        """
        root = os.path.abspath(os.fspath(path))
        os.makedirs(root, exist_ok=True)
        with self._lock:
            files = [os.path.join(root, shard_file_name(i)) for i in range(self._num_shards)]
            sizes = self._gather_methods([(i, ("save", files[i])) for i in range(self._num_shards)])
            manifest: Dict[str, Any] = {
                "format": _FORMAT,
                "version": _VERSION,
                "num_shards": self._num_shards,
                "partition": self._partition,
                "family": self._family,
                "dim": self._dim,
                "metric": self._metric,
                "next_id": self._next_id,
                "hash": _HASH,
                "shards": [{"file": shard_file_name(i), "size": int(n)} for i, n in enumerate(sizes)],
            }
            if self._router is not None:
                self._router.save(os.path.join(root, "router.af"))
                manifest["router"] = "router.af"
            tmp = os.path.join(root, f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, os.path.join(root, MANIFEST))
            self._saved_path = list(files)
            self._dirty = [False] * self._num_shards
            self._saved_dir = root

    def close(self) -> None:
        """Stop the shard actors (their memory is freed; saved files stay)."""
        for actor in getattr(self, "_actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []

    def __getstate__(self) -> Dict[str, Any]:
        # Actor handles pickle (Ray Data workers searching a live ShardedIndex); the lock does not.
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- calls to the shards -----------------------------------------------------------------------
    def _gather(self, method: str, calls: Sequence[Tuple[int, Tuple[Any, ...]]], raw: bool = False) -> List[Any]:
        return self._gather_methods([(s, (method,) + tuple(args)) for s, args in calls], raw=raw)

    def _gather_methods(self, calls: Sequence[Tuple[int, Tuple[Any, ...]]], raw: bool = False) -> List[Any]:
        """Run ``actor.method(*args)`` on each listed shard at once; results in call order.

        Every reply carries the actor's incarnation; a new one means Ray restarted the actor since the
        last call, which :meth:`_recover` settles (reload or report) before the reply is used. A shard
        whose write succeeded is marked as changed since its last save.
        """
        if not self._actors:
            raise ValueError("this ShardedIndex is closed")
        refs = [getattr(self._actors[s], call[0]).remote(*call[1:]) for s, call in calls]
        results: List[Any] = [None] * len(calls)
        failure: Optional[BaseException] = None
        for pos, ((s, call), ref) in enumerate(zip(calls, refs)):
            try:
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if not isinstance(getattr(exc, "cause", None), _ShardLost):
                        raise _unwrap(exc, s) from None
                    self._recover(s)
                    reply = ray.get(getattr(self._actors[s], call[0]).remote(*call[1:]))
                if not raw and reply[0] != self._incarnation[s] and self._recover(s):
                    # The restarted actor answered from older state than the driver's latest save.
                    reply = ray.get(getattr(self._actors[s], call[0]).remote(*call[1:]))
            except ray.exceptions.RayActorError as exc:
                failure = failure or ShardError(
                    s,
                    f"shard {s} failed during {call[0]}(): its actor died or is unreachable "
                    f"({type(exc).__name__}{_cause_of(exc)}). {self._recovery_note(s)}",
                )
                continue
            except ray.exceptions.RayTaskError as exc:
                failure = failure or _unwrap(exc, s)
                continue
            except Exception as exc:  # noqa: BLE001 - the first failure is raised after every reply is in
                failure = failure or exc
                continue
            if raw:
                results[pos] = reply
                continue
            self._loss_reported[s] = False
            if call[0] in _WRITES:
                self._dirty[s] = True
            payload = reply[1:]
            results[pos] = payload[0] if len(payload) == 1 else payload
        if failure is not None:
            raise failure
        return results

    def _recovery_note(self, s: int) -> str:
        if self._saved_path[s] is None:
            return "It was never saved, so a restarted actor cannot get its vectors back."
        if self._dirty[s]:
            self._loss_reported[s] = True
            return (f"It changed since it was saved to {self._saved_path[s]}; if Ray restarts it, the changes made "
                    "to it since that save are lost.")
        return f"Ray restarts it and it reloads {self._saved_path[s]}; retry the call."

    def _recover(self, s: int) -> bool:
        """Shard ``s`` answered from a restarted actor: make it hold its latest saved state, or fail loudly.

        Returns True when the actor's state was replaced (its reply must be asked for again).
        """
        with self._lock:
            info = ray.get(self._actors[s].info.remote())
            if info["incarnation"] == self._incarnation[s] and not info["lost"]:
                return False  # another thread settled it
            path = self._saved_path[s]
            if path is None:
                raise ShardError(
                    s, f"shard {s} was restarted after a failure and is empty ({info['lost_reason'] or 'never saved'}); "
                       "its vectors are lost: rebuild the index (save() makes shards recoverable)"
                )
            restored = bool(info["lost"] or info["source"] != path)
            if restored:
                ray.get(self._actors[s].restore.remote(path, self._mmap))
            lost_changes = self._dirty[s] and not self._loss_reported[s]
            self._incarnation[s] = info["incarnation"]
            self._dirty[s] = self._loss_reported[s] = False
            if lost_changes:
                raise ShardError(
                    s, f"shard {s} was restarted after a failure and reloaded {path}; the changes made to it "
                       "since that save are lost"
                )
            warnings.warn(f"shard {s} was restarted after a failure and reloaded {path}", ShardRestartedWarning,
                          stacklevel=5)
            return restored


def _cause_of(exc: BaseException) -> str:
    """The error that made an actor's constructor fail (e.g. a corrupt shard file), if Ray reports one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    return f": {errors[-1]}" if errors and "__init__" in str(exc) else ""


def _unwrap(exc: "ray.exceptions.RayTaskError", shard: int) -> BaseException:
    """The error an actor raised, as its own type (ValueError stays ValueError), naming the shard."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (ValueError, TypeError, OSError, KeyError, IndexError)):
        try:
            return type(cause)(f"shard {shard}: {cause}")
        except Exception:  # an exception class with its own constructor arguments
            return cause
    return ShardError(shard, f"shard {shard} raised {exc}")


def _check_ids(ids: Any, n: int, first: int = 0) -> np.ndarray:
    if ids is None:
        return np.arange(first, first + n, dtype=np.int64)
    arr = as_ids(ids)
    assert arr is not None
    arr = arr.astype(np.int64, copy=False).ravel()
    if len(arr) != n:
        raise ValueError(f"{len(arr)} ids for {n} vectors")
    if len(arr) and arr.min() < 0:
        raise ValueError("ids must be >= 0 (-1 marks missing results)")
    if len(np.unique(arr)) != len(arr):
        raise ValueError("ids contain duplicates")
    return arr


def _train_router(sample: np.ndarray, num_shards: int, metric: str, seed: int, num_threads: int) -> FlatIndex:
    if len(sample) < num_shards:
        raise ValueError(f"kmeans partitioning needs at least num_shards={num_shards} vectors, got {len(sample)}")
    result = kmeans(sample, num_shards, seed=seed, spherical=metric == "cosine", max_points_per_centroid=0,
                    num_threads=num_threads)
    router = FlatIndex(sample.shape[1], metric=metric)
    router.add(result.centroids)
    return router


def _read_manifest(root: str) -> Dict[str, Any]:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise OSError(f"{root} is not a saved ShardedIndex: {MANIFEST} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OSError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise OSError(f"{path} is not an annforge sharded-index manifest")
    if manifest.get("version") != _VERSION:
        raise OSError(f"{path} has manifest version {manifest.get('version')}; this annforge reads version {_VERSION}")
    try:
        n = int(manifest["num_shards"])
        shards = manifest["shards"]
        ok = (n >= 1 and isinstance(shards, list) and len(shards) == n and manifest["partition"] in _PARTITIONS
              and all(isinstance(s, dict) and isinstance(s.get("file"), str) and os.sep not in s["file"]
                      and isinstance(s.get("size"), int) for s in shards)
              and isinstance(manifest["dim"], int) and isinstance(manifest["metric"], str)
              and isinstance(manifest["next_id"], int) and isinstance(manifest["family"], str)
              and (manifest["partition"] != "kmeans" or isinstance(manifest.get("router"), str)))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise OSError(f"{path} is missing fields or has fields of the wrong type")
    if manifest["partition"] == "hash" and manifest.get("hash", _HASH) != _HASH:
        raise OSError(f"{path} routes ids with {manifest['hash']!r}; this annforge knows only {_HASH!r}")
    return manifest


def _is_dataset(obj: Any) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:  # ray without the data extra
        return False
    return isinstance(obj, Dataset)


def _dataset_sample(ds: Any, column: str, size: int, seed: int) -> np.ndarray:
    total = ds.count()
    if total == 0:
        raise ValueError("the dataset is empty")
    part = ds if total <= size else ds.random_sample(min(1.0, 1.2 * size / total), seed=seed)
    batch = part.select_columns([column]).take_batch(size, batch_format="numpy")
    return _stack(batch[column], column)


def _dataset_chunks(ds: Any, column: str, id_column: Optional[str], chunk_size: int) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    columns = [column] + ([id_column] if id_column else [])
    for batch in ds.select_columns(columns).iter_batches(batch_size=chunk_size, batch_format="numpy"):
        yield _stack(batch[column], column), (np.asarray(batch[id_column]) if id_column else None)


def _stack(values: np.ndarray, column: str) -> np.ndarray:
    """A dataset column of vectors (a 2-D tensor column or an object array of 1-D arrays) -> float32 [n, dim]."""
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = np.stack([np.asarray(v, dtype=np.float32) for v in arr]) if len(arr) else arr.astype(np.float32)
        except ValueError as exc:
            raise ValueError(f"column {column!r} does not hold vectors of one length: {exc}") from None
    return as_float_matrix(arr, column)
