"""Throughput of the synthetic scene world (single thread): images/s per style and size, the cost of
anti-aliasing, the low-quality variant and captions. Optionally writes a contact sheet.

    python bench/scenes.py                      # tables
    python bench/scenes.py --contact /tmp/scenes_contact.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pangu_cli.training.captions import caption  # noqa: E402
from pangu_cli.training.scenes import (  # noqa: E402
    ASPECT_RATIOS,
    STYLES,
    bucket_size,
    render,
    render_low_quality,
    sample_scene,
)


def _rate(fn, items, min_seconds: float = 0.6) -> float:
    """Items per second, repeating the batch until at least min_seconds have passed."""
    fn(items[0])
    done, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _scenes(style: str, count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, styles=(style,)) for _ in range(count)]


def bench(count: int, seed: int) -> None:
    sizes = (32, 64, 128)
    print("render, images/s (single thread, default anti-aliasing)")
    print(f"{'style':<8}" + "".join(f"{f'{s}x{s}':>10}" for s in sizes))
    for style in STYLES:
        scenes = _scenes(style, count, seed)
        rng = np.random.default_rng(seed)
        rates = [_rate(lambda sc, s=s: render(sc, s, s, rng), scenes) for s in sizes]
        print(f"{style:<8}" + "".join(f"{r:>10.0f}" for r in rates))

    print("\nanti-aliasing cost at 64x64, images/s by supersample factor")
    print(f"{'style':<8}" + "".join(f"{f'{k}x':>10}" for k in (1, 2, 3, 4)))
    for style in STYLES:
        scenes = _scenes(style, count, seed)
        rng = np.random.default_rng(seed)
        rates = [_rate(lambda sc, k=k: render(sc, 64, 64, rng, supersample=k), scenes) for k in (1, 2, 3, 4)]
        print(f"{style:<8}" + "".join(f"{r:>10.0f}" for r in rates))

    print("\nother, per second at 64x64-sized images")
    rng = np.random.default_rng(seed)
    mixed = [sample_scene(rng) for _ in range(count)]
    print(f"  sample_scene                      {_rate(lambda _: sample_scene(rng), mixed):>8.0f}")
    print(f"  render_low_quality (factor 4)     "
          f"{_rate(lambda sc: render_low_quality(sc, 64, 64, 4, rng), mixed):>8.0f}")
    wide = bucket_size("16:9", 64 * 64)
    print(f"  render, all styles, 16:9 {wide[0]}x{wide[1]}   "
          f"{_rate(lambda sc: render(sc, *wide, rng), mixed):>8.0f}")
    for lang in ("en", "zh", "mixed"):
        print(f"  caption {lang:<6}                    {_rate(lambda sc: caption(sc, lang, rng), mixed):>8.0f}")


def contact_sheet(path: str, seed: int) -> None:
    """48 random samples: every style, several aspect ratios and sizes, English caption underneath."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    cell, text_h, cols, rows = 200, 56, 8, 6
    sheet = Image.new("RGB", (cols * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    ratios = list(ASPECT_RATIOS)
    for i in range(cols * rows):
        scene = dataclasses.replace(sample_scene(rng), style=STYLES[i % len(STYLES)])
        ratio = ratios[(i // len(STYLES)) % len(ratios)]
        area = (32 * 32, 64 * 64, 128 * 128)[(i // 16) % 3]
        width, height = bucket_size(ratio, area)
        low = i % 11 == 10  # a few low-quality (structure-generator) samples
        image = render_low_quality(scene, width, height, 4, rng) if low else render(scene, width, height, rng)
        zoom = (cell - 8) / max(width, height)
        shown = Image.fromarray(image).resize((round(width * zoom), round(height * zoom)), Image.NEAREST)
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        sheet.paste(shown, (x + (cell - shown.width) // 2, y + (cell - shown.height) // 2))
        label = f"{scene.style} {ratio} {width}x{height}{' LOW' if low else ''}"
        words = caption(scene, "en", rng, style_prob=0.0).split()
        lines, line = [label], ""
        for word in words:
            if len(line) + len(word) > 34:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        draw.multiline_text((x + 4, y + cell - 2), "\n".join(lines[:4]), fill=(0, 0, 0), font=font, spacing=1)
    sheet.save(path)
    print(f"contact sheet: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="distinct scenes per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact", help="write a contact sheet of 48 samples to this PNG path")
    parser.add_argument("--no-bench", action="store_true", help="only write the contact sheet")
    args = parser.parse_args()
    if not args.no_bench:
        bench(args.count, args.seed)
    if args.contact:
        contact_sheet(args.contact, args.seed)


if __name__ == "__main__":
    main()
