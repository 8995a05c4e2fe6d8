"""`pangu train run|status|export`: train or resume pangu-mini, show where a run stands, export a run.

MindSpore is imported by `run` only (inside the trainer); `status` and `export` read files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pangu_cli.cli_common import emit_json as _emit_json
from pangu_cli.cli_common import err, out
from pangu_cli.errors import Interrupted, ModelError, UsageError

train_app = typer.Typer(help="Train pangu-mini, inspect and export runs · 训练 pangu-mini", no_args_is_help=True)

DEFAULT_RUN = "runs/pangu-mini"
RUN_HELP = "Run folder (checkpoint, log.jsonl, tokenizers)."


def _train_config_arg(value: str | None) -> str | None:
    """A preset name or an existing TOML file, checked before anything is written to the run folder."""
    if value is None:
        return None
    from pangu_cli.training.config import PRESETS, load_config

    if value not in PRESETS and not Path(value).is_file():
        raise UsageError(f"unknown config '{value}'",
                         f"use a preset ({', '.join(PRESETS)}) or the path of a TOML file")
    load_config(value)  # a bad TOML fails here, as a usage error, not after the run folder is made
    return value


def _existing_run(run: str) -> Path:
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UsageError(f"no run folder {run_dir}", f"check --run, or start one: pangu train run --run {run_dir}")
    return run_dir


def _finite(value):
    """NaN/inf are not JSON: the summary of a session without steps has a NaN loss."""
    import math

    return value if not isinstance(value, float) or math.isfinite(value) else None


class _TrainDisplay:
    """Rich progress on stderr, fed by the trainer's `log` lines: JSON records update it, other lines
    are printed above it."""

    def __init__(self, first_step: int, steps: int | None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [SpinnerColumn(), TextColumn("[bold]step {task.fields[step]}[/]")]
        if steps is not None:
            columns += [BarColumn(bar_width=24), MofNCompleteColumn(), TimeRemainingColumn()]
        columns += [TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[losses]}"),
                    TextColumn("{task.fields[lr]}"), TimeElapsedColumn()]
        self.first = first_step
        self.progress = Progress(*columns, console=err)
        self.task = self.progress.add_task("train", total=steps, step=first_step, rate="", losses="", lr="")

    def __enter__(self) -> _TrainDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        if not message.startswith("{"):
            self.progress.console.print(message, markup=False)
            return
        record = json.loads(message)
        losses = "  ".join(f"{role} {value:.4f}" for role, value in record.get("loss", {}).items())
        self.progress.update(self.task, completed=record["step"] - self.first, step=record["step"],
                             rate=f"{record.get('samples_per_s', 0):g} samples/s", losses=losses,
                             lr=f"lr {record['lr']:.2e}" if "lr" in record else "")


def _train_json_log(message: str) -> None:
    if message.startswith("{"):
        _emit_json(json.loads(message))
    else:
        err.print(message, markup=False)


@train_app.command("run")
def train_run(
    run: str = typer.Option(DEFAULT_RUN, "--run", help=RUN_HELP),
    config: Optional[str] = typer.Option(None, "--config", help="Preset (pangu-mini, single, ediff) or a TOML file; "
                                         "default: the run's own config, else pangu-mini."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many more steps."),
    hours: Optional[float] = typer.Option(None, "--hours", help="Stop after this much wall-clock time."),
    inline_data: bool = typer.Option(False, "--inline-data", help="Make batches in the training process "
                                     "(default: a separate data process prepares them ahead)."),
    as_json: bool = typer.Option(False, "--json", help="Progress records and the final summary as JSON lines."),
) -> None:
    """Train pangu-mini, or resume a run where it stopped · 训练（可断点续训）.

    Ctrl-C (or SIGTERM) saves a checkpoint and stops with exit code 130; the same command resumes.
    """
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, not {steps}")
    if hours is not None and hours <= 0:
        raise UsageError(f"--hours must be positive, not {hours:g}")
    source = _train_config_arg(config)
    run_dir = Path(run)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run {run_dir} is a file", "give a folder for the run")
    import os

    from pangu_cli import distributed
    from pangu_cli.training import trainer

    # Data parallel under msrun; its scheduler process never returns from here.
    rank = distributed.join_if_launched(os.environ.get("PANGU_TRAIN_DEVICE", "CPU"))
    options = dict(max_steps=steps, max_seconds=hours * 3600 if hours else None, data_process=not inline_data,
                   rank=rank)
    if rank is not None and not rank.main:  # progress, records and the summary come from rank 0
        trainer.train(source, run_dir, log=None, **options)
        return
    if as_json:
        summary = trainer.train(source, run_dir, log=_train_json_log, **options)
    else:
        meta = trainer.read_checkpoint_meta(run_dir)
        with _TrainDisplay(meta["step"] if meta else 0, steps) as display:
            summary = trainer.train(source, run_dir, log=display.log, **options)
    summary = {key: _finite(value) for key, value in summary.items()}
    if as_json:
        _emit_json({"event": "summary", "run_dir": str(run_dir), **summary})
    else:
        session = summary["step"] - summary["first_step"]
        out.print(f"step {summary['step']} ({session} this session, {summary['reason']}), "
                  f"{sum(summary['samples'].values())} samples, {summary['elapsed_s'] / 3600:.2f} h trained "
                  f"→ {run_dir}", markup=False)
    if summary["reason"] in ("SIGINT", "SIGTERM"):
        raise Interrupted(f"training stopped by {summary['reason']} at step {summary['step']}",
                          "the checkpoint is saved; run the same command again to resume")
    if not as_json:
        err.print(f"export a model folder with: pangu train export --run {run_dir}", markup=False)


def _run_state(events) -> dict:
    """running / stopped / ended (no stop record and no process: killed or crashed) / new, from log.jsonl."""
    import os

    last = None
    for event in events:
        if event.get("event") in ("start", "resume", "stop"):
            last = event
    if last is None:
        return {"state": "new"}
    if last["event"] == "stop":
        return {"state": "stopped", "stop_reason": last.get("reason")}
    pid = last.get("pid")
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return {"state": "ended"}
    except PermissionError:
        pass  # alive, another user's
    return {"state": "running", "pid": pid}


@train_app.command("status")
def train_status(run: str = typer.Option(DEFAULT_RUN, "--run", help=RUN_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Where a training run stands: step, samples, losses, time · 训练进度."""
    from pangu_cli.training import trainer

    run_dir = _existing_run(run)
    info = {**trainer.status(run_dir), **_run_state(trainer.iter_log(run_dir))}
    if as_json:
        _emit_json(info)
        return
    from rich.markup import escape
    from rich.table import Table

    last = info.get("last_log") or {}
    state = info["state"] + (f" (pid {info['pid']})" if "pid" in info else "") + \
        (f" ({info['stop_reason']})" if info.get("stop_reason") else "")
    rows = [("run", escape(str(run_dir))), ("state", state), ("checkpoint", info.get("checkpoint") or "none yet")]
    if info.get("checkpoint"):
        samples = info["samples"]
        rows += [("step", str(info["step"])),
                 ("samples", f"{sum(samples.values())} (" + ", ".join(f"{k} {v}" for k, v in samples.items()) + ")"),
                 ("UNet steps", ", ".join(f"{k} {v}" for k, v in info["unet_steps"].items())),
                 ("trained", f"{info['elapsed_h']:.2f} h")]
    if last:
        rows += [("last log", f"step {last['step']}, phase {last.get('phase', '—')}"),
                 ("losses", "  ".join(f"{k} {v:.4f}" for k, v in last.get("loss", {}).items())
                  + (f"  (attribute head {last['text_aux']:.2f})" if "text_aux" in last else "")),
                 ("speed", f"{last.get('samples_per_s', 0):g} samples/s, {last.get('step_s', 0):g} s/step"),
                 ("lr", f"{last['lr']:.2e}" if "lr" in last else "—")]
    if info.get("last_probes"):  # 1 − MSE(own captions) / MSE(rotated captions): how much the text helps
        rows.append(("text gain", "  ".join(f"{role} {p['text_gain']:.3f} (step {p['step']})"
                                             for role, p in sorted(info["last_probes"].items()))))
    table = Table(title=f"training run {escape(str(run_dir))}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _default_export_dir(run_dir: Path, step: int) -> Path:
    """<user models dir>/<run name>-step<N>: user-writable, and a valid name for `pangu models add`."""
    import re

    from pangu_cli.models.registry import user_models_dir

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).strip("-._")[:48] or "pangu-mini"
    return user_models_dir() / f"{name}-step{step}"


def _check_export_target(target: Path, force: bool) -> None:
    from pangu_cli.models.registry import MANIFEST

    if target.exists() and not target.is_dir():
        raise UsageError(f"--out {target} is a file", "give a folder path")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not force:
        raise UsageError(f"{target} already exists and is not empty",
                         "pass --force to replace it, or choose another --out")
    if not (target / MANIFEST).is_file():  # --force replaces model folders only, never arbitrary folders
        raise UsageError(f"{target} is not a model folder (no {MANIFEST}); not replacing it",
                         "choose another --out")


@train_app.command("export")
def train_export(
    run: str = typer.Option(DEFAULT_RUN, "--run", help=RUN_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Model folder to write (default: "
                                           "<config>/pangu/models/<run>-step<N>)."),
    raw: bool = typer.Option(False, "--raw", help="Export the raw weights instead of the EMA."),
    fp32: bool = typer.Option(False, "--fp32", help="Store float32 (default float16)."),
    sampling: Optional[str] = typer.Option(None, "--sampling", help='JSON overriding the sampling defaults, '
                                           'e.g. {"guidance": 4}.'),
    force: bool = typer.Option(False, "--force", help="Replace an existing model folder at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Write a model folder from a run's checkpoint · 导出模型文件夹."""
    from pangu_cli.training import trainer

    run_dir = _existing_run(run)
    meta = trainer.read_checkpoint_meta(run_dir)
    if meta is None:
        raise ModelError(f"no checkpoint in {run_dir}", f"train first: pangu train run --run {run_dir}")
    overrides = None
    if sampling:
        try:
            overrides = json.loads(sampling)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--sampling is not JSON ({exc.msg})", 'e.g. --sampling \'{"guidance": 4}\'') from None
        if not isinstance(overrides, dict):
            raise UsageError("--sampling must be a JSON object", 'e.g. --sampling \'{"guidance": 4}\'')
    target = out_dir or _default_export_dir(run_dir, meta["step"])
    _check_export_target(target, force)
    dtype = "float32" if fp32 else "float16"
    folder = trainer.export(run_dir, target, ema=not raw, dtype=dtype, sampling=overrides)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    if as_json:
        _emit_json({"folder": str(folder), "size_mb": round(size_mb, 2), "step": meta["step"],
                    "weights": "raw" if raw else "ema", "dtype": dtype})
        return
    print(folder, flush=True)
    err.print(f"exported step {meta['step']} ({'raw' if raw else 'EMA'} weights, {dtype}): {size_mb:.1f} MB")
    err.print(f'draw with:      pangu draw --model {folder} "一只红色的圆形在蓝色背景上"', markup=False)
    err.print(f"or register it: pangu models add {folder.name} {folder}", markup=False)
