"""Images per second of `pangu batch` with 1 worker and with N workers under msrun (`--workers N`), on
the same prompts, each run into a fresh folder, timed from command start to exit (MindSpore start-up,
model load and compile included, as a user sees it), plus the steady per-image time of one worker.

    python bench/msrun_batch.py --model pangu_cli/assets/pangu-mini --prompts 16 --workers 2

On a machine with C cores every worker shares them: N workers only help when one worker leaves cores
idle, which a compiled CPU UNet on 2 cores does not. The per-image time gives the estimate for cards:
with one worker per card, images/s ≈ cards / seconds-per-image on one card.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_batch(model: str, prompts: Path, out: Path, workers: int, steps: int | None) -> tuple[float, list[dict]]:
    command = [sys.executable, "-m", "pangu_cli", "batch", str(prompts), "--out", str(out), "--model", model,
               "--json", "--quiet"]
    if workers > 1:
        command += ["--workers", str(workers)]
    if steps:
        command += ["--steps", str(steps)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"batch with {workers} worker(s) failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "prompts.txt"
        colours, shapes = ["red", "blue", "green", "yellow"], ["circle", "square", "star", "heart"]
        source.write_text("".join(f"a {colours[i % 4]} {shapes[i // 4 % 4]} on a white background\n"
                                  for i in range(args.prompts)), encoding="utf-8")
        rows = []
        for workers in (1, args.workers):
            seconds, records = run_batch(args.model, source, Path(tmp) / f"out-{workers}", workers, args.steps)
            per_image = sorted(r["seconds"] for r in records)
            steady = per_image[len(per_image) // 2] if per_image else float("nan")
            rows.append((workers, len(records), seconds, len(records) / seconds, steady))
    print(f"{'workers':>7} {'images':>6} {'wall s':>8} {'images/s':>9} {'median s/image (one worker)':>28}")
    for workers, images, seconds, rate, steady in rows:
        print(f"{workers:>7} {images:>6} {seconds:>8.1f} {rate:>9.3f} {steady:>28.2f}")
    one = rows[0][4]
    print(f"estimate, one worker per card: 8 cards ≈ {8 / one:.1f} images/s at this model's "
          f"{one:.2f} s/image (replace with the per-image time measured on one card)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
