"""Connectors (LLaVA's ``mm_projector``): image tokens ``[B, N, in_dim]`` -> LLM input embeddings.

    linear       Linear(in, out)                                     [B, N, out]   (LLaVA-1.0)
    mlp2x_gelu   Linear(in, out) -> GELU -> Linear(out, out)         [B, N, out]   (LLaVA-1.5; mlpKx_gelu: K Linears)
    resampler    learned queries cross-attending to the image tokens [B, n_queries, out]

The MLPs are ``nn.Sequential`` with LLaVA's state-dict keys (``0.weight``, ``0.bias``, ``2.weight``,
``2.bias``) and PyTorch's default init, as LLaVA's. The resampler is Q-Former / miniVLM style:
``n_queries`` learned queries at the image-token width, ``layers`` pre-norm blocks of
cross-attention (queries attend to the LayerNormed image tokens) + MLP with residuals, then
LayerNorm -> Linear(in, out). It compresses N tokens to n_queries (e.g. 576 -> 64) for a shorter LLM
sequence. No positional encoding is added to the keys: ViT tokens already carry their position.
"""

from __future__ import annotations

import re

import torch
from torch import nn

CONNECTOR_KINDS = ("linear", "mlp2x_gelu", "resampler")  # and mlpKx_gelu for any K >= 1
RESAMPLER_DEFAULTS = {"n_queries": 64, "heads": 8, "layers": 1}


class ConnectorError(ValueError):
    pass


class CrossAttentionBlock(nn.Module):
    """``q [B, Q, D]``, ``x [B, N, D]`` -> ``[B, Q, D]``: q + attn(LN q, LN x, LN x), then + MLP(LN q)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(x)
        q = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class Resampler(nn.Module):
    """``[B, N, in_dim] -> [B, n_queries, out_dim]`` (any N)."""

    def __init__(self, in_dim: int, out_dim: int, n_queries: int = 64, heads: int = 8, layers: int = 1):
        super().__init__()
        if in_dim % heads:
            raise ConnectorError(f"resampler: the image-token width {in_dim} is not divisible by heads={heads}; "
                                 "choose `heads` dividing it")
        self.queries = nn.Parameter(torch.empty(n_queries, in_dim))
        nn.init.trunc_normal_(self.queries, std=0.02)  # Qwen-VL's resampler init
        self.blocks = nn.ModuleList(CrossAttentionBlock(in_dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.queries.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, x)
        return self.proj(self.norm(q))


def _mlp_depth(kind: str) -> int | None:
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


def _check_opts(kind: str, opts: dict, allowed: dict) -> dict:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConnectorError(f"connector {kind!r} takes no option(s) {unknown}" + (f"; it takes {sorted(allowed)}" if allowed else ""))
    return {**allowed, **opts}


def build_connector(kind: str, in_dim: int, out_dim: int, n_tokens: int, **opts) -> nn.Module:
    """The connector ``kind`` from image tokens ``[B, n_tokens, in_dim]`` to ``[B, connector_tokens(...), out_dim]``.
    ``opts``: the resampler's ``n_queries`` (64), ``heads`` (8), ``layers`` (1); none for the MLPs."""
    if kind == "linear":
        _check_opts(kind, opts, {})
        return nn.Linear(in_dim, out_dim)
    depth = _mlp_depth(kind)
    if depth is not None:
        _check_opts(kind, opts, {})
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    if kind == "resampler":
        return Resampler(in_dim, out_dim, **_check_opts(kind, opts, RESAMPLER_DEFAULTS))
    raise ConnectorError(f"unknown connector {kind!r}; choose one of {list(CONNECTOR_KINDS)} (or mlpKx_gelu)")


def connector_tokens(kind: str, n_tokens: int, **opts) -> int:
    """How many image tokens the LLM sees per image: ``n_tokens`` (one per patch), or the resampler's queries."""
    if kind == "resampler":
        return int(_check_opts(kind, opts, RESAMPLER_DEFAULTS)["n_queries"])
    if kind != "linear" and _mlp_depth(kind) is None:
        raise ConnectorError(f"unknown connector {kind!r}; choose one of {list(CONNECTOR_KINDS)} (or mlpKx_gelu)")
    _check_opts(kind, opts, {})
    return n_tokens
