"""MinHash signatures and MinHash LSH for Jaccard near-duplicate search (compiled core).

>>> import annforge as af
>>> docs = ["the quick brown fox jumps over the lazy dog", "the quick brown fox jumps over the lazy cat"]
>>> sigs = af.minhash_signatures(docs, num_perm=128, shingle="word1")
>>> sigs.shape
(2, 128)
"""

from __future__ import annotations

import functools
import itertools
import json
import numbers
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._base import register_family
from ._lsh_verify import verify_bands_rows, verify_min_matches

_P61 = (1 << 61) - 1

#: The scheme used when ``hashfunc="xxh64"`` and no ``scheme`` is given. It was ``"mersenne61"`` before
#: C-MinHash became the default; signatures of the two schemes are not comparable (see :class:`MinHashLSH`).
DEFAULT_SCHEME = "cminhash"
_SCHEMES = ("cminhash", "mersenne61", "affine32", "legacy")
_U32_MAX = 0xFFFFFFFF


@functools.lru_cache(maxsize=64)
def _hasher(num_perm: int, seed: int, hashfunc: str, scheme: Optional[str], method: str) -> Any:
    if isinstance(num_perm, bool) or not isinstance(num_perm, (int, np.integer)):
        raise TypeError(f"num_perm must be an integer, got {type(num_perm).__name__}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    if hashfunc not in ("xxh64", "sha1_32"):
        raise ValueError(f"unknown hashfunc {hashfunc!r} (expected 'xxh64' or 'sha1_32')")
    if scheme is None:
        scheme = "affine32" if hashfunc == "sha1_32" else ("mersenne61" if method == "oph" else DEFAULT_SCHEME)
    if scheme in ("affine32", "legacy"):
        # datasketch draws its permutations with numpy's RandomState; reproduce the draws exactly.
        gen = np.random.RandomState(seed)
        if scheme == "legacy":
            ab = np.array(
                [(gen.randint(1, _P61, dtype=np.uint64), gen.randint(0, _P61, dtype=np.uint64)) for _ in range(num_perm)],
                dtype=np.uint64,
            ).T
            a, b = ab[0], ab[1]
        else:
            a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return _core.MinHasher(int(num_perm), int(seed), hashfunc, scheme, method, [int(x) for x in a], [int(x) for x in b])
    return _core.MinHasher(int(num_perm), int(seed) & (2**64 - 1), hashfunc, scheme, method)


def minhash_signatures(
    docs: Sequence[Any],
    num_perm: int = 128,
    seed: int = 1,
    shingle: Optional[str] = None,
    num_threads: int = 0,
    *,
    hashfunc: str = "xxh64",
    scheme: Optional[str] = None,
    method: str = "perm",
) -> np.ndarray:
    """Signatures of many sets at once: ``uint64 [len(docs), num_perm]``, parallel, GIL released.

    ``docs``: lists of tokens (str → UTF-8, bytes, int → 8 bytes little-endian) or raw strings with
    ``shingle="word3"`` / ``"char5"`` (words split on ASCII whitespace and joined by one space).

    Schemes (``scheme=None`` picks the first that fits ``hashfunc`` / ``method``):

    - ``"cminhash"`` (default for ``hashfunc="xxh64"``): C-MinHash-(σ, π) — P. Li and X. Li, "C-MinHash:
      Rigorously Reducing K Permutations to Two", AISTATS 2022 (arXiv:2109.03337). σ is a seeded 64-bit
      token hash cut to 32 bits, and hash ``j`` is a fixed 32-bit bijection π applied to the circulant
      shift ``σ(token) + j``. The Jaccard estimate is unbiased and its variance is no larger than classic
      MinHash's; values are 32-bit.
    - ``"mersenne61"``: classic MinHash, ``(a_j h + b_j) mod (2^61 - 1)`` (the default before C-MinHash;
      signatures stored from that version need ``scheme="mersenne61"`` to stay comparable).
    - ``hashfunc="sha1_32"`` reproduces ``datasketch.MinHash(num_perm, seed)`` bit for bit (its default
      ``scheme="affine32"``; ``scheme="legacy"`` for datasketch < 2.0).
    - ``method="oph"``: densified one-permutation hashing (one hash per token; its variance is above
      classic MinHash's for sets smaller than ``num_perm``).

    Signatures of different schemes, seeds or ``num_perm`` are not comparable.

    >>> import annforge as af
    >>> s = af.minhash_signatures([["a", "b", "c"], ["a", "b", "d"]], num_perm=64)
    >>> s.dtype, s.shape
    (dtype('uint64'), (2, 64))
    """
    return _hasher(num_perm, seed, hashfunc, scheme, method).signatures(docs, shingle, int(num_threads))


class MinHash:
    """One set's MinHash signature (``hashfunc="sha1_32"`` matches ``datasketch.MinHash``).

    >>> import annforge as af
    >>> m1, m2 = af.MinHash(num_perm=256), af.MinHash(num_perm=256)
    >>> m1.update_batch([b"a", b"b", b"c", b"d"]); m2.update_batch([b"a", b"b", b"c", b"e"])
    >>> 0.3 < m1.jaccard(m2) < 0.9
    True
    """

    def __init__(self, num_perm: int = 128, seed: int = 1, hashfunc: str = "xxh64", *,
                 scheme: Optional[str] = None, method: str = "perm") -> None:
        self._h = _hasher(num_perm, seed, hashfunc, scheme, method)
        self.seed = seed
        self._state = self._h.empty()

    @property
    def num_perm(self) -> int:
        return int(self._h.num_perm)

    @property
    def scheme(self) -> str:
        """The permutation scheme (``"cminhash"``, ``"mersenne61"``, ``"affine32"`` or ``"legacy"``)."""
        return str(self._h.scheme)

    @property
    def hashvalues(self) -> np.ndarray:
        """The signature (uint64; densified for ``method="oph"``)."""
        return self._h.densify(self._state) if self._h.method == "oph" else self._state.copy()

    def update(self, token: Any) -> None:
        """Add one token (str, bytes or int)."""
        self._h.update(self._state, [token], None)

    def update_batch(self, tokens: Iterable[Any]) -> None:
        """Add many tokens."""
        self._h.update(self._state, list(tokens), None)

    def update_text(self, text: str, shingle: str = "word3") -> None:
        """Add the shingles of raw text."""
        self._h.update(self._state, text, shingle)

    def jaccard(self, other: "MinHash") -> float:
        """Estimated Jaccard similarity (fraction of equal signature values)."""
        if self._h.num_perm != other._h.num_perm or self.seed != other.seed or self._h.scheme != other._h.scheme \
                or self._h.method != other._h.method:
            raise ValueError("cannot compare MinHash with different num_perm, seed, scheme or method")
        return float(np.mean(self.hashvalues == other.hashvalues))

    def __len__(self) -> int:
        return self.num_perm

    def to_datasketch(self) -> Any:
        """A ``datasketch.MinHash`` with the same values (sha1_32 schemes only)."""
        import datasketch

        if self._h.scheme not in ("affine32", "legacy"):
            raise ValueError("only hashfunc='sha1_32' signatures are datasketch-compatible")
        return datasketch.MinHash(num_perm=self.num_perm, seed=self.seed, scheme=self._h.scheme,
                                  hashvalues=self._state.copy())

    @classmethod
    def from_datasketch(cls, m: Any) -> "MinHash":
        """Wrap a ``datasketch.MinHash`` (its default sha1 hash, scheme affine32 or legacy)."""
        scheme = getattr(m, "scheme", "legacy")
        if scheme not in ("affine32", "legacy"):
            raise ValueError(f"unsupported datasketch scheme {scheme!r}")
        out = cls(num_perm=len(m), seed=int(m.seed), hashfunc="sha1_32", scheme=scheme)
        out._state = np.asarray(m.hashvalues, dtype=np.uint64).copy()
        return out


@functools.lru_cache(maxsize=256)
def _optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> Tuple[int, int]:
    # A few milliseconds of numerical integration: not to be paid by every index created in a loop.
    return _core.optimal_bands_rows(threshold, num_perm, fp_weight, fn_weight)


def _as_sig(sig: Any) -> Any:
    if isinstance(sig, MinHash):  # its state as is (no copy): the core only reads it
        return sig._state if sig._h.method != "oph" else sig.hashvalues
    return sig


def _as_int_key(key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"keys must be integers (int64), got {type(key).__name__}")
    return int(key)


def _as_int_keys(keys: Any) -> np.ndarray:
    """Keys as int64 without silent conversion: floats (1.7) and bools are refused like in ``insert``."""
    arr = np.asarray(keys)
    if arr.dtype == object:
        for k in arr.ravel().tolist():
            _as_int_key(k)
        arr = arr.astype(np.int64)
    elif arr.size and (arr.dtype.kind not in "iu" or arr.dtype == np.bool_):
        raise TypeError(f"keys must be integers (int64), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _wide_scheme(scheme: str) -> bool:
    """Whether a scheme's values use 64 bits (only mersenne61; the others stay below 2**32)."""
    return scheme == "mersenne61"


_MIXED = ("signatures of different MinHash schemes cannot share an index: this index holds {have} signatures, "
          "these are {got} ({hint})")
_HINT = ("scheme 'cminhash' became the default for hashfunc='xxh64'; pass scheme='mersenne61' to "
         "minhash_signatures / MinHash to keep producing the signatures of older annforge versions")


@register_family  # type: ignore[arg-type]
class MinHashLSH:
    """Banded LSH over MinHash signatures; keys are int64.

    ``params=None`` (default): (bands, rows) minimise ``weights[0] * FP + weights[1] * FN``, the false
    positive / negative probabilities integrated below / above ``threshold`` (datasketch's rule);
    ``params=(bands, rows)`` sets them directly.

    ``verify=True``: candidates are checked against the stored signatures. A pair (or a query and a key)
    is kept when at least :attr:`min_matches` of the ``num_perm`` values agree, and the banding is chosen
    to feed that check rather than to be the filter itself. Both come from the binomial model of the
    estimate (equal values ~ Binomial(num_perm, J)): the cut minimises the same weighted FP / FN integral
    as datasketch's rule (with equal weights: the median of Binomial(num_perm + 1, threshold), 103 of 128
    at 0.8), and the bands are the longest whose misses cost at most 1% of the pairs the check keeps
    (16 x 8 at 0.8 / 128 instead of 9 x 13); details in ``annforge._lsh_verify``. ``query``,
    ``query_batch``, ``query_with_scores`` and ``candidate_pairs`` then return only pairs that pass (best
    first for queries). On 44k Debian package descriptions (threshold 0.8, 128 values, 30 seeds) the
    verified pairs had recall 0.885 and precision 0.741 against exact Jaccard, datasketch's candidate
    pairs 0.731 and 0.600 (``bench/results/minhash_quality_verified_2026-12-05.txt``). ``verify=False``
    (default) answers as datasketch does: every key sharing a band.

    The index records which scheme its signatures come from (``scheme=``, else learnt from the first
    :class:`MinHash` inserted; saved with the index). Once known, inserting or querying signatures of
    another scheme raises ValueError instead of silently matching nothing: :class:`MinHash` objects by
    name, raw arrays by their values (64-bit ``"mersenne61"``, the default before ``"cminhash"``, against
    the 32-bit schemes). While unknown (raw arrays only, files saved before schemes were recorded), any
    uint64 signatures are accepted.

    >>> import annforge as af
    >>> sigs = af.minhash_signatures([["a", "b", "c", "d"], ["a", "b", "c", "d"], ["x", "y"]], num_perm=128)
    >>> lsh = af.MinHashLSH(threshold=0.8, num_perm=128)
    >>> lsh.insert_batch([0, 1, 2], sigs)
    >>> sorted(lsh.query(sigs[0]))
    [0, 1]
    >>> checked = af.MinHashLSH(threshold=0.8, num_perm=128, verify=True)
    >>> (checked.bands, checked.rows, checked.min_matches)
    (16, 8, 103)
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, weights: Tuple[float, float] = (0.5, 0.5),
                 params: Optional[Tuple[int, int]] = None, *, scheme: Optional[str] = None,
                 verify: bool = False) -> None:
        if not isinstance(threshold, (int, float, np.floating)) or isinstance(threshold, bool):
            raise TypeError("threshold must be a number")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if isinstance(num_perm, bool) or not isinstance(num_perm, (int, np.integer)):
            raise TypeError("num_perm must be an integer")
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        if not isinstance(verify, (bool, np.bool_)):
            raise TypeError(f"verify must be True or False, got {type(verify).__name__}")
        w = tuple(float(x) for x in weights)
        if len(w) != 2:
            raise ValueError("weights must be two numbers (false positive, false negative)")
        self._min_matches: Optional[int] = None
        if verify:
            if not (min(w) >= 0.0 and all(np.isfinite(w)) and abs(w[0] + w[1] - 1.0) < 1e-9):
                raise ValueError(f"weights must be two non-negative numbers that sum to 1, got {weights}")
            self._min_matches = verify_min_matches(float(threshold), int(num_perm), w[0], w[1])
        if params is None:
            if verify:
                bands, rows = verify_bands_rows(float(threshold), int(num_perm), self._min_matches)
            else:
                bands, rows = _optimal_bands_rows(float(threshold), int(num_perm), w[0], w[1])
        else:
            bands, rows = (_check_count("bands", params[0]), _check_count("rows", params[1]))
        if scheme is not None and scheme not in _SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r} (expected one of {', '.join(_SCHEMES)})")
        self._impl = _core.MinHashLSH(int(num_perm), int(bands), int(rows), float(threshold))
        self._scheme: Optional[str] = scheme
        self._wide: Optional[bool] = None if scheme is None else _wide_scheme(scheme)
        self._save_meta()

    @property
    def scheme(self) -> Optional[str]:
        """The scheme of the indexed signatures (None while unknown: raw arrays only tell 64- from 32-bit)."""
        return self._scheme

    @property
    def verify(self) -> bool:
        """Whether candidates are checked against the stored signatures (``verify=True``)."""
        return self._min_matches is not None

    @property
    def min_matches(self) -> Optional[int]:
        """With ``verify=True``: the fewest equal values (of ``num_perm``) a kept pair has; else None."""
        return self._min_matches

    def _cut(self) -> float:
        """The score the core keeps (>=): half a value below ``min_matches / num_perm`` (no rounding
        trouble); -1 (everything) when not verifying."""
        if self._min_matches is None:
            return -1.0
        return (self._min_matches - 0.5) / self.num_perm

    def _save_meta(self) -> None:
        meta = {"scheme": self._scheme, "wide": self._wide}
        if self._min_matches is not None:
            meta["min_matches"] = self._min_matches
        self._impl.user_meta = json.dumps(meta).encode()

    def _load_meta(self) -> None:
        self._scheme, self._wide, self._min_matches = None, None, None
        raw = bytes(self._impl.user_meta)
        if raw:
            try:
                meta = json.loads(raw.decode())
            except ValueError:
                meta = {}
            if isinstance(meta, dict):
                if meta.get("scheme") in _SCHEMES:
                    self._scheme = meta["scheme"]
                if isinstance(meta.get("wide"), bool):
                    self._wide = meta["wide"]
                m = meta.get("min_matches")
                if isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= int(self._impl.num_perm):
                    self._min_matches = m

    def _check(self, sig: Any, learn: bool) -> Any:
        """``sig`` as the core takes it, after checking its scheme against the index's (learning it if asked)."""
        if isinstance(sig, MinHash):
            got = sig.scheme
            if self._scheme is not None and got != self._scheme:
                raise ValueError(_MIXED.format(have=self._scheme, got=got, hint=_HINT))
            if self._wide is not None and _wide_scheme(got) != self._wide:
                raise ValueError(_MIXED.format(have="64-bit" if self._wide else "32-bit", got=got, hint=_HINT))
            if learn and self._scheme is None:
                self._scheme, self._wide = got, _wide_scheme(got)
                self._save_meta()
            return _as_sig(sig)
        if self._wide is None:  # raw values alone cannot name a scheme (any uint64 array is accepted)
            return sig
        arr = np.asarray(sig)
        if arr.size and arr.dtype.kind in "iu":
            # A 64-bit scheme's row minimum is below 2**32 with probability ~ (set size) / 2**29, a 32-bit
            # scheme's never above it: one comparison per row tells them apart.
            rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim else arr.reshape(1, 1)
            wide_rows = rows[:, 0] > _U32_MAX
            if wide_rows.any() if not self._wide else not wide_rows.all():
                raise ValueError(_MIXED.format(have="64-bit" if self._wide else "32-bit",
                                               got="32-bit" if self._wide else "64-bit", hint=_HINT))
        return sig

    bands = property(lambda self: int(self._impl.bands))
    rows = property(lambda self: int(self._impl.rows))
    num_perm = property(lambda self: int(self._impl.num_perm))

    def __len__(self) -> int:
        return len(self._impl)

    def __contains__(self, key: Any) -> bool:
        return self._impl.__contains__(_as_int_key(key))

    def insert(self, key: Any, sig: Any) -> None:
        """Index one signature under ``key`` (ValueError when the key exists)."""
        self._impl.insert([_as_int_key(key)], self._check(sig, True))

    def insert_batch(self, keys: Any, sigs: Any, *, num_threads: int = 0) -> None:
        """Index many signatures ``[n, num_perm]`` at once (integer keys; TypeError for floats)."""
        if isinstance(sigs, (list, tuple)) and sigs and isinstance(sigs[0], MinHash):
            sigs = np.stack([self._check(m, True) for m in sigs])
        self._impl.insert(_as_int_keys(keys), self._check(sigs, True), num_threads)

    def remove(self, key: Any) -> None:
        """Remove ``key`` (ValueError when absent)."""
        if self._impl.remove([_as_int_key(key)]) == 0:
            raise ValueError(f"key {key!r} is not in the index")

    def query(self, sig: Any) -> List[int]:
        """Keys whose signature shares a band with ``sig`` (a uint64 array or a :class:`MinHash`); with
        ``verify=True`` only those with at least :attr:`min_matches` equal values, best first."""
        cut = None if self._min_matches is None else self._cut()
        # The common case (a uint64 row) goes straight to the core: this wrapper is a visible part of a
        # sub-microsecond query.
        if type(sig) is np.ndarray:  # the width check on one value is done by the core
            return self._impl.query_keys(sig, -1 if self._wide is None else int(self._wide), cut)
        return self._impl.query_keys(self._check(sig, False), -1, cut)

    def _min_score(self, min_score: Optional[float]) -> float:
        if min_score is None:
            return self._cut()
        if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
            raise TypeError(f"min_score must be a number or None, got {type(min_score).__name__}")
        if np.isnan(min_score):
            raise ValueError("min_score must not be NaN")
        return float(min_score)

    def query_with_scores(self, sig: Any, min_score: Optional[float] = None) -> List[Tuple[int, float]]:
        """Candidates with their estimated Jaccard, best first: those scoring ``>= min_score``; None
        (default) keeps every candidate, or with ``verify=True`` those that pass the check."""
        _, keys, scores = self._impl.query(self._check(sig, False), True, self._min_score(min_score))
        return list(zip(keys.tolist(), scores.tolist()))

    def query_batch(self, sigs: Any, *, num_threads: int = 0) -> List[np.ndarray]:
        """Candidates of many queries (a list of int64 arrays; with ``verify=True`` only those that pass
        the check, best first)."""
        if self._min_matches is not None:
            lims, keys, _ = self._impl.query(self._check(sigs, False), True, self._cut(), num_threads)
            return np.split(keys, lims[1:-1]) if len(lims) > 1 else []
        return self._impl.query_arrays(self._check(sigs, False), num_threads)

    def candidate_pairs(self, min_score: Optional[float] = None, *,
                        num_threads: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair of indexed keys sharing a bucket: ``(first, second, estimated_jaccard)``; those
        scoring ``>= min_score`` when it is > 0. None (default): all of them, or with ``verify=True`` the
        pairs that pass the check (at least :attr:`min_matches` equal values)."""
        return self._impl.pairs(self._min_score(min_score), num_threads)

    def save(self, path: Any) -> None:
        import os
        self._impl.save(os.fspath(path))

    @classmethod
    def _load(cls, path: str, mmap: bool) -> "MinHashLSH":
        obj = cls.__new__(cls)
        obj._impl = _core.MinHashLSH.load(path, mmap)
        obj._load_meta()
        return obj

    def to_bytes(self) -> bytes:
        return self._impl.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "MinHashLSH":
        obj = cls.__new__(cls)
        obj._impl = _core.MinHashLSH.from_bytes(bytes(data))
        obj._load_meta()
        return obj

    def __getstate__(self) -> dict:
        return {"annforge": self.to_bytes()}

    def __setstate__(self, state: dict) -> None:
        self._impl = _core.MinHashLSH.from_bytes(state["annforge"])
        self._load_meta()


@register_family  # type: ignore[arg-type]
class MinHashLSHForest:
    """LSH Forest: top-k by estimated Jaccard. ``l`` prefix trees of ``num_perm // l`` values each.

    >>> import annforge as af
    >>> sigs = af.minhash_signatures([["a", "b", "c"], ["a", "b", "d"], ["x", "y"]], num_perm=64)
    >>> f = af.MinHashLSHForest(num_perm=64, l=8); f.insert_batch([0, 1, 2], sigs)
    >>> [k for k, _ in f.query(sigs[0], 1)]
    [0]
    """

    def __init__(self, num_perm: int = 128, l: int = 8) -> None:
        self._impl = _core.MinHashLSHForest(_check_count("num_perm", num_perm), _check_count("l", l))

    def __len__(self) -> int:
        return len(self._impl)

    def add(self, key: Any, sig: Any) -> None:
        self._impl.insert([_as_int_key(key)], _as_sig(sig))

    def insert_batch(self, keys: Any, sigs: Any) -> None:
        """Index many signatures ``[n, num_perm]`` at once (integer keys; TypeError for floats)."""
        self._impl.insert(_as_int_keys(keys), sigs)

    def remove(self, key: Any) -> None:
        """Remove ``key`` (ValueError when absent); the next query re-sorts the trees."""
        if self._impl.remove([_as_int_key(key)]) == 0:
            raise ValueError(f"key {key!r} is not in the index")

    def __contains__(self, key: Any) -> bool:
        return int(key) in self._impl

    def index(self) -> None:
        """Sort the trees now (queries also do it on demand after inserts or removals)."""
        self._impl.index()

    def query(self, sig: Any, k: int) -> List[Tuple[int, float]]:
        """Top-k ``(key, estimated_jaccard)``, best first."""
        _, keys, scores = self._impl.query(_as_sig(sig), int(k))
        return list(zip(keys.tolist(), scores.tolist()))

    def save(self, path: Any) -> None:
        import os
        self._impl.save(os.fspath(path))

    @classmethod
    def _load(cls, path: str, mmap: bool) -> "MinHashLSHForest":
        obj = cls.__new__(cls)
        obj._impl = _core.MinHashLSHForest.load(path, mmap)
        return obj

    def to_bytes(self) -> bytes:
        return self._impl.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "MinHashLSHForest":
        obj = cls.__new__(cls)
        obj._impl = _core.MinHashLSHForest.from_bytes(bytes(data))
        return obj

    def __getstate__(self) -> dict:
        return {"annforge": self.to_bytes()}

    def __setstate__(self, state: dict) -> None:
        self._impl = _core.MinHashLSHForest.from_bytes(state["annforge"])


def dedup(docs: Iterable[Any], threshold: float = 0.8, *, num_perm: int = 128, seed: int = 1,
          shingle: Optional[str] = None, num_threads: int = 0, hashfunc: str = "xxh64",
          scheme: Optional[str] = None, weights: Tuple[float, float] = (0.5, 0.5),
          params: Optional[Tuple[int, int]] = None, chunk_size: int = 20_000,
          show_progress: bool = False, verify: bool = True) -> List[List[int]]:
    """Near-duplicate groups (lists of document positions, size >= 2, each sorted, ordered by first member).

    The steps: MinHash signatures, the pairs of a ``MinHashLSH(threshold, num_perm, weights, params,
    verify=True)`` (``lsh.candidate_pairs()``: banding chosen for the signature check, pairs with at least
    ``lsh.min_matches`` equal values), then connected components (union-find). ``verify=False`` gives the
    steps of earlier versions: datasketch's banding, then pairs with estimated Jaccard ``>= threshold``
    (``candidate_pairs(min_score=threshold)``): fewer false pairs, many more missed ones (on 44k Debian
    descriptions at 0.8: pair recall 0.70 and precision 0.81, against 0.88 and 0.74). ``docs`` may be any
    iterable (a generator over a corpus on disk): it is read ``chunk_size`` documents at a time, so
    memory holds one chunk of documents plus the signatures and band tables, never the whole corpus. The
    groups are exactly those of the same steps done by hand on the whole list. ``show_progress`` draws a
    bar (tqdm when installed).

    >>> import annforge as af
    >>> af.dedup([["a", "b", "c"], ["x"], ["a", "b", "c"]], threshold=0.8)
    [[0, 2]]
    >>> af.dedup((["w%d" % (i % 3)] for i in range(7)), threshold=0.9, chunk_size=2)
    [[0, 3, 6], [1, 4], [2, 5]]
    """
    if isinstance(docs, (str, bytes)):
        raise TypeError("docs must be an iterable of documents, not a single string")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    hasher = _hasher(num_perm, seed, hashfunc, scheme, "perm")
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights, params=params,
                     scheme=str(hasher.scheme), verify=verify)
    from .embed._progress import progress_bar

    total = len(docs) if hasattr(docs, "__len__") else None  # type: ignore[arg-type]
    bar = progress_bar(total, "dedup", show_progress)
    n = 0
    try:
        it = iter(docs)
        while True:
            chunk = list(itertools.islice(it, chunk_size))
            if not chunk:
                break
            sigs = hasher.signatures(chunk, shingle, int(num_threads))
            lsh.insert_batch(np.arange(n, n + len(chunk), dtype=np.int64), sigs, num_threads=num_threads)
            n += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    first, second, _ = lsh.candidate_pairs(None if verify else float(threshold), num_threads=num_threads)
    labels = _core.connected_groups(n, first, second)
    groups: dict = {}
    for i, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(i)
    return [g for g in groups.values() if len(g) > 1]
