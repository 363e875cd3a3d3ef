"""The ClusterFormer trainer: Detectron2's ``DefaultTrainer`` with this project's builders.

Differences from ``DefaultTrainer``:

* the dataset mapper comes from ``INPUT.DATASET_MAPPER_NAME`` (train and test);
* evaluators come from the data set's ``evaluator_type`` (:func:`build_evaluator`);
* AdamW with per-parameter groups and full-model gradient clipping (:mod:`.optimizer`);
* distributed training also works on CPU: ``--num-gpus N`` with ``MODEL.DEVICE cpu`` runs N
  processes over gloo, and the model is wrapped in DDP without ``device_ids`` (Detectron2's
  ``create_ddp_model`` always passes a CUDA device id);
* evaluation results are also written to ``OUTPUT_DIR/eval_results.json``.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mappers import build_dataset_mapper
from ..evaluation import build_evaluator
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer

logger = logging.getLogger(__name__)


def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DDP when there are several processes; CPU models get no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [comm.get_local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


class Trainer(DefaultTrainer):
    """Detectron2 trainer for every ClusterFormer task (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ is re-done here only to build the DDP wrapper for CPU too.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED=True needs a CUDA device (MODEL.DEVICE={cfg.MODEL.DEVICE!r}); "
                "Detectron2's AMPTrainer is CUDA-only"
            )

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        model = build_model(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        n_backbone = (
            sum(p.numel() for p in model.backbone.parameters()) if hasattr(model, "backbone") else 0
        )
        logger.info(
            "Model %s: %.2fM parameters (%.2fM in the backbone)",
            cfg.MODEL.META_ARCHITECTURE,
            n_params / 1e6,
            n_backbone / 1e6,
        )
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_dataset_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None) -> OrderedDict[str, Dict]:
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=2, default=float)
            os.replace(path + ".tmp", path)
            logger.info("Evaluation results written to %s", path)
        return results
