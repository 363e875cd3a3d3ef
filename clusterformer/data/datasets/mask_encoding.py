"""Binary masks in the encodings of the COCO formats, written with numpy only.

Coordinates follow COCO and Detectron2: pixel ``(x, y)`` covers the square ``[x, x+1] x [y, y+1]``,
so a polygon through pixel *corners* (integer vertices) encloses whole pixels. pycocotools
rasterises a polygon by testing pixel centres, hence a polygon that follows the pixel edges of a
mask (its "crack" boundary) decodes back to exactly that mask, which a contour through pixel
centres (``cv2.findContours``) does not: that one loses half of every boundary pixel.

* :func:`mask_to_polygons` traces those boundaries, one closed loop per 4-connected component
  plus one per hole;
* :func:`encode_rle` writes pycocotools' compressed RLE (``{"size": [h, w], "counts": str}``);
* :func:`mask_bbox` gives the tight XYWH box, as ``pycocotools.mask.toBbox`` does;
* :func:`id2rgb` / :func:`rgb2id` are panopticapi's segment-id colour encoding.
"""

from typing import Dict, List, Tuple, Union

import numpy as np

# The four sides of pixel (x, y), each as a directed edge between two of its corners, in
# clockwise order on screen (y points down), so the pixel lies on the right of every edge:
# (start dx, start dy, end dx, end dy), and the neighbour whose absence exposes that side.
_SIDES = (
    ((0, 0, 1, 0), (0, -1)),  # top
    ((1, 0, 1, 1), (1, 0)),  # right
    ((1, 1, 0, 1), (0, 1)),  # bottom
    ((0, 1, 0, 0), (-1, 0)),  # left
)


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def mask_boundary_loops(mask: np.ndarray) -> List[np.ndarray]:
    """Closed pixel-edge boundaries of a mask.

    Foreground is 4-connected and background 8-connected: where two foreground pixels touch only
    at a corner, the traced boundary keeps them apart (it turns around the pixel it came along).
    Then every 4-connected component gives one outer loop and one loop per hole.

    Args:
        mask: (H, W) array, non-zero = foreground.

    Returns:
        loops, each an (N, 2) int64 array of (x, y) pixel-corner vertices in order (the closing
        edge from the last vertex back to the first is implicit), with collinear vertices
        dropped. Outer loops run clockwise on screen (positive :func:`signed_area`), holes
        counter-clockwise (negative). Loops are ordered by their first pixel in raster order.
    """
    mask = _as_binary_mask(mask)
    height, width = mask.shape
    padded = np.pad(mask, 1)
    starts, ends, pixels, order = [], [], [], []
    for side_index, ((sx, sy, ex, ey), (nx, ny)) in enumerate(_SIDES):
        neighbour = padded[1 + ny : 1 + ny + height, 1 + nx : 1 + nx + width]
        ys, xs = np.nonzero(mask & ~neighbour)
        starts.append(np.stack([xs + sx, ys + sy], axis=1))
        ends.append(np.stack([xs + ex, ys + ey], axis=1))
        pixels.append(ys * width + xs)
        order.append((ys * width + xs) * 4 + side_index)
    if not any(len(p) for p in pixels):
        return []
    raster = np.argsort(np.concatenate(order), kind="stable")
    start = np.concatenate(starts)[raster]
    end = np.concatenate(ends)[raster]
    pixel = np.concatenate(pixels)[raster]

    def vertex_key(xy: np.ndarray) -> np.ndarray:
        return xy[:, 1] * (width + 1) + xy[:, 0]

    # Every corner has 0, 2 or 4 boundary edges; 4 (two leaving) only where the mask is a
    # checkerboard around it. There, continue along the same pixel: that separates diagonal
    # neighbours, which makes the foreground 4-connected.
    outgoing: Dict[int, List[int]] = {}
    for index, key in enumerate(vertex_key(start).tolist()):
        outgoing.setdefault(key, []).append(index)
    end_keys = vertex_key(end).tolist()
    pixel = pixel.tolist()

    visited = np.zeros(len(start), dtype=bool)
    loops = []
    for first in range(len(start)):
        if visited[first]:
            continue
        chain = []
        edge = first
        while not visited[edge]:
            visited[edge] = True
            chain.append(edge)
            candidates = outgoing[end_keys[edge]]
            if len(candidates) == 1:
                edge = candidates[0]
            else:
                edge = candidates[0] if pixel[candidates[0]] == pixel[edge] else candidates[1]
        vertices = start[chain]
        direction = np.roll(vertices, -1, axis=0) - vertices
        turning = np.any(direction != np.roll(direction, 1, axis=0), axis=1)
        loops.append(vertices[turning])
    return loops


def signed_area(loop: np.ndarray) -> int:
    """Shoelace area of a closed (N, 2) integer loop; positive when clockwise on screen."""
    x, y = loop[:, 0], loop[:, 1]
    return int(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) // 2


def mask_to_polygons(mask: np.ndarray) -> Tuple[List[List[float]], bool]:
    """COCO polygons of a mask: one ``[x0, y0, x1, y1, ...]`` list per 4-connected component.

    Args:
        mask: (H, W) array, non-zero = foreground.

    Returns:
        ``(polygons, has_holes)``. The polygons are the outer boundaries only; when
        ``has_holes`` is True they cover the holes too, and the mask needs RLE to be exact.
    """
    loops = mask_boundary_loops(mask)
    outer = [loop for loop in loops if signed_area(loop) > 0]
    has_holes = len(outer) != len(loops)
    polygons = [loop.astype(np.float64).reshape(-1).tolist() for loop in outer]
    return polygons, has_holes


def encode_rle(mask: np.ndarray) -> Dict[str, Union[List[int], str]]:
    """pycocotools' compressed RLE of a mask: ``{"size": [H, W], "counts": str}``.

    Runs are counted in column-major order starting with a (possibly empty) run of zeros; the
    string is pycocotools' LEB128-like code (5 bits a character, offset 48, each count after
    the third stored as the difference to the count two before).
    """
    mask = _as_binary_mask(mask)
    height, width = mask.shape
    flat = mask.reshape(-1, order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end in a run of ones
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            characters.append(chr(chunk + 48))
    return {"size": [height, width], "counts": "".join(characters)}


def mask_bbox(mask: np.ndarray) -> List[int]:
    """Tight box ``[x, y, width, height]`` (pixel units, XYWH) of a non-empty mask."""
    mask = _as_binary_mask(mask)
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("mask_bbox: the mask is empty")
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def id2rgb(segment_ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours with id = R + 256 G + 256^2 B."""
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    if segment_ids.min(initial=0) < 0 or segment_ids.max(initial=0) >= 256**3:
        raise ValueError("panoptic segment ids must lie in [0, 256^3)")
    return np.stack([(segment_ids >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(
        np.uint8
    )


def rgb2id(color: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (...) int64 segment ids, the inverse of :func:`id2rgb`."""
    color = np.asarray(color, dtype=np.int64)
    if color.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) RGB colours, got shape {color.shape}")
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]
