"""Coop-Diffusion, measured: each member alone, the hard-switch ensemble, the fused ensemble, and one-stage
super-resolution against sampling at the high resolution from noise — prompt adherence (the pangu-mini
scene analyser, held-out captions) and seconds per image, in one table.

    python bench/coop_eval.py --model pangu_cli/assets/pangu-mini --n 50 --lang en
    python bench/coop_eval.py --model DIR --variants switch,sr,full-res --n 20   # a subset

Variants (their recipes are written next to --out and printed):
  structure-only   the structure UNet on every step, at its native (low) size; the result is resized up
  texture-only     the texture UNet on every step, at the output size
  switch           the model's own split: structure above t = 500 at low size, texture below at full size
  fuse             structure and texture both active on 300 <= t < 700, clean estimates averaged 1:1
  sr               --size 2× the bucket: the switch ensemble with the texture steps at 2× (one pass)
  full-res         --size 2× the bucket from noise: both UNets at 2× on every step of their range
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mini_eval  # noqa: E402

VARIANTS = ("structure-only", "texture-only", "switch", "fuse", "sr", "full-res")
COLUMNS = ("background", "colour", "shape", "position", "all")


def recipes(structure_size: tuple[int, int], sr_size: tuple[int, int]) -> dict[str, str | None]:
    sw, sh = structure_size
    big = f"{sr_size[0]}x{sr_size[1]}"
    return {
        "structure-only": f'[[members]]\nname = "structure"\nunet = "structure"\nt = [0, 1000]\nsize = "{sw}x{sh}"\n',
        "texture-only": '[[members]]\nname = "texture"\nunet = "texture"\nt = [0, 1000]\n',
        "switch": None,
        "fuse": ('mode = "fuse"\n[[members]]\nname = "structure"\nunet = "structure"\nt = [300, 1000]\n'
                 f'size = "{sw}x{sh}"\n[[members]]\nname = "texture"\nunet = "texture"\nt = [0, 700]\n'),
        "sr": None,
        "full-res": ('[[members]]\nname = "structure"\nunet = "structure"\nt = [500, 1000]\n'
                     f'size = "{big}"\n[[members]]\nname = "texture"\nunet = "texture"\nt = [0, 500]\n'),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--n", type=int, default=50, help="scenes per language")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/coop-recipes", help="folder for the variant recipes")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; known: {', '.join(VARIANTS)}")

    from pangu_cli.ensemble import plan_for
    from pangu_cli.models.registry import resolve
    from pangu_cli.plan import Options
    from pangu_cli.plan import resolve as resolve_settings

    spec = resolve(args.model)
    base = resolve_settings(spec, Options(prompt="x", seed=0, count=1, steps=args.steps))[0]
    structure = next((m for m in plan_for(spec, base).members if m.role == "structure"), None)
    structure_size = structure.size if structure else (base.width, base.height)
    sr_size = (2 * base.width, 2 * base.height)
    texts = recipes(structure_size, sr_size)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)

    rows = {}
    runner = mini_eval.ModelRunner(args.model, "auto", "fp32")
    scenes = mini_eval.eval_scenes(args.n, args.seed, mini_eval.STYLES)
    for variant in variants:
        recipe = None
        if texts[variant] is not None:
            recipe = folder / f"{variant}.toml"
            recipe.write_text(texts[variant], encoding="utf-8")
        size = f"{sr_size[0]}x{sr_size[1]}" if variant in ("sr", "full-res") else None
        eval_args = mini_eval.parse_args(["--model", args.model, "--n", str(args.n), "--lang", args.lang,
                                          "--steps", str(args.steps), "--guidance", str(args.guidance),
                                          "--seed", str(args.seed)] + (["--size", size] if size else []))
        eval_args.recipe = str(recipe) if recipe else None
        print(f"{variant}: {'recipe ' + str(recipe) if recipe else 'default split'}"
              f"{', size ' + size if size else ''}", flush=True)
        rows[variant] = mini_eval.run_model(variant, runner, scenes, eval_args, [], [])["all"]
    mini_eval.print_table(f"Coop-Diffusion variants: {args.n} held-out scenes per language ({args.lang}), "
                          f"{args.steps} steps, guidance {args.guidance}", rows, columns=COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
