"""Binary masks in the encodings of the COCO formats: polygons, RLE, panoptic id colours.

Coordinates follow COCO and Detectron2: pixel ``(x, y)`` covers the square ``[x, x+1] x [y, y+1]``,
so a polygon through pixel *corners* (integer vertices) encloses whole pixels. pycocotools
rasterises a polygon by testing pixel centres, hence a polygon that follows the pixel edges of a
mask (its "crack" boundary) decodes back to exactly that mask, which a contour through pixel
centres (``cv2.findContours``) does not: that one loses half of every boundary pixel.

* :func:`mask_to_polygons` traces those boundaries, one closed loop per 4-connected component
  plus one per hole;
* :func:`encode_rle` is pycocotools' compressed RLE as COCO JSON stores it
  (``{"size": [h, w], "counts": str}``);
* :func:`coco_segmentation_to_mask` decodes a COCO ``segmentation`` (polygons or RLE) with
  pycocotools, after checks that keep broken annotations away from it (pycocotools crashes on
  some and returns uninitialised memory for others);
* :func:`mask_bbox` gives the tight XYWH box, as ``pycocotools.mask.toBbox`` does;
* :func:`id2rgb` / :func:`rgb2id` are panopticapi's segment-id colour encoding.

Needs numpy and pycocotools only (no detectron2): the shapes generator writes its annotations
with it in the detectron2-free environment.
"""

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

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


def encode_rle(mask: np.ndarray) -> Dict[str, Any]:
    """pycocotools' compressed RLE of an ``(H, W)`` mask: ``{"size": [H, W], "counts": str}``.

    ``counts`` is a ``str`` (pycocotools gives ``bytes``) so that the RLE can be written to JSON.
    """
    mask = _as_binary_mask(mask)
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")}


# pycocotools reads a truncated compressed RLE string past its end, decodes an RLE whose runs do
# not cover the mask into uninitialised memory, and loops or crashes on non-finite or huge
# polygon coordinates: these checks run before any segmentation reaches it.


def compressed_rle_counts(counts: bytes) -> List[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``).

    Raises ``ValueError`` when the string ends inside a number. pycocotools itself reads past the
    end in that case, and decodes an RLE whose runs do not cover the mask into uninitialised
    memory, which is why :func:`coco_segmentation_to_mask` checks the runs first.
    """
    runs: List[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the compressed RLE string ends inside a number")
            chunk = counts[position] - 48
            value |= (chunk & 0x1F) << (5 * shift)
            more = bool(chunk & 0x20)
            position += 1
            shift += 1
            if not more and chunk & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def check_rle_runs(runs: Sequence[Any], height: int, width: int, where: str) -> None:
    """Raise unless ``runs`` are non-negative integers covering exactly ``height * width`` pixels."""
    if any(not isinstance(r, (int, np.integer)) or r < 0 for r in runs):
        raise ValueError(f"RLE of {where} has negative or non-integer run lengths")
    if sum(int(r) for r in runs) != height * width:
        raise ValueError(
            f"RLE of {where} covers {sum(int(r) for r in runs)} pixels, but the image has "
            f"{height} x {width} = {height * width}"
        )


def check_polygon(polygon: Sequence[Any], height: int, width: int, where: str) -> None:
    """Raise unless a polygon's coordinates are finite and at most one image size outside the image.

    pycocotools' rasteriser loops or crashes the process on NaN / inf coordinates and on huge ones
    (1e8 segfaults), so they must never reach it; a polygon that far out is a broken annotation.
    """
    coordinates = np.asarray(polygon, dtype=np.float64)
    if not np.isfinite(coordinates).all():
        raise ValueError(f"Polygon of {where} has non-finite coordinates")
    xs, ys = coordinates[0::2], coordinates[1::2]
    if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
        raise ValueError(
            f"Polygon of {where} reaches x in [{xs.min():g}, {xs.max():g}], y in "
            f"[{ys.min():g}, {ys.max():g}], far outside the {width} x {height} (W x H) image"
        )


def coco_segmentation_to_mask(
    segmentation, height: int, width: int, file_name: str, annotation_index: int
) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to ``(H, W)`` bool.

    Degenerate polygons are skipped, as Detectron2's ``load_coco_json`` skips them: fewer than 3
    points (COCO has a few) or an odd number of coordinates; a polygon of zero area rasterises to
    an empty mask, which the mappers drop. Raises ``ValueError`` naming the image file and the
    annotation index for a polygon with non-finite coordinates or far outside the image (see
    :func:`check_polygon`), and for an RLE whose ``size`` is not the image's or whose runs do not
    cover it exactly (pycocotools would return uninitialised memory).
    """
    where = f"annotation #{annotation_index} of {file_name!r}"
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        for polygon in polygons:
            check_polygon(polygon, height, width, where)
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(
                f"RLE of {where} has size {segmentation.get('size')}, but the image is "
                f"{[height, width]} (H, W)"
            )
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            check_rle_runs(counts, height, width, where)
            rle = mask_util.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            encoded = counts.encode("ascii") if isinstance(counts, str) else counts
            try:
                runs = compressed_rle_counts(encoded)
            except ValueError as error:
                raise ValueError(f"RLE of {where}: {error}") from error
            check_rle_runs(runs, height, width, where)
            rle = {"size": [height, width], "counts": encoded}
        else:
            raise TypeError(f"RLE of {where} has counts of type {type(counts).__name__}")
    else:
        raise TypeError(
            f"{where} has a segmentation of type {type(segmentation).__name__}; "
            "expected a list of polygons or an RLE dict"
        )
    return mask_util.decode(rle).astype(bool)


def mask_bbox(mask: np.ndarray) -> List[int]:
    """Tight box ``[x, y, width, height]`` (pixel units, XYWH) of a non-empty mask."""
    mask = _as_binary_mask(mask)
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("mask_bbox: the mask is empty")
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


# panopticapi has id2rgb / rgb2id too, but it is not installed in the detectron2-free
# environment (panopticapi-lite pins numpy < 2), where the shapes generator writes panoptic PNGs;
# the mappers, which run with detectron2 only, use panopticapi's rgb2id. This id2rgb also rejects
# ids outside [0, 256^3), which panopticapi's wraps around silently.


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
