"""Renamed config keys (``RENAMED_KEYS``, docs/migration.md) and the one validation of a
``ClusterFormer`` config's task switches.

An old key in a config file (or its ``_BASE_`` chain, or a saved run's config.yaml) and on the
command line gives the same config as the new key, with a warning naming both; both names given
is an error naming both. A bad task combination raises the same message, from one check.
"""

from __future__ import annotations

import logging
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import clusterformer.d2  # noqa: F401  (registers the meta-architectures and data sets)
from clusterformer.d2.config import RENAMED_KEYS, add_clusterformer_config
from clusterformer.d2.config_files import RenamedConfigKeyError, load_config
from clusterformer.d2.meta_arch import builders, clusterformer_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLS_CONFIG = os.path.join(REPO, "configs/shapes/classification/clusterformer_nano.yaml")
DETECTION_CONFIG = os.path.join(REPO, "configs/shapes/detection/clusterformer_nano.yaml")
PANOPTIC_CONFIG = os.path.join(REPO, "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml")
OLD = "MODEL.CLUSTERFORMER."
NEW = "MODEL.CLUSTERFORMER_BACKBONE."
OLD_KEYS_YAML = "MODEL:\n  CLUSTERFORMER:\n    ITERATIONS: 2\n    CENTERS_PER_WINDOW: 1\n    DEPTHS: [1, 1, 1, 1]\n"
NEW_KEYS_YAML = (
    "MODEL:\n  CLUSTERFORMER_BACKBONE:\n    CLUSTERING_ITERATIONS: 2\n    CENTRES_PER_WINDOW: 1\n"
    "    DEPTHS: [1, 1, 1, 1]\n"
)


def _leaf(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"_BASE_: {CLS_CONFIG}\n{body}")
    return str(path)


def _renamed_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if "Renamed config keys" in r.getMessage()]


def test_every_old_backbone_key_has_a_new_one():
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    assert "CLUSTERFORMER" not in cfg.MODEL
    backbone_keys = {NEW + k for k in cfg.MODEL.CLUSTERFORMER_BACKBONE}
    assert set(RENAMED_KEYS.values()) == backbone_keys
    assert all(old.startswith(OLD) for old in RENAMED_KEYS)
    assert RENAMED_KEYS[OLD + "ITERATIONS"] == NEW + "CLUSTERING_ITERATIONS"
    assert RENAMED_KEYS[OLD + "CENTERS_PER_WINDOW"] == NEW + "CENTRES_PER_WINDOW"
    # One key name for T, in the backbone and in the decoder.
    assert "CLUSTERING_ITERATIONS" in cfg.MODEL.CLUSTER_DECODER


def test_old_keys_in_a_config_file_give_the_same_config_with_a_warning(tmp_path, caplog):
    new = load_config(_leaf(tmp_path, "new.yaml", NEW_KEYS_YAML))
    with caplog.at_level(logging.WARNING, logger="clusterformer"):
        old = load_config(_leaf(tmp_path, "old.yaml", OLD_KEYS_YAML))
    assert old == new
    assert old.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 2
    assert old.MODEL.CLUSTERFORMER_BACKBONE.CENTRES_PER_WINDOW == 1
    (message,) = _renamed_warnings(caplog)
    for old_key, new_key in (("ITERATIONS", "CLUSTERING_ITERATIONS"), ("DEPTHS", "DEPTHS")):
        assert f"{OLD}{old_key} -> {NEW}{new_key}" in message
    assert "old.yaml" in message and "docs/migration.md" in message


def test_old_keys_in_a_base_file_are_read_too(tmp_path, caplog):
    (tmp_path / "old_base.yaml").write_text(f"_BASE_: {CLS_CONFIG}\n{OLD_KEYS_YAML}")
    (tmp_path / "leaf.yaml").write_text("_BASE_: old_base.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with caplog.at_level(logging.WARNING, logger="clusterformer"):
        cfg = load_config(str(tmp_path / "leaf.yaml"))
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 2 and cfg.SOLVER.MAX_ITER == 3
    (message,) = _renamed_warnings(caplog)
    assert "old_base.yaml" in message


def test_a_saved_run_config_written_by_older_code_loads(tmp_path, caplog):
    """Detectron2 saves every key in OUTPUT_DIR/config.yaml; one saved before the rename reads as
    the same file saved after it (Detectron2's dump / load round trip is not exact by itself)."""
    current = load_config(CLS_CONFIG, [NEW + "CLUSTERING_ITERATIONS", "2"]).dump()
    older = current.replace("CLUSTERFORMER_BACKBONE:", "CLUSTERFORMER:")
    older = older.replace("CLUSTERING_ITERATIONS: 2", "ITERATIONS: 2")
    older = older.replace("CENTRES_PER_WINDOW:", "CENTERS_PER_WINDOW:")
    (tmp_path / "current").mkdir()
    (tmp_path / "current" / "config.yaml").write_text(current)
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "config.yaml").write_text(older)
    with caplog.at_level(logging.WARNING, logger="clusterformer"):
        cfg = load_config(str(tmp_path / "older" / "config.yaml"))
    assert cfg == load_config(str(tmp_path / "current" / "config.yaml"))
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 2
    (message,) = _renamed_warnings(caplog)
    assert f"{OLD}CENTERS_PER_WINDOW -> {NEW}CENTRES_PER_WINDOW" in message


def test_old_keys_on_the_command_line_give_the_same_config_with_a_warning(caplog):
    new = load_config(CLS_CONFIG, [NEW + "CLUSTERING_ITERATIONS", "1", NEW + "DEPTHS", "[1,1,1,1]"])
    with caplog.at_level(logging.WARNING, logger="clusterformer"):
        old = load_config(CLS_CONFIG, [OLD + "ITERATIONS", "1", OLD + "DEPTHS", "[1,1,1,1]"])
    assert old == new
    (message,) = _renamed_warnings(caplog)
    assert f"{OLD}ITERATIONS -> {NEW}CLUSTERING_ITERATIONS" in message
    assert "command line" in message and "docs/migration.md" in message


def test_an_old_key_in_a_file_is_overridden_by_the_new_key_on_the_command_line(tmp_path):
    cfg = load_config(
        _leaf(tmp_path, "old.yaml", OLD_KEYS_YAML), [NEW + "CLUSTERING_ITERATIONS", "3"]
    )
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 3


def test_both_names_in_a_config_file_are_an_error_naming_both(tmp_path):
    both = f"{OLD_KEYS_YAML}  CLUSTERFORMER_BACKBONE:\n    CLUSTERING_ITERATIONS: 3\n"
    with pytest.raises(RenamedConfigKeyError) as error:
        load_config(_leaf(tmp_path, "both.yaml", both))
    assert f"{OLD}ITERATIONS " in str(error.value)
    assert f"{NEW}CLUSTERING_ITERATIONS" in str(error.value) and "both.yaml" in str(error.value)


def test_between_files_of_a_base_chain_the_more_derived_name_wins(tmp_path):
    """As _BASE_ overriding: an old-style file on a current base (the repository's configs) and a
    current file on an old-style base."""
    (tmp_path / "old_base.yaml").write_text(f"_BASE_: {CLS_CONFIG}\n{OLD_KEYS_YAML}")
    (tmp_path / "leaf.yaml").write_text(
        "_BASE_: old_base.yaml\nMODEL:\n  CLUSTERFORMER_BACKBONE:\n    CLUSTERING_ITERATIONS: 3\n"
    )
    cfg = load_config(str(tmp_path / "leaf.yaml"))
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS == 3
    assert cfg.MODEL.CLUSTERFORMER_BACKBONE.CENTRES_PER_WINDOW == 1  # from the old-style base


def test_both_names_on_the_command_line_are_an_error_naming_both():
    opts = [OLD + "ITERATIONS", "1", NEW + "CLUSTERING_ITERATIONS", "2"]
    with pytest.raises(RenamedConfigKeyError) as error:
        load_config(CLS_CONFIG, opts)
    message = str(error.value)
    assert f"{OLD}ITERATIONS" in message and f"{NEW}CLUSTERING_ITERATIONS" in message
    assert "command line" in message


def test_classifier_builds_without_rewriting_its_config():
    cfg = load_config(CLS_CONFIG, ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.freeze()
    before = cfg.dump()
    model = build_model(cfg)
    assert cfg.dump() == before
    # "last_stage" pooling reads res5 only, whatever OUT_FEATURES says (DDP: no unused outputs).
    assert cfg.MODEL.CLASSIFIER.POOLING == "last_stage"
    assert set(model.backbone.output_shape()) == {"res5"}


@pytest.mark.parametrize(
    "config, opts, message",
    [
        (DETECTION_CONFIG, ["MODEL.CLUSTER_DECODER.TEST.INSTANCE_ON", "True"], "need masks"),
        (DETECTION_CONFIG, ["MODEL.CLUSTER_DECODER.BOX_ON", "False"], "both False"),
        (DETECTION_CONFIG, ["MODEL.CLUSTER_DECODER.CLASS_LOSS", "focal"], "CLASS_LOSS"),
        (
            PANOPTIC_CONFIG,
            ["MODEL.CLUSTER_DECODER.TEST.DETECTION_ON", "True"],
            "DETECTION_ON=True needs BOX_ON",
        ),
        (PANOPTIC_CONFIG, ["MODEL.CLUSTER_DECODER.CLASS_LOSS", "sigmoid_focal"], "no 'no object'"),
    ],
)
def test_task_switches_are_validated_once_per_build(monkeypatch, config, opts, message):
    calls = []
    validate = builders.validate_config

    def counting(cfg):
        calls.append(cfg)
        return validate(cfg)

    monkeypatch.setattr(clusterformer_model, "validate_config", counting)
    monkeypatch.setattr(builders, "validate_config", counting)
    cfg = load_config(config, ["MODEL.DEVICE", "cpu", "MODEL.CLUSTER_DECODER.DEC_LAYERS", "3"])
    build_model(cfg)
    assert len(calls) == 1
    calls.clear()
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)
    assert len(calls) == 1
