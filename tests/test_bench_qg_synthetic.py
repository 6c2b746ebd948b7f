"""bench/bench_qg.py --dataset synthetic: the generator (deterministic, unit rows, fresh queries) and the
chunked exact ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import BENCH_DIR, load_bench_script

SCRIPT = BENCH_DIR / "bench_qg.py"


def _module():
    return load_bench_script("bench_qg")


def test_generator_deterministic_unit_rows_fresh_queries(tmp_path: Path) -> None:
    qg = _module()
    n, nq, dim = 2000, 50, 32
    base, queries, spec = qg.make_synthetic(n, nq, dim, seed=3)
    assert base.shape == (n, dim) and queries.shape == (nq, dim)
    assert base.dtype == queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert spec["clusters"] == 16 and spec["latent_dim"] < dim
    # same seed, same data, also when the base is written to a .npy file chunk by chunk
    base2, queries2, _ = qg.make_synthetic(n, nq, dim, seed=3, base_path=str(tmp_path / "b.npy"))
    np.testing.assert_array_equal(np.asarray(base2), base)
    np.testing.assert_array_equal(queries2, queries)
    base3, queries3, _ = qg.make_synthetic(n, nq, dim, seed=4)
    assert not np.array_equal(base3, base) and not np.array_equal(queries3, queries)
    # queries are fresh draws, not base rows: none coincides with a base vector
    assert float((queries @ base.T).max()) < 1 - 1e-4
    # not isotropic noise: the nearest neighbour is much closer than a random base row
    sims = queries @ base.T
    assert float(sims.max(axis=1).mean()) > float(sims.mean()) + 0.3


def test_rows_do_not_depend_on_base_size_across_chunks(monkeypatch) -> None:
    qg = _module()
    monkeypatch.setattr(qg, "SYNTH_CHUNK", 300)  # several chunks at this size
    full, _, _ = qg.make_synthetic(2000, 5, 16, seed=1)
    head, _, _ = qg.make_synthetic(700, 5, 16, seed=1)  # same mixture (16 clusters at both sizes)
    np.testing.assert_array_equal(head, full[:700])
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(full, axis=0)) == 2000


def test_ground_truth_chunked_over_base_matches_brute_force() -> None:
    qg = _module()
    base, queries, _ = qg.make_synthetic(2000, 300, 32, seed=0)
    sims = queries.astype(np.float64) @ base.astype(np.float64).T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    for block in (1 << 17, 512, 37, 11):  # one chunk, several, a last chunk smaller than k
        got = qg.ground_truth(base, queries, 10, base_block=block)
        assert got.shape == (300, 10)
        # exact up to float32 rounding: the same similarities in the same order; ids differ only at near-ties
        np.testing.assert_allclose(np.take_along_axis(sims, got, 1), np.take_along_axis(sims, expected, 1),
                                   atol=1e-5)
        assert (got == expected).mean() > 0.99
