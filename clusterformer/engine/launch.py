"""Start the training processes of one machine: Detectron2's ``launch`` with a backend that
follows ``MODEL.DEVICE`` and a free port by default.

Detectron2's ``launch`` picks NCCL whenever the machine has a GPU, also for a ``MODEL.DEVICE cpu``
run, whose CPU tensors NCCL cannot reduce (and asserts that there are as many GPUs as processes);
here gloo is used for CPU runs, NCCL for CUDA ones. Its default ``--dist-url`` is a fixed port
derived from the user id, so two runs of one user on one machine collide ("address already in
use"); here a run on one machine without ``--dist-url`` takes a free port, and a run on several
machines must name the address of machine 0 (a default of 127.0.0.1 would make every machine
wait for itself).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class LaunchError(ValueError):
    """The process layout (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``)
    cannot run; the message names the option."""


def distributed_backend(device: str) -> str:
    """``"nccl"`` for a CUDA ``MODEL.DEVICE``, ``"gloo"`` otherwise (CPU)."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def resolve_dist_url(dist_url: Optional[str], num_machines: int) -> str:
    """The ``init_method`` URL: ``dist_url``, or a free local port when it is ``None`` or
    ``"auto"`` on one machine. Several machines need an explicit ``tcp://`` address of machine
    0 (:class:`LaunchError` otherwise)."""
    if num_machines > 1:
        if dist_url in (None, "auto"):
            raise LaunchError(
                f"--num-machines {num_machines} needs --dist-url tcp://<address of machine 0>:"
                "<free port>, the same on every machine (given: "
                f"{'auto' if dist_url == 'auto' else 'none'}); a free port can only be chosen "
                "automatically on one machine"
            )
        return dist_url
    if dist_url in (None, "auto"):
        return f"tcp://127.0.0.1:{_find_free_port()}"
    return dist_url


def launch(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    device: Optional[str] = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on this machine, rank
    ``machine_rank`` of ``num_machines`` (Detectron2's ``launch`` semantics), over gloo for a CPU
    ``device`` and NCCL for CUDA (``None``: CUDA when the machine has a GPU, as Detectron2); one
    process in all runs it directly."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if num_processes_per_machine < 1 or num_machines < 1:
        raise LaunchError(
            f"--num-gpus ({num_processes_per_machine}) and --num-machines ({num_machines}) must "
            "be at least 1"
        )
    if not 0 <= machine_rank < num_machines:
        raise LaunchError(
            f"--machine-rank {machine_rank} is not in [0, {num_machines}) (--num-machines "
            f"{num_machines})"
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    backend = distributed_backend(device)
    if backend == "nccl" and num_processes_per_machine > torch.cuda.device_count():
        raise LaunchError(
            f"--num-gpus {num_processes_per_machine} with MODEL.DEVICE {device}: this machine "
            f"has {torch.cuda.device_count()} CUDA device(s); use MODEL.DEVICE cpu for CPU "
            "processes"
        )
    url = resolve_dist_url(dist_url, num_machines)
    logger.info(
        "Starting %d process(es) of %d on machine %d of %d (%s, %s)",
        num_processes_per_machine,
        world_size,
        machine_rank,
        num_machines,
        backend,
        url,
    )
    mp.start_processes(
        distributed_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            url,
            tuple(args),
            backend,
            timeout,
        ),
        daemon=False,
    )


def distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    backend: str,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """One process: join the process group with ``backend``, create Detectron2's local (per
    machine) group, select the CUDA device for NCCL only, then ``main_func(*args)``."""
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s (rank %d of %d)", dist_url, global_rank, world_size)
        raise
    comm.create_local_process_group(num_processes_per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # As Detectron2: a barrier right after init avoids a timeout in the first collective.
    comm.synchronize()
    main_func(*args)
