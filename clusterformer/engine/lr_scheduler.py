"""Learning-rate schedules: Detectron2's, plus warm-up + polynomial decay (ADE20K recipes)."""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler


class PolynomialDecayToZero(ParamScheduler):
    """``(1 - t) ** power`` over training progress ``t`` in [0, 1], floored at ``constant_ending``."""

    def __init__(self, power: float, constant_ending: float = 0.0):
        self.power = power
        self.constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        value = (1.0 - where) ** self.power
        if self.constant_ending > 0 and value < self.constant_ending:
            return self.constant_ending
        return value


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer):
    """``SOLVER.LR_SCHEDULER_NAME``: ``WarmupPolyLR`` here, anything else from Detectron2."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = WarmupParamScheduler(
        PolynomialDecayToZero(s.POLY_LR_POWER, s.POLY_LR_CONSTANT_ENDING),
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / s.MAX_ITER, 1.0),
        s.WARMUP_METHOD,
        s.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=s.MAX_ITER)
