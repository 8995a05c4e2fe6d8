"""Aspect ratios and the resolution buckets a model was trained on.

A model's bucket list is part of its contract: the list *index* of the chosen (W, H) is fed to the model as
`target_size_as_ind`, so lists keep their order and a Bucket carries its index. Ratios are W/H floats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pangu_cli.errors import UsageError

# The reference's lists (MindONE pangu_draw_v3, research/reference_impl.md §5.1), entries (W, H), in index order.
BASE_SIZE_LIST: tuple[tuple[int, int], ...] = (
    (256, 1024), (256, 960), (320, 768), (384, 640), (448, 576), (512, 512),
    (576, 448), (640, 384), (768, 320), (960, 256), (1024, 256),
)  # fmt: skip
# 10 entries, ≈1–1.3 MP; it has 9:16 (864×1536) but no 16:9: 16:9 snaps to 2:1 here.
HIGH_SOLUTION_BASE_SIZE_LIST: tuple[tuple[int, int], ...] = (
    (512, 2048), (512, 1920), (768, 1536), (864, 1536), (960, 1280), (1024, 1024),
    (1280, 960), (1536, 768), (1920, 512), (2048, 512),
)  # fmt: skip

# Named ratios. "landscape"/"portrait" follow the photographic 4:3 / 3:4; "wide"/"tall" are 16:9 / 9:16.
RATIO_ALIASES: dict[str, tuple[int, int]] = {
    "square": (1, 1), "方形": (1, 1), "正方形": (1, 1), "方图": (1, 1),
    "landscape": (4, 3), "横版": (4, 3), "横图": (4, 3), "横向": (4, 3),
    "portrait": (3, 4), "竖版": (3, 4), "竖图": (3, 4), "竖向": (3, 4),
    "wide": (16, 9), "widescreen": (16, 9), "宽屏": (16, 9),
    "tall": (9, 16), "长图": (9, 16),
}  # fmt: skip

# Labels people recognise; a bucket within 1% of one is labelled with it instead of its exact fraction.
_COMMON_RATIOS = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 10), (16, 9), (2, 1), (21, 9), (3, 1), (4, 1))
_LABEL_TOLERANCE = math.log(1.01)
# Beyond this a crop of the widest bucket would keep less than a quarter of it: almost surely a typo.
_MIN_RATIO, _MAX_RATIO = 1 / 16, 16.0

_RATIO_HINT = "use W:H or a number, e.g. 16:9, 3:4, 1.5, square, landscape, portrait (方形, 横版, 竖版)"
_SIZE_SEPARATORS = re.compile(r"\s*[x×*]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    index: int  # position in the model's list: the size-embedding input

    @property
    def ratio(self) -> float:
        return self.width / self.height

    @property
    def label(self) -> str:
        return ratio_label(self.width, self.height)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "width": self.width,
            "height": self.height,
            "ratio": round(self.ratio, 4),
            "label": self.label,
            "megapixels": round(self.megapixels, 3),
        }


def ratio_label(width: int, height: int) -> str:
    """'16:9' when within 1% of a common ratio (either orientation), else the exact reduced 'W:H'."""
    value = width / height
    for w, h in _COMMON_RATIOS:
        for a, b in ((w, h), (h, w)):
            if abs(math.log(value) - math.log(a / b)) <= _LABEL_TOLERANCE:
                return f"{a}:{b}"
    if isinstance(width, int) and isinstance(height, int):
        divisor = math.gcd(width, height)
        return f"{width // divisor}:{height // divisor}"
    return f"{value:.3g}:1"


def make_buckets(sizes: Iterable[tuple[int, int] | Bucket]) -> list[Bucket]:
    """Buckets from a model's (W, H) list; the index is the list position (Buckets pass through)."""
    return [
        size if isinstance(size, Bucket) else Bucket(int(size[0]), int(size[1]), i) for i, size in enumerate(sizes)
    ]


def parse_ratio(text: str) -> float:
    """'16:9', '16/9', '2.35:1', '1.78', 'square', '横版' → width / height."""
    cleaned = text.strip().lower().replace("：", ":").replace("／", "/")
    if cleaned in RATIO_ALIASES:
        w, h = RATIO_ALIASES[cleaned]
        return w / h
    parts = re.split(r"\s*[:/]\s*", cleaned)
    if len(parts) > 2:
        raise UsageError(f"cannot read the aspect ratio {text!r}", _RATIO_HINT)
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise UsageError(f"cannot read the aspect ratio {text!r}", _RATIO_HINT) from None
    if not all(math.isfinite(n) and n > 0 for n in numbers):
        raise UsageError(f"aspect ratio {text!r} needs positive width and height", _RATIO_HINT)
    ratio = numbers[0] / numbers[1] if len(numbers) == 2 else numbers[0]
    if not _MIN_RATIO <= ratio <= _MAX_RATIO:
        raise UsageError(f"aspect ratio {text!r} is too extreme", "stay between 1:16 and 16:1; " + _RATIO_HINT)
    return ratio


def parse_size(text: str) -> tuple[int, int]:
    """'1024x576', '1024×576', '1024*576' → (1024, 576)."""
    parts = _SIZE_SEPARATORS.split(text.strip())
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() for part in parts):
        raise UsageError(f"cannot read the image size {text!r}", "write WIDTHxHEIGHT in pixels, e.g. 1024x576")
    width, height = int(parts[0]), int(parts[1])
    if width <= 0 or height <= 0:
        raise UsageError(f"image size {text!r} must be positive", "write WIDTHxHEIGHT in pixels, e.g. 1024x576")
    return width, height


def _ratio_distance(bucket: Bucket, ratio: float) -> float:
    # Rounded so that mirror-image candidates (5:3 and 12:5 around 2:1) tie exactly despite float noise.
    return round(abs(math.log(ratio) - math.log(bucket.ratio)), 9)


def nearest_bucket(buckets: Sequence[Bucket | tuple[int, int]], ratio: float | str) -> Bucket:
    """The bucket closest in log-ratio. Ties: larger area, then the less extreme shape, then lower index."""
    if isinstance(ratio, str):
        ratio = parse_ratio(ratio)
    candidates = make_buckets(buckets)
    if not candidates:
        raise ValueError("the model has no resolution buckets")
    if not (math.isfinite(ratio) and ratio > 0):
        raise UsageError(f"aspect ratio {ratio} must be a positive number", _RATIO_HINT)
    return min(
        candidates,
        key=lambda b: (_ratio_distance(b, ratio), -b.width * b.height, abs(math.log(b.ratio)), b.index),
    )


def bucket_for_size(buckets: Sequence[Bucket | tuple[int, int]], width: int, height: int) -> Bucket:
    """The bucket with exactly this size, or a UsageError listing the sizes the model knows."""
    candidates = make_buckets(buckets)
    for bucket in candidates:
        if (bucket.width, bucket.height) == (width, height):
            return bucket
    sizes = ", ".join(f"{b.size} ({b.label})" for b in candidates)
    nearest = nearest_bucket(candidates, width / height) if width > 0 and height > 0 else None
    hint = f"use one of: {sizes}"
    if nearest is not None:
        hint += f"; or --ratio {ratio_label(width, height)} (nearest bucket {nearest.size})"
    raise UsageError(f"{width}x{height} is not a size this model was trained on", hint)


def crop_to_ratio(width: int, height: int, ratio: float) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) box of largest area with `ratio`, to the nearest pixel."""
    if width <= 0 or height <= 0 or not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"cannot crop {width}x{height} to ratio {ratio}")
    if width / height > ratio:
        new_width, new_height = max(1, min(width, round(height * ratio))), height
    else:
        new_width, new_height = width, max(1, min(height, round(width / ratio)))
    left, top = (width - new_width) // 2, (height - new_height) // 2
    return left, top, left + new_width, top + new_height


def scale_size(width: int, height: int, factor: float, multiple: int) -> tuple[int, int]:
    """(width, height) × `factor`, each side rounded to the nearest `multiple` (at least one multiple):
    the size a model runs at when it works at a fraction of the output size (a UNet needs sides that
    its downsampling levels divide)."""
    return (max(multiple, round(width * factor / multiple) * multiple),
            max(multiple, round(height * factor / multiple) * multiple))


def scale_buckets(
    buckets: Sequence[Bucket | tuple[int, int]], factor: float, multiple: int = 8
) -> list[Bucket]:
    """The same list (same indices, same ratios as far as rounding allows) with each side × `factor`,
    rounded to a `multiple` (e.g. 8 for a VAE with 8× downsampling), for models trained at smaller sizes."""
    if not (math.isfinite(factor) and factor > 0) or multiple < 1:
        raise ValueError(f"bad bucket scaling: factor {factor}, multiple {multiple}")
    scaled = [
        Bucket(
            max(multiple, round(b.width * factor / multiple) * multiple),
            max(multiple, round(b.height * factor / multiple) * multiple),
            b.index,
        )
        for b in make_buckets(buckets)
    ]
    sizes = [(b.width, b.height) for b in scaled]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"scaling by {factor} to multiples of {multiple} merges buckets: {sizes}")
    return scaled
