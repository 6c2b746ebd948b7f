"""TorchEmbedder and its constructors. Importing this module imports torch."""

from __future__ import annotations

import inspect
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._pooling import NEEDS_ALL_LAYERS, POOLERS, POOLING_MODES
from ._progress import progress_bar

DeviceLike = Union[None, str, "torch.device"]
DTypeLike = Union[None, str, "torch.dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

# Models that derive position ids from input_ids (offset by padding_idx + 1) and so already handle
# left padding; passing 0-based position_ids to them would be wrong.
_POSITIONS_FROM_INPUT_IDS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "data2vec-text",
     "ibert", "luke", "roberta-prelayernorm", "markuplm", "bridgetower"}
)

# sentence-transformers' Pooling mode names -> ours.
_ST_POOLING = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "last_token", "weightedmean": "weighted_mean"}
# Prompt names sentence-transformers' encode_document tries, in this order.
_ST_DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def _resolve_dtype(dtype: DTypeLike, device: torch.device) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be None, a string or a torch.dtype, got {type(dtype).__name__}")
    key = dtype.lower().replace("torch.", "")
    if key == "auto":  # half precision where it is fast (GPUs), float32 elsewhere
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return _DTYPES[key]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'") from None


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


class TorchEmbedder:
    """Turns texts into float32 vectors with a Hugging Face style torch model.

    ``model`` is an encoder (BERT, MiniLM, E5, BGE...) or a decoder (GPT-2, Llama, Mistral, Qwen...)
    whose forward takes ``input_ids`` / ``attention_mask`` and returns ``last_hidden_state`` (or
    ``hidden_states``); ``tokenizer`` is its Hugging Face tokenizer.

    Pooling (``pooling=``):

    - ``"cls"``: the first real token of the last layer.
    - ``"mean"``: mean of the last layer over the real (non-padding) tokens.
    - ``"max"``: per-dimension maximum of the last layer over the real tokens.
    - ``"last_token"``: the last real token (decoder embedders). The tokenizer's EOS is appended when
      the tokenizer does not add it already (``append_eos=None``); force with ``append_eos=True/False``.
    - ``"first_last_mean"``: token mean of (first transformer layer ``hidden_states[1]`` + last layer) / 2,
      SimCSE's ``avg_first_last``.
    - ``"embedding_last_mean"``: token mean of (embedding output ``hidden_states[0]`` + last layer) / 2.
    - ``"weighted_mean"``: SGPT position-weighted mean, the i-th real token weighs i.

    Prefixes (instruction-tuned models such as E5 and BGE): ``query_instruction`` is prepended by
    :meth:`encode_queries`, ``document_instruction`` by :meth:`encode` (documents, passages), e.g.
    ``query_instruction="query: ", document_instruction="passage: "`` for E5.
    :func:`from_pretrained` reads both from a sentence-transformers folder's prompts.

    Every strategy gives the same vector under left and right padding (``tokenizer.padding_side``): for
    left padding, position ids are computed from the attention mask.

    Texts are tokenised, sorted by length so each batch carries little padding, run under
    ``torch.inference_mode`` and returned in input order. ``device=None`` uses CUDA when available,
    else the model's device. ``dtype="float16" | "bfloat16" | "auto"`` casts the model (``"auto"``: half
    precision on CUDA only); pooling and normalisation always run in float32.

    >>> import annforge as af                                             # doctest: +SKIP
    >>> emb = af.embed.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> index = af.HNSWIndex(emb.dim, metric="cosine")  # doctest: +SKIP
    >>> af.embed.index_texts(["a cat", "a dog"], emb, index)  # doctest: +SKIP
    >>> index.search(emb.encode_queries(["kitten"]), k=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pooling: str = "mean",
        normalize: bool = True,
        query_instruction: Optional[str] = None,
        max_length: int = 512,
        batch_size: int = 64,
        device: DeviceLike = None,
        dtype: DTypeLike = None,
        *,
        append_eos: Optional[bool] = None,
        show_progress: Optional[bool] = None,
        document_instruction: Optional[str] = None,
    ) -> None:
        if not isinstance(pooling, str) or pooling not in POOLERS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_MODES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if query_instruction is not None and not isinstance(query_instruction, str):
            raise TypeError("query_instruction must be a string or None")
        if document_instruction is not None and not isinstance(document_instruction, str):
            raise TypeError("document_instruction must be a string or None")

        if device is None:
            device = torch.device("cuda") if torch.cuda.is_available() else _model_device(model)
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        model = model.to(device=self.device) if self.dtype is None else model.to(device=self.device, dtype=self.dtype)
        model.eval()

        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self.batch_size = batch_size
        self.show_progress = show_progress

        tok_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
            max_length = min(max_length, tok_limit)
        self.max_length = max_length

        eos = getattr(tokenizer, "eos_token_id", None)
        if append_eos is None:
            append_eos = pooling == "last_token" and eos is not None and not self._tokenizer_appends(eos)
        if append_eos and eos is None:
            raise ValueError("append_eos=True but the tokenizer has no eos_token")
        if append_eos and max_length < 2:
            raise ValueError("append_eos needs max_length >= 2")
        self.append_eos = bool(append_eos)
        self._eos_id = eos
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = pad if pad is not None else (eos if eos is not None else 0)

        params = inspect.signature(model.forward).parameters
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        self._accepts_position_ids = "position_ids" in params and model_type not in _POSITIONS_FROM_INPUT_IDS
        self._accepts_use_cache = "use_cache" in params
        self._need_all_layers = pooling in NEEDS_ALL_LAYERS
        self._dim: Optional[int] = None

    # -- public ----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Length of the vectors ``encode`` returns."""
        if self._dim is None:
            config = getattr(self.model, "config", None)
            size = getattr(config, "hidden_size", None) if config is not None else None
            self._dim = int(size) if isinstance(size, int) else int(self._encode(["a"], False).shape[1])
        return self._dim

    def encode(self, texts: Union[str, Iterable[str]], *, show_progress: Optional[bool] = None) -> np.ndarray:
        """Embed documents: a float32 array ``[n, dim]`` in input order (rows L2-normalised if ``normalize``),
        with ``document_instruction`` prepended to every text when set.

        A single string is treated as a list of one.
        """
        return self._encode(self._texts(texts, self.document_instruction), show_progress)

    def encode_queries(self, texts: Union[str, Iterable[str]], *, show_progress: Optional[bool] = None) -> np.ndarray:
        """Embed queries: like ``encode``, with ``query_instruction`` prepended instead (BGE / E5 /
        instruct style, e.g. ``"query: "`` or ``"Represent this sentence for searching relevant passages: "``)."""
        return self._encode(self._texts(texts, self.query_instruction), show_progress)

    @staticmethod
    def _texts(texts: Union[str, Iterable[str]], prefix: Optional[str]) -> List[str]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        for t in batch:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}")
        return [prefix + t for t in batch] if prefix else batch

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return (f"TorchEmbedder({name}, pooling={self.pooling!r}, normalize={self.normalize}, "
                f"max_length={self.max_length}, device={str(self.device)!r})")

    # -- internals -------------------------------------------------------------------------------
    def _tokenizer_appends(self, eos: int) -> bool:
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[-1] == eos

    def _tokenize(self, texts: List[str]) -> List[List[int]]:
        budget = self.max_length - 1 if self.append_eos else self.max_length
        ids: List[List[int]] = self.tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=budget, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        if self.append_eos:
            ids = [row if row and row[-1] == self._eos_id else row + [self._eos_id] for row in ids]
        return ids

    def _pad(self, rows: Sequence[List[int]]) -> Dict[str, torch.Tensor]:
        width = max(1, max(len(r) for r in rows))
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, row in enumerate(rows):
            if not row:
                continue
            if left:
                input_ids[i, width - len(row):] = row
                mask[i, width - len(row):] = 1
            else:
                input_ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if left and self._accepts_position_ids:
            # Real tokens get 0, 1, 2... whatever the padding in front of them.
            batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp_min(0)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs: Dict[str, Any] = dict(batch)
        if self._accepts_use_cache:
            kwargs["use_cache"] = False
        if self._need_all_layers:
            kwargs["output_hidden_states"] = True
        out = self.model(**kwargs)
        if self._need_all_layers:
            hidden = getattr(out, "hidden_states", None)
            if hidden is None:
                raise ValueError(f"pooling={self.pooling!r} needs a model that returns hidden_states")
        else:
            last = getattr(out, "last_hidden_state", None)
            if last is None and isinstance(out, tuple):
                last = out[0]
            if last is None:  # e.g. a *ForCausalLM head model: ask for the hidden states instead
                self._need_all_layers = True
                return self._forward(batch)
            hidden = (last,)
        pooled = POOLERS[self.pooling](hidden, batch["attention_mask"])
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled

    def _encode(self, texts: List[str], show_progress: Optional[bool]) -> np.ndarray:
        n = len(texts)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        token_rows = self._tokenize(texts)
        # Longest first: batches of similar length carry little padding, and an out-of-memory error
        # shows up on the first batch rather than the last.
        order = np.argsort(-np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=n), kind="stable")
        if show_progress is None:
            show_progress = self.show_progress
        if show_progress is None:
            show_progress = n >= 8 * self.batch_size and sys.stderr.isatty()
        bar = progress_bar(n, "embedding", bool(show_progress))
        out: Optional[np.ndarray] = None
        try:
            with torch.inference_mode():
                for start in range(0, n, self.batch_size):
                    picked = order[start : start + self.batch_size]
                    vectors = self._forward(self._pad([token_rows[i] for i in picked]))
                    vectors = vectors.to("cpu", dtype=torch.float32).numpy()
                    if out is None:
                        out = np.empty((n, vectors.shape[1]), dtype=np.float32)
                        self._dim = vectors.shape[1]
                    out[picked] = vectors
                    bar.update(len(picked))
        finally:
            bar.close()
        assert out is not None
        return out


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _st_pooling_of(pooling_module: Any) -> str:
    """Our pooling name for a sentence-transformers Pooling module (old and new versions)."""
    mode = getattr(pooling_module, "pooling_mode", None)
    if mode is None and hasattr(pooling_module, "get_pooling_mode_str"):
        mode = pooling_module.get_pooling_mode_str()
    if isinstance(mode, (list, tuple)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if mode not in _ST_POOLING:
        raise ValueError(f"sentence-transformers pooling {mode!r} is not supported; "
                         f"supported: {sorted(_ST_POOLING)}")
    return _ST_POOLING[mode]


def _st_prompts(prompts: Dict[str, Any], default_name: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(query prefix, document prefix) as sentence-transformers' ``encode_query`` / ``encode_document``
    pick them: the "query" prompt, the first of "document" / "passage" / "corpus", else the default prompt."""
    prompts = {k: v for k, v in prompts.items() if isinstance(v, str) and v}
    default = prompts.get(default_name) if isinstance(default_name, str) else None
    query = prompts.get("query", default)
    document = next((prompts[name] for name in _ST_DOCUMENT_PROMPTS if name in prompts), default)
    return query, document


def from_sentence_transformers(st_model: Any, **overrides: Any) -> TorchEmbedder:
    """A TorchEmbedder equivalent to a ``sentence_transformers.SentenceTransformer`` made of
    Transformer -> Pooling -> (Normalize): same model, tokenizer, pooling, normalisation, max length,
    device, its ``"query"`` prompt as ``query_instruction`` and its ``"document"`` / ``"passage"`` /
    ``"corpus"`` prompt as ``document_instruction`` (the one ``encode_document`` uses). Keyword
    ``overrides`` win.

    Dense / LayerNorm / other extra modules are refused with ValueError (their output would differ).

    >>> from sentence_transformers import SentenceTransformer              # doctest: +SKIP
    >>> emb = af.embed.from_sentence_transformers(SentenceTransformer("all-MiniLM-L6-v2"))  # doctest: +SKIP
    """
    modules = list(st_model)
    if not modules:
        raise ValueError("the SentenceTransformer has no modules")
    transformer = modules[0]
    model = getattr(transformer, "auto_model", None)
    if model is None:
        model = getattr(transformer, "model", None)
    tokenizer = getattr(transformer, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ValueError("the first module must be a sentence_transformers Transformer with a tokenizer")
    pooling: Optional[str] = None
    normalize = False
    for module in modules[1:]:
        kind = type(module).__name__
        if kind == "Pooling" and pooling is None:
            pooling = _st_pooling_of(module)
            if getattr(module, "include_prompt", True) is False:
                raise ValueError("Pooling(include_prompt=False) is not supported")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(f"sentence-transformers module {kind} is not supported by TorchEmbedder")
    query_prompt, document_prompt = _st_prompts(getattr(st_model, "prompts", None) or {},
                                                getattr(st_model, "default_prompt_name", None))
    kwargs: Dict[str, Any] = {
        "pooling": pooling or "mean",
        "normalize": normalize,
        "query_instruction": query_prompt,
        "document_instruction": document_prompt,
        "device": getattr(st_model, "device", None),
        "append_eos": False,  # sentence-transformers feeds the tokenizer's output as it is
    }
    max_len = getattr(st_model, "max_seq_length", None)
    if isinstance(max_len, int) and max_len > 0:
        kwargs["max_length"] = max_len
    kwargs.update(overrides)
    return TorchEmbedder(model, tokenizer, **kwargs)


def from_pretrained(
    name_or_path: Union[str, "os.PathLike[str]"],
    pooling: str = "mean",
    *,
    trust_remote_code: bool = False,
    model_kwargs: Optional[Dict[str, Any]] = None,
    tokenizer_kwargs: Optional[Dict[str, Any]] = None,
    **embedder_kwargs: Any,
) -> TorchEmbedder:
    """Load a model and tokenizer with ``transformers.AutoModel`` / ``AutoTokenizer`` and wrap them.

    A local folder works offline. ``pooling`` is one of :data:`POOLING_MODES` or ``"auto"``, which
    reads a sentence-transformers folder's ``1_Pooling/config.json`` (and ``modules.json`` for
    normalisation); it is checked before anything is loaded. From a sentence-transformers folder,
    ``sentence_bert_config.json``'s ``max_seq_length`` and ``config_sentence_transformers.json``'s
    ``prompts`` (``"query"`` -> ``query_instruction``; ``"document"`` / ``"passage"`` / ``"corpus"`` ->
    ``document_instruction``) are used unless given. Other keyword arguments go to
    :class:`TorchEmbedder` (``normalize``, ``query_instruction``, ``document_instruction``,
    ``batch_size``, ``device``, ``dtype``...).

    >>> emb = af.embed.from_pretrained("BAAI/bge-small-en-v1.5", pooling="cls",     # doctest: +SKIP
    ...     query_instruction="Represent this sentence for searching relevant passages: ")
    """
    if not isinstance(pooling, str) or (pooling != "auto" and pooling not in POOLERS):
        raise ValueError(f"unknown pooling {pooling!r}; expected 'auto' or one of {POOLING_MODES}")
    from transformers import AutoModel, AutoTokenizer

    path = os.fspath(name_or_path)
    local = os.path.isdir(path)
    if pooling == "auto":
        config = _read_json(os.path.join(path, "1_Pooling", "config.json")) if local else None
        if config is None:
            raise ValueError("pooling='auto' needs a local sentence-transformers folder with 1_Pooling/config.json")
        mode = config.get("pooling_mode")
        if mode is None:
            flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                     "max": "pooling_mode_max_tokens", "lasttoken": "pooling_mode_lasttoken",
                     "weightedmean": "pooling_mode_weightedmean_tokens"}
            active = [name for name, key in flags.items() if config.get(key)]
            mode = active[0] if len(active) == 1 else None
        if mode not in _ST_POOLING:
            raise ValueError(f"unsupported sentence-transformers pooling config {config}")
        pooling = _ST_POOLING[mode]
        modules = _read_json(os.path.join(path, "modules.json")) or []
        if "normalize" not in embedder_kwargs:
            embedder_kwargs["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    if "max_length" not in embedder_kwargs and local:
        st_config = _read_json(os.path.join(path, "sentence_bert_config.json")) or {}
        if isinstance(st_config.get("max_seq_length"), int):
            embedder_kwargs["max_length"] = st_config["max_seq_length"]
    if local:
        st_settings = _read_json(os.path.join(path, "config_sentence_transformers.json")) or {}
        prompts = st_settings.get("prompts")
        if isinstance(prompts, dict):
            query_prompt, document_prompt = _st_prompts(prompts, st_settings.get("default_prompt_name"))
            embedder_kwargs.setdefault("query_instruction", query_prompt)
            embedder_kwargs.setdefault("document_instruction", document_prompt)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **(tokenizer_kwargs or {}))
    model = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code, **(model_kwargs or {}))
    return TorchEmbedder(model, tokenizer, pooling=pooling, **embedder_kwargs)
