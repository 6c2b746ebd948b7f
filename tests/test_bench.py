"""The benchmark tool: vector file formats, dataset loaders, recall figures and an end-to-end quick run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import annforge as af
from annforge.bench import main as bench_main
from annforge.bench.datasets import default_dataset, ensure_ground_truth, load_files, load_hdf5
from annforge.bench.worker import recall_figures
from annforge.io_formats import read_bvecs, read_fvecs, read_ivecs, write_bvecs, write_fvecs, write_ivecs


def test_vecs_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = rng.standard_normal((7, 5)).astype(np.float32)
    i = rng.integers(-1000, 1000, size=(4, 9)).astype(np.int32)
    b = rng.integers(0, 256, size=(3, 17)).astype(np.uint8)
    write_fvecs(tmp_path / "a.fvecs", f)
    write_ivecs(tmp_path / "a.ivecs", i)
    write_bvecs(tmp_path / "a.bvecs", b)
    np.testing.assert_array_equal(read_fvecs(tmp_path / "a.fvecs"), f)
    np.testing.assert_array_equal(read_ivecs(tmp_path / "a.ivecs"), i)
    np.testing.assert_array_equal(read_bvecs(tmp_path / "a.bvecs"), b)
    np.testing.assert_array_equal(read_fvecs(tmp_path / "a.fvecs", count=2), f[:2])
    # layout: int32 dim then the components, little-endian
    raw = (tmp_path / "a.fvecs").read_bytes()
    assert len(raw) == 7 * (4 + 5 * 4) and int.from_bytes(raw[:4], "little") == 5


def test_vecs_corrupt_raises(tmp_path: Path) -> None:
    write_fvecs(tmp_path / "a.fvecs", np.ones((3, 4), np.float32))
    raw = (tmp_path / "a.fvecs").read_bytes()
    (tmp_path / "t.fvecs").write_bytes(raw[:-3])
    with pytest.raises(OSError, match="record size"):
        read_fvecs(tmp_path / "t.fvecs")
    bad = bytearray(raw)
    bad[20:24] = (9).to_bytes(4, "little")  # second record claims dim 9
    (tmp_path / "b.fvecs").write_bytes(bytes(bad))
    with pytest.raises(OSError, match="dimension"):
        read_fvecs(tmp_path / "b.fvecs")
    with pytest.raises(ValueError):
        write_bvecs(tmp_path / "c.bvecs", np.array([[300]]))


def test_recall_figures_known_values() -> None:
    gt = np.array([[0, 1, 2, 3]])
    gt_dist = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    found = np.array([[0, 1, 9, -1]])
    # id 9 ties the 4th true distance: counts for the tolerant recall only
    found_dist = np.array([[0.1, 0.2, 0.4, np.inf]], np.float32)
    fig = recall_figures(found, gt, gt_dist, found_dist, 4)
    assert fig["recall"] == pytest.approx(0.5)
    assert fig["recall_tolerant"] == pytest.approx(0.75)


def test_default_dataset_deterministic_and_normalised() -> None:
    a, b = default_dataset(500, 20), default_dataset(500, 20)
    np.testing.assert_array_equal(a.base, b.base)
    np.testing.assert_allclose(np.linalg.norm(a.base, axis=1), 1.0, rtol=1e-5)
    assert a.base.shape == (500, 128) and a.metric == "ip"


def _brute(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _data(n: int = 600, nq: int = 30, dim: int = 12):
    rng = np.random.default_rng(5)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.standard_normal((nq, dim)).astype(np.float32)


def _results(out: Path):
    data = json.loads((out / "results.json").read_text())
    return {r["algo"]: r for r in data["results"]}, data


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_hdf5_dataset_benchmark(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    base, q = _data()
    gt = _brute(base, q, 10)
    with h5py.File(tmp_path / "tiny.hdf5", "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"], f["neighbors"] = base, q, gt
        f["distances"] = np.sqrt(np.sort(((q[:, None] - base[None]) ** 2).sum(-1), axis=1)[:, :10])
    ds = load_hdf5(str(tmp_path / "tiny.hdf5"))
    assert ds.metric == "l2"
    np.testing.assert_array_equal(ds.gt_ids, gt)
    algos = "annforge-flat" + (",hnswlib" if _has("hnswlib") else "")
    rc = bench_main(["--dataset", str(tmp_path / "tiny.hdf5"), "--algos", algos, "--out", str(tmp_path / "o"),
                     "--repeats", "1", "--latency-queries", "5"])
    assert rc == 0
    rows, data = _results(tmp_path / "o")
    assert rows["annforge-flat"]["recall"] == 1.0 and rows["annforge-flat"]["recall_tolerant"] == 1.0
    if "hnswlib" in rows:
        assert 0.5 < rows["hnswlib"]["recall"] <= 1.0
    assert data["meta"]["n"] == 600 and data["meta"]["k"] == 10


def test_fvecs_dataset_benchmark_with_computed_gt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNFORGE_CACHE", str(tmp_path / "cache"))
    base, q = _data(dim=8)
    write_fvecs(tmp_path / "b.fvecs", base)
    write_fvecs(tmp_path / "q.fvecs", q)
    ds = load_files(str(tmp_path / "b.fvecs"), str(tmp_path / "q.fvecs"), "l2")
    ids, _ = ensure_ground_truth(ds, 5)
    np.testing.assert_array_equal(ids, _brute(base, q, 5))
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1  # cached for the next run
    # a deliberately wrong ground-truth file: the Flat recall must show it
    true = _brute(base, q, 5)
    wrong = true.copy()
    wrong[:, 0] = (wrong[:, 0] + 1) % len(base)
    write_ivecs(tmp_path / "gt.ivecs", wrong)
    rc = bench_main(["--dataset", str(tmp_path / "b.fvecs"), "--queries", str(tmp_path / "q.fvecs"),
                     "--gt", str(tmp_path / "gt.ivecs"), "--k", "5", "--algos", "annforge-flat",
                     "--out", str(tmp_path / "o"), "--repeats", "1", "--latency-queries", "3"])
    assert rc == 0
    rows, _ = _results(tmp_path / "o")
    expected = np.mean([len(set(wrong[i]) & set(true[i])) / 5 for i in range(len(q))])
    assert rows["annforge-flat"]["recall"] == pytest.approx(expected)
    assert expected < 1.0


def test_quick_default_run_via_console_entry(tmp_path: Path) -> None:
    env = dict(os.environ, ANNFORGE_BENCH_QUICK="1")
    env["PYTHONPATH"] = str(Path(af.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "annforge.cli", "bench", "--algos", "annforge-flat,faiss-flat",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "recall@10" in proc.stdout
    rows, data = _results(tmp_path / "o")
    assert data["meta"]["n"] == 3000
    assert rows["annforge-flat"]["recall"] == 1.0
    csv_lines = (tmp_path / "o" / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,algo,params,recall") and len(csv_lines) == 1 + len(data["results"])
    if _has("matplotlib"):
        assert (tmp_path / "o" / "recall_qps.png").stat().st_size > 1000
    # --compare merges two runs into one table
    proc = subprocess.run([sys.executable, "-m", "annforge.bench", "--compare", str(tmp_path / "o" / "results.json"),
                           str(tmp_path / "o" / "results.json"), "--out", str(tmp_path / "c")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "c" / "compare.json").read_text())["results"]
    assert len(merged) == 2 * len(data["results"])


def test_toml_config_and_sweep_override(tmp_path: Path) -> None:
    pytest.importorskip("hnswlib")
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "default"\nquick = true\nalgos = ["hnswlib"]\nk = 5\nrepeats = 1\n'
                   '[sweep.hnswlib]\nef = [7, 50]\n[build.hnswlib]\nM = 8\n')
    assert bench_main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert sorted(r["params"]["ef"] for r in data["results"]) == [7, 50]
    assert all(r["build_params"]["M"] == 8 for r in data["results"]) and data["meta"]["k"] == 5
    # the command line wins over the file
    assert bench_main(["--config", str(cfg), "--sweep", "hnswlib.ef=12", "--out", str(tmp_path / "p")]) == 0
    data = json.loads((tmp_path / "p" / "results.json").read_text())
    assert [r["params"]["ef"] for r in data["results"]] == [12]


# ---- --workload minhash ------------------------------------------------------------------------------
def test_exact_pairs_matches_brute_force() -> None:
    from annforge.bench.datasets import exact_pairs, minhash_corpus

    sets = [frozenset(s) for s in minhash_corpus(150, 60, vocab=300, seed=3).sets]
    for t in (0.3, 0.5, 0.8, 1.0):
        brute = {(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))
                 if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= t}
        assert exact_pairs(sets, t) == brute
    assert len(exact_pairs(sets, 0.5)) > 20  # the corpus really has near-duplicates


def test_shingles() -> None:
    from annforge.bench.datasets import shingle_text

    assert shingle_text("the cat the dog", "word1") == ["the", "cat", "dog"]
    assert shingle_text("a b c d", "word3") == ["a b c", "b c d"]
    assert shingle_text("abcdef", "char5") == ["abcde", "bcdef"]
    with pytest.raises(ValueError):
        shingle_text("x", "line2")


def test_minhash_workload_on_hand_made_corpus(tmp_path: Path) -> None:
    # 30 documents of 30 private words (no overlap between them), 10 exact copies (J = 1) and 10 copies with
    # 3 words replaced (J = 27 / 33 = 0.818): the true pairs are known without computing anything.
    docs = [[f"d{d}w{w}" for w in range(30)] for d in range(30)]
    copies = [list(docs[d]) for d in range(10)]
    edited = [docs[d][3:] + [f"new{d}x{e}" for e in range(3)] for d in range(10, 20)]
    lines = docs + copies + edited
    (tmp_path / "docs.txt").write_text("\n".join(" ".join(doc) for doc in lines) + "\n")
    identical = {(d, 30 + d) for d in range(10)}
    near = {(d, 30 + d) for d in range(10, 20)}
    rc = bench_main(["--workload", "minhash", "--dataset", str(tmp_path / "docs.txt"), "--out", str(tmp_path / "o"),
                     "--repeats", "1", "--sweep", "annforge-minhash-lsh.threshold=0.5,0.9",
                     "--sweep", "datasketch-lsh.threshold=0.5,0.9"])
    assert rc == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["meta"]["workload"] == "minhash" and data["meta"]["n"] == 50
    rows = {(r["algo"], r["params"]["threshold"]): r for r in data["results"]}
    algos = ["annforge-minhash-lsh"] + (["datasketch-lsh"] if _has("datasketch") else [])
    assert set(rows) == {(a, t) for a in algos for t in (0.5, 0.9)}
    for algo in algos:
        low, high = rows[(algo, 0.5)], rows[(algo, 0.9)]
        assert low["truth_pairs"] == len(identical | near) and high["truth_pairs"] == len(identical)
        # disjoint vocabularies: no false candidates at 0.5; J = 0.818 pairs sit far above a 0.5 threshold
        assert low["recall"] == 1.0 and low["precision"] == 1.0 and low["candidate_pairs"] == 20
        # at 0.9 the identical copies are always found; the 0.818 pairs may or may not be candidates
        assert high["recall"] == 1.0 and 0.5 <= high["precision"] <= 1.0
        assert high["candidate_pairs"] == round(len(identical) / high["precision"])
        assert low["sig_docs_per_s"] > 0 and low["insert_per_s"] > 0 and low["qps"] > 0
    header = (tmp_path / "o" / "results.csv").read_text().splitlines()[0]
    assert header.startswith("run,algo,params,recall,precision,sig_docs_per_s")
    if _has("matplotlib"):
        assert (tmp_path / "o" / "recall_qps.png").stat().st_size > 1000
