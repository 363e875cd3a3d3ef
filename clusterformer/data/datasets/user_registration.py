"""Registration files: user Python files that register data sets, for the command-line tools.

Detectron2's tools see only the data sets registered in their own process. ``train_net.py
--register my_datasets.py`` and ``demo/demo.py --register my_datasets.py`` run such a file (e.g.
``register_coco_instances(...)`` calls) before the config is used; train_net.py runs it in every
training process, so ``--num-gpus N`` works too. See docs/custom_datasets.md.
"""

from __future__ import annotations

import os
import runpy
from typing import Sequence

REGISTER_HELP = (
    "a Python file that registers data sets (e.g. with detectron2's register_coco_instances); "
    "run before the config is used; may be given several times"
)


def run_registration_files(paths: Sequence[str]) -> None:
    """Run each file of ``paths`` as a script (``runpy.run_path``, ``__name__`` is
    ``"__clusterformer_register__"``); a missing file is a ``FileNotFoundError`` naming it."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--register {path!r}: no such file")
        runpy.run_path(path, run_name="__clusterformer_register__")
