"""Pooling strategies: token vectors of one batch -> one vector per text.

Every strategy is mask-aware and correct under both left and right padding. Padding positions are
excluded with ``torch.where`` rather than multiplied by zero, because some attention kernels leave
NaN in fully padded (left-padded, causal) rows and ``NaN * 0`` is still NaN. Sums run in float32 even
when the model runs in float16 / bfloat16.

``hidden_states`` follows Hugging Face's convention: ``hidden_states[0]`` is the embedding layer's
output, ``hidden_states[i]`` the output of transformer layer ``i``, ``hidden_states[-1]`` the last one.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch

Tensor = torch.Tensor

POOLING_MODES = ("cls", "mean", "max", "last_token", "first_last_mean", "embedding_last_mean", "weighted_mean")

# Strategies that need more than the last layer (the model is then run with output_hidden_states=True).
NEEDS_ALL_LAYERS = frozenset({"first_last_mean", "embedding_last_mean"})


def _masked_mean(tokens: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
    """sum_t w_t * x_t / sum_t w_t over the non-padding positions, accumulated in float32."""
    keep = mask.bool().unsqueeze(-1)
    w = weights.to(torch.float32).unsqueeze(-1)
    x = torch.where(keep, tokens.to(torch.float32) * w, torch.zeros((), dtype=torch.float32, device=tokens.device))
    denom = torch.where(keep, w, torch.zeros_like(w)).sum(dim=1).clamp_min(1e-9)
    return x.sum(dim=1) / denom


def _gather_position(tokens: Tensor, index: Tensor) -> Tensor:
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return tokens[rows, index].to(torch.float32)


def first_token_index(mask: Tensor) -> Tensor:
    """Position of each row's first non-padding token (0 under right padding)."""
    return mask.to(torch.int32).argmax(dim=1)


def last_token_index(mask: Tensor) -> Tensor:
    """Position of each row's last non-padding token (L-1 under left padding)."""
    length = mask.shape[1]
    return (length - 1) - mask.to(torch.int32).flip(dims=[1]).argmax(dim=1)


def pool_cls(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """The first real token of the last layer ([CLS] for BERT-style encoders)."""
    return _gather_position(hidden[-1], first_token_index(mask))


def pool_mean(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Mean of the last layer over the non-padding tokens (sentence-transformers' "mean")."""
    return _masked_mean(hidden[-1], mask, torch.ones_like(mask))


def pool_max(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Per-dimension maximum of the last layer over the non-padding tokens (sentence-transformers'
    ``pooling_mode_max_tokens``); a row without any real token gives zeros."""
    tokens = hidden[-1].to(torch.float32)
    keep = mask.bool().unsqueeze(-1)
    lowest = torch.full((), float("-inf"), dtype=torch.float32, device=tokens.device)
    peak = torch.where(keep, tokens, lowest).amax(dim=1)
    return torch.where(keep.any(dim=1), peak, torch.zeros((), dtype=torch.float32, device=tokens.device))


def pool_last_token(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """The last real token of the last layer (decoder embedders: E5-Mistral, GTE-Qwen, SFR...)."""
    return _gather_position(hidden[-1], last_token_index(mask))


def pool_weighted_mean(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """SGPT position-weighted mean: the i-th real token (1-based) gets weight i, padding gets 0."""
    positions = mask.to(torch.int64).cumsum(dim=1)
    return _masked_mean(hidden[-1], mask, positions)


def pool_first_last_mean(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Mean over tokens of (first transformer layer + last layer) / 2.

    "First layer" is ``hidden_states[1]``, the output of the first transformer block, as in SimCSE's
    ``avg_first_last`` pooler (the convention C-MTEB style evaluations follow). The variant that uses
    the embedding output ``hidden_states[0]`` instead (BERT-flow's original "first-last-avg") is
    ``embedding_last_mean``.
    """
    if len(hidden) < 2:
        raise ValueError("first_last_mean needs the model's per-layer hidden states")
    return _masked_mean((hidden[1].to(torch.float32) + hidden[-1].to(torch.float32)) / 2, mask, torch.ones_like(mask))


def pool_embedding_last_mean(hidden: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Mean over tokens of (embedding layer output ``hidden_states[0]`` + last layer) / 2."""
    if len(hidden) < 2:
        raise ValueError("embedding_last_mean needs the model's per-layer hidden states")
    return _masked_mean((hidden[0].to(torch.float32) + hidden[-1].to(torch.float32)) / 2, mask, torch.ones_like(mask))


POOLERS: Dict[str, Callable[[Sequence[Tensor], Tensor], Tensor]] = {
    "cls": pool_cls,
    "mean": pool_mean,
    "max": pool_max,
    "last_token": pool_last_token,
    "first_last_mean": pool_first_last_mean,
    "embedding_last_mean": pool_embedding_last_mean,
    "weighted_mean": pool_weighted_mean,
}
