"""An embedded collection: documents, JSON metadata and vectors in SQLite, searched through an annforge index.

Crash safety (why the layout is what it is)
-------------------------------------------
SQLite is the source of truth: every record row holds its vector (float32 bytes, as given) and the
*generation* of the write that last touched it; deletions leave a tombstone row with their generation.
Each write (``upsert`` / ``delete``) is one SQLite transaction that bumps the collection generation; the
in-memory index is changed inside that transaction, before ``COMMIT``, so an error from the index rolls
the transaction back.

The index is written to disk only as snapshots, ``index.<generation>.af``, each saved atomically
(temporary file, fsync, rename) while no write is in progress, so the number in the name is exactly the
generation the file reflects. ``index.base.af`` is the empty (possibly trained) index the collection was
created with. On open, the newest snapshot not newer than the database is loaded and brought forward by
replaying rows and tombstones with a larger generation; the result is checked against the ids in SQLite
and, if anything disagrees (a damaged snapshot, tombstones already pruned), rebuilt from the base and
every row. A process killed at any point therefore reopens to exactly the last committed transaction.

A collection always reopens from SQLite: when no snapshot is usable (none was written before the process
died, or every one is damaged, unreadable or of another index), the index is rebuilt from the stored
vectors and a ``RuntimeWarning`` says why. The empty index it is rebuilt into comes from
``index.base.af``; when that file is missing or unreadable, from the constructor parameters recorded in
SQLite (FlatIndex, HNSWIndex), else from a loadable snapshot emptied of its vectors (trained families).
The database itself is checked with SQLite's ``PRAGMA quick_check`` when it is opened: a damaged file
raises OSError instead of answering from corrupted pages.

Files in the collection folder: ``collection.sqlite`` (+ its WAL), ``index.base.af``,
``index.<generation>.af``. One process at a time may open a folder (an advisory lock is taken).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
import uuid
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._base import VectorIndex, family_for, load
from ._filters import compile_where, compile_where_document
from ._mmr import maximal_marginal_relevance

PathLike = Union[str, "os.PathLike[str]"]
IndexSpec = Union[None, VectorIndex, Callable[[int], VectorIndex]]
WhereLike = Union[None, Mapping[str, Any], Callable[[Dict[str, Any]], bool]]
DocumentFilter = Optional[Mapping[str, Any]]

# chromadb query() arguments that Collection.search has no place for (Collection.query takes them).
_QUERY_ONLY_ARGUMENTS = frozenset({"include", "query_texts", "query_embeddings", "query_images", "query_uris", "ids"})
_INCLUDABLE = ("documents", "metadatas", "distances", "embeddings")

SCHEMA_VERSION = 1
DB_NAME = "collection.sqlite"
BASE_NAME = "index.base.af"
_SNAPSHOT_RE = re.compile(r"^index\.(\d+)\.af$")
_TMP_RE = re.compile(r"^index\.(?:\d+|base)\.af\.tmp-\d+$")
_SQL_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's parameter limit
_REPLAY_CHUNK = 8192  # vectors per index.add while replaying
_PROGRESS_MIN_ROWS = 50_000  # a rebuild of this many rows shows a progress bar (in a terminal)

# Folder (real path) -> the open Collection of this process that holds it; the LangChain store uses it
# to share an open folder instead of failing on the folder lock (re-run notebook cells).
_OPEN_IN_PROCESS: "weakref.WeakValueDictionary[str, Collection]" = weakref.WeakValueDictionary()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    num INTEGER PRIMARY KEY,      -- the int64 id the index knows the record by (never reused)
    id TEXT NOT NULL UNIQUE,      -- the caller's string id
    document TEXT,
    metadata TEXT NOT NULL,       -- JSON object
    embedding BLOB NOT NULL,      -- float32 x dim, as given (before any cosine normalisation)
    gen INTEGER NOT NULL          -- generation of the write that last set this row
);
CREATE INDEX IF NOT EXISTS records_by_gen ON records (gen);
CREATE TABLE IF NOT EXISTS tombstones (num INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Record:
    """One stored item. ``embedding`` is filled only when asked for (``include_embeddings=True``)."""

    id: str
    document: Optional[str]
    metadata: Dict[str, Any] = field(default_factory=dict)
    embedding: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Hit:
    """A search result: the record and its distance to the query (smaller is closer, the index's metric)."""

    id: str
    document: Optional[str]
    metadata: Dict[str, Any]
    distance: float
    embedding: Optional[np.ndarray] = field(default=None, compare=False, repr=False)


def default_index(dim: int) -> VectorIndex:
    """The index a collection creates when given none: HNSW over cosine distance."""
    from ..hnsw import HNSWIndex

    return HNSWIndex(dim, metric="cosine")


def _index_config(index: VectorIndex) -> Optional[Dict[str, Any]]:
    """Constructor arguments that recreate ``index`` empty, for the families that need no training."""
    name = type(index).__name__
    if name == "FlatIndex":
        return {"dim": index.dim, "metric": index.metric}
    if name == "HNSWIndex":
        return {"dim": index.dim, "metric": index.metric, "M": index.M,  # type: ignore[attr-defined]
                "ef_construction": index.ef_construction, "seed": index.seed,  # type: ignore[attr-defined]
                "storage": index.storage, "default_ef": index.default_ef}  # type: ignore[attr-defined]
    return None


def _index_from_config(cls_name: str, config: Dict[str, Any]) -> VectorIndex:
    config = dict(config)
    default_ef = config.pop("default_ef", None)
    index = family_for(cls_name)(**config)
    if default_ef is not None:
        index.default_ef = int(default_ef)  # type: ignore[attr-defined]
    return index


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _as_matrix(x: Any, what: str) -> np.ndarray:
    from .._arrays import as_float_matrix

    arr = as_float_matrix(x, what)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a [n, dim] matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinity")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _metadata_json(metadata: Any, position: int) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata #{position} must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise TypeError(f"metadata #{position} has a non-string key {key!r}")
    try:
        return json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"metadata #{position} is not JSON-serialisable: {exc}") from None


class _FolderLock:
    """Advisory exclusive lock on the collection folder (POSIX fcntl; a no-op where unavailable)."""

    def __init__(self, folder: str) -> None:
        self._file = open(os.path.join(folder, "LOCK"), "a+b")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise OSError(f"collection {folder!r} is already open (in another process or another Collection object)") from None

    def release(self) -> None:
        self._file.close()  # closing the descriptor drops the lock


class Collection:
    """Documents + JSON metadata + vectors, searched by any annforge index, persisted in one folder.

    Parameters
    ----------
    path:
        Folder of the collection (created if missing), or ``None`` for an in-memory collection.
    index:
        For a new collection: an empty annforge index (trained already, for the families that need it),
        or a callable ``dim -> index`` called at the first write; ``None`` means ``HNSWIndex(dim,
        metric="cosine")``. For an existing folder the saved index is used; passing one of a
        different family, dimension or metric raises ValueError.
    embedder:
        Anything with ``encode(list_of_str) -> [n, dim]`` (and optionally ``encode_queries``), e.g.
        ``annforge.embed.from_pretrained(...)``; needed only to pass texts instead of vectors.
    snapshot_every:
        Write an index snapshot once this many records changed since the last one, and at least a tenth
        of the collection did (so a large index is not rewritten for every small batch); ``None``: only
        on ``persist`` / ``close``. Reopening replays the changes a snapshot misses from SQLite.
    quick_check:
        Run SQLite's ``PRAGMA quick_check`` when an existing folder is opened and refuse a damaged database
        with OSError (it reads every page once: about 1 s for a 400 MB database of 200k 384-d records,
        against 2.8 s for the rest of opening it).

    Writes, as in chromadb: :meth:`add` inserts new ids only (an existing id raises ValueError),
    :meth:`upsert` inserts or replaces whole records, :meth:`update` changes the given fields of
    existing records. Filters (``where=``) are dicts such as ``{"lang": "en", "year": {"$gte": 2020}}``
    (see :mod:`annforge.store` for the operators) or a callable ``metadata -> bool``;
    ``where_document={"$contains": "text"}`` filters on the document text.

    >>> import annforge as af, numpy as np
    >>> col = af.store.Collection(None, index=af.FlatIndex(3, metric="cosine"))
    >>> col.upsert(["a", "b", "c"], documents=["x", "y", "z"],
    ...            metadatas=[{"n": 1}, {"n": 2}, {"n": 3}], embeddings=np.eye(3))
    ['a', 'b', 'c']
    >>> [h.id for h in col.search([1.0, 0.1, 0.0], k=2)]
    ['a', 'b']
    >>> [h.id for h in col.search([1.0, 0.1, 0.0], k=2, where={"n": {"$gte": 2}})]
    ['b', 'c']
    """

    def __init__(
        self,
        path: Optional[PathLike] = None,
        index: IndexSpec = None,
        embedder: Any = None,
        *,
        snapshot_every: Optional[int] = 10_000,
        quick_check: bool = True,
    ) -> None:
        if snapshot_every is not None and (isinstance(snapshot_every, bool) or int(snapshot_every) < 1):
            raise ValueError(f"snapshot_every must be a positive integer or None, got {snapshot_every!r}")
        self.embedder = embedder
        self.snapshot_every = None if snapshot_every is None else int(snapshot_every)
        self._lock = threading.RLock()
        self._folder: Optional[str] = None
        self._folder_lock: Optional[_FolderLock] = None
        self._index: Optional[VectorIndex] = None
        self._template: Optional[bytes] = None  # the empty index as saved in index.base.af
        self._make_empty: Optional[Callable[[], VectorIndex]] = None  # a fresh empty index, to rebuild into
        self._factory: Optional[Callable[[int], VectorIndex]] = None
        self._changed_since_snapshot = 0
        self._snapshot_gen = -1

        if path is None:
            self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            folder = os.fspath(path)
            os.makedirs(folder, exist_ok=True)
            self._folder_lock = _FolderLock(folder)
            self._folder = folder
            db_path = os.path.join(folder, DB_NAME)
            existed = os.path.isfile(db_path) and os.path.getsize(db_path) > 0
            try:
                self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
                if existed and quick_check:
                    self._check_database(db_path)
                # WAL + NORMAL: a killed process loses nothing committed; after a power cut the database may
                # step back a few transactions, and snapshots newer than it are then ignored (see _open_index).
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            except BaseException as exc:
                self._close_handles()
                if isinstance(exc, sqlite3.DatabaseError):
                    raise OSError(f"collection database {db_path!r} is damaged or not an SQLite file: {exc}") from None
                raise
        try:
            self._conn.executescript(_SCHEMA)
            self._init_settings()
            if self._setting("index_class") is not None:
                self._check_given_index(index)
                self._index = self._open_index()
            elif isinstance(index, VectorIndex):
                self._adopt_index(index)
            elif index is None or callable(index):
                self._factory = index if index is not None else default_index
            else:
                raise TypeError(f"index must be an annforge index or a callable dim -> index, got {type(index).__name__}")
        except BaseException as exc:
            self._close_handles()
            if isinstance(exc, sqlite3.DatabaseError):
                raise OSError(f"collection database in {self._folder!r} is damaged: {exc}") from None
            raise
        if self._folder is not None:
            _OPEN_IN_PROCESS[os.path.realpath(self._folder)] = self

    def _check_database(self, db_path: str) -> None:
        problems = [str(row[0]) for row in self._conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise OSError(
                f"collection database {db_path!r} is damaged (SQLite quick_check: {'; '.join(problems)}); "
                "restore it from a copy (Collection.save_to) or open it with quick_check=False to salvage records"
            )

    @staticmethod
    def _open_in_process(path: PathLike) -> Optional["Collection"]:
        """The open Collection of this process that holds the folder ``path``, if any."""
        found = _OPEN_IN_PROCESS.get(os.path.realpath(os.fspath(path)))
        return found if found is not None and found._conn is not None else None

    def _reopen(self) -> None:
        """Close and open the same folder again (after its files were replaced)."""
        assert self._folder is not None
        folder, embedder, every = self._folder, self.embedder, self.snapshot_every
        self._close_handles()
        self.__init__(folder, embedder=embedder, snapshot_every=every)  # type: ignore[misc]

    # -- settings --------------------------------------------------------------------------------
    def _init_settings(self) -> None:
        with self._transaction():
            version = self._setting("schema_version")
            if version is None:
                self._set("schema_version", SCHEMA_VERSION)
                self._set("generation", 0)
                self._set("next_num", 0)
            elif int(version) != SCHEMA_VERSION:
                raise OSError(f"collection schema version {version} is not supported (this build: {SCHEMA_VERSION})")

    def _setting(self, key: str) -> Optional[str]:
        row = self._conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def generation(self) -> int:
        """Number of committed writes so far (what an index snapshot is stamped with)."""
        with self._lock:
            return int(self._setting("generation") or 0)

    @property
    def path(self) -> Optional[str]:
        """The collection folder, or None for an in-memory collection."""
        return self._folder

    @property
    def index(self) -> Optional[VectorIndex]:
        """The annforge index (None until the first write when it is created lazily). Read-only use:
        changing it directly puts it out of step with the records."""
        return self._index

    @property
    def dim(self) -> Optional[int]:
        value = self._setting("dim")
        return None if value is None else int(value)

    @property
    def metric(self) -> Optional[str]:
        return self._setting("metric")

    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    def _transaction(self) -> "Collection._Txn":
        return Collection._Txn(self._conn)

    # -- index lifecycle -------------------------------------------------------------------------
    def _adopt_index(self, index: VectorIndex) -> None:
        if len(index) != 0:
            raise ValueError("a new collection needs an empty index (its ids are managed by the collection)")
        if getattr(index, "is_trained", True) is False:
            raise ValueError(f"{type(index).__name__} must be trained before it is given to a collection")
        template = index.to_bytes()
        if self._folder is not None:
            _write_atomic(os.path.join(self._folder, BASE_NAME), template)
        config = _index_config(index)
        with self._transaction():
            self._set("index_class", type(index).__name__)
            self._set("dim", index.dim)
            self._set("metric", index.metric)
            if config is not None:
                self._set("index_config", json.dumps(config))
        self._template = template
        self._make_empty, _ = self._empty_index_maker([])
        self._index = index
        self._snapshot_gen = -1

    def _check_given_index(self, index: IndexSpec) -> None:
        if not isinstance(index, VectorIndex):
            return  # None or a factory: the saved index wins
        expected = (self._setting("index_class"), self.dim, self.metric)
        given = (type(index).__name__, index.dim, index.metric)
        if given != expected:
            raise ValueError(
                f"collection {self._folder!r} holds a {expected[0]}(dim={expected[1]}, metric={expected[2]!r}); "
                f"got a {given[0]}(dim={given[1]}, metric={given[2]!r})"
            )

    def _open_index(self) -> VectorIndex:
        """Newest usable snapshot + replay of later generations, verified against SQLite; else a rebuild
        from the stored vectors, with a warning that says why."""
        if self._folder is None:  # pragma: no cover - in-memory collections never reopen
            raise OSError("in-memory collection has no saved index")
        db_gen = self.generation
        snapshots: List[Tuple[int, str]] = []
        for name in os.listdir(self._folder):
            full = os.path.join(self._folder, name)
            if _TMP_RE.match(name):
                os.remove(full)  # left by a save that was interrupted
                continue
            match = _SNAPSHOT_RE.match(name)
            if match:
                gen = int(match.group(1))
                if gen > db_gen:  # the database stepped back (power loss): this snapshot is from its future
                    os.remove(full)
                else:
                    snapshots.append((gen, full))
        problems: List[str] = []
        try:
            with open(os.path.join(self._folder, BASE_NAME), "rb") as fh:
                self._template = fh.read()
        except OSError as exc:
            self._template = None
            problems.append(f"{BASE_NAME} is unreadable ({exc.strerror or exc})")
        expected = (self._setting("index_class"), self.dim, self.metric)
        loaded: List[VectorIndex] = []  # snapshots that load, usable as an empty trained index
        for gen, full in sorted(snapshots, reverse=True):
            name = os.path.basename(full)
            try:
                index = load(full)
            except (OSError, ValueError) as exc:
                problems.append(f"snapshot {name} is unreadable ({exc})")
                continue
            found = (type(index).__name__, index.dim, index.metric)
            if found != expected:
                problems.append(f"snapshot {name} holds a {found[0]}(dim={found[1]}, metric={found[2]!r}), "
                                f"not this collection's {expected[0]}(dim={expected[1]}, metric={expected[2]!r})")
                continue
            loaded.append(index)
            try:
                self._replay(index, since=gen)
            except (OSError, ValueError) as exc:
                problems.append(f"snapshot {name} could not be brought up to date ({exc})")
                continue
            if self._consistent(index):
                self._make_empty, template_problem = self._empty_index_maker(loaded)
                if template_problem:  # the index is fine; only a later rebuild would need the template
                    warnings.warn(f"annforge collection {self._folder!r}: {template_problem}", RuntimeWarning, stacklevel=3)
                self._snapshot_gen = gen if gen == db_gen else -1
                self._changed_since_snapshot = 0 if gen == db_gen else 1
                return index
            problems.append(f"snapshot {name} disagrees with the records in SQLite")
        count = len(self)
        if not snapshots and count:
            problems.append("no index snapshot was written (the process that wrote the records was killed, or "
                            "ended without close(), before its first snapshot)")
        self._make_empty, template_problem = self._empty_index_maker(loaded)
        if template_problem:
            problems.append(template_problem)
        index = self._rebuild(show_progress=count >= _PROGRESS_MIN_ROWS and sys.stderr.isatty())
        if problems and count:
            warnings.warn(
                f"annforge collection {self._folder!r}: {'; '.join(problems)}; the index was rebuilt from the "
                f"{count} records in SQLite (no record was lost)",
                RuntimeWarning,
                stacklevel=3,
            )
        self._changed_since_snapshot = 1
        return index

    def _empty_index_maker(self, loaded: Sequence[VectorIndex]) -> Tuple[Optional[Callable[[], VectorIndex]], Optional[str]]:
        """A function returning a fresh empty index of this collection, and what went wrong on the way.

        Tried in order: the saved template (``index.base.af``), the constructor parameters recorded in
        SQLite, a loaded snapshot emptied of its vectors (keeps the training of IVF-PQ / ScaNN), the
        family's defaults for the recorded dimension and metric (FlatIndex / HNSWIndex only)."""
        cls_name = str(self._setting("index_class"))
        cls = family_for(cls_name)
        problem: Optional[str] = None
        if self._template is not None:
            template = self._template
            try:
                cls.from_bytes(template)
                return (lambda: cls.from_bytes(template)), None
            except (OSError, ValueError) as exc:
                problem = f"the empty index saved in {BASE_NAME} does not load ({exc})"
        config_text = self._setting("index_config")
        if config_text is not None:
            config = json.loads(config_text)
            _index_from_config(cls_name, config)
            return (lambda: _index_from_config(cls_name, config)), None  # nothing lost: same parameters
        for index in loaded:
            try:
                emptied = index.to_bytes()
                fresh = cls.from_bytes(emptied)
                ids = fresh.ids()
                if len(ids):
                    fresh.remove(ids)
                data = fresh.to_bytes()
                cls.from_bytes(data)
            except (OSError, ValueError):
                continue
            return (lambda: cls.from_bytes(data)), problem
        if cls_name in ("FlatIndex", "HNSWIndex"):
            dim, metric = int(self._setting("dim") or 0), str(self._setting("metric"))
            note = (f"{problem}; {cls_name} parameters other than dim={dim} and metric={metric!r} were not "
                    "recorded, so the rebuilt index uses the defaults") if problem else None
            return (lambda: _index_from_config(cls_name, {"dim": dim, "metric": metric})), note
        return None, problem

    def _rebuild(self, show_progress: bool = False) -> VectorIndex:
        """A fresh index from the empty template and every row in SQLite."""
        if self._make_empty is None:
            raise OSError(
                f"collection {self._folder!r}: the index cannot be rebuilt: its empty template ({BASE_NAME}) "
                "is unusable and no snapshot loads; the records are intact in the database (read them with "
                "get(include_embeddings=True) and add them to a new collection)"
            )
        index = self._make_empty()
        self._replay(index, since=-1, show_progress=show_progress)
        if not self._consistent(index):
            raise OSError("collection index could not be rebuilt consistently from its records")
        self._snapshot_gen = -1
        return index

    def _replay(self, index: VectorIndex, since: int, show_progress: bool = False) -> None:
        gone = [row[0] for row in self._conn.execute("SELECT num FROM tombstones WHERE gen > ?", (since,))]
        if gone:
            index.remove(np.asarray(gone, dtype=np.int64))
        dim = int(self._setting("dim") or 0)
        bar = None
        if show_progress:
            from ..embed._progress import progress_bar

            total = int(self._conn.execute("SELECT COUNT(*) FROM records WHERE gen > ?", (since,)).fetchone()[0])
            bar = progress_bar(total, "rebuilding index", True)
        try:
            cursor = self._conn.execute("SELECT num, embedding FROM records WHERE gen > ? ORDER BY num", (since,))
            while True:
                rows = cursor.fetchmany(_REPLAY_CHUNK)
                if not rows:
                    break
                nums = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
                index.add(vectors, nums)
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()

    def _consistent(self, index: VectorIndex) -> bool:
        stored = np.fromiter((r[0] for r in self._conn.execute("SELECT num FROM records ORDER BY num")), dtype=np.int64)
        return bool(np.array_equal(np.sort(np.asarray(index.ids(), dtype=np.int64)), stored))

    def _ensure_index(self, dim: int) -> VectorIndex:
        if self._index is None:
            assert self._factory is not None
            index = self._factory(dim)
            if not isinstance(index, VectorIndex):
                raise TypeError(f"the index factory returned {type(index).__name__}, not an annforge index")
            self._adopt_index(index)
        assert self._index is not None
        if self._index.dim != dim:
            raise ValueError(f"embeddings have dimension {dim}, the collection holds dimension {self._index.dim}")
        return self._index

    # -- writes ----------------------------------------------------------------------------------
    # The three write verbs follow chromadb: ``add`` only inserts, ``upsert`` inserts or replaces whole
    # records, ``update`` changes the given fields of existing records.
    def add(
        self,
        ids: Optional[Sequence[Optional[str]]] = None,
        documents: Optional[Sequence[Optional[str]]] = None,
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        embeddings: Any = None,
    ) -> List[str]:
        """Insert new records; returns their ids (generated UUID hex strings where ``None``).

        An id that is already in the collection raises ValueError naming some of them, and nothing is
        written (use :meth:`upsert` to replace records, :meth:`update` to change some fields).
        Without ``embeddings``, ``documents`` are embedded with the collection's embedder.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> col.add(["a"], documents=["first"], embeddings=[[0, 1]])
        ['a']
        >>> col.add(["a", "b"], embeddings=[[1, 0], [1, 1]])
        Traceback (most recent call last):
        ...
        ValueError: add: 1 of the ids already exist in the collection ('a'); use upsert() to replace whole records or update() to change some of their fields
        """
        return self._write_records("add", ids, documents, metadatas, embeddings)

    def upsert(
        self,
        ids: Optional[Sequence[Optional[str]]] = None,
        documents: Optional[Sequence[Optional[str]]] = None,
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        embeddings: Any = None,
    ) -> List[str]:
        """Insert new records and replace existing ones whole; returns their ids (generated UUID hex
        strings where ``None``).

        Replacing a record replaces its document, metadata and vector: a field not given becomes empty
        (``None`` document, ``{}`` metadata), unlike :meth:`update` (and unlike chromadb's upsert, which
        keeps unspecified fields). Without ``embeddings``, ``documents`` are embedded with the
        collection's embedder. All-or-nothing: on any error nothing changes.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> _ = col.upsert(["a"], documents=["first"], metadatas=[{"n": 1}], embeddings=[[0, 1]])
        >>> _ = col.upsert(["a"], documents=["second"], embeddings=[[1, 0]])
        >>> col.get(["a"])
        [Record(id='a', document='second', metadata={})]
        """
        return self._write_records("upsert", ids, documents, metadatas, embeddings)

    def update(
        self,
        ids: Sequence[str],
        documents: Optional[Sequence[Optional[str]]] = None,
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        embeddings: Any = None,
    ) -> None:
        """Change only the given fields of existing records.

        - ``embeddings``: the new vectors (one per id).
        - ``documents``: the new texts; a ``None`` entry keeps that record's text. When ``documents`` are
          given without ``embeddings`` and the collection has an embedder, the changed texts are
          embedded again (as chromadb does); without an embedder only the text changes.
        - ``metadatas``: merged into each record's metadata: the given keys are set, a key given as
          ``None`` is removed, other keys stay; a ``None`` entry keeps that record's metadata.

        An id that is not in the collection raises ValueError naming some of them, and nothing changes.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> _ = col.add(["a"], documents=["text"], metadatas=[{"lang": "en", "year": 2020}], embeddings=[[0, 1]])
        >>> col.update(["a"], metadatas=[{"year": 2024, "lang": None}])
        >>> col.get(["a"])
        [Record(id='a', document='text', metadata={'year': 2024})]
        """
        if ids is None or isinstance(ids, str):
            raise TypeError("update needs a list of ids (strings)")
        id_list = list(ids)
        n = len(id_list)
        for i in id_list:
            if not isinstance(i, str) or not i:
                raise TypeError(f"ids must be non-empty strings, got {i!r}")
        if len(set(id_list)) != n:
            raise ValueError("duplicate ids in one update")
        if documents is None and metadatas is None and embeddings is None:
            raise ValueError("update needs documents, metadatas or embeddings")
        _count(id_list, documents, metadatas, embeddings)
        if n == 0:
            return
        docs = list(documents) if documents is not None else [None] * n
        for d in docs:
            if d is not None and not isinstance(d, str):
                raise TypeError(f"documents must be strings or None, got {type(d).__name__}")
        changes: List[Optional[Dict[str, Any]]] = [None] * n
        if metadatas is not None:
            for pos, m in enumerate(metadatas):
                if m is not None:
                    _metadata_json({k: v for k, v in dict(m).items() if v is not None}
                                   if isinstance(m, Mapping) else m, pos)
                    changes[pos] = dict(m)
        with self._lock:
            existing = self._nums_for(id_list)
            missing = [i for i in id_list if i not in existing]
            if missing:
                raise ValueError(f"update: {len(missing)} of the ids are not in the collection "
                                 f"({_sample(missing)}); use add() or upsert() to insert records")
        vector_rows: List[int] = []
        vectors: Optional[np.ndarray] = None
        if embeddings is not None:
            vectors = _as_matrix(embeddings, "embeddings")
            if vectors.shape[0] != n:
                raise ValueError(f"{vectors.shape[0]} embeddings for {n} records")
            vector_rows = list(range(n))
        elif documents is not None and self.embedder is not None:
            vector_rows = [p for p in range(n) if docs[p] is not None]
            if vector_rows:
                vectors = _as_matrix(self.embedder.encode([docs[p] for p in vector_rows]), "embeddings")
                if vectors.shape[0] != len(vector_rows):
                    raise ValueError(f"the embedder returned {vectors.shape[0]} vectors for {len(vector_rows)} documents")
        with self._lock:
            index = self._index
            assert index is not None  # records exist, so the index does
            if vectors is not None and vectors.shape[1] != index.dim:
                raise ValueError(f"embeddings have dimension {vectors.shape[1]}, the collection holds dimension {index.dim}")
            mutated = False
            try:
                with self._transaction() as conn:
                    gen = self.generation + 1
                    current = self._nums_for(id_list)
                    missing = [i for i in id_list if i not in current]
                    if missing:  # deleted by another thread since the check above
                        raise ValueError(f"update: {len(missing)} of the ids are not in the collection ({_sample(missing)})")
                    nums = [current[i] for i in id_list]
                    rows = {int(r[0]): r for r in self._select_rows(nums)}
                    new_vector = {p: vectors[j] for j, p in enumerate(vector_rows)} if vectors is not None else {}
                    updates = []
                    for p, num in enumerate(nums):
                        _, _, old_doc, old_meta, old_vec = rows[num]
                        meta = old_meta
                        if changes[p] is not None:
                            merged = json.loads(old_meta)
                            for key, value in changes[p].items():  # type: ignore[union-attr]
                                if value is None:
                                    merged.pop(key, None)
                                else:
                                    merged[key] = value
                            meta = _metadata_json(merged, p)
                        vec = new_vector[p].tobytes() if p in new_vector else old_vec
                        updates.append((docs[p] if docs[p] is not None else old_doc, meta, vec, gen, num))
                    conn.executemany(
                        "UPDATE records SET document = ?, metadata = ?, embedding = ?, gen = ? WHERE num = ?", updates
                    )
                    self._set("generation", gen)
                    mutated = True
                    if vectors is not None and vector_rows:
                        index.add(vectors, np.asarray([nums[p] for p in vector_rows], dtype=np.int64))
            except BaseException:
                if mutated:
                    self._index = self._rebuild()
                raise
            self._after_write(n)

    def _select_rows(self, nums: Sequence[int]) -> List[Tuple[Any, ...]]:
        out: List[Tuple[Any, ...]] = []
        for chunk in _chunks(list(nums), _SQL_CHUNK):
            q = f"SELECT num, id, document, metadata, embedding FROM records WHERE num IN ({','.join('?' * len(chunk))})"
            out.extend(self._conn.execute(q, list(chunk)))
        return out

    def _write_records(
        self,
        mode: str,
        ids: Optional[Sequence[Optional[str]]],
        documents: Optional[Sequence[Optional[str]]],
        metadatas: Optional[Sequence[Optional[Mapping[str, Any]]]],
        embeddings: Any,
    ) -> List[str]:
        n = _count(ids, documents, metadatas, embeddings)
        if n == 0:
            return []
        id_list = [uuid.uuid4().hex if i is None else i for i in (ids if ids is not None else [None] * n)]
        for i in id_list:
            if not isinstance(i, str) or not i:
                raise TypeError(f"ids must be non-empty strings, got {i!r}")
        if len(set(id_list)) != n:
            raise ValueError(f"duplicate ids in one {mode}")
        docs = list(documents) if documents is not None else [None] * n
        for d in docs:
            if d is not None and not isinstance(d, str):
                raise TypeError(f"documents must be strings or None, got {type(d).__name__}")
        metas = [_metadata_json(m, i) for i, m in enumerate(metadatas if metadatas is not None else [None] * n)]
        if mode == "add":  # before embedding anything
            with self._lock:
                self._refuse_existing(id_list)
        if embeddings is None:
            if self.embedder is None:
                raise ValueError("no embeddings given and the collection has no embedder")
            if any(d is None for d in docs):
                raise ValueError("every record needs a document to be embedded")
            embeddings = self.embedder.encode(list(docs))
        vectors = _as_matrix(embeddings, "embeddings")
        if vectors.shape[0] != n:
            raise ValueError(f"{vectors.shape[0]} embeddings for {n} records")

        with self._lock:
            index = self._ensure_index(vectors.shape[1])
            mutated = False
            try:
                with self._transaction() as conn:
                    gen = self.generation + 1
                    if mode == "add":
                        self._refuse_existing(id_list)
                    existing = self._nums_for(id_list)
                    next_num = int(self._setting("next_num") or 0)
                    nums = np.empty(n, dtype=np.int64)
                    for pos, sid in enumerate(id_list):
                        num = existing.get(sid)
                        if num is None:
                            num, next_num = next_num, next_num + 1
                        nums[pos] = num
                    conn.executemany(
                        "INSERT OR REPLACE INTO records (num, id, document, metadata, embedding, gen) VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (int(nums[p]), id_list[p], docs[p], metas[p], vectors[p].tobytes(), gen)
                            for p in range(n)
                        ],
                    )
                    self._set("generation", gen)
                    self._set("next_num", next_num)
                    mutated = True
                    index.add(vectors, nums)
            except BaseException:
                if mutated:
                    self._index = self._rebuild()  # the index may hold part of a write that was rolled back
                raise
            self._after_write(n)
        return id_list

    def _refuse_existing(self, id_list: Sequence[str]) -> None:
        found = self._nums_for(id_list)
        if found:
            taken = [i for i in id_list if i in found]
            raise ValueError(
                f"add: {len(taken)} of the ids already exist in the collection ({_sample(taken)}); "
                "use upsert() to replace whole records or update() to change some of their fields"
            )

    def delete(
        self, ids: Optional[Iterable[str]] = None, *, where: WhereLike = None, where_document: DocumentFilter = None
    ) -> int:
        """Delete records by id and/or filters (all given must hold); returns how many.
        Unknown ids are ignored."""
        if ids is None and where is None and where_document is None:
            raise ValueError("delete needs ids or a where filter (use where={} to delete everything)")
        with self._lock:
            nums = self._select_nums(ids, where, where_document)
            if not nums or self._index is None:
                return 0
            mutated = False
            try:
                with self._transaction() as conn:
                    gen = self.generation + 1
                    for chunk in _chunks(nums, _SQL_CHUNK):
                        conn.execute(
                            f"DELETE FROM records WHERE num IN ({','.join('?' * len(chunk))})", list(chunk)
                        )
                    conn.executemany(
                        "INSERT OR REPLACE INTO tombstones (num, gen) VALUES (?, ?)", [(num, gen) for num in nums]
                    )
                    self._set("generation", gen)
                    mutated = True
                    self._index.remove(np.asarray(nums, dtype=np.int64))
            except BaseException:
                if mutated:
                    self._index = self._rebuild()
                raise
            self._after_write(len(nums))
            return len(nums)

    def _after_write(self, changed: int) -> None:
        self._changed_since_snapshot += changed
        if self.snapshot_every is None or self._folder is None:
            return
        if self._changed_since_snapshot >= max(self.snapshot_every, len(self) // 10):
            self.persist()

    # -- reads -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def count(self, where: WhereLike = None, *, where_document: DocumentFilter = None) -> int:
        """Number of records (matching ``where`` / ``where_document`` when given)."""
        if where is None and where_document is None:
            return len(self)
        with self._lock:
            return len(self._select_nums(None, where, where_document))

    def __contains__(self, id: object) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM records WHERE id = ?", (str(id),)).fetchone() is not None

    def get(
        self,
        ids: Optional[Iterable[str]] = None,
        *,
        where: WhereLike = None,
        limit: Optional[int] = None,
        include_embeddings: bool = False,
        where_document: DocumentFilter = None,
        offset: int = 0,
    ) -> List[Record]:
        """Records by id (in the order asked, unknown ids skipped) and/or by filter (in insertion order);
        ``offset`` / ``limit`` page through them.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> _ = col.upsert(["p", "q"], documents=["one", "two"], embeddings=[[0, 1], [1, 0]])
        >>> [r.document for r in col.get(["q", "missing", "p"])]
        ['two', 'one']
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        with self._lock:
            if ids is None and where is None and where_document is None:
                rows = self._conn.execute(
                    "SELECT num, id, document, metadata, embedding FROM records ORDER BY num"
                ).fetchall()
                records = [self._record(r, include_embeddings) for r in rows]
            else:
                nums = self._select_nums(ids, where, where_document)
                by_num = self._fetch(nums, include_embeddings)
                records = [by_num[num] for num in nums if num in by_num]
        records = records[offset:]
        return records[:limit] if limit is not None else records

    def search(
        self,
        query: Any,
        k: Optional[int] = None,
        *,
        where: WhereLike = None,
        include_embeddings: bool = False,
        n_results: Optional[int] = None,
        where_document: DocumentFilter = None,
        **params: Any,
    ) -> List[Hit]:
        """The ``k`` records nearest to ``query`` (a string, embedded with the embedder, or a vector),
        best first, among those matching ``where`` (metadata) and ``where_document`` (text).

        ``k`` defaults to 4; ``n_results`` is chromadb's name for it. ``where_document`` takes
        ``{"$contains": "text"}``, ``{"$not_contains": "text"}`` and ``$and`` / ``$or`` lists of those.
        Other keyword arguments are the index's search knobs (e.g. ``ef=128`` for HNSW). For chromadb's
        ``query(query_texts=..., include=...)`` call shape and result dict, use :meth:`query`.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> _ = col.add(["a", "b", "c"], documents=["red fox", "red hen", "blue jay"],
        ...             embeddings=[[0, 0], [1, 0], [2, 0]])
        >>> [h.id for h in col.search([0, 0], n_results=2, where_document={"$contains": "red"})]
        ['a', 'b']
        """
        return self.search_batch([query] if isinstance(query, str) else _as_matrix(query, "query"), k,
                                 where=where, include_embeddings=include_embeddings, n_results=n_results,
                                 where_document=where_document, **params)[0]

    def search_batch(
        self,
        queries: Any,
        k: Optional[int] = None,
        *,
        where: WhereLike = None,
        include_embeddings: bool = False,
        n_results: Optional[int] = None,
        where_document: DocumentFilter = None,
        **params: Any,
    ) -> List[List[Hit]]:
        """``search`` for many queries at once (a list of strings or an ``[nq, dim]`` matrix)."""
        k = _resolve_k(k, n_results, default=4)
        misplaced = sorted(_QUERY_ONLY_ARGUMENTS.intersection(params))
        if misplaced:
            raise TypeError(
                f"Collection.search does not take {', '.join(misplaced)} (chromadb query() arguments): use "
                "Collection.query(query_texts=... or query_embeddings=..., include=[...]) for chromadb's call "
                "shape, or pass the query first and include_embeddings=True here"
            )
        q = self._embed_queries(queries)
        with self._lock:
            if self._index is None or len(self._index) == 0:
                return [[] for _ in range(q.shape[0])]
            allowed = None
            if where is not None or where_document is not None:
                allowed = np.asarray(self._select_nums(None, where, where_document), dtype=np.int64)
                if allowed.size == 0:
                    return [[] for _ in range(q.shape[0])]
            kk = int(min(k, len(self._index) if allowed is None else allowed.size))
            try:
                nums, dists = self._index.search(q, kk, filter=allowed, **params)
            except ValueError as exc:
                if "unknown search parameter" not in str(exc):
                    raise
                raise ValueError(
                    f"{exc}; Collection.search itself takes k (or n_results), where, where_document and "
                    "include_embeddings, and passes other keywords to the index"
                ) from None
            wanted = sorted({int(v) for v in nums.ravel() if v >= 0})
            by_num = self._fetch(wanted, include_embeddings)
        out: List[List[Hit]] = []
        for row_nums, row_dists in zip(nums, dists):
            hits = []
            for num, dist in zip(row_nums.tolist(), row_dists.tolist()):
                rec = by_num.get(num)
                if num < 0 or rec is None:
                    continue
                hits.append(Hit(rec.id, rec.document, rec.metadata, float(dist), rec.embedding))
            out.append(hits)
        return out

    def query(
        self,
        query_embeddings: Any = None,
        query_texts: Optional[Sequence[str]] = None,
        n_results: int = 10,
        where: WhereLike = None,
        where_document: DocumentFilter = None,
        include: Sequence[str] = ("metadatas", "documents", "distances"),
        **params: Any,
    ) -> Dict[str, Any]:
        """chromadb's ``Collection.query``: one list per query under ``"ids"``, and under each of
        ``include`` (``"documents"``, ``"metadatas"``, ``"distances"``, ``"embeddings"``; the others are
        ``None``). Give ``query_embeddings`` or ``query_texts`` (embedded with ``encode_queries`` /
        ``encode`` of the embedder). Distances are the index's (smaller is closer). ``"uris"`` and
        ``"data"`` are not stored by this collection and raise ValueError.

        >>> import annforge as af
        >>> col = af.store.Collection(None, index=af.FlatIndex(2))
        >>> _ = col.add(["a", "b"], documents=["x", "y"], embeddings=[[0, 0], [3, 4]])
        >>> col.query(query_embeddings=[[0, 1]], n_results=1, include=["documents", "distances"])["documents"]
        [['x']]
        """
        if (query_embeddings is None) == (query_texts is None):
            raise ValueError("query needs exactly one of query_embeddings or query_texts")
        if isinstance(include, str):
            raise TypeError('include must be a list such as ["documents", "distances"], not a string')
        unknown = [name for name in include if name not in _INCLUDABLE]
        if unknown:
            raise ValueError(f"include {unknown} is not supported; choose from {list(_INCLUDABLE)}")
        if query_texts is not None:
            if isinstance(query_texts, str):
                query_texts = [query_texts]
            queries: Any = list(query_texts)
            if not all(isinstance(t, str) for t in queries):
                raise TypeError("query_texts must be strings")
        else:
            queries = _as_matrix(query_embeddings, "query_embeddings")
        results = self.search_batch(queries, n_results=n_results, where=where, where_document=where_document,
                                    include_embeddings="embeddings" in include, **params)
        picks = {
            "documents": lambda h: h.document,
            "metadatas": lambda h: h.metadata,
            "distances": lambda h: h.distance,
            "embeddings": lambda h: h.embedding,
        }
        out: Dict[str, Any] = {"ids": [[h.id for h in hits] for hits in results]}
        for name in _INCLUDABLE:
            out[name] = [[picks[name](h) for h in hits] for hits in results] if name in include else None
        out["included"] = list(include)
        return out

    def mmr_search(
        self,
        query: Any,
        k: int = 4,
        *,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        where: WhereLike = None,
        include_embeddings: bool = False,
        where_document: DocumentFilter = None,
        **params: Any,
    ) -> List[Hit]:
        """Maximal marginal relevance: fetch the ``fetch_k`` nearest records, then pick ``k`` of them that
        are relevant and diverse (``lambda_mult`` 1 = relevance only, 0 = diversity only)."""
        q = self._embed_queries([query] if isinstance(query, str) else query)
        candidates = self.search(q[0], max(int(fetch_k), int(k)), where=where, where_document=where_document,
                                 include_embeddings=True, **params)
        if not candidates:
            return []
        vectors = np.stack([h.embedding for h in candidates])
        order = maximal_marginal_relevance(q[0], vectors, k=int(k), lambda_mult=lambda_mult)
        picked = [candidates[i] for i in order]
        if not include_embeddings:
            picked = [Hit(h.id, h.document, h.metadata, h.distance) for h in picked]
        return picked

    def _embed_queries(self, queries: Any) -> np.ndarray:
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(t, str) for t in queries):
            if self.embedder is None:
                raise ValueError("text queries need an embedder")
            encode = getattr(self.embedder, "encode_queries", None) or self.embedder.encode
            return _as_matrix(encode(list(queries)), "query embeddings")
        return _as_matrix(queries, "queries")

    # -- id and filter resolution ----------------------------------------------------------------
    def _nums_for(self, ids: Sequence[str]) -> Dict[str, int]:
        found: Dict[str, int] = {}
        for chunk in _chunks(list(ids), _SQL_CHUNK):
            q = f"SELECT id, num FROM records WHERE id IN ({','.join('?' * len(chunk))})"
            found.update((str(sid), int(num)) for sid, num in self._conn.execute(q, list(chunk)))
        return found

    def _select_nums(
        self, ids: Optional[Iterable[str]], where: WhereLike, where_document: DocumentFilter = None
    ) -> List[int]:
        """Index ids of the records named by ``ids`` (in that order, unknown skipped, no duplicates)
        that also match ``where`` and ``where_document``; all matches in num order when ``ids`` is None."""
        if ids is not None:
            if isinstance(ids, str):
                raise TypeError("ids must be a list of strings, not one string")
            id_list = list(dict.fromkeys(ids))
            mapping = self._nums_for(id_list)
            nums = [mapping[i] for i in id_list if i in mapping]
            if where is None and where_document is None:
                return nums
            allowed = set(self._select_nums(None, where, where_document))
            return [n for n in nums if n in allowed]
        clauses: List[str] = []
        params: List[Any] = []
        if where is not None and not callable(where):
            sql, where_params = compile_where(where)
            clauses.append(sql)
            params.extend(where_params)
        if where_document is not None:
            sql, doc_params = compile_where_document(where_document)
            clauses.append(sql)
            params.extend(doc_params)
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        if callable(where):
            return [
                int(num)
                for num, meta in self._conn.execute(f"SELECT num, metadata FROM records {condition} ORDER BY num", params)
                if where(json.loads(meta))
            ]
        return [int(r[0]) for r in self._conn.execute(f"SELECT num FROM records {condition} ORDER BY num", params)]

    def _fetch(self, nums: Sequence[int], include_embeddings: bool) -> Dict[int, Record]:
        out: Dict[int, Record] = {}
        cols = "num, id, document, metadata" + (", embedding" if include_embeddings else "")
        for chunk in _chunks(list(nums), _SQL_CHUNK):
            q = f"SELECT {cols} FROM records WHERE num IN ({','.join('?' * len(chunk))})"
            for row in self._conn.execute(q, list(chunk)):
                out[int(row[0])] = self._record(row, include_embeddings)
        return out

    @staticmethod
    def _record(row: Tuple[Any, ...], include_embeddings: bool) -> Record:
        embedding = np.frombuffer(row[4], dtype=np.float32).copy() if include_embeddings else None
        return Record(str(row[1]), row[2], json.loads(row[3]), embedding)

    # -- persistence -----------------------------------------------------------------------------
    def persist(self) -> None:
        """Write an index snapshot for the current generation (no-op in memory or when already saved)."""
        with self._lock:
            if self._folder is None or self._index is None:
                self._changed_since_snapshot = 0
                return
            gen = self.generation
            if gen != self._snapshot_gen:
                self._index.save(os.path.join(self._folder, f"index.{gen}.af"))
                self._snapshot_gen = gen
                for name in os.listdir(self._folder):
                    match = _SNAPSHOT_RE.match(name)
                    if match and int(match.group(1)) != gen:
                        os.remove(os.path.join(self._folder, name))
                with self._transaction() as conn:
                    conn.execute("DELETE FROM tombstones WHERE gen <= ?", (gen,))
            self._changed_since_snapshot = 0

    def save_to(self, path: PathLike) -> None:
        """Copy the collection into a new (or empty) folder; open it later with ``Collection(path)``."""
        dest = os.fspath(path)
        if self._folder is not None and os.path.abspath(dest) == os.path.abspath(self._folder):
            self.persist()
            return
        if os.path.isdir(dest) and os.listdir(dest):
            raise ValueError(f"{dest!r} exists and is not empty")
        os.makedirs(dest, exist_ok=True)
        with self._lock:
            if self._index is None:
                raise ValueError("nothing to save: the collection has no index yet (add something first)")
            assert self._template is not None
            _write_atomic(os.path.join(dest, BASE_NAME), self._template)
            gen = self.generation
            self._index.save(os.path.join(dest, f"index.{gen}.af"))
            target = sqlite3.connect(os.path.join(dest, DB_NAME))
            try:
                self._conn.backup(target)
                target.execute("DELETE FROM tombstones")
                target.commit()
            finally:
                target.close()

    def close(self) -> None:
        """Snapshot the index (on disk) and release the folder. Safe to call twice."""
        if getattr(self, "_conn", None) is None:
            return
        try:
            if self._changed_since_snapshot:
                self.persist()
        finally:
            self._close_handles()

    def _close_handles(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None  # type: ignore[assignment]
        if conn is not None:
            conn.close()
        if self._folder is not None:
            key = os.path.realpath(self._folder)
            if _OPEN_IN_PROCESS.get(key) is self:
                del _OPEN_IN_PROCESS[key]
        if self._folder_lock is not None:
            self._folder_lock.release()
            self._folder_lock = None

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "memory" if self._folder is None else repr(self._folder)
        idx = "no index yet" if self._index is None else repr(self._index)
        return f"Collection({where}, {idx}, records={len(self) if self._conn else 'closed'})"


def _count(*columns: Any) -> int:
    sizes = set()
    for column in columns:
        if column is None:
            continue
        if isinstance(column, str):
            raise TypeError("pass lists (one entry per record), not a single string")
        try:
            sizes.add(len(column))
        except TypeError:
            raise TypeError(f"expected a sequence, got {type(column).__name__}") from None
    if not sizes:
        raise ValueError("upsert needs ids, documents or embeddings")
    if len(sizes) > 1:
        raise ValueError(f"ids, documents, metadatas and embeddings have different lengths: {sorted(sizes)}")
    return sizes.pop()


def _sample(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _resolve_k(k: Optional[int], n_results: Optional[int], default: int) -> int:
    if k is not None and n_results is not None:
        raise TypeError("give k or n_results (chromadb's name for it), not both")
    value = k if k is not None else n_results if n_results is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        name = "n_results" if n_results is not None else "k"
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
