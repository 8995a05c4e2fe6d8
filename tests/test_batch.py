"""Prompt files, sharding, seeds, manifests and resume (pangu_cli.batch)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pangu_cli import batch, output
from pangu_cli.batch import (
    Completed,
    Job,
    Manifest,
    find_adoptable,
    job_key,
    job_seed,
    read_jobs,
    recipe_key,
    shard,
)
from pangu_cli.errors import UsageError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ------------------------------------------------------------------------------------------- txt


def test_txt_with_bom_crlf_comments_and_blank_lines(tmp_path):
    content = (
        "\ufeff# my prompts\r\n一只猫\r\n\r\n   \r\n  a dog on a skateboard  \r\n"
        "# another comment\r\n\\#hashtag sunset\r\n"
    )
    jobs = read_jobs(write(tmp_path, "p.txt", content))
    assert jobs.format == "txt" and jobs.errors == [] and jobs.warnings == []
    assert [(j.index, j.line, j.id, j.prompt) for j in jobs] == [
        (0, 2, "0001", "一只猫"),
        (1, 5, "0002", "a dog on a skateboard"),
        (2, 7, "0003", "#hashtag sunset"),
    ]
    assert all(j.options == {} for j in jobs)


def test_txt_with_old_mac_line_ends_keeps_line_numbers(tmp_path):
    jobs = read_jobs(write(tmp_path, "p.txt", "a\rb\r\rc"))
    assert [(j.line, j.prompt) for j in jobs] == [(1, "a"), (2, "b"), (4, "c")]


def test_non_utf8_names_the_line(tmp_path):
    data = "first\nsecond\n".encode() + "third café\n".encode("latin-1") + b"fourth\n"
    with pytest.raises(UsageError) as err:
        read_jobs(write(tmp_path, "p.txt", data))
    assert "line 3" in err.value.message and "UTF-8" in err.value.message
    assert "iconv" in err.value.hint
    jobs = read_jobs(tmp_path / "p.txt", encoding="latin-1")
    assert jobs[2].prompt == "third café" and jobs.encoding == "latin-1"


def test_gbk_chinese_is_read_with_a_warning(tmp_path):
    text = "# 提示词\n坐在海边看海浪的少年，黄昏\n一只猫 “可爱”\n"
    jobs = read_jobs(write(tmp_path, "zh.txt", text.encode("gbk")))
    assert [j.prompt for j in jobs] == ["坐在海边看海浪的少年，黄昏", "一只猫 “可爱”"]
    assert jobs.encoding == "gb18030"
    assert len(jobs.warnings) == 1 and "GB18030" in jobs.warnings[0] and "iconv" in jobs.warnings[0]


def test_utf16_with_bom(tmp_path):
    jobs = read_jobs(write(tmp_path, "w.txt", "一只猫\r\na dog\r\n".encode("utf-16")))
    assert [j.prompt for j in jobs] == ["一只猫", "a dog"]


@pytest.mark.parametrize("content", ["", "\n\n  \n", "# only a comment\n", "\ufeff"])
def test_empty_file_is_a_usage_error(tmp_path, content):
    with pytest.raises(UsageError, match="no prompts"):
        read_jobs(write(tmp_path, "e.txt", content))


def test_missing_file_folder_and_json(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_jobs(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match="folder"):
        read_jobs(tmp_path)
    with pytest.raises(UsageError) as err:
        read_jobs(write(tmp_path, "p.json", '[{"prompt": "x"}]'))
    assert "JSONL" in err.value.hint
    with pytest.raises(UsageError, match="format"):
        read_jobs(write(tmp_path, "p.txt", "x"), fmt="yaml")


# ------------------------------------------------------------------------------------------- jsonl

JSONL = "\n".join(
    [
        '{"prompt": "一只猫", "id": "cat", "seed": 7, "ratio": "16:9", "steps": 30, "guidance": 5}',
        '{"prompt": "a dog", "size": [1024, 768], "style": ["photo", "anime"], "count": 2, '
        '"negative": " blurry "}',
        '{"prompt": "broken", "seed": 1,,}',
        "",
        "# a comment",
        '{"prompt": "typo", "seeds": 3}',
        '["not", "an", "object"]',
        '{"id": "no-prompt"}',
        '{"prompt": "bool seed", "seed": true}',
        '{"prompt": "dup", "id": "cat"}',
        '{"prompt": "size str", "size": "512 × 512", "name": "{id}.png", "out": "sub/", '
        '"sampler": "Euler"}',
        '{"prompt": "bad steps", "steps": 0}',
        '{"prompt": "tail", "id": 3, "seed": 4.0}',
    ]
)


def test_jsonl_overrides_and_collected_errors(tmp_path):
    jobs = read_jobs(write(tmp_path, "p.ndjson", JSONL))
    assert jobs.format == "jsonl"
    assert [(j.index, j.line, j.id, j.prompt) for j in jobs] == [
        (0, 1, "cat", "一只猫"),
        (1, 2, "0002", "a dog"),
        (2, 11, "0003", "size str"),
        (3, 13, "3", "tail"),
    ]
    assert jobs[0].options == {"seed": 7, "ratio": "16:9", "steps": 30, "guidance": 5.0}
    assert isinstance(jobs[0].options["guidance"], float)
    assert jobs[1].options == {"size": "1024x768", "style": "photo,anime", "count": 2, "negative": "blurry"}
    assert jobs[2].options == {
        "size": "512x512", "name": "{id}.png", "out": "sub/", "sampler": "Euler"
    }
    assert jobs[3].options == {"seed": 4}
    errors = {e.line: e.message for e in jobs.errors}
    assert sorted(errors) == [3, 6, 7, 8, 9, 10, 12]
    assert "not valid JSON" in errors[3]
    assert "'seeds'" in errors[6] and "did you mean 'seed'" in errors[6]
    assert "object" in errors[7]
    assert "prompt" in errors[8]
    assert "'seed'" in errors[9]
    assert "already used on line 1" in errors[10]
    assert "'steps' must be at least 1" in errors[12]
    jobs.check(strict=False)
    with pytest.raises(UsageError) as err:
        jobs.check(strict=True)
    assert "line 3" in err.value.message and "6 more" in err.value.message


def test_all_lines_bad_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no valid prompts"):
        read_jobs(write(tmp_path, "p.jsonl", '{"prompt": ""}\n{nope}\n'))


# --------------------------------------------------------------------------------------------- csv

CSV = (
    "\ufeffPrompt, seed ,ratio,id\r\n"
    '"一只猫，坐在窗台上, 阳光",7,16:9,\r\n'
    '"a dog, running",,,dog\r\n'
    "\r\n"
    '"a poem\r\nover two lines",3,,\r\n'
    "too,many,cells,x,y\r\n"
    "bad seed,seven,,\r\n"
    '"unclosed"quote,1,,\r\n'
    "中文提示,42,1:1,zh\r\n"
)


def test_csv_quotes_chinese_and_errors(tmp_path):
    jobs = read_jobs(write(tmp_path, "p.csv", CSV))
    assert jobs.format == "csv"
    assert [(j.line, j.id, j.prompt, j.options) for j in jobs] == [
        (2, "0001", "一只猫，坐在窗台上, 阳光", {"seed": 7, "ratio": "16:9"}),
        (3, "dog", "a dog, running", {}),
        (5, "0003", "a poem\nover two lines", {"seed": 3}),
        (10, "zh", "中文提示", {"seed": 42, "ratio": "1:1"}),
    ]
    errors = {e.line: e.message for e in jobs.errors}
    assert sorted(errors) == [7, 8, 9]
    assert "5 cells" in errors[7]
    assert "'seed'" in errors[8]
    assert "quot" in errors[9]


@pytest.mark.parametrize(
    "header, message",
    [
        ("text,seed", "no 'prompt' column"),
        ("prompt,colour", "unknown column 'colour'"),
        ("prompt,seed,seed", "repeats"),
    ],
)
def test_csv_header_problems(tmp_path, header, message):
    with pytest.raises(UsageError, match=message):
        read_jobs(write(tmp_path, "p.csv", f"{header}\na,1,2\n"))


# ------------------------------------------------------------------------------------------- stdin


@pytest.mark.parametrize(
    "content, fmt, prompts",
    [
        ('{"prompt": "一只猫"}\n{"prompt": "dog", "seed": 1}\n', "jsonl", ["一只猫", "dog"]),
        ("prompt,seed\n\"cat, sitting\",1\n", "csv", ["cat, sitting"]),
        ("prompt, with a comma\nsecond\n", "txt", ["prompt, with a comma", "second"]),
        ("# comment\r\n一只猫\r\n", "txt", ["一只猫"]),
    ],
)
def test_stdin_is_sniffed(monkeypatch, content, fmt, prompts):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content.encode("utf-8-sig"))))
    jobs = read_jobs("-")
    assert jobs.source == "<stdin>" and jobs.format == fmt
    assert [j.prompt for j in jobs] == prompts


# ------------------------------------------------------------------------------------------ shards


def make_jobs(n: int) -> list[Job]:
    return [Job(i, i + 1, f"{i + 1:04d}", f"prompt {i}") for i in range(n)]


@pytest.mark.parametrize("count", [0, 1, 5, 12])
@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_shards_cover_every_job_exactly_once(count, total):
    jobs = make_jobs(count)
    parts = [shard(jobs, f"{i}/{total}") for i in range(1, total + 1)]
    seen = sorted(j.index for part in parts for j in part)
    assert seen == list(range(count))
    assert all(len(part) in (count // total, count // total + 1) for part in parts)
    if total >= 2:
        assert shard(jobs, f"2/{total}") == jobs[1::total]


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "a/b", "", "1-3", "-1/3", "1/3/4"])
def test_bad_shard_specs(spec):
    with pytest.raises(UsageError):
        shard(make_jobs(3), spec)


def test_shard_from_env():
    assert batch.shard_from_env({"RANK_ID": "0", "RANK_SIZE": "4"}) == "1/4"
    assert batch.shard_from_env({"RANK_ID": "3", "RANK_SIZE": "4"}) == "4/4"
    assert batch.shard_from_env({"RANK_ID": "0", "RANK_SIZE": "1"}) is None
    assert batch.shard_from_env({}) is None


# ------------------------------------------------------------------------------------------- seeds


def test_seeds_are_deterministic_and_distinct():
    jobs = make_jobs(4)
    seeds = [job_seed(100, job, i, stride=3) for job in jobs for i in range(3)]
    assert seeds == list(range(100, 112))
    assert seeds == [job_seed(100, job, i, stride=3) for job in jobs for i in range(3)]
    pinned = Job(9, 10, "x", "p", {"seed": 5})
    assert [job_seed(100, pinned, i, stride=3) for i in range(3)] == [5, 6, 7]
    assert job_seed(2**32 - 1, jobs[1], 1) == 1  # wraps modulo 2**32
    # a shard sees the same seeds as the full run
    assert [job_seed(7, j, 0) for j in shard(jobs, "2/2")] == [job_seed(7, jobs[1], 0), job_seed(7, jobs[3], 0)]
    with pytest.raises(ValueError):
        job_seed(1, jobs[0], -1)


# ------------------------------------------------------------------------------------------ keys


def settings(**changes) -> dict:
    base = {
        "prompt": "一只猫",
        "negative": "",
        "language": "zh",
        "seed": 1,
        "size": [64, 64],
        "ratio": "1:1",
        "steps": 4,
        "sampler": "Euler",
        "guidance": 6.0,
        "styles": {"aesthetic": 4.0},
        "model": "tiny",
        "model_hash": "abc123",
        "switch": 500,
        "version": "0.1.0",
    }
    base.update(changes)
    return base


def test_job_key_tracks_exactly_what_determines_the_image():
    job = Job(0, 1, "0001", "一只猫")
    key = job_key(job, settings())
    assert key == job_key(job, settings(guidance=6, size=(64, 64), negative=None, styles={"aesthetic": 4}))
    assert key == job_key(job, settings(version="9.9", seconds=12.5, language="mixed"))
    for change in [
        {"prompt": "一只狗"},
        {"negative": "blurry"},
        {"seed": 2},
        {"size": [64, 32]},
        {"steps": 5},
        {"sampler": "DPM++"},
        {"guidance": 5.5},
        {"styles": {"aesthetic": 3.0}},
        {"model_hash": "def456"},
        {"switch": 400},
    ]:
        assert job_key(job, settings(**change)) != key, change
    no_prompt = {k: v for k, v in settings().items() if k != "prompt"}
    assert job_key(job, no_prompt) == key
    assert len(key) == 16


# ------------------------------------------------------------------------------------- manifests


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)


def publish(folder: Path, job: Job, index: int, manifest: Manifest | None) -> tuple[Path, str, dict]:
    recipe = settings(prompt=job.prompt, seed=job_seed(10, job, index, stride=2))
    key = job_key(job, recipe)
    fields = output.name_fields(recipe, index=job.index * 2 + index + 1, job_id=job.id)
    path = output.save_png(folder, "{id}-{index}-{slug}.png", fields, image(recipe["seed"]), recipe)
    if manifest is not None:
        manifest.add(job, index, path, recipe, key=key, seconds=0.25)
    return path, key, recipe


def test_manifest_records_and_completed(tmp_path):
    jobs = make_jobs(2)
    with Manifest(tmp_path) as manifest:
        path, key, recipe = publish(tmp_path, jobs[0], 0, manifest)
    assert manifest.path == tmp_path / ".pangu" / "manifest.jsonl"
    (record,) = Manifest.read(manifest.path)
    assert record["key"] == key and record["path"] == path.name and record["status"] == "done"
    assert record["seed"] == recipe["seed"] and record["prompt"] == "prompt 0" and record["size"] == [64, 64]
    assert record["recipe"] == batch.recipe_hash(output.read_recipe(path))
    assert record["seconds"] == 0.25 and record["language"] == "zh"
    done = Completed.load(tmp_path)
    assert done.path_for(key) == path and key in done and len(done) == 1
    assert done.path_for(job_key(jobs[0], {**recipe, "steps": 5})) is None  # changed settings → redo
    path.unlink()
    assert Completed.load(tmp_path).path_for(key) is None  # record without file → redo


def test_truncated_last_line_is_ignored_and_cut_before_appending(tmp_path):
    jobs = make_jobs(3)
    with Manifest(tmp_path) as manifest:
        publish(tmp_path, jobs[0], 0, manifest)
        publish(tmp_path, jobs[1], 0, manifest)
    data = manifest.path.read_bytes()
    manifest.path.write_bytes(data[:-20])  # killed in the middle of the second record
    records = Manifest.read(manifest.path)
    assert [r["job"] for r in records] == [0]
    with Manifest(tmp_path) as manifest:
        publish(tmp_path, jobs[2], 0, manifest)
    assert [r["job"] for r in Manifest.read(manifest.path)] == [0, 2]
    assert manifest.path.read_bytes().count(b"\n") == 2


def test_read_all_merges_parts(tmp_path):
    jobs = make_jobs(4)
    for rank in range(2):
        with Manifest(tmp_path, part=f"manifest-{rank}") as manifest:
            for job in shard(jobs, f"{rank + 1}/2"):
                publish(tmp_path, job, 0, manifest)
    assert sorted(r["job"] for r in Manifest.read_all(tmp_path)) == [0, 1, 2, 3]
    assert len(Completed.load(tmp_path)) == 4
    with pytest.raises(ValueError):
        Manifest(tmp_path, part="../evil")


def test_adopt_an_image_published_before_a_crash(tmp_path):
    job = make_jobs(1)[0]
    path, key, recipe = publish(tmp_path, job, 0, manifest=None)  # crash: image, no record
    assert Completed.load(tmp_path).path_for(key) is None
    fields = output.name_fields(recipe, index=1, job_id=job.id)
    assert find_adoptable(tmp_path, "{id}-{index}-{slug}.png", fields, key) == path
    assert find_adoptable(tmp_path, "{id}-{index}-{slug}.png", fields, recipe_key({**recipe, "seed": 99})) is None
    # the name was taken by something else, so the crashed run had used the "-1" variant
    other = tmp_path / "other"
    other.mkdir()
    (other / path.name).write_bytes(b"someone else's file")
    moved = other / (path.stem + "-1.png")
    path.rename(moved)
    assert find_adoptable(other, "{id}-{index}-{slug}.png", fields, key) == moved
    assert find_adoptable(moved, "ignored", fields, key) == moved  # explicit --out file


def test_resume_after_a_crash_redoes_exactly_the_missing_images(tmp_path):
    """Simulated batch: 3 prompts x 2 images, killed after the 4th image was published but before
    its record was written; the re-run makes the 2 missing images, adopts the 4th, duplicates none."""
    jobs = make_jobs(3)
    template = "{index:02}-{slug}.png"
    made: list[str] = []

    def run(crash_after: int | None) -> None:
        done = Completed.load(tmp_path)
        with Manifest(tmp_path) as manifest:
            for job in jobs:
                for i in range(2):
                    recipe = settings(prompt=job.prompt, seed=job_seed(10, job, i, stride=2))
                    key = job_key(job, recipe)
                    if done.path_for(key):
                        continue
                    fields = output.name_fields(recipe, index=job.index * 2 + i + 1, job_id=job.id)
                    adopted = find_adoptable(tmp_path, template, fields, key)
                    if adopted:
                        manifest.add(job, i, adopted, recipe, key=key, status="adopted")
                        continue
                    path = output.save_png(tmp_path, template, fields, image(recipe["seed"]), recipe)
                    made.append(path.name)
                    if crash_after is not None and len(made) == crash_after:
                        raise KeyboardInterrupt
                    manifest.add(job, i, path, recipe, key=key)

    with pytest.raises(KeyboardInterrupt):
        run(crash_after=4)
    assert made == ["01-prompt-0.png", "02-prompt-0.png", "03-prompt-1.png", "04-prompt-1.png"]
    run(crash_after=None)
    assert made[4:] == ["05-prompt-2.png", "06-prompt-2.png"]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [f"0{i}-prompt-{(i - 1) // 2}.png" for i in range(1, 7)]
    records = Manifest.read_all(tmp_path)
    assert [r["status"] for r in records] == ["done"] * 3 + ["adopted", "done", "done"]
    assert len({r["key"] for r in records}) == 6
    run(crash_after=None)  # a third run has nothing left to do
    assert len(made) == 6 and len(Manifest.read_all(tmp_path)) == 6
    lines = (tmp_path / ".pangu" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[3])["path"] == "04-prompt-1.png"


def test_recipe_key_counts_an_ensemble_and_keeps_older_keys():
    from pangu_cli.batch import recipe_key

    base = {"prompt": "a cat", "seed": 1, "size": [32, 32], "steps": 4, "model": "m", "switch": 500}
    assert recipe_key({**base, "ensemble": None}) == recipe_key(base)  # manifests written before recipes
    coop = {**base, "ensemble": {"mode": "switch", "members": [{"name": "a", "t": [0, 1000]}]}}
    assert recipe_key(coop) != recipe_key(base)
    other = {**base, "ensemble": {"mode": "switch", "members": [{"name": "a", "t": [0, 1000], "size": "8x8"}]}}
    assert recipe_key(other) != recipe_key(coop)
