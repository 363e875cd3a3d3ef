"""Training hooks for reproducible and interruptible runs (Detectron2 layer).

* :class:`IterationSeed`: reseeds the model-side RNGs (dropout, drop-path, the criterion's random
  points, Mixup) before every iteration from (seed, rank, iteration), so that a resumed run draws
  the same random numbers as the uninterrupted one from the first resumed iteration on, whatever
  happened in between (evaluation, data-loader start-up, a checkpoint load).
* :class:`ModelEMA`: updates the average of the weights (``MODEL_EMA``,
  :mod:`clusterformer.utils.model_ema`) after every step.
* :class:`PeriodicCheckpointer`: Detectron2's periodic checkpointer hook that keeps only the
  ``max_to_keep`` newest periodic checkpoints of the output folder (``SOLVER.MAX_TO_KEEP``).
* :class:`CheckpointOnSignal`: on SIGTERM (a cluster pre-empting or cancelling the job) finishes
  the current iteration, saves ``model_<iteration>.pth`` and exits with status ``128 + signal``.
  Processes forked while it is installed (evaluation pools such as panopticapi's, data-loader
  workers) do not inherit its handler: they get the handler that was there before it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from torch.optim.swa_utils import AveragedModel

from ..data.resumable_loader import derive_seed, seed_all_rngs
from ..utils.model_ema import unwrap

logger = logging.getLogger(__name__)


class IterationSeed(HookBase):
    """Seed Python's, NumPy's and torch's RNGs with ``derive_seed(seed(), "model", rank, iter)``
    before each iteration. ``seed`` is a callable so a seed restored from a checkpoint counts."""

    def __init__(self, seed: Callable[[], int]):
        self._seed = seed

    def before_step(self) -> None:
        seed_all_rngs(derive_seed(self._seed(), "model", comm.get_rank(), self.trainer.iter))


class ModelEMA(HookBase):
    """Update ``ema`` (an ``AveragedModel``) from the trainer's model after every step, before
    the checkpointer and the evaluation hook run, so both see the average of this step."""

    def __init__(self, ema: AveragedModel):
        self.ema = ema

    @torch.no_grad()
    def after_step(self) -> None:
        self.ema.update_parameters(unwrap(self.trainer.model))


def check_max_to_keep(value: object, key: str = "SOLVER.MAX_TO_KEEP") -> Optional[int]:
    """``value`` if it is ``None`` (keep every checkpoint) or a positive int, else ``ValueError``
    naming ``key``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{key}={value!r}: must be a positive integer (the number of periodic checkpoints "
            "kept, the newest ones) or None to keep them all"
        )
    return value


class PeriodicCheckpointer(d2_hooks.PeriodicCheckpointer):
    """Detectron2's ``PeriodicCheckpointer`` hook (``model_<iteration>.pth`` every ``period``
    iterations, ``model_final.pth`` at the end) that keeps only the ``max_to_keep`` newest periodic
    checkpoints (``None``: all of them, Detectron2's behaviour).

    fvcore's own ``max_to_keep`` only counts the checkpoints this process wrote, so every
    ``--resume`` would leave the previous run's checkpoints behind, and a checkpoint saved on
    SIGTERM (:class:`CheckpointOnSignal`) would never be deleted. Here, after each periodic save,
    the output folder is listed instead: of the files ``model_<7 digits>.pth`` whose iteration is
    at most the current one, all but the ``max_to_keep`` highest iterations are deleted.
    ``model_final.pth``, the file ``last_checkpoint`` names, and checkpoints of later iterations
    (left by a run that went further before this one restarted from an earlier point) are never
    deleted.
    """

    def __init__(
        self,
        checkpointer,
        period: int,
        max_to_keep: Optional[int] = None,
        file_prefix: str = "model",
    ):
        keep = check_max_to_keep(max_to_keep)
        # fvcore's retention stays off (None): this class does its own, over the whole folder.
        super().__init__(checkpointer, period, max_to_keep=None, file_prefix=file_prefix)
        self.keep = keep
        self._periodic_name = re.compile(rf"^{re.escape(file_prefix)}_(\d{{7}})\.pth$")

    def step(self, iteration: int, **kwargs) -> None:
        super().step(iteration, **kwargs)
        if self.keep is not None and (int(iteration) + 1) % self.period == 0:
            self.delete_old_checkpoints(int(iteration))

    def delete_old_checkpoints(self, iteration: int) -> List[str]:
        """Delete the periodic checkpoints beyond the ``keep`` newest ones up to ``iteration``
        (see the class docstring); returns the deleted paths."""
        checkpointer = self.checkpointer
        if not checkpointer.save_dir or not checkpointer.save_to_disk:
            return []
        latest = os.path.basename(checkpointer.get_checkpoint_file())
        periodic = []
        for path in checkpointer.get_all_checkpoint_files():
            match = self._periodic_name.match(os.path.basename(path))
            if match and int(match.group(1)) <= iteration:
                periodic.append((int(match.group(1)), path))
        periodic.sort()
        deleted = []
        for _, path in periodic[: max(0, len(periodic) - self.keep)]:
            if os.path.basename(path) == latest:
                continue
            self.path_manager.rm(path)
            deleted.append(path)
        if deleted:
            logger.info(
                "Deleted %d old checkpoint(s) (SOLVER.MAX_TO_KEEP=%d): %s",
                len(deleted),
                self.keep,
                ", ".join(os.path.basename(p) for p in deleted),
            )
        return deleted


class TrainingInterrupted(SystemExit):
    """Raised after the checkpoint of an interrupted run is saved; exits with ``code``."""


# Signal -> the handler that was installed before CheckpointOnSignal replaced it, for the signals
# whose handler it currently holds in this process.
_INSTALLED_HANDLERS: Dict[int, object] = {}
_FORK_HOOK_REGISTERED = False


def _restore_handlers_in_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: a forked child must not keep the trainer's
    handler. It would only log the signal and keep running, so a child that its parent stops with
    SIGTERM never ends: ``multiprocessing.Pool.terminate`` (run by panopticapi's evaluation pool
    when it is finalised) then waits forever for its workers."""
    for signum, previous in _INSTALLED_HANDLERS.items():
        signal.signal(signum, previous)
    _INSTALLED_HANDLERS.clear()


def _register_fork_hook() -> None:
    # Once per process: at-fork callbacks cannot be unregistered, and the callback does nothing
    # while no handler is installed.
    global _FORK_HOOK_REGISTERED
    if not _FORK_HOOK_REGISTERED and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_restore_handlers_in_child)
        _FORK_HOOK_REGISTERED = True


class CheckpointOnSignal(HookBase):
    """Save a checkpoint and stop when one of ``signals`` arrives (default: SIGTERM).

    The handler only records the signal; the checkpoint is written after the running iteration
    (a checkpoint in the middle of an optimiser step would be inconsistent). With several
    processes the request is agreed on by an all-reduce after every iteration, so all ranks stop
    at the same iteration (the signal must reach every rank's process, as cluster schedulers do).
    The checkpoint is ``model_<iteration>.pth`` with the trainer state, ``last_checkpoint`` points
    at it, and ``--resume`` continues with the next iteration. Then :class:`TrainingInterrupted`
    (a ``SystemExit``) ends the process with status ``128 + signal number`` (143 for SIGTERM).

    Only the installing process handles the signals this way. Children forked with ``os.fork``
    (``multiprocessing``'s fork start method included) get the previous handlers back right after
    the fork; a child forked by other means (C code) that still runs the handler restores the
    previous handler and re-raises the signal to itself, so it ends as it would have without
    this hook.
    """

    def __init__(self, checkpointer, signals: Sequence[int] = (signal.SIGTERM,)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._pid: Optional[int] = None

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # A child that escaped the at-fork reset: act as if the handler was never installed.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        logger.warning(
            "Received signal %d: a checkpoint will be saved after this iteration", signum
        )
        self.received = signum

    def before_train(self) -> None:
        self._pid = os.getpid()
        _register_fork_hook()
        for signum in self.signals:
            try:
                previous = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                logger.warning(
                    "Not in the main thread: signal %d will not save a checkpoint", signum
                )
                continue
            # None: a handler not installed from Python; the default action is the best guess.
            self._previous[signum] = previous if previous is not None else signal.SIG_DFL
            _INSTALLED_HANDLERS[signum] = self._previous[signum]

    def after_train(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
            _INSTALLED_HANDLERS.pop(signum, None)
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
