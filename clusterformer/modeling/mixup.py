"""Mixup / CutMix with label smoothing, applied to a training batch (plain PyTorch)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """``(B,)`` int64 labels -> ``(B, K)`` targets with ``1 - smoothing + smoothing / K`` on the label."""
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got min {int(labels.min())} max {int(labels.max())}"
        )
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


class MixupCutmix:
    """Batch-level Mixup (Zhang et al.) and CutMix (Yun et al.) with smoothed soft targets.

    Each image is mixed with the image at the mirrored batch position (``flip(0)``), as timm does,
    with ``lam ~ Beta(alpha, alpha)``. With probability ``prob`` a batch is mixed at all; when both
    alphas are positive, CutMix is picked with probability ``switch_prob``. For CutMix, ``lam`` is
    corrected to the exact area kept after clipping the box to the image.

    Args:
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind of mixing.
        prob: probability of mixing a batch.
        switch_prob: probability of CutMix when both are enabled.
        label_smoothing: smoothing of the one-hot targets.
        num_classes: K.
    """

    def __init__(
        self,
        mixup_alpha: float,
        cutmix_alpha: float,
        prob: float,
        switch_prob: float,
        label_smoothing: float,
        num_classes: int,
    ):
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _sample_lam(self) -> Tuple[float, bool]:
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or float(torch.rand(())) < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return lam, use_cutmix

    def __call__(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """``images`` ``(B, C, H, W)`` float, ``labels`` ``(B,)`` -> mixed images, ``(B, K)`` targets."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return images, targets
        lam, use_cutmix = self._sample_lam()
        if use_cutmix:
            H, W = images.shape[-2:]
            cut_h, cut_w = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
            cy, cx = int(torch.randint(0, H, ())), int(torch.randint(0, W, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, targets * lam + targets.flip(0) * (1.0 - lam)
