"""Benchmark datasets: the built-in default, ann-benchmarks HDF5, fvecs/ivecs/bvecs, .npy pairs.

Every loader returns a :class:`Dataset` whose metric is ``"l2"`` or ``"ip"`` (cosine data is
normalised on load and benchmarked as inner product, which ranks identically). Ground truth is
computed with ``annforge.FlatIndex`` when the source has none, and cached on disk keyed by a hash
of the vectors, the metric and ``k``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..io_formats import read_bvecs, read_fvecs, read_ivecs


@dataclass
class Dataset:
    """Base vectors, queries, metric and exact neighbours (``gt_ids`` int64, ``gt_dist`` float32)."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    metric: str
    gt_ids: Optional[np.ndarray] = None
    gt_dist: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-30)).astype(np.float32)


def _canonical_metric(metric: str) -> str:
    m = metric.lower()
    aliases = {"euclidean": "l2", "l2": "l2", "angular": "cosine", "cosine": "cosine", "ip": "ip",
               "dot": "ip", "inner_product": "ip"}
    if m not in aliases:
        raise ValueError(f"unknown metric {metric!r}; use l2, ip or cosine")
    return aliases[m]


def make_dataset(base: np.ndarray, queries: np.ndarray, metric: str, name: str,
                 gt_ids: Optional[np.ndarray] = None) -> Dataset:
    """Wrap arrays as a Dataset: float32, cosine normalised and turned into ip, given gt ids kept."""
    metric = _canonical_metric(metric)
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"base {base.shape} and queries {queries.shape} must be 2-d with the same dim")
    if metric == "cosine":
        base, queries, metric = _normalise(base), _normalise(queries), "ip"
    ds = Dataset(name, base, queries, metric)
    if gt_ids is not None:
        ds.gt_ids = np.ascontiguousarray(gt_ids, dtype=np.int64)
        ds.gt_dist = true_distances(ds, ds.gt_ids)
    return ds


def default_dataset(n: int = 20_000, nq: int = 500, dim: int = 128, seed: int = 42) -> Dataset:
    """Deterministic embedding-like data: a Gaussian mixture on a 16-d manifold, curved, lifted to ``dim``.

    64 clusters of uneven size and spread in a 16-d latent space are passed through a random
    two-layer map (linear, tanh, linear) into ``dim`` dimensions, get a little isotropic noise and
    are L2-normalised: clustered, anisotropic and normalised like sentence embeddings.
    Queries come from the same distribution. Metric: inner product.
    """
    rng = np.random.default_rng(seed)
    latent, n_clusters = 16, 64
    centres = rng.standard_normal((n_clusters, latent)) * 2.0
    spreads = rng.uniform(0.3, 1.2, size=n_clusters)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    w1 = rng.standard_normal((latent, 2 * latent)) / np.sqrt(latent)
    w2 = rng.standard_normal((2 * latent, dim)) / np.sqrt(2 * latent)
    bias = rng.standard_normal(dim) * 0.3

    def sample(count: int) -> np.ndarray:
        labels = rng.choice(n_clusters, size=count, p=weights)
        z = centres[labels] + rng.standard_normal((count, latent)) * spreads[labels, None]
        x = np.tanh(z @ w1) @ w2 + bias + rng.standard_normal((count, dim)) * 0.05
        return _normalise(x.astype(np.float32))

    return make_dataset(sample(n), sample(nq), "ip", name=f"default-clustered-{n}x{dim}")


def angular_dataset(n: int = 20_000, nq: int = 500, dim: int = 64, seed: int = 3) -> Dataset:
    """Deterministic, weakly clustered angular data, harder than :func:`default_dataset` (like GloVe).

    200 cluster centres whose spread is small next to the within-cluster noise, a power-law spectrum
    (dimension ``i`` scaled by ``i**-0.5``) under a random rotation; cosine metric (benchmarked as
    inner product on normalised vectors). Inverted-file indexes need many probes here.

    >>> ds = angular_dataset(500, 10)
    >>> ds.base.shape, ds.metric, bool(abs(np.linalg.norm(ds.base[0]) - 1) < 1e-5)
    ((500, 64), 'ip', True)
    """
    rng = np.random.default_rng(seed)
    scales = np.arange(1, dim + 1) ** -0.5
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    n_clusters = 200
    centres = rng.standard_normal((n_clusters, dim)) * scales * 0.8

    def sample(count: int) -> np.ndarray:
        labels = rng.integers(0, n_clusters, count)
        x = centres[labels] + rng.standard_normal((count, dim)) * scales
        return (x @ rotation).astype(np.float32)

    return make_dataset(sample(n), sample(nq), "angular", name=f"angular-{n}x{dim}")


def load_hdf5(path: str) -> Dataset:
    """ann-benchmarks HDF5: ``train``, ``test``, ``neighbors`` (and ``distances``), metric in attrs."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading HDF5 datasets needs h5py: pip install h5py (or annforge[bench])") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        missing = [key for key in ("train", "test") if key not in f]
        if missing:
            raise DatasetError(f"{path}: no {' or '.join(repr(m) for m in missing)} dataset in the file; expected "
                               f"the ann-benchmarks layout (train, test, neighbors, attrs['distance'])")
        metric = f.attrs.get("distance", "euclidean")
        if isinstance(metric, bytes):
            metric = metric.decode()
        base, queries = np.asarray(f["train"]), np.asarray(f["test"])
        gt = np.asarray(f["neighbors"]) if "neighbors" in f else None
    return make_dataset(base, queries, str(metric), name=Path(path).stem, gt_ids=gt)


def _read_any_vecs(path: str) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    if suffix == ".fvecs":
        return read_fvecs(path)
    if suffix == ".bvecs":
        return read_bvecs(path).astype(np.float32)
    if suffix == ".ivecs":
        return read_ivecs(path).astype(np.float32)
    if suffix == ".npy":
        return np.load(path)
    raise ValueError(f"unknown vector file type {suffix!r} (use .fvecs, .bvecs, .ivecs or .npy)")


def load_files(base: str, queries: str, metric: str = "l2", gt: Optional[str] = None) -> Dataset:
    """A dataset from separate files (.fvecs/.bvecs/.npy); ``gt`` is .ivecs or .npy neighbour ids."""
    gt_ids = None
    if gt is not None:
        gt_ids = read_ivecs(gt) if gt.endswith(".ivecs") else np.load(gt)
    name = Path(base).stem
    return make_dataset(_read_any_vecs(base), _read_any_vecs(queries), metric, name=name, gt_ids=gt_ids)


class DatasetError(ValueError):
    """A ``--dataset`` / ``--queries`` / ``--gt`` that cannot be used; the message says what to pass."""


BUILTIN_DATASETS = ("default", "angular-64")

_VECTOR_SUFFIXES = (".fvecs", ".bvecs", ".ivecs", ".npy")


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise DatasetError(f"{what} {path!r}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"{what} {path!r} is a folder; pass a file")


def load_dataset(spec: Optional[str], metric: str = "l2", queries: Optional[str] = None,
                 gt: Optional[str] = None, quick: bool = False) -> Dataset:
    """Resolve ``--dataset``: None/"default"/"angular-64" → built-in; ``*.hdf5`` → ann-benchmarks; else vector files.

    Nothing is downloaded: a name that is not a local file raises :class:`DatasetError` saying what
    to pass instead.

    >>> load_dataset("glove-100-angular")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    annforge.bench.datasets.DatasetError: dataset 'glove-100-angular' is not a file here ...
    """
    if spec is None or spec == "default":
        return default_dataset(n=3_000, nq=100) if quick else default_dataset()
    if spec == "angular-64":
        return angular_dataset(n=3_000, nq=100) if quick else angular_dataset()
    suffix = Path(spec).suffix.lower()
    if not os.path.exists(spec):
        if suffix in (".hdf5", ".h5") + _VECTOR_SUFFIXES:
            raise DatasetError(f"dataset {spec!r}: no such file")
        hint = f"; an ann-benchmarks file such as {spec}.hdf5 (from ann-benchmarks.com) can be passed by its path" \
            if "-" in spec else ""
        raise DatasetError(f"dataset {spec!r} is not a file here and annforge bench downloads nothing: pass "
                           f"--dataset FILE.hdf5 (ann-benchmarks), --dataset BASE.fvecs|.bvecs|.npy --queries "
                           f"QUERIES, or a built-in name ({', '.join(BUILTIN_DATASETS)}){hint}")
    if os.path.isdir(spec):
        raise DatasetError(f"dataset {spec!r} is a folder; pass a .hdf5 file or a base-vector file")
    if suffix in (".hdf5", ".h5"):
        return load_hdf5(spec)
    if suffix not in _VECTOR_SUFFIXES:
        raise DatasetError(f"dataset {spec!r}: unknown file type {suffix or '(none)'!r}; use .hdf5 (ann-benchmarks) "
                           f"or base vectors in .fvecs, .bvecs, .ivecs or .npy")
    if queries is None:
        raise DatasetError(f"dataset {spec!r} holds base vectors only: also pass --queries QUERIES.fvecs|.npy "
                           f"(and optionally --gt NEIGHBOURS.ivecs|.npy; otherwise ground truth is computed)")
    _check_file(queries, "--queries")
    if gt is not None:
        _check_file(gt, "--gt")
    return load_files(spec, queries, metric, gt)


def true_distances(ds: Dataset, ids: np.ndarray) -> np.ndarray:
    """Distances (annforge convention: squared L2, or 1 - <q, x>) of ``ids`` [nq, k]; -1 → +inf."""
    ids = np.asarray(ids, dtype=np.int64)
    valid = (ids >= 0) & (ids < len(ds.base))
    rows = ds.base[np.where(valid, ids, 0)]  # [nq, k, dim]
    q = ds.queries[:, None, :]
    if ds.metric == "l2":
        d = np.sum((rows.astype(np.float64) - q) ** 2, axis=2)
    else:
        d = 1.0 - np.sum(rows.astype(np.float64) * q, axis=2)
    return np.where(valid, d, np.inf).astype(np.float32)


def _cache_dir() -> Path:
    root = os.environ.get("ANNFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "annforge")
    return Path(root) / "bench-gt"


def dataset_hash(ds: Dataset) -> str:
    h = hashlib.sha1()
    for arr in (ds.base, ds.queries):
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).data)
    h.update(ds.metric.encode())
    return h.hexdigest()[:20]


def ground_truth_cache_path(ds: Dataset, k: int) -> Path:
    """Where :func:`ensure_ground_truth` caches this dataset's exact neighbours (``$ANNFORGE_CACHE/bench-gt``,
    default ``~/.cache/annforge/bench-gt``)."""
    return _cache_dir() / f"{dataset_hash(ds)}-{ds.metric}-k{k}.npz"


def ensure_ground_truth(ds: Dataset, k: int, num_threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids and distances: from the dataset, else the cache, else computed with FlatIndex."""
    if ds.gt_ids is not None and ds.gt_ids.shape[1] >= k:
        return ds.gt_ids[:, :k], ds.gt_dist[:, :k]  # type: ignore[index]
    path = ground_truth_cache_path(ds, k)
    if path.exists():
        try:
            with np.load(path) as z:
                ds.gt_ids, ds.gt_dist = z["ids"], z["dist"]
            return ds.gt_ids, ds.gt_dist
        except (OSError, KeyError, ValueError):
            pass  # a broken cache entry is recomputed below
    from .. import FlatIndex

    index = FlatIndex(ds.dim, metric=ds.metric)
    index.add(ds.base, num_threads=num_threads)
    ids, _ = index.search(ds.queries, k, num_threads=num_threads)
    ds.gt_ids, ds.gt_dist = ids.astype(np.int64), true_distances(ds, ids)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ids=ds.gt_ids, dist=ds.gt_dist)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only home: ground truth is simply not cached
    return ds.gt_ids, ds.gt_dist


# ---- Jaccard / MinHash workload -----------------------------------------------------------------
@dataclass
class SetDataset:
    """Documents as token sets (sorted lists of str) for the ``--workload minhash`` benchmark."""

    name: str
    sets: List[List[str]]


def minhash_corpus(n_base: int = 5000, n_dup: int = 1000, vocab: int = 50_000, seed: int = 7) -> SetDataset:
    """Deterministic token-set corpus with injected near-duplicates.

    ``n_base`` documents of 20-60 distinct tokens drawn from a Zipf(1.1) vocabulary, then ``n_dup``
    copies of random base documents with 0-40 % of their tokens replaced, dropped or added, so
    the pair similarities spread over the whole 0.5-1.0 range (a fifth of the copies are exact).

    >>> ds = minhash_corpus(100, 20)
    >>> len(ds.sets), ds.sets == minhash_corpus(100, 20).sets
    (120, True)
    """
    rng = np.random.default_rng(seed)
    sets: List[List[str]] = []
    for _ in range(n_base):
        size = int(rng.integers(20, 61))
        toks: set = set()
        while len(toks) < size:
            draws = rng.zipf(1.1, size=2 * size)
            toks.update(int(t) for t in draws[draws <= vocab])
        sets.append(sorted(f"t{t}" for t in list(toks)[:size]))
    for c in range(n_dup):
        doc = list(sets[int(rng.integers(n_base))])
        edits = 0 if c % 5 == 0 else int(rng.integers(1, max(2, int(0.4 * len(doc)))))
        for _ in range(edits):
            op = int(rng.integers(3))
            pos = int(rng.integers(len(doc)))
            new = f"e{int(rng.integers(1 << 40))}"
            if op == 0:
                doc[pos] = new
            elif op == 1 and len(doc) > 5:
                doc.pop(pos)
            else:
                doc.append(new)
        sets.append(sorted(set(doc)))
    return SetDataset(f"zipf-sets-{n_base}+{n_dup}", sets)


def shingle_text(text: str, shingle: str = "word1") -> List[str]:
    """Distinct shingles of one document: ``wordN`` (N-word grams) or ``charN`` (N-character grams).

    >>> shingle_text("a b a c", "word1"), shingle_text("a b a c", "word2")
    (['a', 'b', 'c'], ['a b', 'b a', 'a c'])
    >>> shingle_text("abcd", "char3")
    ['abc', 'bcd']
    """
    unit, n = shingle.rstrip("0123456789"), int(shingle[len(shingle.rstrip("0123456789")):] or 1)
    if unit not in ("word", "char") or n < 1:
        raise ValueError(f"unknown shingle {shingle!r}; use wordN or charN, e.g. word1, word3, char5")
    items = text.split() if unit == "word" else list(" ".join(text.split()))
    sep = " " if unit == "word" else ""
    grams = [sep.join(items[i:i + n]) for i in range(max(1, len(items) - n + 1))] if items else []
    return list(dict.fromkeys(grams))


def load_text_sets(path: str, shingle: str = "word1") -> SetDataset:
    """One document per non-empty line of a UTF-8 text file, shingled with :func:`shingle_text`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        sets = [shingle_text(line, shingle) for line in f if line.strip()]
    if len(sets) < 2:
        raise ValueError(f"{path}: need at least 2 non-empty lines (one document per line)")
    return SetDataset(f"{Path(path).name} ({shingle})", sets)


def exact_pairs(sets: Sequence[Iterable[str]], threshold: float) -> Set[Tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, with exact Jaccard ≥ ``threshold``, found by prefix filtering.

    Tokens are ordered rarest first; J(A, B) ≥ t needs |A ∩ B| ≥ t·|A|, so when A is indexed after B
    the first ``|A| - ceil(t|A|) + 1`` rare tokens of A must meet B's indexed prefix. Candidates are
    then verified exactly, so the result is exact (no sampling).

    >>> sorted(exact_pairs([{"a", "b"}, {"a", "b"}, {"a", "c"}], 0.3))
    [(0, 1), (0, 2), (1, 2)]
    """
    from collections import Counter, defaultdict

    frozen = [frozenset(s) for s in sets]
    freq = Counter(t for s in frozen for t in s)
    index: Dict[str, List[int]] = defaultdict(list)
    found: Set[Tuple[int, int]] = set()
    for i, s in enumerate(frozen):
        n = len(s)
        if n == 0:
            continue
        toks = sorted(s, key=lambda t: (freq[t], t))
        prefix = n - int(np.ceil(threshold * n - 1e-9)) + 1
        cands: Set[int] = set()
        for t in toks[:prefix]:
            cands.update(index[t])
            index[t].append(i)
        for j in cands:
            inter = len(s & frozen[j])
            if inter / (n + len(frozen[j]) - inter) >= threshold - 1e-12:
                found.add((j, i))
    return found
