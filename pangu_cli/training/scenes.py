"""Synthetic scene world for pangu-mini: 1–2 shapes on a coloured background, four styles, any size.

A `Scene` holds everything a caption can state (colours, shapes, sizes, positions, the relation between
two objects, the style); `render` turns it into pixels at any (width, height). Placement is stored in
relative coordinates (cx, cy in 0..1 of width and height; radius relative to min(width, height)), and
sampling keeps every object inside its third of the frame and two related objects fully apart along the
relation's axis, so a caption holds at every aspect ratio.

Speed matters more than finesse: this runs on the fly during training on two CPU cores. Shapes are
polygons rasterised by Pillow at `supersample`× and box-reduced (`Image.reduce`, much faster than
`resize(BOX)`); styles are a handful of NumPy operations restricted to each object's bounding box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

STYLES: tuple[str, ...] = ("plain", "anime", "photo", "art")

# Nameable, mutually distinct colours (sRGB). Backgrounds use the same palette; a scene never repeats one.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38),
    "orange": (245, 128, 28),
    "yellow": (248, 214, 36),
    "green": (42, 158, 64),
    "blue": (34, 82, 214),
    "purple": (126, 54, 176),
    "pink": (246, 140, 190),
    "white": (244, 244, 240),
    "black": (24, 24, 28),
    "brown": (118, 70, 34),
    "grey": (134, 134, 134),
}

SIZES: tuple[str, ...] = ("small", "big")
# Half-extent ranges relative to min(width, height). Small stays readable at 32 px (≈ 6–8 px across).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.10, 0.13), "big": (0.19, 0.24)}

POSITIONS: tuple[str, ...] = (
    "top-left", "top", "top-right",
    "left", "centre", "right",
    "bottom-left", "bottom", "bottom-right",
)

# objects[0] <relation> objects[1]
RELATIONS: tuple[str, ...] = ("above", "below", "left_of", "right_of")
INVERSE_RELATION: dict[str, str] = {
    "above": "below", "below": "above", "left_of": "right_of", "right_of": "left_of",
}

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4), "16:9": (16, 9),
    "9:16": (9, 16), "2:1": (2, 1), "1:2": (1, 2),
}

MAX_ROTATION = 12.0  # degrees of tilt jitter; small enough that a square never reads as a diamond
_CELL_JITTER = 0.07  # around the centre of a third (1/6, 1/2, 5/6): stays well inside the third
_EDGE_MARGIN = 0.03  # relative gap kept between an object and the frame border
_RELATION_GAP = 0.03  # relative gap between two related objects along the relation axis


# ----------------------------------------------------------------------------------------------- shapes
def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    angles = np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.46) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, phase=-math.pi / 2 + math.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _heart(n: int = 56) -> np.ndarray:
    t = np.arange(n) * (2 * math.pi / n)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1) / 16.0


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                     (-a, a), (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)


# Each shape: polygons in unit coordinates (y down) with True = paint, False = cut a hole.
_RAW_SHAPES: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_regular(64), True)],
    "square": [(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64), True)],
    "triangle": [(_regular(3), True)],
    "star": [(_star(), True)],
    "heart": [(_heart(), True)],
    "ring": [(_regular(64), True), (_regular(64, 0.52), False)],
    "diamond": [(np.array([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)], dtype=np.float64), True)],
    "cross": [(_cross(), True)],
    "moon": [(_regular(64), True), (_ellipse(0.58, -0.24, 0.8, 0.8, 64), False)],
    "hexagon": [(_regular(6), True)],
    "fish": [(_ellipse(0.18, 0.0, 0.78, 0.46), True),
             (np.array([(-0.45, 0.0), (-1.0, -0.46), (-1.0, 0.46)], dtype=np.float64), True),
             (_ellipse(0.56, -0.1, 0.09, 0.09, 16), False)],
}
_TILTED = ("square", "triangle", "star", "heart", "diamond", "cross", "moon", "hexagon", "fish")


def _rasterise(polys: list[tuple[np.ndarray, bool]], size: int = 256) -> np.ndarray:
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for pts, paint in polys:
        draw.polygon((pts * (size * 0.4) + size / 2).ravel().tolist(), fill=255 if paint else 0)
    return np.asarray(image, dtype=np.float64) / 255.0


def _normalise(polys: list[tuple[np.ndarray, bool]]) -> tuple[tuple[np.ndarray, bool], ...]:
    """Centre on the area centroid (so pixel centroids land where the caption says) and scale so that
    the shape tilted by up to MAX_ROTATION stays inside the unit box (so radius bounds the extent)."""
    mask = _rasterise(polys)
    ys, xs = np.nonzero(mask > 0.5)
    weights = mask[ys, xs]
    centroid = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    shift = (centroid - mask.shape[0] / 2) / (mask.shape[0] * 0.4)
    painted = np.concatenate([pts for pts, paint in polys if paint]) - shift
    extent = 0.0
    for degrees in np.linspace(-MAX_ROTATION, MAX_ROTATION, 9):
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        rotated = painted @ np.array([[c, s], [-s, c]])
        extent = max(extent, float(np.abs(rotated).max()))
    return tuple(((pts - shift) / extent, paint) for pts, paint in polys)


SHAPE_POLYGONS: dict[str, tuple[tuple[np.ndarray, bool], ...]] = {
    name: _normalise(polys) for name, polys in _RAW_SHAPES.items()
}
SHAPES: tuple[str, ...] = tuple(SHAPE_POLYGONS)


# ----------------------------------------------------------------------------------------------- scenes
def position_name(cx: float, cy: float) -> str:
    """Name of the third-of-the-frame cell holding the relative point (cx, cy)."""
    col = min(2, max(0, int(cx * 3)))
    row = min(2, max(0, int(cy * 3)))
    return POSITIONS[row * 3 + col]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str  # "small" | "big"
    position: tuple[float, float]  # (cx, cy) relative to width and height, y down
    radius: float  # half-extent relative to min(width, height)
    rotation: float = 0.0  # degrees, clockwise on screen

    @property
    def region(self) -> str:
        return position_name(*self.position)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]
    relation: str | None = None  # objects[0] <relation> objects[1]
    style: str = "plain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.background not in COLOURS:
            raise ValueError(f"unknown background colour {self.background!r}")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; expected one of {STYLES}")
        for obj in self.objects:
            if obj.shape not in SHAPE_POLYGONS or obj.colour not in COLOURS or obj.size not in SIZES:
                raise ValueError(f"unknown attribute in {obj}")
        if self.relation is not None and (self.relation not in RELATIONS or len(self.objects) != 2):
            raise ValueError("a relation needs exactly two objects and one of " + ", ".join(RELATIONS))


def style_index(style: str) -> int:
    """The numeric style id (the style control's class index)."""
    return STYLES.index(style)


def _place(rng: np.random.Generator, col: int, row: int, radius: float) -> tuple[float, float]:
    lo, hi = radius + _EDGE_MARGIN, 1.0 - radius - _EDGE_MARGIN
    cx = (col + 0.5) / 3 + rng.uniform(-_CELL_JITTER, _CELL_JITTER)
    cy = (row + 0.5) / 3 + rng.uniform(-_CELL_JITTER, _CELL_JITTER)
    return float(np.clip(cx, lo, hi)), float(np.clip(cy, lo, hi))


def _sample_object(rng: np.random.Generator, shapes, colour: str, col: int, row: int) -> SceneObject:
    size = SIZES[int(rng.integers(2))]
    radius = float(rng.uniform(*SIZE_RANGES[size]))
    shape = shapes[int(rng.integers(len(shapes)))]
    rotation = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)) if shape in _TILTED else 0.0
    return SceneObject(shape, colour, size, _place(rng, col, row, radius), radius, rotation)


def _related_cells(rng: np.random.Generator, relation: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Cells (col, row) of objects[0] and objects[1] such that the relation holds between the cells;
    half the time they share the other axis (a clean side-by-side / stacked layout)."""
    first, second = [(0, 1), (0, 2), (1, 2)][int(rng.integers(3))]
    if relation in ("below", "right_of"):
        first, second = second, first
    other = int(rng.integers(3))
    other_a, other_b = (other, other) if rng.random() < 0.5 else (other, int(rng.integers(3)))
    if relation in ("above", "below"):
        return (other_a, first), (other_b, second)
    return (first, other_a), (second, other_b)


def _separated(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """objects a and b are fully apart along the relation axis at every aspect ratio (an extent in
    relative units is at most `radius`, since radius is relative to the shorter side)."""
    axis = 1 if relation in ("above", "below") else 0
    sign = 1.0 if relation in ("above", "left_of") else -1.0
    gap = sign * (b.position[axis] - a.position[axis])
    return gap >= a.radius + b.radius + _RELATION_GAP


def sample_scene(
    rng: np.random.Generator,
    styles: tuple[str, ...] | list[str] = STYLES,
    max_objects: int = 2,
    shapes: tuple[str, ...] | list[str] = SHAPES,
    colours: tuple[str, ...] | list[str] = tuple(COLOURS),
) -> Scene:
    """A random scene: 1..max_objects (≤ 2) objects, all colours distinct from each other and from the
    background; two objects always come with a relation that the layout satisfies."""
    if not 1 <= max_objects <= 2:
        raise ValueError("max_objects must be 1 or 2")
    count = int(rng.integers(1, max_objects + 1))
    if len(colours) < count + 1:
        raise ValueError("need at least one more colour than objects")
    style = styles[int(rng.integers(len(styles)))]
    picked = rng.permutation(len(colours))[: count + 1]
    background, *object_colours = (colours[i] for i in picked)
    if count == 1:
        cell = int(rng.integers(9))
        obj = _sample_object(rng, shapes, object_colours[0], cell % 3, cell // 3)
        return Scene(background, (obj,), None, style)
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    while True:  # rejection: about 1 in 4 draws fails (two big objects in adjacent thirds)
        cell_a, cell_b = _related_cells(rng, relation)
        a = _sample_object(rng, shapes, object_colours[0], *cell_a)
        b = _sample_object(rng, shapes, object_colours[1], *cell_b)
        if _separated(a, b, relation):
            return Scene(background, (a, b), relation, style)


def attributes(scene: Scene) -> dict:
    """Ground-truth labels of a scene, for evaluators: plain Python types only."""
    return {
        "background": scene.background,
        "style": scene.style,
        "style_index": style_index(scene.style),
        "relation": scene.relation,
        "objects": [
            {
                "shape": obj.shape,
                "colour": obj.colour,
                "size": obj.size,
                "position": obj.region,
                "center": (float(obj.position[0]), float(obj.position[1])),
                "radius": float(obj.radius),
                "rotation": float(obj.rotation),
            }
            for obj in scene.objects
        ],
    }


def bucket_size(ratio: str, pixels: int = 64 * 64, multiple: int = 8) -> tuple[int, int]:
    """(width, height), multiples of `multiple`, with about `pixels` pixels and the closest aspect ratio
    to `ratio` (a key of ASPECT_RATIOS or "W:H")."""
    rw, rh = ASPECT_RATIOS.get(ratio) or tuple(int(v) for v in ratio.split(":"))
    target = math.log(rw / rh)
    ideal_h = math.sqrt(pixels * rh / rw)
    best: tuple[float, int, int] | None = None
    for h in range(multiple, int(ideal_h * 2) + 2 * multiple, multiple):
        for w in (math.floor(h * rw / rh / multiple) * multiple, math.ceil(h * rw / rh / multiple) * multiple):
            if w < multiple:
                continue
            cost = 4 * abs(math.log(w / h) - target) + abs(math.log(w * h / pixels))
            if best is None or cost < best[0]:
                best = (cost, w, h)
    assert best is not None
    return best[1], best[2]


# -------------------------------------------------------------------------------------------- rendering
def _auto_supersample(width: int, height: int) -> int:
    # Measured (bench/scenes.py): 4× costs ~2× the time of 2× at 64 px and is still far above the
    # throughput target; above 128 px edges are small relative to the image and 2× suffices.
    longest = max(width, height)
    return 4 if longest <= 96 else 3 if longest <= 192 else 2


def _polygons(obj: SceneObject, width: int, height: int, scale: int):
    """Object polygons in supersampled Pillow coordinates (pixel k spans [k, k+1))."""
    radius = obj.radius * min(width, height) * scale
    cx, cy = obj.position[0] * width * scale, obj.position[1] * height * scale
    c, s = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
    rot = np.array([[c, s], [-s, c]]) * radius
    for pts, paint in SHAPE_POLYGONS[obj.shape]:
        xy = pts @ rot
        xy[:, 0] += cx
        xy[:, 1] += cy
        yield xy.ravel().tolist(), paint


def _render_plain(scene: Scene, width: int, height: int, scale: int) -> np.ndarray:
    bg = COLOURS[scene.background]
    image = Image.new("RGB", (width * scale, height * scale), bg)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        colour = COLOURS[obj.colour]
        for poly, paint in _polygons(obj, width, height, scale):
            draw.polygon(poly, fill=colour if paint else bg)  # holes show the flat background
    if scale > 1:
        image = image.reduce(scale)
    return np.array(image)


def object_masks(scene: Scene, width: int, height: int, supersample: int | None = None) -> np.ndarray:
    """Anti-aliased coverage of each object, float32 (N, H, W) in 0..1 (ground-truth segmentation)."""
    scale = supersample or _auto_supersample(width, height)
    masks = []
    for start in range(0, len(scene.objects), 3):  # three objects per RGB canvas (objects never overlap)
        image = Image.new("RGB", (width * scale, height * scale), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        group = scene.objects[start:start + 3]
        for channel, obj in enumerate(group):
            ink = tuple(255 if i == channel else 0 for i in range(3))
            for poly, paint in _polygons(obj, width, height, scale):
                draw.polygon(poly, fill=ink if paint else (0, 0, 0))
        if scale > 1:
            image = image.reduce(scale)
        coverage = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        masks.extend(coverage[..., channel] for channel in range(len(group)))
    if not masks:
        return np.zeros((0, height, width), np.float32)
    return np.stack(masks)


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOURS[name], np.float32) / 255.0


def _box(obj: SceneObject, width: int, height: int, pad: float) -> tuple[slice, slice, float, float, float]:
    """Pixel bounding box (rows, cols) of an object grown by `pad` pixels, its pixel centre and radius."""
    radius = obj.radius * min(width, height)
    cx, cy = obj.position[0] * width, obj.position[1] * height
    reach = radius + pad + 1
    rows = slice(max(0, int(cy - reach)), min(height, int(math.ceil(cy + reach))))
    cols = slice(max(0, int(cx - reach)), min(width, int(math.ceil(cx + reach))))
    return rows, cols, cx, cy, radius


@lru_cache(maxsize=64)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: xs (1, W), ys (H, 1), float32."""
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    return xs, ys


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx], zero outside."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        a[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    return out


def _dilate(a: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation by a (2r+1)² square, separable; keeps anti-aliased edges."""
    out = a.copy()
    for d in range(1, radius + 1):
        np.maximum(out, _shifted(a, 0, d), out=out)
        np.maximum(out, _shifted(a, 0, -d), out=out)
    rows = out.copy()
    for d in range(1, radius + 1):
        np.maximum(out, _shifted(rows, d, 0), out=out)
        np.maximum(out, _shifted(rows, -d, 0), out=out)
    return out


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) * (1.0 / 255.0)


def _over(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """In place: canvas = canvas·(1−α) + colour·α (colour: (3,) or (h, w, 3))."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += colour * a


def _render_anime(scene: Scene, width: int, height: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Flat fills, bold dark outlines, a hard cel-shadow rim and a small hard shine."""
    masks = object_masks(scene, width, height, scale)
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = _rgb(scene.background)
    line = max(1, round(0.03 * min(width, height)))
    xs, ys = _grid(width, height)
    for obj, mask in zip(scene.objects, masks):
        rows, cols, cx, cy, radius = _box(obj, width, height, pad=line + 1)
        m = mask[rows, cols]
        colour = _rgb(obj.colour)
        outline = _dilate(m, line)
        _over(canvas[rows, cols], colour * 0.22 + 0.02, outline)
        rim = max(1, round(0.18 * radius))
        shadow = m * (1.0 - _shifted(m, rim, rim))  # bottom-right rim: pixels whose lower-right is empty
        fill = colour[None, None, :] * (1.0 - 0.25 * shadow[..., None])
        dx, dy = xs[:, cols] - (cx - 0.42 * radius), ys[rows, :] - (cy - 0.42 * radius)
        shine = ((dx * dx + dy * dy) < (0.16 * radius) ** 2 + 0.3).astype(np.float32) * m
        fill += (1.0 - fill) * (0.85 * shine[..., None])
        _over(canvas[rows, cols], fill, m)
    return canvas


@lru_cache(maxsize=64)
def _photo_light(width: int, height: int) -> np.ndarray:
    """Background lighting: brighter top, vignette toward the corners; (H, W, 1)."""
    xs, ys = _grid(width, height)
    u, v = xs / width - 0.5, ys / height - 0.5
    return ((1.08 - 0.22 * (v + 0.5)) * (1.0 - 0.55 * (u * u + v * v)))[..., None].astype(np.float32)


def _render_photo(scene: Scene, width: int, height: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Soft lit background, drop shadows, shaded objects with a specular highlight, film grain."""
    masks = object_masks(scene, width, height, scale)
    canvas = _rgb(scene.background) * _photo_light(width, height)
    short = min(width, height)
    if len(masks):
        offset = max(1, round(0.05 * short))
        shadow = _blur(_shifted(masks.sum(axis=0), -offset, -offset), 0.035 * short + 0.5)
        canvas *= 1.0 - 0.5 * shadow[..., None]
    xs, ys = _grid(width, height)
    for obj, mask in zip(scene.objects, masks):
        rows, cols, cx, cy, radius = _box(obj, width, height, pad=1)
        dx, dy = xs[:, cols] - (cx - 0.38 * radius), ys[rows, :] - (cy - 0.42 * radius)
        dist2 = (dx * dx + dy * dy) / (radius * radius)
        shade = np.clip(1.2 - 0.36 * np.sqrt(dist2), 0.68, 1.25)
        fill = np.clip(_rgb(obj.colour)[None, None, :] * shade[..., None] + 0.04 * (shade[..., None] - 1), 0, 1)
        highlight = 0.75 * np.exp(-dist2 * 14.0)
        fill += (1.0 - fill) * highlight[..., None]
        _over(canvas[rows, cols], fill, mask[rows, cols])
    canvas += (0.03 * rng.standard_normal((height, width), dtype=np.float32))[..., None]
    return canvas


def _muted(rgb: np.ndarray) -> np.ndarray:
    """Painter's palette: partly desaturated and warmed, as if mixed with earth tones."""
    grey = float(rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.clip((0.72 * rgb + 0.28 * grey) * np.array([1.04, 1.0, 0.88], np.float32) + 0.02, 0, 1)


def _streaks(rng: np.random.Generator, width: int, height: int, along_x: bool) -> np.ndarray:
    """Brush-stroke texture: per-channel noise stretched along one axis, (H, W, 3) in about −1..1."""
    if along_x:
        shape = (max(2, height // 2), max(2, width // 8))
    else:
        shape = (max(2, height // 8), max(2, width // 2))
    noise = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB").resize((width, height), Image.BICUBIC)
    return (np.asarray(image, dtype=np.float32) - 127.5) * (1.0 / 127.5)


def _render_art(scene: Scene, width: int, height: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Painterly: muted palette, brush-stroke texture (horizontal on the ground, vertical on objects),
    ragged stroke-like edges."""
    masks = object_masks(scene, width, height, scale)
    ground = _streaks(rng, width, height, along_x=True)
    strokes = _streaks(rng, width, height, along_x=False)
    canvas = _muted(_rgb(scene.background)) * (1.0 + 0.1 * ground.mean(axis=2, keepdims=True))
    canvas += 0.04 * ground
    short = min(width, height)
    for obj, mask in zip(scene.objects, masks):
        blur = 0.012 * short + 0.5
        rows, cols, *_ = _box(obj, width, height, pad=math.ceil(3 * blur) + 1)
        texture = strokes[rows, cols]
        soft = _blur(mask[rows, cols], blur)
        ragged = np.clip((soft - 0.5 + 0.16 * texture[..., 0]) * 3.5 + 0.5, 0.0, 1.0)
        fill = _muted(_rgb(obj.colour)) * (1.0 + 0.16 * texture.mean(axis=2, keepdims=True)) + 0.05 * texture
        _over(canvas[rows, cols], np.clip(fill, 0, 1), ragged)
    canvas += (0.02 * rng.standard_normal((height, width), dtype=np.float32))[..., None]
    return canvas


_STYLED = {"anime": _render_anime, "photo": _render_photo, "art": _render_art}


def render(
    scene: Scene,
    width: int,
    height: int,
    rng: np.random.Generator | None = None,
    supersample: int | None = None,
) -> np.ndarray:
    """Render a scene to uint8 (height, width, 3). Deterministic for a given scene and rng state
    (rng=None means a fixed seed). supersample: polygon anti-aliasing factor (None: 4× up to 96 px,
    3× up to 192 px, else 2×)."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    scale = supersample or _auto_supersample(width, height)
    if scene.style == "plain":
        return _render_plain(scene, width, height, scale)
    rng = rng if rng is not None else np.random.default_rng(0)
    canvas = _STYLED[scene.style](scene, width, height, scale, rng)
    return (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_low_quality(
    scene: Scene,
    width: int,
    height: int,
    factor: float = 4.0,
    rng: np.random.Generator | None = None,
    supersample: int | None = None,
) -> np.ndarray:
    """The "low-resolution upscaled" variant: render at 1/factor of the size, bicubic-upscale back."""
    if factor < 1:
        raise ValueError("factor must be >= 1")
    small = render(scene, max(1, round(width / factor)), max(1, round(height / factor)), rng, supersample)
    return np.array(Image.fromarray(small).resize((width, height), Image.BICUBIC))
