"""The config a Detectron2 test builds from a config file: the project's defaults, the file, the
weights and the options, with the data loaded in the test's own process."""

from __future__ import annotations

from detectron2.config import CfgNode, get_cfg

from clusterformer import add_clusterformer_config


def make_cfg(config_file: str, weights: str = "", *opts: str) -> CfgNode:
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", "0", *opts])
    return cfg
