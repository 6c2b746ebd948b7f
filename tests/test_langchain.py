"""AnnforgeVectorStore: LangChain's standard VectorStore integration suite, plus FAISS-like behaviour
(filters, MMR, scores and relevance, retrievers, save_local/load_local)."""

from __future__ import annotations

import os
from typing import Any, Generator, List

import numpy as np
import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests.integration_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402

import annforge as af  # noqa: E402
from annforge.integrations.langchain import AnnforgeVectorStore  # noqa: E402


class TestAnnforgeStandard(langchain_tests.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = AnnforgeVectorStore(self.get_embeddings())
        try:
            yield store
        finally:
            store.collection.close()


class TestAnnforgeStandardOnDiskHNSW(langchain_tests.VectorStoreIntegrationTests):
    """The same suite over an HNSW index persisted in a folder."""

    @pytest.fixture()
    def vectorstore(self, tmp_path: Any) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = AnnforgeVectorStore(
            self.get_embeddings(), path=str(tmp_path / "kb"), index=lambda d: af.HNSWIndex(d, metric="cosine")
        )
        try:
            yield store
        finally:
            store.collection.close()


class AxisEmbeddings(Embeddings):
    """Texts "x,y" embed to the 2-d point (x, y): geometry the tests can reason about."""

    def embed_documents(self, texts: List[str]) -> List[List[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> List[float]:
        return [float(v) for v in text.split(",")]


@pytest.fixture
def points() -> AnnforgeVectorStore:
    texts = ["1,0", "0.99,0.05", "0.7,0.7", "0,1", "-1,0"]
    metas = [{"group": "a", "rank": 1}, {"group": "a", "rank": 2}, {"group": "b", "rank": 3},
             {"group": "b", "rank": 4}, {"group": "c", "rank": 5}]
    return AnnforgeVectorStore.from_texts(texts, AxisEmbeddings(), metas, ids=["p0", "p1", "p2", "p3", "p4"],
                                          index=lambda d: af.FlatIndex(d, metric="cosine"))


def test_scores_filters_and_relevance(points: AnnforgeVectorStore) -> None:
    pairs = points.similarity_search_with_score("1,0", k=3)
    assert [d.id for d, _ in pairs] == ["p0", "p1", "p2"]
    np.testing.assert_allclose([s for _, s in pairs], [0.0, 1 - 0.99 / np.hypot(0.99, 0.05), 1 - 0.7 / np.hypot(0.7, 0.7)],
                               atol=1e-6)
    assert [d.id for d in points.similarity_search("1,0", k=2, filter={"group": "b"})] == ["p2", "p3"]
    assert [d.id for d in points.similarity_search("1,0", k=9, filter={"rank": {"$gte": 4}})] == ["p3", "p4"]
    assert [d.id for d in points.similarity_search("1,0", k=2, filter=lambda m: m["rank"] % 2 == 1)] == ["p0", "p2"]
    assert [d.id for d, _ in points.similarity_search_with_score("1,0", k=5, score_threshold=0.1)] == ["p0", "p1"]
    rel = points.similarity_search_with_relevance_scores("1,0", k=3, score_threshold=0.75)
    assert [d.id for d, _ in rel] == ["p0", "p1"]
    np.testing.assert_allclose(rel[0][1], 1.0, atol=1e-6)
    assert [d.id for d in points.similarity_search_by_vector([0, 1], k=1)] == ["p3"]


def test_mmr_and_retrievers(points: AnnforgeVectorStore) -> None:
    assert [d.id for d in points.max_marginal_relevance_search("1,0", k=2, fetch_k=5, lambda_mult=0.2)] == ["p0", "p4"]
    assert [d.id for d in points.max_marginal_relevance_search("1,0", k=2, fetch_k=5, lambda_mult=1.0)] == ["p0", "p1"]
    sim = points.as_retriever(search_kwargs={"k": 2, "filter": {"group": "a"}})
    assert [d.id for d in sim.invoke("0,1")] == ["p1", "p0"]
    mmr = points.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5, "lambda_mult": 0.2})
    assert [d.id for d in mmr.invoke("1,0")] == ["p0", "p4"]  # the opposite point is the most diverse
    thr = points.as_retriever(search_type="similarity_score_threshold",
                              search_kwargs={"k": 3, "score_threshold": 0.9})
    assert [d.id for d in thr.invoke("1,0")] == ["p0", "p1"]


def test_l2_default_relevance_and_delete_by_filter() -> None:
    store = AnnforgeVectorStore.from_texts(["0.6,0.8", "1,0"], AxisEmbeddings(), [{"k": 1}, {"k": 2}])
    assert store.collection.metric == "l2"
    rel = store.similarity_search_with_relevance_scores("1,0", k=2)
    # squared L2 between the unit vectors (1,0) and (0.6,0.8) is 0.8; relevance 1 - sqrt(0.8)/sqrt(2)
    np.testing.assert_allclose([s for _, s in rel], [1.0, 1 - np.sqrt(0.8) / np.sqrt(2)], atol=1e-6)
    assert store.delete(filter={"k": 2}) is True
    assert [d.page_content for d in store.similarity_search("1,0", k=5)] == ["0.6,0.8"]
    with pytest.raises(ValueError):
        store.delete()


def test_save_local_load_local_round_trip(points: AnnforgeVectorStore, tmp_path: Any) -> None:
    points.save_local(str(tmp_path), index_name="kb")
    loaded = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="kb",
                                            allow_dangerous_deserialization=False)
    assert loaded.get_by_ids(["p2", "p0"]) == points.get_by_ids(["p2", "p0"])
    assert loaded.similarity_search_with_score("0.5,0.5", k=5) == points.similarity_search_with_score("0.5,0.5", k=5)
    loaded.add_texts(["0,-1"], [{"group": "d"}], ids=["p5"])
    loaded.collection.close()
    again = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="kb")
    assert [d.id for d in again.similarity_search("0,-1", k=1)] == ["p5"]
    with pytest.raises(OSError):
        AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="missing")
    again.collection.close()


def test_from_documents_ids_and_duplicates_in_one_call() -> None:
    emb = DeterministicFakeEmbedding(size=8)
    docs = [Document("a", metadata={"n": 1}, id="x"), Document("b", metadata={"n": 2}), Document("c", id="x")]
    store = AnnforgeVectorStore.from_documents(docs, emb)
    assert len(store) == 2
    assert store.get_by_ids(["x"]) == [Document("c", id="x")]  # the last occurrence wins, as repeated upserts
    with pytest.raises(ValueError):
        store.add_texts(["a", "b"], metadatas=[{}])


def test_annforge_embeddings_adapter_uses_encode_queries_for_queries() -> None:
    from annforge.integrations.langchain import AnnforgeEmbeddings

    class Embedder:
        def encode(self, texts: List[str]) -> np.ndarray:
            return np.array([[1.0, float(len(t))] for t in texts], dtype=np.float32)

        def encode_queries(self, texts: List[str]) -> np.ndarray:
            return np.array([[0.0, float(len(t))] for t in texts], dtype=np.float32)

    emb = AnnforgeEmbeddings(Embedder())
    assert emb.embed_documents(["ab", "c"]) == [[1.0, 2.0], [1.0, 1.0]]
    assert emb.embed_query("abc") == [0.0, 3.0]
    store = AnnforgeVectorStore.from_texts(["x", "yyyy"], emb)
    assert [d.page_content for d in store.similarity_search("yyy", k=1)] == ["yyyy"]


# -- save_local / load_local as notebooks use them ---------------------------------------------------
def _store(texts: List[str]) -> AnnforgeVectorStore:
    return AnnforgeVectorStore.from_texts(texts, AxisEmbeddings(), ids=[f"id-{t}" for t in texts])


def _ids(store: AnnforgeVectorStore) -> List[str]:
    return sorted(r.id for r in store.collection.get())


def test_save_local_twice_overwrites_like_faiss(tmp_path: Any) -> None:
    first = _store(["1,0", "0,1"])
    first.save_local(str(tmp_path))
    first.save_local(str(tmp_path))  # the same cell run again
    second = _store(["5,5"])
    second.save_local(str(tmp_path))  # another store into the same place: replaces it
    loaded = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings())
    assert _ids(loaded) == ["id-5,5"]
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no staging or replaced folders left behind
    loaded.collection.close()


def test_load_local_twice_in_one_process_shares_the_open_folder(tmp_path: Any) -> None:
    _store(["1,0", "0,1"]).save_local(str(tmp_path), "kb")
    a = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="kb")
    b = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="kb")  # re-run cell
    assert _ids(a) == _ids(b) == ["id-0,1", "id-1,0"]
    a.add_texts(["3,3"], ids=["new"])
    assert [d.id for d in b.similarity_search("3,3", k=1)] == ["new"]
    # Re-running the cell that saves while the loaded stores are open: they see the new contents.
    _store(["7,7"]).save_local(str(tmp_path), "kb")
    assert _ids(a) == _ids(b) == ["id-7,7"]
    assert [d.id for d in a.similarity_search("7,7", k=1)] == ["id-7,7"]
    a.collection.close()
    c = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings(), index_name="kb")  # opens it anew
    assert _ids(c) == ["id-7,7"]
    c.collection.close()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "/abs", "x\0y"])
def test_save_local_refuses_index_names_that_are_not_plain(tmp_path: Any, name: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    store = _store(["1,0"])
    with pytest.raises(ValueError, match="plain file name"):
        store.save_local(str(inner), index_name=name)
    with pytest.raises(ValueError, match="plain file name"):
        AnnforgeVectorStore.load_local(str(inner), AxisEmbeddings(), index_name=name)
    assert os.listdir(tmp_path) == ["inner"] and os.listdir(inner) == []


def test_save_local_refuses_to_replace_what_is_not_a_collection(tmp_path: Any) -> None:
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "thesis.tex").write_text("precious")
    with pytest.raises(OSError, match="not an annforge collection"):
        _store(["1,0"]).save_local(str(tmp_path))
    assert os.listdir(tmp_path / "index") == ["thesis.tex"] and sorted(os.listdir(tmp_path)) == ["index"]


def test_load_local_completes_a_save_interrupted_between_its_renames(tmp_path: Any) -> None:
    _store(["1,0"]).save_local(str(tmp_path))
    os.rename(tmp_path / "index", tmp_path / "index.replaced-123-abcd")  # killed right after this rename
    loaded = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings())
    assert _ids(loaded) == ["id-1,0"]
    loaded.collection.close()


def test_save_local_refuses_a_folder_another_process_has_open(tmp_path: Any) -> None:
    import subprocess
    import sys

    _store(["1,0"]).save_local(str(tmp_path))
    python_dir = os.path.dirname(os.path.dirname(os.path.abspath(af.__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from annforge.store import Collection; "
            "c = Collection(sys.argv[2]); print('open', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, python_dir, str(tmp_path / "index")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "open\n"
        with pytest.raises(OSError, match="already open"):
            _store(["5,5"]).save_local(str(tmp_path))
    finally:
        child.communicate("", timeout=60)
    assert sorted(os.listdir(tmp_path)) == ["index"]
    loaded = AnnforgeVectorStore.load_local(str(tmp_path), AxisEmbeddings())
    assert _ids(loaded) == ["id-1,0"]
    loaded.collection.close()


def test_a_store_on_a_path_twice_in_one_process_shares_the_folder(tmp_path: Any) -> None:
    folder = str(tmp_path / "kb")
    first = AnnforgeVectorStore(AxisEmbeddings(), path=folder)
    first.add_texts(["1,0"], ids=["a"])
    again = AnnforgeVectorStore(AxisEmbeddings(), path=folder)  # the notebook cell run again
    assert again.collection is first.collection and _ids(again) == ["a"]
    with pytest.raises(ValueError, match="FlatIndex"):
        AnnforgeVectorStore(AxisEmbeddings(), path=folder, index=af.FlatIndex(3))
    first.collection.close()
