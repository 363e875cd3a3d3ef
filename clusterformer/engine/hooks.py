"""Training hooks for reproducible and interruptible runs (Detectron2 layer).

* :class:`IterationSeed`: reseeds the model-side RNGs (dropout, drop-path, the criterion's random
  points, Mixup) before every iteration from (seed, rank, iteration), so that a resumed run draws
  the same random numbers as the uninterrupted one from the first resumed iteration on, whatever
  happened in between (evaluation, data-loader start-up, a checkpoint load).
* :class:`CheckpointOnSignal`: on SIGTERM (a cluster pre-empting or cancelling the job) finishes
  the current iteration, saves ``model_<iteration>.pth`` and exits with status ``128 + signal``.
"""

from __future__ import annotations

import logging
import signal
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable_loader import derive_seed, seed_all_rngs

logger = logging.getLogger(__name__)


class IterationSeed(HookBase):
    """Seed Python's, NumPy's and torch's RNGs with ``derive_seed(seed(), "model", rank, iter)``
    before each iteration. ``seed`` is a callable so a seed restored from a checkpoint counts."""

    def __init__(self, seed: Callable[[], int]):
        self._seed = seed

    def before_step(self) -> None:
        seed_all_rngs(derive_seed(self._seed(), "model", comm.get_rank(), self.trainer.iter))


class TrainingInterrupted(SystemExit):
    """Raised after the checkpoint of an interrupted run is saved; exits with ``code``."""


class CheckpointOnSignal(HookBase):
    """Save a checkpoint and stop when one of ``signals`` arrives (default: SIGTERM).

    The handler only records the signal; the checkpoint is written after the running iteration
    (a checkpoint in the middle of an optimiser step would be inconsistent). With several
    processes the request is agreed on by an all-reduce after every iteration, so all ranks stop
    at the same iteration (the signal must reach every rank's process, as cluster schedulers do).
    The checkpoint is ``model_<iteration>.pth`` with the trainer state, ``last_checkpoint`` points
    at it, and ``--resume`` continues with the next iteration. Then :class:`TrainingInterrupted`
    (a ``SystemExit``) ends the process with status ``128 + signal number`` (143 for SIGTERM).
    """

    def __init__(self, checkpointer, signals: Sequence[int] = (signal.SIGTERM,)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        logger.warning(
            "Received signal %d: a checkpoint will be saved after this iteration", signum
        )
        self.received = signum

    def before_train(self) -> None:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                logger.warning(
                    "Not in the main thread: signal %d will not save a checkpoint", signum
                )

    def after_train(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _agreed_signal(self) -> int:
        received = self.received or 0
        if comm.get_world_size() == 1:
            return received
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        flag = torch.tensor([received], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self) -> None:
        signum = self._agreed_signal()
        if not signum:
            return
        iteration = self.trainer.iter
        self.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        logger.warning(
            "Stopped by signal %d after iteration %d; checkpoint saved. Continue with --resume.",
            signum,
            iteration,
        )
        raise TrainingInterrupted(128 + signum)
