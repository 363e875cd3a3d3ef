"""Register a COCO-format folder with Detectron2's own API (docs/custom_datasets.md).

    my_data/
      train/  val/                                  # the images
      annotations/instances_train.json              # COCO instances: images, annotations,
      annotations/instances_val.json                #   categories (any ids, e.g. 1, 2, 3, 5)

Run by ``train_net.py --register`` and ``demo/demo.py --register`` in every process before the
config is read; registers ``my_train`` and ``my_val``. The folder is ``$MY_DATA`` (default
``my_data``, relative to where the command runs).
"""

import os

from detectron2.data.datasets import register_coco_instances

root = os.environ.get("MY_DATA", "my_data")
for split in ("train", "val"):
    register_coco_instances(
        f"my_{split}",
        {},  # class names and ids are read from the JSON's "categories"
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, split),
    )
