"""LangChain ``VectorStore`` over an :class:`annforge.store.Collection` (``pip install 'annforge[langchain]'``).

It behaves like LangChain's FAISS store (``from_texts``, ``add_texts`` with ids and metadatas,
``similarity_search*``, ``max_marginal_relevance_search``, ``delete``, ``get_by_ids``,
``save_local``/``load_local``, ``as_retriever``, metadata filter dicts), with three differences:
documents and metadata live in SQLite instead of a pickled docstore (so ``load_local`` never unpickles
anything), filters are applied inside the index search (``k`` results whenever ``k`` documents match,
no ``fetch_k`` over-fetching needed) and writes are crash-safe. ``save_local`` replaces an earlier save
as FAISS's does; ``load_local`` works on the saved folder in place (later writes are saved as they
happen) and, when this process already has that folder open, shares it.

Scores from ``similarity_search_with_score`` are the index's distances (smaller is closer): squared
Euclidean for ``"l2"`` (the default, a ``FlatIndex`` as FAISS's default ``IndexFlatL2``), ``1 - <q, x>``
for ``"ip"``, ``1 - cos`` for ``"cosine"``. Relevance scores (``similarity_score_threshold`` retrievers)
are ``1 - sqrt(d) / sqrt(2)`` for ``"l2"`` and ``1 - d`` otherwise (in [0, 1] for unit-length vectors).

>>> from langchain_core.embeddings import DeterministicFakeEmbedding
>>> from annforge.integrations.langchain import AnnforgeVectorStore
>>> store = AnnforgeVectorStore.from_texts(["cats purr", "dogs bark"], DeterministicFakeEmbedding(size=8),
...                                        metadatas=[{"animal": "cat"}, {"animal": "dog"}], ids=["c", "d"])
>>> [doc.id for doc in store.similarity_search("dogs bark", k=1)]
['d']
>>> [doc.id for doc in store.similarity_search("dogs bark", k=2, filter={"animal": "cat"})]
['c']
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"annforge.integrations.langchain needs langchain-core: pip install 'annforge[langchain]' ({exc})"
    ) from exc

from .._base import VectorIndex
from ..flat import FlatIndex
from ..store import Collection, Hit
from ..store._collection import DB_NAME, IndexSpec, WhereLike, _FolderLock

__all__ = ["AnnforgeEmbeddings", "AnnforgeVectorStore"]

VST = TypeVar("VST", bound="AnnforgeVectorStore")


class AnnforgeEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over an annforge embedder (``annforge.embed.from_pretrained(...)`` or any
    object with ``encode(list_of_str) -> [n, dim]``; ``encode_queries`` is used for queries when present).

    >>> import numpy as np
    >>> class Lengths:
    ...     def encode(self, texts): return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
    >>> AnnforgeEmbeddings(Lengths()).embed_query("abc")
    [3.0, 1.0]
    """

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: List[str]) -> List[List[float]]:
        return np.asarray(self.embedder.encode(list(texts)), dtype=np.float32).tolist()

    def embed_query(self, text: str) -> List[float]:
        encode = getattr(self.embedder, "encode_queries", None) or self.embedder.encode
        return np.asarray(encode([text]), dtype=np.float32)[0].tolist()


def _flat_l2(dim: int) -> VectorIndex:
    return FlatIndex(dim, metric="l2")


def _euclidean_relevance(distance: float) -> float:
    # Our l2 distance is squared; LangChain's Euclidean relevance expects the plain distance.
    return 1.0 - math.sqrt(max(distance, 0.0)) / math.sqrt(2.0)


def _one_minus(distance: float) -> float:
    return 1.0 - distance


class AnnforgeVectorStore(VectorStore):
    """A LangChain vector store backed by annforge (any index family) and SQLite.

    Parameters
    ----------
    embedding:
        The LangChain ``Embeddings`` used for documents (``embed_documents``) and queries (``embed_query``).
    collection:
        An open :class:`~annforge.store.Collection` to use; otherwise one is created at ``path``
        (``None``: in memory) with ``index``. With a ``path`` the store lives in that folder and every
        write is saved as it happens; a folder another store of this process has open is shared.
    index:
        An empty annforge index, or a callable ``dim -> index``; default ``FlatIndex(dim, "l2")``.
        Use ``annforge.HNSWIndex(dim, metric="cosine")`` for large collections.
    relevance_score_fn:
        Overrides the distance -> relevance mapping used by ``similarity_score_threshold``.

    >>> import annforge as af                                                      # doctest: +SKIP
    >>> store = AnnforgeVectorStore(emb, index=af.HNSWIndex(384, metric="cosine"), path="kb")  # doctest: +SKIP
    >>> retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 4})  # doctest: +SKIP
    """

    def __init__(
        self,
        embedding: Embeddings,
        collection: Optional[Collection] = None,
        *,
        index: IndexSpec = None,
        path: Optional[str] = None,
        relevance_score_fn: Optional[Callable[[float], float]] = None,
    ) -> None:
        self.embedding = embedding
        if collection is None and path is not None:
            # A folder this process already has open (a notebook cell run again) is shared, not refused.
            collection = Collection._open_in_process(path)
            if collection is not None:
                collection._check_given_index(index)
        self.collection = collection if collection is not None else Collection(path, index=index or _flat_l2)
        self.override_relevance_score_fn = relevance_score_fn

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def __len__(self) -> int:
        return len(self.collection)

    # -- writes ----------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[Optional[str]]] = None,
        **kwargs: Any,
    ) -> List[str]:
        """Embed and upsert ``texts``; an id that exists is replaced. Returns the ids (UUIDs where none given)."""
        texts = list(texts)
        return self.add_embeddings(zip(texts, self.embedding.embed_documents(texts)), metadatas, ids=ids)

    def add_embeddings(
        self,
        text_embeddings: Iterable[Tuple[str, List[float]]],
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[Optional[str]]] = None,
        **kwargs: Any,
    ) -> List[str]:
        """Upsert texts with precomputed embeddings (as FAISS's ``add_embeddings``)."""
        pairs = list(text_embeddings)
        if not pairs:
            return []
        texts = [t for t, _ in pairs]
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        id_list = [i if i else str(uuid.uuid4()) for i in (ids if ids is not None else [None] * len(texts))]
        # Within one call the last occurrence of an id wins (a plain upsert of each in turn would do the same).
        last = {sid: pos for pos, sid in enumerate(id_list)}
        keep = sorted(last.values())
        vectors = np.asarray([e for _, e in pairs], dtype=np.float32)
        self.collection.upsert(
            [id_list[p] for p in keep],
            documents=[texts[p] for p in keep],
            metadatas=[dict(metadatas[p] or {}) for p in keep] if metadatas is not None else None,
            embeddings=vectors[keep],
        )
        return id_list

    def delete(self, ids: Optional[List[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Delete by ids (unknown ids are ignored) or by ``filter=`` dict. Returns True."""
        where = kwargs.get("filter")
        if ids is None and where is None:
            raise ValueError("no ids (or filter=) given to delete")
        self.collection.delete(ids, where=where)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> List[Document]:
        """Documents for ``ids`` in that order; unknown ids are skipped."""
        return [
            Document(id=r.id, page_content=r.document or "", metadata=r.metadata)
            for r in self.collection.get(list(ids))
        ]

    # -- search ----------------------------------------------------------------------------------
    @staticmethod
    def _to_doc(hit: Hit) -> Document:
        return Document(id=hit.id, page_content=hit.document or "", metadata=hit.metadata)

    def similarity_search_with_score_by_vector(
        self,
        embedding: List[float],
        k: int = 4,
        filter: WhereLike = None,
        fetch_k: int = 20,
        **kwargs: Any,
    ) -> List[Tuple[Document, float]]:
        """``(document, distance)`` pairs nearest to ``embedding``, closest first.

        ``filter``: a metadata filter dict or a callable ``metadata -> bool``; ``score_threshold``:
        keep only distances ``<=`` it; other keyword arguments go to the index (e.g. ``ef=128``).
        ``fetch_k`` is accepted for FAISS compatibility and not needed (filters run inside the index).
        """
        score_threshold = kwargs.pop("score_threshold", None)
        hits = self.collection.search(np.asarray(embedding, dtype=np.float32), k, where=filter, **kwargs)
        pairs = [(self._to_doc(h), h.distance) for h in hits]
        if score_threshold is not None:
            pairs = [(d, s) for d, s in pairs if s <= score_threshold]
        return pairs

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: WhereLike = None, fetch_k: int = 20, **kwargs: Any
    ) -> List[Tuple[Document, float]]:
        """``(document, distance)`` pairs nearest to the query text, closest first."""
        vector = self.embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter=filter, fetch_k=fetch_k, **kwargs)

    def similarity_search_by_vector(
        self, embedding: List[float], k: int = 4, filter: WhereLike = None, fetch_k: int = 20, **kwargs: Any
    ) -> List[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, fetch_k, **kwargs)]

    def similarity_search(
        self, query: str, k: int = 4, filter: WhereLike = None, fetch_k: int = 20, **kwargs: Any
    ) -> List[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, fetch_k, **kwargs)]

    def max_marginal_relevance_search_with_score_by_vector(
        self,
        embedding: List[float],
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: WhereLike = None,
        **kwargs: Any,
    ) -> List[Tuple[Document, float]]:
        """MMR re-ranking of the ``fetch_k`` nearest documents; ``(document, distance)`` in pick order."""
        hits = self.collection.mmr_search(
            np.asarray(embedding, dtype=np.float32), k, fetch_k=fetch_k, lambda_mult=lambda_mult,
            where=filter, **kwargs,
        )
        return [(self._to_doc(h), h.distance) for h in hits]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: List[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: WhereLike = None,
        **kwargs: Any,
    ) -> List[Document]:
        pairs = self.max_marginal_relevance_search_with_score_by_vector(
            embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, filter=filter, **kwargs
        )
        return [d for d, _ in pairs]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: WhereLike = None,
        **kwargs: Any,
    ) -> List[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter, **kwargs
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        return _euclidean_relevance if (self.collection.metric or "l2") == "l2" else _one_minus

    # -- construction and persistence ------------------------------------------------------------
    @classmethod
    def from_texts(
        cls: Type[VST],
        texts: List[str],
        embedding: Embeddings,
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        index: IndexSpec = None,
        path: Optional[str] = None,
        **kwargs: Any,
    ) -> VST:
        """A new store holding ``texts`` (in memory unless ``path`` is given)."""
        store = cls(embedding, index=index, path=path, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    def from_embeddings(
        cls: Type[VST],
        text_embeddings: Iterable[Tuple[str, List[float]]],
        embedding: Embeddings,
        metadatas: Optional[List[dict]] = None,
        *,
        ids: Optional[List[str]] = None,
        index: IndexSpec = None,
        path: Optional[str] = None,
        **kwargs: Any,
    ) -> VST:
        store = cls(embedding, index=index, path=path, **kwargs)
        store.add_embeddings(text_embeddings, metadatas, ids=ids)
        return store

    def save_local(self, folder_path: str, index_name: str = "index") -> None:
        """Save to ``folder_path/index_name/`` (a collection folder: SQLite + index files), replacing
        whatever an earlier ``save_local`` wrote there, as FAISS's ``save_local`` does.

        ``index_name`` must be a plain name (no path separators, not ``.`` or ``..``). When the store
        already lives in that folder this just writes an index snapshot. A store of this process that
        has the folder open (an earlier ``load_local``) is reopened on the new contents. The new folder
        is written beside the old one and swapped in with renames, so a crash leaves either the old or
        the new save (``load_local`` completes an interrupted swap).
        """
        dest = _save_folder(folder_path, index_name)
        own = self.collection.path
        if own is not None and os.path.realpath(own) == os.path.realpath(dest):
            self.collection.persist()
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging, retired = f"{dest}.saving-{tag}", f"{dest}.replaced-{tag}"
        try:
            self.collection.save_to(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        holder = Collection._open_in_process(dest)
        if holder is not None:
            holder._close_handles()  # its files are about to be replaced; reopened below
        lock: Optional[_FolderLock] = None
        try:
            if os.path.lexists(dest):
                if not os.path.isdir(dest) or os.path.islink(dest):
                    raise OSError(f"{dest!r} exists and is not a folder; refusing to replace it")
                if os.listdir(dest) and not os.path.isfile(os.path.join(dest, DB_NAME)):
                    raise OSError(f"{dest!r} is not an annforge collection folder; refusing to replace it")
                lock = _FolderLock(dest)  # another process writing there would write into the new save
                os.rename(dest, retired)
            os.rename(staging, dest)
        except BaseException:
            if lock is not None:
                lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            if os.path.isdir(retired) and not os.path.exists(dest):
                os.rename(retired, dest)
            if holder is not None:
                holder._reopen()
            raise
        if lock is not None:
            lock.release()
        shutil.rmtree(retired, ignore_errors=True)
        if holder is not None:
            holder._reopen()

    @classmethod
    def load_local(
        cls: Type[VST],
        folder_path: str,
        embeddings: Embeddings,
        index_name: str = "index",
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> VST:
        """Open what ``save_local`` wrote. Nothing is unpickled, so ``allow_dangerous_deserialization``
        is accepted (for drop-in use in place of FAISS) and not needed.

        The store works on the folder in place: its writes are saved as they happen. Loading a folder
        that a store of this process already has open (a notebook cell run twice) shares that open
        collection instead of failing on the folder lock.
        """
        folder = _save_folder(folder_path, index_name)
        _finish_interrupted_swap(folder)
        if not os.path.isfile(os.path.join(folder, DB_NAME)):
            raise OSError(f"no annforge collection in {folder!r}")
        collection = Collection._open_in_process(folder) or Collection(folder)
        return cls(embeddings, collection, **kwargs)


def _save_folder(folder_path: Any, index_name: Any) -> str:
    """``folder_path/index_name``, refusing index names that are not plain names."""
    if not isinstance(index_name, str):
        raise TypeError(f"index_name must be a string, got {type(index_name).__name__}")
    bad = (not index_name or index_name in (".", "..") or "\0" in index_name or os.sep in index_name
           or (os.altsep is not None and os.altsep in index_name) or "/" in index_name or "\\" in index_name)
    if bad:
        raise ValueError(f"index_name must be a plain file name (no path separators, not '.' or '..'), got {index_name!r}")
    return os.path.join(os.fspath(folder_path), index_name)


def _finish_interrupted_swap(folder: str) -> None:
    """A save_local killed between its two renames leaves no ``folder`` but a ``folder.replaced-*``
    (the previous save) and a complete ``folder.saving-*``: put the old save back in place."""
    if os.path.exists(folder):
        return
    parent, name = os.path.split(folder)
    try:
        siblings = os.listdir(parent or ".")
    except OSError:
        return
    retired = sorted(s for s in siblings if s.startswith(name + ".replaced-"))
    if retired:
        os.rename(os.path.join(parent, retired[-1]), folder)
