"""`pangu batch`: prompt files, resume, shards, bad lines, and a real Ctrl-C in the middle of a run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pangu_cli.batch import Manifest
from test_cli import (  # noqa: F401  (fixtures are used by name)
    FAST,
    isolated_config,
    pngs,
    recipe_of,
    run_cli,
    subprocess_env,
    tiny_model,
    tiny_model_folder,
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def images_by_prompt(folder: Path) -> Counter:
    return Counter(recipe_of(path)["prompt"] for path in pngs(folder))


def batch(source: Path, out: Path, model: Path, *args, input: bytes | None = None):
    return run_cli("batch", source, "--model", model, "--out", out, *FAST, *args, input=input)


# --------------------------------------------------------------------------------------- file formats


def test_txt_batch_and_resume(tiny_model, tmp_path):
    source = write(tmp_path, "prompts.txt", "# my prompts\n一只猫\n\n  a red dog  \n\\#sunset sky\n")
    out = tmp_path / "out"
    first = batch(source, out, tiny_model, "--json", "--seed", "10")
    assert first.code == 0, first
    records = first.records()
    assert [(r["id"], r["line"], r["prompt"], r["seed"], r["status"]) for r in records] == [
        ("0001", 2, "一只猫", 10, "done"), ("0002", 4, "a red dog", 11, "done"), ("0003", 5, "#sunset sky", 12, "done")]
    assert [Path(r["path"]).name for r in records] == ["0001-10-一只猫.png", "0002-11-a-red-dog.png",
                                                     "0003-12-sunset-sky.png"]
    assert images_by_prompt(out) == {"一只猫": 1, "a red dog": 1, "#sunset sky": 1}
    manifest = Manifest.read_all(out)
    assert [m["id"] for m in manifest] == ["0001", "0002", "0003"]

    again = batch(source, out, tiny_model, "--json", "--seed", "10")
    assert again.code == 0, again
    assert [r["status"] for r in again.records()] == ["skipped"] * 3
    assert [r["path"] for r in again.records()] == [r["path"] for r in records]
    assert "nothing to do" in again.stderr
    assert len(pngs(out)) == 3 and len(Manifest.read_all(out)) == 3

    Path(records[1]["path"]).unlink()  # a lost image is made again, and only that one
    repaired = batch(source, out, tiny_model, "--json", "--seed", "10")
    assert repaired.code == 0, repaired
    assert {r["id"]: r["status"] for r in repaired.records()} == {"0001": "skipped", "0002": "done",
                                                                   "0003": "skipped"}
    assert images_by_prompt(out) == {"一只猫": 1, "a red dog": 1, "#sunset sky": 1}


def test_jsonl_batch_with_per_line_options(tiny_model, tmp_path):
    source = write(tmp_path, "prompts.jsonl", "\n".join([
        json.dumps({"prompt": "a cat", "id": "kitty", "seed": 100, "ratio": "2:1", "count": 2}),
        "# a comment line",
        json.dumps({"prompt": "一只狗", "size": [24, 40], "name": "dogs/{seed}.png"}, ensure_ascii=False),
    ]) + "\n")
    out = tmp_path / "out"
    run = batch(source, out, tiny_model, "--json", "--seed", "7")
    assert run.code == 0, run
    made = {(r["id"], r["seed"], tuple(r["size"]), Path(r["path"]).relative_to(out).as_posix())
            for r in run.records()}
    assert made == {("kitty", 100, (48, 24), "kitty-100-a-cat.png"), ("kitty", 101, (48, 24), "kitty-101-a-cat.png"),
                    ("0002", 8, (24, 40), "dogs/8.png")}
    with Image.open(out / "dogs" / "8.png") as image:
        assert image.size == (24, 40)


def test_csv_batch_with_quoted_cells(tiny_model, tmp_path):
    source = write(tmp_path, "prompts.csv", 'prompt,id,seed\n"a cat, on a mat",c1,5\n一只猫,,\n')
    out = tmp_path / "out"
    run = batch(source, out, tiny_model, "--json")
    assert run.code == 0, run
    assert [(r["prompt"], r["id"], r["seed"]) for r in run.records()] == [("a cat, on a mat", "c1", 5),
                                                                           ("一只猫", "0002", 1)]
    assert images_by_prompt(out) == {"a cat, on a mat": 1, "一只猫": 1}


def test_stdin_dry_run_makes_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    lines = '{"prompt": "a cat", "seed": 3}\n{"prompt": "一只狗"}\n'
    run = run_cli("batch", "-", "--model", tiny_model, "--out", out, "--dry-run", "--json",
                  input=lines.encode("utf-8"))
    assert run.code == 0, run
    assert [(r["prompt"], r["seed"]) for r in run.records()] == [("a cat", 3), ("一只狗", 1)]
    assert not out.exists()


# ------------------------------------------------------------------------------------------- shards


def test_shards_together_make_every_image_exactly_once(tiny_model, tmp_path):
    prompts = [f"prompt {i} cat" for i in range(1, 6)]
    source = write(tmp_path, "prompts.txt", "\n".join(prompts) + "\n")
    out = tmp_path / "out"
    parts = [batch(source, out, tiny_model, "--json", "--shard", shard) for shard in ("1/2", "2/2")]
    assert all(p.code == 0 for p in parts), parts
    ids = [[r["id"] for r in p.records()] for p in parts]
    assert ids == [["0001", "0003", "0005"], ["0002", "0004"]]
    assert images_by_prompt(out) == Counter(prompts)  # every prompt, each exactly once
    assert sorted(p.name for p in Manifest.parts(out)) == ["manifest-1of2.jsonl", "manifest-2of2.jsonl"]
    assert sorted(r["id"] for r in Manifest.read_all(out)) == ["0001", "0002", "0003", "0004", "0005"]
    # seeds do not depend on the sharding: the same as an unsharded run
    assert {r["id"]: r["seed"] for p in parts for r in p.records()} == {f"000{i}": i - 1 for i in range(1, 6)}
    whole = batch(source, out, tiny_model, "--json")
    assert whole.code == 0 and [r["status"] for r in whole.records()] == ["skipped"] * 5


# ----------------------------------------------------------------------------------------- bad lines


def test_a_malformed_jsonl_line_fails_alone_unless_strict(tiny_model, tmp_path):
    source = write(tmp_path, "prompts.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog",\n{"prompt": "一只猫"}\n')
    strict_out = tmp_path / "strict"
    strict = batch(source, strict_out, tiny_model, "--strict")
    assert strict.code == 2, strict
    assert "line 2" in strict.stderr and "not valid JSON" in strict.stderr and "Traceback" not in strict.stderr
    assert not strict_out.exists()

    out = tmp_path / "out"
    run = batch(source, out, tiny_model, "--json")
    assert run.code == 5, run
    assert [(r["line"], r["status"]) for r in run.records()] == [(1, "done"), (3, "done")]
    assert images_by_prompt(out) == {"a cat": 1, "一只猫": 1}
    failures = [line for line in run.stderr.splitlines() if line.startswith("failed")]
    assert len(failures) == 1 and "line 2" in failures[0] and "not valid JSON" in failures[0]


def test_a_bad_option_is_a_usage_error_not_a_failure_of_every_line(tiny_model, tmp_path):
    source = write(tmp_path, "prompts.txt", "a cat\na dog\n")
    out = tmp_path / "out"
    run = run_cli("batch", source, "--model", tiny_model, "--out", out, "--steps", "-2")
    assert run.code == 2, run
    assert run.stderr.strip() == "error: steps -2 is out of range — steps must be between 1 and 1000"
    assert not out.exists()


# --------------------------------------------------------------------------------------- interrupted


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_each_prompt_exactly_one_image(tiny_model, tmp_path):
    # Enough work that Ctrl-C lands mid-run on a quiet machine too (8 two-step images finished first).
    prompts = [f"prompt {i} a red cat" for i in range(1, 41)]
    source = write(tmp_path, "prompts.txt", "\n".join(prompts) + "\n")
    out = tmp_path / "out"
    args = ["batch", source, "--model", tiny_model, "--out", out, "--steps", "3", "--style-scale", "0", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "pangu_cli", *map(str, args)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env(tmp_path / ".config"))
    try:
        deadline = time.monotonic() + 240
        while not any(p.suffix == ".png" and not p.name.startswith(".") for p in pngs(out)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no image appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the run has images left to make
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr_text = stderr.decode("utf-8")
    assert proc.returncode == 130, stderr_text
    assert "interrupted" in stderr_text and "Traceback" not in stderr_text

    # nothing partial: no temporary files, every published PNG complete and carrying its recipe
    files = pngs(out)
    assert files and all(not p.name.startswith(".") for p in files), files
    assert len(files) < len(prompts)
    for path in files:
        with Image.open(path) as image:
            image.load()
        assert recipe_of(path)["prompt"] in prompts
    recorded = Manifest.read_all(out)
    assert all((out / r["path"]).is_file() for r in recorded)
    assert len(recorded) <= len(files) <= len(recorded) + 1  # at most one image published, not yet recorded
    before = {p.name: p.read_bytes() for p in files}
    emitted = [json.loads(line) for line in stdout.decode("utf-8").splitlines()]
    assert {Path(r["path"]).name for r in emitted} <= set(before)

    resumed = run_cli(*args)
    assert resumed.code == 0, resumed
    statuses = Counter(r["status"] for r in resumed.records())
    assert statuses["skipped"] == len(recorded)
    assert statuses["skipped"] + statuses["adopted"] == len(files)
    assert sum(statuses.values()) == len(prompts)

    assert images_by_prompt(out) == Counter(prompts)  # each prompt exactly one image
    assert all((out / name).read_bytes() == data for name, data in before.items())  # kept, not redone
    manifest = Manifest.read_all(out)
    assert Counter(r["prompt"] for r in manifest) == Counter(prompts)  # and exactly one record each
    assert len({r["key"] for r in manifest}) == len(prompts)
