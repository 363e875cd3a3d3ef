"""The decoder's two cross-attention steps: recurrent clustering (default) and masked attention.

Both layers share one interface so the decoder can switch between them with a flag::

    queries, weights = layer(queries, pixels, query_pos, pixel_pos, allowed, return_weights)

* ``queries`` / ``query_pos``: ``(B, Q, C)``; the queries are the cluster centres.
* ``pixels`` / ``pixel_pos``: ``(B, N, C)``, the ``N = h * w`` tokens of one feature level.
* ``allowed``: optional ``(B, Q, N)`` bool *assignment restriction*, True where pixel ``n`` may
  take part in query ``q``'s update (from the previous mask prediction; later also boxes). The
  decoder applies :func:`release_empty_restrictions` first, so that each query allows a pixel.
* returns the updated queries ``(B, Q, C)`` and, when ``return_weights``, the head-averaged weights
  ``(B, Q, N)`` in fp32 (else ``None``).

Notation below: ``M`` heads of ``d = C / M`` channels.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clustering import append_mass_column, e_step, m_step

PROJECTION_INITS = ("separate", "packed")


def release_empty_restrictions(allowed: Tensor) -> Tensor:
    """Lift the restriction of every query that allows no pixel at all (Mask2Former's rule).

    A query whose predicted mask is empty at this level would otherwise have nothing to attend to
    (masked attention: a softmax over an empty set) or nothing to cluster; it sees every pixel.

    Args:
        allowed: ``(B, Q, N)`` bool.

    Returns:
        ``(B, Q, N)`` bool.
    """
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(B, L, C)`` -> ``(B, M, L, C / M)``."""
    B, L, C = x.shape
    return x.view(B, L, num_heads, C // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """``(B, M, L, d)`` -> ``(B, L, M * d)``."""
    B, M, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, M * d)


def _check_inputs(queries: Tensor, pixels: Tensor, allowed: Optional[Tensor], name: str) -> None:
    if queries.dim() != 3 or pixels.dim() != 3 or queries.shape[-1] != pixels.shape[-1]:
        raise ValueError(
            f"{name}: expected queries (B, Q, C) and pixels (B, N, C), got {tuple(queries.shape)} "
            f"and {tuple(pixels.shape)}"
        )
    B, Q, _ = queries.shape
    N = pixels.shape[1]
    if allowed is not None and (allowed.shape != (B, Q, N) or allowed.dtype != torch.bool):
        raise ValueError(
            f"{name}: allowed must be a bool tensor of shape {(B, Q, N)}, got {allowed.dtype} "
            f"{tuple(allowed.shape)}"
        )


class QueryPixelAttention(nn.Module):
    """What both decoder cross-attentions share: the query / key / value / output projections
    (Xavier-initialised, zero bias), the norm, the update dropout and the ``1 / sqrt(d)`` scale.

    Args:
        d_model: channels ``C`` (divisible by ``n_heads``).
        n_heads: heads ``M``.
        dropout: on the update.
        pre_norm: pre-norm instead of post-norm.
        projection_init: ``"separate"`` (default): one Xavier-uniform draw per ``C x C``
            projection; ``"packed"``: Mask2Former's, one draw over the packed ``3C x C`` query /
            key / value matrix of ``nn.MultiheadAttention`` (a bound ``sqrt(2)`` times smaller for
            those three; the output projection is drawn alone either way).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        pre_norm: bool = False,
        projection_init: str = "separate",
    ):
        super().__init__()
        name = type(self).__name__
        if d_model % n_heads != 0:
            raise ValueError(f"{name}: d_model {d_model} not divisible by n_heads {n_heads}")
        if projection_init not in PROJECTION_INITS:
            raise ValueError(
                f"{name}: projection_init must be one of {PROJECTION_INITS}, got "
                f"{projection_init!r}"
            )
        self.n_heads = n_heads
        self.pre_norm = pre_norm
        self.scale = (d_model // n_heads) ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        projections = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if projection_init == "separate":
            for proj in projections:
                nn.init.xavier_uniform_(proj.weight)
        else:
            packed = nn.init.xavier_uniform_(torch.empty(3 * d_model, d_model))
            with torch.no_grad():
                for proj, weight in zip(projections[:3], packed.chunk(3)):
                    proj.weight.copy_(weight)
            nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in projections:
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        queries: Tensor,
        pixels: Tensor,
        query_pos: Optional[Tensor] = None,
        pixel_pos: Optional[Tensor] = None,
        allowed: Optional[Tensor] = None,
        return_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """The module docstring's interface: ``(B, Q, C)`` queries updated from the ``(B, N, C)``
        pixels, and the head-averaged weights ``(B, Q, N)`` fp32 when ``return_weights``."""
        _check_inputs(queries, pixels, allowed, type(self).__name__)
        keys, values = self.pixel_keys_and_values(pixels, pixel_pos)
        return self._attend(queries, query_pos, keys, values, allowed, return_weights)

    def _attend(
        self,
        queries: Tensor,
        query_pos: Optional[Tensor],
        keys: Tensor,
        values: Tensor,
        allowed: Optional[Tensor],
        return_weights: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """The layer's step: ``(B, Q, C)`` queries (+ positions), the pixels' keys and values
        ``(B, M, N, d)`` and the restriction -> the updated queries and the weights (or None)."""
        raise NotImplementedError

    def pixel_keys_and_values(
        self, pixels: Tensor, pixel_pos: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor]:
        """``(B, N, C)`` pixels (+ positions for the keys) -> keys, values ``(B, M, N, d)``."""
        keys = self.k_proj(pixels if pixel_pos is None else pixels + pixel_pos)
        return _split_heads(keys, self.n_heads), _split_heads(self.v_proj(pixels), self.n_heads)

    def query_heads(self, queries: Tensor, query_pos: Optional[Tensor]) -> Tensor:
        """``(B, Q, C)`` queries (normalised first under pre-norm; + positions) -> ``(B, M, Q, d)``."""
        normed = self.norm(queries) if self.pre_norm else queries
        return _split_heads(
            self.q_proj(normed if query_pos is None else normed + query_pos), self.n_heads
        )

    def residual_update(self, queries: Tensor, attended: Tensor) -> Tensor:
        """``(B, Q, C)`` queries plus the projected ``(B, M, Q, d)`` head outputs (dropout), then
        the norm under post-norm -> ``(B, Q, C)``."""
        out = queries + self.dropout(self.out_proj(_merge_heads(attended)))
        return out if self.pre_norm else self.norm(out)


class ClusteringCrossAttention(QueryPixelAttention):
    """Recurrent cross-attention clustering: the queries are cluster centres, refined by ``T``
    EM-like iterations with shared weights.

    Per iteration ``t`` (post-norm; pre-norm normalises the centres before the projection and
    skips the final norm)::

        K = W_k (X + P)          (B, M, N, d)   computed once per layer
        V = W_v X                (B, M, N, d)   computed once per layer
        S = W_q (C_t + Q_pos)    (B, M, Q, d)
        A = softmax_q(S K^T / sqrt(d), restricted)   E-step, fp32     (B, M, Q, N)
        U = (A V) / A.sum(n)                          M-step, fp32     (B, M, Q, d)
        C_{t+1} = LN(C_t + Dropout(W_o concat_m U))                    (B, Q, C)

    The E- and M-step are :func:`~clusterformer.modeling.clustering.e_step` and
    :func:`~clusterformer.modeling.clustering.m_step`, the backbone's too.

    Unlike ordinary (masked) cross-attention, which normalises each query's weights over the
    pixels, every pixel here distributes one unit of mass over the centres it is allowed to join,
    so centres compete for pixels (k-means-like); the M-step then averages the values of the pixels
    each centre won.

    Args:
        d_model: channels ``C``.
        n_heads: heads ``M``.
        iterations: ``T`` (>= 1).
        dropout: on the update.
        pre_norm: pre-norm instead of post-norm.
        eps: M-step guard for empty clusters.
        projection_init: see :class:`QueryPixelAttention`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        iterations: int = 3,
        dropout: float = 0.0,
        pre_norm: bool = False,
        eps: float = 1e-6,
        projection_init: str = "separate",
    ):
        super().__init__(d_model, n_heads, dropout, pre_norm, projection_init)
        if iterations < 1:
            raise ValueError(f"ClusteringCrossAttention: iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.eps = eps

    def _attend(self, queries, query_pos, keys, values, allowed, return_weights):
        """The returned weights are the last iteration's assignment ``A`` averaged over heads,
        ``(B, Q, N)`` fp32 (sums to 1 over ``Q`` at every pixel some query allows, 0 elsewhere)."""
        keys_t = keys.float().transpose(-2, -1)  # (B, M, d, N)
        # A pixel no centre allows gets weight 0 in the M-step (its values zeroed too), so it
        # takes no part in the update; its E-step column is left uniform.
        excluded = joined = None
        if allowed is not None:
            excluded = ~allowed[:, None]  # (B, 1, Q, N)
            joined = allowed.any(dim=1)[:, None, :, None].float()  # (B, 1, N, 1)
        values_and_weight = append_mass_column(values.float(), joined)  # (B, M, N, d + 1)
        centres = queries
        assignment = None
        for _ in range(self.iterations):
            centre_q = self.query_heads(centres, query_pos)
            # fp32 E-step (softmax over the centres) and M-step (assignment-weighted means).
            assignment = e_step(centre_q.float(), keys_t, self.scale, "clusters", excluded)
            means = m_step(assignment, values_and_weight, "mean", self.eps, mass_column=True)
            centres = self.residual_update(centres, means.to(centre_q.dtype))
        weights = None
        if return_weights:
            weights = assignment.mean(dim=1).detach()
            if joined is not None:  # pixels no centre allows carry no assignment
                weights = weights * joined[:, 0, :, 0][:, None]
        return centres, weights


class MaskedCrossAttention(QueryPixelAttention):
    """Mask2Former's masked cross-attention (softmax over the allowed pixels), for the ablation.

    ``C' = LN(C + Dropout(W_o concat_m softmax_n(S K^T / sqrt(d), restricted) V))`` with ``S``,
    ``K``, ``V`` as in :class:`ClusteringCrossAttention` (pre-norm: ``C + ...(LN(C))``).
    The returned weights (``return_weights``) are the attention probabilities averaged over heads:
    they sum to 1 over the pixels of each query. A query that allows no pixel attends to all.
    """

    def _attend(self, queries, query_pos, k, v, allowed, return_weights):
        if allowed is not None:
            # A softmax over an empty set is undefined: such a query attends to every pixel.
            allowed = release_empty_restrictions(allowed)
        q = self.query_heads(queries, query_pos)
        weights = None
        if return_weights:
            logits = torch.einsum("bmqd,bmnd->bmqn", q, k).float() * self.scale
            if allowed is not None:
                logits = logits.masked_fill(~allowed[:, None], float("-inf"))
            probs = logits.softmax(dim=-1)
            attended = torch.matmul(probs.to(v.dtype), v)
            weights = probs.mean(dim=1).detach()
        else:
            # Fused kernel; its default scale is 1/sqrt(d) and a bool mask means "takes part in
            # attention", as `allowed` does.
            mask = None if allowed is None else allowed[:, None]
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.residual_update(queries, attended), weights
