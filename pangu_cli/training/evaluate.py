"""Prompt-following analyser for pangu-mini: read a scene back out of an image, and score it.

`analyse(image)` finds what a synthetic-world image (pangu_cli.training.scenes) shows without knowing
the scene: background colour, objects (colour, centre and position cell, size class, shape), the
relation between two objects, the style. `score(scene, analysis)` compares that with what was asked
for; `style_of(image)` reads the style alone. NumPy + Pillow; ~15 ms of CPU per 64 px image.

How it reads an image:
- Colours are named in CIE Lab by the nearest palette prototype: the palette and its "muted" version
  (the art style paints with it).
- The background is a smooth colour field (cubic in x and y, for photo lighting and vignette), fitted
  robustly from the border inwards; pixels far from it in Lab are foreground, in connected regions.
- Each region's main colour is voted by its pixels' nearest palette colours, deep pixels counting
  most (outlines, rims, fringes, shadows sit at the edge). Then every pixel around the region is read
  against colour "families": the object's colour scaled by shading or mixed with white (highlight),
  the local background scaled by shadow, the object's dark outline, and the straight line between
  object and background (anti-aliased or blurred edges, which also give the object's sub-pixel
  coverage). The object is what its family explains; what nothing explains next to it is another
  object joined to it (by an outline or a shadow) and is read in turn.
- The shape is the canonical shape (scenes.SHAPE_POLYGONS) that best overlaps the object's soft mask
  (IoU), each shape drawn at the object's centroid and area over a few tilts, sharp and with rounded
  corners (soft images round corners off), sampled at the object's own pixel centres.
- The size class comes from the radius the area implies for that shape (the scenes' radius bounds
  the shape's extent); position and relation from the centroid.
- The style: photo lighting darkens the background's corners; art mutes the palette and streaks the
  ground along x; anime draws dark outlines and shines; plain is flat. Anime matters to the reading:
  a dark object's fill and outline are one colour, so the outline is eroded off it.
Validation on renders, per style and size: `python bench/mini_eval.py --validate`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scenes import (
    COLOURS,
    MAX_ROTATION,
    SHAPE_POLYGONS,
    SIZE_RANGES,
    STYLES,
    Scene,
    _muted,
    attributes,
    position_name,
)


# ------------------------------------------------------------------------------------------ colour
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in 0..1) → CIE Lab (D65), float32, same leading shape."""
    c = np.asarray(rgb, np.float32)
    if np.asarray(rgb).dtype == np.uint8:
        c = c / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ (_SRGB_TO_XYZ.T / _WHITE_D65[None, :]).astype(np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], axis=-1).astype(np.float32)


COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


# Prototypes of every palette colour: as is, then muted as the art style paints it; _PROTO_NAME[i] is
# the index in COLOUR_NAMES of prototype i.
_PURE_RGB = [np.asarray(COLOURS[name], np.float32) / 255.0 for name in COLOUR_NAMES]
_PROTO_RGB = np.stack(_PURE_RGB + [_muted(rgb) for rgb in _PURE_RGB])
_PROTO_LAB = rgb_to_lab(_PROTO_RGB)
_PROTO_NAME = np.tile(np.arange(len(COLOUR_NAMES)), 2)


def colour_name(lab: np.ndarray, exclude: tuple[str, ...] = ()) -> tuple[str, float]:
    """Nearest palette colour of one Lab value, and its ΔE (CIE76) to the nearest prototype."""
    dist = np.linalg.norm(_PROTO_LAB - np.asarray(lab, np.float32)[None, :], axis=1)
    for name in exclude:
        dist[_PROTO_NAME == COLOUR_NAMES.index(name)] = np.inf
    best = int(np.argmin(dist))
    return COLOUR_NAMES[_PROTO_NAME[best]], float(dist[best])


def _pixel_names(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel nearest palette index and ΔE, for (..., 3) Lab."""
    dist = np.linalg.norm(lab[..., None, :] - _PROTO_LAB, axis=-1)
    best = dist.argmin(axis=-1)
    return _PROTO_NAME[best], np.take_along_axis(dist, best[..., None], axis=-1)[..., 0]


def _mutedness(lab: np.ndarray, name: str) -> float:
    """How much nearer (ΔE) a colour is to the muted version of its palette colour than to the pure one."""
    index = COLOUR_NAMES.index(name)
    plain_lab, muted_lab = _PROTO_LAB[index], _PROTO_LAB[len(COLOUR_NAMES) + index]
    return float(np.linalg.norm(lab - plain_lab) - np.linalg.norm(lab - muted_lab))


# ----------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DetectedObject:
    colour: str
    center: tuple[float, float]  # (cx, cy) relative to width and height, y down
    position: str  # third-of-the-frame cell, as scenes.position_name
    radius: float  # half-extent relative to min(width, height), from the area and the shape
    size: str  # "small" | "big"
    shape: str
    shape_iou: float  # overlap with the best canonical mask (confidence)
    area: float  # pixels (at the analysed resolution) / (width · height)
    colour_distance: float  # ΔE from the nearest palette prototype (confidence)
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in analysed pixels


@dataclass(frozen=True)
class Analysis:
    width: int  # the analysed size (images over MAX_SIDE are reduced first)
    height: int
    background: str
    objects: tuple[DetectedObject, ...]  # largest first
    relation: str | None = None  # objects[0] <relation> objects[1], along the dominant axis
    style: str | None = None  # as given to analyse, or as guessed


# -------------------------------------------------------------------------------------- parameters
def _shape_area(name: str) -> float:
    """Area of the canonical shape of half-extent 1."""
    size = 400
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for pts, paint in SHAPE_POLYGONS[name]:
        draw.polygon((pts * (size * 0.45) + size / 2).ravel().tolist(), fill=255 if paint else 0)
    return float(np.asarray(image, np.float64).sum() / 255.0 / (size * 0.45) ** 2)


SHAPE_AREAS: dict[str, float] = {name: _shape_area(name) for name in SHAPE_POLYGONS}
_LEAST_COMPACT = min(SHAPE_AREAS.values())  # the moon: area 0.95 at half-extent 1

# Image and objects
MAX_SIDE = 128  # larger images are box-reduced first (objects are ≥ ~20% of the short side)
_FG_DELTA_E = 16.0  # Lab distance from the background field that makes a pixel foreground
_BG_INLIER_DELTA_E = 12.0  # Lab distance within which a pixel is fitted as background
_MIN_OBJECT_AREA = 0.35 * _LEAST_COMPACT * SIZE_RANGES["small"][0] ** 2  # a third of the smallest object
_SIZE_SPLIT = math.sqrt(SIZE_RANGES["small"][1] * SIZE_RANGES["big"][0])  # geometric middle of the gap
_HOLE_FILL_FRACTION = 0.15  # off-centre holes smaller than this are highlights (a ring's hole: 37%)
_MAX_OBJECTS = 8
_OUTLINE_WIDTH = 0.03  # of the short side: the anime outline's width
# Colour families (gains k of colour · k): an object under shading, cel-shadow and light; in a photo
# down to its shaded side; the background under cast shadow and vignette; a dark (anime) outline,
# 0.22 · fill + 0.02, whose boundary with the fill (k ≈ 0.61) lies half-way between the two ranges.
_OBJECT_GAIN = (0.67, 1.3)
_LIT_OBJECT_GAIN = (0.5, 1.3)
_BACKGROUND_GAIN = (0.45, 1.12)
_OUTLINE_GAIN = (0.0, 0.55)
_OUTLINE_SHADE, _OUTLINE_LIFT = 0.22, 0.02
_TIE_MARGIN = 0.02  # RGB units: a pixel both families explain (grey on white) belongs to the object
_SHADOW_DISTANCE = 0.08  # RGB units: this near the background family, a pixel is background or shadow
_EDGE_DISTANCE = 0.1  # RGB units: this near the object–background mixing line, a pixel is an edge pixel
_MIN_REACH = 0.1  # RGB units: texture and grain move an object's pixels this far from its family
_DARK_LIGHTNESS = 30.0  # Lab L below which a fill cannot be told from its anime outline (black)
# Shapes: every pose is drawn once in a canonical frame (area _CANON_AREA, centroid at the centre) and
# blurred, per scale level (1.25× steps), as pixel anti-aliasing blurs at that scale; a pose is
# compared with an object by sampling it at the centres of the object's pixels mapped into the frame.
_ROTATIONS = tuple(np.linspace(-MAX_ROTATION - 3, MAX_ROTATION + 3, 5))
_CANON_SIZE = 96
_CANON_AREA = _LEAST_COMPACT * 38.0 ** 2  # the least compact shape (moon) then spans ±38 canonical pixels
_SCALE_STEP = 1.25
_PIXEL_SIGMA = 0.35  # image pixels: a Gaussian about as wide as a pixel's box (anti-aliasing)
_ROUNDING_SIGMA = 1.3  # image pixels: how much soft images (painted edges, a model's samples) round corners
_ROUNDED_PENALTY = 0.99  # prefer the sharp reading when both fit about as well (unless edges are soft)
_GAMMA = 100.0  # a hard (0/1) mask pixel says which side of the edge its centre is: sharpen the pose there
# Style rules (measured on renders: bench/mini_eval.py --validate)
_PHOTO_LIGHT = 0.86  # corner / centre brightness of the background field below this: photo lighting
_ART_MUTED = 1.0  # ΔE: background and objects nearer to the muted palette by this much
_ART_STREAKS, _ART_NOISE = 0.2, 0.01  # row minus column correlation of the ground's texture; its level
_STREAK_LAG = 3  # pixels
_OUTLINED = 0.3  # share of an object's surrounding ring that is darker than object and ground
_MARK_CONTRAST, _SHINE_CONTRAST = 12.0, 20.0  # Lab L: an outline's darkness, a shine's lightness
_SHINE_PIXELS = 2


# -------------------------------------------------------------------------------- pixels and masks
def _as_float(image: np.ndarray) -> np.ndarray:
    """uint8 or float (0..1) (H, W, 3 or 4) → float32 RGB in 0..1, box-reduced to MAX_SIDE."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    height, width = image.shape[:2]
    if max(height, width) > MAX_SIDE:
        scale = MAX_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BOX))
    return image.astype(np.float32) / 255.0


def _solve_small(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve a small well-conditioned system by Gaussian elimination with partial pivoting. LAPACK
    would do, but through a threaded BLAS its per-call overhead dominates on busy machines."""
    a = np.concatenate([matrix, rhs.reshape(len(matrix), -1)], axis=1).astype(np.float64)
    n = len(a)
    for i in range(n):
        pivot = i + int(np.argmax(np.abs(a[i:, i])))
        a[[i, pivot]] = a[[pivot, i]]
        a[i] /= a[i, i]
        others = np.arange(n) != i
        a[others] -= a[others, i:i + 1] * a[i]
    return a[:, n:].reshape(rhs.shape)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float 2-D array (zero outside)."""
    if sigma < 0.05:
        return image
    radius = int(math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    padded = np.pad(image, radius)
    rows = sum(w * padded[:, i:i + image.shape[1]] for i, w in enumerate(taps))
    return sum(w * rows[i:i + image.shape[0], :] for i, w in enumerate(taps))


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 4-neighbourhood (outside the frame counts as empty)."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0], out[-1], out[:, 0], out[:, -1] = False, False, False, False
    return out


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Binary dilation by the 4-neighbourhood, `steps` times."""
    for _ in range(steps):
        out = mask.copy()
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
        mask = out
    return mask


def _grey_dilate(stack: np.ndarray, steps: int) -> np.ndarray:
    """Grey-level dilation of (..., H, W) by a (2·steps + 1)² square."""
    return -_grey_erode(-stack, steps, fill=-np.inf)


def _grey_erode(stack: np.ndarray, steps: int, fill: float = 0.0) -> np.ndarray:
    """Grey-level erosion of (..., H, W) by a (2·steps + 1)² square (`fill` beyond the border)."""
    out = stack
    for axis in (-1, -2):
        for _ in range(steps):
            pad = [(0, 0)] * out.ndim
            pad[axis] = (1, 1)
            padded = np.pad(out, pad, constant_values=fill)
            size = out.shape[axis]
            before = np.take(padded, np.arange(0, size), axis=axis)
            after = np.take(padded, np.arange(2, size + 2), axis=axis)
            out = np.minimum(np.minimum(before, after), out)
    return out


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components: labels (0 = none, 1..n) and n. Min-label propagation with pointer
    jumping (every label is the index of a pixel of the same component, so following it is safe):
    a few dozen NumPy passes for the small images analysed here."""
    height, width = mask.shape
    big = height * width
    flat_mask = mask.ravel()
    labels = np.where(flat_mask, np.arange(big), big)
    padded = np.full((height + 2, width + 2), big, np.int64)
    while True:
        padded[1:-1, 1:-1] = labels.reshape(height, width)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                        padded[1:-1, :-2], padded[1:-1, 2:]]).ravel()
        updated = np.where(flat_mask, neighbours, big)
        inside = updated < big
        for _ in range(2):
            updated[inside] = updated[updated[inside]]
        if np.array_equal(updated, labels):
            break
        labels = updated
    roots, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(height, width).astype(np.int32) + 1
    count = len(roots) - (1 if roots[-1] == big else 0)
    dense[~mask] = 0
    return dense, count


def _fill_small_holes(mask: np.ndarray, max_fraction: float) -> np.ndarray:
    """Fill enclosed pockets that are highlights or specks, not shape: smaller than max_fraction of
    the mask's area and away from its centre (a ring's hole is centred, however small it looks once
    an outline has narrowed it; a shine or a fish's eye is off-centre), or just a couple of pixels."""
    padded = np.pad(mask, 1)
    holes, count = _label(~padded)
    if count <= 1:
        return mask
    outside = holes[0, 0]
    filled = padded.copy()
    area = float(mask.sum())
    ys, xs = np.nonzero(padded)
    centre = np.array([ys.mean(), xs.mean()])
    radius = math.sqrt(area / math.pi)
    for k in range(1, count + 1):
        if k == outside:
            continue
        pocket = holes == k
        size = int(pocket.sum())
        py, px = np.nonzero(pocket)
        off_centre = np.hypot(py.mean() - centre[0], px.mean() - centre[1]) > 0.25 * radius
        if size <= 2 or (size <= max_fraction * area and off_centre):
            filled |= pocket
    return filled[1:-1, 1:-1]


def _main_parts(mask: np.ndarray, min_area: float) -> np.ndarray:
    """The mask's big connected parts (a highlight or a shadow can cut an object in two)."""
    labels, count = _label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= max(min_area / 4, 0.2 * sizes.max()))[0] + 1
    return np.isin(labels, keep)


def _depth(region: np.ndarray, layers: int = 3) -> np.ndarray:
    """How many erosions each pixel of the region survives (0 at the edge), up to `layers`."""
    depth = np.zeros(region.shape, np.int32)
    layer = region
    for _ in range(layers):
        layer = _erode(layer)
        depth += layer
    return depth


# -------------------------------------------------------------------------------------- background
@lru_cache(maxsize=32)
def _basis(width: int, height: int) -> np.ndarray:
    """Cubic polynomial basis in relative coordinates, (H·W, 10) (shared: do not modify)."""
    u = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    v = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    uu, vv = np.meshgrid(u, v)
    uu, vv = uu.ravel(), vv.ravel()
    return np.stack([np.ones_like(uu), uu, vv, uu * uu, vv * vv, uu * vv,
                     uu ** 3, vv ** 3, uu * uu * vv, uu * vv * vv], axis=1)


def _border(height: int, width: int, thickness: int) -> np.ndarray:
    """The frame's outer ring of `thickness` pixels."""
    ring = np.zeros((height, width), bool)
    ring[:thickness], ring[-thickness:], ring[:, :thickness], ring[:, -thickness:] = True, True, True, True
    return ring


def _fit_background(rgb: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth background field (H, W, 3) RGB and the mask of pixels it explains. Seeded by the
    frame's border (objects keep off it), then refitted to every pixel it explains, three times."""
    height, width = rgb.shape[:2]
    ring = _border(height, width, max(1, round(0.04 * min(height, width))))
    seed_lab = np.median(lab[ring], axis=0)
    inliers = ring & (np.linalg.norm(lab - seed_lab, axis=-1) < 30.0)
    if inliers.sum() < 8:
        inliers = ring
    basis = _basis(width, height)
    flat = rgb.reshape(-1, 3)
    field_rgb = np.broadcast_to(np.median(rgb[inliers], axis=0), rgb.shape)
    for _ in range(3):
        chosen = inliers.ravel()
        # a cubic needs support spread over the frame; with the border ring only, fall back to a plane
        terms = 10 if chosen.sum() > 4 * 10 and (inliers & ~ring).any() else 3
        design = basis[chosen, :terms].astype(np.float64)
        normal = design.T @ design + 1e-6 * np.eye(terms)
        coef = _solve_small(normal, design.T @ flat[chosen].astype(np.float64))
        field_rgb = (basis[:, :terms] @ coef.astype(np.float32)).reshape(rgb.shape)
        distance = np.linalg.norm(lab - rgb_to_lab(np.clip(field_rgb, 0, 1)), axis=-1)
        inliers = distance < _BG_INLIER_DELTA_E
        if inliers.sum() < 8:
            break
    return np.clip(field_rgb, 0.0, 1.0).astype(np.float32), inliers


def _light_ratio(field_rgb: np.ndarray) -> float:
    """Brightness of the background field in the corners relative to the centre (photo vignette)."""
    field = field_rgb.mean(axis=-1)
    height, width = field.shape
    corners = float(field[[0, 0, -1, -1], [0, -1, 0, -1]].mean())
    return (corners + 0.02) / (float(field[height // 2, width // 2]) + 0.02)  # 0.02: black stays defined


# ---------------------------------------------------------------------------------- reading pixels
def _family_distance(pixels: np.ndarray, colour: np.ndarray, low: float, high: float) -> np.ndarray:
    """Distance of each RGB pixel (N, 3) from the segment {k·colour : low ≤ k ≤ high}; `colour` is
    (3,) or per pixel (N, 3). Shading, shadows and outlines scale a colour; this is how far a pixel is
    from being such a scaled copy."""
    colour = np.broadcast_to(colour, pixels.shape)
    k = (pixels * colour).sum(axis=-1) / np.maximum((colour * colour).sum(axis=-1), 1e-6)
    k = np.clip(k, low, high)[..., None]
    return np.linalg.norm(pixels - k * colour, axis=-1)


def _mix(pixels: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position t of each pixel's projection on the line start → end (0 at start, 1 at end, beyond
    either end outside 0..1), and its distance from the segment; start and end are (3,) or (N, 3)."""
    direction = np.broadcast_to(end - start, pixels.shape)
    offset = pixels - start
    t = (offset * direction).sum(axis=-1) / np.maximum((direction * direction).sum(axis=-1), 1e-6)
    return t, np.linalg.norm(offset - np.clip(t, 0.0, 1.0)[:, None] * direction, axis=-1)


def _highlight_distance(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Distance of each pixel from the object's lit family {k·colour mixed with white by t}: p ≈
    a·colour + t·white with a = k·(1 − t), solved by least squares, then held to the family."""
    white = np.ones(3, np.float32)
    gram = np.array([[colour @ colour, colour @ white], [colour @ white, white @ white]], np.float64)
    if abs(np.linalg.det(gram)) < 1e-4:  # an achromatic colour: its lit family is its own line
        return _family_distance(pixels, colour, _OBJECT_GAIN[0], 1.0 / max(float(colour.max()), 1e-3))
    (p, q), (_, r) = gram
    det = p * r - q * q
    along_colour, along_white = pixels @ colour, pixels.sum(axis=-1)
    a = (r * along_colour - q * along_white) / det
    t = (p * along_white - q * along_colour) / det
    t = np.clip(t, 0.0, 1.0)
    a = np.clip(a, _OBJECT_GAIN[0] * (1.0 - t), _OBJECT_GAIN[1] * (1.0 - t))
    return np.linalg.norm(pixels - a[:, None] * colour - t[:, None] * white, axis=-1)


def _reach(colour: np.ndarray) -> float:
    """How far a pixel may stray from an object's colour family and still be the object: half-way to
    the nearest palette colour of another name (so a touching neighbour of another colour is not)."""
    dist = np.linalg.norm(_PROTO_RGB - colour[None, :], axis=1)
    own = _PROTO_NAME[int(np.argmin(dist))]
    return max(_MIN_REACH, 0.5 * float(dist[_PROTO_NAME != own].min()))


def _is_dark(colour_rgb: np.ndarray) -> bool:
    """Dark enough that an anime outline (≈ 0.22 × the fill) cannot be told from the fill."""
    return float(rgb_to_lab(colour_rgb)[0]) < _DARK_LIGHTNESS


@dataclass
class _Classes:
    """Per-pixel reading of an area around one object (False / NaN outside the area)."""

    object: np.ndarray
    outline: np.ndarray
    ground: np.ndarray  # background, cast shadows included
    coverage: np.ndarray  # the object's share of an edge pixel (on the background–object line), else NaN


def _classes(rgb: np.ndarray, field_rgb: np.ndarray, area: np.ndarray, colour: np.ndarray,
             lit: bool = False) -> _Classes:
    """An object pixel is nearer to the object's colour family (shading), or to its mix with white (a
    highlight), than to the local background's family and to the object's dark outline, and not so far
    from the object's colour that it must be something else; or it is an edge pixel, on the
    object–background mixing line and nearer the object's end."""
    pixels, local = rgb[area], field_rgb[area]
    reach = _reach(colour)
    # a photo's objects are shaded down to ~0.55 of their colour, and nothing in a photo is outlined
    to_object = _family_distance(pixels, colour, *(_LIT_OBJECT_GAIN if lit else _OBJECT_GAIN))
    to_background = _family_distance(pixels, local, *_BACKGROUND_GAIN)
    to_outline = np.full(len(pixels), np.inf, np.float32) if lit else \
        _family_distance(pixels, colour, *_OUTLINE_GAIN)
    to_highlight = _highlight_distance(pixels, colour)
    alpha, to_edge = _mix(pixels, local, colour)
    body = (to_object <= to_background + _TIE_MARGIN) & (to_object <= to_outline) & (to_object < reach)
    # a highlight only where the background family cannot explain it as well (grey on white)
    shine = (to_highlight + _TIE_MARGIN < to_background) & (to_highlight < to_outline) & (to_highlight < reach)
    on_line = to_edge < _EDGE_DISTANCE
    # an edge pixel against an outline mixes the fill with the outline's colour instead
    outline_colour = _OUTLINE_SHADE * colour + _OUTLINE_LIFT
    inked, to_inked_edge = _mix(pixels, np.broadcast_to(outline_colour, pixels.shape), colour)
    on_inked_line = ~on_line & (to_inked_edge < _EDGE_DISTANCE) & (inked >= 0.0) & (inked <= 1.0)
    is_object = body | shine | (on_line & (alpha >= 0.5) & (alpha <= 1.0))
    if _is_dark(colour):
        # a dark fill and its outline (or its shaded side) are one dark shape: no telling them apart
        # reliably, so take them together (analyse() takes an anime outline off afterwards)
        is_object |= (to_outline < to_background) & (to_outline < reach)
    out = _Classes(*(np.zeros(area.shape, bool) for _ in range(3)), np.full(area.shape, np.nan, np.float32))
    out.object[area] = is_object
    out.outline[area] = ~is_object & (to_outline < to_background) & (to_outline < reach) \
        & (to_background > _SHADOW_DISTANCE)  # on a dark ground a dark outline is no more than ground
    out.ground[area] = ~is_object & (to_background < _SHADOW_DISTANCE)
    out.coverage[area] = np.where(on_line, np.clip(alpha, 0.0, 1.0),
                                  np.where(on_inked_line, np.clip(inked, 0.0, 1.0), np.nan))
    return out


def _soft_mask(mask: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """The mask with its edge pixels (either side of the boundary) at their measured coverage, where
    they lie on the background–object line: sub-pixel shape detail for small objects."""
    soft = mask.astype(np.float32)
    edge = (_dilate(mask, 1) & ~_erode(mask)) & ~np.isnan(coverage)
    soft[edge] = coverage[edge]
    return soft


# ----------------------------------------------------------------------------------------- objects
def _deep_median(rgb: np.ndarray, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Median colour of the deepest layer of `pixels` that has a few of them (outline, rim and fringe
    pixels sit at the edge; a black object's outline is almost as dark as its fill)."""
    for level in range(int(depth[pixels].max(initial=0)), -1, -1):
        chosen = pixels & (depth >= level)
        if chosen.sum() >= 4 or level == 0:
            return np.median(rgb[chosen], axis=0)
    return np.median(rgb[pixels], axis=0)


def _dominant_colour(rgb: np.ndarray, lab: np.ndarray, region: np.ndarray, background: str) -> np.ndarray:
    """RGB of a region's main colour: of the palette colours its pixels are nearest to, the one with
    most votes, votes growing with depth inside the region since outlines, rims, fringes and shadows
    sit at its edge (an outline can outnumber the fill of a small object). Of colours with about as
    many votes, the lightest wins: a dark outline joining two objects must not be taken for one."""
    depth = _depth(region)
    names = np.full(region.shape, -1)
    names[region] = _pixel_names(lab[region])[0]
    votes = np.bincount(names[region], weights=4.0 ** depth[region], minlength=len(COLOUR_NAMES))
    votes[COLOUR_NAMES.index(background)] = 0
    strong = np.nonzero(votes >= 0.5 * votes.max())[0]
    lightness = _PROTO_LAB[:len(COLOUR_NAMES), 0]
    chosen = names == int(strong[np.argmax(lightness[strong])])
    return _deep_median(rgb, chosen if chosen.any() else region, depth)


@dataclass
class _Piece:
    """One object read from a foreground region, in the region's window."""

    mask: np.ndarray
    soft: np.ndarray  # the mask with sub-pixel coverage at its edges
    colour: str
    distance: float  # ΔE of its colour from the nearest palette prototype
    colour_rgb: np.ndarray
    explained: np.ndarray  # the mask, its fringe, its outline and shadows
    classes: _Classes


def _find_object(rgb, lab, field_rgb, region, allowed, background, min_area, line, lit) -> _Piece | None:
    """The object a foreground region shows, if any."""
    colour_rgb = _dominant_colour(rgb, lab, region, background)
    area = _dilate(region, 2) & allowed
    for _ in range(2):  # the colour from the object's own pixels is cleaner than the region's
        classes = _classes(rgb, field_rgb, area, colour_rgb, lit)
        mask = _main_parts(classes.object & _dilate(region, 1), min_area)
        if mask.sum() < min_area:
            return None
        mask = _fill_small_holes(mask, _HOLE_FILL_FRACTION)
        colour_rgb = _deep_median(rgb, mask, _depth(mask, 2))
    name, distance = colour_name(rgb_to_lab(colour_rgb), exclude=(background,))
    # the anti-aliased fringe, the outline and shadows near the object are the object's doing
    explained = _dilate(mask, 1) | (classes.outline & _dilate(mask, line)) | classes.ground
    return _Piece(mask, _soft_mask(mask, classes.coverage), name, distance, colour_rgb, explained, classes)


def _same_object(rgb: np.ndarray, lab: np.ndarray, colour: str, colour_rgb: np.ndarray) -> bool:
    """Whether pixels next to an object are more of it: mostly of its colour (a side its colour family
    missed) or, on the whole, a highlight on it."""
    names = np.bincount(_pixel_names(lab)[0], minlength=len(COLOUR_NAMES))
    if COLOUR_NAMES[int(np.argmax(names))] == colour:
        return True
    median = np.median(rgb, axis=0, keepdims=True)
    return bool(_highlight_distance(median, colour_rgb)[0] < 0.5 * _reach(colour_rgb))


def _anime_marks(rgb: np.ndarray, lab: np.ndarray, field_rgb: np.ndarray, mask: np.ndarray,
                 colour_rgb: np.ndarray, line: int) -> tuple[float, int]:
    """The anime style's marks on one object: the share of the ring around it that is darker than
    both the object and the ground (an outline; a soft edge only ever lies between the two), and the
    number of pixels inside it far lighter than its fill, unlike the ground and not a mix of the two
    (a shine; a hole such as a fish's eye shows the ground, an edge pixel mixes fill and ground)."""
    field_lab = rgb_to_lab(field_rgb)
    fill = float(rgb_to_lab(colour_rgb)[0])
    ring = _dilate(mask, line) & ~mask
    darker = lab[..., 0] < np.minimum(fill, field_lab[..., 0]) - _MARK_CONTRAST
    outlined = float(darker[ring].mean()) if ring.any() else 0.0
    lighter = mask & (lab[..., 0] > fill + _SHINE_CONTRAST)
    shine = 0
    candidates = lighter & (np.linalg.norm(lab - field_lab, axis=-1) > _FG_DELTA_E)
    if candidates.any():
        _, off_line = _mix(rgb[candidates], field_rgb[candidates], colour_rgb)
        shine = int((off_line > _EDGE_DISTANCE).sum())
    if not shine:
        # on a light ground a shine looks like the ground: then it is a light spot well inside the
        # object, up and to the left of its centre, where the light comes from (a fish's eye is right)
        ys, xs = np.nonzero(mask)
        rows, cols = np.indices(mask.shape)
        upper_left = (rows < ys.mean()) & (cols < xs.mean())
        shine = int((lighter & _erode(mask) & upper_left & (lab[..., 0] > fill + 1.5 * _SHINE_CONTRAST)).sum())
    return outlined, shine


@dataclass
class _Found:
    """An object as the analysis sees it, with what style detection and refinement need."""

    soft: np.ndarray  # full-frame soft mask
    colour: str
    distance: float
    colour_rgb: np.ndarray
    outlined: float  # share of the ring just outside the object darker than both it and the ground
    shine: int  # pixels inside the object much lighter than its fill and unlike the ground


@dataclass
class _Scan:
    rgb: np.ndarray
    field_rgb: np.ndarray
    inliers: np.ndarray
    background: str
    background_lab: np.ndarray
    found: list[_Found]


def _scan(image: np.ndarray) -> _Scan:
    """Background field and colour, and every object found (before any style-specific refinement)."""
    rgb = _as_float(image)
    height, width = rgb.shape[:2]
    short = min(width, height)
    lab = rgb_to_lab(rgb)
    field_rgb, inliers = _fit_background(rgb, lab)
    field_lab = rgb_to_lab(field_rgb)
    background_lab = np.median(lab[inliers], axis=0) if inliers.any() else field_lab.mean((0, 1))
    background, _ = colour_name(background_lab)
    foreground = np.linalg.norm(lab - field_lab, axis=-1) > _FG_DELTA_E
    min_area = _MIN_OBJECT_AREA * short * short
    line = int(math.ceil(_OUTLINE_WIDTH * short)) + 1
    lit = _light_ratio(field_rgb) < _PHOTO_LIGHT  # photo lighting: shading, shadows, no outlines
    labels, count = _label(foreground)
    queue = [labels == k for k in range(1, count + 1)]
    found_objects, claimed = [], np.zeros(foreground.shape, bool)
    while queue and len(found_objects) < _MAX_OBJECTS:
        region = queue.pop(0) & ~claimed
        if region.sum() < min_area:
            continue
        # work in a window around the region: everything below is local and costs per pixel
        ys, xs = np.nonzero(region)
        pad = line + 4
        win = (slice(max(0, ys.min() - pad), min(height, ys.max() + 1 + pad)),
               slice(max(0, xs.min() - pad), min(width, xs.max() + 1 + pad)))
        local_region = region[win]
        piece = _find_object(rgb[win], lab[win], field_rgb[win], local_region, ~claimed[win], background,
                             min_area, line, lit)
        if piece is None:
            continue
        mask, soft, colour, explained = piece.mask, piece.soft, piece.colour, piece.explained
        # whatever the object does not explain: a second object joined to it by outlines or shadows,
        # or a part of this one that its colour family missed (a very dark or very lit side)
        rest, parts = _label(local_region & ~explained)
        touching = _dilate(mask, 2)  # `explained` already holds the ring 1 px around the mask
        for part in (rest == k for k in range(1, parts + 1)):
            if _erode(part).sum() < min_area / 3:
                continue  # a sliver of fringe
            if (part & touching).any() and _same_object(rgb[win][part], lab[win][part], colour, piece.colour_rgb):
                soft[part] = 1.0
                explained |= _dilate(part, 1)
            else:
                whole = np.zeros_like(region)
                whole[win] = part
                queue.append(whole)
        claimed[win] |= explained
        full = np.zeros(region.shape, np.float32)
        full[win] = soft
        outlined, shine = _anime_marks(rgb[win], lab[win], field_rgb[win], mask, piece.colour_rgb, line)
        found_objects.append(_Found(full, colour, piece.distance, piece.colour_rgb, outlined, shine))
    return _Scan(rgb, field_rgb, inliers, background, background_lab, found_objects)


# ------------------------------------------------------------------------------------------ shapes
_TILTABLE = frozenset(name for name in SHAPE_POLYGONS if name not in ("circle", "ring"))
_POSES = [(shape, float(rot)) for shape in SHAPE_POLYGONS for rot in (_ROTATIONS if shape in _TILTABLE else (0.0,))]
_POSE_SHAPE = np.array([list(SHAPE_POLYGONS).index(shape) for shape, _ in _POSES])


def _pose_mask(shape: str, rotation: float) -> np.ndarray:
    """A pose's anti-aliased mask in the canonical frame (area _CANON_AREA, centroid at the centre)."""
    size, scale = _CANON_SIZE, 4
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    rot = np.array([[c, s], [-s, c]]) * (math.sqrt(_CANON_AREA / SHAPE_AREAS[shape]) * scale)
    image = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(image)
    for pts, paint in SHAPE_POLYGONS[shape]:
        xy = pts @ rot + size * scale / 2
        draw.polygon(xy.ravel().tolist(), fill=255 if paint else 0)
    return np.asarray(image.reduce(scale), np.float32) * (1.0 / 255.0)


@lru_cache(maxsize=1)
def _sharp_poses() -> np.ndarray:
    return np.stack([_pose_mask(shape, rotation) for shape, rotation in _POSES])


def _rounded(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The pose as a soft image shows it: blurred, then cut back to its own area, so corners and tips
    round off while straight edges stay in place."""
    blurred = _gaussian_blur(mask, sigma)
    area = int(round(float(mask.sum())))
    level = np.partition(blurred.ravel(), -area)[-area]
    return (blurred >= level).astype(np.float32)


@lru_cache(maxsize=16)
def _pose_stack(level: int, closing: int = 0) -> np.ndarray:
    """Every pose, sharp and rounded, as an image at scale _SCALE_STEP**level (canonical pixels per
    image pixel) shows it: (2 · poses, size + 2, size + 2) float16, with a zero border for sampling
    off the frame (3.5 MB). closing: image pixels of a square closing first (what taking an anime
    outline off a dark object leaves of its shape)."""
    scale = _SCALE_STEP ** level
    sharp = _sharp_poses()
    if closing:
        steps = max(1, round(closing * scale))
        sharp = _grey_erode(_grey_dilate(sharp, steps), steps)
    soften = _PIXEL_SIGMA * scale
    out = np.zeros((2 * len(_POSES), _CANON_SIZE + 2, _CANON_SIZE + 2), np.float16)
    for i, pose in enumerate(sharp):
        out[i, 1:-1, 1:-1] = _gaussian_blur(pose, soften)
        out[len(_POSES) + i, 1:-1, 1:-1] = _gaussian_blur(_rounded(pose, _ROUNDING_SIGMA * scale), soften)
    return out


def _bilinear(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A stack (n, S + 2, S + 2) of S × S images with a zero border, sampled at the grid rows × cols
    (index coordinates in the S × S images; zero outside them)."""
    size = padded.shape[-1] - 2
    flat = padded.reshape(len(padded), -1)
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    wr, wc = (rows - r0).astype(np.float32), (cols - c0).astype(np.float32)
    # indices into the zero-padded stack: anything off the frame reads the zero border
    r0p, r1p = np.clip(r0 + 1, 0, size + 1), np.clip(r0 + 2, 0, size + 1)
    c0p, c1p = np.clip(c0 + 1, 0, size + 1), np.clip(c0 + 2, 0, size + 1)
    stride = size + 2
    out = np.zeros((len(padded), len(rows), len(cols)), np.float32)
    for r, w_r in ((r0p, 1 - wr), (r1p, wr)):
        for c, w_c in ((c0p, 1 - wc), (c1p, wc)):
            index = (r[:, None] * stride + c[None, :]).ravel()
            out += flat[:, index].reshape(out.shape) * (w_r[:, None] * w_c[None, :])
    return out


def _classify_shape(mask: np.ndarray, closing: int = 0, soft_edges: bool = False
                    ) -> tuple[str, float, dict[str, float]]:
    """Best canonical shape for a mask (float, 0..1): every shape at every tilt, sharp and with
    rounded corners, placed at the mask's centroid with the mask's area, compared by soft IoU
    (against closed poses when the mask is a closing, see _pose_stack). Rounded poses must fit a
    little better than sharp ones unless the image is known to have soft edges (painted). Returns
    (name, IoU, best IoU per shape)."""
    area = float(mask.sum())
    ys, xs = np.nonzero(mask > 0)
    weights = mask[ys, xs]
    cx = float((xs * weights).sum() / area) + 0.5
    cy = float((ys * weights).sum() / area) + 0.5
    scale = math.sqrt(_CANON_AREA / max(area, 1.0))  # canonical pixels per image pixel
    stack = _pose_stack(int(round(math.log(scale) / math.log(_SCALE_STEP))), closing)
    # the image pixels the canonical frame covers, and where their centres fall in it
    reach = min(_CANON_SIZE / 2 / scale, 1.2 * math.sqrt(area / _LEAST_COMPACT) + 2)
    height, width = mask.shape
    x0, x1 = max(0, int(math.floor(cx - reach))), min(width, int(math.ceil(cx + reach)))
    y0, y1 = max(0, int(math.floor(cy - reach))), min(height, int(math.ceil(cy + reach)))
    u = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) * scale + _CANON_SIZE / 2 - 0.5
    v = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) * scale + _CANON_SIZE / 2 - 0.5
    sampled = _bilinear(stack, v, u)  # (poses, rows, cols)
    observed = mask[y0:y1, x0:x1]
    # a hard (0/1) pixel says only on which side of the edge its centre lies: compare it with the
    # pose's value there sharpened toward 0/1; a soft pixel with the pose's coverage as it is
    hard = (observed == 0.0) | (observed == 1.0)
    sampled = np.where(hard, np.clip((sampled - 0.5) * _GAMMA + 0.5, 0.0, 1.0), sampled)
    inter = np.minimum(sampled, observed).sum(axis=(1, 2))
    union = np.maximum(sampled, observed).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1e-6)
    if not soft_edges:
        iou[len(_POSES):] *= _ROUNDED_PENALTY
    pose_shape = np.concatenate([_POSE_SHAPE, _POSE_SHAPE])
    per_shape = {name: float(iou[pose_shape == i].max()) for i, name in enumerate(SHAPE_POLYGONS)}
    name = max(per_shape, key=per_shape.get)
    return name, per_shape[name], per_shape


# ------------------------------------------------------------------------------------------- style
def _style_features(scan: _Scan) -> dict[str, float]:
    """Image statistics that tell the styles apart (see `style_of`)."""
    light = _light_ratio(scan.field_rgb)
    # texture of the background: pixel-to-pixel differences of what the smooth field leaves
    residual = (scan.rgb - scan.field_rgb).mean(axis=-1)
    residual = residual - residual[scan.inliers].mean() if scan.inliers.any() else residual
    quiet = _erode(_erode(scan.inliers))
    noise, streaks = 0.0, 0.0
    lag = _STREAK_LAG
    along_x = quiet[:, lag:] & quiet[:, :-lag]
    along_y = quiet[lag:] & quiet[:-lag]
    if along_x.sum() >= 16 and along_y.sum() >= 16:
        variance = max(float((residual[quiet] ** 2).mean()), 1e-8)
        noise = math.sqrt(variance)
        # brush strokes run along x: the texture stays correlated along rows, not along columns
        streaks = float((residual[:, lag:] * residual[:, :-lag])[along_x].mean()
                        - (residual[lag:] * residual[:-lag])[along_y].mean()) / variance
    muted = _mutedness(scan.background_lab, scan.background)
    objects = [_mutedness(rgb_to_lab(f.colour_rgb), f.colour) for f in scan.found]
    if objects:  # the objects are painted in the muted palette too
        muted = 0.5 * muted + 0.5 * float(np.mean(objects))
    return {
        "light": light, "noise": noise, "streaks": streaks, "muted": muted,
        "outlined": max((f.outlined for f in scan.found), default=0.0),
        "shine": max((f.shine for f in scan.found), default=0),
    }


def _style(scan: _Scan) -> str:
    f = _style_features(scan)
    if f["light"] < _PHOTO_LIGHT:
        return "photo"
    if f["muted"] > _ART_MUTED or (f["streaks"] > _ART_STREAKS and f["noise"] > _ART_NOISE):
        return "art"
    if f["outlined"] > _OUTLINED or f["shine"] >= _SHINE_PIXELS:
        return "anime"
    return "plain"


def style_of(image: np.ndarray) -> str:
    """The style an image is drawn in (one of scenes.STYLES), from a few statistics: photo lighting
    darkens the corners; art mutes the palette and streaks the ground; anime draws dark outlines and
    puts a shine on flat fills; plain is flat."""
    return _style(_scan(image))


# ---------------------------------------------------------------------------------------- analysis
def analyse(image: np.ndarray, style: str | None = None) -> Analysis:
    """Background colour, objects and style of a synthetic-world image (uint8 or float (H, W, 3)).

    `style` (one of scenes.STYLES) tells the analyser how the image was drawn when that is known;
    by default it is read off the image as `style_of` does, and Analysis.style says which was used.
    It matters twice: in the anime style a dark object's fill and its dark outline are one colour,
    so the outline is eroded off such an object before it is measured; painted (art) edges are soft,
    so shapes with rounded corners are not held to a higher standard than sharp ones."""
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    scan = _scan(image)
    style = style or _style(scan)
    height, width = scan.rgb.shape[:2]
    objects = []
    for found in scan.found:
        soft, closing = found.soft, 0
        if style == "anime" and _is_dark(found.colour_rgb):
            # the mask is fill and outline together: eroding the outline's width off leaves the fill
            # closed by that square, which is compared with closed poses
            closing = max(1, round(_OUTLINE_WIDTH * min(width, height)))
            eroded = _grey_erode(soft, closing)
            soft, closing = (eroded, closing) if eroded.sum() >= 4 else (soft, 0)
        objects.append(_describe(soft, found.colour, found.distance, width, height, closing, style == "art"))
    objects.sort(key=lambda o: -o.area)
    relation = dominant_relation(objects[0], objects[1]) if len(objects) >= 2 else None
    return Analysis(width, height, scan.background, tuple(objects), relation, style)


def _describe(soft: np.ndarray, colour: str, distance: float, width: int, height: int,
              closing: int = 0, soft_edges: bool = False) -> DetectedObject:
    """An object's attributes from its soft mask: shape, then centroid and the radius the area implies
    for that shape (relative units, as scenes.SceneObject)."""
    shape, iou, _ = _classify_shape(soft, closing, soft_edges)
    ys, xs = np.nonzero(soft > 0)
    weights = soft[ys, xs]
    area = float(weights.sum())
    cx = (float((xs * weights).sum()) / area + 0.5) / width
    cy = (float((ys * weights).sum()) / area + 0.5) / height
    radius = math.sqrt(area / SHAPE_AREAS[shape]) / min(width, height)
    hard = soft >= 0.5
    ys, xs = np.nonzero(hard) if hard.any() else (ys, xs)
    return DetectedObject(
        colour=colour, center=(cx, cy), position=position_name(cx, cy), radius=radius,
        size="big" if radius >= _SIZE_SPLIT else "small", shape=shape, shape_iou=iou,
        area=area / (width * height), colour_distance=distance,
        bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))


# --------------------------------------------------------------------------------------- relations
RELATION_MARGIN = 0.1  # relative distance between centres below which no relation holds on an axis


def relations_between(a: DetectedObject, b: DetectedObject, margin: float = RELATION_MARGIN) -> set[str]:
    """Every relation that holds for a <relation> b (up to one per axis)."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    held = set()
    if abs(dx) > margin:
        held.add("left_of" if dx > 0 else "right_of")
    if abs(dy) > margin:
        held.add("above" if dy > 0 else "below")
    return held


def dominant_relation(a: DetectedObject, b: DetectedObject) -> str:
    """a <relation> b along the axis where the centres differ most."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return "left_of" if dx > 0 else "right_of"
    return "above" if dy > 0 else "below"


# ----------------------------------------------------------------------------------------- scoring
def _expected(scene_or_attributes) -> dict:
    return attributes(scene_or_attributes) if isinstance(scene_or_attributes, Scene) else scene_or_attributes


def _object_checks(want: dict, got: DetectedObject | None) -> dict[str, bool]:
    if got is None:
        return {"colour": False, "shape": False, "position": False, "size": False}
    return {"colour": got.colour == want["colour"], "shape": got.shape == want["shape"],
            "position": got.position == want["position"], "size": got.size == want["size"]}


def score(scene_or_attributes, analysis: Analysis) -> dict:
    """Booleans per attribute of a scene (or its `scenes.attributes` dict) against an analysis.

    Keys: background; count (exactly as many objects as asked for); colour, shape, position, size
    (right for every expected object); objects (per expected object: colour / shape / position /
    size); relation (None for a one-object scene); all (every one of these). Each expected object is
    matched to a distinct found one, trying every assignment (there are at most a few found objects)
    and keeping the one that agrees on most attributes, colour counting double: colours are what
    tell a scene's objects apart."""
    want = _expected(scene_or_attributes)
    expected = want["objects"]
    candidates = list(analysis.objects) + [None] * len(expected)
    best, best_agreement = None, -1
    for order in itertools.permutations(range(len(candidates)), len(expected)):
        found = [candidates[i] for i in order]  # ties go to the larger objects, which come first
        agreement = 0
        for w, g in zip(expected, found):
            checks = _object_checks(w, g)
            agreement += sum(checks.values()) + checks["colour"]
        if agreement > best_agreement:
            best, best_agreement = found, agreement
    found = best
    per_object = [_object_checks(w, g) for w, g in zip(expected, found)]
    result = {
        "background": analysis.background == want["background"],
        "count": len(analysis.objects) == len(expected),
        "objects": per_object,
    }
    for key in ("colour", "shape", "position", "size"):
        result[key] = all(checks[key] for checks in per_object)
    relation = want.get("relation")
    if relation is None:
        result["relation"] = None
    else:
        a, b = found
        result["relation"] = a is not None and b is not None and relation in relations_between(a, b)
    result["all"] = all(v for k, v in result.items() if k != "objects" and v is not None)
    return result
