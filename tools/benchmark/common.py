"""What the benchmarks of ``tools/`` share: timers, alternating timing, peak memory, and
the description of the machine a run was made on.

Timing alternates the compared functions repeat by repeat (A, B, C, A, B, C, ...), so that a
change in the machine's load during a run slows every contender alike and the ratios measured
in one run stay meaningful on a shared machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}
TIMER_HELP = {
    "wall": "wall-clock time",
    "cpu": "process CPU time (--timer cpu, with --threads 1: robust to other processes "
    "taking turns on a shared machine, which inflate wall-clock times)",
}


# The `make run` model's pixel decoder and decoder (configs/shapes/panoptic-segmentation/
# clusterformer_nano.yaml) as keyword arguments of build_clusterformer_segmenter, for the tools
# that build it without detectron2.
MAKE_RUN_PIXEL_DECODER_KWARGS = {
    "conv_dim": 64,
    "mask_dim": 64,
    "num_layers": 2,
    "n_heads": 4,
    "dim_feedforward": 256,
}
MAKE_RUN_DECODER_KWARGS = {
    "hidden_dim": 64,
    "num_queries": 20,
    "nheads": 4,
    "dim_feedforward": 256,
    "dec_layers": 6,
    "mask_shape_resolution": 16,
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_alternating(
    fns: Dict[str, Callable[[], None]], device: str, warmup: int, repeats: int, timer: str
) -> Dict[str, List[float]]:
    """Seconds of every repeat of each function (warm-up excluded); the functions alternate
    within every repeat."""
    clock = TIMERS[timer]
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            if i >= warmup:
                samples[name].append(clock() - start)
    return samples


def median_seconds(samples: Dict[str, List[float]]) -> Dict[str, float]:
    return {name: statistics.median(times) for name, times in samples.items()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def code_revision() -> str:
    """The git commit of the code measured (``+ uncommitted changes`` when tracked files differ),
    or "unknown" outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        command = ["git", "-C", here, *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def command_line(python: Optional[str] = None) -> str:
    """The command that started this process: ``<python> -m <module> ARGS`` for a module run
    (``sys.argv[0]`` is then the module's file, not what was typed), else ``<python> <script>
    ARGS``. ``python`` names the interpreter (default: the running one's file name)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        started = ["-m", name]
    else:
        started = sys.argv[:1]
    return " ".join([python or os.path.basename(sys.executable), *started, *sys.argv[1:]])


def run_metadata(device: str) -> Dict[str, object]:
    """Command, date, code revision, machine and library versions of a benchmark run."""
    return {
        "command": command_line(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "revision": code_revision(),
        "device": device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# ---- peak memory ---------------------------------------------------------------------------
# CPU: Linux keeps the peak resident set size of a process (VmHWM in /proc/self/status), and
# writing "5" to /proc/self/clear_refs resets it to the current size. The difference is the
# peak of everything a step allocated, provided freed memory goes back to the system: glibc
# returns large blocks only when they were mmap-ed, which a fixed MALLOC_MMAP_THRESHOLD_ (set
# by the caller in the environment of a fresh process; it also disables glibc's dynamic
# threshold) guarantees for everything above it.
CPU_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_memory_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def peak_memory_mib(fn: Callable[[], None], device: str) -> Optional[float]:
    """Peak memory (MiB) that ``fn`` allocates above what was allocated before it.

    CUDA: the caching allocator's peak of allocated bytes. CPU: the peak resident set size
    (see the comment above; call it in a fresh process with ``CPU_MEMORY_ENV``); ``None``
    where /proc does not allow the measurement.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not cpu_peak_memory_supported():
        return None
    before = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - before) / 1024
