"""Query self-attention and feed-forward sub-layers of the decoder (batch-first, ``(B, Q, C)``)."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..common_layers import xavier_init_matrices_


class SelfAttentionLayer(nn.Module):
    """Self-attention among the queries: ``x = LN(x + Dropout(MHA(x + pos, x + pos, x)))``.

    Pre-norm: ``x = x + Dropout(MHA(LN(x) + pos, LN(x) + pos, LN(x)))``.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, pre_norm: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        xavier_init_matrices_(self)

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        """``x``, ``pos``: ``(B, Q, C)`` -> ``(B, Q, C)``."""
        h = self.norm(x) if self.pre_norm else x
        qk = h if pos is None else h + pos
        out = x + self.dropout(self.attn(qk, qk, h, need_weights=False)[0])
        return out if self.pre_norm else self.norm(out)


class FFNLayer(nn.Module):
    """``x = LN(x + Dropout(W2 Dropout(ReLU(W1 x))))`` (pre-norm: ``x + FFN(LN(x))``)."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        pre_norm: bool = False,
    ):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout_hidden = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        xavier_init_matrices_(self)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, Q, C)`` -> ``(B, Q, C)``."""
        h = self.norm(x) if self.pre_norm else x
        out = x + self.dropout(self.linear2(self.dropout_hidden(F.relu(self.linear1(h)))))
        return out if self.pre_norm else self.norm(out)
