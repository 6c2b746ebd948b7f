"""The inverted-list store and probe scan that IVF-PQ and ScaNN share (cpp/src/invlists/): the pre-filtered
fast scan against every distance computed in NumPy, and updates, reconstruction, persistence and memory as
both families see them."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import annforge as af
from annforge import _core
from conftest import clustered

DIM = 16

# -- the list scan against NumPy ------------------------------------------------------------------


def swap_remove(lists: list, ids_of: list, terms: list, gone) -> None:
    """What the store does on remove: the list's last entry moves into the hole."""
    for g in gone:
        for l, ids in enumerate(ids_of):
            hit = np.flatnonzero(ids == g)
            if hit.size:
                i, last = int(hit[0]), len(ids) - 1
                for arr in (lists, ids_of) + ((terms,) if terms is not None else ()):
                    arr[l][i] = arr[l][last]
                    arr[l] = arr[l][:last]
                break


def reference_best(codes, ids_of, terms, table, bias, scale, offsets, k):
    """Every entry's distance as the scan defines it (float32, same operation order), the k best by
    (distance, location)."""
    inv_scale = np.float32(1) / np.float32(scale)
    dists, locs = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
    for l, c in enumerate(codes):
        if len(c) == 0:
            continue
        m = c.shape[1]
        sums = table[np.arange(m)[None, :], c.astype(np.int64)].astype(np.int64).sum(1).astype(np.float32)
        off = np.float32(offsets[l]) + np.float32(bias)
        d = (off + terms[l]) + sums * inv_scale if terms is not None else off + sums * inv_scale
        dists.append(d.astype(np.float32))
        locs.append((np.int64(l) << 32) | np.arange(len(c), dtype=np.int64))
    d, loc = np.concatenate(dists), np.concatenate(locs)
    order = np.lexsort((loc, d))[:k]
    return loc[order], d[order]


@pytest.mark.sanitize
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 140), min_size=1, max_size=4), m=st.integers(1, 9),
       k=st.integers(1, 40), with_terms=st.booleans(), spread=st.sampled_from([0.0, 0.5, 20.0]),
       removals=st.integers(0, 30), seed=st.integers(0, 2**31 - 1))
def test_probe_scan_keeps_exactly_the_k_best(sizes, m, k, with_terms, spread, removals, seed) -> None:
    """The 16-bit bound pre-filter (with per-block norm-term floors) and the first-list histogram bound
    may only skip entries that cannot enter: the candidates equal the k best of every distance."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 16, (n, m), dtype=np.uint8) for n in sizes]
    if rng.random() < 0.3 and sum(sizes) > 0:  # few distinct codes: many tied sums
        codes = [c & 1 for c in codes]
    lut = rng.normal(size=(m, 16)).astype(np.float32)
    offsets = (rng.normal(size=len(sizes)) * spread).astype(np.float32)
    terms = [(rng.normal(size=n) * max(spread, 0.1)).astype(np.float32) for n in sizes] if with_terms else None
    total = sum(sizes)
    gone = rng.choice(total, size=min(removals, total), replace=False).tolist() if total else []
    loc, dist, table, bias, scale = _core._testing._probe_scan_lists(
        codes, lut, offsets, k, norm_terms=terms, remove=gone)
    starts = np.cumsum([0] + sizes)
    ids_of = [np.arange(starts[l], starts[l + 1]) for l in range(len(sizes))]
    codes, terms = list(codes), (list(terms) if terms is not None else None)
    swap_remove(codes, ids_of, terms, gone)
    want_loc, want_dist = reference_best(codes, ids_of, terms, table, bias, scale, offsets, k)
    np.testing.assert_array_equal(loc, want_loc)
    np.testing.assert_array_equal(dist, want_dist)


@pytest.mark.sanitize
@settings(max_examples=60, deadline=None)
@given(n0=st.integers(1, 120), n1=st.integers(1, 120), m=st.integers(1, 9), k=st.integers(1, 20),
       with_terms=st.booleans(), below=st.floats(0.05, 4.0), removals=st.integers(0, 40),
       seed=st.integers(0, 2**31 - 1))
def test_an_entry_just_below_the_threshold_still_enters(n0, n1, m, k, with_terms, below, removals, seed) -> None:
    """The second list's offset puts its best entry `below` table units under the threshold the first
    list left: the bound (its slack for float rounding, the block's norm-term floor after removals moved
    entries between blocks) must let it through."""
    rng = np.random.default_rng(seed)
    codes = [rng.integers(0, 16, (n, m), dtype=np.uint8) for n in (n0, n1)]
    lut = rng.normal(size=(m, 16)).astype(np.float32)
    terms = [rng.normal(size=n).astype(np.float32) for n in (n0, n1)] if with_terms else None
    offsets = np.zeros(2, np.float32)
    gone = (n0 + rng.choice(n1, size=min(removals, n1 - 1), replace=False)).tolist()
    _, _, table, bias, scale = _core._testing._probe_scan_lists(codes, lut, offsets, k, norm_terms=terms)
    ids_of = [np.arange(n0), np.arange(n0, n0 + n1)]
    raw_codes, raw_terms = list(codes), (list(terms) if terms else None)
    codes, terms = [c.copy() for c in codes], ([t.copy() for t in terms] if terms else None)
    swap_remove(codes, ids_of, terms, gone)
    _, d0 = reference_best(codes[:1], ids_of[:1], terms[:1] if terms else None, table, bias, scale, offsets, k)
    _, d1 = reference_best(codes[1:], ids_of[1:], terms[1:] if terms else None, table, bias, scale, offsets, 1)
    threshold = d0[-1] if len(d0) >= k else np.float32(np.inf)
    if np.isfinite(threshold):
        offsets[1] = threshold - d1[0] - np.float32(below / scale)
    loc, dist, *_ = _core._testing._probe_scan_lists(raw_codes, lut, offsets, k, norm_terms=raw_terms, remove=gone)
    want_loc, want_dist = reference_best(codes, ids_of, terms, table, bias, scale, offsets, k)
    np.testing.assert_array_equal(loc, want_loc)
    np.testing.assert_array_equal(dist, want_dist)


# -- both families through the store --------------------------------------------------------------

FAMILIES = ["ivfpq-4", "ivfpq-8", "scann"]


def make(family: str, metric: str = "l2", stored: bool = True):
    """An untrained index of the family; stored=True keeps an f32 copy (exact reconstruction)."""
    if family == "scann":
        return af.ScaNNIndex(DIM, 8, metric=metric, reorder="f32" if stored else None)
    nbits = int(family.split("-")[1])
    return af.IVFPQIndex(DIM, 8, 4, nbits=nbits, metric=metric, refine="f32" if stored else None)


def list_total(index) -> int:
    sizes = index.leaf_sizes() if isinstance(index, af.ScaNNIndex) else index.list_sizes()
    return int(np.sum(sizes))


def probe_all(index) -> dict:
    """Every list, and room for every plausible candidate before the exact re-ranking."""
    if isinstance(index, af.ScaNNIndex):
        return {"leaves_to_search": 8, "reorder_k": 400}
    return {"nprobe": 8, "refine_factor": 100}


@pytest.fixture(scope="module")
def trained_data() -> np.ndarray:
    return clustered(1200, DIM, seed=21, clusters=16)


@pytest.mark.sanitize
@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=8, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "remove", "upsert"]), st.integers(1, 60),
                              st.integers(0, 2**31 - 1)), min_size=1, max_size=8))
def test_updates_keep_ids_lists_and_vectors_consistent(trained_data, family: str, ops) -> None:
    """Adds, removes and upserts against a dict model: ids, sizes, membership, reconstruction and what
    searches may return stay in step, before and after a save / load (and mmap)."""
    index = make(family)
    index.train(trained_data)
    model: dict = {}
    for op, count, seed in ops:
        rng = np.random.default_rng(seed)
        if op == "add":
            rows = rng.normal(size=(count, DIM)).astype(np.float32)
            for i, v in zip(index.add(rows).tolist(), rows):
                model[i] = v
        elif model:
            chosen = rng.choice(sorted(model), size=min(count, len(model)), replace=False)
            if op == "remove":
                assert index.remove(np.concatenate([chosen, [10**9]])) == len(chosen)
                for i in chosen.tolist():
                    del model[i]
            else:
                rows = rng.normal(size=(len(chosen), DIM)).astype(np.float32)
                index.add(rows, ids=chosen)
                model.update(zip(chosen.tolist(), rows))
    check_consistent(index, model)


def check_consistent(index, model: dict) -> None:
    live = np.array(sorted(model), dtype=np.int64)
    assert len(index) == len(model) == list_total(index)
    assert sorted(index.ids().tolist()) == live.tolist()
    if len(live):
        np.testing.assert_array_equal(index.reconstruct(live), np.stack([model[i] for i in live.tolist()]))
        ids, _ = index.search(np.stack([model[i] for i in live.tolist()[:50]]), 3, **probe_all(index))
        assert np.isin(ids[ids >= 0], live).all()
        assert (ids[:, 0] == live[:50]).all()  # each vector finds itself (exact re-ranking, all lists)


@pytest.mark.sanitize
@pytest.mark.parametrize("family", FAMILIES)
def test_removed_ids_are_gone_everywhere_and_files_keep_the_lists(tmp_path, trained_data, family: str) -> None:
    index = make(family)
    index.train(trained_data)
    index.add(trained_data)
    gone = np.arange(0, len(trained_data), 4)
    index.remove(gone)
    index.add(trained_data[:10] * 2, ids=np.arange(1, 11))  # upserts move entries between lists
    model = {i: trained_data[i] for i in range(len(trained_data)) if i % 4}
    model.update({i: trained_data[i - 1] * 2 for i in range(1, 11)})  # 4 and 8 are back
    check_consistent(index, model)
    with pytest.raises(ValueError, match="not in the index"):
        index.reconstruct([12])
    path = os.fspath(tmp_path / "lists.af")
    index.save(path)
    expected = index.search(trained_data[:40], 10, **probe_all(index))
    for loaded in (af.load(path), af.load(path, mmap=True)):
        check_consistent(loaded, model)
        got = loaded.search(trained_data[:40], 10, **probe_all(index))
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    mapped = af.load(path, mmap=True)  # updating a mapped index copies the touched lists
    mapped.remove(np.arange(1, 30))
    for i in range(1, 30):
        model.pop(i, None)
    check_consistent(mapped, model)


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_bytes_counts_the_lists(tmp_path, trained_data, family: str) -> None:
    index = make(family)
    index.train(trained_data)
    empty = index.memory_bytes()
    index.add(trained_data)
    n = len(trained_data)
    grown = index.memory_bytes() - empty
    stored = index.bytes_per_vector()  # code + f32 copy + id
    # At least every entry's code, copy and id, plus its place in the id map (16 B); at most a few
    # times that (growth slack, 4-byte norm terms and block bounds, a half-empty id map).
    assert n * (stored + 16) <= grown <= 4 * n * (stored + 4 + 64)
    index.remove(np.arange(n))
    assert index.memory_bytes() >= empty  # capacity is kept for the next adds
    index.add(trained_data)
    path = os.fspath(tmp_path / "m.af")
    index.save(path)
    owned = af.load(path).memory_bytes()
    assert owned >= empty + n * (stored + 16)
    # A mapped file keeps codes, ids and copies in the mapping, not on the heap.
    assert af.load(path, mmap=True).memory_bytes() <= owned - n * stored


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_scann_fast_scan_ranks_as_its_decoded_vectors(trained_data, metric: str) -> None:
    """ScaNN without reorder returns the best entries by the quantized distance: within the table
    quantization of the ADC distances to centre + decoded residual (what reconstruct returns), and in
    ADC order up to that tolerance (the pre-filter drops nothing that could enter)."""
    x = trained_data
    q = clustered(50, DIM, seed=22, clusters=16)
    index = make("scann", metric=metric, stored=False)
    index.train(x)
    index.add(x)
    ids, dist = index.search(q, 10, leaves_to_search=8)
    all_ids = index.ids()
    rec = index.reconstruct(all_ids).astype(np.float64)
    if metric == "l2":
        ref = ((q[:, None, :].astype(np.float64) - rec[None]) ** 2).sum(-1)
    else:
        ref = 1.0 - q.astype(np.float64) @ rec.T
    order = np.argsort(all_ids)
    expected = np.take_along_axis(ref, order[np.searchsorted(all_ids[order], ids)], axis=1)
    tol = (DIM // index.dims_per_block) * float(np.median(ref.max(1) - ref.min(1))) / 255.0
    assert np.abs(dist - expected).max() <= tol
    kth = np.sort(ref, axis=1)[:, 9]
    assert np.all(expected.max(1) <= kth + 2 * tol)
    truth = np.take(all_ids, np.argsort(ref, axis=1)[:, :10])
    hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])
    assert hits >= 0.9
