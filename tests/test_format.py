"""The shared file format: golden files, atomic save, mmap, and refusal of damaged or foreign files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import annforge as af
from annforge import _core

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_golden_flat_v1_still_loads() -> None:
    sys.path.insert(0, DATA)
    try:
        from make_golden import golden_vectors
    finally:
        sys.path.pop(0)
    for mmap in (False, True):
        index = af.load(os.path.join(DATA, "golden_flat_v1.af"), mmap=mmap)
        assert isinstance(index, af.FlatIndex)
        assert (index.dim, index.metric, len(index)) == (6, "l2", 38)
        expected_ids = [i for i in (np.arange(40) * 5 + 3).tolist() if i not in (8, 13)]
        assert sorted(index.ids().tolist()) == expected_ids
        x = golden_vectors()
        np.testing.assert_array_equal(index.reconstruct([3, 198]), x[[0, 39]])
        ids, dist = index.search(x[5], 1)
        assert ids.tolist() == [[28]] and dist.tolist() == [[0.0]]
        assert index.add(np.zeros((1, 6))).tolist() == [199]  # next id survived


@pytest.mark.parametrize("storage", ["f32", "f16", "sq8"])
def test_golden_hnsw_layouts_still_load(tmp_path, storage: str) -> None:
    # rec0: level-0 headers inside each record (the first layout, converted on load); rec1: headers in
    # their own section. Both files hold the same single-thread-built graph, so they must agree exactly.
    sys.path.insert(0, DATA)
    try:
        from make_golden import golden_hnsw_vectors
    finally:
        sys.path.pop(0)
    x = golden_hnsw_vectors()
    ids = np.arange(300) * 2
    removed = set(range(0, 60, 6))
    live = np.array([i for i in range(300) if ids[i] not in removed])
    results = []
    for layout in ("rec0", "rec1"):
        for mmap in (False, True):
            index = af.load(os.path.join(DATA, f"golden_hnsw_{storage}_{layout}.af"), mmap=mmap)
            assert isinstance(index, af.HNSWIndex) and index.storage == storage and index.M == 8
            assert len(index) == 290 and sorted(index.ids().tolist()) == ids[live].tolist()
            assert index._impl.unreachable_ids().size == 0
            found, dist = index.search(x[live], 1, ef=64)
            assert np.mean(found[:, 0] == ids[live]) >= 0.99
            results.append((found, dist, index.reconstruct(ids[live])))
            # still writable: removed slots are reused, and the result round-trips
            index.add(x[:5] + 0.5, ids=[1000, 1001, 1002, 1003, 1004])
            index.remove([2])
            path = tmp_path / f"{layout}_{mmap}.af"
            index.save(path)
            again = af.load(path)
            assert len(again) == 294 and 2 not in again and 1004 in again
            np.testing.assert_array_equal(again.search(x[:20], 3, ef=64)[0], index.search(x[:20], 3, ef=64)[0])
    for found, dist, rec in results[1:]:
        np.testing.assert_array_equal(found, results[0][0])
        np.testing.assert_array_equal(dist, results[0][1])
        np.testing.assert_array_equal(rec, results[0][2])
    if storage == "f32":
        np.testing.assert_array_equal(results[0][2], x[live])


@pytest.mark.parametrize("name, code_rotation", [("golden_hnsw_rabitq_rec1.af", "dense"),
                                                 ("golden_hnsw_rabitq_rec1_hadamard.af", "hadamard")])
def test_golden_quantized_hnsw_still_loads(tmp_path, name: str, code_rotation: str) -> None:
    # The quantized graph (storage="rabitq": RQCT and RQSC sections, neighbour codes inside REC1; the
    # first file predates the RQRT section, so its codes are read as dense-rotated).
    sys.path.insert(0, DATA)
    try:
        from make_golden import build_golden_hnsw, golden_hnsw_vectors
    finally:
        sys.path.pop(0)
    x = golden_hnsw_vectors()
    ids = np.arange(300) * 2
    live = np.array([i for i in range(300) if ids[i] not in set(range(0, 60, 6))])
    # The same single-thread build today must give the same graph, codes and answers as the file.
    fresh = build_golden_hnsw("rabitq", code_rotation)
    expected = fresh.search(x[live], 3, ef=32)
    for mmap in (False, True):
        index = af.load(os.path.join(DATA, name), mmap=mmap)
        assert index.storage == "rabitq" and index.rerank == "f32" and len(index) == 290
        assert index.code_rotation == code_rotation
        assert index._impl.code_blocks_in_sync()
        found, dist = index.search(x[live], 3, ef=32)
        assert np.mean(found[:, 0] == ids[live]) >= 0.99
        np.testing.assert_array_equal(found, expected[0])
        np.testing.assert_array_equal(dist, expected[1])
        np.testing.assert_array_equal(index.reconstruct(ids[live]), x[live])
        index.add(x[:5] + 0.5, ids=[1000, 1001, 1002, 1003, 1004])  # reuses removed slots
        assert index._impl.code_blocks_in_sync()
        index.save(tmp_path / "again.af")
        again = af.load(tmp_path / "again.af")
        np.testing.assert_array_equal(again.search(x[:20], 3, ef=64)[0], index.search(x[:20], 3, ef=64)[0])


def test_golden_ivf_rabitq_still_loads(tmp_path) -> None:
    # IVF-RaBitQ (file kind 8): rotation seed, centroids, sign nibbles, extended planes and factors, sq8 copy.
    sys.path.insert(0, DATA)
    try:
        from make_golden import build_golden_ivf_rabitq, golden_hnsw_vectors
    finally:
        sys.path.pop(0)
    x = golden_hnsw_vectors()
    ids = np.arange(300) * 3 + 1
    removed = set((np.arange(300)[::30] * 3 + 1).tolist())
    live = np.array([i for i in range(300) if ids[i] not in removed])
    expected = build_golden_ivf_rabitq().search(x[:40], 5, nprobe=8)  # the same one-thread build today
    for mmap in (False, True):
        index = af.load(os.path.join(DATA, "golden_ivf_rabitq_v1.af"), mmap=mmap)
        assert isinstance(index, af.IVFRaBitQIndex) and len(index) == len(live)
        assert sorted(index.ids().tolist()) == sorted(ids[live].tolist())
        found, dist = index.search(x[:40], 5, nprobe=8)
        np.testing.assert_array_equal(found, expected[0])
        np.testing.assert_array_equal(dist, expected[1])
        # Exhaustive probing with the sq8 copy finds each live row itself first (ip on these rows).
        top = index.search(x[live], 1, nprobe=8)[0][:, 0]
        exact = np.argmax(x[live] @ x[live].T, axis=1)
        assert np.mean(top == ids[live][exact]) >= 0.9
        index.add(x[:3] * 0.5, ids=[5000, 5001, 5002])
        index.save(tmp_path / "again.af")
        again = af.load(tmp_path / "again.af")
        np.testing.assert_array_equal(again.search(x[:20], 5, nprobe=8)[0], index.search(x[:20], 5, nprobe=8)[0])


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_identity(tmp_path, metric: str, mmap: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((777, 19)).astype(np.float32)
    index = af.FlatIndex(19, metric)
    index.add(x, ids=rng.permutation(5000)[:777])
    index.remove(index.ids()[:10])
    path = tmp_path / "index.af"
    index.save(path)
    assert sorted(os.listdir(tmp_path)) == ["index.af"]  # no temporary file left behind
    loaded = af.load(path, mmap=mmap)
    assert len(loaded) == len(index) and loaded.metric == metric
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    q = rng.standard_normal((20, 19)).astype(np.float32)
    for a, b in zip(index.search(q, 9), loaded.search(q, 9)):
        np.testing.assert_array_equal(a, b)
    # an mmap'd index is still fully usable: the first write copies the data out of the mapping
    loaded.add(x[:3], ids=[10_000, 10_001, 10_002])
    loaded.remove([int(index.ids()[0])])
    assert len(loaded) == len(index) + 2
    assert af.load(path).ids().tolist() == index.ids().tolist()  # the file itself is untouched


def test_mmap_does_not_copy_vectors(tmp_path) -> None:
    index = af.FlatIndex(256)
    index.add(np.ones((4000, 256), dtype=np.float32))
    path = tmp_path / "big.af"
    index.save(path)
    heap = af.load(path).memory_bytes()
    mapped = af.load(path, mmap=True).memory_bytes()
    assert mapped < heap


def test_overwrite_is_atomic_and_old_readers_keep_working(tmp_path) -> None:
    path = tmp_path / "idx.af"
    a = af.FlatIndex(3)
    a.add(np.eye(3))
    a.save(path)
    mapped = af.load(path, mmap=True)
    b = af.FlatIndex(3)
    b.add(np.ones((5, 3)))
    b.save(path)
    assert len(mapped) == 3 and mapped.search(np.eye(3)[0], 1)[0].tolist() == [[0]]
    assert len(af.load(path)) == 5


@pytest.mark.errors
def test_save_to_missing_directory_raises_oserror(tmp_path) -> None:
    index = af.FlatIndex(2)
    with pytest.raises(OSError, match="cannot create"):
        index.save(tmp_path / "no" / "such" / "dir.af")


@pytest.mark.errors
def test_named_problems(tmp_path) -> None:
    index = af.FlatIndex(8)
    index.add(np.random.default_rng(1).standard_normal((100, 8)))
    data = index.to_bytes()
    with pytest.raises(OSError, match="truncated"):
        af.FlatIndex.from_bytes(data[: len(data) - 100])
    with pytest.raises(OSError, match="truncated"):
        af.FlatIndex.from_bytes(data[:40])
    with pytest.raises(OSError, match="trailing"):
        af.FlatIndex.from_bytes(data + b"\0" * 64)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(OSError, match="checksum"):
        af.FlatIndex.from_bytes(bytes(flipped))
    header = bytearray(data)
    header[9] ^= 1  # format version byte
    with pytest.raises(OSError, match="corrupted header"):
        af.FlatIndex.from_bytes(bytes(header))
    with pytest.raises(OSError, match="not an annforge"):
        af.FlatIndex.from_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(OSError, match="not an annforge"):
        pickle.loads(pickle.dumps(index)).__setstate__({"annforge": b"garbage"})


def test_load_names_a_damaged_section_after_reading_the_kind_from_the_header(tmp_path) -> None:
    # af.load() reads the kind from the header (checked by the header checksum only) and then loads the
    # file, which verifies every payload: damage past the header must still be refused by the load.
    index = af.HNSWIndex(8, M=8)
    index.add(np.random.default_rng(3).standard_normal((200, 8)))
    path = str(tmp_path / "h.af")
    index.save(path)
    data = bytearray(open(path, "rb").read())
    data[len(data) - 200] ^= 0x04  # inside the last section's payload
    with open(path, "wb") as f:
        f.write(bytes(data))
    assert _core.file_kind(path) == "HNSWIndex"
    for mmap in (False, True):
        with pytest.raises(OSError, match="corrupted section '.*' \\(checksum mismatch\\)"):
            af.load(path, mmap=mmap)
    # A damaged header is named by file_kind itself.
    data = bytearray(index.to_bytes())
    data[17] ^= 0x01  # the kind field, covered by the header checksum
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(OSError, match="corrupted header"):
        _core.file_kind(path)
    with pytest.raises(OSError, match="corrupted header"):
        af.load(path)
    with pytest.raises(OSError, match="truncated"):
        with open(path, "wb") as f:
            f.write(index.to_bytes()[:50])
        af.load(path)


FUZZ_SCRIPT = textwrap.dedent(
    """
    import os, sys, random
    import numpy as np
    import annforge as af

    rng = np.random.default_rng(int(sys.argv[1]))
    random.seed(int(sys.argv[1]))
    index = af.FlatIndex(5, "cosine")
    index.add(rng.standard_normal((60, 5)), ids=rng.permutation(1000)[:60])
    data = index.to_bytes()
    path = sys.argv[2]
    detected = 0
    for trial in range(int(sys.argv[3])):
        buf = bytearray(data)
        mode = trial % 4
        if mode == 0:      # one bit flip anywhere
            pos = random.randrange(len(buf)); buf[pos] ^= 1 << random.randrange(8)
        elif mode == 1:    # a burst of random bytes
            pos = random.randrange(len(buf))
            for i in range(pos, min(len(buf), pos + random.randrange(1, 16))):
                buf[i] = random.randrange(256)
        elif mode == 2:    # truncation
            buf = buf[: random.randrange(len(buf))]
        else:              # header fields and directory entries rewritten
            pos = random.randrange(0, min(len(buf), 200)); buf[pos] = random.randrange(256)
        if bytes(buf) == data:  # a random byte can equal the old one: nothing changed
            detected += 1
            continue
        try:
            if trial % 3 == 0:
                with open(path, "wb") as f:
                    f.write(bytes(buf))
                loaded = af.load(path, mmap=bool(trial % 2))
            else:
                loaded = af.FlatIndex.from_bytes(bytes(buf))
        except OSError:
            detected += 1
            continue
        # accepted: must be fully usable (only possible if the bytes were unchanged in effect)
        loaded.search(rng.standard_normal((2, 5)), 3)
    print("detected", detected)
    """
)


@pytest.mark.parametrize("seed", [1, 2])
def test_corruption_fuzz_never_crashes(tmp_path, seed: int) -> None:
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, str(script), str(seed), str(tmp_path / "f.af"), "500"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"fuzz subprocess died ({proc.returncode}):\n{proc.stderr[-3000:]}"
    detected = int(proc.stdout.split()[-1])
    assert detected == 500, "every mutation of a checksummed file must be refused"


@pytest.mark.parametrize("family", ["hnsw", "ivfpq", "scann"])
def test_sq8_with_a_constant_dimension_round_trips(family: str) -> None:
    """One sq8 codec for all families: a dimension constant in training gets step 1, not 0.

    IVF-PQ and ScaNN used to store scale 0 for it, which their own loaders refuse, so such an index
    saved a file it could not load.
    """
    rng = np.random.default_rng(11)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    x[:, 3] = 0.5
    index = {
        "hnsw": lambda: af.HNSWIndex(16, "ip", storage="sq8", M=8, ef_construction=32),
        "ivfpq": lambda: af.IVFPQIndex(16, 4, 4, refine="sq8", metric="ip"),
        "scann": lambda: af.ScaNNIndex(16, num_leaves=4, reorder="sq8", metric="ip"),
    }[family]()
    if family != "hnsw":
        index.train(x)
    index.add(x)
    np.testing.assert_array_equal(index.reconstruct(np.arange(10))[:, 3], 0.5)  # exact at the trained value
    loaded = type(index).from_bytes(index.to_bytes())
    q = rng.normal(size=(20, 16)).astype(np.float32)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)
