"""Batch jobs over Ray Data: k-NN search of a dataset's vectors, and MinHash near-duplicate detection."""

from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import ray

from .. import _core
from .._base import VectorIndex, load
from ..lsh import MinHashLSH, minhash_signatures
from ..merge import merge_topk
from .sharded import ShardedIndex, _is_dataset, _read_manifest, _stack, MANIFEST


# -- k-NN search over a dataset ------------------------------------------------------------------------
class _LocalShards:
    """Every shard file of a saved :class:`ShardedIndex` opened in one process; searches merge exactly."""

    def __init__(self, root: str, mmap: bool) -> None:
        manifest = _read_manifest(root)
        self.shards = [load(os.path.join(root, s["file"]), mmap=mmap) for s in manifest["shards"]]
        self.router = load(os.path.join(root, manifest["router"])) if manifest["partition"] == "kmeans" else None

    def search(self, q: np.ndarray, k: int, shards_to_probe: Optional[int] = None, **params: Any) -> Any:
        if shards_to_probe is None or self.router is None or shards_to_probe >= len(self.shards):
            return merge_topk([s.search(q, k, **params) for s in self.shards], k)
        nearest, _ = self.router.search(q, int(shards_to_probe))
        answers = []
        for i, shard in enumerate(self.shards):
            rows = np.flatnonzero((nearest == i).any(axis=1))
            if len(rows):
                ids = np.full((len(q), k), -1, dtype=np.int64)
                dist = np.full((len(q), k), np.inf, dtype=np.float32)
                ids[rows], dist[rows] = shard.search(q[rows], k, **params)
                answers.append((ids, dist))
        return merge_topk(answers, k)


class _BatchSearcher:
    """One Ray Data worker: opens the index once, then searches whole batches (the search drops the GIL)."""

    def __init__(self, source: Dict[str, Any], k: int, column: str, params: Dict[str, Any],
                 ids_column: str, distances_column: str) -> None:
        kind = source["kind"]
        if kind == "file":
            self.index: Any = load(source["path"], mmap=source["mmap"])
        elif kind == "dir":
            self.index = _LocalShards(source["path"], source["mmap"])
        elif kind == "bytes":
            self.index = pickle.loads(ray.get(source["ref"][0]))
        else:  # a ShardedIndex: every batch fans out to its actors
            self.index = source["sharded"]
        self.k, self.column, self.params = k, column, params
        self.ids_column, self.distances_column = ids_column, distances_column

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        queries = _stack(batch[self.column], self.column)
        ids, dist = self.index.search(queries, self.k, **self.params)
        out = dict(batch)
        out[self.ids_column] = ids
        out[self.distances_column] = dist
        return out


def search_dataset(
    ds: Any,
    index_or_path: Any,
    k: int,
    *,
    column: str = "embedding",
    ids_column: str = "neighbor_ids",
    distances_column: str = "neighbor_distances",
    batch_size: int = 1024,
    concurrency: Optional[int] = None,
    num_cpus: float = 1,
    mmap: bool = True,
    **params: Any,
) -> Any:
    """k nearest neighbours of every row of a Ray dataset: the dataset with two columns added.

    ``ds[column]`` holds the query vectors. ``index_or_path`` is the path of an annforge index file, the
    directory of a saved :class:`ShardedIndex` (each worker opens every shard file and merges), an
    in-memory index (sent once through Ray's object store) or a live :class:`ShardedIndex` (each batch
    fans out to its actors). Files are opened once per worker, memory-mapped with ``mmap=True``, so
    workers on one machine share the page cache. Batches of ``batch_size`` rows are searched whole;
    ``concurrency`` workers (default: the cluster's CPU count) each take ``num_cpus``. ``params`` go to
    ``search`` (``ef``, ``nprobe``, ``num_threads``, ``shards_to_probe``, ...).

    Adds ``ids_column`` (int64 ``[k]`` per row) and ``distances_column`` (float32 ``[k]``). Lazy, like any
    Ray Data transformation: nothing runs until the result is consumed.
    """
    if not _is_dataset(ds):
        raise TypeError(f"ds must be a ray.data.Dataset, got {type(ds).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    source: Dict[str, Any]
    if isinstance(index_or_path, ShardedIndex):
        source = {"kind": "sharded", "sharded": index_or_path}
    elif isinstance(index_or_path, VectorIndex):
        source = {"kind": "bytes", "ref": [ray.put(pickle.dumps(index_or_path))]}
    elif isinstance(index_or_path, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(index_or_path))
        if os.path.isdir(path):
            _read_manifest(path)  # a clear error here rather than in every worker
            source = {"kind": "dir", "path": path, "mmap": bool(mmap)}
        elif os.path.isfile(path):
            _core.file_kind(path)  # OSError for a file that is not an annforge index
            source = {"kind": "file", "path": path, "mmap": bool(mmap)}
        else:
            raise OSError(f"{path} does not exist (expected an annforge index file or a directory with {MANIFEST})")
    else:
        raise TypeError(f"index_or_path must be a path, a VectorIndex or a ShardedIndex, got {type(index_or_path).__name__}")
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9)))
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        _BatchSearcher,
        fn_constructor_args=(source, int(k), column, params, ids_column, distances_column),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=int(concurrency)),
        num_cpus=num_cpus,
    )


# -- MinHash deduplication -----------------------------------------------------------------------------
def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit bucket key per (document, band): ``int64 [n, bands]``.

    Two documents share a bucket of a band when the ``rows`` signature values of that band are equal
    (up to a 2^-64 chance of a key collision, as with the in-process LSH's own 64-bit keys). The band's
    number is mixed in, so equal values in different bands make different keys.
    """
    n = len(sigs)
    values = np.ascontiguousarray(sigs[:, : bands * rows], dtype=np.uint64).reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        key = np.broadcast_to((np.arange(bands, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15), (n, bands)).copy()
        for r in range(rows):
            key = (key ^ values[:, :, r]) * np.uint64(0xBF58476D1CE4E5B9)
            key ^= key >> np.uint64(31)
        key = (key ^ (key >> np.uint64(29))) * np.uint64(0x94D049BB133111EB)
        key ^= key >> np.uint64(32)
    return key.view(np.int64)


def _signature_band_rows(batch: Any, column: str, id_column: str, num_perm: int, seed: int,
                         shingle: Optional[str], bands: int, rows: int, num_threads: int) -> Dict[str, np.ndarray]:
    docs = batch.column(column).to_pylist()
    ids = np.asarray(batch.column(id_column).to_numpy(zero_copy_only=False), dtype=np.int64)
    sigs = minhash_signatures(docs, num_perm=num_perm, seed=seed, shingle=shingle, num_threads=num_threads)
    keys = band_keys(sigs, bands, rows)  # [n, bands]
    return {
        "key": keys.reshape(-1),
        "id": np.repeat(ids, bands),
        "sig": np.repeat(sigs, bands, axis=0),
    }


def verified_pairs(ids: np.ndarray, sigs: np.ndarray, threshold: float) -> Dict[str, np.ndarray]:
    """Pairs of one bucket whose estimated Jaccard passes ``threshold``: ``{"a": ..., "b": ...}``, a < b.

    The test is the one ``annforge.dedup`` applies: the fraction of equal signature values, rounded to
    float32, must be >= ``threshold`` (every pair passes when ``threshold <= 0``).
    """
    order = np.argsort(ids, kind="stable")
    ids, sigs = ids[order], sigs[order]
    m, num_perm = sigs.shape
    first: List[np.ndarray] = []
    second: List[np.ndarray] = []
    for i in range(m - 1):
        equal = (sigs[i + 1 :] == sigs[i]).sum(axis=1)
        score = (equal / num_perm).astype(np.float32).astype(np.float64)
        keep = np.ones(len(score), dtype=bool) if threshold <= 0 else score >= threshold
        keep &= ids[i + 1 :] != ids[i]
        if keep.any():
            first.append(np.full(int(keep.sum()), ids[i], dtype=np.int64))
            second.append(ids[i + 1 :][keep])
    if not first:
        return {"a": np.empty(0, dtype=np.int64), "b": np.empty(0, dtype=np.int64)}
    return {"a": np.concatenate(first), "b": np.concatenate(second)}


def _bucket_pairs(group: Dict[str, np.ndarray], threshold: float) -> Dict[str, np.ndarray]:
    ids = np.asarray(group["id"], dtype=np.int64)
    if len(ids) < 2:
        return {"a": np.empty(0, dtype=np.int64), "b": np.empty(0, dtype=np.int64)}
    sigs = np.asarray(group["sig"])
    if sigs.dtype == object:
        sigs = np.stack(list(sigs))
    return verified_pairs(ids, sigs.astype(np.uint64, copy=False), threshold)


def groups_from_pairs(first: np.ndarray, second: np.ndarray) -> List[List[int]]:
    """Union-find over id pairs: groups of ids (ascending), ordered by their smallest id; sizes >= 2."""
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    if not len(first):
        return []
    members = np.unique(np.concatenate([first, second]))
    labels = _core.connected_groups(len(members), np.searchsorted(members, first), np.searchsorted(members, second))
    groups: Dict[int, List[int]] = {}
    for member, label in zip(members.tolist(), labels.tolist()):  # members ascend, so groups do too
        groups.setdefault(label, []).append(member)
    return [g for g in groups.values() if len(g) > 1]


def dedup(
    docs_or_dataset: Any,
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    seed: int = 1,
    shingle: Optional[str] = None,
    column: str = "doc",
    id_column: str = "id",
    batch_size: int = 1024,
    num_partitions: Optional[int] = None,
    num_threads: int = 1,
    verify: bool = True,
) -> List[List[int]]:
    """Near-duplicate groups over Ray Data: the groups ``annforge.dedup`` finds, computed by many workers.

    Signatures and band keys are computed with ``map_batches``; rows are grouped by band key (a Ray Data
    shuffle), each bucket's pairs are verified there by estimated Jaccard, and the surviving pairs are
    joined into groups by union-find on the driver. Band count and width, and the cut (at least
    ``min_matches`` equal values; with ``verify=False`` an estimate >= ``threshold``) come from
    :class:`annforge.MinHashLSH` with the same ``threshold``, ``num_perm`` and ``verify``, so for a list
    of documents the result equals ``annforge.dedup(docs, threshold, ..., verify=verify)`` (document
    positions, groups ordered by their first member).

    ``docs_or_dataset``: a sequence of documents (token lists or raw strings with ``shingle``) or a Ray
    dataset with the documents in ``column`` and unique int64 ids in ``id_column``; groups then hold ids.
    Each worker hashes with ``num_threads`` threads. The shuffle has ``num_partitions`` parts (default:
    twice the cluster's CPU count) and carries each signature once per band
    (``8 * num_perm * bands`` bytes per document).

    >>> import ray, annforge as af
    >>> from annforge.distributed import dedup
    >>> _ = ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    >>> docs = [["a", "b", "c"], ["x"], ["a", "b", "c"]]
    >>> dedup(docs, threshold=0.8) == af.dedup(docs, threshold=0.8)
    True
    """
    if _is_dataset(docs_or_dataset):
        ds = docs_or_dataset
        missing = {column, id_column} - set(ds.schema().names)
        if missing:
            raise ValueError(f"the dataset has no column(s) {sorted(missing)}; its columns are {ds.schema().names}")
    else:
        if isinstance(docs_or_dataset, (str, bytes)) or not isinstance(docs_or_dataset, Sequence):
            raise TypeError("docs must be a sequence of documents or a ray.data.Dataset")
        from ray.data import from_items

        column, id_column = "doc", "id"
        ds = from_items([{"id": i, "doc": d} for i, d in enumerate(docs_or_dataset)])
        if not len(docs_or_dataset):
            return []
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, verify=verify)  # validates, picks (bands, rows)
    bands, rows = lsh.bands, lsh.rows
    cut = float(threshold) if lsh.min_matches is None else (lsh.min_matches - 0.5) / lsh.num_perm
    band_rows = ds.select_columns([column, id_column]).map_batches(
        _signature_band_rows,
        fn_kwargs=dict(column=column, id_column=id_column, num_perm=int(num_perm), seed=int(seed), shingle=shingle,
                       bands=bands, rows=rows, num_threads=int(num_threads)),
        batch_size=batch_size,
        batch_format="pyarrow",
    )
    if num_partitions is None:  # Ray's default (200) is far too many tasks for a small cluster
        num_partitions = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pairs = band_rows.groupby("key", num_partitions=int(num_partitions)).map_groups(
        _bucket_pairs, fn_kwargs={"threshold": cut}, batch_format="numpy"
    )
    first: List[np.ndarray] = []
    second: List[np.ndarray] = []
    for batch in pairs.iter_batches(batch_format="numpy", batch_size=None):
        if len(batch.get("a", ())):
            first.append(np.asarray(batch["a"], dtype=np.int64))
            second.append(np.asarray(batch["b"], dtype=np.int64))
    if not first:
        return []
    return groups_from_pairs(np.concatenate(first), np.concatenate(second))
