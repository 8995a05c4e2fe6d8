"""Runs resolved images through a loaded model and writes them: shared by `draw` and `batch`.

It owns the model's lifetime (load once, generate many), progress display on stderr, and the
write-then-record order that makes runs resumable. MindSpore is imported by `open()`, not before.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pangu_cli import output
from pangu_cli.models.registry import ModelSpec
from pangu_cli.settings import ImageSettings

if TYPE_CHECKING:
    from pangu_cli.batch import Job
    from pangu_cli.plan import Options


def image_record(s: ImageSettings, path: Path, seconds: float) -> dict:
    """The per-image JSON line of `--json` output."""
    return {"path": str(path), "prompt": s.prompt, "seed": s.seed, "language": s.language,
            "size": [s.width, s.height], "ratio": s.ratio, "styles": s.styles, "steps": s.steps,
            "model": s.model, "seconds": round(seconds, 3)}


class Runner:
    def __init__(self, spec: ModelSpec, out: str | None, template: str, overwrite: bool,
                 quiet: bool, console: Console):
        self.spec = spec
        self.out = out
        self.template = template
        self.overwrite = overwrite
        self.quiet = quiet
        self.console = console
        self.generator = None
        self.progress: Progress | None = None  # shared by a batch: overall bar plus one per image

    def new_progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=self.console, transient=True, disable=self.quiet)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    def fields(self, s: ImageSettings, index: int, count: int, job_id: str | None = None) -> dict:
        return output.name_fields(s.recipe(), index=index, count=count, job_id=job_id, prompt=s.prompt)

    def plan_paths(self, images: list[ImageSettings]) -> list[Path]:
        """Where each image would go now (validates --out before any model is loaded)."""
        multiple = len(images) > 1
        return [output.plan_output_path(self.out, self.template, self.fields(s, i + 1, len(images)),
                                        self.overwrite, multiple) for i, s in enumerate(images)]

    def open(self, device: str, precision: str) -> None:
        from pangu_cli import runtime

        info = runtime.setup(device=device, precision=precision)
        from pangu_cli.models.loader import load_model
        from pangu_cli.sampling.pipeline import Generator

        for note in info.notes:
            self.note(f"[yellow]note[/]: {note}")
        status = self.console.status(f"loading {self.spec.name} on {info.device}…") if not self.quiet else nullcontext()
        with status:
            model = load_model(self.spec, precision=precision)
        self.note(f"[dim]{self.spec.name} loaded on {info.device} in {model.timings['load']:.1f} s[/]")
        def load_other(spec: ModelSpec):  # a model a Coop-Diffusion recipe names besides this one
            self.note(f"[dim]loading {spec.name} (named by the recipe)…[/]")  # inside the progress display
            return load_model(spec, precision=precision)

        self.generator = Generator(model, load=load_other)

    def generate(self, s: ImageSettings, label: str = ""):
        progress = self.progress or self.new_progress()
        with progress if self.progress is None else nullcontext():
            task = progress.add_task(label or f"{s.width}x{s.height} seed {s.seed}", total=s.steps)
            try:
                result = self.generator.generate(s, on_step=lambda _: progress.advance(task))
            finally:
                progress.remove_task(task)
        for cut in result.truncated:
            self.note(f"[yellow]warning[/]: prompt longer than the encoder limit; dropped ({cut})")
        return result

    def render(self, s: ImageSettings, index: int = 1, count: int = 1, job_id: str | None = None,
               out: str | None = None, template: str | None = None) -> tuple[Path, float]:
        """Generate one image and publish it atomically; returns (path, seconds)."""
        start = time.perf_counter()
        label = f"{job_id + ' ' if job_id else ''}image {index}/{count}"
        result = self.generate(s, label)
        path = output.save_png(out or self.out, template or self.template, self.fields(s, index, count, job_id),
                               result.pixels, s.recipe(), overwrite=self.overwrite, multiple=count > 1)
        seconds = time.perf_counter() - start
        self.note(f"[green]saved[/] {path}  [dim]{s.width}x{s.height} ({s.ratio}) seed {s.seed} · {seconds:.1f} s[/]")
        return path, seconds


@dataclass
class PlannedImage:
    job: "Job"
    image_index: int
    settings: ImageSettings
    key: str
    out: str
    template: str


@dataclass
class BatchReport:
    done: int = 0
    skipped: int = 0
    adopted: int = 0
    failed_lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 5 if self.failed_lines else 0


def plan_batch(spec: ModelSpec, jobs, base: "Options", base_seed: int, out: str, template: str,
               strict: bool, report: BatchReport) -> list[PlannedImage]:
    """Resolve every image of every job before any model is loaded; bad lines are reported, not fatal
    (unless strict)."""
    from pangu_cli import batch, plan
    from pangu_cli.errors import UsageError

    stride = base.count or 1
    planned: list[PlannedImage] = []
    for job in jobs:
        overrides = {k: v for k, v in job.options.items() if k not in ("out", "name", "seed", "count")}
        count = int(job.options.get("count") or stride)
        try:
            opts = base.merged({**overrides, "prompt": job.prompt, "count": count,
                                "seed": batch.job_seed(base_seed, job, 0, stride)})
            images = plan.resolve(spec, opts)
        except UsageError as exc:
            if strict:
                raise UsageError(f"line {job.line}: {exc.message}", exc.hint) from None
            report.failed_lines.append(f"line {job.line}: {exc.one_line()}")
            continue
        job_out = str(Path(out) / job.options["out"]) if job.options.get("out") else out
        for i, settings in enumerate(images):
            key = batch.job_key(job, settings.recipe())
            planned.append(PlannedImage(job, i, settings, key, job_out, job.options.get("name") or template))
    return planned


def run_batch(runner: Runner, planned: list[PlannedImage], manifest_part: str, emit, device: str,
              precision: str, report: BatchReport, folder: str) -> BatchReport:
    """Skip what is complete, adopt what a crashed run published, generate the rest; record each."""
    from pangu_cli import batch

    output.clean_stale_temps(folder, recursive=True)
    done = batch.Completed.load(folder)
    todo = []
    for item in planned:
        path = done.path_for(item.key)
        if path is not None:
            report.skipped += 1
            emit(item, path, None, "skipped")
        else:
            todo.append(item)
    if not todo:
        if planned:  # with no valid line at all, the failures say it all
            runner.note(f"nothing to do: all {report.skipped} images are complete in {folder}")
        return report
    runner.note(f"{len(todo)} to make, {report.skipped} already complete")
    with batch.Manifest(folder, manifest_part) as manifest:
        runner.progress = runner.new_progress()
        with runner.progress:
            overall = runner.progress.add_task("batch", total=len(todo))
            for item in todo:
                count = sum(1 for p in planned if p.job is item.job)
                fields = runner.fields(item.settings, item.image_index + 1, count, item.job.id)
                adopted = batch.find_adoptable(item.out, item.template, fields, item.key, multiple=count > 1)
                if adopted is not None:
                    manifest.add(item.job, item.image_index, adopted, item.settings.recipe(), key=item.key,
                                 status="adopted")
                    report.adopted += 1
                    emit(item, adopted, None, "adopted")
                else:
                    if runner.generator is None:
                        runner.open(device, precision)
                    path, seconds = runner.render(item.settings, item.image_index + 1, count, item.job.id,
                                                  out=item.out, template=item.template)
                    manifest.add(item.job, item.image_index, path, item.settings.recipe(), key=item.key,
                                 seconds=seconds)
                    report.done += 1
                    emit(item, path, seconds, "done")
                runner.progress.advance(overall)
        runner.progress = None
    return report
