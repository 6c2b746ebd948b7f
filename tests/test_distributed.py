"""annforge.distributed on a local Ray cluster (2 CPUs, no dashboard, no network), started once here."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
import ray.data  # noqa: E402

import annforge as af  # noqa: E402
from annforge.distributed import (  # noqa: E402
    ShardError,
    ShardRestartedWarning,
    ShardedIndex,
    dedup,
    search_dataset,
)
from annforge.distributed import band_keys, groups_from_pairs, hash_shards, verified_pairs  # noqa: E402
from annforge.distributed.sharded import shard_file_name  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import clustered  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # Ray's own

DIM = 16


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    x = clustered(3000, DIM, seed=3)
    q = clustered(100, DIM, seed=4)
    return x, q


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.mark.parametrize("partition", ["hash", "kmeans"])
def test_sharded_flat_answers_exactly_like_one_flat_index(data, partition):
    x, q = data
    single = af.FlatIndex(DIM, metric="cosine")
    single.add(x)
    want = single.search(q, 10)
    with ShardedIndex.build(x, num_shards=3, partition=partition,
                            make_index=lambda: af.FlatIndex(DIM, metric="cosine")) as sharded:
        sizes = sharded.shard_sizes()
        assert sum(sizes) == len(x) == len(sharded) and min(sizes) > 0
        got = sharded.search(q, 10)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        one_ids, _ = sharded.search(q[0], 5)  # one query as a vector
        np.testing.assert_array_equal(one_ids[0], want[0][0, :5])
        filt = np.arange(0, len(x), 7)
        np.testing.assert_array_equal(sharded.search(q, 5, filter=filt)[0], single.search(q, 5, filter=filt)[0])
        if partition == "kmeans":
            # Visiting fewer shards loses some neighbours; visiting all of them is exact again.
            r = [recall(sharded.search(q, 10, shards_to_probe=p)[0], want[0]) for p in (1, 2, 3)]
            assert r[0] < r[2] == 1.0 and r[0] <= r[1] <= r[2]
        else:
            with pytest.raises(ValueError, match="kmeans"):
                sharded.search(q, 10, shards_to_probe=1)
        with pytest.raises(ValueError, match=f"\\[nq, {DIM}\\]"):
            sharded.search(np.zeros((2, DIM + 1), dtype=np.float32), 3)


def test_sharded_hnsw_and_ivfpq_recall_matches_one_index(data):
    x, q = data
    truth = af.FlatIndex(DIM)
    truth.add(x)
    exact, _ = truth.search(q, 10)
    cases = [
        (lambda: af.HNSWIndex(DIM, M=8, ef_construction=40, seed=1), {"ef": 16}),
        (lambda: af.IVFPQIndex(DIM, nlist=32, m=4, nbits=4, refine=None), {"nprobe": 4}),
    ]
    for make_index, params in cases:
        single = make_index()
        if hasattr(single, "train"):
            single.train(x)
        single.add(x)
        single_recall = recall(single.search(q, 10, **params)[0], exact)
        with ShardedIndex.build(x, num_shards=2, make_index=make_index) as sharded:
            sharded_recall = recall(sharded.search(q, 10, **params)[0], exact)
        assert sharded_recall >= single_recall - 0.005, (type(single).__name__, single_recall, sharded_recall)
        assert single_recall < 1.0  # the parameters are loose enough for the comparison to mean something


def test_add_remove_save_load(data, tmp_path):
    x, q = data
    base, extra = x[:2500], x[2500:]
    for partition in ("hash", "kmeans"):
        with ShardedIndex.build(base, num_shards=2, partition=partition,
                                make_index=lambda: af.FlatIndex(DIM)) as sharded:
            new_ids = sharded.add(extra)
            assert new_ids.tolist() == list(range(2500, 3000))
            assert sharded.remove(np.arange(0, 3000, 2)) == 1500
            assert sharded.remove([0, 2]) == 0
            assert len(sharded) == 1500
            # Upsert: id 1 takes id 3's vector; under kmeans it may move shard, never duplicated.
            sharded.add(x[3:4], ids=[1])
            ids = sharded.ids()
            assert len(ids) == len(np.unique(ids)) == 1500
            reference = af.FlatIndex(DIM)
            keep = np.arange(1, 3000, 2)
            reference.add(x[keep], keep)
            reference.add(x[3:4], ids=[1])
            want = reference.search(q, 10)
            np.testing.assert_array_equal(sharded.search(q, 10)[0], want[0])
            path = tmp_path / partition
            sharded.save(path)
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["num_shards"] == len(manifest["shards"]) and manifest["partition"] == partition and manifest["next_id"] == 3000
        assert sorted(os.listdir(path)) == sorted(
            ["manifest.json"] + [s["file"] for s in manifest["shards"]] + (["router.af"] if partition == "kmeans" else [])
        )
        with ShardedIndex.load(path, mmap=True) as loaded:
            got = loaded.search(q, 10)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert loaded.add(x[:1]).tolist() == [3000]  # ids continue after a load
            if partition == "kmeans":
                np.testing.assert_array_equal(loaded.search(q, 10, shards_to_probe=2)[0], loaded.search(q, 10)[0])
                assert recall(loaded.search(q, 10, shards_to_probe=1)[0], want[0]) < 1.0

    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(OSError, match="manifest.json is missing"):
        ShardedIndex.load(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(OSError, match="not valid JSON"):
        ShardedIndex.load(bad)
    manifest["shards"][1]["file"] = "gone.af"  # the kmeans directory, one shard file renamed
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OSError, match="shard 1: .*gone.af is missing"):
        ShardedIndex.load(path)
    manifest["shards"][1]["file"] = shard_file_name(1)
    manifest["shards"][1]["size"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OSError, match="shard 1: .* holds .* vectors, the manifest says"):
        ShardedIndex.load(path)
    manifest["shards"][1]["size"] -= 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    damaged = bytearray((path / shard_file_name(0)).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (path / shard_file_name(0)).write_bytes(bytes(damaged))
    with pytest.raises(ShardError, match="shard 0 .*OSError: .*shard-00000.af") as info:
        ShardedIndex.load(path)
    assert info.value.shard == 0


def test_hash_routing_is_stable_and_balanced():
    # Saved hash-partitioned collections route add/remove with this mapping: it must never change.
    assert hash_shards(np.arange(8), 3).tolist() == [1, 2, 1, 0, 1, 2, 2, 0]
    counts = np.bincount(hash_shards(np.arange(40_000), 4), minlength=4)
    assert counts.min() > 9_600 and counts.max() < 10_400


def test_build_checks_its_arguments(data):
    x, _ = data
    with pytest.raises(ValueError, match="partition"):
        ShardedIndex.build(x, num_shards=2, make_index=lambda: af.FlatIndex(DIM), partition="range")
    with pytest.raises(TypeError, match="vector index"):
        ShardedIndex.build(x, num_shards=2, make_index=lambda: af.MinHashLSH())
    with pytest.raises(ValueError, match="num_shards"):
        ShardedIndex.build(x, num_shards=0, make_index=lambda: af.FlatIndex(DIM))
    with pytest.raises(ValueError, match=f"\\[n, {DIM + 1}\\]"):
        ShardedIndex.build(x, num_shards=2, make_index=lambda: af.FlatIndex(DIM + 1))
    with pytest.raises(ValueError, match="duplicates"):
        ShardedIndex.build(x[:3], ids=[1, 1, 2], num_shards=2, make_index=lambda: af.FlatIndex(DIM))


def _search_until_back(index, q):
    """Search until the call succeeds: (ids, warnings of the successful call, errors of the failed ones)."""
    errors = []
    for _ in range(150):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ids, _ = index.search(q, 10)
            return ids, caught, errors
        except ShardError as exc:  # Ray is still restarting the actor
            errors.append(str(exc))
            time.sleep(0.1)
    raise AssertionError(f"the index did not come back: {errors[-3:]}")


def test_a_shard_killed_mid_search_is_reported_and_recovers(data, tmp_path):
    x, q = data
    single = af.FlatIndex(DIM)
    single.add(x)
    want_ids, _ = single.search(q, 10)

    slept = []

    def slow_filter(_id: int) -> bool:  # defined here so that Ray ships it by value to the actors
        if not slept:  # the first call of each shard's search takes 3 s
            slept.append(True)
            time.sleep(3.0)
        return True

    with ShardedIndex.build(x, num_shards=2, make_index=lambda: af.FlatIndex(DIM)) as sharded:
        sharded.save(tmp_path / "saved")
        victim = sharded.actors[1]
        killer = threading.Timer(0.5, lambda: ray.kill(victim, no_restart=False))
        killer.start()
        # The callable filter makes each shard's search take 3 s, so the kill lands mid-call.
        with pytest.raises(ShardError, match="shard 1 failed during search") as info:
            sharded.search(q[:1], 10, filter=slow_filter)
        killer.join()
        assert info.value.shard == 1
        # Ray restarts the actor, which reloads shard 1 from the saved file: the answers are whole again.
        got_ids, caught, errors = _search_until_back(sharded, q)
        assert all("shard 1" in e and "reloads" in e for e in errors), errors  # calls during the restart
        assert any(issubclass(w.category, ShardRestartedWarning) and "shard 1 was restarted" in str(w.message)
                   for w in caught)
        np.testing.assert_array_equal(got_ids, want_ids)

        # A change made after the save cannot come back from the file: said loudly.
        sharded.add(x[:5], ids=np.arange(5000, 5005))
        changed = [s for s in range(2) if any(int(i) in set(range(5000, 5005)) for i in ray.get(sharded.actors[s].ids.remote())[1])]
        ray.kill(sharded.actors[changed[0]], no_restart=False)
        got_ids, _, errors = _search_until_back(sharded, q)
        # Reported (calls made while Ray is still restarting the actor each fail and say so again).
        assert errors and all("changes made to it since that save are lost" in e for e in errors), errors
        np.testing.assert_array_equal(got_ids, want_ids)  # back to the saved state, without the 5 new ids

    # A loaded collection's actors were created with their file: a restarted one reloads it by itself.
    with ShardedIndex.load(tmp_path / "saved", mmap=True) as loaded:
        ray.kill(loaded.actors[0], no_restart=False)
        got_ids, caught, errors = _search_until_back(loaded, q)
        assert all("shard 0" in e and "reloads" in e for e in errors), errors
        assert any(issubclass(w.category, ShardRestartedWarning) and "shard 0" in str(w.message) for w in caught)
        np.testing.assert_array_equal(got_ids, want_ids)
        info = ray.get(loaded.actors[0].info.remote())
        assert info["restarted"] and info["source"] == str(tmp_path / "saved" / shard_file_name(0))


def test_a_never_saved_shard_that_restarts_reports_its_data_lost(data):
    x, q = data
    with ShardedIndex.build(x[:500], num_shards=2, make_index=lambda: af.FlatIndex(DIM)) as sharded:
        ray.kill(sharded.actors[0], no_restart=False)
        with pytest.raises(ShardError, match="shard 0") as info:
            for _ in range(150):
                try:
                    sharded.search(q, 5)
                except ShardError as exc:
                    if "never saved" in str(exc) and "lost" in str(exc) and "restarted" in str(exc):
                        raise
                time.sleep(0.1)
        assert info.value.shard == 0


def test_search_dataset_matches_direct_search(data, tmp_path):
    x, q = data
    index = af.HNSWIndex(DIM, M=8, ef_construction=40)
    index.add(x)
    want = index.search(q, 5, ef=32)
    index.save(tmp_path / "index.af")
    flat = af.FlatIndex(DIM)
    flat.add(x)
    want_flat = flat.search(q, 5)
    ds = ray.data.from_items([{"row": i, "embedding": v} for i, v in enumerate(q)], override_num_blocks=2)
    with ShardedIndex.build(x, num_shards=2, make_index=lambda: af.FlatIndex(DIM)) as sharded:
        sharded.save(tmp_path / "sharded")
        # Three kinds of source in one pipeline (one Ray Data run, as each run costs seconds here): an
        # index file, a saved sharded directory, and the live sharded index's actors.
        searched = search_dataset(ds, str(tmp_path / "index.af"), 5, batch_size=32, ef=32)
        searched = search_dataset(searched, tmp_path / "sharded", 5, batch_size=64, ids_column="nn",
                                  distances_column="nn_dist")
        searched = search_dataset(searched, sharded, 5, ids_column="live", distances_column="live_dist", concurrency=1)
        by_row = sorted(searched.take_all(), key=lambda r: r["row"])
    np.testing.assert_array_equal(np.stack([r["neighbor_ids"] for r in by_row]), want[0])
    np.testing.assert_array_equal(np.stack([r["neighbor_distances"] for r in by_row]), want[1])
    for column in ("nn", "live"):
        np.testing.assert_array_equal(np.stack([r[column] for r in by_row]), want_flat[0])
        np.testing.assert_array_equal(np.stack([r[column + "_dist"] for r in by_row]), want_flat[1])

    with pytest.raises(OSError, match="does not exist"):
        search_dataset(ds, tmp_path / "nowhere.af", 5)
    with pytest.raises(TypeError, match="ray.data.Dataset"):
        search_dataset(q, index, 5)


def test_build_from_a_dataset_with_ids(data):
    x, q = data
    ids = np.arange(len(x)) * 3 + 7
    ds = ray.data.from_items([{"key": int(i), "embedding": v} for i, v in zip(ids, x)], override_num_blocks=3)
    single = af.FlatIndex(DIM)
    single.add(x, ids)
    with ShardedIndex.build(ds, num_shards=2, partition="kmeans", id_column="key",
                            make_index=lambda: af.FlatIndex(DIM)) as sharded:
        assert sorted(sharded.ids().tolist()) == ids.tolist()
        np.testing.assert_array_equal(sharded.search(q, 10)[0], single.search(q, 10)[0])


def _corpus(seed: int):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    docs = [[vocab[j] for j in rng.integers(0, len(vocab), 30)] for _ in range(300)]
    for i in range(0, 300, 5):  # near-duplicates: a few tokens changed
        d = list(docs[i])
        d[rng.integers(0, 30)] = "changed"
        docs.append(d)
    docs.append(list(docs[7]))  # an exact copy
    docs.append([])  # two empty documents are duplicates of each other
    docs.append([])
    return docs


@given(
    seed=st.integers(0, 2**32 - 1),
    threshold=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]),
    num_perm=st.sampled_from([16, 64, 128]),
    verify=st.booleans(),
)
def test_bucket_keys_verification_and_union_find_reproduce_af_dedup(seed, threshold, num_perm, verify):
    # The distributed path's three steps, run here without Ray Data: buckets by band key, pairs
    # verified inside each bucket, union-find over the surviving pairs.
    rng = np.random.default_rng(seed)
    docs = [[f"t{j}" for j in rng.integers(0, 12, rng.integers(0, 8))] for _ in range(60)]
    want = af.dedup(docs, threshold=threshold, num_perm=num_perm, verify=verify)
    sigs = af.minhash_signatures(docs, num_perm=num_perm)
    lsh = af.MinHashLSH(threshold=threshold, num_perm=num_perm, verify=verify)
    cut = (lsh.min_matches - 0.5) / num_perm if verify else threshold
    keys = band_keys(sigs, lsh.bands, lsh.rows)
    buckets: dict = {}
    for doc, row in enumerate(keys):
        for key in row.tolist():
            buckets.setdefault(key, []).append(doc)
    first, second = [], []
    for members in buckets.values():
        if len(members) > 1:
            ids = np.array(members[::-1], dtype=np.int64)  # any order within a bucket
            pairs = verified_pairs(ids, sigs[ids], cut)
            first.append(pairs["a"])
            second.append(pairs["b"])
    got = groups_from_pairs(np.concatenate(first), np.concatenate(second)) if first else []
    assert got == want


def test_distributed_dedup_equals_af_dedup():
    docs = _corpus(5)
    want = af.dedup(docs, threshold=0.7)
    assert len(want) > 50
    # One Ray Data run (each costs seconds): a dataset with its own ids gives af.dedup's groups, named
    # by those ids. (A list of documents goes through the same path with ids 0..n-1.)
    ds = ray.data.from_items([{"doc_id": 1000 + i, "tokens": d} for i, d in enumerate(docs)], override_num_blocks=3)
    got = dedup(ds, threshold=0.7, column="tokens", id_column="doc_id")
    assert got == [[1000 + i for i in g] for g in want]
    with pytest.raises(ValueError, match="no column"):
        dedup(ds, column="text")
    assert dedup([], threshold=0.7) == []


@pytest.mark.parametrize("name", ["annforge.distributed.sharded", "annforge.distributed.data"])
def test_docstring_examples(name: str) -> None:
    """The distributed modules' docstring examples, on this module's cluster (tests/test_docs.py runs the
    other modules' examples; their own ``ray.init(..., ignore_reinit_error=True)`` reuses the cluster)."""
    import doctest
    import importlib

    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"
