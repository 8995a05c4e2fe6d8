"""Seconds per image and peak memory of a model at its default settings, UNets compiled (`ms.jit`, the
default) and in PyNative (`PANGU_JIT=0`, what pangu did before), each mode in a fresh process.

    python bench/mini_speed.py                      # the embedded pangu-mini, 1:1, 3 images per mode
    python bench/mini_speed.py --model FOLDER --ratio 16:9 --images 5

"First image" includes the compile (one per image size); "after" is the median of the others, the time a
batch pays per image. Peak memory is the process's maximum resident set (model load included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "一只红色的圆形在蓝色背景上"


def measure(model: str, ratio: str, images: int) -> dict:
    """Runs in the child process: load, then generate `images` images at the model's defaults."""
    sys.path.insert(0, str(ROOT))
    from pangu_cli import runtime

    runtime.setup("CPU")
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve
    from pangu_cli.ratios import make_buckets, nearest_bucket, parse_ratio
    from pangu_cli.sampling.pipeline import Generator
    from pangu_cli.settings import ImageSettings

    start = time.perf_counter()
    spec = resolve(model)
    generator = Generator(load_model(spec))
    load_s = time.perf_counter() - start
    bucket = nearest_bucket(make_buckets(spec.buckets), parse_ratio(ratio))
    defaults = spec.sampling
    seconds = []
    for seed in range(images):
        settings = ImageSettings(
            prompt=PROMPT, seed=seed, steps=defaults.get("steps", 20), guidance=defaults.get("guidance", 3.0),
            sampler=defaults.get("sampler", "euler"), width=bucket.width, height=bucket.height,
            bucket_index=bucket.index, model=spec.name, switch_t=spec.switch_t,
            switch_lag=defaults.get("switch_lag", False))
        start = time.perf_counter()
        generator.generate(settings)
        seconds.append(time.perf_counter() - start)
    return {"size": f"{bucket.width}x{bucket.height}", "load_s": load_s, "first_s": seconds[0],
            "after_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pangu-mini")
    parser.add_argument("--ratio", default="1:1")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.ratio, args.images)))
        return
    rows = {}
    for label, jit in (("compiled (default)", "1"), ("PyNative (PANGU_JIT=0)", "0")):
        env = {**os.environ, "PANGU_JIT": jit}
        done = subprocess.run([sys.executable, __file__, "--child", "--model", args.model, "--ratio", args.ratio,
                               "--images", str(args.images)], env=env, capture_output=True, text=True, check=True)
        rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
    size = next(iter(rows.values()))["size"]
    print(f"{args.model}, {size}, default settings, {args.images} images per mode, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| mode | load (s) | first image (s) | per image after (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['load_s']:.1f} | {r['first_s']:.1f} | {r['after_s']:.1f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
