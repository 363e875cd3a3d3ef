"""The clustering primitive of ClusterFormer: one E-step and one M-step, shared by the backbone's
window clustering (:mod:`.backbone.clustering_mixer`) and the decoder's query clustering
(:mod:`.transformer_decoder.cross_attention`).

An assignment is laid out ``(..., K, N)``: ``K`` centres on axis -2, ``N`` tokens (the points of
a window, or the pixels of a feature level) on axis -1; any leading dims (batch, heads, windows)
broadcast. One iteration of recurrent clustering is::

    A = e_step(W C, K^T, scale, softmax_over, excluded, valid)    (..., K, N)
    C = m_step(A, V, normalization)                                (..., K, d)

Both run in float32 (float64 inputs stay float64) with autocast off, whatever the caller's
autocast state: mixed precision changes the projections around them, never the clustering.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "ASSIGNMENT_SOFTMAX_AXES",
    "MSTEP_NORMALIZATIONS",
    "append_mass_column",
    "autocast_disabled",
    "e_step",
    "m_step",
]

# "clusters": each token distributes one unit of mass over the centres (the paper);
# "tokens": each centre's weights sum to 1 over the tokens (ordinary cross-attention).
ASSIGNMENT_SOFTMAX_AXES = ("clusters", "tokens")
# "mean": each centre becomes the assignment-weighted mean of the values; "sum": the raw sum.
MSTEP_NORMALIZATIONS = ("mean", "sum")
_SOFTMAX_DIMS = {"clusters": -2, "tokens": -1}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def autocast_disabled(device: torch.device):
    """A context with autocast off for ``device`` (a no-op for device types autocast lacks)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def e_step(
    queries: Tensor,
    keys_t: Tensor,
    scale: float = 1.0,
    softmax_over: str = "clusters",
    excluded: Optional[Tensor] = None,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """E-step: the soft assignment ``A = softmax(scale * queries keys^T)`` of tokens to centres.

    ``softmax_over="clusters"`` normalises over the centre axis (every token spreads one unit of
    mass over the centres it may join); ``"tokens"`` over the token axis (every centre's weights
    sum to 1 over the tokens it may take).

    Exclusions, both optional bool masks broadcasting against ``(..., K, N)``:

    * ``excluded``: True where centre ``k`` may not take token ``n``. The logit is filled with the
      most negative finite value before the softmax, so the entry gets exactly zero weight
      wherever its softmax slice keeps one allowed entry. A slice with every entry excluded
      (a token no centre may take, with the cluster-axis softmax) comes out uniform, finite in
      value and gradient: give such tokens zero weight with ``valid`` or in the M-step
      (:func:`append_mass_column`).
    * ``valid``: ``(..., 1, N)``, False for tokens that take no part at all (padding). They get
      zero weight in every centre: the cluster-axis assignment is multiplied by ``valid``; with
      the token-axis softmax they are excluded as above, so each centre's weights still sum to 1
      over the valid tokens.

    Args:
        queries: ``(..., K, d)`` centre queries (the centres after their projection).
        keys_t: ``(..., d, N)`` the token keys transposed (callers iterating transpose once).
        scale: logit scale (temperature); applied to the ``(K, d)`` queries, cheaper than to
            the ``(K, N)`` logits, and skipped when 1.
        softmax_over: one of :data:`ASSIGNMENT_SOFTMAX_AXES`.
        excluded: bool, broadcastable to ``(..., K, N)``, or ``None``.
        valid: bool, broadcastable to ``(..., 1, N)``, or ``None``.

    Returns:
        ``A``: ``(..., K, N)`` float32 (float64 for float64 inputs).
    """
    dim = _SOFTMAX_DIMS.get(softmax_over)
    if dim is None:
        raise ValueError(
            f"softmax_over must be one of {ASSIGNMENT_SOFTMAX_AXES}, got {softmax_over!r}."
        )
    with autocast_disabled(queries.device):
        queries = _at_least_fp32(queries)
        if scale != 1.0:
            queries = queries * scale
        logits = torch.matmul(queries, _at_least_fp32(keys_t))
        if valid is not None and dim == -1:
            excluded = ~valid if excluded is None else excluded | ~valid
        # In place: the product that made the logits does not need them for its backward. A
        # finite fill (not -inf) keeps fully excluded slices finite instead of NaN.
        if excluded is not None:
            logits = logits.masked_fill_(excluded, torch.finfo(logits.dtype).min)
        assignment = logits.softmax(dim=dim)
        if valid is not None and dim == -2:
            assignment = assignment * valid
        return assignment


def append_mass_column(values: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """The M-step operand that yields each centre's weighted sum and its mass in one product.

    ``[w_n v_n, w_n]`` per token: the values scaled by the token weights with the weights
    appended as a last channel (``w = 1`` when ``None``). A token of weight 0 (one no centre may
    take) then adds nothing to any centre, whatever its assignment. Build it once and pass it to
    :func:`m_step` with ``mass_column=True`` at every iteration.

    Args:
        values: ``(..., N, d)``.
        weights: ``(..., N, 1)`` float (broadcasting against ``values``), or ``None``.

    Returns:
        ``(..., N, d + 1)``.
    """
    if weights is None:
        return torch.cat([values, values.new_ones(values.shape[:-1] + (1,))], dim=-1)
    values = values * weights
    return torch.cat([values, weights.expand(values.shape[:-1] + (1,))], dim=-1)


def m_step(
    assignment: Tensor,
    values: Tensor,
    normalization: str = "mean",
    eps: float = 1e-6,
    mass_column: bool = False,
) -> Tensor:
    """M-step: every centre's assignment-weighted update of the token values.

    ``"mean"``: ``C[k] = sum_n A[k, n] v_n / max(sum_n A[k, n], eps)``, the exact weighted mean
    for any centre holding at least ``eps`` tokens' worth of mass, a (near-)zero centre instead
    of a division by zero for an empty one. ``"sum"``: ``C[k] = sum_n A[k, n] v_n`` (the mean
    already, when the token-axis softmax normalised each centre's weights).

    With ``mass_column=True`` the values come from :func:`append_mass_column`: the sum and the
    mass ``sum_n A[k, n] w_n`` are one product, and tokens of weight 0 take no part.

    Args:
        assignment: ``(..., K, N)``.
        values: ``(..., N, d)``, or ``(..., N, d + 1)`` with ``mass_column``.
        normalization: one of :data:`MSTEP_NORMALIZATIONS`.
        eps: floor of the mass.
        mass_column: whether the last channel of ``values`` is the token weight.

    Returns:
        ``(..., K, d)`` float32 (float64 for float64 inputs).
    """
    if normalization not in MSTEP_NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {MSTEP_NORMALIZATIONS}, got {normalization!r}."
        )
    with autocast_disabled(assignment.device):
        assignment = _at_least_fp32(assignment)
        summed = torch.matmul(assignment, _at_least_fp32(values))
        if mass_column:
            if normalization == "sum":
                return summed[..., :-1]
            return summed[..., :-1] / summed[..., -1:].clamp_min(eps)
        if normalization == "sum":
            return summed
        return summed / assignment.sum(dim=-1, keepdim=True).clamp_min(eps)
