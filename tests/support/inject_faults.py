"""train_net.py with injected faults, for the reliability tests (run as a script).

    python tests/support/inject_faults.py --fault sigterm@5 -- --config-file ... KEY VALUE ...

Faults (``KIND@ITERATION``, several allowed):

* ``sigterm@N`` / ``sigkill@N``: the process sends itself the signal at the start of iteration
  ``N`` (as a scheduler would, in the middle of training);
* ``nan@N``: the model's losses are NaN at iteration ``N``.

Everything else is train_net.py's own code path.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch
from detectron2.engine import HookBase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import train_net  # noqa: E402
from clusterformer.engine import Trainer  # noqa: E402


class SignalAt(HookBase):
    def __init__(self, iteration: int, signum: int):
        self.iteration, self.signum = iteration, signum

    def before_step(self) -> None:
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


class NaNLossAt(HookBase):
    """Wraps the model's forward so that every loss of ``iteration`` is NaN."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_train(self) -> None:
        model = self.trainer._trainer.model
        forward = model.forward
        hook = self

        def forward_with_nan(*args, **kwargs):
            losses = forward(*args, **kwargs)
            if hook.trainer.iter == hook.iteration:
                losses = {k: v * torch.tensor(float("nan")) for k, v in losses.items()}
            return losses

        model.forward = forward_with_nan


def fault_hooks(faults):
    hooks = []
    for fault in faults:
        kind, iteration = fault.split("@")
        iteration = int(iteration)
        if kind == "sigterm":
            hooks.append(SignalAt(iteration, signal.SIGTERM))
        elif kind == "sigkill":
            hooks.append(SignalAt(iteration, signal.SIGKILL))
        elif kind == "nan":
            hooks.append(NaNLossAt(iteration))
        else:
            raise ValueError(f"unknown fault {fault!r}")
    return hooks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", action="append", default=[])
    own, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    build_hooks = Trainer.build_hooks
    Trainer.build_hooks = lambda self: fault_hooks(own.fault) + build_hooks(self)
    args = train_net.argument_parser().parse_args(rest)
    train_net.launch(train_net.main, args.num_gpus, args=(args,))


if __name__ == "__main__":
    main()
