"""Embedded vector store over any annforge index: string ids, documents, JSON metadata and filters in
SQLite (standard library), crash-safe persistence in one folder, maximal-marginal-relevance re-ranking.

>>> import annforge as af, numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> with af.store.Collection(folder, index=af.FlatIndex(2, metric="cosine")) as col:
...     _ = col.upsert(["cat", "dog", "car"], documents=["a cat", "a dog", "a car"],
...                    metadatas=[{"kind": "animal"}, {"kind": "animal"}, {"kind": "vehicle"}],
...                    embeddings=[[1.0, 0.1], [0.9, 0.3], [0.0, 1.0]])
>>> col = af.store.Collection(folder)          # reopen: the saved index and records come back
>>> [h.id for h in col.search([1.0, 0.0], k=3, where={"kind": {"$ne": "vehicle"}})]
['cat', 'dog']
>>> col.close()

Filter dicts (``where=``; the dialect of LangChain's FAISS and Chroma stores):
``{"field": value}``, ``{"field": [v1, v2]}`` (one of), ``{"field": {"$eq" | "$ne" | "$gt" | "$gte" |
"$lt" | "$lte": value}}``, ``{"field": {"$in" | "$nin": [values]}}``, ``{"$and": [...]}``,
``{"$or": [...]}``, ``{"$not": {...}}``; several keys in one dict must all hold. Exact semantics in
:mod:`annforge.store._filters`. A callable ``metadata -> bool`` works too (evaluated in Python).
"""

from __future__ import annotations

from ._collection import Collection, Hit, Record, default_index
from ._filters import compile_where, compile_where_document
from ._mmr import maximal_marginal_relevance

__all__ = ["Collection", "Hit", "Record", "compile_where", "compile_where_document", "default_index",
           "maximal_marginal_relevance"]
