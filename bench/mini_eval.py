"""Prompt-following scores of a pangu-mini model: generate images for seeded random scenes' captions,
read them back with the scene analyser (pangu_cli.training.evaluate) and tabulate accuracy per
attribute and language, with seconds per image.

    python bench/mini_eval.py --model FOLDER --n 64 --lang en,zh,mixed --split heldout
    python bench/mini_eval.py --model TWO_STAGE --model SINGLE --steps 20 --guidance 3   # side by side
    python bench/mini_eval.py --oracle --n 64            # scores clean renders instead: must be ~100%
    python bench/mini_eval.py --validate                 # the analyser's own accuracy on renders

Scenes are the same for every language and model (seed → scenes), captions come from the held-out
templates by default (unseen phrasings). The style is asked for as the model was trained: the
style's trigger prefix from model.json (`--style-mode prefix`), or as a style branch of the guidance
(`branch`), or in words only (`words`), or not at all (`none`); only `branch` runs style branches
(the model's default ones are off otherwise). Attribute accuracy: background
colour, object colour / shape / position / size (all objects right), relation (two-object scenes),
count (exactly the objects asked for), style (the image reads as the asked-for style), all (every
attribute the scene has, style aside). A scene gets the same seed (initial noise) in every language
and model. `--sheet out.png` draws the first images with what was asked and what failed; `--json
out.jsonl` writes one record per image (prompt, what was read, per-attribute verdicts, seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pangu_cli.training.captions import LANGS, caption  # noqa: E402
from pangu_cli.training.evaluate import analyse, score, style_of  # noqa: E402
from pangu_cli.training.scenes import (  # noqa: E402
    ASPECT_RATIOS,
    STYLES,
    Scene,
    bucket_size,
    render,
    render_low_quality,
    sample_scene,
)

COLUMNS = ("background", "colour", "shape", "position", "size", "relation", "count", "style", "all")
STYLE_MODES = ("prefix", "branch", "words", "none")


@dataclass
class Tally:
    """Right / asked counts per attribute, and generation time."""

    right: dict[str, int] = field(default_factory=dict)
    asked: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0

    def add(self, result: dict, style_right: bool | None, seconds: float = 0.0) -> None:
        values = {key: result.get(key) for key in COLUMNS if key != "style"}
        values["style"] = style_right
        for key, value in values.items():
            if value is None:
                continue
            self.asked[key] = self.asked.get(key, 0) + 1
            self.right[key] = self.right.get(key, 0) + bool(value)
        self.seconds += seconds
        self.images += 1

    def merge(self, other: "Tally") -> None:
        for key, count in other.asked.items():
            self.asked[key] = self.asked.get(key, 0) + count
            self.right[key] = self.right.get(key, 0) + other.right.get(key, 0)
        self.seconds += other.seconds
        self.images += other.images

    def accuracy(self, key: str) -> float | None:
        return 100.0 * self.right[key] / self.asked[key] if self.asked.get(key) else None


def print_table(title: str, rows: dict[str, Tally], columns=COLUMNS, timing: bool = True) -> None:
    print(f"\n{title}")
    header = f"{'':<14}{'n':>5}" + "".join(f"{c[:8]:>9}" for c in columns) + ("     s/img" if timing else "")
    print(header)
    print("-" * len(header))
    for name, tally in rows.items():
        cells = []
        for column in columns:
            value = tally.accuracy(column)
            cells.append(f"{value:>8.1f}%" if value is not None else f"{'—':>9}")
        seconds = f"{tally.seconds / tally.images:>10.2f}" if timing and tally.images else ""
        print(f"{name:<14}{tally.images:>5}" + "".join(cells) + seconds)


# ------------------------------------------------------------------------------------------------ scenes
def eval_scenes(n: int, seed: int, styles: tuple[str, ...]) -> list[Scene]:
    """The n seeded scenes every language and model is scored on."""
    rng = np.random.default_rng([seed, 0])
    return [sample_scene(rng, styles=styles) for _ in range(n)]


def eval_caption(scene: Scene, lang: str, index: int, seed: int, split: str, style_words: float) -> str:
    rng = np.random.default_rng([seed, 1 + LANGS.index(lang), index])
    return caption(scene, lang, rng, split=split, style_prob=style_words)


# --------------------------------------------------------------------------------------------- generation
class ModelRunner:
    """The CLI's engine, thinly: model folder → loaded networks → one image per (prompt, seed)."""

    def __init__(self, model: str, device: str, precision: str):
        from pangu_cli import runtime
        from pangu_cli.models.loader import load_model
        from pangu_cli.models.registry import resolve
        from pangu_cli.sampling.pipeline import Generator

        self.spec = resolve(model)
        self.info = runtime.setup(device=device, precision=precision)
        self.generator = Generator(load_model(self.spec, precision=precision),
                                   load=lambda spec: load_model(spec, precision=precision))

    def settings(self, prompt: str, seed: int, args, style: str):
        from pangu_cli.plan import Options, resolve

        ensemble = None
        if getattr(args, "recipe", None):
            from pangu_cli.ensemble import load_recipe

            ensemble = load_recipe(args.recipe).to_dict()
        options = Options(prompt=prompt, seed=seed, count=1, steps=args.steps, guidance=args.guidance,
                          sampler=args.sampler, ratio=args.ratio, size=args.size, switch=args.switch,
                          ensemble=ensemble,
                          # outside branch mode no style branch runs (not even the model's default
                          # ones): the prompt alone asks for the style
                          style=[style] if args.style_mode == "branch" else ["none"])
        return resolve(self.spec, options)[0]

    def generate(self, prompt: str, seed: int, args, style: str) -> tuple[np.ndarray, float]:
        settings = self.settings(prompt, seed, args, style)
        start = time.perf_counter()
        pixels = self.generator.generate(settings).pixels
        return pixels, time.perf_counter() - start

    def warm_up(self, args, style: str) -> None:
        """One short untimed generation, so first-call setup does not count as seconds per image."""
        settings = self.settings("warm-up", 0, args, style)
        settings.steps = min(settings.steps, 2)
        self.generator.generate(settings)

    def prompt(self, text: str, style: str, mode: str) -> str:
        if mode == "prefix":
            return self.spec.style_prefixes.get(style, "") + text
        return text


def oracle_size(args) -> tuple[int, int]:
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
        return width, height
    return bucket_size(args.ratio or "1:1", 64 * 64)


def run_model(label: str, runner: ModelRunner | None, scenes: list[Scene], args, records: list,
              sheet_cells: list) -> dict[str, Tally]:
    """Score one model (or the oracle: runner None) on every language; per-language tallies."""
    rows: dict[str, Tally] = {}
    style_words = {"words": 1.0, "none": 0.0}.get(args.style_mode, args.style_words)
    if runner is not None and scenes:
        runner.warm_up(args, scenes[0].style)
    for lang in args.lang:
        tally = Tally()
        for i, scene in enumerate(scenes):
            text = eval_caption(scene, lang, i, args.seed, args.split, style_words)
            seed = args.seed * 100_003 + i  # the same noise for a scene in every language and model
            if runner is None:
                width, height = oracle_size(args)
                rng = np.random.default_rng([args.seed, 2, i])
                pixels = (render_low_quality(scene, width, height, 4.0, rng) if args.oracle == "low"
                          else render(scene, width, height, rng))
                prompt, seconds = text, 0.0
            else:
                prompt = runner.prompt(text, scene.style, args.style_mode)
                pixels, seconds = runner.generate(prompt, seed, args, scene.style)
            if args.analyse_style == "scene":
                analysis, guessed = analyse(pixels, style=scene.style), style_of(pixels)
            else:  # the analysis reads the style itself
                analysis = analyse(pixels)
                guessed = analysis.style
            result = score(scene, analysis)
            tally.add(result, guessed == scene.style, seconds)
            records.append({"model": label, "lang": lang, "index": i, "seed": seed, "prompt": prompt,
                            "scene_style": scene.style, "read_style": guessed, "seconds": round(seconds, 3),
                            "read": {"background": analysis.background,
                                     "objects": [{"colour": o.colour, "shape": o.shape, "position": o.position,
                                                  "size": o.size} for o in analysis.objects]},
                            "right": {k: result[k] for k in COLUMNS if k in result}})
            if len(sheet_cells) < args.sheet_count:
                sheet_cells.append((pixels, f"{Path(label).name or label} {lang} #{i}", scene, result))
            if args.progress:
                print(f"\r{label} {lang}: {i + 1}/{len(scenes)}", end="", file=sys.stderr, flush=True)
        if args.progress:
            print(file=sys.stderr)
        rows[lang] = tally
    total = Tally()
    for tally in rows.values():
        total.merge(tally)
    rows["all"] = total
    return rows


# ---------------------------------------------------------------------------------------------- sheet
def _scene_label(scene: Scene) -> list[str]:
    lines = [f"{scene.style}, {scene.background} ground"]
    for obj in scene.objects:
        lines.append(f"{obj.size} {obj.colour} {obj.shape} {obj.region}")
    if scene.relation:
        lines.append(f"A {scene.relation.replace('_', ' ')} B")
    return lines


_SHORT = {"background": "ground", "colour": "colour", "shape": "shape", "position": "place", "size": "size",
          "relation": "relation", "count": "count"}


def write_sheet(path: str, cells: list, columns: int = 8, cell: int = 160) -> None:
    """A contact sheet: each image upscaled, the scene asked for, and the attributes that failed."""
    from PIL import Image, ImageDraw, ImageFont

    text_h = 62
    rows = max(1, (len(cells) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (pixels, title, scene, result) in enumerate(cells):
        x, y = (k % columns) * cell, (k // columns) * (cell + text_h)
        height, width = pixels.shape[:2]
        zoom = (cell - 8) / max(width, height)
        shown = Image.fromarray(pixels).resize((max(1, round(width * zoom)), max(1, round(height * zoom))),
                                               Image.NEAREST)
        sheet.paste(shown, (x + (cell - shown.width) // 2, y + (cell - shown.height) // 2))
        wrong = [_SHORT.get(key, key) for key in COLUMNS[:-1] if result.get(key) is False]
        verdict = "ok" if result.get("all") else "wrong: " + " ".join(wrong)
        lines = [title] + _scene_label(scene)[:3] + [verdict]
        colour = (0, 110, 0) if result.get("all") else (170, 0, 0)
        draw.multiline_text((x + 4, y + cell - 4), "\n".join(lines), fill=colour, font=font, spacing=1)
    sheet.save(path)
    print(f"\ncontact sheet: {path}")


# ------------------------------------------------------------------------------------------- validation
def validate(args) -> None:
    """The analyser on clean renders (and softened ones): accuracy per style, size and ratio."""
    from PIL import Image, ImageFilter

    configs = [("64x64", [(64, 64)], args.n or 500, 0.0),
               ("ratios 64²", [bucket_size(r, 64 * 64) for r in ASPECT_RATIOS if r != "1:1"],
                max(200, (args.n or 500) * 2 // 5), 0.0),
               ("32x32", [(32, 32)], max(200, (args.n or 500) * 2 // 5), 0.0),
               ("128x128", [(128, 128)], max(100, (args.n or 500) // 5), 0.0),
               ("64x64 blur+noise", [(64, 64)], max(200, (args.n or 500) * 2 // 5), 1.0)]
    per_object_columns = ("colour", "shape", "position", "size")
    for name, sizes, count, blur in configs:
        rows: dict[str, Tally] = {}
        small, big = Tally(), Tally()
        start = time.process_time()
        for style in STYLES:
            tally = Tally()
            rng = np.random.default_rng([args.seed, STYLES.index(style), count])
            for i in range(count):
                scene = sample_scene(rng, styles=(style,))
                width, height = sizes[i % len(sizes)]
                pixels = render(scene, width, height, rng)
                if blur:  # a model's samples are softer than renders: Gaussian blur, then noise
                    pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(blur)))
                    pixels = np.clip(pixels + rng.normal(0.0, 4.0, pixels.shape), 0, 255).astype(np.uint8)
                analysis = analyse(pixels)
                result = score(scene, analysis)
                tally.add(result, analysis.style == style)
                for obj, checks in zip(scene.objects, result["objects"]):
                    (small if obj.size == "small" else big).add(dict(checks), None)
            rows[style] = tally
        total = Tally()
        for tally in rows.values():
            total.merge(tally)
        rows["all"] = total
        seconds = (time.process_time() - start) / max(1, total.images)
        print_table(f"{name}: {count} scenes per style  ({seconds * 1000:.0f} ms CPU per image)", rows,
                    timing=False)
        print_table("  per object, by size", {"small": small, "big": big}, per_object_columns, timing=False)
    hard_cases(args)


def hard_cases(args) -> None:
    """Known hard cases, each on a few hundred renders."""
    cases = [
        ("anime, black ground, 64", dict(styles=("anime",)), "black", 64),
        ("anime, a black object, 64", dict(styles=("anime",)), "black-object", 64),
        ("photo, white/grey/black only, 64", dict(styles=("photo",), colours=("white", "grey", "black")), None, 64),
        ("art, 32", dict(styles=("art",)), None, 32),
        ("all styles, small objects only, 32", dict(), "small", 32),
    ]
    rows = {}
    for name, kwargs, condition, size in cases:
        rng = np.random.default_rng([args.seed, 99, size])
        tally, seen = Tally(), 0
        while seen < 300:
            scene = sample_scene(rng, **kwargs)
            if condition == "black" and scene.background != "black":
                continue
            if condition == "black-object" and not any(o.colour == "black" for o in scene.objects):
                continue
            if condition == "small" and any(o.size != "small" for o in scene.objects):
                continue
            seen += 1
            analysis = analyse(render(scene, size, size, rng))
            tally.add(score(scene, analysis), analysis.style == scene.style)
        rows[name[:38]] = tally
    print("\nknown hard cases (300 scenes each)")
    header = f"{'':<40}" + "".join(f"{c[:8]:>9}" for c in COLUMNS)
    print(header)
    print("-" * len(header))
    for name, tally in rows.items():
        cells = [tally.accuracy(c) for c in COLUMNS]
        print(f"{name:<40}" + "".join(f"{v:>8.1f}%" if v is not None else f"{'—':>9}" for v in cells))


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="model folder or name (repeatable)")
    parser.add_argument("--n", type=int, default=None, help="scenes per language (default 64; --validate 500)")
    parser.add_argument("--lang", default="en,zh,mixed", help="comma-separated: en, zh, mixed")
    parser.add_argument("--split", default="heldout", choices=("train", "heldout", "all"),
                        help="caption templates (heldout: phrasings unseen in training)")
    parser.add_argument("--styles", default=",".join(STYLES), help="scene styles to sample")
    parser.add_argument("--style-mode", default="prefix", choices=STYLE_MODES,
                        help="how the style is asked for (see the module docstring)")
    parser.add_argument("--style-words", type=float, default=0.4,
                        help="probability a caption also names the style in words (prefix/branch modes)")
    parser.add_argument("--analyse-style", default="guess", choices=("guess", "scene"),
                        help="analyse with the style read off the image, or the one asked for")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sampler", default=None, help="euler | dpmpp_2m (default: the model's)")
    parser.add_argument("--switch", type=float, default=None, help="structure→texture switch (t or fraction)")
    parser.add_argument("--recipe", default=None, help="Coop-Diffusion recipe (TOML) every model runs with")
    parser.add_argument("--ratio", default=None, help="aspect ratio, e.g. 1:1 (default: the model's square bucket)")
    parser.add_argument("--size", default=None, help="WxH instead of --ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--oracle", nargs="?", const="clean", choices=("clean", "low"), default=None,
                        help="skip generation and score renders (clean; or low: low-quality upscaled)")
    parser.add_argument("--validate", action="store_true", help="measure the analyser on renders and exit")
    parser.add_argument("--sheet", help="write a contact sheet PNG of the first --sheet-count images")
    parser.add_argument("--sheet-count", type=int, default=32)
    parser.add_argument("--json", dest="json_path", help="write per-image records (JSON lines) here")
    parser.add_argument("--progress", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    args.lang = [lang.strip() for lang in args.lang.split(",") if lang.strip()]
    unknown = [lang for lang in args.lang if lang not in LANGS]
    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip())
    if unknown or not set(styles) <= set(STYLES) or not styles:
        parser.error(f"--lang takes {', '.join(LANGS)}; --styles takes {', '.join(STYLES)}")
    args.styles = styles
    if not args.validate and not args.oracle and not args.model:
        parser.error("give --model FOLDER (repeatable), or --oracle, or --validate")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.validate:
        validate(args)
        return 0
    args.n = args.n or 64
    scenes = eval_scenes(args.n, args.seed, args.styles)
    records, sheet_cells, summary = [], [], {}
    labels = ["oracle"] if args.oracle else args.model
    for label in labels:
        runner = None if args.oracle else ModelRunner(label, args.device, args.precision)
        if runner is not None:
            print(f"{label}: {runner.spec.name} ({'two-stage' if runner.spec.two_stage else 'single'}) "
                  f"on {runner.info.device}")
        rows = run_model(label, runner, scenes, args, records, sheet_cells)
        what = "renders (oracle)" if runner is None else f"{args.steps} steps, guidance {args.guidance}"
        print_table(f"{label}: {args.n} scenes per language, {args.split} captions, {what}", rows,
                    timing=runner is not None)
        short = Path(label).name or label
        summary[short if short not in summary else label] = rows["all"]
    if len(summary) > 1:
        print_table("all languages, side by side", summary)
    if not args.oracle:
        import resource  # peak resident memory of this process: every model it loaded, and the analyser

        print(f"peak memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    if args.sheet:
        write_sheet(args.sheet, sheet_cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
