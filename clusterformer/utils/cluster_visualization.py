"""Drawing cluster assignments over an image (numpy + OpenCV; no detectron2 needed).

The paper's claim to explainability is that every pixel belongs to a cluster, at every backbone
stage and in the decoder. :func:`render_cluster_overlay` shows one such assignment: each cluster
in its own colour blended over the image, the centroid of each cluster's pixels as a dot, the
clustering windows as light lines and optional text labels (the decoder's query classes).
"""

from __future__ import annotations

import colorsys
from typing import Dict, Optional, Tuple

import numpy as np

from .opencv import import_cv2

cv2 = import_cv2()

# Golden-ratio hue steps give neighbouring ids well separated hues.
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def cluster_colors(ids: np.ndarray) -> np.ndarray:
    """Deterministic, well separated RGB colours for integer ids: ``(...,)`` -> ``(..., 3)`` uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    unique, inverse = np.unique(ids, return_inverse=True)
    table = np.array([_color_of(int(i)) for i in unique], dtype=np.uint8).reshape(-1, 3)
    return table[inverse.reshape(ids.shape)]


def _color_of(index: int) -> Tuple[int, int, int]:
    hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = (0.95, 0.65, 0.8)[index % 3]
    value = (0.95, 0.75)[(index // 3) % 2]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` integer map -> ``(H, W)`` bool, True on pixels whose right or lower neighbour
    has another label (one-pixel lines between regions)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def cluster_centroids(cluster_ids: np.ndarray) -> Dict[int, Tuple[float, float]]:
    """``(H, W)`` cluster ids (-1 = none) -> ``{id: (x, y)}``, the mean position of its pixels."""
    valid = cluster_ids >= 0
    if not valid.any():
        return {}
    ys, xs = np.nonzero(valid)
    ids = cluster_ids[valid]
    unique, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse)
    mean_x = np.bincount(inverse, weights=xs) / counts
    mean_y = np.bincount(inverse, weights=ys) / counts
    return {int(i): (float(x), float(y)) for i, x, y in zip(unique, mean_x, mean_y)}


def render_cluster_overlay(
    image_rgb: np.ndarray,
    cluster_ids: np.ndarray,
    *,
    windows: Optional[np.ndarray] = None,
    labels: Optional[Dict[int, str]] = None,
    title: Optional[str] = None,
    alpha: float = 0.55,
    draw_centroids: bool = True,
) -> np.ndarray:
    """Draw a cluster assignment over an image.

    Args:
        image_rgb: ``(H, W, 3)`` uint8.
        cluster_ids: ``(H, W)`` integer cluster of each pixel; -1 = none (such pixels are dimmed).
        windows: optional ``(H, W)`` integer window of each pixel; window borders are lightened.
        labels: optional ``{cluster id: text}`` written at the cluster's centroid.
        title: optional caption in the top-left corner.
        alpha: opacity of the cluster colours.
        draw_centroids: mark the centroid of each cluster's pixels with a dot of its colour.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image_rgb must be (H, W, 3), got {image_rgb.shape}")
    if cluster_ids.shape != image_rgb.shape[:2]:
        raise ValueError(
            f"cluster_ids {cluster_ids.shape} must have the image's size {image_rgb.shape[:2]}"
        )
    if windows is not None and windows.shape != cluster_ids.shape:
        raise ValueError(f"windows {windows.shape} must have the shape of cluster_ids")
    image = image_rgb.astype(np.float32)
    assigned = cluster_ids >= 0
    colors = cluster_colors(np.where(assigned, cluster_ids, 0)).astype(np.float32)
    out = np.where(assigned[..., None], (1 - alpha) * image + alpha * colors, 0.4 * image)
    if windows is not None:
        border = boundaries(windows)
        out[border] = 0.45 * out[border] + 0.55 * 255.0
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)

    H, W = cluster_ids.shape
    radius = max(2, int(round(min(H, W) / 160)))
    font_scale = max(0.35, min(H, W) / 900)
    thickness = max(1, int(round(font_scale * 2)))
    centroids = cluster_centroids(cluster_ids)
    if draw_centroids:
        for cluster, (x, y) in centroids.items():
            center = (int(round(x)), int(round(y)))
            color = tuple(int(c) for c in _color_of(cluster))
            cv2.circle(out, center, radius + 1, (0, 0, 0), -1, lineType=cv2.LINE_AA)
            cv2.circle(out, center, radius, color, -1, lineType=cv2.LINE_AA)
    for cluster, text in (labels or {}).items():
        if cluster in centroids:
            x, y = centroids[cluster]
            (width, height), _ = cv2.getTextSize(
                text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness + 2
            )
            left = int(x) + radius + 2
            if left + width > W:  # would leave the image: write it left of the dot
                left = max(0, int(x) - radius - 2 - width)
            baseline = min(max(int(y) + radius, height), H - 2)
            _put_outlined_text(out, text, (left, baseline), font_scale, thickness)
    if title:
        _put_outlined_text(out, title, (4, 4 + int(22 * font_scale)), font_scale * 1.1, thickness)
    return out


def _put_outlined_text(
    image: np.ndarray, text: str, origin: Tuple[int, int], scale: float, thickness: int
) -> None:
    """White text with a black outline, readable on any colour (drawn in place)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
