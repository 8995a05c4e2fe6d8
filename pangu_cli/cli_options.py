"""Options that `pangu draw` and `pangu batch` share, declared once so that both read the same flags
with the same help (for batch they are the defaults of every prompt-file line)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

Ratio = Annotated[Optional[str], typer.Option("--ratio", "-r", help="Aspect ratio, e.g. 16:9, 4:3, 1:1, 9:16 (nearest bucket).")]
Size = Annotated[Optional[str], typer.Option("--size", help="Exact size WxH: a bucket of `pangu ratios`, or 2–4× one (one-stage super-resolution).")]
Style = Annotated[Optional[List[str]], typer.Option("--style", "-s", help="Style preset, repeatable: anime, photo=0.3, or anime=0.6,photo=0.3.")]
StyleScale = Annotated[Optional[float], typer.Option("--style-scale", help="Multiply every style scale.")]
Negative = Annotated[Optional[str], typer.Option("--negative", help="Negative prompt.")]
Count = Annotated[int, typer.Option("--count", "-n", help="Images per prompt.")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (model default).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", "-g", help="Classifier-free guidance scale.")]
Sampler = Annotated[Optional[str], typer.Option("--sampler", help="euler or dpmpp_2m.")]
Switch = Annotated[Optional[float], typer.Option("--switch", help="Structure→texture hand-over: timestep (200) or fraction (0.2).")]
Recipe = Annotated[Optional[Path], typer.Option("--recipe", help="Coop-Diffusion recipe (TOML): members with models, t ranges, weights, sizes (docs/coop.md).")]
StructureModel = Annotated[Optional[str], typer.Option("--structure-model", help="Model for the large-noise (structure) steps; its structure UNet if it has one.")]
TextureModel = Annotated[Optional[str], typer.Option("--texture-model", help="Model for the small-noise (texture) steps.")]
StructureSize = Annotated[Optional[str], typer.Option("--structure-size", help="Size WxH the structure steps run at (e.g. 32x32); the texture steps run at the output size.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name or folder (default: pangu-mini).")]
Device = Annotated[str, typer.Option("--device", help="auto, CPU, GPU or Ascend.")]
Precision = Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16.")]
Offload = Annotated[bool, typer.Option("--offload", help="Keep one UNet in memory at a time (two-stage models): about half the UNet memory, the texture UNet loads at the switch.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Resolve and print the plan; generate nothing.")]
Json = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
