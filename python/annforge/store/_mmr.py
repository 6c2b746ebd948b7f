"""Maximal marginal relevance: pick results that are close to the query and far from each other."""

from __future__ import annotations

from typing import List

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def maximal_marginal_relevance(
    query: np.ndarray, candidates: np.ndarray, k: int = 4, lambda_mult: float = 0.5
) -> List[int]:
    """Positions (into ``candidates``) of ``k`` picks, greedily maximising
    ``lambda_mult * cos(query, c) - (1 - lambda_mult) * max(cos(c, picked))``.

    ``lambda_mult=1`` ranks by similarity alone, ``0`` by diversity alone (the first pick is always
    the most similar candidate). Cosine similarity is used whatever the index metric, as LangChain does.

    >>> import numpy as np
    >>> c = np.array([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]])
    >>> maximal_marginal_relevance(np.array([1.0, 0.0]), c, k=2, lambda_mult=0.3)
    [0, 2]
    """
    if not 0.0 <= float(lambda_mult) <= 1.0:
        raise ValueError(f"lambda_mult must be in [0, 1], got {lambda_mult}")
    cands = _unit_rows(candidates)
    if k <= 0 or cands.shape[0] == 0 or cands.size == 0:
        return []
    relevance = cands @ _unit_rows(query)[0]
    picked = [int(np.argmax(relevance))]
    # Highest similarity of each candidate to anything picked so far.
    redundancy = cands @ cands[picked[0]]
    while len(picked) < min(k, cands.shape[0]):
        score = lambda_mult * relevance - (1.0 - lambda_mult) * redundancy
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        np.maximum(redundancy, cands @ cands[best], out=redundancy)
    return picked
