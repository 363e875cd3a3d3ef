"""Training across machines: ``--num-machines 2 --machine-rank {0,1} --dist-url tcp://...``.

Two train_net.py processes on this machine stand in for two machines of one process each (gloo,
CPU). They must train the model that one process trains with the same total batch: the loader
gives rank ``r`` of ``W`` the global stream positions ``(i * b + j) * W + r`` and seeds each sample
by its position, so the two "machines" together see the images and augmentations of the one
process, and DDP's gradient average of their 4-image mean losses is the 8-image mean loss's
gradient. Only float summation order differs (the all-reduce, the batch split of each kernel).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from train_net_helpers import CLS_CONFIG, REPO, read_metrics, run_train_net, train_net_env

pytestmark = pytest.mark.slow

MAX_ITER = 6
COMMON = (
    "--config-file",
    CLS_CONFIG,
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.IMS_PER_BATCH",
    "8",
    "SOLVER.WARMUP_ITERS",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "SOLVER.LOG_PERIOD",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "DATASETS.TEST",
    "()",
    "SEED",
    "3",
)
# One thread per process: the one-process run and each "machine" use the same CPU kernels, and
# two processes do not oversubscribe the machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Float32 rounding of reductions in another order, compounded over 6 AdamW steps. Measured: the
# losses differ by at most 1.2e-7 and the final weights by at most 1.2e-7, while the loss itself
# moves by 0.81 over the 6 iterations; 1e-5 leaves a margin of about 80 for other CPUs' kernels.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses(output_dir) -> dict:
    return {m["iteration"]: m["total_loss"] for m in read_metrics(output_dir) if "total_loss" in m}


def final_weights(output_dir) -> dict:
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def run_two_machines(output_dir, timeout: int = 600) -> list:
    """Start machine ranks 0 and 1 together; returns their outputs (asserting both exit 0)."""
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(REPO, "train_net.py"),
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                *COMMON,
                "OUTPUT_DIR",
                str(output_dir),
            ],
            cwd=REPO,
            env=train_net_env(ONE_THREAD),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, (
            f"machine {rank} exited with {proc.returncode}:\n{output[-5000:]}"
        )
    return outputs


def test_two_machines_train_as_one_process_with_the_same_total_batch(tmp_path):
    one = tmp_path / "one_process"
    run_train_net(*COMMON, "OUTPUT_DIR", str(one), env=ONE_THREAD)
    two = tmp_path / "two_machines"
    outputs = run_two_machines(two)

    assert "World size: 2" in outputs[0], outputs[0][-3000:]
    # Machine 1 trained in the same process group (its log is the rank-1 log of the run).
    assert os.path.isfile(two / "log.txt.rank1")
    reference, distributed = losses(one), losses(two)
    assert sorted(distributed) == sorted(reference) == list(range(MAX_ITER))
    for iteration, loss in distributed.items():
        assert math.isclose(loss, reference[iteration], rel_tol=0, abs_tol=LOSS_TOLERANCE), (
            iteration,
            loss,
            reference[iteration],
        )
    # Training moved: the losses differ from iteration to iteration by far more than the tolerance.
    assert max(reference.values()) - min(reference.values()) > 1000 * LOSS_TOLERANCE

    weights_one, weights_two = final_weights(one), final_weights(two)
    assert weights_one.keys() == weights_two.keys()
    worst = max(
        (weights_one[k].float() - weights_two[k].float()).abs().max().item() for k in weights_one
    )
    assert worst <= WEIGHT_TOLERANCE, worst


def test_several_machines_need_an_explicit_address(tmp_path):
    for args, message in (
        (("--num-machines", "2", "--machine-rank", "1"), "needs --dist-url tcp://"),
        (("--num-machines", "2", "--dist-url", "auto"), "needs --dist-url tcp://"),
        (
            ("--num-machines", "2", "--machine-rank", "2", "--dist-url", "tcp://127.0.0.1:1"),
            "--machine-rank 2 is not in [0, 2)",
        ),
    ):
        proc = run_train_net(
            *args, *COMMON, "OUTPUT_DIR", str(tmp_path), expect_returncode=1, timeout=120
        )
        assert message in proc.stderr, proc.stderr[-2000:]


WORKER_ON_A_GPU_MACHINE = """
import sys
import torch
import torch.distributed as dist
from clusterformer.engine.launch import distributed_backend, distributed_worker

# A machine with GPUs (Detectron2's launcher would pick NCCL and select a CUDA device) running a
# MODEL.DEVICE cpu job: the worker must use gloo and leave CUDA alone.
torch.cuda.is_available = lambda: True
def no_cuda(*args):
    raise AssertionError("the CPU worker selected a CUDA device")
torch.cuda.set_device = no_cuda

def main(tag):
    tensor = torch.ones(2)
    dist.all_reduce(tensor)
    print(tag, dist.get_backend(), dist.get_world_size(), tensor.tolist())

distributed_worker(0, main, 1, 1, 0, sys.argv[1], ("worker:",), distributed_backend("cpu"))
"""


def test_cpu_runs_use_gloo_on_a_machine_with_gpus():
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_ON_A_GPU_MACHINE, f"tcp://127.0.0.1:{free_port()}"],
        cwd=REPO,
        env=train_net_env(ONE_THREAD),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worker: gloo 1 [1.0, 1.0]" in proc.stdout, proc.stdout
