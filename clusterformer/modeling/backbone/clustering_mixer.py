"""The token mixer of the ClusterFormer backbone: recurrent cross-attention clustering in windows.

Per head and per spatial window of tokens (see :mod:`.windows`), with points ``Q``, keys ``K`` and
values ``V`` from 1x1 projections of the input:

1. centres ``C`` start as the adaptive average pooling of ``Q`` (valid tokens only) to a k x k grid;
2. :class:`RecurrentClusteringAttention` runs T E-step / M-step iterations with shared weights;
3. :class:`FeatureDispatch` writes the centres back into the tokens (soft or hard);
4. a 1x1 output projection mixes the heads.

All clustering arithmetic (from the window partition to the dispatched tokens) runs in float32
(float64 for a float64 module) with autocast disabled, so mixed precision changes only the 1x1
projections.
"""

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clustering import (
    ASSIGNMENT_SOFTMAX_AXES,
    MSTEP_NORMALIZATIONS,
    autocast_disabled,
    e_step,
    m_step,
)
from .windows import (
    PointwiseConv2d,
    WindowGeometry,
    centre_pooling_weights,
    partition_windows,
    reverse_window_indices,
    reverse_windows,
    valid_token_mask,
)

TEMPERATURES = ("none", "inv_sqrt_dim")
DISPATCH_MODES = ("soft", "hard")

__all__ = [
    "ASSIGNMENT_SOFTMAX_AXES",
    "DISPATCH_MODES",
    "MSTEP_NORMALIZATIONS",
    "TEMPERATURES",
    "ClusteringMixer",
    "FeatureDispatch",
    "RecurrentClusteringAttention",
    "autocast_disabled",
]


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


class RecurrentClusteringAttention(nn.Module):
    """T iterations of E-step / M-step between centres and the tokens of their window.

    E-step: ``A = softmax((W_c C) K^T * tau)``, over the cluster axis by default (each token
    distributes one unit of mass over the centres; the paper), or over the token axis (ordinary
    cross-attention; ablation). ``W_c`` is a ``head_dim x head_dim`` linear map shared by all heads,
    windows and iterations, initialised to the identity so the first E-step compares the pooled
    points with the keys. Padded tokens get zero assignment.

    M-step: ``C = A V / A.sum(tokens)`` ("mean": each centre is the assignment-weighted mean of the
    values) or ``C = A V`` ("sum", the first code upload). With the token-axis softmax the two are
    the same (rows of A sum to 1), so no division is done.

    Both steps are :func:`~clusterformer.modeling.clustering.e_step` and
    :func:`~clusterformer.modeling.clustering.m_step`, the decoder's too.
    """

    def __init__(
        self,
        head_dim: int,
        iterations: int = 3,
        temperature: str = "none",
        mstep_normalization: str = "mean",
        assignment_softmax: str = "clusters",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}.")
        _check_choice("temperature", temperature, TEMPERATURES)
        _check_choice("mstep_normalization", mstep_normalization, MSTEP_NORMALIZATIONS)
        _check_choice("assignment_softmax", assignment_softmax, ASSIGNMENT_SOFTMAX_AXES)
        self.iterations = iterations
        self.temperature = temperature
        self.mstep_normalization = mstep_normalization
        self.assignment_softmax = assignment_softmax
        self.eps = eps
        self.scale = 1.0 / math.sqrt(head_dim) if temperature == "inv_sqrt_dim" else 1.0
        self.centre_proj = nn.Linear(head_dim, head_dim)
        nn.init.eye_(self.centre_proj.weight)
        nn.init.zeros_(self.centre_proj.bias)

    def forward(
        self, centres: Tensor, keys: Tensor, values: Tensor, valid: Optional[Tensor] = None
    ) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            centres: (..., K, d) initial centres.
            keys, values: (..., N, d) tokens of each window.
            valid: (N,) or (num_windows, N) bool (broadcast against the last dims of the
                assignment, i.e. ``(..., num_windows, K, N)``), False for padded tokens; None
                when every token is real.
        Returns:
            the final centres (..., K, d) and the assignment ``A`` (..., K, N) of every iteration.
        """
        keys_t = keys.transpose(-2, -1)
        # Parameters follow the compute dtype (float32 also for a bf16/fp16 module).
        weight = self.centre_proj.weight.to(keys.dtype)
        bias = self.centre_proj.bias.to(keys.dtype)
        valid_k = None if valid is None else valid.unsqueeze(-2)  # (..., 1, N)
        # Token-axis rows already sum to 1 over the valid tokens: "mean" needs no division.
        normalization = self.mstep_normalization if self.assignment_softmax == "clusters" else "sum"
        assignments: List[Tensor] = []
        for _ in range(self.iterations):
            query = F.linear(centres, weight, bias)
            assignment = e_step(
                query, keys_t, self.scale, self.assignment_softmax, valid=valid_k
            )  # (..., K, N)
            centres = m_step(assignment, values, normalization, self.eps)  # (..., K, d)
            assignments.append(assignment)
        return centres, assignments


class FeatureDispatch(nn.Module):
    """Writes the centres back into the tokens, weighted by a learned similarity.

    ``S = sigmoid(beta + alpha * cos(C, Q))`` (K x N per head and window; alpha, beta learned
    scalars, init 1 and 0).

    - "soft" (paper Eq. 6): each token receives ``GELU(W_d mean_k(S_k C_k))``, with ``W_d`` a
      ``head_dim x head_dim`` linear map shared by the heads; with the mixer's output projection
      this forms the two-layer MLP of Eq. 6 (the block's residual adds ``p``).
    - "hard" (the released code, from Context Clusters): each token belongs to its argmax centre
      ``k(i)`` only. Cluster k's message is the similarity-weighted mean
      ``g_k = (C_k + sum_{i in k} S_ki V_i) / (1 + |k|)`` (the M-step centre counts as one member;
      the released code used the pooled values there), and token i receives ``S_{k(i) i} g_{k(i)}``.
      Padded tokens belong to no cluster.
    """

    def __init__(self, head_dim: int, mode: str = "soft") -> None:
        super().__init__()
        _check_choice("dispatch", mode, DISPATCH_MODES)
        self.mode = mode
        self.alpha = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))
        self.dispatch_proj = nn.Linear(head_dim, head_dim) if mode == "soft" else None

    def similarity(self, centres: Tensor, points: Tensor) -> Tensor:
        """(..., K, d) centres and (..., N, d) points -> (..., K, N) similarity in (0, 1)."""
        cosine = torch.matmul(
            F.normalize(centres, dim=-1), F.normalize(points, dim=-1).transpose(-2, -1)
        )
        alpha, beta = self.alpha.to(cosine.dtype), self.beta.to(cosine.dtype)
        return torch.sigmoid(beta + alpha * cosine)

    def forward(
        self, centres: Tensor, points: Tensor, values: Tensor, valid: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            centres: (..., K, d); points, values: (..., N, d); valid: as in
                :meth:`RecurrentClusteringAttention.forward`.
        Returns:
            (..., N, d) the dispatched token features.
        """
        similarity = self.similarity(centres, points)
        if self.mode == "soft":
            mixed = torch.matmul(similarity.transpose(-2, -1), centres) / centres.shape[-2]
            proj = self.dispatch_proj
            return F.gelu(F.linear(mixed, proj.weight.to(mixed.dtype), proj.bias.to(mixed.dtype)))
        membership = torch.zeros_like(similarity).scatter_(
            -2, similarity.argmax(dim=-2, keepdim=True), 1.0
        )
        if valid is not None:
            membership = membership * valid.unsqueeze(-2)
        weights = similarity * membership  # (..., K, N), one non-zero per real token
        cluster_size = membership.sum(dim=-1, keepdim=True)
        messages = (centres + torch.matmul(weights, values)) / (1.0 + cluster_size)
        return torch.matmul(weights.transpose(-2, -1), messages)


class ClusteringMixer(nn.Module):
    """Window clustering token mixer: (B, dim, H, W) -> (B, dim, H, W).

    Args:
        dim: input/output channels.
        num_heads, head_dim: heads of the Q/K/V projections (inner width num_heads * head_dim).
        window_size: S, windows of S x S tokens (``min(S, H) x min(S, W)`` on smaller maps).
        centres_per_window: k, the centres of a window are a k x k adaptive-pooling grid.
        iterations, temperature, mstep_normalization, assignment_softmax: see
            :class:`RecurrentClusteringAttention`.
        dispatch: "soft" or "hard", see :class:`FeatureDispatch`.

    Every argument is required: the defaults (the paper's) are :class:`ClusterFormerBackbone`'s,
    which builds the mixers.

    ``forward(x, return_cluster_ids=True)`` also returns the hard cluster of every token in the
    last E-step: ``(B, heads, H, W)`` int64, the argmax of the assignment over the centres, with
    ids unique across windows (``window_index * k*k + centre``).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        head_dim: int,
        window_size: int,
        centres_per_window: int,
        iterations: int,
        temperature: str,
        mstep_normalization: str,
        assignment_softmax: str,
        dispatch: str,
    ) -> None:
        super().__init__()
        if window_size < 1 or centres_per_window < 1:
            raise ValueError(
                f"window_size and centres_per_window must be >= 1, got {window_size} and "
                f"{centres_per_window}."
            )
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.window_size = window_size
        self.centres_per_window = centres_per_window
        inner = num_heads * head_dim
        # Points, keys and values in one 1x1 convolution: channels ordered (Q|K|V, head, d).
        self.qkv = PointwiseConv2d(dim, 3 * inner)
        self.clustering = RecurrentClusteringAttention(
            head_dim,
            iterations=iterations,
            temperature=temperature,
            mstep_normalization=mstep_normalization,
            assignment_softmax=assignment_softmax,
        )
        self.dispatch = FeatureDispatch(head_dim, mode=dispatch)
        self.proj = PointwiseConv2d(inner, dim)

    @property
    def num_centres(self) -> int:
        return self.centres_per_window**2

    def forward(
        self, x: Tensor, return_cluster_ids: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """(B, dim, H, W) -> (B, dim, H, W); with ``return_cluster_ids`` also the
        (B, heads, H, W) int64 cluster ids of the last E-step (see the class docstring)."""
        if x.dim() != 4:
            raise ValueError(f"ClusteringMixer expects (B, C, H, W), got shape {tuple(x.shape)}.")
        H, W = x.shape[-2:]
        geometry = WindowGeometry.for_map(H, W, self.window_size)
        qkv = self.qkv(x)
        windows = partition_windows(qkv, geometry, groups=3, heads=self.num_heads)
        # float32 at least (float64 stays float64, for reference checks).
        compute_dtype = torch.promote_types(windows.dtype, torch.float32)
        with autocast_disabled(x.device):
            points, keys, values = windows.to(compute_dtype).unbind(0)  # (B, heads, nW, N, d)
            valid = valid_token_mask(geometry, x.device)
            pooling = centre_pooling_weights(
                geometry, self.centres_per_window, x.device, compute_dtype
            )
            centres = torch.matmul(pooling, points)  # (B, heads, nW, K, d)
            centres, assignments = self.clustering(centres, keys, values, valid)
            tokens = self.dispatch(centres, points, values, valid)
        out = self.proj(reverse_windows(tokens.to(qkv.dtype), geometry))
        if return_cluster_ids:
            return out, self._cluster_index_map(assignments[-1], geometry)
        return out

    def _cluster_index_map(self, assignment: Tensor, geometry: WindowGeometry) -> Tensor:
        """(B, heads, nW, K, N) assignment -> (B, heads, H, W) int64 cluster ids."""
        with torch.no_grad():
            centre = assignment.argmax(dim=-2)  # (B, heads, nW, N)
            offsets = torch.arange(geometry.num_windows, device=centre.device) * self.num_centres
            return reverse_window_indices(centre + offsets.view(-1, 1), geometry)
