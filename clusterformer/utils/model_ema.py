"""An exponential moving average (EMA) of a model's weights (``MODEL_EMA.*``, as in d2go).

With ``MODEL_EMA.ENABLED`` the trainer keeps ``ema = decay * ema + (1 - decay) * weights`` after
every optimiser step (the :class:`~clusterformer.engine.hooks.ModelEMA` hook, through
``torch.optim.swa_utils.AveragedModel``; buffers are averaged too). Evaluation during training and
inference from a checkpoint (``--eval-only``, the predictor, the demo) use the averaged weights;
checkpoints hold both the trained weights (``"model"``, which training resumes from) and the
average (``"model_ema"``). Plain PyTorch, so tools read such checkpoints without detectron2.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# The checkpoint key of the averaged weights.
CHECKPOINT_KEY = "model_ema"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (else ``model``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def build_model_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``model`` (unwrapped from DDP) with EMA ``decay`` in [0, 1).
    Its first update copies the weights, so building it before they are loaded is fine."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"MODEL_EMA.DECAY={decay}: must be in [0, 1)")
    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def averaged_weights(ema_state: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The model ``state_dict`` inside an ``AveragedModel`` state (its ``module.*`` keys, without
    the ``n_averaged`` counter)."""
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in ema_state.items() if k.startswith(prefix)}
