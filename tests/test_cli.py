"""The `pangu` command line, end to end: in-process through Typer's test runner (`cli.main`, so exit
codes and error lines are the real ones) and as real subprocesses, with a tiny random model.

The helpers and the `tiny_model` fixture here are shared by test_cli_batch.py and test_cli_errors.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pangu_cli import __version__, cli

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAST = ("--steps", "1", "--style-scale", "0")  # one step, no style branch: the cheapest real image
NOT_HERE = ("mindspore", "torch")  # modules that light commands must not import


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def records(self) -> list[dict]:
        """stdout as JSON lines; fails unless every line is one JSON object."""
        lines = self.stdout.splitlines()
        records = [json.loads(line) for line in lines]
        assert all(isinstance(r, dict) for r in records), self.stdout
        return records

    def json(self):
        """stdout as one JSON value (the listing commands print one object or array)."""
        assert self.stdout.count("\n") == 1, self.stdout
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args, input: str | bytes | None = None) -> Run:
    """`pangu ARGS` in this process, through `cli.main` (the console-script entry point) inside Typer's
    test runner, which swaps stdin, stdout and stderr."""
    with CliRunner().isolation(input=input) as (out, err, _):
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()  # plain print() output may still sit in the text buffer
        sys.stderr.flush()
        return Run(code, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8"))


def subprocess_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PANGU_MODEL", "RANK_ID", "RANK_SIZE")}
    env.update(XDG_CONFIG_HOME=str(config), PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8",
               COLUMNS="200")
    return env


def run_pangu(*args, cwd: Path, input: bytes | None = None, timeout: float = 180) -> Run:
    """`pangu ARGS` as a real process (`python -m pangu_cli`), with its own empty config folder."""
    proc = subprocess.run([sys.executable, "-m", "pangu_cli", *map(str, args)], cwd=cwd, input=input,
                          capture_output=True, timeout=timeout, env=subprocess_env(cwd / ".config"))
    return Run(proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8"))


def pngs(folder: Path) -> list[Path]:
    """Every file under `folder` but the resume manifest: the images, and any hidden temporary file."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".pangu" not in p.parts
                  and not p.name.endswith(".jsonl"))


def recipe_of(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["pangu"])


def assert_error(run: Run, code: int, *fragments: str) -> str:
    """Exit `code`, stderr exactly one line `error: WHAT — HOW`, containing every fragment, no traceback."""
    assert run.code == code, run
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run
    line = lines[0]
    assert line.startswith("error: ") and " — " in line, run
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def build_tiny_model(tmp_path_factory) -> Path:
    """One tiny random model folder per test session, shared by every CLI test file (built once, in a
    scratch folder renamed into place, so a half-written model is never picked up)."""
    folder = tmp_path_factory.getbasetemp() / "cli-tiny-model"
    if not folder.is_dir():
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from tiny_model import make_tiny_model

        scratch = tmp_path_factory.mktemp("tiny-model-build")
        make_tiny_model(scratch / "model")
        os.rename(scratch / "model", folder)
    return folder


_LOADED: dict = {}  # the tiny model's networks, loaded once per process


def load_each_model_once(monkeypatch, folder: Path) -> None:
    """While a test runs, load `folder`'s model once per process and hand the same networks to every
    command. Loading costs more than drawing a tiny image; real loading is still exercised by the
    subprocess tests and by every other model folder (the broken copies in test_cli_errors.py)."""
    from pangu_cli.models import loader

    real = loader.load_model

    def load_model(spec, *args, **kwargs):
        if Path(spec.root).resolve() != folder.resolve():
            return real(spec, *args, **kwargs)
        key = (args, tuple(sorted(kwargs.items())), os.environ.get("PANGU_OFFLOAD"))
        if key not in _LOADED:
            _LOADED[key] = real(spec, *args, **kwargs)
        return _LOADED[key]

    monkeypatch.setattr(loader, "load_model", load_model)


@pytest.fixture(scope="session")
def tiny_model_folder(ms, tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory)


@pytest.fixture
def tiny_model(tiny_model_folder, monkeypatch) -> Path:
    """The tiny model's folder (see `build_tiny_model`), loaded once per process (`load_each_model_once`)."""
    load_each_model_once(monkeypatch, tiny_model_folder)
    return tiny_model_folder


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """No user models, presets or environment defaults leak into the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    for name in ("PANGU_MODEL", "RANK_ID", "RANK_SIZE"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------- draw


def test_draw_ratio_count_and_json(tiny_model, tmp_path):
    out = tmp_path / "pictures"
    run = run_cli("draw", "一只猫 on the sofa", "--model", tiny_model, "--ratio", "16:9", "-n", "2",
                  "--seed", "41", "--out", out, "--json", *FAST)
    assert run.code == 0, run
    records = run.records()
    assert len(records) == 2
    # 16:9 is nearest to the tiny model's 40x24 (5:3) bucket
    assert [r["size"] for r in records] == [[40, 24], [40, 24]]
    assert [r["ratio"] for r in records] == ["5:3", "5:3"]
    assert [r["seed"] for r in records] == [41, 42]
    assert {r["language"] for r in records} == {"mixed"}
    files = pngs(out)
    assert sorted(Path(r["path"]).resolve() for r in records) == [f.resolve() for f in files]
    for record in records:
        path = Path(record["path"])
        with Image.open(path) as image:
            assert image.size == (40, 24)
        assert recipe_of(path)["seed"] == record["seed"]
        assert recipe_of(path)["prompt"] == "一只猫 on the sofa"


def test_draw_to_a_file_and_numbered_files(tiny_model, tmp_path):
    target = tmp_path / "cat.png"
    run = run_cli("draw", "a red cat", "--model", tiny_model, "--out", target, "--seed", "1", *FAST)
    assert run.code == 0, run
    assert run.stdout == f"{target}\n"  # without --json stdout is just the path
    assert pngs(tmp_path) == [target]
    several = run_cli("draw", "a red cat", "--model", tiny_model, "--out", tmp_path / "dog.png", "-n", "2",
                      "--seed", "5", *FAST)
    assert several.code == 0, several
    assert several.stdout.splitlines() == [str(tmp_path / "dog-1.png"), str(tmp_path / "dog-2.png")]
    assert [recipe_of(tmp_path / f"dog-{i}.png")["seed"] for i in (1, 2)] == [5, 6]


def test_draw_folder_with_name_template(tiny_model, tmp_path):
    run = run_cli("draw", "一只猫", "--model", tiny_model, "--out", tmp_path / "art", "--seed", "9",
                  "--ratio", "1:2", "--name", "{lang}/{seed}-{ratio}-{width}x{height}-{slug}.png", *FAST)
    assert run.code == 0, run
    expected = tmp_path / "art" / "zh" / "9-1x2-24x48-一只猫.png"
    assert run.stdout.strip() == str(expected)
    assert pngs(tmp_path / "art") == [expected]


def test_draw_in_the_current_folder_by_default(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = run_cli("draw", "cat", "--model", tiny_model, "--seed", "3", "--name", "{seed}-{slug}.png", *FAST)
    assert run.code == 0, run
    assert run.stdout.strip() == "3-cat.png"
    assert (tmp_path / "3-cat.png").is_file()


def test_draw_reads_the_prompt_from_stdin(tiny_model, tmp_path):
    run = run_cli("draw", "-", "--model", tiny_model, "--out", tmp_path / "x.png", *FAST,
                  input="\ufeff一只红色的猫 on the sea\n".encode("utf-8"))
    assert run.code == 0, run
    assert recipe_of(tmp_path / "x.png")["prompt"] == "一只红色的猫 on the sea"


def test_json_output_is_only_json_on_stdout_and_progress_on_stderr(tiny_model, tmp_path):
    run = run_pangu("draw", "a cat", "--model", tiny_model, "-n", "2", "--seed", "7", "--json",
                    "--out", "out", *FAST, cwd=tmp_path)
    assert run.code == 0, run
    records = run.records()  # every stdout line is one JSON object: nothing else is there
    assert [r["seed"] for r in records] == [7, 8]
    assert all((tmp_path / r["path"]).is_file() for r in records)
    assert "saved" in run.stderr  # the human account goes to stderr


def test_quiet_leaves_stderr_empty(tiny_model, tmp_path):
    run = run_pangu("draw", "a cat", "--model", tiny_model, "--seed", "7", "--out", "q.png", "--quiet",
                    *FAST, cwd=tmp_path)
    assert run.code == 0, run
    assert run.stderr == ""
    assert run.stdout == "q.png\n"
    assert (tmp_path / "q.png").is_file()


def test_dry_run_makes_nothing_and_loads_no_model(tiny_model, tmp_path, monkeypatch):
    from pangu_cli import runner

    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run must not load a model")

    monkeypatch.setattr(runner.Runner, "open", no_model)
    out = tmp_path / "out"
    run = run_cli("draw", "一只猫", "--model", tiny_model, "--seed", "11", "-n", "3", "--ratio", "2:1",
                  "--steps", "4", "--out", out, "--name", "{seed}.png", "--dry-run", "--json")
    assert run.code == 0, run
    plans = run.records()
    assert [p["seed"] for p in plans] == [11, 12, 13]
    assert [p["path"] for p in plans] == [str(out / f"{s}.png") for s in (11, 12, 13)]
    assert {tuple(p["size"]) for p in plans} == {(48, 24)}
    assert {p["steps"] for p in plans} == {4}
    assert not out.exists()
    human = run_cli("draw", "一只猫", "--model", tiny_model, "--seed", "11", "--out", out, "--dry-run")
    assert human.code == 0 and "seed 11" in human.stdout and "32x32" in human.stdout
    assert not out.exists()


# ---------------------------------------------------------------------------------- metadata round trip


def test_draw_show_draw_from_gives_identical_bytes(tiny_model, tmp_path):
    first = tmp_path / "first.png"
    made = run_cli("draw", "一只猫 on the sofa", "--model", tiny_model, "--seed", "123", "--ratio", "3:5",
                   "--steps", "2", "--negative", "blurry", "--out", first, "--json")
    assert made.code == 0, made
    record = made.json()

    shown = run_cli("show", first, "--json")
    assert shown.code == 0, shown
    recipe = shown.json()
    assert recipe["schema"] == "pangu.image/1"
    for key in ("prompt", "seed", "size", "steps", "model", "styles", "language", "ratio"):
        assert recipe[key] == record[key], key
    assert recipe["negative"] == "blurry"
    assert recipe["model_hash"] and recipe["sampler"] == "euler" and recipe["guidance"] == 6.0
    with Image.open(first) as image:  # the AUTOMATIC1111 text carries the same recipe
        parameters = image.text["parameters"]
    assert parameters.startswith("一只猫 on the sofa\nNegative prompt: blurry\n")
    assert "Steps: 2" in parameters and "Seed: 123" in parameters and "Size: 24x40" in parameters
    human = run_cli("show", first)
    assert human.code == 0 and "seed: 123" in human.stdout

    again = tmp_path / "again.png"
    redo = run_cli("draw", "--from", first, "--model", tiny_model, "--out", again)
    assert redo.code == 0, redo
    assert again.read_bytes() == first.read_bytes()

    # an explicit option wins over the stored recipe
    other = tmp_path / "other.png"
    changed = run_cli("draw", "--from", first, "--model", tiny_model, "--seed", "124", "--out", other)
    assert changed.code == 0, changed
    assert recipe_of(other)["seed"] == 124 and recipe_of(other)["size"] == [24, 40]
    assert other.read_bytes() != first.read_bytes()


# ------------------------------------------------------------------------------------ light commands


def test_detect():
    run = run_cli("detect", "一只猫 on the sofa", "--json")
    assert run.code == 0, run
    result = run.json()
    assert result["lang"] == "mixed"
    assert [(s["lang"], s["text"]) for s in result["spans"]] == [("zh", "一只猫"), ("en", "on the sofa")]
    human = run_cli("detect", "-", input="一只猫".encode("utf-8"))
    assert human.code == 0 and human.stdout.splitlines()[0] == "zh"


def test_ratios(tiny_model):
    run = run_cli("ratios", "--model", tiny_model, "--json")
    assert run.code == 0, run
    table = run.json()
    assert table["model"] == "tiny"
    assert [(b["width"], b["height"], b["label"]) for b in table["buckets"]] == [
        (32, 32, "1:1"), (40, 24, "5:3"), (24, 40, "3:5"), (48, 24, "2:1"), (24, 48, "1:2")]
    default = run_cli("ratios", "--json")  # the embedded default: the reference list at 1/4 scale
    assert default.code == 0, default
    assert default.json()["model"] == "pangu-mini"
    sizes = {(b["width"], b["height"]) for b in default.json()["buckets"]}
    assert (128, 128) in sizes and len(sizes) >= 7
    human = run_cli("ratios", "--model", tiny_model)
    assert human.code == 0 and "40x24" in human.stdout and "5:3" in human.stdout


def test_presets():
    run = run_cli("presets", "--json")
    assert run.code == 0, run
    names = {p["name"] for p in run.json()}
    assert {"anime", "art", "photo", "none"} <= names
    anime = run_cli("presets", "show", "动漫", "--json")
    assert anime.code == 0, anime
    assert anime.json()["name"] == "anime" and anime.json()["styles"]["anime"] > 0
    human = run_cli("presets")
    assert human.code == 0 and "anime" in human.stdout


def test_models_lists_registered_models(tiny_model, tmp_path):
    embedded = run_cli("models", "--json")
    assert embedded.code == 0 and [(m["name"], m["source"]) for m in embedded.json()] == [("pangu-mini", "embedded")]
    config = tmp_path / ".config" / "pangu"
    config.mkdir(parents=True)
    (config / "models.toml").write_text(f'[models.mine]\npath = "{tiny_model.as_posix()}"\n', encoding="utf-8")
    listed = run_cli("models", "--json")
    assert listed.code == 0, listed
    [_, entry] = listed.json()  # the embedded default first, then the user's
    assert entry["name"] == "mine" and entry["source"] == "user" and entry["missing"] == []
    assert entry["buckets"] == 5 and entry["two_stage"] is True
    shown = run_cli("models", "show", "mine", "--json")
    assert shown.code == 0, shown
    details = shown.json()
    assert details["sampling"]["steps"] == 6 and details["encoders"] == ["hf_clip (zh)", "openclip (en)"]
    # a registered name works for drawing too
    plan = run_cli("draw", "cat", "--model", "mine", "--dry-run", "--json", "--out", tmp_path / "o")
    assert plan.code == 0 and plan.json()["model"] == "mine"  # the registered name is the model's name


def test_doctor(ms):
    run = run_cli("doctor", "--json")
    checks = run.json()
    names = [c["name"] for c in checks]
    assert names[:2] == ["python", "mindspore"] and "device CPU" in names
    assert all(c["status"] in ("ok", "warn", "fail") for c in checks)
    assert next(c for c in checks if c["name"] == "device CPU")["status"] == "ok"
    assert run.code == 0, run
    human = run_cli("doctor")
    assert human.code == 0 and "device CPU" in human.stdout


def test_version_and_help():
    run = run_cli("--version")
    assert run.code == 0 and run.stdout == f"pangu {__version__}\n"
    helped = run_cli("--help")
    assert helped.code == 0
    for command in ("draw", "batch", "detect", "presets", "ratios", "models", "show", "doctor"):
        assert command in helped.stdout
    assert "130 interrupted" in helped.stdout


# ------------------------------------------------------------------------------------------- startup

_PROBE = textwrap.dedent("""
    import json, sys
    from pangu_cli.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    sys.stderr.write("\\nPROBE " + json.dumps([code, sorted(m for m in {NOT_HERE!r} if m in sys.modules)]))
""").replace("{NOT_HERE!r}", repr(NOT_HERE))


@pytest.mark.parametrize("args", [
    ["--help"],
    ["detect", "一只猫 on the sofa"],
    ["ratios"],
    ["presets"],
    ["--version"],
    ["draw", "一只猫", "--model", "{model}", "--dry-run", "--out", "never"],
], ids=lambda args: " ".join(args[:2]))
def test_light_commands_do_not_import_mindspore(args, tiny_model, tmp_path):
    args = [a.replace("{model}", str(tiny_model)) for a in args]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, capture_output=True,
                          timeout=60, env=subprocess_env(tmp_path / ".config"))
    stderr = proc.stderr.decode("utf-8")
    code, imported = json.loads(stderr.rsplit("PROBE ", 1)[1])
    assert code in (0, None), stderr
    assert imported == [], f"pangu {' '.join(args)} imported {imported}"
    assert not (tmp_path / "never").exists()


def test_console_script_is_installed():
    script = shutil.which("pangu", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("pangu is not installed in this environment (pip install -e .)")
    proc = subprocess.run([script, "--version"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode().strip() == f"pangu {__version__}"


@pytest.mark.slow
def test_a_fresh_install_draws_with_the_embedded_model(tmp_path):
    """README's first command: no --model, no download: the packaged pangu-mini draws at the 16:9 bucket."""
    from pangu_cli.models.registry import resolve
    from pangu_cli.ratios import nearest_bucket

    spec = resolve(None)
    assert spec.name == "pangu-mini" and spec.source == "embedded" and not spec.missing_files()
    out = tmp_path / "out"
    run = run_pangu("draw", "一只红色的圆形在蓝色背景上", "--ratio", "16:9", "--seed", "1", "--out", out, "--json",
                    cwd=tmp_path, timeout=300)
    assert run.code == 0, run
    [record] = run.records()
    bucket = nearest_bucket(spec.buckets, "16:9")
    assert record["size"] == [bucket.width, bucket.height] and record["model"] == "pangu-mini"
    with Image.open(record["path"]) as image:
        assert image.size == (bucket.width, bucket.height)
