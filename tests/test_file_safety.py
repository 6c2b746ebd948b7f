"""Files that load are safe to use, and the error paths found by fuzzing and by hand (issue 15).

Crafted files are re-sealed with valid checksums (tools/fuzz_files.py parses and writes the format), so
each test reaches the section parser it targets rather than stopping at a checksum.
"""

from __future__ import annotations

import glob
import os
import pickle
import struct
import subprocess
import sys
from typing import Any, Callable, Dict

import numpy as np
import pytest

import annforge as af

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import fuzz_files  # noqa: E402

CORPUS = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "fuzz_corpus", "*.af")))
DIM = 8
INT64_MAX = 2**63 - 1


def _x(n: int, seed: int = 0, dim: int = DIM, normalise: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _trained(family: str, n: int = 0) -> Any:
    """An empty (n=0) or populated index of each vector family, trained where the family needs it."""
    if family == "flat":
        index = af.FlatIndex(DIM)
    elif family.startswith("hnsw"):
        index = af.HNSWIndex(DIM, M=4, storage=family.split("_")[1])
    elif family == "ivfpq":
        index = af.IVFPQIndex(DIM, 4, 4, nbits=4)
        index.train(_x(200, 1), num_threads=1)
    elif family == "ivf_rabitq":
        index = af.IVFRaBitQIndex(DIM, 4, bits=2)
        index.train(_x(200, 1), num_threads=1)
    elif family == "ivfpq_opq":
        index = af.IVFPQIndex(DIM, 4, 4, nbits=4, opq=True)
        index.train(_x(200, 1), num_threads=1)
    else:
        index = af.ScaNNIndex(DIM, 4, training_sample_size=200)
        index.train(_x(200, 1, normalise=True), num_threads=1)
    if n:
        index.add(_x(n, 2, normalise=family == "scann"))
    return index


VECTOR_FAMILIES = ["flat", "hnsw_f32", "hnsw_f16", "hnsw_sq8", "hnsw_rabitq", "ivfpq", "ivf_rabitq", "scann"]


def _patch(data: bytes, tag: bytes, edit: Callable[[bytearray], None]) -> bytes:
    """The file with one section edited in place, re-sealed with valid checksums."""
    f = fuzz_files.parse(data)
    for t, payload in f.sections:
        if t == tag:
            edit(payload)
            return fuzz_files.seal(f)
    raise KeyError(tag)


def _refused(cls: Any, data: bytes, tmp_path, match: str) -> None:
    path = os.fspath(tmp_path / "crafted.af")
    with open(path, "wb") as fh:
        fh.write(data)
    for load in (lambda: af.load(path), lambda: af.load(path, mmap=True), lambda: cls.from_bytes(data)):
        with pytest.raises(OSError, match=match):
            load()


# -- the fuzz tool itself ------------------------------------------------------------------------------


def test_fuzz_tool_checksum_matches_the_engine() -> None:
    data = _trained("flat", 10).to_bytes()
    f = fuzz_files.parse(data)  # raises when a section checksum differs
    assert fuzz_files.seal(f) == data  # offsets, padding and header checksum too


@pytest.mark.sanitize
def test_fuzz_smoke_every_family(tmp_path) -> None:
    # A few hundred re-sealed mutations across every family, each loaded three ways and used; the full
    # run (>= 2000 per family) is `python tools/fuzz_files.py --cases 2000`.
    out = tmp_path / "summary.json"
    cases = 24 if "asan" not in os.environ.get("LD_PRELOAD", "") else 10
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "fuzz_files.py"), "--cases", str(cases), "--seed", "7",
         "--corpus", os.fspath(tmp_path / "corpus"), "--json", os.fspath(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    summary = json.loads(out.read_text())
    assert set(summary["families"]) == set(fuzz_files.FAMILIES)
    for family, row in summary["families"].items():
        assert row["cases"] == cases and row["failures"] == 0, (family, row)
    # The mutations reach the parsers: some files load, many are refused, across all families.
    assert sum(r["loaded"] for r in summary["families"].values()) > 0
    assert sum(r["refused"] for r in summary["families"].values()) > 0


def test_fuzz_tool_isolates_crashes_and_hangs(tmp_path) -> None:
    # A crash and a hang injected into a batch: the tool reports exactly those cases, runs every other
    # case, and saves both files to the corpus.
    out = tmp_path / "summary.json"
    env = dict(os.environ, ANNFORGE_FUZZ_INJECT="hang:2,crash:7")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "fuzz_files.py"), "--families", "flat", "--cases", "10",
         "--batch", "4", "--case-timeout", "1", "--startup-allowance", "6", "--corpus", os.fspath(tmp_path / "corpus"), "--json", os.fspath(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    import json

    row = json.loads(out.read_text())["families"]["flat"]
    assert row["cases"] == 10 and row["failures"] == 2, row
    assert row["refused"] + row["loaded"] + row["loaded_then_value_error"] == 8
    assert sorted(os.listdir(tmp_path / "corpus")) == ["flat-2.af", "flat-2.af.txt", "flat-7.af", "flat-7.af.txt"]
    assert "crash (signal 11)" in (tmp_path / "corpus" / "flat-7.af.txt").read_text()
    assert "hang" in (tmp_path / "corpus" / "flat-2.af.txt").read_text()


@pytest.mark.sanitize
@pytest.mark.parametrize("path", CORPUS, ids=[os.path.basename(p) for p in CORPUS])
def test_fuzz_corpus_case_is_safe(path: str, tmp_path) -> None:
    # Files the fuzzer once crashed on (or that raised MemoryError): refused, or loaded and usable.
    family = os.path.basename(path).rsplit("-", 1)[0]
    with open(path, "rb") as fh:
        outcome = fuzz_files.run_case(fh.read(), family, os.fspath(tmp_path))
    assert not outcome.startswith("FAIL"), outcome


# -- loaders check what searches trust ------------------------------------------------------------------


@pytest.mark.sanitize
@pytest.mark.parametrize("value", [3.4e38, float("nan"), 2.0])
def test_opq_rotation_must_be_orthonormal(tmp_path, value: float) -> None:
    data = _trained("ivfpq_opq", 50).to_bytes()

    def edit(p: bytearray) -> None:
        if value == 2.0:  # finite but a scaled matrix: not a rotation
            r = np.frombuffer(bytes(p), np.float32) * 2
            p[:] = r.tobytes()
        else:
            for i in range(0, len(p), 4):
                struct.pack_into("<f", p, i, value)

    crafted = _patch(data, b"ROTM", edit)
    _refused(af.IVFPQIndex, crafted, tmp_path, "rotation is not orthonormal|non-finite")


@pytest.mark.sanitize
@pytest.mark.parametrize("family,tag", [("ivfpq", b"CENT"), ("ivfpq", b"PQCB"), ("scann", b"CENT"), ("scann", b"AHCB")])
def test_huge_centres_and_codebooks_are_refused(tmp_path, family: str, tag: bytes) -> None:
    # The MemoryError / heap corruption: one huge finite value made every distance overflow.
    index = _trained(family, 40)
    data = index.to_bytes()
    crafted = _patch(data, tag, lambda p: struct.pack_into("<f", p, 0, -3.4e38))
    _refused(type(index), crafted, tmp_path, "squared norm above|not finite")


@pytest.mark.sanitize
def test_ivf_rabitq_codes_must_match_their_records(tmp_path) -> None:
    # The fast-scan nibbles (CODE) are the records' sign codes: a nibble edited on its own is refused.
    data = _trained("ivf_rabitq", 40).to_bytes()

    def flip(b: bytearray) -> None:
        b[0] ^= 0x01

    _refused(af.IVFRaBitQIndex, _patch(data, b"CODE", flip), tmp_path, "fast-scan codes do not match")


@pytest.mark.sanitize
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e38])
def test_ivf_rabitq_factors_must_be_finite(tmp_path, value: float) -> None:
    index = af.IVFRaBitQIndex(DIM, 4, bits=1, refine=None)  # payload = the records alone
    index.train(_x(200, 1), num_threads=1)
    index.add(_x(20, 2))
    data = index.to_bytes()
    record = 8 + 4 * 4  # one 64-bit sign plane, then 4 float factors

    def poison(b: bytearray) -> None:
        struct.pack_into("<f", b, 8 + 4, value)  # entry 0's |r| / a1

    assert len(fuzz_files.parse(data).sections) and record == index._impl.code_bytes - 8 - 16
    _refused(af.IVFRaBitQIndex, _patch(data, b"REFV", poison), tmp_path, "factors are not finite")


@pytest.mark.parametrize("family", ["ivfpq", "scann"])
def test_untrained_index_is_neither_saved_nor_loaded(tmp_path, family: str) -> None:
    untrained = af.IVFPQIndex(DIM, 4, 4) if family == "ivfpq" else af.ScaNNIndex(DIM, 4)
    for write in (lambda: untrained.save(os.fspath(tmp_path / "u.af")), untrained.to_bytes,
                  lambda: pickle.dumps(untrained)):
        with pytest.raises(ValueError, match="not trained"):
            write()
    assert not os.path.exists(tmp_path / "u.af")
    # A trained file whose flag says "not trained" (offset 50 in both metadata layouts) is refused.
    index = _trained(family, 20)
    crafted = _patch(index.to_bytes(), b"META", lambda p: p.__setitem__(50, 0))
    _refused(type(index), crafted, tmp_path, "not trained")


@pytest.mark.sanitize
def test_flat_norms_must_match_the_vectors(tmp_path) -> None:
    data = _trained("flat", 20).to_bytes()
    crafted = _patch(data, b"NRMS", lambda p: struct.pack_into("<f", p, 4, 1e30))
    _refused(af.FlatIndex, crafted, tmp_path, "norm of row 1")
    crafted = _patch(data, b"VECS", lambda p: struct.pack_into("<f", p, 8, float("nan")))
    _refused(af.FlatIndex, crafted, tmp_path, "NaN or infinity")


@pytest.mark.sanitize
@pytest.mark.parametrize("storage", ["f32", "f16", "sq8"])
def test_hnsw_non_finite_vectors_are_refused(tmp_path, storage: str) -> None:
    index = _trained(f"hnsw_{storage}", 20)
    data = index.to_bytes()
    if storage == "sq8":
        crafted = _patch(data, b"EXAC", lambda p: struct.pack_into("<f", p, 12, float("inf")))
    else:
        # The vector sits at the end of each level-0 record: patch the last value of record 0.
        record_bytes = len(fuzz_files.parse(data).sections[1][1]) // 20
        width = 4 if storage == "f32" else 2
        fmt = "<f" if storage == "f32" else "<H"
        value = float("nan") if storage == "f32" else 0x7C00
        crafted = _patch(data, b"REC1", lambda p: struct.pack_into(fmt, p, record_bytes - width, value))
    _refused(af.HNSWIndex, crafted, tmp_path, "NaN or infinity")


# -- empty sq8 HNSW ------------------------------------------------------------------------------------


@pytest.mark.sanitize
def test_empty_sq8_hnsw_searches_and_round_trips(tmp_path) -> None:
    index = af.HNSWIndex(16, storage="sq8")
    ids, dist = index.search(np.ones((2, 16), np.float32), k=3)
    assert ids.tolist() == [[-1] * 3] * 2 and np.isinf(dist).all()
    path = os.fspath(tmp_path / "e.af")
    index.save(path)
    copies = [af.HNSWIndex.from_bytes(index.to_bytes()), af.load(path), af.load(path, mmap=True),
              pickle.loads(pickle.dumps(index))]
    x = _x(30, 3, dim=16)
    for copy in copies:
        assert copy.storage == "sq8" and len(copy) == 0
        assert copy.search(np.ones(16), 2)[0].tolist() == [[-1, -1]]
        copy.add(x)  # the quantizer is trained by the first add, as for a fresh index
        assert copy.search(x[:5], 1)[0][:, 0].tolist() == [0, 1, 2, 3, 4]
    # The same after every vector was removed (trained quantizer, no live vector).
    index.add(x)
    index.remove(np.arange(30))
    assert index.search(x[:1], 2)[0].tolist() == [[-1, -1]]
    assert len(af.HNSWIndex.from_bytes(index.to_bytes())) == 0


# -- ids, k and filters --------------------------------------------------------------------------------


@pytest.mark.sanitize
@pytest.mark.parametrize("family", VECTOR_FAMILIES)
def test_automatic_ids_stop_cleanly_at_int64_max(family: str) -> None:
    index = _trained(family)
    scann = family == "scann"
    assert index.add(_x(1, 4, normalise=scann), ids=[INT64_MAX]).tolist() == [INT64_MAX]
    for attempt in range(2):  # a refused call changes nothing, so the second one is refused the same way
        with pytest.raises(ValueError, match="automatic id.*int64"):
            index.add(_x(3, 5, normalise=scann))
        assert len(index) == 1 and index.ids().tolist() == [INT64_MAX]
    # Explicit ids still work, and the exhausted id counter survives a round trip.
    assert index.add(_x(2, 6, normalise=scann), ids=[5, 6]).tolist() == [5, 6]
    copy = type(index).from_bytes(index.to_bytes())
    with pytest.raises(ValueError, match="automatic id"):
        copy.add(_x(1, 7, normalise=scann))
    assert sorted(copy.ids().tolist()) == [5, 6, INT64_MAX]
    # Up to the limit exactly: id 2**63 - 2 leaves one automatic id.
    fresh = _trained(family)
    fresh.add(_x(1, 4, normalise=scann), ids=[INT64_MAX - 1])
    assert fresh.add(_x(1, 5, normalise=scann)).tolist() == [INT64_MAX]
    with pytest.raises(ValueError, match="automatic id"):
        fresh.add(_x(1, 6, normalise=scann))


@pytest.mark.parametrize("family", VECTOR_FAMILIES)
def test_huge_k_is_a_value_error_before_allocation(family: str) -> None:
    index = _trained(family, 10)
    q = _x(100_000, 8, normalise=family == "scann")  # 100k x (2**24 + 1) results would need 20 TB
    for k in (10**9, 2**24 + 1, 10**30, np.uint64(2**64 - 1)):
        with pytest.raises(ValueError, match="k must be <="):
            index.search(q, k)
    for k in (0, -(10**30)):
        with pytest.raises(ValueError, match="k must be >= 1"):
            index.search(q[:1], k)


@pytest.mark.sanitize
@pytest.mark.parametrize("family", VECTOR_FAMILIES)
def test_filter_returning_non_bool_is_a_type_error(family: str) -> None:
    index = _trained(family, 30)
    q = _x(2, 9, normalise=family == "scann")

    def odd_filter(i: int) -> Any:
        return "yes"

    with pytest.raises(TypeError, match="filter.*odd_filter.*must return a bool.*str"):
        index.search(q, 5, filter=odd_filter)
    with pytest.raises(TypeError, match="must return a bool.*NoneType"):
        index.search(q, 5, filter=lambda i: None)
    mask = np.zeros(30, dtype=bool)
    mask[::3] = True
    for accepted in (lambda i: bool(mask[i]), lambda i: mask[i]):  # bool and numpy.bool_
        found, _ = index.search(q, 5, filter=accepted)
        assert all(i == -1 or i % 3 == 0 for i in found.ravel().tolist())
    assert len(index) == 30


# -- temporary files of interrupted saves --------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within the test is vanishingly rare)


@pytest.mark.parametrize("trigger", ["save", "load", "mmap"])
def test_stale_temporary_files_are_removed(tmp_path, trigger: str) -> None:
    path = tmp_path / "idx.af"
    index = _trained("flat", 5)
    index.save(os.fspath(path))
    dead = tmp_path / f"idx.af.tmp-{_dead_pid()}"
    alive = tmp_path / f"idx.af.tmp-{os.getppid()}"  # a live process: maybe a save in progress
    own = tmp_path / f"idx.af.tmp-{os.getpid()}"  # this process (another thread could be saving)
    other = tmp_path / f"other.af.tmp-{_dead_pid()}"  # another file's
    odd = tmp_path / "idx.af.tmp-12ab"
    for p in (dead, alive, own, other, odd):
        p.write_bytes(b"x" * 1000)
    if trigger == "save":
        index.save(os.fspath(path))
    else:
        af.load(os.fspath(path), mmap=trigger == "mmap")
    assert not dead.exists()
    assert alive.exists() and other.exists() and odd.exists()
    if trigger != "save":  # (a save of this process writes and renames that very name)
        assert own.exists()


@pytest.mark.sanitize
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("family", ["flat", "hnsw", "hnsw_f16", "ivfpq", "scann"])
def test_add_refuses_rows_the_loader_would_refuse(family: str, metric: str) -> None:
    """A row whose squared norm overflows the distances (> 1e37) was accepted by add(), saved, and then the
    file was refused at load: a save that lost everything. add() now refuses it under l2 / ip and changes
    nothing; cosine rows are normalised before storing, so they are kept and survive the round trip."""
    dim = 8
    rng = np.random.default_rng(5)
    base = rng.standard_normal((300, dim)).astype(np.float32)
    if family == "flat":
        index = af.FlatIndex(dim, metric=metric)
    elif family == "hnsw":
        index = af.HNSWIndex(dim, metric=metric)
    elif family == "hnsw_f16":
        index = af.HNSWIndex(dim, metric=metric, storage="f16")
    elif family == "ivfpq":
        index = af.IVFPQIndex(dim, nlist=4, m=4, nbits=4, metric=metric)
        index.train(base)
    else:
        if metric == "l2":
            pytest.skip("ScaNNIndex is for ip / cosine")
        index = af.ScaNNIndex(dim, num_leaves=4, metric=metric)
        index.train(base)
    index.add(base)
    huge = np.full((2, dim), 3e18, np.float32)  # squared norm 7.2e37 (finite in float32)
    if metric == "cosine":
        if family == "hnsw_f16":
            return  # f16 storage has its own range rules
        index.add(huge)
        assert len(type(index).from_bytes(index.to_bytes())) == 302
        return
    before = index.to_bytes()
    with pytest.raises(ValueError, match="squared norm"):
        index.add(huge)
    assert index.to_bytes() == before
    assert len(type(index).from_bytes(before)) == 300


@pytest.mark.errors
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("family", ["flat", "hnsw", "ivfpq", "scann"])
def test_search_refuses_queries_whose_distances_overflow(family: str, metric: str) -> None:
    """A query with a squared norm above 1e37 made every l2 / ip distance inf (or -inf): the search
    returned an arbitrary order as if it were a ranking. It is refused like a stored row would be;
    cosine queries are normalised first, so they still work."""
    dim = 8
    rng = np.random.default_rng(6)
    base = rng.standard_normal((300, dim)).astype(np.float32)
    if family == "flat":
        index = af.FlatIndex(dim, metric=metric)
    elif family == "hnsw":
        index = af.HNSWIndex(dim, metric=metric)
    elif family == "ivfpq":
        index = af.IVFPQIndex(dim, nlist=4, m=4, nbits=4, metric=metric)
        index.train(base)
    else:
        if metric == "l2":
            pytest.skip("ScaNNIndex is for ip / cosine")
        index = af.ScaNNIndex(dim, num_leaves=4, metric=metric)
        index.train(base)
    index.add(base)
    huge = np.full((1, dim), 3e18, np.float32)  # squared norm 7.2e37, finite in float32
    if metric == "cosine":
        ids, dist = index.search(huge, 5)
        assert np.isfinite(dist).all() and (ids >= 0).all()
        return
    with pytest.raises(ValueError, match="queries row 0 has a squared norm"):
        index.search(huge, 5)
    if family == "flat":
        with pytest.raises(ValueError, match="queries row 0 has a squared norm"):
            index.search_range(huge, 1.0)
