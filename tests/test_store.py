"""annforge.store.Collection: filters against a plain-Python evaluation, upsert/delete/get, persistence,
recovery after a killed process, MMR."""

from __future__ import annotations

import operator
import re
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Any, Dict, List

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import annforge as af
from annforge.store import Collection, compile_where, maximal_marginal_relevance

# The children import annforge from wherever this process did (the installed package in CI, python/ in a
# development build), never blindly from the source tree, which has no compiled module after `pip install .`.
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(af.__file__)))

# -- a reference evaluation of the filter dialect, written independently of the SQL compiler ---------
MISSING = object()
ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _is_num(v: Any) -> bool:
    return isinstance(v, (bool, int, float))


def ref_eq(value: Any, operand: Any) -> bool:
    if operand is None:
        return value is MISSING or value is None
    if isinstance(operand, str):
        return isinstance(value, str) and value == operand
    return _is_num(value) and value == operand


def ref_match(where: Dict[str, Any], md: Dict[str, Any]) -> bool:
    for key, cond in where.items():
        if key == "$and":
            ok = all(ref_match(sub, md) for sub in cond)
        elif key == "$or":
            ok = any(ref_match(sub, md) for sub in cond)
        elif key == "$not":
            ok = not ref_match(cond, md)
        else:
            value = md.get(key, MISSING)
            if isinstance(cond, dict):
                ok = True
                for op, x in cond.items():
                    if op == "$eq":
                        ok &= ref_eq(value, x)
                    elif op in ("$ne", "$neq"):
                        ok &= not ref_eq(value, x)
                    elif op == "$in":
                        ok &= any(ref_eq(value, v) for v in x)
                    elif op == "$nin":
                        ok &= not any(ref_eq(value, v) for v in x)
                    else:
                        same_kind = isinstance(value, str) if isinstance(x, str) else _is_num(value)
                        ok &= same_kind and ORDER[op](value, x)
            elif isinstance(cond, list):
                ok = any(ref_eq(value, v) for v in cond)
            else:
                ok = ref_eq(value, cond)
        if not ok:
            return False
    return True


KEYS = ["a", "b", "c.d", "e f"]
numbers = st.one_of(st.booleans(), st.integers(-3, 3), st.integers(-8, 8).map(lambda i: i / 4))
strings = st.sampled_from(["", "a", "b", "ab", "B", "é", "1", "zz"])
scalars = st.one_of(st.none(), numbers, strings)
meta_values = st.one_of(scalars, st.lists(st.integers(0, 2), max_size=2), st.just({"x": 1}))
metadatas = st.lists(st.dictionaries(st.sampled_from(KEYS), meta_values, max_size=4), min_size=1, max_size=30)

leaf_conditions = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["$eq", "$ne", "$neq"]), scalars, min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), st.one_of(numbers, strings), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["$in", "$nin"]), st.lists(scalars, max_size=3), min_size=1, max_size=2),
)
leaf_filters = st.dictionaries(st.sampled_from(KEYS), leaf_conditions, min_size=1, max_size=2)
filters = st.recursive(
    leaf_filters,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(children, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        children.map(lambda f: {"$not": f}),
    ),
    max_leaves=6,
)


def _collection(metas: List[Dict[str, Any]], dim: int = 4, seed: int = 0) -> "tuple[Collection, np.ndarray]":
    x = np.random.default_rng(seed).standard_normal((len(metas), dim)).astype(np.float32)
    col = Collection(None, index=af.FlatIndex(dim))
    col.upsert([f"r{i}" for i in range(len(metas))], documents=[f"doc {i}" for i in range(len(metas))],
               metadatas=metas, embeddings=x)
    return col, x


@settings(max_examples=80)
@given(metas=metadatas, where=filters)
def test_filters_equal_python_evaluation(metas: List[Dict[str, Any]], where: Dict[str, Any]) -> None:
    col, x = _collection(metas)
    expected = [f"r{i}" for i, md in enumerate(metas) if ref_match(where, md)]
    assert [r.id for r in col.get(where=where)] == expected
    assert col.count(where) == len(expected)
    # Filtered search: exactly the nearest allowed records (Flat is exact), as many as exist up to k.
    q = np.random.default_rng(1).standard_normal(4).astype(np.float32)
    hits = col.search(q, k=5, where=where)
    allowed = np.array([i for i, md in enumerate(metas) if ref_match(where, md)], dtype=np.int64)
    want = allowed[np.argsort(((x[allowed] - q) ** 2).sum(1), kind="stable")][:5] if allowed.size else allowed
    assert len(hits) == min(5, allowed.size)
    got_d = np.array([h.distance for h in hits])
    want_d = ((x[want] - q) ** 2).sum(1)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-5)
    assert {h.id for h in hits} <= set(expected)


@settings(max_examples=10)
@given(metas=metadatas, where=filters)
def test_callable_filter_and_dict_filter_agree(metas: List[Dict[str, Any]], where: Dict[str, Any]) -> None:
    col, _ = _collection(metas)
    assert [r.id for r in col.get(where=lambda md: ref_match(where, md))] == [r.id for r in col.get(where=where)]


@pytest.mark.parametrize(
    "bad",
    [
        {"a": {"$like": "x"}},
        {"$xor": [{"a": 1}]},
        {"a": {"$gt": None}},
        {"a": {"$gt": [1]}},
        {"a": {"$in": 3}},
        {"$and": []},
        {"a": {}},
        {"a": {"$eq": {"nested": 1}}},
        {"a": float("nan")},
        {"a": 2**70},
        ["a", 1],
    ],
)
def test_malformed_filters_raise_value_error(bad: Any) -> None:
    col, _ = _collection([{"a": 1}])
    with pytest.raises(ValueError):
        col.get(where=bad)


def test_filter_keys_are_literal_and_quotes_are_safe() -> None:
    metas = [{'we"ird': 1, "x.y": 2}, {"x": {"y": 2}}, {"it's": "o'k"}]
    col, _ = _collection(metas)
    assert [r.id for r in col.get(where={'we"ird': 1})] == ["r0"]
    assert [r.id for r in col.get(where={"x.y": 2})] == ["r0"]
    assert [r.id for r in col.get(where={"it's": "o'k"})] == ["r2"]
    sql, params = compile_where({"a": "'; DROP TABLE records; --"})
    assert "DROP" not in sql and "'; DROP TABLE records; --" in params


# -- writes and reads ------------------------------------------------------------------------------
def test_upsert_replaces_document_metadata_and_vector() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    assert col.upsert(["a", "b"], documents=["A", "B"], metadatas=[{"v": 1}, None],
                      embeddings=[[0, 0], [10, 10]]) == ["a", "b"]
    col.upsert(["a"], documents=["A2"], metadatas=[{"v": 2}], embeddings=[[20, 20]])
    assert len(col) == 2 and len(col.index) == 2
    assert col.get(["a", "b"]) == [af.store.Record("a", "A2", {"v": 2}), af.store.Record("b", "B", {})]
    assert [h.id for h in col.search([19, 19], k=2)] == ["a", "b"]
    rec = col.get(["a"], include_embeddings=True)[0]
    np.testing.assert_array_equal(rec.embedding, [20, 20])


def test_generated_ids_delete_and_get_order() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    ids = col.upsert(documents=["x", "y", "z"], embeddings=np.eye(3, 2))
    assert len(set(ids)) == 3 and all(isinstance(i, str) and len(i) == 32 for i in ids)
    assert [r.document for r in col.get([ids[2], "nope", ids[0]])] == ["z", "x"]
    assert col.delete([ids[0], "nope"]) == 1
    assert col.delete(["nope"]) == 0
    assert ids[0] not in col and ids[1] in col
    assert {h.id for h in col.search([1, 0], k=10)} == {ids[1], ids[2]}
    assert col.delete(where={}) == 2 and len(col) == 0 and len(col.index) == 0
    assert col.search([1, 0], k=3) == []


def test_ids_are_not_reused_after_delete() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.upsert(["a"], embeddings=[[1, 1]])
    col.delete(["a"])
    col.upsert(["a"], embeddings=[[2, 2]])
    assert sorted(col.index.ids().tolist()) == [1]


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(ids=["a", "a"], embeddings=[[0, 0], [1, 1]]), ValueError),
        (dict(ids=["a"], embeddings=[[0, 0, 0]]), ValueError),
        (dict(ids=["a"], embeddings=[[np.nan, 0]]), ValueError),
        (dict(ids=["a", "b"], embeddings=[[0, 0]]), ValueError),
        (dict(ids=[3], embeddings=[[0, 0]]), TypeError),
        (dict(ids=["a"], metadatas=[{"x": float("nan")}], embeddings=[[0, 0]]), ValueError),
        (dict(ids=["a"], metadatas=[{"x": object()}], embeddings=[[0, 0]]), TypeError),
        (dict(ids=["a"], metadatas=["not a dict"], embeddings=[[0, 0]]), TypeError),
        (dict(ids=["a"], documents=["text"]), ValueError),  # no embedder
    ],
)
def test_bad_upserts_raise_and_change_nothing(kwargs: Dict[str, Any], exc: type) -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.upsert(["keep"], embeddings=[[5, 5]])
    with pytest.raises(exc):
        col.upsert(**kwargs)
    assert [r.id for r in col.get()] == ["keep"] and len(col.index) == 1 and col.generation == 1


def test_index_error_inside_the_transaction_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.upsert(["a"], embeddings=[[0, 0]])
    real_add = col.index.add

    def add_then_fail(x: Any, ids: Any = None, **kw: Any) -> Any:
        real_add(x, ids, **kw)  # the index changes, then the write fails: it must be undone
        raise RuntimeError("boom")

    monkeypatch.setattr(col.index, "add", add_then_fail)
    with pytest.raises(RuntimeError):
        col.upsert(["a", "b"], embeddings=[[9, 9], [1, 1]])
    assert [r.id for r in col.get()] == ["a"] and col.generation == 1
    assert col.index.ids().tolist() == [0]
    np.testing.assert_array_equal(col.index.reconstruct([0]), [[0, 0]])


class _WordEmbedder:
    """Bag of letters: enough structure for text queries to find their own document."""

    dim = 26

    def encode(self, texts: List[str]) -> np.ndarray:
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[row, ord(ch) - 97] += 1
        return out + 1e-3


def test_embedder_texts_and_default_hnsw_index() -> None:
    col = Collection(None, embedder=_WordEmbedder())
    assert col.index is None
    col.upsert(["1", "2", "3"], documents=["apple pie", "zebra zoo", "quick quiz"])
    assert type(col.index).__name__ == "HNSWIndex" and col.metric == "cosine" and col.dim == 26
    assert col.search("zoo zebra", k=1)[0].id == "2"
    assert [h[0].id for h in col.search_batch(["pie apple", "quiz"], k=1)] == ["1", "3"]


def test_mmr_prefers_diverse_results() -> None:
    col = Collection(None, index=af.FlatIndex(2, metric="cosine"))
    col.upsert(["near", "near-dup", "other"], embeddings=[[1.0, 0.0], [1.0, 0.01], [0.5, 0.5]])
    assert [h.id for h in col.search([1, 0.02], k=2)] == ["near-dup", "near"]
    assert [h.id for h in col.mmr_search([1, 0.02], k=2, fetch_k=3, lambda_mult=0.3)] == ["near-dup", "other"]
    assert [h.id for h in col.mmr_search([1, 0.02], k=2, fetch_k=3, lambda_mult=1.0)] == ["near-dup", "near"]
    assert maximal_marginal_relevance(np.ones(2), np.empty((0, 2)), k=3) == []
    with pytest.raises(ValueError):
        maximal_marginal_relevance(np.ones(2), np.ones((2, 2)), lambda_mult=2)


# -- persistence and recovery ----------------------------------------------------------------------
def _assert_consistent(folder: str) -> Collection:
    """Reopen and check that the index holds exactly the SQLite records, with their vectors."""
    col = Collection(folder)
    records = col.get(include_embeddings=True)
    nums = [r[0] for r in col._conn.execute("SELECT num FROM records ORDER BY num")]
    assert sorted(col.index.ids().tolist()) == nums
    if nums:
        stored = np.stack([r.embedding for r in records])
        np.testing.assert_array_equal(col.index.reconstruct(np.array(nums, dtype=np.int64)), stored)
        hits = col.search_batch(stored, k=1)
        assert [h[0].id for h in hits] == [r.id for r in records]
    return col


def test_reopen_after_close_and_after_no_close(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with Collection(folder, index=af.HNSWIndex(8), snapshot_every=None) as col:
        col.upsert([str(i) for i in range(50)], metadatas=[{"i": i} for i in range(50)], embeddings=x)
        col.delete(["3", "4"])
    assert sorted(os.listdir(folder)) == ["LOCK", "collection.sqlite", "index.2.af", "index.base.af"]
    col = _assert_consistent(folder)
    assert len(col) == 48 and col.get(["7"])[0].metadata == {"i": 7}
    # Writes after the snapshot, then the object is dropped without close(): reopening replays them.
    col.upsert(["new"], embeddings=x[:1] + 1)
    col.delete(["5"])
    col._close_handles()
    col = _assert_consistent(folder)
    assert "new" in col and "5" not in col and len(col) == 48
    with pytest.raises(ValueError):
        Collection(str(tmp_path / "other"), index=af.FlatIndex(8)).upsert(["a"], embeddings=[[1, 2]])
    col.close()


def test_second_open_is_refused_and_index_must_match(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    col = Collection(folder, index=af.FlatIndex(3))
    col.upsert(["a"], embeddings=[[1, 2, 3]])
    with pytest.raises(OSError, match="already open"):
        Collection(folder)
    col.close()
    with pytest.raises(ValueError, match="FlatIndex"):
        Collection(folder, index=af.FlatIndex(4))
    with pytest.raises(ValueError, match="empty index"):
        Collection(str(tmp_path / "e"), index=_nonempty_flat())
    Collection(folder, index=af.FlatIndex(3)).close()  # the same kind of index is accepted


def _nonempty_flat() -> af.FlatIndex:
    index = af.FlatIndex(3)
    index.add(np.ones((1, 3), dtype=np.float32))
    return index


@pytest.mark.parametrize("damage", ["flipped-bytes", "foreign-index"])
def test_damaged_or_future_snapshots_fall_back_to_a_rebuild(tmp_path: Any, damage: str) -> None:
    folder = str(tmp_path / "c")
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with Collection(folder, index=af.FlatIndex(4)) as col:
        col.upsert([str(i) for i in range(20)], embeddings=x)
    snap = os.path.join(folder, "index.1.af")
    if damage == "flipped-bytes":  # the checksum refuses it
        with open(snap, "r+b") as fh:
            fh.seek(os.path.getsize(snap) // 2)
            fh.write(b"\xff\xff\xff\xff")
    else:  # a valid file, but of another index (same ids): must not be taken for this collection's
        other = af.FlatIndex(4, metric="cosine")
        other.add(x, np.arange(20))
        other.save(snap)
    open(os.path.join(folder, "index.1.af.tmp-123"), "wb").close()  # an interrupted save
    with open(os.path.join(folder, "index.9.af"), "wb") as fh:  # newer than the database: ignored
        fh.write(b"garbage")
    with pytest.warns(RuntimeWarning, match=r"snapshot index\.1\.af (is unreadable|holds a FlatIndex\(dim=4, metric='cosine'\))"):
        col = _assert_consistent(folder)
    assert len(col) == 20
    col.close()
    assert sorted(n for n in os.listdir(folder) if n.startswith("index.")) == ["index.1.af", "index.base.af"]
    _assert_consistent(folder).close()


def test_save_to_copies_the_collection(tmp_path: Any) -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.upsert(["a", "b"], documents=["A", "B"], embeddings=[[0, 1], [1, 0]])
    col.delete(["b"])
    col.save_to(tmp_path / "copy")
    copy = _assert_consistent(str(tmp_path / "copy"))
    assert copy.get() == [af.store.Record("a", "A", {})]
    with pytest.raises(ValueError):
        col.save_to(tmp_path / "copy")


CHILD = textwrap.dedent(
    """
    import os, sys, numpy as np
    sys.path.insert(0, {python_dir!r})
    import annforge as af
    from annforge.store import Collection
    folder, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    col = Collection(folder, index=af.FlatIndex(8), snapshot_every=int(sys.argv[4]))
    rng = np.random.default_rng(seed)
    if mode == "exit-before-commit":          # die inside the transaction, after the index changed
        real_add = col.index.add
        def add(x, ids=None, **kw):
            real_add(x, ids, **kw); os._exit(3)
        col.index.add = add
    elif mode == "exit-after-commit":         # die after COMMIT, before any snapshot
        type(col)._after_write = lambda self, n: os._exit(3)
    elif mode == "exit-mid-snapshot":         # die after writing a snapshot, before old ones are removed
        real_remove = os.remove
        os.remove = lambda p: os._exit(3) if p.endswith(".af") else real_remove(p)
    step = 0
    while True:
        step += 1
        if step % 3 == 0 and len(col):
            victims = rng.choice([r.id for r in col.get()], size=min(len(col), 5), replace=False)
            col.delete(list(victims))
        else:
            n = int(rng.integers(1, 200))
            ids = ["id%d" % i for i in rng.choice(400, size=n, replace=False)]
            col.upsert(ids, documents=ids, metadatas=[{{"step": step}}] * n,
                       embeddings=rng.standard_normal((n, 8)).astype(np.float32))
        print("gen", col.generation, flush=True)
    """
)


def _run_child(folder: str, tmp_path: Any, seed: int, mode: str, snapshot_every: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(python_dir=PYTHON_DIR))
    return subprocess.Popen([sys.executable, str(script), folder, str(seed), mode, str(snapshot_every)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_in_the_middle_of_upserts_leaves_a_consistent_store(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    rng = np.random.default_rng(7)
    for round_ in range(4):
        child = _run_child(folder, tmp_path, seed=round_, mode="loop", snapshot_every=150)
        acked = -1
        target = int(rng.integers(5, 40))
        assert child.stdout is not None
        for _ in range(target):
            line = child.stdout.readline()
            assert line.startswith("gen"), child.stderr.read() if child.stderr else line
            acked = int(line.split()[1])
        time.sleep(float(rng.uniform(0, 0.02)))  # land somewhere inside a later write
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        col = _assert_consistent(folder)
        assert col.generation >= acked  # nothing the child saw committed was lost
        col.close()


@pytest.mark.parametrize("mode", ["exit-before-commit", "exit-after-commit", "exit-mid-snapshot"])
def test_process_death_at_each_step_of_a_write(tmp_path: Any, mode: str) -> None:
    folder = str(tmp_path / "c")
    with Collection(folder, index=af.FlatIndex(8)) as col:
        col.upsert(["seed"], embeddings=np.ones((1, 8)))
    child = _run_child(folder, tmp_path, seed=1, mode=mode, snapshot_every=1)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 3, err
    col = _assert_consistent(folder)
    if mode == "exit-before-commit":
        assert col.generation == 1 and [r.id for r in col.get()] == ["seed"]
    else:
        assert col.generation == 2 and len(col) > 1
    if mode == "exit-mid-snapshot":
        assert "index.2.af" in os.listdir(folder)
    col.close()


def test_snapshot_policy_waits_for_a_tenth_of_the_collection(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    x = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    col = Collection(folder, index=af.FlatIndex(4), snapshot_every=5)
    col.upsert([str(i) for i in range(100)], embeddings=x)  # 100 changes: snapshot at generation 1
    assert "index.1.af" in os.listdir(folder)
    col.upsert([str(i) for i in range(6)], embeddings=x[:6] + 1)  # 6 >= 5 but < 100 // 10: no snapshot
    assert "index.2.af" not in os.listdir(folder)
    col.upsert([str(i) for i in range(6, 10)], embeddings=x[6:10] + 1)  # 10 changes in all
    assert sorted(n for n in os.listdir(folder) if n.endswith(".af")) == ["index.3.af", "index.base.af"]
    col.close()


def test_concurrent_writers_and_readers_keep_the_store_consistent(tmp_path: Any) -> None:
    import threading

    folder = str(tmp_path / "c")
    col = Collection(folder, index=af.HNSWIndex(8), snapshot_every=50)
    errors: List[BaseException] = []

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for step in range(30):
                ids = [f"w{seed}-{i}" for i in rng.choice(40, size=5, replace=False)]
                col.upsert(ids, metadatas=[{"w": seed}] * 5, embeddings=rng.standard_normal((5, 8)))
                if step % 4 == 3:
                    col.delete(ids[:2])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        rng = np.random.default_rng(99)
        try:
            for _ in range(60):
                for hit in col.search(rng.standard_normal(8), k=5, where={"w": {"$in": [0, 1]}}):
                    assert hit.metadata["w"] in (0, 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    col.close()
    _assert_consistent(folder).close()


def test_trained_ivfpq_index_works_and_an_untrained_one_is_refused(tmp_path: Any) -> None:
    x = np.random.default_rng(0).standard_normal((600, 8)).astype(np.float32)
    ivf = af.IVFPQIndex(8, nlist=4, m=2, nbits=4)
    with pytest.raises(ValueError, match="trained"):
        Collection(None, index=ivf)
    ivf.train(x)
    folder = str(tmp_path / "c")
    col = Collection(folder, index=ivf)
    col.upsert([str(i) for i in range(600)], metadatas=[{"i": i} for i in range(600)], embeddings=x)
    assert col.search(x[3], k=1, nprobe=4)[0].id == "3"
    assert all(int(h.id) > 300 for h in col.search(x[3], k=5, where={"i": {"$gt": 300}}, nprobe=4))
    col.upsert(["extra"], embeddings=x[:1] + 0.5)
    col._close_handles()  # no snapshot of the last write: reopening replays it
    with pytest.warns(RuntimeWarning, match="no index snapshot was written"):
        col = Collection(folder)
    assert type(col.index).__name__ == "IVFPQIndex" and len(col.index) == len(col) == 601
    col.close()


# -- a collection always reopens from SQLite; a damaged database is refused ---------------------------
SQ8_CHILD = textwrap.dedent(
    """
    import sys, time, numpy as np
    sys.path.insert(0, {python_dir!r})
    import annforge as af
    from annforge.store import Collection
    col = Collection(sys.argv[1], index=af.HNSWIndex(8, metric="euclidean", M=8, storage="sq8"))
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    col.upsert(["r%d" % i for i in range(300)], metadatas=[{{"i": i}} for i in range(300)], embeddings=x)
    print("written", col.generation, flush=True)
    time.sleep(60)   # killed here: long before the first snapshot (snapshot_every=10000)
    """
)


def test_sq8_hnsw_killed_before_its_first_snapshot_reopens_with_a_warning(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    script = tmp_path / "sq8_child.py"
    script.write_text(SQ8_CHILD.format(python_dir=PYTHON_DIR))
    child = subprocess.Popen([sys.executable, str(script), folder], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("written"), child.stderr.read() if child.stderr else line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not [n for n in os.listdir(folder) if re.match(r"index\.\d+\.af$", n)]  # no snapshot was written
    with pytest.warns(RuntimeWarning, match="no index snapshot was written.*rebuilt from the 300 records"):
        col = _assert_consistent(folder)
    assert len(col) == 300 and col.index.storage == "sq8" and col.index.M == 8 and col.metric == "l2"
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    assert col.search(x[17], k=1)[0].id == "r17"
    col.close()  # writes the first snapshot: the next open needs no rebuild and says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_consistent(folder).close()


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("family", ["hnsw", "hnsw-sq8", "flat"])
def test_damaged_snapshot_and_damaged_base_rebuild_from_sqlite(tmp_path: Any, family: str) -> None:
    folder = str(tmp_path / "c")
    make = {"hnsw": lambda: af.HNSWIndex(4, M=6, ef_construction=50), "flat": lambda: af.FlatIndex(4),
            "hnsw-sq8": lambda: af.HNSWIndex(4, storage="sq8")}[family]
    x = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    with Collection(folder, index=make()) as col:
        col.upsert([str(i) for i in range(40)], embeddings=x)
    for name in ("index.1.af", "index.base.af"):
        path = os.path.join(folder, name)
        _flip(path, os.path.getsize(path) // 2)
    with pytest.warns(RuntimeWarning, match=r"snapshot index\.1\.af is unreadable.*rebuilt from the 40 records"):
        col = _assert_consistent(folder)
    assert repr(col.index) == repr(make()).replace("size=0", "size=40")  # same parameters as created
    col.close()


def test_trained_index_with_every_file_damaged_says_what_to_do(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    ivf = af.IVFPQIndex(8, nlist=4, m=2, nbits=4)
    ivf.train(x)
    with Collection(folder, index=ivf) as col:
        col.upsert([str(i) for i in range(300)], embeddings=x)
    _flip(os.path.join(folder, "index.base.af"), 200)
    with pytest.warns(RuntimeWarning, match="does not load"):  # the snapshot is fine: only the template is lost
        col = _assert_consistent(folder)
    col.upsert(["new"], embeddings=x[:1] + 5)
    col._close_handles()  # no snapshot of the last write: the snapshot is emptied to rebuild into
    with pytest.warns(RuntimeWarning):
        col = _assert_consistent(folder)
    col.close()
    for name in os.listdir(folder):
        if name.endswith(".af"):
            _flip(os.path.join(folder, name), os.path.getsize(os.path.join(folder, name)) // 2)
    with pytest.raises(OSError, match="records are intact"):
        Collection(folder)


@pytest.mark.parametrize("offset_in_page", [0, 5])
def test_bit_flipped_database_is_refused_on_open(tmp_path: Any, offset_in_page: int) -> None:
    import sqlite3

    folder = str(tmp_path / "c")
    with Collection(folder, index=af.FlatIndex(4)) as col:
        col.upsert([f"id{i}" for i in range(300)], documents=[f"text {i} " * 5 for i in range(300)],
                   metadatas=[{"i": i} for i in range(300)], embeddings=np.ones((300, 4)))
    db = os.path.join(folder, "collection.sqlite")
    page_size = 4096
    _flip(db, page_size + offset_in_page)  # the header of page 2, a b-tree page
    try:  # what SQLite itself says about the file
        conn = sqlite3.connect(db)
        report = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        conn.close()
    except sqlite3.DatabaseError as exc:
        report = [str(exc)]
    assert report != ["ok"]
    with pytest.raises(OSError, match="damaged"):
        Collection(folder)
    with open(db, "wb") as fh:
        fh.write(b"not a database at all" * 100)
    with pytest.raises(OSError, match="damaged or not an SQLite file"):
        Collection(folder)


# -- chromadb semantics: add inserts, upsert replaces, update changes what is given --------------------
def test_add_refuses_existing_ids_and_changes_nothing() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.add(["a", "b"], documents=["A", "B"], metadatas=[{"v": 1}, {"v": 2}], embeddings=[[0, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"1 of the ids already exist.*'b'.*upsert\(\)"):
        col.add(["c", "b"], embeddings=[[2, 2], [3, 3]])
    assert [r.id for r in col.get()] == ["a", "b"] and col.generation == 1 and len(col.index) == 2
    assert col.get(["b"]) == [af.store.Record("b", "B", {"v": 2})]
    many = [f"x{i}" for i in range(8)]
    col.add(many, embeddings=np.zeros((8, 2)))
    with pytest.raises(ValueError, match=r"8 of the ids.*'x0', 'x1', 'x2', 'x3', 'x4' and 3 more"):
        col.add(many, embeddings=np.ones((8, 2)))
    with pytest.raises(ValueError, match="duplicate ids"):
        col.add(["n", "n"], embeddings=np.ones((2, 2)))


def test_add_checks_ids_before_embedding_documents() -> None:
    class CountingEmbedder(_WordEmbedder):
        calls = 0

        def encode(self, texts: List[str]) -> np.ndarray:
            CountingEmbedder.calls += 1
            return super().encode(texts)

    col = Collection(None, index=af.FlatIndex(26), embedder=CountingEmbedder())
    col.add(["a"], documents=["apple"])
    with pytest.raises(ValueError, match="already exist"):
        col.add(["a"], documents=["apricot"])
    assert CountingEmbedder.calls == 1


def test_update_changes_only_the_given_fields() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.add(["a", "b"], documents=["A", "B"], metadatas=[{"lang": "en", "year": 2020}, {"k": 1}],
            embeddings=[[0, 0], [5, 5]])
    col.update(["a"], embeddings=[[9, 9]])  # vector only
    rec = col.get(["a"], include_embeddings=True)[0]
    assert (rec.document, rec.metadata) == ("A", {"lang": "en", "year": 2020})
    np.testing.assert_array_equal(rec.embedding, [9, 9])
    assert col.search([9, 9], n_results=1)[0].id == "a"
    col.update(["a", "b"], metadatas=[{"year": 2024, "lang": None}, None])  # merge; None removes a key
    assert [r.metadata for r in col.get(["a", "b"])] == [{"year": 2024}, {"k": 1}]
    col.update(["b", "a"], documents=["B2", None])  # no embedder: only the text changes
    assert [r.document for r in col.get(["a", "b"])] == ["A", "B2"]
    np.testing.assert_array_equal(col.get(["b"], include_embeddings=True)[0].embedding, [5, 5])
    generation = col.generation
    with pytest.raises(ValueError, match=r"1 of the ids are not in the collection \('zz'\)"):
        col.update(["a", "zz"], documents=["new", "new"])
    with pytest.raises(ValueError, match="needs documents, metadatas or embeddings"):
        col.update(["a"])
    with pytest.raises(ValueError, match="dimension"):
        col.update(["a"], embeddings=[[1, 2, 3]])
    with pytest.raises(TypeError):
        col.update(["a"], metadatas=["not a dict"])
    assert col.generation == generation and col.get(["a"])[0].document == "A"


def test_update_of_documents_reembeds_them_with_the_embedder(tmp_path: Any) -> None:
    folder = str(tmp_path / "c")
    col = Collection(folder, embedder=_WordEmbedder(), index=af.FlatIndex(26))
    col.add(["1", "2"], documents=["apple pie", "zebra zoo"])
    col.update(["1"], documents=["quick quiz"])
    assert col.search("quiz", k=1)[0].id == "1" and col.get(["1"])[0].document == "quick quiz"
    col._close_handles()  # not snapshotted: the reopened index replays the update
    with pytest.warns(RuntimeWarning, match="no index snapshot was written"):
        col = _assert_consistent(folder)
    col.embedder = _WordEmbedder()
    assert col.search("quiz", k=1)[0].id == "1"
    col.close()


def test_upsert_replaces_whole_records_and_inserts_new_ones() -> None:
    col = Collection(None, index=af.FlatIndex(2))
    col.add(["a"], documents=["A"], metadatas=[{"v": 1}], embeddings=[[0, 0]])
    col.upsert(["a", "b"], embeddings=[[1, 1], [2, 2]])
    assert col.get(["a", "b"]) == [af.store.Record("a", None, {}), af.store.Record("b", None, {})]


# -- what a chromadb user types into search / query / get ----------------------------------------------
@pytest.fixture
def animals() -> Collection:
    col = Collection(None, index=af.FlatIndex(2))
    col.add(["fox", "hen", "jay", "owl"], documents=["red fox", "red hen", "blue jay", None],
            metadatas=[{"legs": 4}, {"legs": 2}, {"legs": 2}, {"legs": 2}],
            embeddings=[[0, 0], [1, 0], [2, 0], [3, 0]])
    return col


def test_search_takes_n_results_and_where_document(animals: Collection) -> None:
    assert [h.id for h in animals.search([0, 0], n_results=2)] == ["fox", "hen"]
    assert [h.id for h in animals.search([0, 0])] == ["fox", "hen", "jay", "owl"]  # k defaults to 4
    red = {"$contains": "red"}
    assert [h.id for h in animals.search([3, 0], n_results=5, where_document=red)] == ["hen", "fox"]
    assert [h.id for h in animals.search([0, 0], k=5, where_document={"$not_contains": "red"})] == ["jay", "owl"]
    both = {"$and": [{"$contains": "red"}, {"$contains": "hen"}]}
    assert [h.id for h in animals.search([0, 0], k=5, where_document=both)] == ["hen"]
    either = {"$or": [{"$contains": "fox"}, {"$contains": "jay"}]}
    assert [h.id for h in animals.search([0, 0], k=5, where_document=either, where={"legs": 2})] == ["jay"]
    assert animals.search([0, 0], k=5, where_document={"$contains": "Red"}) == []  # case-sensitive
    assert [r.id for r in animals.get(where_document=red)] == ["fox", "hen"]
    assert [r.id for r in animals.get(where={"legs": 2}, offset=1, limit=1)] == ["jay"]
    assert animals.count(where_document=red) == 2
    assert animals.delete(where_document={"$contains": "jay"}) == 1 and "jay" not in animals


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(k=2, n_results=2), TypeError, "not both"),
        (dict(n_results=0), ValueError, "n_results must be a positive integer"),
        (dict(include=["documents"]), TypeError, r"Collection.query"),
        (dict(query_texts=["x"]), TypeError, r"Collection.query"),
        (dict(where_document={"$regex": "r.d"}), ValueError, r"\$regex.*not supported.*\$contains"),
        (dict(where_document={"$contains": ""}), ValueError, "non-empty string"),
        (dict(where_document="red"), ValueError, "one operator"),
        (dict(nprobe=3), ValueError, r"unknown search parameter 'nprobe'.*Collection.search itself takes"),
    ],
)
def test_search_says_clearly_what_it_does_not_take(animals: Collection, kwargs: Dict[str, Any], exc: type,
                                                   message: str) -> None:
    with pytest.raises(exc, match=message):
        animals.search([0, 0], **kwargs)


def test_query_returns_chromadb_shaped_results(animals: Collection) -> None:
    res = animals.query(query_embeddings=[[0, 0], [3, 0]], n_results=2, where={"legs": 2})
    assert res["ids"] == [["hen", "jay"], ["owl", "jay"]]
    assert res["documents"] == [["red hen", "blue jay"], [None, "blue jay"]]
    assert res["metadatas"][0] == [{"legs": 2}, {"legs": 2}]
    np.testing.assert_allclose(res["distances"], [[1, 4], [0, 1]])
    assert res["embeddings"] is None and res["included"] == ["metadatas", "documents", "distances"]
    emb = animals.query(query_embeddings=[0, 0], n_results=1, include=["embeddings"])
    np.testing.assert_array_equal(emb["embeddings"][0][0], [0, 0])
    assert emb["documents"] is None
    words = Collection(None, embedder=_WordEmbedder())
    words.add(["1", "2"], documents=["apple pie", "zebra zoo"])
    assert words.query(query_texts=["zoo"], n_results=1)["ids"] == [["2"]]
    with pytest.raises(ValueError, match="exactly one"):
        animals.query()
    with pytest.raises(ValueError, match="uris"):
        animals.query(query_embeddings=[[0, 0]], include=["uris"])


def test_large_rebuild_shows_progress_in_a_terminal(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from annforge.store import _collection

    folder = str(tmp_path / "c")
    col = Collection(folder, index=af.FlatIndex(4))
    col.upsert([str(i) for i in range(100)], embeddings=np.random.default_rng(0).standard_normal((100, 4)))
    col._close_handles()  # no snapshot: reopening rebuilds
    monkeypatch.setattr(_collection, "_PROGRESS_MIN_ROWS", 50)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with pytest.warns(RuntimeWarning, match="rebuilt from the 100 records"):
        Collection(folder).close()
    assert "rebuilding index" in capsys.readouterr().err
