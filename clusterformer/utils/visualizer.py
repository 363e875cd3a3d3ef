"""Drawing ClusterFormer predictions with Detectron2's ``Visualizer`` / ``VideoVisualizer``.

:class:`PredictionVisualizer` draws the output a task needs (panoptic segments, instance masks,
detection boxes, the semantic map, or the top-5 classes) with the data set's metadata;
:func:`render_cluster_maps` turns a predictor's :class:`~clusterformer.d2.predictor.ClusterMaps`
into one picture per backbone stage and one for the decoder.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..d2.predictor import TASK_OUTPUT_KEYS, TASKS, ClusterMaps
from .cluster_visualization import render_cluster_overlay

TOP_K_CLASSES = 5


def class_names(metadata: Any, num_classes: Optional[int] = None) -> List[str]:
    """The names of the model's contiguous class ids: ``stuff_classes`` (all classes, as
    Mask2Former's panoptic/semantic metadata), else ``thing_classes``, else ``classes`` (the
    classification folders); numbers where the metadata has none (or too few)."""
    for key in ("stuff_classes", "thing_classes", "classes"):
        names = list(metadata.get(key, None) or [])
        if names and (num_classes is None or len(names) >= num_classes):
            return names
    return [str(i) for i in range(num_classes or 0)]


def boxes_only(instances: Instances) -> Instances:
    """A copy of ``instances`` without masks (what a detector returns)."""
    out = Instances(instances.image_size)
    for field in ("pred_boxes", "scores", "pred_classes"):
        if instances.has(field):
            out.set(field, instances.get(field))
    return out


class PredictionVisualizer:
    """Draw one task's predictions on RGB images.

    Args:
        metadata: the data set's metadata (class names and colours).
        task: one of :data:`~clusterformer.d2.predictor.TASKS`.
        video: use ``VideoVisualizer`` (colours of instances stay stable from frame to frame).
        instance_mode: Detectron2's ``ColorMode`` for instances.
    """

    def __init__(
        self,
        metadata: Any,
        task: str,
        *,
        video: bool = False,
        instance_mode: ColorMode = ColorMode.IMAGE,
    ):
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}")
        self.metadata = metadata
        self.task = task
        self.instance_mode = instance_mode
        self.video_visualizer = VideoVisualizer(metadata, instance_mode) if video else None

    def draw(self, image_rgb: np.ndarray, outputs: Dict[str, Any]) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image + the model's outputs for it -> ``(H, W, 3)`` uint8 RGB."""
        key = TASK_OUTPUT_KEYS[self.task]
        if key not in outputs:
            raise KeyError(
                f"Task {self.task!r} draws the model output {key!r}, but the model returned only "
                f"{sorted(outputs)}; enable it in the config (MODEL.CLUSTER_DECODER.TEST.*_ON)"
            )
        prediction = outputs[key]
        video = self.video_visualizer
        visualizer = Visualizer(image_rgb, self.metadata, instance_mode=self.instance_mode)
        if self.task == "panoptic":
            panoptic_seg, segments_info = prediction
            panoptic_seg = panoptic_seg.to("cpu")
            if video is not None:
                vis = video.draw_panoptic_seg_predictions(image_rgb, panoptic_seg, segments_info)
            else:
                vis = visualizer.draw_panoptic_seg(panoptic_seg, segments_info)
        elif self.task in ("instance", "detection"):
            instances = prediction.to("cpu")
            if self.task == "detection":
                instances = boxes_only(instances)
            if video is not None:
                vis = video.draw_instance_predictions(image_rgb, instances)
            else:
                vis = visualizer.draw_instance_predictions(instances)
        elif self.task == "semantic":
            labels = prediction.argmax(dim=0).to("cpu")
            if video is not None:
                vis = video.draw_sem_seg(image_rgb, labels)
            else:
                vis = visualizer.draw_sem_seg(labels)
        else:
            vis = self._draw_top_classes(visualizer, prediction)
        return vis.get_image()

    def _draw_top_classes(self, visualizer: Visualizer, class_scores: torch.Tensor):
        """Write the ``TOP_K_CLASSES`` most likely classes and their probabilities, top left."""
        scores = class_scores.detach().float().cpu()
        names = class_names(self.metadata, scores.shape[0])
        top = torch.topk(scores, min(TOP_K_CLASSES, scores.shape[0]))
        height, width = visualizer.output.height, visualizer.output.width
        # Detectron2's default label size for this image.
        font_size = max(np.sqrt(height * width) // 90, 10)
        line_height = font_size * 1.6
        for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            visualizer.draw_text(
                f"{rank + 1}. {names[index]} {100 * score:.1f}%",
                (font_size * 0.5, font_size * 0.5 + rank * line_height),
                font_size=font_size,
                color="white",
                horizontal_alignment="left",
            )
        return visualizer.output


def decoder_cluster_labels(
    maps: ClusterMaps, queries: Sequence[int], metadata: Any = None
) -> Dict[int, str]:
    """``{query: "q<index> <class> <probability>[ -> <final class>]"}`` for the decoder's clusters:
    the class the query predicted when the last E-step ran (the previous layer's prediction) and,
    when it differs, the query's final class. Without the E-step classes, the final ones."""
    names = class_names(metadata, maps.num_classes) if metadata is not None else []

    def name_of(category: int) -> str:
        if category == maps.num_classes:
            return "no object"
        return names[category] if category < len(names) else str(category)

    labels = {}
    for query in queries:
        final = int(maps.query_classes[query])
        if maps.estep_query_classes is None:
            labels[query] = f"q{query} {name_of(final)} {maps.query_scores[query]:.2f}"
            continue
        at_estep = int(maps.estep_query_classes[query])
        label = f"q{query} {name_of(at_estep)} {maps.estep_query_scores[query]:.2f}"
        if final != at_estep:
            label += f" -> {name_of(final)}"
        labels[query] = label
    return labels


def render_cluster_maps(
    image_rgb: np.ndarray,
    maps: ClusterMaps,
    stages: Sequence[str],
    *,
    head: int = 0,
    metadata: Any = None,
    label_queries: bool = True,
) -> Dict[str, np.ndarray]:
    """One RGB picture per requested backbone stage (``{stage: image}``, head ``head``) and, when
    the model has a clustering decoder, ``"decoder"`` (pixels coloured by the query they are
    assigned to). All drawn over the original image.

    Decoder clusters are labelled ``q<index> <class> <probability>`` with the class the query
    predicted when the last E-step ran (the previous layer's prediction), followed by
    ``-> <final class>`` when its final prediction differs.
    """
    geometry = maps.geometry
    if tuple(image_rgb.shape[:2]) != geometry.original_hw:
        raise ValueError(
            f"image {image_rgb.shape[:2]} is not the image the maps were computed for "
            f"{geometry.original_hw}"
        )
    pictures: Dict[str, np.ndarray] = {}
    for stage in stages:
        if stage not in maps.backbone:
            raise KeyError(
                f"No cluster map for stage {stage!r}; the backbone recorded {sorted(maps.backbone)}"
            )
        ids = maps.backbone[stage]
        if not 0 <= head < ids.shape[0]:
            raise ValueError(f"Stage {stage} has {ids.shape[0]} heads; head {head} does not exist")
        cluster_ids = geometry.input_map_to_original(ids[head])
        windows = geometry.input_map_to_original(maps.backbone_windows[stage][head])
        count = len(np.unique(cluster_ids[cluster_ids >= 0]))
        pictures[stage] = render_cluster_overlay(
            image_rgb,
            cluster_ids,
            windows=windows,
            title=f"{stage} (stride {maps.backbone_strides[stage]}), head {head}: {count} clusters",
        )
    if maps.decoder is not None:
        query_ids = geometry.input_map_to_original(maps.decoder)
        labels = None
        if label_queries and maps.query_classes is not None:
            queries = np.unique(query_ids[query_ids >= 0]).tolist()
            labels = decoder_cluster_labels(maps, queries, metadata)
        count = len(np.unique(query_ids[query_ids >= 0]))
        pictures["decoder"] = render_cluster_overlay(
            image_rgb,
            query_ids,
            labels=labels,
            title=f"decoder (stride {maps.decoder_stride}): {count} query clusters",
        )
    return pictures
