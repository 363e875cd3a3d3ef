"""Optimizer parameter groups, full-model gradient clipping and the poly LR schedule."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from clusterformer import add_clusterformer_config
from clusterformer.engine.lr_scheduler import build_lr_scheduler
from clusterformer.engine.optimizer import build_optimizer, get_param_groups


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4))
        self.query_feat = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _cfg(**solver):
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _lr_wd_by_name(groups):
    return {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_param_groups_follow_the_rules():
    groups = get_param_groups(
        TinyModel(),
        base_lr=1e-3,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
        weight_decay_bias=None,
        backbone_multiplier=0.1,
    )
    by_name = _lr_wd_by_name(groups)
    assert by_name["backbone.0.weight"] == pytest.approx((1e-4, 0.05))
    assert by_name["backbone.0.bias"] == pytest.approx((1e-4, 0.05))
    assert by_name["backbone.1.weight"] == pytest.approx((1e-4, 0.0))  # GroupNorm
    assert by_name["query_feat.weight"] == pytest.approx((1e-3, 0.0))  # nn.Embedding
    assert by_name["level_embed"] == pytest.approx((1e-3, 0.0))
    assert by_name["head.weight"] == pytest.approx((1e-3, 0.05))
    assert by_name["norm.weight"] == pytest.approx((1e-3, 0.0))
    assert by_name["norm.bias"] == pytest.approx((1e-3, 0.0))
    assert not any(n.startswith("frozen") for n in by_name)
    # Same (lr, wd) pairs share a group: 4 distinct pairs here.
    assert len(groups) == 4


def test_bias_weight_decay_override():
    groups = get_param_groups(
        TinyModel(),
        base_lr=1.0,
        weight_decay=0.05,
        weight_decay_norm=0.0,
        weight_decay_embed=0.0,
        weight_decay_bias=0.0,
        backbone_multiplier=1.0,
    )
    by_name = _lr_wd_by_name(groups)
    assert by_name["head.bias"] == (1.0, 0.0)
    assert by_name["head.weight"] == (1.0, 0.05)


def test_full_model_clipping_clips_the_global_norm():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    model = TinyModel()
    opt = build_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    total = math.sqrt(sum(p.numel() * 9.0 for p in params))
    opt.step()
    # SGD without momentum: the update is -lr * clipped grad, with the global norm clipped to 0.5.
    for p, b in zip(params, before):
        expected = b - 1e-3 * 3.0 * 0.5 / total
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-7)


def test_adamw_is_default_and_unknown_optimizer_is_rejected():
    assert isinstance(build_optimizer(_cfg(), TinyModel()), torch.optim.AdamW)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), TinyModel())


def test_warmup_poly_schedule():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=0, POLY_LR_POWER=0.9)
    model = TinyModel()
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    head_group = next(g for g in opt.param_groups if "head.weight" in g["names"])
    lrs = []
    for _ in range(100):
        lrs.append(head_group["lr"])
        opt.step()
        sched.step()
    for it in (0, 10, 50, 99):
        assert lrs[it] == pytest.approx(1e-3 * (1 - it / 100) ** 0.9, rel=1e-6)
