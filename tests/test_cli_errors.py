"""Bad input to `pangu`: one test per case of the CLI issue. Each asserts the exit code, a single
stderr line `error: WHAT — HOW` (no traceback unless --debug) and that nothing was written or
overwritten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from test_cli import (  # noqa: F401
    FAST,
    assert_error,
    isolated_config,
    pngs,
    recipe_of,
    run_cli,
    run_pangu,
    tiny_model,
    tiny_model_folder,
)



def _modes_enforced() -> bool:
    """False for root (or CAP_DAC_OVERRIDE), which reads and writes whatever the file modes say."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        finally:
            probe.chmod(0o600)
    return False


MODES_ENFORCED = _modes_enforced()


def draw(model: Path, out: Path, *args, input: bytes | None = None):
    return run_cli("draw", *FAST, "--model", model, "--out", out, *args, input=input)  # args win


def broken_copy(model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken-model"
    shutil.copytree(model, copy)
    return copy


# ------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("prompt", ["", "   ", "\t \n"], ids=["empty", "spaces", "whitespace"])
def test_empty_or_whitespace_prompt(prompt, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert_error(draw(tiny_model, out, prompt), 2, "the prompt is empty", "give a prompt")
    assert_error(draw(tiny_model, out, "-", input=prompt.encode()), 2, "the prompt is empty")
    assert not out.exists()


def test_missing_prompt(tmp_path):
    assert_error(run_cli("draw", "--out", tmp_path / "out"), 2, "missing PROMPT", "--from")


def test_prompt_on_stdin_that_is_not_utf8(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert_error(draw(tiny_model, out, "-", input="一只猫".encode("utf-16")), 2, "not UTF-8", "iconv")
    assert not out.exists()


def test_prompt_longer_than_the_encoders_limit_warns_what_was_cut(tiny_model, tmp_path):
    # 80 words fill the 75 tokens the encoders take; the end of the prompt is what gets dropped
    prompt = " ".join(["red"] * 80) + " blue sky"
    out = tmp_path / "long.png"
    run = draw(tiny_model, out, prompt, "--json")
    assert run.code == 0, run
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning")]
    assert warnings, run
    assert all("prompt longer than the encoder limit" in w for w in warnings)
    assert any(w.rstrip(")").endswith("red red blue sky") for w in warnings), warnings  # names the cut text
    assert out.is_file() and recipe_of(out)["prompt"] == prompt  # the image is still made, recipe intact
    assert run.records()[0]["path"] == str(out)


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize("args, fragments", [
    (["--style", "nope"], ["unknown style 'nope'", "available styles: anime"]),
    (["--style", "anime=lots"], ["anime=lots"]),
    (["--ratio", "banana"], ["aspect ratio 'banana'", "16:9"]),
    (["--ratio", "16:0"], ["'16:0'", "positive"]),
    (["--size", "33x33"], ["33x33", "32x32 (1:1)"]),
    (["--sampler", "ddim"], ["unknown sampler 'ddim'", "euler, dpmpp_2m"]),
    (["--steps", "-3"], ["steps -3 is out of range", "between 1 and 1000"]),
    (["--steps", "0"], ["steps 0 is out of range"]),
    (["--count", "0"], ["count 0 is out of range"]),
    (["--seed", "-1"], ["seed -1 is out of range", "4294967295"]),
    (["--guidance", "-1"], ["guidance -1.0 is out of range"]),
    (["--name", "{nope}.png"], ["unknown placeholder {nope}", "{seed}"]),
    (["--device", "TPU"], ["unknown device 'TPU'", "CPU"]),
], ids=lambda value: " ".join(value) if isinstance(value, list) and value[0].startswith("-") else "")
def test_bad_option(args, fragments, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert_error(draw(tiny_model, out, "一只猫", *args), 2, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("args", [["--steps", "-3"], ["--sampler", "ddim"], ["--style", "nope"], ["--ratio", "16:0"]])
def test_bad_option_is_reported_before_a_missing_model(args, tmp_path):
    run = run_cli("draw", "一只猫", *args, "--out", tmp_path / "out")  # no model installed at all
    assert_error(run, 2)


# ------------------------------------------------------------------------------------- prompt files


def test_prompt_file_that_does_not_exist(tiny_model, tmp_path):
    out = tmp_path / "out"
    run = run_cli("batch", tmp_path / "nope.txt", "--model", tiny_model, "--out", out)
    assert_error(run, 2, "nope.txt: no such file", "check the path")
    assert not out.exists()


def test_prompt_file_that_is_a_folder(tiny_model, tmp_path):
    run = run_cli("batch", tmp_path, "--model", tiny_model, "--out", tmp_path / "out")
    assert_error(run, 2, "is a folder", ".jsonl")


@pytest.mark.skipif(not MODES_ENFORCED, reason="this user reads files whatever their mode (root)")
def test_prompt_file_without_read_permission(tiny_model, tmp_path):
    source = tmp_path / "secret.txt"
    source.write_text("a cat\n", encoding="utf-8")
    source.chmod(0)
    run = run_cli("batch", source, "--model", tiny_model, "--out", tmp_path / "out")
    assert_error(run, 2, "cannot read", "permissions")


def test_prompt_file_that_is_not_utf8_names_the_line(tiny_model, tmp_path):
    source = tmp_path / "prompts.txt"
    source.write_bytes(b"a cat\na dog\n\xff\xfe a bird\n")
    out = tmp_path / "out"
    run = run_cli("batch", source, "--model", tiny_model, "--out", out)
    assert_error(run, 2, "line 3", "byte 0xff", "not valid UTF-8", "iconv")
    assert not out.exists()


def test_malformed_jsonl_line_is_named(tiny_model, tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "steps": }\n{"prompt": "一只猫"}\n', encoding="utf-8")
    out = tmp_path / "out"
    strict = run_cli("batch", source, "--model", tiny_model, "--out", out, "--strict")
    assert_error(strict, 2, "line 2", "not valid JSON", "without --strict")
    assert not out.exists()
    # without --strict the other lines go ahead (a dry run shows it; test_cli_batch.py draws them)
    checked = run_cli("batch", source, "--model", tiny_model, "--out", out, "--dry-run", "--json")
    assert checked.code == 5, checked
    assert [r["line"] for r in checked.records()] == [1, 3]
    assert "line 2" in checked.stderr and "Traceback" not in checked.stderr
    assert not out.exists()


# -------------------------------------------------------------------------------------------- output


def test_output_folder_inside_a_file(tiny_model, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me", encoding="utf-8")
    assert_error(draw(tiny_model, blocker / "pics" / "cat.png", "a cat"), 2, "is a file", "--out")
    assert blocker.read_text(encoding="utf-8") == "keep me"


@pytest.mark.skipif(not MODES_ENFORCED, reason="this user writes into read-only folders (root)")
def test_output_folder_not_writable(tiny_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_error(draw(tiny_model, locked / "cat.png", "a cat"), 2, "not writable", "--out")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_existing_output_file_is_never_overwritten_without_overwrite(tiny_model, tmp_path):
    target = tmp_path / "cat.png"
    target.write_bytes(b"precious")
    assert_error(draw(tiny_model, target, "a cat"), 2, "cat.png exists", "--overwrite")
    assert target.read_bytes() == b"precious"
    assert pngs(tmp_path) == [target]
    replaced = draw(tiny_model, target, "a cat", "--overwrite", "--seed", "4")
    assert replaced.code == 0, replaced
    assert recipe_of(target)["seed"] == 4


def test_existing_file_at_a_templated_name_gets_a_new_name(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    taken = out / "4-cat.png"
    taken.write_bytes(b"precious")
    run = draw(tiny_model, out, "cat", "--seed", "4", "--name", "{seed}-{slug}.png")
    assert run.code == 0, run
    assert run.stdout.strip() == str(out / "4-cat-1.png")
    assert taken.read_bytes() == b"precious"
    # a batch that finds a foreign file where its image would go keeps it as well
    source = tmp_path / "prompts.txt"
    source.write_text("cat\n", encoding="utf-8")
    foreign = out / "0001-0-cat.png"
    foreign.write_bytes(b"not ours")
    made = run_cli("batch", source, "--model", tiny_model, "--out", out, *FAST)
    assert made.code == 0, made
    assert foreign.read_bytes() == b"not ours"
    assert recipe_of(out / "0001-0-cat-1.png")["prompt"] == "cat"


# ------------------------------------------------------------------------------------ models and files


def test_unknown_model(tmp_path):
    assert_error(run_cli("draw", "a cat", "--model", "no-such-model", "--out", tmp_path / "o"), 3,
                 "unknown model 'no-such-model'", "model.json")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.json").write_text("{not json", encoding="utf-8")
    assert_error(run_cli("draw", "a cat", "--model", tmp_path / "empty", "--out", tmp_path / "o"), 3,
                 "model.json is not valid JSON")


@pytest.mark.parametrize("shift", [0, -4, "16", True])
def test_bad_noise_schedule_shift(tiny_model, tmp_path, shift):
    model = broken_copy(tiny_model, tmp_path)
    manifest = json.loads((model / "model.json").read_text(encoding="utf-8"))
    manifest["schedule"] = {"snr_shift": shift}
    (model / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert_error(draw(model, tmp_path / "o", "a cat"), 3, "schedule.snr_shift", "positive number")


def test_missing_checkpoint(tiny_model, tmp_path):
    model = broken_copy(tiny_model, tmp_path)
    (model / "texture.safetensors").unlink()
    out = tmp_path / "out"
    assert_error(draw(model, out, "a cat"), 3, "missing", "texture.safetensors", "copy the file back")
    assert not out.exists()


def test_corrupt_checkpoint(tiny_model, tmp_path):
    model = broken_copy(tiny_model, tmp_path)
    checkpoint = model / "texture.safetensors"
    with open(checkpoint, "r+b") as handle:
        handle.truncate(checkpoint.stat().st_size // 2)
    out = tmp_path / "out"
    assert_error(draw(model, out, "a cat"), 3, "texture.safetensors", "corrupt or truncated")
    assert not out.exists()


def test_checkpoint_with_an_unexpected_key(tiny_model, tmp_path):
    model = broken_copy(tiny_model, tmp_path)
    state = load_file(str(model / "structure.safetensors"))
    state["model.diffusion_model.surplus.weight"] = np.zeros(3, np.float32)
    save_file(state, str(model / "structure.safetensors"))
    out = tmp_path / "out"
    assert_error(draw(model, out, "a cat"), 3, "1 unexpected", "surplus.weight", "structure.safetensors")
    assert not out.exists()


def test_checkpoint_with_a_missing_key(tiny_model, tmp_path):
    model = broken_copy(tiny_model, tmp_path)
    state = load_file(str(model / "texture.safetensors"))
    gone = next(k for k in sorted(state) if k.startswith("first_stage_model.decoder."))
    del state[gone]
    save_file(state, str(model / "texture.safetensors"))
    out = tmp_path / "out"
    line = assert_error(draw(model, out, "a cat"), 3, "1 missing", "texture.safetensors")
    assert gone.removeprefix("first_stage_model.") in line
    assert not out.exists()


def test_from_an_image_without_a_recipe(tiny_model, tmp_path):
    from PIL import Image

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert_error(run_cli("draw", "--from", plain, "--model", tiny_model), 2, "no pangu recipe in", "plain.png")
    assert_error(run_cli("draw", "--from", tmp_path / "gone.png"), 2, "gone.png: no such file")
    assert_error(run_cli("show", tmp_path / "gone.png"), 2, "no such file")


# ------------------------------------------------------------------------------------ devices, --debug


def test_unavailable_device(tiny_model, tmp_path):
    gpu_present = Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")
    if gpu_present:
        pytest.skip("a GPU driver is present here")
    run = run_pangu("draw", "a cat", "--model", tiny_model, "--device", "GPU", "--out", "out", *FAST,
                    cwd=tmp_path)
    assert run.code == 4, run
    ours = [line for line in run.stderr.splitlines() if line.startswith("error")]
    assert len(ours) == 1 and "device GPU is not available" in ours[0] and "--device CPU" in ours[0]
    assert "Traceback" not in run.stderr
    # MindSpore's own probe may log '[ERROR] ME(...)' lines about CUDA libraries; nothing else may appear
    others = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("error")]
    assert all(line.startswith("[ERROR] ME(") for line in others), others
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    quiet = run_cli("draw", "   ")
    assert "Traceback" not in quiet.stderr and quiet.code == 2
    loud = run_cli("--debug", "draw", "   ")
    assert loud.code == 2
    assert "Traceback" in loud.stderr and "clean_prompt" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-1].startswith("error: the prompt is empty")
