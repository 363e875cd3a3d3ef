"""Running train_net.py as a user does (a subprocess) and reading what it wrote; shared by the
end-to-end tests (test_train_net.py, test_training_resilience.py).

The shapes data set is generated once into the repository's ``datasets/`` (gitignored; shared by
every test and by ``make run``; generation is locked, so parallel tests wait for one another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLS_CONFIG = "configs/shapes/classification/clusterformer_nano.yaml"
PANOPTIC_CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"
# A wrapper of train_net.py that injects faults (signals at an iteration, NaN losses).
FAULT_INJECTION_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "inject_faults.py"
)


def train_net_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a train_net.py subprocess: the repository first on the path, data sets
    under the repository's ``datasets/`` unless set, plus ``extra``."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("DETECTRON2_DATASETS", os.path.join(REPO, "datasets"))
    env.update(extra or {})
    return env


def run_train_net(
    *args: str,
    timeout: int = 600,
    expect_returncode: int = 0,
    script: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    script_args: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Run ``train_net.py *args`` (or ``script *script_args *args``) from the repository root.

    Raises AssertionError with the end of its output unless it exits with ``expect_returncode``
    (negative: killed by that signal).
    """
    command = [sys.executable, script or os.path.join(REPO, "train_net.py"), *script_args, *args]
    proc = subprocess.run(
        command,
        cwd=REPO,
        env=train_net_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != expect_returncode:
        raise AssertionError(
            f"{' '.join(command[1:])} exited with {proc.returncode}, expected "
            f"{expect_returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def read_metrics(output_dir) -> list:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval(output_dir) -> dict:
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)
