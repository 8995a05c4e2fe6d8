"""`python -m pangu_cli.training train|export|status|sheet …`: train, export and inspect pangu-mini runs.

    python -m pangu_cli.training train --run runs/pangu-mini [--config my.toml] [--hours 2]
    python -m pangu_cli.training status --run runs/pangu-mini
    python -m pangu_cli.training export --run runs/pangu-mini --out pangu_cli/assets/pangu-mini
    python -m pangu_cli.training sheet --model pangu_cli/assets/pangu-mini --out /tmp/sheet.png

`train` resumes from the run's checkpoint when there is one (with the run's own config unless
--config is given); stop it with Ctrl-C or SIGTERM: it checkpoints before exiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_RUN = "runs/pangu-mini"
DEFAULT_ASSET = str(Path(__file__).resolve().parent.parent / "assets" / "pangu-mini")

SHEET_PROMPTS = (
    ("一只红色的圆形在蓝色背景上", "16:9"),
    ("a yellow star in the top-left corner on a green background", "1:1"),
    ("黑色背景上，右下角有一个白色的大方块", "1:1"),
    ("a small blue triangle above a big orange heart, white background", "3:4"),
    ("紫色的月牙在画面左边，黄色背景", "4:3"),
    ("a red 圆环 in the centre, grey background", "1:1"),
    ("anime style: a pink fish on the right, blue background", "16:9"),
    ("oil painting of a green hexagon at the bottom, brown background", "1:1"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pangu_cli.training", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train or resume a run")
    t.add_argument("--run", default=DEFAULT_RUN, help="run directory (checkpoints, log.jsonl)")
    t.add_argument("--config", default=None,
                   help="TOML config or a preset: pangu-mini, single (one UNet, all t, full resolution: the "
                        "comparison run), ediff (shared UNet first, then split); default: the run's own")
    t.add_argument("--steps", type=int, default=None, help="stop after this many more steps")
    t.add_argument("--hours", type=float, default=None, help="stop after this much wall-clock time")
    t.add_argument("--inline-data", action="store_true", help="make batches in the training process")
    e = sub.add_parser("export", help="write the model folder from a run's checkpoint (EMA weights)")
    e.add_argument("--run", default=DEFAULT_RUN)
    e.add_argument("--out", default=DEFAULT_ASSET)
    e.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    e.add_argument("--fp32", action="store_true", help="store float32 (default float16)")
    e.add_argument("--sampling", default=None, help='JSON overriding sampling defaults, e.g. {"guidance": 4}')
    s = sub.add_parser("status", help="where a run stands")
    s.add_argument("--run", default=DEFAULT_RUN)
    c = sub.add_parser("sheet", help="a contact sheet of a model folder on fixed prompts")
    c.add_argument("--model", default=DEFAULT_ASSET)
    c.add_argument("--out", default="sheet.png")
    c.add_argument("--seeds", type=int, default=2)
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--guidance", type=float, default=None)
    c.add_argument("--prompts", type=int, default=len(SHEET_PROMPTS), help="use the first N sheet prompts")
    return p


def contact_sheet(model_dir: str | Path, out: str | Path, seeds: int = 2, steps: int | None = None,
                  guidance: float | None = None, prompts=SHEET_PROMPTS) -> dict:
    """Generate each prompt with `seeds` seeds, paste them into one PNG (upscaled ×3); return timings."""
    import time

    import numpy as np
    from PIL import Image

    from pangu_cli import runtime
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve
    from pangu_cli.ratios import make_buckets, nearest_bucket, parse_ratio
    from pangu_cli.sampling.pipeline import Generator
    from pangu_cli.settings import ImageSettings

    runtime.setup("CPU")
    spec = resolve(str(model_dir))
    model = load_model(spec)
    gen = Generator(model)
    sampling = spec.sampling
    tiles, seconds = [], []
    for prompt, ratio in prompts:
        bucket = nearest_bucket(make_buckets(spec.buckets), parse_ratio(ratio))
        row = []
        for seed in range(seeds):
            settings = ImageSettings(
                prompt=prompt, seed=seed, steps=steps or sampling.get("steps", 20),
                guidance=guidance if guidance is not None else sampling.get("guidance", 3.0),
                sampler=sampling.get("sampler", "euler"), width=bucket.width, height=bucket.height,
                bucket_index=bucket.index, model=spec.name, switch_t=spec.switch_t,
                switch_lag=sampling.get("switch_lag", False))
            start = time.perf_counter()
            row.append(gen.generate(settings).pixels)
            seconds.append(time.perf_counter() - start)
        tiles.append(row)
    scale, pad = 3, 6
    cell_w = max(p.shape[1] for row in tiles for p in row) * scale + pad
    cell_h = max(p.shape[0] for row in tiles for p in row) * scale + pad
    sheet = Image.new("RGB", (cell_w * seeds + pad, cell_h * len(tiles) + pad), (255, 255, 255))
    for r, row in enumerate(tiles):
        for c, pixels in enumerate(row):
            image = Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
            sheet.paste(image, (pad + c * cell_w, pad + r * cell_h))
    sheet.save(out)
    return {"images": len(seconds), "seconds_per_image": float(np.mean(seconds)), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pangu_cli.training import trainer

    if args.command == "train":
        seconds = args.hours * 3600 if args.hours else None
        summary = trainer.train(args.config, args.run, max_steps=args.steps, max_seconds=seconds,
                                data_process=not args.inline_data)
        print(json.dumps(summary, ensure_ascii=False))
    elif args.command == "export":
        sampling = json.loads(args.sampling) if args.sampling else None
        out = trainer.export(args.run, args.out, ema=not args.raw, dtype="float32" if args.fp32 else "float16",
                             sampling=sampling)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"exported {out} ({size / 1e6:.1f} MB)")
    elif args.command == "status":
        print(json.dumps(trainer.status(args.run), ensure_ascii=False, indent=1))
    elif args.command == "sheet":
        print(json.dumps(contact_sheet(args.model, args.out, args.seeds, args.steps, args.guidance,
                                       SHEET_PROMPTS[:args.prompts])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
