"""Rendering of the "shapes" scenes: textured stuff regions with occluding things on top.

Everything is computed with numpy from one ``numpy.random.Generator`` per image, on the pixel
centres ``(x + 0.5, y + 0.5)``, without anti-aliasing: the image, its stuff layout and its
instance map then agree pixel for pixel. No OpenCV drawing (its rasterisation has changed between
releases): the same seed gave byte-identical data sets with numpy 1.26 / Pillow 12 and numpy 2.4 /
Pillow 13.
"""

import colorsys
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from .shapes_spec import STUFF_CATEGORIES, THING_CATEGORIES

THING_KINDS = tuple(c["name"] for c in THING_CATEGORIES)
STUFF_KINDS = tuple(c["name"] for c in STUFF_CATEGORIES)

# Probability that a new thing is placed inside a bigger earlier one (it then often leaves a
# hole in that one's visible mask, the case COCO stores as RLE).
_NESTED_PROBABILITY = 0.25


@dataclass(frozen=True)
class ThingPlacement:
    """One thing: ``kind`` indexes :data:`THING_KINDS`; centre and radius in pixels."""

    kind: int
    center_x: float
    center_y: float
    radius: float
    rotation: float


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        stuff: (H, W) int64, index into :data:`STUFF_KINDS` of the background at every pixel.
        instances: (H, W) int64, index into ``things`` of the thing visible at a pixel, -1 where
            the background shows.
        things: every drawn thing, in drawing order (later ones occlude earlier ones).
    """

    image: np.ndarray
    stuff: np.ndarray
    instances: np.ndarray
    things: List[ThingPlacement]


def _pixel_centres(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable (1, W) and (H, 1) arrays."""
    return (np.arange(width) + 0.5)[None, :], (np.arange(height) + 0.5)[:, None]


def _window(thing: ThingPlacement, extent: float, height: int, width: int) -> Tuple[slice, slice]:
    """Rows and columns of the pixels whose centre may lie within ``extent`` of the centre."""
    x0 = int(np.clip(np.floor(thing.center_x - extent), 0, width))
    x1 = int(np.clip(np.ceil(thing.center_x + extent) + 1, 0, width))
    y0 = int(np.clip(np.floor(thing.center_y - extent), 0, height))
    y1 = int(np.clip(np.ceil(thing.center_y + extent) + 1, 0, height))
    return slice(y0, y1), slice(x0, x1)


def _polygon_vertices(thing: ThingPlacement) -> np.ndarray:
    """(K, 2) vertices of a polygonal thing, in pixel coordinates."""
    name = THING_KINDS[thing.kind]
    if name == "square":
        angles = thing.rotation + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, thing.radius)
    elif name == "triangle":
        angles = thing.rotation + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, thing.radius * 1.15)
    elif name == "star":
        angles = thing.rotation + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.2, 0.55) * thing.radius
    else:
        raise ValueError(f"{name!r} is not a polygonal thing kind")
    return np.stack(
        [thing.center_x + radii * np.cos(angles), thing.center_y + radii * np.sin(angles)], axis=1
    )


def thing_mask(thing: ThingPlacement, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the pixels whose centre lies inside the thing."""
    mask = np.zeros((height, width), dtype=bool)
    rows, columns = _window(thing, 1.25 * thing.radius, height, width)
    xs = (np.arange(columns.start, columns.stop) + 0.5)[None, :]
    ys = (np.arange(rows.start, rows.stop) + 0.5)[:, None]
    if THING_KINDS[thing.kind] == "circle":
        squared_distance = (xs - thing.center_x) ** 2 + (ys - thing.center_y) ** 2
        mask[rows, columns] = squared_distance <= thing.radius**2
        return mask
    inside = np.zeros((len(ys), xs.shape[1]), dtype=bool)
    vertices = _polygon_vertices(thing)
    # Even-odd rule: count the polygon edges crossed by a ray from each pixel centre to +x.
    for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if ya == yb:
            continue
        straddles = (ya > ys) != (yb > ys)
        crossing_x = xa + (ys - ya) * (xb - xa) / (yb - ya)
        inside ^= straddles & (xs < crossing_x)
    mask[rows, columns] = inside
    return mask


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255.0


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """(H, W) bilinearly interpolated Gaussian noise on a grid of ``cell`` pixels, about N(0, 1)."""
    grid = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2))
    ys = (np.arange(height) + 0.5) / cell
    xs = (np.arange(width) + 0.5) / cell
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A vertical blue gradient with soft white clouds."""
    hue, saturation = 0.58 + rng.uniform(-0.03, 0.03), rng.uniform(0.45, 0.65)
    top = _hsv(hue, saturation, rng.uniform(0.78, 0.9))
    horizon = _hsv(hue, saturation * 0.35, rng.uniform(0.93, 0.99))
    t = ((np.arange(height) + 0.5) / height)[:, None, None]
    image = top * (1 - t) + horizon * t
    clouds = np.clip(_smooth_noise(rng, height, width, max(4.0, height / 5)) - 0.4, 0, 1)
    image = image + (np.array([246.0, 246.0, 250.0]) - image) * (0.8 * clouds)[..., None]
    return image + rng.normal(0.0, 2.5, (height, width, 1))


def _grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Green with vertical blade streaks and darker patches."""
    base = _hsv(0.27 + rng.uniform(-0.04, 0.04), rng.uniform(0.5, 0.75), rng.uniform(0.45, 0.62))
    blades = rng.standard_normal((height // 4 + 2, width))
    # Interpolate along y only: noise that varies fast across x and slowly along y looks like
    # blades of grass.
    ys = (np.arange(height) + 0.5) / 4
    y0 = np.floor(ys).astype(int)
    fy = (ys - y0)[:, None]
    blades = blades[y0] * (1 - fy) + blades[y0 + 1] * fy
    patches = _smooth_noise(rng, height, width, max(4.0, height / 6))
    shade = 1 + 0.22 * blades + 0.12 * patches
    return base * shade[..., None] + rng.normal(0.0, 5.0, (height, width, 1))


def _wall(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Running-bond brickwork: bricks of varying red-brown, light mortar joints."""
    brick_height = int(rng.integers(7, 11))
    brick_width = int(round(brick_height * rng.uniform(1.8, 2.6)))
    offset_x, offset_y = int(rng.integers(0, brick_width)), int(rng.integers(0, brick_height))
    ys, xs = np.ogrid[0:height, 0:width]
    row = (ys + offset_y) // brick_height
    shifted_x = xs + offset_x + (row % 2) * (brick_width // 2)
    column = shifted_x // brick_width
    base = _hsv(0.03 + rng.uniform(-0.02, 0.02), rng.uniform(0.5, 0.7), rng.uniform(0.5, 0.68))
    brick_shade = rng.normal(0.0, 0.1, (int(row.max()) + 1, int(column.max()) + 1))
    image = base * (1 + brick_shade[row, column])[..., None]
    mortar = ((ys + offset_y) % brick_height == 0) | (shifted_x % brick_width == 0)
    image[mortar] = np.array([192.0, 186.0, 176.0])
    return image + rng.normal(0.0, 5.0, (height, width, 1))


_STUFF_TEXTURES: Dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky": _sky,
    "grass": _grass,
    "wall": _wall,
}


def stuff_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) int64 stuff indices: the image cut into regions by 1-3 wavy curves.

    The first curve is nearly horizontal (a horizon); each further one has any orientation.
    Every region (a side of each curve) gets a random stuff kind, different kinds where possible.
    """
    xs, ys = _pixel_centres(height, width)
    xs, ys = xs - width / 2, ys - height / 2
    size = min(height, width)
    num_curves = int(rng.integers(1, 4))
    region = np.zeros((height, width), dtype=np.int64)
    for curve in range(num_curves):
        angle = rng.uniform(-0.3, 0.3) if curve == 0 else rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        across = -xs * np.sin(angle) + ys * np.cos(angle)
        frequency = rng.uniform(0.6, 2.4) * 2 * np.pi / max(height, width)
        boundary = (
            rng.uniform(-0.3, 0.3) * size
            + rng.uniform(0.03, 0.14) * size * np.sin(frequency * along + rng.uniform(0, 2 * np.pi))
            + rng.uniform(0.0, 0.05) * size * np.sin(2.7 * frequency * along + rng.uniform(0, 7))
        )
        region |= (across > boundary).astype(np.int64) << curve
    kinds = rng.integers(0, len(STUFF_KINDS), size=2**num_curves)
    if np.all(kinds == kinds[0]):
        kinds[-1] = (kinds[0] + rng.integers(1, len(STUFF_KINDS))) % len(STUFF_KINDS)
    return kinds[region]


def render_stuff(rng: np.random.Generator, layout: np.ndarray) -> np.ndarray:
    """(H, W, 3) float image of the textures of the stuff layout."""
    height, width = layout.shape
    image = np.zeros((height, width, 3))
    for index, name in enumerate(STUFF_KINDS):
        region = layout == index
        if region.any():
            image[region] = _STUFF_TEXTURES[name](rng, height, width)[region]
    return image


def paint_thing(
    rng: np.random.Generator, image: np.ndarray, thing: ThingPlacement, mask: np.ndarray
) -> None:
    """Paint a thing in place: a random saturated colour, a soft light gradient, noise."""
    color = _hsv(rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    light = rng.uniform(0, 2 * np.pi)
    ys, xs = np.nonzero(mask)
    along_light = (xs + 0.5 - thing.center_x) * np.cos(light) + (
        ys + 0.5 - thing.center_y
    ) * np.sin(light)
    shade = 1 + 0.15 * np.clip(along_light / max(thing.radius, 1.0), -1.5, 1.5)
    noise = rng.normal(0.0, 4.0, (len(ys), 1))
    image[ys, xs] = color * shade[:, None] + noise


def _random_placement(
    rng: np.random.Generator, height: int, width: int, things: Sequence[ThingPlacement]
) -> ThingPlacement:
    size = min(height, width)
    rotation = rng.uniform(0, 2 * np.pi)
    kind = int(rng.integers(0, len(THING_KINDS)))
    hosts = [t for t in things if t.radius >= 0.12 * size]
    if hosts and rng.uniform() < _NESTED_PROBABILITY:
        host = hosts[int(rng.integers(0, len(hosts)))]
        radius = host.radius * rng.uniform(0.25, 0.42)
        offset = host.radius * rng.uniform(0, 0.2)
        direction = rng.uniform(0, 2 * np.pi)
        return ThingPlacement(
            kind,
            host.center_x + offset * math.cos(direction),
            host.center_y + offset * math.sin(direction),
            radius,
            rotation,
        )
    radius = rng.uniform(0.06, 0.22) * size
    center_x = rng.uniform(0.05, 0.95) * width
    center_y = rng.uniform(0.05, 0.95) * height
    return ThingPlacement(kind, center_x, center_y, radius, rotation)


def render_scene(
    rng: np.random.Generator, height: int, width: int, min_things: int, max_things: int
) -> Scene:
    """Stuff layout plus ``min_things..max_things`` things drawn in order (later on top)."""
    layout = stuff_layout(rng, height, width)
    image = render_stuff(rng, layout)
    instances = np.full((height, width), -1, dtype=np.int64)
    things: List[ThingPlacement] = []
    for index in range(int(rng.integers(min_things, max_things + 1))):
        thing = _random_placement(rng, height, width, things)
        mask = thing_mask(thing, height, width)
        paint_thing(rng, image, thing, mask)
        instances[mask] = index
        things.append(thing)
    return Scene(_to_uint8(image), layout, instances, things)


def render_classification_image(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """(size, size, 3) uint8: one large thing of ``kind`` near the centre on stuff background.

    A third of the images also show one or two small things of any kind behind it.
    """
    image = render_stuff(rng, stuff_layout(rng, size, size))
    if rng.uniform() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            distractor = ThingPlacement(
                int(rng.integers(0, len(THING_KINDS))),
                rng.uniform(0.1, 0.9) * size,
                rng.uniform(0.1, 0.9) * size,
                rng.uniform(0.08, 0.13) * size,
                rng.uniform(0, 2 * np.pi),
            )
            paint_thing(rng, image, distractor, thing_mask(distractor, size, size))
    dominant = ThingPlacement(
        kind,
        size * (0.5 + rng.uniform(-0.1, 0.1)),
        size * (0.5 + rng.uniform(-0.1, 0.1)),
        rng.uniform(0.26, 0.38) * size,
        rng.uniform(0, 2 * np.pi),
    )
    paint_thing(rng, image, dominant, thing_mask(dominant, size, size))
    return _to_uint8(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
