"""Exact merge of per-shard k-nearest-neighbour answers (the gather step of a scatter-gather search).

Every index family reports distances on one scale ("smaller is closer"), so the answers of shards
that hold disjoint parts of a collection merge by distance alone; this module does that merge.
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import numpy as np

_PAD_KEY = np.iinfo(np.int64).max  # sorts padding after every real id of the same (infinite) distance


def _as_result(pair: Any, position: int) -> Tuple[np.ndarray, np.ndarray]:
    try:
        ids, dist = pair
    except (TypeError, ValueError):
        raise TypeError(f"results[{position}] must be an (ids, distances) pair") from None
    ids_arr = np.asarray(ids)
    dist_arr = np.asarray(dist)
    if ids_arr.size and ids_arr.dtype.kind not in "iu":
        raise TypeError(f"results[{position}] ids must be integers, got dtype {ids_arr.dtype}")
    if dist_arr.size and dist_arr.dtype.kind not in "iuf":
        raise TypeError(f"results[{position}] distances must be numbers, got dtype {dist_arr.dtype}")
    if ids_arr.shape != dist_arr.shape:
        raise ValueError(
            f"results[{position}]: ids {ids_arr.shape} and distances {dist_arr.shape} differ in shape"
        )
    if ids_arr.ndim not in (1, 2):
        raise ValueError(f"results[{position}] must be [k] or [nq, k] arrays, got {ids_arr.ndim} dimensions")
    return ids_arr.astype(np.int64, copy=False), dist_arr.astype(np.float32, copy=False)


def merge_topk(results: Sequence[Tuple[Any, Any]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Merge per-shard ``(ids, distances)`` answers into the global ``k`` nearest, exactly.

    ``results`` holds one ``(ids, distances)`` pair per shard, each ``[nq, k_i]`` (or ``[k_i]`` for one
    query) as ``search`` returns them; shards may return different ``k_i``. Entries with a negative id
    (the ``-1`` padding of short rows) are ignored. An id that several shards return counts once, at
    its smallest distance. The merged rows are ordered by distance, ties by the smaller id (the order
    every annforge index uses), so the merge is deterministic whatever order the shards come in; rows
    with fewer than ``k`` hits are padded with id ``-1`` and distance ``+inf``.

    Returns ``(ids int64 [nq, k], distances float32 [nq, k])`` (``[k]`` arrays for ``[k_i]`` input).

    >>> import annforge as af, numpy as np
    >>> shard_a = (np.array([[4, 9]]), np.array([[0.5, 2.0]], dtype=np.float32))
    >>> shard_b = (np.array([[7, -1]]), np.array([[0.5, np.inf]], dtype=np.float32))
    >>> ids, dist = af.merge_topk([shard_a, shard_b], k=3)
    >>> ids.tolist(), dist.tolist()
    ([[4, 7, 9]], [[0.5, 0.5, 2.0]])
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if isinstance(results, tuple) and len(results) == 2 and isinstance(results[0], np.ndarray):
        raise TypeError("results must be a sequence of (ids, distances) pairs, one per shard, not one pair")
    pairs = [_as_result(pair, i) for i, pair in enumerate(results)]
    if not pairs:
        raise ValueError("results is empty: merge_topk needs at least one shard's answer")
    one_query = pairs[0][0].ndim == 1
    if any((p[0].ndim == 1) != one_query for p in pairs):
        raise ValueError("results mix [k] and [nq, k] arrays")
    if one_query:
        pairs = [(ids[None, :], dist[None, :]) for ids, dist in pairs]
    nq = pairs[0][0].shape[0]
    for i, (ids, _) in enumerate(pairs):
        if ids.shape[0] != nq:
            raise ValueError(f"results[{i}] has {ids.shape[0]} queries, results[0] has {nq}")

    ids = np.concatenate([p[0] for p in pairs], axis=1)
    dist = np.concatenate([p[1] for p in pairs], axis=1)
    if np.isnan(dist).any():
        raise ValueError("results contain NaN distances")
    padding = ids < 0
    if padding.any():
        ids = np.where(padding, _PAD_KEY, ids)
        dist = np.where(padding, np.float32(np.inf), dist)

    # Duplicate ids (the same vector reported by two shards, e.g. during a move between shards) keep
    # their best distance: sort each row by (id, distance) and blank every repeat of an id.
    if len(pairs) > 1:
        order = np.lexsort((dist, ids), axis=-1)
        ids = np.take_along_axis(ids, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
        repeat = np.zeros(ids.shape, dtype=bool)
        repeat[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] != _PAD_KEY)
        if repeat.any():
            ids = np.where(repeat, _PAD_KEY, ids)
            dist = np.where(repeat, np.float32(np.inf), dist)

    order = np.lexsort((ids, dist), axis=-1)[:, :k]
    out_ids = np.take_along_axis(ids, order, axis=1)
    out_dist = np.take_along_axis(dist, order, axis=1)
    if out_ids.shape[1] < k:  # fewer candidates than k in total
        width = k - out_ids.shape[1]
        out_ids = np.concatenate([out_ids, np.full((nq, width), _PAD_KEY, dtype=np.int64)], axis=1)
        out_dist = np.concatenate([out_dist, np.full((nq, width), np.inf, dtype=np.float32)], axis=1)
    out_ids = np.where(out_ids == _PAD_KEY, np.int64(-1), out_ids)
    out_dist = np.ascontiguousarray(out_dist, dtype=np.float32)
    if one_query:
        return out_ids[0], out_dist[0]
    return np.ascontiguousarray(out_ids), out_dist
