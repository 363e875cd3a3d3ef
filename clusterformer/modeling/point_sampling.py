"""Point sampling of mask logits (PointRend) and uncertainty-based importance sampling.

Points are ``(x, y)`` normalised to ``[0, 1]`` over the map, with pixel centres at
``(i + 0.5) / W`` (``align_corners=False``), so the same points address maps of different
resolutions (stride-4 predictions and full-resolution targets) at the same image location.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, point_coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Read ``inputs`` at normalised points (zero outside the map).

    Args:
        inputs: ``(N, C, H, W)``.
        point_coords: ``(N, P, 2)`` or ``(N, Hg, Wg, 2)``, ``(x, y)`` in ``[0, 1]``.
        mode: ``grid_sample`` interpolation.

    Returns:
        ``(N, C, P)`` or ``(N, C, Hg, Wg)``.
    """
    if inputs.dim() != 4:
        raise ValueError(f"point_sample: inputs must be (N, C, H, W), got {tuple(inputs.shape)}")
    flat = point_coords.dim() == 3
    grid = point_coords.unsqueeze(2) if flat else point_coords
    if grid.shape[0] != inputs.shape[0] or grid.shape[-1] != 2:
        raise ValueError(
            f"point_sample: point_coords {tuple(point_coords.shape)} do not match inputs "
            f"{tuple(inputs.shape)} (need the same N and a last dimension of 2)"
        )
    out = F.grid_sample(inputs, 2.0 * grid.to(inputs.dtype) - 1.0, mode=mode, align_corners=False)
    return out.squeeze(3) if flat else out


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of binary logits: ``-|logit|`` (highest at the decision boundary)."""
    return -logits.abs()


def random_points(
    n: int, p: int, device: torch.device, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``(n, p, 2)`` uniform points in ``[0, 1]``; drawn from ``generator`` when given (on the
    generator's device, then moved), else from the global RNG of ``device``."""
    if generator is None:
        return torch.rand(n, p, 2, device=device)
    return torch.rand(n, p, 2, generator=generator, device=generator.device).to(device)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_func: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """PointRend's training-time point selection.

    Draws ``num_points * oversample_ratio`` uniform candidates, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain of them (uncertainty of the
    interpolated logits), and fills up with fresh uniform points.

    Args:
        coarse_logits: ``(N, 1, H, W)``.
        uncertainty_func: ``(N, 1, P) -> (N, 1, P)``, higher = more uncertain.
        num_points: points per mask.
        oversample_ratio: ``>= 1``.
        importance_sample_ratio: in ``[0, 1]``.
        generator: optional RNG for reproducibility.

    Returns:
        ``(N, num_points, 2)`` normalised ``(x, y)``: the uncertain points first (in no
        particular order), then the uniform ones.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    n = coarse_logits.shape[0]
    device = coarse_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    parts = []
    if num_uncertain > 0:
        candidates = random_points(n, num_candidates, device, generator)
        uncertainty = uncertainty_func(point_sample(coarse_logits, candidates))[:, 0, :]
        # The losses are sums over points, so the order of the chosen ones does not matter;
        # an unsorted top-k is half the time of a sorted one on CPU.
        top = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
        parts.append(torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2)))
    if num_random > 0:
        parts.append(random_points(n, num_random, device, generator))
    return torch.cat(parts, dim=1)
