"""The timed step of a contender: inference under ``no_grad``, or a training step (forward,
backward and an AdamW step)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Tuple

import torch
from torch import Tensor, nn


def tensors_in(output: Any) -> List[Tensor]:
    """Every floating tensor of a (nested) model output that carries a gradient."""
    if isinstance(output, Tensor):
        return [output] if output.is_floating_point() and output.requires_grad else []
    if isinstance(output, dict):
        return [t for v in output.values() for t in tensors_in(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in tensors_in(v)]
    return []


def scalar_loss(output: Any) -> Tensor:
    """A loss touching every output (sum of means), so that backward reaches every head."""
    return sum(t.float().mean() for t in tensors_in(output))


def autocast(device: str, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def make_step(
    model: nn.Module, inputs: Tuple[Tensor, ...], mode: str, device: str, amp: bool, optimize: bool
) -> Callable[[], None]:
    """``inference``: forward under ``no_grad``; ``train``: forward, backward and, with
    ``optimize``, an AdamW step (models) or none (components: forward + backward)."""
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast(device, amp):
                model(*inputs)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if optimize else None

    def train() -> None:
        for p in params:
            p.grad = None
        with autocast(device, amp):
            loss = scalar_loss(model(*inputs))
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return train
