#!/usr/bin/env python
"""Train and evaluate ClusterFormer with Detectron2 (every task: classification, detection,
instance / semantic / panoptic segmentation; the config picks the model, data and evaluators).

    python train_net.py --config-file configs/shapes/panoptic-segmentation/clusterformer_nano.yaml \
        MODEL.DEVICE cpu
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file ... --num-gpus 2        # 2 processes (gloo on CPU, NCCL on GPU)
    python train_net.py --config-file ... --num-machines 2 --machine-rank 0 \
        --dist-url tcp://<machine 0 address>:<port>          # on machine 0; --machine-rank 1 on 1
    python train_net.py --register my_datasets.py --config-file ... DATASETS.TRAIN '("my_train",)'

The process group uses gloo when ``MODEL.DEVICE`` is cpu and NCCL for CUDA; without
``--dist-url``, a run on one machine takes a free local port (several machines need the
``tcp://`` address of machine 0). ``SOLVER.IMS_PER_BATCH`` is the total batch of all processes
of all machines.

``--register FILE`` runs a Python file that registers your data sets (docs/custom_datasets.md)
in every training process before the config is used.

A run stopped by SIGTERM saves a checkpoint first and exits with status 143; one killed outright
(SIGKILL, a crash) restarts from its last periodic checkpoint. Either way ``--resume`` continues
with the same iterations, optimiser, schedule, data order and augmentations (docs/reliability.md).
"""

import logging
import os
import shlex
import sys

import torch
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from clusterformer.d2 import load_config
from clusterformer.data.datasets import use_checked_builtin_loaders
from clusterformer.data.datasets.user_registration import REGISTER_HELP, run_registration_files
from clusterformer.engine import ClusterFormerCheckpointer, Trainer
from clusterformer.engine.launch import LaunchError, launch
from clusterformer.engine.trainer import check_config, write_eval_results


def setup(args):
    """Config from the defaults, ``--config-file`` and trailing ``KEY VALUE`` overrides (an
    unknown key is an error naming it and the file or the command line that set it)."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    check_config(cfg)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="clusterformer")
    # After the handlers exist (default_setup logs the parsed arguments; this is the command as
    # typed, to rerun it from log.txt).
    if comm.is_main_process():
        logging.getLogger("clusterformer").info(
            "Command line: %s", shlex.join([sys.executable, *sys.argv])
        )
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # N processes on one machine share its cores; torch's default (all cores each) oversubscribes.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    return cfg


def main(args):
    # In every process (launch starts the workers afresh): each needs the data sets registered.
    # The checked loaders of Detectron2's COCO / ADE20K names first, so that a --register file
    # can still replace those names with its own.
    use_checked_builtin_loaders()
    run_registration_files(getattr(args, "register", None) or [])
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        ClusterFormerCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            # As Mask2Former: both evaluations, the augmented one under <key>_TTA.
            results = {**results, **Trainer.test_with_TTA(cfg, model)}
            write_eval_results(cfg, results)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus ``--register FILE``; ``--dist-url`` defaults
    to a free local port (:func:`clusterformer.engine.launch.resolve_dist_url`)."""
    parser = default_argument_parser()
    parser.set_defaults(dist_url=None)
    parser.add_argument(
        "--register", action="append", default=[], metavar="FILE", help=REGISTER_HELP
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    # Read once before the processes start: MODEL.DEVICE picks the backend, and a config error
    # is then reported once instead of by every process.
    launch_cfg = load_config(args.config_file, args.opts)
    check_config(launch_cfg)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            device=launch_cfg.MODEL.DEVICE,
        )
    except LaunchError as error:
        sys.exit(f"error: {error}")
