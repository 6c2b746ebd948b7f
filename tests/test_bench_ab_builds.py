"""bench/bench_ab_builds.py: the recall/QPS frontier it reads ratios from, and one tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BENCH_DIR, load_bench_script

SCRIPT = BENCH_DIR / "bench_ab_builds.py"


def _module():
    return load_bench_script("bench_ab_builds")


def test_frontier_interpolates_and_ignores_dominated_points() -> None:
    ab = _module()
    pts = [{"recall": 0.80, "qps": 1000.0}, {"recall": 0.90, "qps": 600.0}, {"recall": 1.00, "qps": 200.0},
           {"recall": 0.95, "qps": 100.0}]  # the last is dominated by (1.00, 200)
    assert ab.frontier_qps_at(pts, 0.85) == pytest.approx(800.0)
    assert ab.frontier_qps_at(pts, 0.95) == pytest.approx(400.0)
    assert ab.frontier_qps_at(pts, 0.80) == pytest.approx(1000.0)
    assert ab.frontier_qps_at(pts, 1.01) is None


def test_exact_top10_matches_argsort() -> None:
    ab = _module()
    rng = np.random.default_rng(0)
    base, q = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    expected = np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ab.exact_top10(base, q), expected)


@pytest.mark.slow
def test_same_build_as_a_and_b_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1500, 16)).astype(np.float32)
    np.save(tmp_path / "base.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    np.save(tmp_path / "queries.npy", x[:50] + 0.05)
    import annforge

    pkg = str(Path(annforge.__file__).resolve().parents[1])  # the tested build: a dev tree or site-packages
    out = subprocess.run([sys.executable, str(SCRIPT), "--a", pkg, "--b", pkg, "--data", str(tmp_path),
                          "--configs", "hnsw-f32,ivfpq-pq8", "--nlist", "16", "--build-threads", "1", "--rounds", "2", "--repeats", "1",
                          "--targets", "0.5", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "hnsw-f32" in out.stdout and "B/A" in out.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    a, b = res["search"]["hnsw-f32"]["A"], res["search"]["hnsw-f32"]["B"]
    # Same build, built with one thread (deterministic graph): recall per setting agrees exactly.
    assert sorted((p["ef"], p["recall"]) for p in a) == sorted((p["ef"], p["recall"]) for p in b)
