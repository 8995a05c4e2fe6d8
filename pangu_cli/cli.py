"""The `pangu` command line. Each command parses, validates, calls one engine function, renders.

Human output goes to stderr (Rich), results to stdout (paths, or JSON with --json), so the tool
composes in shell pipelines. Errors are `PanguError`s, turned into one line and an exit code in
`main()` only. MindSpore is imported only by commands that run a model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pangu_cli import __version__
from pangu_cli import cli_common as common
from pangu_cli import cli_options as opt
from pangu_cli.errors import EXIT_CODES, PanguError, UsageError

EXIT_HELP = "Exit codes: " + ", ".join(f"{code} {text.split(' (')[0]}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="pangu",
    help="Bilingual text-to-image with PanGu-Draw on MindSpore · 中英双语文生图 (PanGu-Draw / MindSpore)\n\n"
         + EXIT_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err, out = common.err, common.out

class _State:
    debug = False
    argv: list[str] = []  # the arguments of this invocation (`batch --workers` hands them to msrun)


def _version(value: bool) -> None:
    if value:
        print(f"pangu {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _State.debug = debug


_read_text_arg, _emit_json = common.read_text_arg, common.emit_json


# ------------------------------------------------------------------------------------------- detect

@app.command()
def detect(
    text: str = typer.Argument(..., help="Text to analyse, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the language decision and the spans sent to each encoder · 语言检测."""
    from pangu_cli.language import detect as detect_language

    result = detect_language(_read_text_arg(text, "text"))
    if as_json:
        _emit_json(result.to_dict())
        return
    out.print(result.lang)
    for span in result.spans:
        out.print(f"  {span.lang}  [{span.start}:{span.end}]  {span.text}")
    if result.words:
        out.print("  jieba: " + " / ".join(result.words))


# ------------------------------------------------------------------------------------------- ratios

@app.command()
def ratios(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the aspect ratios and sizes a model supports · 支持的宽高比与分辨率."""
    from pangu_cli.models import registry
    from pangu_cli.ratios import HIGH_SOLUTION_BASE_SIZE_LIST, make_buckets

    try:
        spec = registry.resolve(model)
        name, sizes = spec.name, spec.buckets
    except PanguError:
        if model:
            raise
        name, sizes = "PanGu-Draw 3.0 (reference 1K list)", HIGH_SOLUTION_BASE_SIZE_LIST
    buckets = make_buckets(sizes)
    if as_json:
        _emit_json({"model": name, "buckets": [b.to_dict() for b in buckets]})
        return
    from rich.table import Table

    table = Table(title=f"{name}: --ratio / --size", title_justify="left")
    for column in ("ratio", "size", "MP", "index"):
        table.add_column(column, justify="right" if column != "ratio" else "left")
    for b in sorted(buckets, key=lambda b: b.ratio):
        table.add_row(b.label, b.size, f"{b.megapixels:.2f}", str(b.index))
    out.print(table)


# ------------------------------------------------------------------------------------------ presets

presets_app = typer.Typer(help="Style presets · 风格预设", no_args_is_help=False, invoke_without_command=True)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets_default(ctx: typer.Context,
                    as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List style presets (packaged and user) · 列出风格预设."""
    if ctx.invoked_subcommand is None:
        presets_list(as_json)


@presets_app.command("list")
def presets_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List style presets."""
    from pangu_cli.presets import load_presets

    library = load_presets()
    if as_json:
        _emit_json([p.to_dict() for p in library.values()])
        return
    from rich.table import Table

    table = Table(title="style presets (--style NAME[=WEIGHT])", title_justify="left")
    for column in ("name", "aliases", "styles", "description"):
        table.add_column(column)
    for p in library.values():
        scales = ", ".join(f"{k}={v:g}" for k, v in p.styles.items() if v) or "—"
        table.add_row(p.name, ", ".join(p.aliases), scales, f"{p.describe('en')} · {p.describe('zh')}")
    out.print(table)


@presets_app.command("show")
def presets_show(name: str = typer.Argument(..., help="Preset name or alias."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show one preset."""
    from pangu_cli.presets import get_preset

    preset = get_preset(name)
    data = preset.to_dict()
    if as_json:
        _emit_json(data)
        return
    for key, value in data.items():
        out.print(f"[bold]{key}[/]: {value}")


# ------------------------------------------------------------------------------------------- models

models_app = typer.Typer(help="Installed models · 模型", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_default(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List models (embedded default first) · 列出模型."""
    if ctx.invoked_subcommand is None:
        models_list(as_json)


def _model_summary(spec) -> dict:
    return {"name": spec.name, "source": spec.source, "path": str(spec.root), "description": spec.description,
            "two_stage": spec.two_stage if "checkpoints" in spec.manifest else None,
            "missing": [str(p) for p in spec.missing_files()] if "checkpoints" in spec.manifest else [],
            "buckets": len(spec.buckets)}


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List models."""
    from pangu_cli.models import registry

    specs = registry.list_models()
    if as_json:
        _emit_json([_model_summary(s) for s in specs])
        return
    if not specs:
        err.print("no models installed — pass --model FOLDER to draw, or see README (pangu-mini)")
        return
    for s in specs:
        info = _model_summary(s)
        state = "missing files" if info["missing"] else "ok"
        out.print(f"[bold]{s.name}[/]  ({s.source}, {state})  {s.description}")


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Model name or folder."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a model's details."""
    from pangu_cli.models import registry

    spec = registry.resolve(name)
    info = _model_summary(spec)
    info.update(sampling=spec.sampling, styles=list(spec.style_prefixes),
                encoders=[f"{e['kind']} ({e.get('language') or 'all'})" for e in spec.manifest["text_encoders"]])
    if as_json:
        _emit_json(info)
        return
    for key, value in info.items():
        out.print(f"[bold]{key}[/]: {value}")


@models_app.command("add")
def models_add(
    name: str = typer.Argument(..., help="Name to register, e.g. pangu-draw-v3."),
    folder: Optional[Path] = typer.Argument(None, help="A model folder with model.json, or a folder holding the "
                                                        "official checkpoints and tokenizer files."),
    structure: Optional[Path] = typer.Option(None, "--structure", help="pangu_high_timestamp-c6344411.ckpt"),
    texture: Optional[Path] = typer.Option(None, "--texture", help="pangu_low_timestamp-127da122.ckpt"),
    text_encoders: Optional[Path] = typer.Option(None, "--text-encoders",
                                                 help="Text-encoder weights (file or folder), if not in --texture."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="Autoencoder weights, if not in --texture."),
    tokenizers: Optional[Path] = typer.Option(None, "--tokenizers",
                                              help="Folder with vocab_zh.txt / vocab.txt and the CLIP BPE files."),
    force: bool = typer.Option(False, "--force", help="Replace a model registered under the same name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Register PanGu-Draw 3.0 checkpoints you own · 注册模型."""
    from pangu_cli.models.official import add_model

    result = add_model(name, folder, structure=structure, texture=texture, text_encoders=text_encoders, vae=vae,
                       tokenizers=tokenizers, force=force)
    if as_json:
        _emit_json(result.to_dict())
        return
    out.print(f"registered [bold]{result.name}[/] → {result.folder} (in {result.registry_file})")
    for note in result.notes:
        err.print(f"  {note}")
    err.print(f"check the files with: pangu models verify {result.name}")


@models_app.command("verify")
def models_verify(
    name: str = typer.Argument(..., help="Model name or folder."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the SHA-256 of the official files."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check a model's files, hashes, tokenizers and checkpoint keys · 校验模型文件."""
    from contextlib import nullcontext

    from pangu_cli import runtime
    from pangu_cli.models import registry
    from pangu_cli.models.official import rich_hash_progress, verify_model

    spec = registry.resolve(name)
    runtime.setup("CPU")  # builds the networks without weights to read their key sets
    with (nullcontext(None) if as_json else rich_hash_progress(err)) as progress:
        report = verify_model(spec, hashes=not no_hash, progress=progress)
    if as_json:
        _emit_json(report.to_dict())
    else:
        for check in report.checks:
            colour, word = ("green", "ok") if check.ok else ("red", "fail")
            out.print(f"[{colour}]{word:>4}[/]  {check.name}: {check.detail}")
        for note in report.notes:
            err.print(f"  note: {note}")
    if not report.ok:
        raise typer.Exit(3)


# -------------------------------------------------------------------------------------------- train
from pangu_cli.cli_train import train_app  # noqa: E402  (the `pangu train` commands live in their own module)

app.add_typer(train_app, name="train")


def _set_offload(offload: bool) -> None:
    """--offload reaches the loader through PANGU_OFFLOAD, which users may also set."""
    if offload:
        import os

        os.environ["PANGU_OFFLOAD"] = "1"


# --------------------------------------------------------------------------------------------- show

@app.command()
def show(image: Path = typer.Argument(..., help="A PNG made by pangu (or by A1111-compatible tools)."),
         as_json: bool = typer.Option(False, "--json", help="Print the recipe as JSON.")) -> None:
    """Print the generation recipe stored in a PNG · 查看图片中的生成参数."""
    from pangu_cli.output import read_recipe

    recipe = read_recipe(image)
    if as_json:
        _emit_json(recipe)
        return
    for key, value in recipe.items():
        out.print(f"[bold]{key}[/]: {value}")


# ------------------------------------------------------------------------------------------- doctor

@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check MindSpore, devices, CPU settings, models and the output folder · 环境检查."""
    from pangu_cli.doctor import run_checks

    checks = run_checks()
    if as_json:
        _emit_json(checks)
        return
    for check in checks:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}[check["status"]]
        out.print(f"[{colour}]{check['status']:>4}[/]  {check['name']}: {check['detail']}")
    if any(c["status"] == "fail" for c in checks):
        raise typer.Exit(4)


# --------------------------------------------------------------------------------------------- draw

def _options(prompt, negative, seed, count, steps, guidance, sampler, style, style_scale, ratio, size, switch,
             ensemble=None):
    from pangu_cli.plan import Options

    return Options(prompt=prompt, negative=negative, seed=seed, count=count, steps=steps, guidance=guidance,
                   sampler=sampler, style=style or None, style_scale=style_scale, ratio=ratio, size=size,
                   switch=switch, ensemble=ensemble)


def _set_ensemble(opts, spec, recipe: Path | None, structure_model: str | None, texture_model: str | None,
                  structure_size: str | None) -> None:
    """Put the ensemble of --recipe, or of the short flags, into `opts` as recipe data. The short flags
    take --switch in (it then leaves `opts`); a recipe sets its own ranges."""
    from pangu_cli import ensemble, plan

    flags = [f for f, v in (("--structure-model", structure_model), ("--texture-model", texture_model),
                            ("--structure-size", structure_size)) if v is not None]
    if recipe is not None:
        if flags:
            raise UsageError(f"--recipe and {flags[0]} both given", "put the member settings in the recipe")
        opts.ensemble = ensemble.load_recipe(recipe).to_dict()
        return
    made = ensemble.from_flags(structure_model, texture_model,
                               plan.resolve_switch(opts.switch, spec.switch_t),
                               structure_size)
    if made is not None:
        opts.ensemble, opts.switch = made.to_dict(), None


@app.command()
def draw(
    prompt: Optional[str] = typer.Argument(None, help="The prompt (中文, English or mixed), or - for stdin."),
    ratio: opt.Ratio = None,
    size: opt.Size = None,
    style: opt.Style = None,
    style_scale: opt.StyleScale = None,
    negative: opt.Negative = None,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (random if omitted; image i uses seed+i)."),
    count: opt.Count = 1,
    steps: opt.Steps = None,
    guidance: opt.Guidance = None,
    sampler: opt.Sampler = None,
    switch: opt.Switch = None,
    recipe_file: opt.Recipe = None,
    structure_model: opt.StructureModel = None,
    texture_model: opt.TextureModel = None,
    structure_size: opt.StructureSize = None,
    model: opt.Model = None,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    offload: opt.Offload = False,
    out_path: Optional[str] = typer.Option(None, "--out", "-o", help="Output file (.png) or folder."),
    name: str = typer.Option("{date}-{seed}-{slug}.png", "--name", help="File-name template inside a folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Re-run the recipe stored in a PNG."),
    dry_run: opt.DryRun = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Draw image(s) from one prompt · 根据提示词生成图像."""
    from pangu_cli import plan
    from pangu_cli.models import registry

    recipe = None
    if from_image is not None:
        from pangu_cli.output import read_recipe

        recipe = read_recipe(from_image)
    elif prompt is None:
        raise UsageError("missing PROMPT", 'give a prompt, e.g. pangu draw "一只红色的猫", or --from IMAGE.png')
    text = _read_text_arg(prompt, "prompt") if prompt is not None else None
    opts = _options(text, negative, seed, count, steps, guidance, sampler, style, style_scale, ratio, size, switch)
    plan.check_options(opts)  # input errors before model errors
    spec = registry.resolve(model or (recipe or {}).get("model"))
    _set_ensemble(opts, spec, recipe_file, structure_model, texture_model, structure_size)
    images = plan.resolve(spec, opts, recipe)
    if recipe and not quiet and recipe.get("model_hash") not in (None, spec.fingerprint()):
        err.print(f"[yellow]note[/]: model '{spec.name}' differs from the one that made {from_image}; "
                  "the image will differ")
    from pangu_cli.runner import Runner, image_record

    runner = Runner(spec, out_path, name, overwrite, quiet=quiet, console=err)
    paths = runner.plan_paths(images)
    if dry_run:
        from pangu_cli.ensemble import describe, plan_for
        from pangu_cli.sampling.guidance import Guidance

        for s, path in zip(images, paths):
            coop = plan_for(spec, s)
            branches = Guidance(s.guidance, tuple(v for _, v in s.active_styles())).n_branches
            if as_json:
                _emit_json({"path": str(path), **s.recipe(),
                            "plan": {"steps": coop.rows(branches), "members": coop.totals(branches)}})
                continue
            out.print(f"{path}  {s.width}x{s.height} ({s.ratio})  seed {s.seed}  {s.steps} steps  "
                      f"{s.sampler}  guidance {s.guidance:g}  styles {s.styles or '—'}", markup=False)
            if s is images[0]:
                for line in describe(coop, branches):
                    out.print("  " + line, markup=False, highlight=False)
        return
    _set_offload(offload)
    runner.open(device, precision)
    for i, s in enumerate(images):
        path, seconds = runner.render(s, i + 1, len(images))
        _emit_json(image_record(s, path, seconds)) if as_json else print(path, flush=True)


@app.command()
def batch(
    source: str = typer.Argument(..., help="Prompt file: .txt (one per line), .jsonl or .csv; - reads stdin."),
    out_path: str = typer.Option("pangu-out", "--out", "-o", help="Output folder (holds the resume manifest)."),
    name: str = typer.Option("{id}-{seed}-{slug}.png", "--name", help="File-name template."),
    ratio: opt.Ratio = None,
    size: opt.Size = None,
    style: opt.Style = None,
    style_scale: opt.StyleScale = None,
    negative: opt.Negative = None,
    seed: int = typer.Option(0, "--seed", help="Base seed: image i of line j gets seed + j·count + i (stable, so runs resume)."),
    count: opt.Count = 1,
    steps: opt.Steps = None,
    guidance: opt.Guidance = None,
    sampler: opt.Sampler = None,
    switch: opt.Switch = None,
    recipe_file: opt.Recipe = None,
    structure_model: opt.StructureModel = None,
    texture_model: opt.TextureModel = None,
    structure_size: opt.StructureSize = None,
    model: opt.Model = None,
    device: opt.Device = "auto",
    precision: opt.Precision = "fp32",
    offload: opt.Offload = False,
    shard: Optional[str] = typer.Option(None, "--shard", help="Process only part i of n (1-based), e.g. 2/4."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Run N workers on this machine under MindSpore's "
                                          "msrun (each takes every N-th prompt); under msrun itself, leave it out."),
    port: Optional[int] = typer.Option(None, "--port", help="msrun's master port for --workers (default: a free one)."),
    strict: bool = typer.Option(False, "--strict", help="A bad line stops the run before anything is drawn."),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="Prompt-file encoding (default: UTF-8, GB18030 detected)."),
    dry_run: opt.DryRun = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Draw every prompt of a file, resumably · 批量生成（可断点续跑）.

    Re-running the same command skips images already complete (recorded in OUT/.pangu/) and makes
    the rest. Exit code 5 if some lines could not be drawn.
    """
    from pangu_cli import batch as batch_files
    from pangu_cli import plan
    from pangu_cli.models import registry
    from pangu_cli.runner import BatchReport, Runner, image_record, plan_batch, run_batch

    from pangu_cli import distributed

    if distributed.under_msrun() and (workers is not None or shard is not None):
        raise UsageError(f"{'--workers' if workers is not None else '--shard'} given to a worker that msrun "
                         "started", "msrun splits the prompts between its workers; leave it out")
    rank = distributed.join_if_launched(device, precision)  # msrun's scheduler never returns from here
    if rank is not None:
        shard = rank.shard if rank.size > 1 else None
        quiet = quiet or not rank.main  # human progress from rank 0; --json records from every rank
    elif workers is not None:
        distributed.check_workers(workers)
        if shard is not None:
            raise UsageError("--shard and --workers both given", "--workers splits the prompts itself")
        if source == "-":
            raise UsageError("--workers cannot read prompts from stdin", "save them to a file and give its path")
    elif port is not None:
        raise UsageError("--port needs --workers", "give --workers N, or leave --port out")
    jobs = batch_files.read_jobs(source, encoding=encoding)
    for warning in jobs.warnings:
        err.print(f"[yellow]warning[/]: {warning}")
    jobs.check(strict)
    report = BatchReport(failed_lines=[str(e) for e in jobs.errors])
    shard = shard or batch_files.shard_from_env()
    selected = batch_files.shard(list(jobs), shard) if shard else list(jobs)
    opts = _options(None, negative, None, count, steps, guidance, sampler, style, style_scale, ratio, size, switch)
    plan.check_options(opts)  # a bad flag is a usage error, not a failure of every line
    spec = registry.resolve(model)
    _set_ensemble(opts, spec, recipe_file, structure_model, texture_model, structure_size)
    if opts.ensemble is not None:  # one usage error for a bad recipe, not a failure of every line
        plan.check_ensemble(spec, opts)
    planned = plan_batch(spec, selected, opts, seed, out_path, name, strict, report)
    runner = Runner(spec, out_path, name, overwrite=False, quiet=quiet, console=err)

    def emit(item, path, seconds, status):
        if as_json:
            _emit_json({**image_record(item.settings, path, seconds or 0.0),
                        "seconds": None if seconds is None else round(seconds, 3),
                        "status": status, "id": item.job.id, "line": item.job.line})

    if dry_run:
        for item in planned:
            _emit_json({"id": item.job.id, "line": item.job.line, "key": item.key, **item.settings.recipe()}) \
                if as_json else out.print(f"{item.job.id}  seed {item.settings.seed}  "
                                          f"{item.settings.width}x{item.settings.height}  {item.settings.prompt}")
        for failure in report.failed_lines:  # a dry run is how one checks a file: name its bad lines
            err.print(f"[red]failed[/] {failure}")
        if report.exit_code:
            raise typer.Exit(report.exit_code)
        return
    if workers is not None:
        code = _run_workers(workers, port, out_path, planned, report, as_json, quiet)
        raise typer.Exit(code)
    part = "manifest" if not shard else "manifest-" + shard.replace("/", "of")
    if rank is not None:
        distributed.check_shared_folder(out_path, rank)
    _set_offload(offload)
    run_batch(runner, planned, part, emit, device, precision, report, out_path)
    for failure in report.failed_lines:
        err.print(f"[red]failed[/] {failure}")
    runner.note(f"{report.done} made, {report.adopted} recovered, {report.skipped} already complete, "
                f"{len(report.failed_lines)} failed lines" + (f" (rank {rank.rank} of {rank.size})" if rank else ""))
    if rank is not None:
        # msrun takes a worker's non-zero exit for a crash and stops the others, so bad lines are reported
        # (above) but do not end the worker with code 5 (`--workers` reports them with its own exit code).
        return
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _run_workers(workers: int, port: int | None, out_path: str, planned, report, as_json: bool,
                 quiet: bool) -> int:
    """`batch --workers N`: the same command under msrun, with an overall progress bar read from the
    workers' manifest parts; --json records are collected from the workers' logs, each image once."""
    import signal
    import subprocess

    from pangu_cli.runtime import raise_interrupt  # no MindSpore: runtime imports it in setup() only

    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pangu_cli import batch as batch_files
    from pangu_cli import distributed

    argv = _without_options(_State.argv, {"--workers", "--port"})
    todo = {p.key for p in planned}

    def complete() -> int:
        done = batch_files.Completed.load(out_path) if Path(out_path).is_dir() else ()
        return sum(1 for key in todo if key in done)

    before = complete()
    previous_term = signal.signal(signal.SIGTERM, raise_interrupt)  # a scheduler's SIGTERM stops msrun too
    process, logs = distributed.launch(workers, port, Path(out_path), argv)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=quiet)
    try:
        with progress:
            task = progress.add_task(f"{workers} workers", total=len(todo))
            while process.poll() is None:
                time.sleep(1.0)
                progress.update(task, completed=complete())
    except KeyboardInterrupt:
        # msrun stops its workers (each in its own session) on SIGINT only; SIGTERM would orphan them.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    if as_json:
        for record in distributed.worker_records(logs):
            _emit_json(record)
    finished = complete()
    missing = len(todo) - finished
    for failure in report.failed_lines:
        err.print(f"[red]failed[/] {failure}")
    if process.returncode != 0 or missing:
        raise PanguError(f"msrun ended with code {process.returncode} and {missing} images missing",
                         f"see the worker logs in {logs}; run the same command again to finish")
    if not quiet:
        err.print(f"{finished} images complete in {out_path} ({finished - before} new) with {workers} workers")
    return report.exit_code


def _without_options(argv: list[str], names: set[str]) -> list[str]:
    """argv with the options `names` (each taking one value, as `--x V` or `--x=V`) removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(name + "=") for name in names):
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    import click

    _State.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except PanguError as exc:
        if _State.debug:
            err.print_exception()
        err.print(f"[red]error[/]: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure is a bug: one line unless --debug
        if _State.debug:
            err.print_exception()
        else:
            err.print(f"[red]internal error[/]: {type(exc).__name__}: {exc} (run with --debug for details)")
        sys.exit(1)
    if code == 130:  # Typer turns KeyboardInterrupt into a returned 130, silently
        err.print("interrupted — finished images are kept; run the same command again to resume")
    sys.exit(code if isinstance(code, int) else 0)
