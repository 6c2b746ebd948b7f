"""Every bad input listed in shared/API.md raises its documented exception with a useful message."""

from __future__ import annotations

import numpy as np
import pytest

import annforge as af

# Every test here is an error path: CI runs this file again against the clang build (marker `errors`).
pytestmark = pytest.mark.errors


@pytest.fixture
def index() -> af.FlatIndex:
    ix = af.FlatIndex(4)
    ix.add(np.eye(4, dtype=np.float32))
    return ix


@pytest.mark.sanitize
@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda ix: ix.add(np.zeros((2, 5))), ValueError, "dimension 5 .* dimension 4"),
        (lambda ix: ix.add(np.zeros((2, 2, 4))), ValueError, "rank 3"),
        (lambda ix: ix.add(np.zeros(3)), ValueError, "dimension 3"),
        (lambda ix: ix.add(np.array([[1, 2, np.nan, 4]])), ValueError, "NaN at row 0, column 2"),
        (lambda ix: ix.add(np.array([[1, 2, 3, 4], [1, np.inf, 3, 4]])), ValueError, "infinity at row 1"),
        (lambda ix: ix.add(np.zeros((2, 4)), ids=[-1, 3]), ValueError, "non-negative"),
        (lambda ix: ix.add(np.zeros((2, 4)), ids=[3, 3]), ValueError, "duplicate id 3"),
        (lambda ix: ix.add(np.zeros((2, 4)), ids=[1, 2, 3]), ValueError, "3 entries but there are 2"),
        (lambda ix: ix.add(np.zeros((2, 4)), ids=[1.5, 2.0]), TypeError, "integers"),
        (lambda ix: ix.add(np.zeros((1, 4)), ids=np.array([2**63], dtype=np.uint64)), ValueError, "int64"),
        (lambda ix: ix.add([["a", "b", "c", "d"]]), TypeError, "numbers"),
        (lambda ix: ix.add(np.zeros((1, 4)), num_threads=-1), ValueError, "num_threads"),
        (lambda ix: ix.search(np.zeros(4), 0), ValueError, "k must be >= 1"),
        (lambda ix: ix.search(np.zeros(4), -3), ValueError, "k must be >= 1"),
        (lambda ix: ix.search(np.zeros(4), 2.5), TypeError, "k must be an integer"),
        (lambda ix: ix.search(np.zeros(4), True), TypeError, "k must be an integer"),
        (lambda ix: ix.search(np.zeros(5), 1), ValueError, "dimension 5"),
        (lambda ix: ix.search(np.full(4, np.nan), 1), ValueError, "queries contains NaN"),
        (lambda ix: ix.search(np.zeros(4), 1, ef=10), ValueError, "unknown search parameter 'ef'"),
        (lambda ix: ix.search(np.zeros(4), 1, filter=[-2]), ValueError, "non-negative"),
        (lambda ix: ix.search(np.zeros(4), 1, filter=["x"]), TypeError, "integers"),
        (lambda ix: ix.search(np.zeros(4), 1, num_threads=-2), ValueError, "num_threads"),
        (lambda ix: ix.remove(None), TypeError, "not None"),
        (lambda ix: ix.remove([[1, 2]]), ValueError, "one-dimensional"),
        (lambda ix: ix.reconstruct([99]), ValueError, "id 99 is not in the index"),
        (lambda ix: ix.search_range(np.zeros(4), float("nan")), ValueError, "radius"),
    ],
)
def test_bad_input_raises(index: af.FlatIndex, call, exc, match) -> None:
    size_before = len(index)
    with pytest.raises(exc, match=match):
        call(index)
    assert len(index) == size_before  # a failed call changes nothing


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((0,), {}, ValueError, "dim must be >= 1"),
        ((-3,), {}, ValueError, "dim must be >= 1"),
        ((4.0,), {}, TypeError, "dim must be an integer"),
        ((4,), {"metric": "euclid"}, ValueError, "unknown metric 'euclid'"),
        ((4,), {"metric": 2}, TypeError, "metric must be a string"),
    ],
)
def test_bad_constructor_arguments(args, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        af.FlatIndex(*args, **kwargs)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(OSError, match="cannot open"):
        af.load(tmp_path / "missing.af")
    (tmp_path / "text.af").write_text("hello, this is not an index at all, but it is long enough" * 3)
    with pytest.raises(OSError, match="not an annforge index file"):
        af.load(tmp_path / "text.af")
    with pytest.raises(OSError, match="not a regular file"):
        af.load(tmp_path)


def test_set_simd_level_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown SIMD level 'sse9'"):
        af.set_simd_level("sse9")
