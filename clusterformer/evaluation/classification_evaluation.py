"""Top-1 / top-5 accuracy of an image classifier, safe under distributed inference."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List

import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Accuracy of ``outputs[i]["class_scores"]`` (``(K,)`` scores) against ``inputs[i]["label"]``.

    Each process keeps the top-5 classes of its images; ``evaluate()`` gathers them on the main
    process, which de-duplicates by ``image_id`` (a distributed sampler may repeat images) and
    returns ``{"classification": {"top1": %, "top5": %, "num_images": n}}`` (other ranks: ``{}``).
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, topk: int = 5):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.topk = topk
        self.class_names = MetadataCatalog.get(dataset_name).get("classes", None)
        self._predictions: List[Dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            if "label" not in inp:
                raise KeyError(
                    f"ClassificationEvaluator({self.dataset_name}): input {inp.get('file_name')} "
                    "has no 'label'; is the data set a classification one?"
                )
            scores = out["class_scores"]
            if scores.dim() != 1:
                raise ValueError(
                    f"ClassificationEvaluator: class_scores must be (K,), got {tuple(scores.shape)}"
                )
            k = min(self.topk, scores.numel())
            self._predictions.append(
                {
                    "image_id": inp.get("image_id", inp.get("file_name")),
                    "label": int(inp["label"]),
                    "topk": scores.topk(k).indices.tolist(),
                }
            )

    def evaluate(self) -> OrderedDict[str, Dict[str, float]]:
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return OrderedDict()
        unique = {p["image_id"]: p for p in itertools.chain(*all_predictions)}
        if not unique:
            logger.warning("ClassificationEvaluator(%s): no predictions", self.dataset_name)
            return OrderedDict()
        labels = torch.tensor([p["label"] for p in unique.values()])
        topk = [p["topk"] for p in unique.values()]
        top1 = sum(t[0] == y for t, y in zip(topk, labels.tolist()))
        top5 = sum(y in t[: self.topk] for t, y in zip(topk, labels.tolist()))
        n = len(unique)
        result = {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "num_images": n}
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            path = os.path.join(self.output_dir, "classification_predictions.json")
            with PathManager.open(path, "w") as f:
                json.dump(list(unique.values()), f)
        logger.info("Classification on %s: %s", self.dataset_name, result)
        return OrderedDict({"classification": result})
