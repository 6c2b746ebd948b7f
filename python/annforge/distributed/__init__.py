"""annforge on Ray: sharded indexes served by actors, batch k-NN search and MinHash dedup over Ray Data.

Needs Ray (``pip install "annforge[ray]"``) and a running cluster or ``ray.init()``.

- :class:`ShardedIndex`: a collection split over Ray actors (hash or k-means partitioning); searches
  fan out concurrently and merge exactly (:func:`annforge.merge_topk`); add / remove / save / load;
  a failed shard is reported by number and reloads its saved file when Ray restarts it.
- :func:`search_dataset`: k nearest neighbours of every row of a Ray dataset (``map_batches``; each
  worker opens the index once, memory-mapped).
- :func:`dedup`: near-duplicate groups of a corpus, the same as :func:`annforge.dedup` on one machine.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without ray
    raise ImportError(
        'annforge.distributed needs Ray: pip install "annforge[ray]" (or pip install "ray[data]")'
    ) from exc

from .data import band_keys, dedup, groups_from_pairs, search_dataset, verified_pairs
from .sharded import ShardError, ShardRestartedWarning, ShardedIndex, hash_shards

__all__ = [
    "ShardedIndex",
    "ShardError",
    "ShardRestartedWarning",
    "search_dataset",
    "dedup",
    "hash_shards",
    "band_keys",
    "verified_pairs",
    "groups_from_pairs",
]
