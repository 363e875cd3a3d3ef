"""What importing each layer does to the process: the model core and the package itself nothing,
``clusterformer.d2`` registers this project, and only an explicit call replaces any of
Detectron2's own data set loaders (Mask2Former in the same process relies on them).

Each case runs in a fresh interpreter of this environment: the test process itself has imported
everything already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Detectron2's registries and catalogs as a snippet records them: {name: loader function} and
# the registry keys, compared by identity / equality after the import under test.
SNAPSHOT = """
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

def snapshot():
    return {
        "datasets": dict(DatasetCatalog),
        "metadata": {name: dict(MetadataCatalog.get(name).as_dict()) for name in MetadataCatalog.list()},
        "meta_archs": set(META_ARCH_REGISTRY._obj_map),
        "backbones": set(BACKBONE_REGISTRY._obj_map),
    }
"""


def run_python(script: str, tmp_path) -> str:
    """Run ``script`` in a fresh interpreter (data sets under ``tmp_path``); its stdout + stderr."""
    env = {
        **os.environ,
        "DETECTRON2_DATASETS": str(tmp_path),
        "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_package_and_model_core_import_neither_detectron2_nor_opencv(tmp_path):
    out = run_python(
        """
        import importlib, pkgutil, sys
        import clusterformer
        import clusterformer.modeling
        for module in pkgutil.walk_packages(clusterformer.modeling.__path__, "clusterformer.modeling."):
            importlib.import_module(module.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("detectron2", "cv2"))
        assert not loaded, loaded
        assert "clusterformer.d2" not in sys.modules
        print("clean")
        """,
        tmp_path,
    )
    assert "clean" in out


def test_model_core_import_changes_no_catalog_or_registry(tmp_path):
    out = run_python(
        SNAPSHOT
        + """
import importlib, pkgutil
before = snapshot()
import clusterformer
import clusterformer.modeling
for module in pkgutil.walk_packages(clusterformer.modeling.__path__, "clusterformer.modeling."):
    importlib.import_module(module.name)
import clusterformer.data, clusterformer.data.datasets
after = snapshot()
assert after["datasets"].keys() == before["datasets"].keys(), after["datasets"].keys() ^ before["datasets"].keys()
assert all(after["datasets"][n] is f for n, f in before["datasets"].items())
assert after["metadata"] == before["metadata"]
assert after["meta_archs"] == before["meta_archs"] and after["backbones"] == before["backbones"]
print("unchanged", len(before["datasets"]))
""",
        tmp_path,
    )
    assert "unchanged" in out


def test_d2_registers_ours_and_leaves_builtin_loaders_until_asked(tmp_path):
    out = run_python(
        SNAPSHOT
        + """
before = snapshot()
import clusterformer.d2
from clusterformer.d2 import register_all_datasets, use_checked_builtin_loaders
after = snapshot()

ours = {"shapes_panoptic_train", "shapes_instance_val", "shapes3k_cls_train", "shapes_dense_panoptic_train",
        "digits_train", "imagenet_val", "coco_2017_train_panoptic_with_sem_seg", "ade20k_panoptic_val"}
assert ours <= after["datasets"].keys() - before["datasets"].keys()
assert {"ClusterFormer", "ClusterFormerClassifier"} <= after["meta_archs"] - before["meta_archs"]
assert "D2ClusterFormer" in after["backbones"] - before["backbones"]

# Detectron2's own names: the same loader functions and metadata as before the import.
for name, loader in before["datasets"].items():
    assert after["datasets"][name] is loader, name
for name, metadata in before["metadata"].items():
    assert after["metadata"][name] == metadata, name
assert "stuff_colors" not in after["metadata"]["ade20k_sem_seg_val"]

register_all_datasets()  # once per process: a second call registers nothing twice
assert snapshot()["datasets"].keys() == after["datasets"].keys()

use_checked_builtin_loaders()
use_checked_builtin_loaders()  # asked twice: the same result
asked = snapshot()
for name in ("coco_2017_train", "coco_2017_val", "ade20k_sem_seg_val"):
    assert asked["datasets"][name] is not before["datasets"][name], name
assert asked["metadata"]["coco_2017_train"] == before["metadata"]["coco_2017_train"]
assert len(asked["metadata"]["ade20k_sem_seg_val"]["stuff_colors"]) == 150
assert asked["datasets"]["coco_2017_test"] is before["datasets"]["coco_2017_test"]  # no annotations
try:
    DatasetCatalog.get("coco_2017_val")
except FileNotFoundError as error:  # the checked loader names the missing file first
    assert "coco_2017_val" in str(error) and "datasets/README.md" in str(error), error

# The package's registration functions, not their modules of the same name (imported by now).
from clusterformer.data.datasets import register_ade20k_panoptic, register_ade20k_semantic
assert callable(register_ade20k_panoptic) and callable(register_ade20k_semantic)
assert register_ade20k_semantic.__module__.endswith(".register_ade20k_semantic")
print("registered")
""",
        tmp_path,
    )
    assert "registered" in out


def test_package_level_names_import_the_d2_layer(tmp_path):
    out = run_python(
        """
        import sys
        import clusterformer
        assert "clusterformer.d2" not in sys.modules
        from clusterformer import ClusterFormerPredictor, add_clusterformer_config, load_config
        import clusterformer.d2 as d2
        assert ClusterFormerPredictor is d2.ClusterFormerPredictor
        assert add_clusterformer_config is d2.add_clusterformer_config and load_config is d2.load_config
        from detectron2.data import DatasetCatalog
        assert "shapes_panoptic_train" in DatasetCatalog.list()
        try:
            clusterformer.no_such_name
        except AttributeError:
            print("attribute error")
        """,
        tmp_path,
    )
    assert "attribute error" in out


def test_names_registered_first_by_mask2former_are_kept(tmp_path):
    """Mask2Former registers the COCO panoptic-with-semantic and ADE20K panoptic names too: when
    it was imported first, its registrations stay and ours are skipped with a log line."""
    out = run_python(
        """
        import logging
        logging.basicConfig(level=logging.INFO)
        from detectron2.data import DatasetCatalog, MetadataCatalog

        def mask2former_loader():
            return []

        shared = ("coco_2017_train_panoptic_with_sem_seg", "ade20k_panoptic_val")
        for name in shared:
            DatasetCatalog.register(name, mask2former_loader)
            MetadataCatalog.get(name).set(evaluator_type="mask2former")
        import clusterformer.d2
        for name in shared:
            assert DatasetCatalog[name] is mask2former_loader, name
            assert MetadataCatalog.get(name).evaluator_type == "mask2former"
        assert "coco_2017_val_panoptic_with_sem_seg" in DatasetCatalog.list()
        print("kept")
        """,
        tmp_path,
    )
    assert "kept" in out
    assert "'coco_2017_train_panoptic_with_sem_seg' is registered already" in out
    assert "'ade20k_panoptic_val' is registered already" in out
