"""Peak memory of one step: on CPU in a fresh process per contender (the memory child, which
rebuilds the contender from its description), on GPU with the CUDA allocator's peak."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional

import torch

from tools.benchmark.common import CPU_MEMORY_ENV, peak_memory_mib
from tools.benchmark.contenders import Contender, Group, contenders_of
from tools.benchmark.steps import make_step

# The checkout holding this package: the memory child runs there (``-m`` puts its working
# directory first on sys.path), so it imports the same ``tools`` and ``clusterformer`` as its
# parent wherever the parent runs.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def memory_child_command(group: Group, contender: Contender, args: argparse.Namespace) -> list:
    """The command of the fresh process that measures ``contender``'s peak memory in ``group``."""
    spec = {
        "suite": group.suite,
        "name": contender.name,
        "size": list(group.size),
        "batch": group.batch,
        "mode": group.mode,
        "optimize": group.optimize,
        "size_classes": args.size_classes,
        "amp": args.amp,
        "threads": torch.get_num_threads(),
    }
    return [sys.executable, "-m", "tools.benchmark", "--memory-child", json.dumps(spec)]


def memory_child(spec_json: str) -> None:
    """Build one contender in this fresh process, run one step, print its peak memory."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    size = tuple(spec["size"])
    (contender,) = [
        c
        for c in contenders_of(spec["suite"], size, spec["size_classes"])
        if c.name == spec["name"]
    ]
    model = contender.build()
    inputs = contender.inputs(spec["batch"], "cpu")
    step = make_step(model, inputs, spec["mode"], "cpu", spec["amp"], spec["optimize"])
    peak = peak_memory_mib(step, "cpu")
    print("PEAK_MEMORY_MIB=" + json.dumps(peak))


def measure_memory(group: Group, contender: Contender, model, inputs, args) -> Optional[float]:
    if args.no_memory:
        return None
    if args.device == "cuda":
        step = make_step(model, inputs, group.mode, args.device, args.amp, group.optimize)
        return peak_memory_mib(step, "cuda")
    env = {**os.environ, **CPU_MEMORY_ENV}
    proc = subprocess.run(
        memory_child_command(group, contender, args),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MEMORY_MIB="):
            return json.loads(line.split("=", 1)[1])
    raise RuntimeError(
        f"memory measurement of {contender.name} ({group.suite}, {group.size}, {group.mode}) "
        f"failed:\n{proc.stderr[-3000:]}"
    )
