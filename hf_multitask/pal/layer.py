"""One task's Projected Attention Layer: TS(h) = V_D g(V_E h), added in parallel with each target layer."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import PalConfig


class ProjectedAttention(nn.Module):
    """g = multi-head self-attention in r dimensions, without an output projection (V_D follows).

    Args:
        rank: r, the width of the projected states.
        num_heads: Heads; `rank // num_heads` dimensions each.
    """

    def __init__(self, rank: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(rank, 3 * rank)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`x` `(batch, seq, r)`; `mask` the encoder layer's own (boolean or additive, `(batch, 1, seq, seq)`)."""
        batch, seq, rank = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.num_heads, rank // self.num_heads).permute(2, 0, 3, 1, 4)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, heads, seq, head_dim)
        return out.transpose(1, 2).reshape(batch, seq, rank)


def _per_layer(make, layers: list[int], shared: bool) -> nn.Module:
    """One module for all layers, or an `nn.ModuleDict` keyed by layer index."""
    return make() if shared else nn.ModuleDict({str(i): make() for i in layers})


class TaskPal(nn.Module):
    """One task's PAL: `V_E` (d -> r), `V_D` (r -> d, zero at start) and, for g = attention, one
    [`ProjectedAttention`] per layer. Parameter names: `V_E.weight` when shared, `V_E.<layer>.weight` otherwise,
    `attention.<layer>.qkv.weight`.

    Args:
        config: The [`PalConfig`].
        hidden_size: d, the encoder's width.
        layers: Indices of the layers that get the term.
    """

    def __init__(self, config: PalConfig, hidden_size: int, layers: list[int]):
        super().__init__()
        self.shared = config.shared_across_layers
        self.V_E = _per_layer(lambda: nn.Linear(hidden_size, config.rank), layers, self.shared)
        self.V_D = _per_layer(lambda: zero_linear(config.rank, hidden_size), layers, self.shared)
        self.attention = None
        if config.g == "attention":
            self.attention = nn.ModuleDict({str(i): ProjectedAttention(config.rank, config.num_heads) for i in layers})

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None, layer: int) -> torch.Tensor:
        """TS(h) `(batch, seq, d)` for layer `layer`, from its input `h` `(batch, seq, d)`."""
        key = str(layer)
        x = (self.V_E if self.shared else self.V_E[key])(h)  # (batch, seq, r)
        if self.attention is not None:
            x = self.attention[key](x, mask)
        return (self.V_D if self.shared else self.V_D[key])(x)  # (batch, seq, d)


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear with zero weight and bias, marked so that `MultitaskModel._init_weights` keeps it at zero."""
    linear = nn.Linear(in_features, out_features)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    linear.zero_init = True
    return linear
