"""Conversions from whatever users pass (NumPy, lists, torch tensors, anything with ``__array__`` or
``__dlpack__``) to the C-contiguous float32 / int64 arrays the compiled core reads without copying."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


def _from_torch(x: Any) -> np.ndarray:
    # CPU, float32, contiguous tensors are shared through DLPack (no copy); anything else is converted.
    # detach() is a view (same storage), so tensors that require grad are shared too.
    x = x.detach()
    if x.device.type == "cpu" and str(x.dtype) == "torch.float32" and x.is_contiguous():
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError):  # e.g. a tensor with the lazy conj/neg bit set
            pass
    return x.to("cpu", dtype=_torch_float32(x)).resolve_conj().resolve_neg().contiguous().numpy()


def _torch_float32(x: Any) -> Any:
    import sys

    return sys.modules["torch"].float32


def as_float_matrix(x: Any, what: str = "vectors") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 NumPy array (rank is checked by the core).

    >>> as_float_matrix([[1, 2], [3, 4]]).dtype
    dtype('float32')
    """
    if isinstance(x, np.ndarray):
        arr = x
    elif type(x).__module__.startswith("torch"):
        arr = _from_torch(x)
    elif hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
        arr = np.from_dlpack(x)
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{what} must be a numeric array-like: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        with np.errstate(over="ignore"):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def as_ids(ids: Any, what: str = "ids") -> Optional[np.ndarray]:
    """Return ``ids`` as an int64 array, or None. Non-integer values raise TypeError."""
    if ids is None:
        return None
    if type(ids).__module__.startswith("torch"):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr
