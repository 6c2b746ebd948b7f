"""Feedback on long builds: ``add(show_progress=...)`` and the ``annforge`` logger's build-phase records."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import annforge as af
from annforge import _progress


def _x(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_progress_bar_add_equals_one_call(capfd: pytest.CaptureFixture) -> None:
    x = _x(5000)
    one, chunked = af.HNSWIndex(8, seed=3, ef_construction=40), af.HNSWIndex(8, seed=3, ef_construction=40)
    ids_one = one.add(x, num_threads=1)
    ids_chunked = chunked.add(x, num_threads=1, show_progress=True)
    err = capfd.readouterr().err
    assert "HNSWIndex.add" in err and "5000/5000" in err.replace(",", "")
    np.testing.assert_array_equal(ids_one, ids_chunked)
    # chunks are inserted in order with the same level draws: the same graph, the same answers
    for a, b in zip(one.search(x[:50], 10, ef=32), chunked.search(x[:50], 10, ef=32)):
        np.testing.assert_array_equal(a, b)
    # ids chosen by the index continue from the largest one, chunk after chunk, as in one call
    more = chunked.add(_x(4200, seed=1), show_progress=True)
    assert more.tolist() == list(range(5000, 9200))


def test_flat_and_given_ids_in_chunks(capfd: pytest.CaptureFixture) -> None:
    x = _x(4500)
    ids = np.arange(4500, dtype=np.int64)[::-1] * 3
    index = af.FlatIndex(8)
    np.testing.assert_array_equal(index.add(x, ids, show_progress=True), ids)
    assert "FlatIndex.add" in capfd.readouterr().err
    np.testing.assert_array_equal(index.reconstruct(ids[:10]), x[:10])


def test_no_output_by_default_for_small_adds(capfd: pytest.CaptureFixture) -> None:
    af.HNSWIndex(8).add(_x(3000))
    assert capfd.readouterr().err == ""
    # off a terminal (pytest captures stderr) even a large add stays silent unless asked
    assert not _progress.want_progress(None, 10**7, af.HNSWIndex._auto_progress_rows)


def test_sq8_first_add_is_not_split(capfd: pytest.CaptureFixture) -> None:
    x = _x(5000)
    x[4000:] *= 10  # value ranges learnt from a first chunk alone would clamp these rows
    one, shown = af.HNSWIndex(8, storage="sq8", ef_construction=40), af.HNSWIndex(8, storage="sq8", ef_construction=40)
    one.add(x, num_threads=1)
    shown.add(x, num_threads=1, show_progress=True)
    assert "HNSWIndex.add: 5,000 vectors" in capfd.readouterr().err  # a start line instead of a bar
    for a, b in zip(one.search(x[3990:4010], 5), shown.search(x[3990:4010], 5)):
        np.testing.assert_array_equal(a, b)


def test_repeated_ids_are_not_split() -> None:
    index = af.FlatIndex(8)
    assert not index._chunkable_add(np.array([1, 2, 1]))
    assert index._chunkable_add(np.array([1, 2, 3])) and index._chunkable_add(None)


def test_build_phases_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    x = _x(12_000, dim=16)
    with caplog.at_level(logging.INFO, logger="annforge"):
        index = af.IVFPQIndex(16, nlist=16, m=8, nbits=4)
        index.train(x)
        index.add(x)
    messages = [r.getMessage() for r in caplog.records if r.name == "annforge"]
    assert any(m.startswith("IVFPQIndex.train: 12000 vectors") for m in messages)
    assert any(m.startswith("IVFPQIndex.train: done in") for m in messages)
    assert any(m.startswith("IVFPQIndex.add: 12000 vectors added in") for m in messages)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="annforge"):
        af.FlatIndex(16).add(x[:100])
    assert not caplog.records  # small adds log only at DEBUG


# rich comes with the bench extra only: every progress path outside `annforge bench` must work without it.
# A child process with `sys.modules["rich"] = None` (and tqdm hidden the same way) stands for an install
# of plain `pip install annforge`; `import rich` there raises ImportError.
_WITHOUT_RICH = r"""
import sys
sys.modules["rich"] = None
sys.modules["tqdm"] = None
import numpy as np
import annforge as af
from annforge.store import Collection

x = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
one, shown = af.HNSWIndex(8, seed=3, ef_construction=40), af.HNSWIndex(8, seed=3, ef_construction=40)
assert one.add(x, num_threads=1).tolist() == shown.add(x, num_threads=1, show_progress=True).tolist()
assert all((a == b).all() for a, b in zip(one.search(x[:20], 5, ef=32), shown.search(x[:20], 5, ef=32)))

col = Collection(None, index=af.FlatIndex(8))
col.add(ids=[f"r{i}" for i in range(300)], embeddings=x[:300])
rebuilt = col._rebuild(show_progress=True)
assert len(rebuilt) == 300

docs = [[f"w{(i * 7 + j) % 500}" for j in range(20)] for i in range(200)]
docs += [d[:19] + ["extra"] for d in docs[:30]]
assert af.dedup(docs, 0.8, show_progress=True) == af.dedup(docs, 0.8)
assert "rich" not in sys.modules or sys.modules["rich"] is None
print("ok")
"""


def test_progress_paths_work_without_rich() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(af.__file__))) + os.pathsep + env.get(
        "PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_RICH], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    # the plain fallback line, finished with the full count, for each of the three paths
    assert "HNSWIndex.add: 5000/5000 [" in proc.stderr
    assert "rebuilding index: 300/300 [" in proc.stderr
    assert "dedup: 230/230 [" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_text_bar_is_throttled(capfd: pytest.CaptureFixture) -> None:
    bar = _progress.TextBar(1000, "rows", interval=3600.0)
    for _ in range(1000):
        bar.update(1)
    assert capfd.readouterr().err == ""  # nothing drawn within the interval
    bar.close()
    assert capfd.readouterr().err.startswith("\rrows: 1000/1000 [")
