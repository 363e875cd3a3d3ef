"""Processes forked during training do not inherit the trainer's SIGTERM handler.

``CheckpointOnSignal`` replaces SIGTERM's handler with one that only records the signal. A child
forked while it is installed (panopticapi's evaluation ``multiprocessing.Pool``, data-loader
workers) that kept it would survive the SIGTERM its parent stops it with, and
``Pool.terminate`` would wait for it forever: periodic panoptic evaluation hung training.
The unit tests install the hook in this (pytest's main) process and fork; the end-to-end ones
train with periodic panoptic evaluation and SIGTERM through train_net.py.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest
from train_net_helpers import FAULT_INJECTION_SCRIPT, PANOPTIC_CONFIG, run_train_net

from clusterformer.engine.hooks import CheckpointOnSignal

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def installed_hook():
    """A ``CheckpointOnSignal`` whose handler is installed in this process (as ``before_train``
    does in a trainer); removed afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    hook = CheckpointOnSignal(checkpointer=None)
    hook.before_train()
    assert signal.getsignal(signal.SIGTERM) == hook._handle
    try:
        yield hook
    finally:
        hook.after_train()
        assert signal.getsignal(signal.SIGTERM) == previous


def wait_for_exit(pid: int, timeout: float = 20.0) -> int:
    """The wait status of child ``pid``; SIGKILLs it and fails if it outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} survived SIGTERM for {timeout} s")


def fork_sleeper(before_sleep=None) -> int:
    """Fork a child that runs ``before_sleep()`` and then sleeps (exit 0 after 60 s)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            if before_sleep is not None:
                before_sleep()
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


@pytest.mark.timeout(60)
def test_forked_child_ends_on_sigterm(installed_hook):
    pid = fork_sleeper()
    time.sleep(0.2)  # let the child reach its sleep
    os.kill(pid, signal.SIGTERM)
    status = wait_for_exit(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    # The parent keeps the hook: the signal is recorded, the process goes on.
    assert installed_hook.received is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert installed_hook.received == signal.SIGTERM


@pytest.mark.timeout(60)
def test_child_running_the_handler_still_ends(installed_hook):
    """A child forked without the at-fork reset (e.g. from C code) that still calls the handler
    restores the previous handler and ends by the signal."""
    pid = fork_sleeper(lambda: signal.signal(signal.SIGTERM, installed_hook._handle))
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    status = wait_for_exit(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert installed_hook.received is None


@pytest.mark.timeout(60)
def test_fork_pool_terminates(installed_hook):
    """What panopticapi's pq_compute_multi_core does: a fork Pool left to ``terminate`` (SIGTERM
    to its workers, then join). The workers are busy, so only the signal can end them (idle ones
    may also leave on the pool's sentinel, which made the hang a race)."""
    pool = multiprocessing.get_context("fork").Pool(2)
    assert pool.map(abs, [-1, -2]) == [1, 2]
    busy = [pool.apply_async(time.sleep, (60,)) for _ in range(2)]
    time.sleep(0.5)  # both workers inside time.sleep
    workers = list(pool._pool)
    terminator = threading.Thread(target=pool.terminate, daemon=True)
    terminator.start()
    terminator.join(20)
    hung = terminator.is_alive()
    for worker in workers:  # clean up on failure
        if worker.is_alive():
            worker.kill()
    assert not hung, "Pool.terminate did not return: a worker survived SIGTERM"
    assert [worker.exitcode for worker in workers] == [-signal.SIGTERM] * 2
    assert not any(result.ready() for result in busy)


def test_children_after_train_get_the_previous_handler():
    hook = CheckpointOnSignal(checkpointer=None)
    hook.before_train()
    hook.after_train()
    pid = fork_sleeper()
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    status = wait_for_exit(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


# ---- end to end: train_net.py with periodic panoptic evaluation --------------------------------
# 4 iterations of batch 2, evaluation (PQ with panopticapi's pool, box/mask AP, mIoU) after 2 and
# 4; no periodic checkpoint.
PERIODIC_EVALUATION = (
    "--config-file",
    PANOPTIC_CONFIG,
    "MODEL.DEVICE",
    "cpu",
    "SOLVER.MAX_ITER",
    "4",
    "TEST.EVAL_PERIOD",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "DATALOADER.NUM_WORKERS",
    "0",
)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("run", range(2))
def test_training_with_periodic_panoptic_evaluation_finishes(tmp_path, run):
    """Each evaluation forks panopticapi's pool; the run must end, and must have evaluated."""
    proc = run_train_net(
        *PERIODIC_EVALUATION,
        "OUTPUT_DIR",
        str(tmp_path),
        "SEED",
        str(run),
        timeout=360,
        env=ONE_THREAD,
    )
    log = proc.stdout + proc.stderr
    assert log.count("Panoptic Evaluation Results") >= 2, log[-3000:]
    assert "Received signal" not in log  # no pool worker ran the trainer's handler
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_after_an_evaluation_still_checkpoints_and_stops(tmp_path):
    """The trainer keeps its handler after forking evaluation pools: SIGTERM in iteration 2 (the
    third; the first evaluation ran after the second) saves model_0000002.pth and exits with 143
    (iteration 3, the last, would save model_final.pth anyway)."""
    proc = run_train_net(
        *PERIODIC_EVALUATION,
        "OUTPUT_DIR",
        str(tmp_path),
        script=FAULT_INJECTION_SCRIPT,
        script_args=("--fault", "sigterm@2", "--"),
        expect_returncode=128 + signal.SIGTERM,
        timeout=360,
        env=ONE_THREAD,
    )
    log = proc.stdout + proc.stderr
    assert "Panoptic Evaluation Results" in log
    assert log.count("Received signal 15") == 1
    assert (tmp_path / "model_0000002.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    assert not (tmp_path / "model_final.pth").exists()
