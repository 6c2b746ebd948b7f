"""Adapters that put annforge under other frameworks' vector-store interfaces.

- :mod:`annforge.integrations.langchain`: ``AnnforgeVectorStore``, a LangChain ``VectorStore``
  (``pip install 'annforge[langchain]'``).
"""
