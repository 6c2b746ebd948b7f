"""Readers and writers for the TEXMEX vector formats used by ANN datasets (SIFT1M, GIST1M, BIGANN).

Each record is a little-endian int32 dimension ``d`` followed by ``d`` components: float32 for
``.fvecs``, int32 for ``.ivecs`` (ground-truth neighbour ids), uint8 for ``.bvecs``.

>>> import annforge as af, numpy as np, tempfile, os
>>> x = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> path = os.path.join(tempfile.mkdtemp(), "x.fvecs")
>>> af.write_fvecs(path, x)
>>> af.read_fvecs(path).tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["read_fvecs", "read_ivecs", "read_bvecs", "write_fvecs", "write_ivecs", "write_bvecs"]


def _read_vecs(path: PathLike, dtype: np.dtype, count: Optional[int]) -> np.ndarray:
    raw = np.fromfile(os.fspath(path), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros((0, 0), dtype=dtype)
    if raw.size < 4:
        raise OSError(f"{os.fspath(path)}: truncated file ({raw.size} bytes)")
    dim = int(raw[:4].view("<i4")[0])
    if dim < 1:
        raise OSError(f"{os.fspath(path)}: invalid dimension {dim} in first record")
    record = 4 + dim * dtype.itemsize
    if raw.size % record != 0:
        raise OSError(
            f"{os.fspath(path)}: size {raw.size} is not a multiple of the record size {record} (dim {dim})"
        )
    rows = raw.reshape(-1, record)
    if count is not None:
        rows = rows[:count]
    dims = np.ascontiguousarray(rows[:, :4]).view("<i4").ravel()
    if not np.all(dims == dim):
        bad = int(np.flatnonzero(dims != dim)[0])
        raise OSError(f"{os.fspath(path)}: record {bad} has dimension {int(dims[bad])}, expected {dim}")
    body = np.ascontiguousarray(rows[:, 4:])
    return body.view(dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(len(rows), dim)


def _write_vecs(path: PathLike, x: np.ndarray, dtype: np.dtype) -> None:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
    n, dim = arr.shape
    out = np.empty((n, 4 + dim * dtype.itemsize), dtype=np.uint8)
    out[:, :4] = np.array([dim], dtype="<i4").view(np.uint8)
    out[:, 4:] = arr.view(np.uint8).reshape(n, -1)
    out.tofile(os.fspath(path))


def read_fvecs(path: PathLike, count: Optional[int] = None) -> np.ndarray:
    """Read an ``.fvecs`` file into a float32 ``[n, d]`` array (first ``count`` rows if given)."""
    return _read_vecs(path, np.dtype(np.float32), count)


def read_ivecs(path: PathLike, count: Optional[int] = None) -> np.ndarray:
    """Read an ``.ivecs`` file (e.g. ground-truth ids) into an int32 ``[n, d]`` array."""
    return _read_vecs(path, np.dtype(np.int32), count)


def read_bvecs(path: PathLike, count: Optional[int] = None) -> np.ndarray:
    """Read a ``.bvecs`` file into a uint8 ``[n, d]`` array."""
    return _read_vecs(path, np.dtype(np.uint8), count)


def write_fvecs(path: PathLike, x: np.ndarray) -> None:
    """Write a ``[n, d]`` array as ``.fvecs`` (converted to float32)."""
    _write_vecs(path, x, np.dtype(np.float32))


def write_ivecs(path: PathLike, x: np.ndarray) -> None:
    """Write a ``[n, d]`` array as ``.ivecs`` (converted to int32)."""
    _write_vecs(path, x, np.dtype(np.int32))


def write_bvecs(path: PathLike, x: np.ndarray) -> None:
    """Write a ``[n, d]`` array as ``.bvecs`` (values must fit in uint8)."""
    arr = np.asarray(x)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("bvecs values must lie in [0, 255]")
    _write_vecs(path, arr, np.dtype(np.uint8))
