"""The ClusterFormer trainer: Detectron2's ``DefaultTrainer`` with this project's builders.

Differences from ``DefaultTrainer``:

* the dataset mapper comes from ``INPUT.DATASET_MAPPER_NAME`` (train and test);
* evaluators come from the data set's ``evaluator_type`` (:func:`build_evaluator`);
* AdamW with per-parameter groups and full-model gradient clipping (:mod:`.optimizer`);
* distributed training also works on CPU: ``--num-gpus N`` with ``MODEL.DEVICE cpu`` runs N
  processes over gloo, and the model is wrapped in DDP without ``device_ids`` (Detectron2's
  ``create_ddp_model`` always passes a CUDA device id);
* evaluation results are also written to ``OUTPUT_DIR/eval_results.json``;
* reliability (docs/reliability.md): the training loader is resumable and reproducible
  (:mod:`clusterformer.data.resumable_loader`: batches and augmentations depend only on the seed
  and the iteration, not on restarts, workers or the number of processes); the model-side RNGs
  are reseeded every iteration (:class:`~.hooks.IterationSeed`); checkpoints are written
  atomically and loaded safely and strictly (:class:`~.checkpointer.ClusterFormerCheckpointer`);
  SIGTERM saves a checkpoint before exiting (:class:`~.hooks.CheckpointOnSignal`); metrics are
  written every ``SOLVER.LOG_PERIOD`` iterations. The run's seed (``SEED``, or one drawn when it
  is negative) is saved in checkpoints, so ``--resume`` continues the same data order;
* ``MODEL_EMA.ENABLED`` keeps an average of the weights, evaluated instead of the trained ones
  (:mod:`clusterformer.utils.model_ema`);
* ``SOLVER.MAX_TO_KEEP`` keeps only the newest periodic checkpoints, across ``--resume`` too
  (:class:`~.hooks.PeriodicCheckpointer`);
* ``TEST.AUG.ENABLED`` adds Mask2Former's semantic-segmentation test-time augmentation after the
  final evaluation (:meth:`Trainer.test_with_TTA`; results under ``<task>_TTA``), and is refused
  for every other task (:mod:`.test_time_augmentation`).
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.dataset_mappers import build_dataset_mapper
from ..data.resumable_loader import ResumableTrainLoader
from ..evaluation import build_evaluator
from ..utils.model_ema import CHECKPOINT_KEY as EMA_CHECKPOINT_KEY
from ..utils.model_ema import build_model_ema
from .checkpointer import ClusterFormerCheckpointer
from .hooks import (
    CheckpointOnSignal,
    IterationSeed,
    ModelEMA,
    PeriodicCheckpointer,
    check_max_to_keep,
)
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer
from .test_time_augmentation import SemanticSegmentorWithTTA, check_test_augmentation

logger = logging.getLogger(__name__)


def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in DDP when there are several processes; CPU models get no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    device_ids = [comm.get_local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def check_config(cfg: CfgNode) -> None:
    """The trainer's config checks that need no model or data: ``SOLVER.MAX_TO_KEEP`` and
    ``TEST.AUG`` (errors name the key). train_net.py runs them before anything is built."""
    check_max_to_keep(cfg.SOLVER.MAX_TO_KEEP)
    check_test_augmentation(cfg)


def write_eval_results(cfg: CfgNode, results: Dict[str, Any]) -> str:
    """Write ``results`` atomically to ``OUTPUT_DIR/eval_results.json`` (main process); returns
    the path."""
    path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=2, default=float)
        os.replace(path + ".tmp", path)
        logger.info("Evaluation results written to %s", path)
    return path


def resolve_seed(cfg: CfgNode) -> int:
    """``cfg.SEED``, or (when negative) a random seed that every process agrees on."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    seed = int(comm.shared_random_seed())
    logger.info(
        "SEED=%d: drew the training seed %d (saved in checkpoints for --resume)", cfg.SEED, seed
    )
    return seed


class Trainer(DefaultTrainer):
    """Detectron2 trainer for every ClusterFormer task (see the module docstring)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ is re-done here only to build the DDP wrapper for CPU too.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        check_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED=True needs a CUDA device (MODEL.DEVICE={cfg.MODEL.DEVICE!r}); "
                "Detectron2's AMPTrainer is CUDA-only"
            )

        self.seed = resolve_seed(cfg)
        # A drawn seed is replaced by the one of the checkpoint when resuming (load_state_dict).
        self.seed_was_drawn = cfg.SEED < 0
        if self.seed_was_drawn:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SEED = self.seed
            cfg.freeze()

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.model_ema = (
            build_model_ema(model, cfg.MODEL_EMA.DECAY) if cfg.MODEL_EMA.ENABLED else None
        )
        ema_checkpointable = {EMA_CHECKPOINT_KEY: self.model_ema} if self.model_ema else {}
        # Training saves and resumes the trained weights (and the average beside them).
        self.checkpointer = ClusterFormerCheckpointer.from_config(
            cfg,
            model,
            cfg.OUTPUT_DIR,
            use_ema_weights=False,
            trainer=weakref.proxy(self),
            **ema_checkpointable,
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
    def build_train_loader(cls, cfg: CfgNode) -> ResumableTrainLoader:
        """The resumable, reproducible loader of ``DATASETS.TRAIN`` (see
        :mod:`clusterformer.data.resumable_loader`), seeded with ``SEED`` (a negative one draws a
        seed; the trainer resolves it first so that checkpoints record it)."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable "
                "training loader implements only 'TrainingSampler' (uniform, shuffled epochs)"
            )
        world_size = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the "
                f"{world_size} training processes"
            )
        dataset_dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        return ResumableTrainLoader(
            dataset_dicts,
            build_dataset_mapper(cfg, is_train=True),
            batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
            seed=resolve_seed(cfg),
            rank=comm.get_rank(),
            world_size=world_size,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            skip_broken_samples=cfg.DATALOADER.SKIP_BROKEN_SAMPLES,
        )

    def build_hooks(self) -> List[hooks.HookBase]:
        """Detectron2's hooks, with :class:`IterationSeed` first, then :class:`ModelEMA` (with
        ``MODEL_EMA.ENABLED``; the evaluation hook then tests the averaged weights), the periodic
        checkpointer keeping ``SOLVER.MAX_TO_KEEP`` checkpoints, :class:`CheckpointOnSignal` just
        before the evaluation hook (after the LR scheduler has stepped and the periodic
        checkpointer has run; on every rank, as it all-reduces), with ``TEST.AUG.ENABLED`` an
        evaluation with test-time augmentation after the final one (Mask2Former's
        ``EvalHook(0, test_with_TTA)``, before the writers so its metrics reach metrics.json),
        and the metric writer's period set to ``SOLVER.LOG_PERIOD``."""
        result: List[hooks.HookBase] = [IterationSeed(lambda: self.seed)]
        if self.model_ema is not None:
            result.append(ModelEMA(self.model_ema))
        for hook in super().build_hooks():
            if isinstance(hook, hooks.EvalHook) and self.cfg.SOLVER.CHECKPOINT_ON_SIGTERM:
                result.append(CheckpointOnSignal(self.checkpointer))
            if isinstance(hook, hooks.EvalHook) and self.model_ema is not None:
                hook = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_averaged_weights)
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook = PeriodicCheckpointer(
                    self.checkpointer,
                    self.cfg.SOLVER.CHECKPOINT_PERIOD,
                    max_to_keep=self.cfg.SOLVER.MAX_TO_KEEP,
                )
            if isinstance(hook, hooks.PeriodicWriter):
                hook = hooks.PeriodicWriter(self.build_writers(), period=self.cfg.SOLVER.LOG_PERIOD)
            result.append(hook)
            if isinstance(hook, hooks.EvalHook) and self.cfg.TEST.AUG.ENABLED:
                result.append(hooks.EvalHook(0, self._test_with_tta_after_training))
        if self.cfg.SOLVER.CHECKPOINT_ON_SIGTERM and not any(
            isinstance(h, CheckpointOnSignal) for h in result
        ):
            result.append(CheckpointOnSignal(self.checkpointer))
        return result

    def _test_averaged_weights(self):
        self._last_eval_results = self.test(self.cfg, self.model_ema.module)
        return self._last_eval_results

    def _test_with_tta_after_training(self) -> Dict[str, Any]:
        """The final evaluation with test-time augmentation, of the evaluated weights (the
        average with ``MODEL_EMA.ENABLED``); eval_results.json then holds both evaluations."""
        model = self.model_ema.module if self.model_ema is not None else self.model
        results = self.test_with_TTA(self.cfg, model)
        if comm.is_main_process():
            write_eval_results(
                self.cfg, {**(getattr(self, "_last_eval_results", None) or {}), **results}
            )
        return results

    def build_writers(self):
        """Detectron2's writers; metrics.json holds medians over ``SOLVER.LOG_PERIOD`` iterations."""
        output_dir, window = self.cfg.OUTPUT_DIR, self.cfg.SOLVER.LOG_PERIOD
        os.makedirs(output_dir, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(output_dir, "metrics.json"), window_size=window),
            TensorboardXWriter(output_dir, window_size=window),
        ]

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume (or ``MODEL.WEIGHTS`` load), then start the training loader at the
        resumed iteration with the run's seed."""
        super().resume_or_load(resume=resume)
        # Every process reads OUTPUT_DIR/last_checkpoint itself; on machines that do not share
        # OUTPUT_DIR, the others would start from another iteration and the collectives hang.
        start_iters = comm.all_gather(self.start_iter)
        if len(set(start_iters)) > 1:
            raise RuntimeError(
                f"The training processes resumed at different iterations (by rank: {start_iters}): "
                f"OUTPUT_DIR={self.cfg.OUTPUT_DIR!r} must be one folder shared by every machine "
                "(a network file system), so that --resume finds the same last_checkpoint"
            )
        data_loader = self._trainer.data_loader
        if isinstance(data_loader, ResumableTrainLoader):
            data_loader.reset(self.start_iter, self.seed)
            if self.start_iter:
                logger.info(
                    "Training data resumes at iteration %d (seed %d)", self.start_iter, self.seed
                )

    def train(self):
        """Detectron2's training loop; the training loader's workers are stopped at the end."""
        try:
            return super().train()
        finally:
            data_loader = self._trainer.data_loader
            if isinstance(data_loader, ResumableTrainLoader):
                data_loader.close()

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["seed"] = self.seed
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        seed = state_dict.pop("seed", None)
        super().load_state_dict(state_dict)
        if seed is None:
            return
        if self.seed_was_drawn or int(seed) == self.seed:
            self.seed = int(seed)
        else:
            logger.warning(
                "The checkpoint was trained with seed %d but SEED=%d: the data order and "
                "augmentations differ from the interrupted run from here on",
                seed,
                self.seed,
            )

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
        """Detectron2's evaluation of ``model`` on ``DATASETS.TEST``; the results are also
        written to ``OUTPUT_DIR/eval_results.json``."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            write_eval_results(cfg, results)
        return results

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: nn.Module) -> OrderedDict[str, Dict]:  # noqa: N802
        """Evaluate ``model`` wrapped in :class:`SemanticSegmentorWithTTA` (``TEST.AUG``), as
        Mask2Former's ``Trainer.test_with_TTA``: evaluator outputs under
        ``OUTPUT_DIR/inference_TTA/<data set>``, results keyed ``<key>_TTA`` (``sem_seg_TTA`` for
        one test set, ``<data set>_TTA`` for several). Not written to eval_results.json here:
        the callers merge them with the evaluation without augmentation."""
        check_test_augmentation(cfg)
        logger.info(
            "Evaluating with test-time augmentation: short sides %s (long side <= %d)%s",
            list(cfg.TEST.AUG.MIN_SIZES),
            cfg.TEST.AUG.MAX_SIZE,
            ", and their mirror images" if cfg.TEST.AUG.FLIP else "",
        )
        tta_model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        # Detectron2's evaluation (this class's test would write eval_results.json).
        results = super().test(cfg, tta_model, evaluators)
        return OrderedDict((f"{key}_TTA", value) for key, value in results.items())
