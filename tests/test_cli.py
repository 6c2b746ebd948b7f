"""The ``annforge`` command line: commands, version, module entry, one-line errors, ``bench --compare``,
non-terminal output and the default sweeps' reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

import annforge as af
from annforge.bench import main as bench_main
from annforge.bench.datasets import DatasetError, load_dataset
from annforge.io_formats import write_fvecs


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(af.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "annforge", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def test_bench_without_rich_says_which_extra_to_install() -> None:
    # rich is in the bench extra only; `annforge bench` without it is a one-line error, not a traceback
    hide_rich = ("import sys; sys.modules['rich'] = None; from annforge.cli import main; "
                 "sys.exit(main(['bench', '--quick', '--algos', 'annforge-flat']))")
    proc = subprocess.run([sys.executable, "-c", hide_rich], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert 'pip install "annforge[bench]"' in proc.stderr and "rich" in proc.stderr
    # listing the libraries needs no drawing
    hide_rich = hide_rich.replace("'--quick', '--algos', 'annforge-flat'", "'--list'")
    listed = subprocess.run([sys.executable, "-c", hide_rich], capture_output=True, text=True, env=_env(), timeout=120)
    assert listed.returncode == 0 and "annforge-flat" in listed.stdout, listed.stderr


def test_help_lists_commands_and_options() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for word in ("bench", "info", "--version", "--help"):
        assert word in proc.stdout
    bare = _run()
    assert bare.returncode == 2 and "bench" in bare.stdout


def test_version_and_info() -> None:
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"annforge {af.__version__}"
    info = _run("info")
    assert info.returncode == 0
    assert json.loads(info.stdout)["version"] == af.__version__


def test_unknown_command_is_one_usage_error() -> None:
    proc = _run("benchh")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_help_through_the_module() -> None:
    proc = _run("bench", "--help")
    assert proc.returncode == 0 and "--compare" in proc.stdout and "--label" in proc.stdout


# ---- dataset errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, words", [
    ("glove-100-angular", ["not a file here", "downloads nothing", "glove-100-angular.hdf5", "--dataset"]),
    ("missing.hdf5", ["no such file"]),
    ("missing.fvecs", ["no such file"]),
])
def test_dataset_names_that_are_not_files(spec: str, words: List[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec)
    for word in words:
        assert word in str(info.value)
    assert bench_main(["--dataset", spec, "--algos", "annforge-flat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("annforge bench: error:") and err.count("\n") == 1 and words[0] in err


def test_vector_file_without_queries_says_what_to_pass(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_fvecs(tmp_path / "base.fvecs", np.ones((10, 4), dtype=np.float32))
    assert bench_main(["--dataset", str(tmp_path / "base.fvecs")]) == 2
    err = capsys.readouterr().err
    assert "--queries" in err and err.count("\n") == 1
    assert bench_main(["--dataset", str(tmp_path / "base.fvecs"), "--queries", str(tmp_path / "q.fvecs")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("hello")
    assert bench_main(["--dataset", str(tmp_path / "x.txt"), "--queries", str(tmp_path / "x.txt")]) == 2
    assert "unknown file type" in capsys.readouterr().err


def test_hdf5_without_the_ann_benchmarks_layout(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "odd.hdf5", "w") as f:
        f["vectors"] = np.ones((4, 2), dtype=np.float32)
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        load_dataset(str(tmp_path / "odd.hdf5"))
    (tmp_path / "not.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_dataset(str(tmp_path / "not.hdf5"))


# ---- --compare -------------------------------------------------------------------------------------
def _fake_run(folder: Path, dataset: str, nq: int, qps_scale: float, label: str = "") -> Path:
    rows: List[Dict[str, Any]] = []
    for algo in ("annforge-hnsw", "hnswlib"):
        for i, ef in enumerate((10, 40, 160)):
            rows.append(dict(algo=algo, params={"ef": ef}, recall=0.9 + 0.03 * i, recall_tolerant=0.9 + 0.03 * i,
                             qps=qps_scale * (3 - i) * 1000, p50_ms=0.1, p95_ms=0.2, p99_ms=0.3, build_s=1.0,
                             memory_bytes=1000, bytes_per_vector=100.0, build_params={"M": 16}))
    meta: Dict[str, Any] = dict(dataset=dataset, n=1000, nq=nq, dim=8, metric="ip", k=10, threads=1,
                                time="2026-01-01T00:00:00Z")
    if label:
        meta["label"] = label
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"meta": meta, "results": rows}))
    return folder / "results.json"


def test_compare_keeps_runs_apart_and_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _fake_run(tmp_path / "A" / "annforge-bench", "set-one", 500, 1.0)
    b = _fake_run(tmp_path / "B" / "annforge-bench", "set-two", 100, 2.0)
    out = tmp_path / "c"
    assert bench_main(["--compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "runs differ in dataset" in printed and "runs differ in query count" in printed
    data = json.loads((out / "compare.json").read_text())
    labels = data["meta"]["labels"]
    assert len(set(labels)) == 2 and labels[0].endswith(os.path.join("A", "annforge-bench"))
    rows = data["results"]
    assert len({r["series"] for r in rows}) == 4  # two algorithms x two runs, never merged
    # every fake series is its own frontier (recall up, QPS down); run B's 2x QPS must not erase run A's
    assert all(r["pareto"] for r in rows)
    assert any(r["global_pareto"] for r in rows if r["run"] == labels[0])
    if (out / "compare.png").exists():
        assert (out / "compare.png").stat().st_size > 1000


def test_compare_labels_and_rich_escaping(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _fake_run(tmp_path / "x" / "o", "same", 100, 1.0, label="run[h5]")
    b = _fake_run(tmp_path / "y" / "o", "same", 100, 1.5)
    out = tmp_path / "c"
    assert bench_main(["--compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "run[h5]" in printed and "runs differ" not in printed  # the stored label, not eaten as a style tag
    assert bench_main(["--compare", str(a), str(b), "--label", "before,after[1]", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "annforge-hnsw [before]" in printed and "hnswlib [after[1]]" in printed
    assert json.loads((out / "compare.json").read_text())["meta"]["labels"] == ["before", "after[1]"]
    # the same file twice still gives two distinct series
    assert bench_main(["--compare", str(a), str(a), "--out", str(out)]) == 0
    labels = json.loads((out / "compare.json").read_text())["meta"]["labels"]
    assert len(set(labels)) == 2


def test_compare_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _fake_run(tmp_path / "a", "d", 10, 1.0)
    assert bench_main(["--compare", str(a), str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert bench_main(["--compare", str(a), str(tmp_path / "bad.json")]) == 2
    assert "not an annforge bench results.json" in capsys.readouterr().err
    assert bench_main(["--compare", str(a), str(a), "--label", "only-one"]) == 2
    assert "one per file" in capsys.readouterr().err


def test_plot_with_many_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from annforge.bench.report import mark_pareto, write_plot

    rows = [dict(algo=f"algo-{i:02d}", params={"ef": ef}, recall=min(1.0, 0.8 + 0.01 * i + 0.05 * j),
                 qps=1e4 / (1 + j) / (1 + 0.1 * i)) for i in range(14) for j, ef in enumerate((10, 20, 40))]
    mark_pareto(rows)
    assert write_plot(tmp_path / "p.png", rows, 10, "many") is None
    assert (tmp_path / "p.png").stat().st_size > 10_000


# ---- output that is not a terminal -----------------------------------------------------------------
def test_piped_run_logs_one_line_per_algorithm(tmp_path: Path) -> None:
    env = dict(_env(), ANNFORGE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "annforge", "bench", "--quick", "--algos", "annforge-flat",
                           "--out", str(tmp_path / "o"), "--label", "piped"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("annforge-flat: 1/1 points in") for line in lines), proc.stdout
    gt_line = next(line for line in lines if line.startswith("ground truth:"))
    assert str(tmp_path / "cache") in gt_line
    assert json.loads((tmp_path / "o" / "results.json").read_text())["meta"]["label"] == "piped"


# ---- default sweeps ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["default", "angular-64"])
def test_default_sweeps_reach_095(dataset: str) -> None:
    """Every annforge family's default sweep reaches recall@10 >= 0.95 on the built-in datasets."""
    from annforge.bench.algorithms import REGISTRY, sweep_points
    from annforge.bench.datasets import ensure_ground_truth

    ds = load_dataset(dataset)
    ds.queries = ds.queries[:200]
    gt, _ = ensure_ground_truth(ds, 10)
    for algo in ("annforge-hnsw", "annforge-ivfpq", "annforge-scann"):
        spec = REGISTRY[algo]
        sweep = sweep_points(algo, len(ds.base), ds.dim)
        adapter = spec["cls"](ds.dim, ds.metric, 0, 0, **spec["build"])
        adapter.build(ds.base)
        best = 0.0
        for params in sweep:
            adapter.prepare(params)
            ids = adapter.search(ds.queries, 10)
            best = max(best, np.mean([len(np.intersect1d(f, g)) / 10 for f, g in zip(ids, gt)]))
        assert best >= 0.95, (algo, dataset, best)


def test_piped_minhash_run_logs_one_line_per_library(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    words = [f"w{i}" for i in range(40)]
    docs = [" ".join(words[i:i + 12]) for i in range(25)] + [" ".join(words[:12])]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    assert bench_main(["--workload", "minhash", "--dataset", str(tmp_path / "docs.txt"), "--algos",
                       "annforge-minhash-lsh", "--repeats", "1", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out  # captured: not a terminal
    assert any(line.startswith("annforge-minhash-lsh: 3/3 points, pair recall") for line in out.splitlines()), out
    assert bench_main(["--workload", "minhash", "--dataset", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
