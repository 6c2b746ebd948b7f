"""filter= as a boolean mask (indexed by id) and as a Python set, and the metric aliases, in every vector family."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import annforge as af
from annforge._base import METRIC_ALIASES, parse_metric

RNG = np.random.default_rng(3)
X = RNG.standard_normal((300, 8)).astype(np.float32)
X /= np.linalg.norm(X, axis=1, keepdims=True)


def _flat(metric: str = "l2") -> af.VectorIndex:
    return af.FlatIndex(8, metric=metric)


def _hnsw(metric: str = "l2") -> af.VectorIndex:
    return af.HNSWIndex(8, metric=metric, M=8, ef_construction=40)


def _ivfpq(metric: str = "l2") -> af.VectorIndex:
    index = af.IVFPQIndex(8, 4, 4, nbits=4, metric=metric)
    index.train(X)
    return index


def _scann(metric: str = "ip") -> af.VectorIndex:
    index = af.ScaNNIndex(8, 4, metric=metric)
    index.train(X)
    return index


FAMILIES = {"flat": _flat, "hnsw": _hnsw, "ivfpq": _ivfpq, "scann": _scann}


def _exact_params(name: str) -> dict:
    return {"flat": {}, "hnsw": {"ef": 300}, "ivfpq": {"nprobe": 4}, "scann": {"leaves_to_search": 4, "reorder_k": 300}}[name]


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_set_and_array_filters_agree(family: str) -> None:
    index = FAMILIES[family]()
    index.add(X)
    allowed = np.flatnonzero(RNG.random(300) < 0.3)
    mask = np.zeros(300, dtype=bool)
    mask[allowed] = True
    q = X[:5] + 0.01
    params = _exact_params(family)
    by_array = index.search(q, 10, filter=allowed, **params)[0]
    assert np.isin(by_array, allowed).all()
    for spelled in (set(allowed.tolist()), frozenset(allowed.tolist()), mask, mask.tolist()):
        np.testing.assert_array_equal(index.search(q, 10, filter=spelled, **params)[0], by_array)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_is_indexed_by_id_and_must_cover_every_id(family: str) -> None:
    index = FAMILIES[family]()
    index.add(X[:50], ids=np.arange(1000, 1050))
    short = np.ones(50, dtype=bool)  # one flag per row: ambiguous with ids 1000.., so refused
    with pytest.raises(ValueError, match="indexed by id"):
        index.search(X[:1], 3, filter=short)
    mask = np.zeros(1050, dtype=bool)
    mask[[1003, 1007]] = True
    got = index.search(X[3], 5, filter=mask, **_exact_params(family))[0][0]
    assert sorted(got[got >= 0].tolist()) == [1003, 1007]
    with pytest.raises(ValueError, match="1-d"):
        index.search(X[:1], 3, filter=np.ones((2, 1050), dtype=bool))


@pytest.mark.parametrize("bad, exc", [({1.5}, TypeError), ({"a"}, TypeError), ({True}, TypeError),
                                      ({2**70}, ValueError), (["a"], TypeError)])
def test_bad_filter_sets_name_the_problem(bad: Any, exc: type) -> None:
    index = _flat()
    index.add(X[:10])
    with pytest.raises(exc, match="filter"):
        index.search(X[:1], 3, filter=bad)


def test_empty_set_and_all_false_mask_allow_nothing() -> None:
    index = _flat()
    index.add(X[:10])
    for nothing in (set(), np.zeros(10, dtype=bool)):
        ids, dist = index.search(X[:1], 3, filter=nothing)
        assert ids.tolist() == [[-1, -1, -1]] and np.isinf(dist).all()


def test_flat_search_range_takes_the_same_filters() -> None:
    index = _flat()
    index.add(X[:20])
    ids, _ = index.search_range(X[:1], radius=10.0, filter={0, 5})
    assert sorted(ids[0].tolist()) == [0, 5]
    mask = np.zeros(20, dtype=bool)
    mask[7] = True
    assert index.search_range(X[:1], radius=10.0, filter=mask)[0][0].tolist() == [7]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("alias, canonical", [("euclidean", "l2"), ("angular", "cosine"), ("inner_product", "ip"),
                                              ("dot", "ip"), ("Cosine", "cosine"), ("inner-product", "ip")])
def test_metric_aliases_in_every_constructor(family: str, alias: str, canonical: str) -> None:
    index = FAMILIES[family](alias)
    assert index.metric == canonical
    reference = FAMILIES[family](canonical)
    index.add(X)
    reference.add(X)
    params = _exact_params(family)
    np.testing.assert_array_equal(index.search(X[:4], 5, **params)[0], reference.search(X[:4], 5, **params)[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_metrics_list_what_is_accepted(family: str) -> None:
    with pytest.raises(ValueError, match="euclidean"):
        FAMILIES[family]("manhattan")
    with pytest.raises(TypeError, match="metric"):
        FAMILIES[family](2)


def test_alias_table_maps_only_to_core_metrics() -> None:
    assert set(METRIC_ALIASES.values()) == {"l2", "ip", "cosine"}
    assert parse_metric(" L2 ") == "l2"
    assert af.ScaNNIndex(8).metric == "ip"  # documented: the MIPS family keeps its inner-product default
