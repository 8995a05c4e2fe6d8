"""`pangu train run|status|export` end to end on a tiny config (two PyNative steps, batches made inline):
checkpoint, JSON records, resume with the human display, status, export and its overwrite guard, Ctrl-C's
exit code, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import assert_error, isolated_config, run_cli  # noqa: F401  (autouse: no user config leaks in)

# tests/test_trainer.py's TINY config: one 32x32 input shape for both roles, every step logged.
TINY_TOML = """
batch_size = 2
log_every = 1
jit = false

[unet]
model_channels = 32
channel_mult = [1, 2]
attention_levels = [1]
num_head_channels = 16

[text]
width = 32
layers = 1
heads = 2
size_embed_dim = 16
zh_max_length = 24
en_max_length = 32

[tokenizer]
scenes = 60
common_chars = 3000

[data]
square_prob = 1.0

[optim]
warmup_steps = 1
lr = 2e-3
text_lr = 2e-3
ema_every = 3
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for two steps with --json (shared: training is the expensive part)."""
    root = tmp_path_factory.mktemp("train")
    config = root / "tiny.toml"
    config.write_text(TINY_TOML, encoding="utf-8")
    run_dir = root / "run"
    result = run_cli("train", "run", "--run", run_dir, "--config", config, "--steps", 2, "--inline-data", "--json")
    return run_dir, config, result


def test_run_json_writes_a_checkpoint_and_json_lines(trained):
    run_dir, _, result = trained
    assert result.code == 0, result
    records = result.records()  # every stdout line is one JSON object
    progress = [r for r in records if "loss" in r]
    assert [r["step"] for r in progress] == [1, 2]
    for record in progress:
        assert set(record["loss"]) <= {"structure", "texture"} and record["samples_per_s"] > 0
        assert all(v > 0 for v in record["loss"].values())
    summary = records[-1]
    assert summary["event"] == "summary" and summary["step"] == 2 and summary["reason"] == "max_steps"
    assert sum(summary["samples"].values()) == 4
    assert (run_dir / "checkpoint-00000002.safetensors").is_file()
    assert json.loads((run_dir / "checkpoint.json").read_text(encoding="utf-8"))["step"] == 2


def test_status_json_and_table(trained):
    run_dir, _, _ = trained
    status = run_cli("train", "status", "--run", run_dir, "--json")
    assert status.code == 0, status
    info = status.json()
    assert info["step"] == 2 and info["state"] == "stopped" and info["stop_reason"] == "max_steps"
    assert info["last_log"]["step"] == 2
    assert info["last_log"]["text_aux"] > 0 and info["last_probes"] == {}  # no probe in two steps
    table = run_cli("train", "status", "--run", run_dir)
    assert table.code == 0 and "step" in table.stdout and "stopped (max_steps)" in table.stdout, table
    assert "attribute head" in table.stdout and "text gain" not in table.stdout


def test_status_shows_the_last_text_probe_of_each_role(trained, tmp_path):
    import shutil

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
        for step, gain in ((200, 0.1), (400, 0.25)):
            fh.write(json.dumps({"event": "probe", "step": step, "role": "structure", "mse_right": 1 - gain,
                                 "mse_rotated": 1.0, "text_gain": gain}) + "\n")
    table = run_cli("train", "status", "--run", run_dir)
    assert table.code == 0 and "structure 0.250 (step 400)" in table.stdout, table
    assert run_cli("train", "status", "--run", run_dir, "--json").json()["last_probes"]["structure"]["step"] == 400


def test_export_refuses_to_overwrite_without_force(trained, tmp_path):
    run_dir, _, _ = trained
    out = tmp_path / "exported"
    first = run_cli("train", "export", "--run", run_dir, "--out", out)
    assert first.code == 0, first
    assert first.stdout.strip() == str(out) and " MB" in first.stderr and "pangu draw --model" in first.stderr
    manifest = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert manifest["training"]["step"] == 2 and (out / "texture.safetensors").is_file()
    before = (out / "texture.safetensors").stat().st_mtime_ns
    again = run_cli("train", "export", "--run", run_dir, "--out", out)
    assert_error(again, 2, str(out), "--force")
    assert (out / "texture.safetensors").stat().st_mtime_ns == before
    forced = run_cli("train", "export", "--run", run_dir, "--out", out, "--force", "--fp32", "--json")
    assert forced.code == 0, forced
    assert forced.json()["dtype"] == "float32" and (out / "model.json").is_file()
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine", encoding="utf-8")
    refused = run_cli("train", "export", "--run", run_dir, "--out", stranger, "--force")
    assert_error(refused, 2, "not a model folder")
    assert (stranger / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_export_defaults_to_the_user_models_folder(trained, tmp_path):
    run_dir, _, _ = trained
    result = run_cli("train", "export", "--run", run_dir, "--json")
    assert result.code == 0, result
    folder = Path(result.json()["folder"])
    assert folder == tmp_path / ".config" / "pangu" / "models" / "run-step2"  # isolated XDG_CONFIG_HOME
    assert (folder / "model.json").is_file()


def test_run_resumes_with_the_human_display(trained):
    run_dir, config, _ = trained
    result = run_cli("train", "run", "--run", run_dir, "--config", config, "--steps", 1, "--inline-data")
    assert result.code == 0, result
    assert "resuming at step 2" in result.stderr and "step 3" in result.stderr, result
    assert "samples/s" in result.stderr and result.stdout.startswith("step 3 (1 this session, max_steps)")
    assert json.loads((run_dir / "checkpoint.json").read_text(encoding="utf-8"))["step"] == 3


def test_interrupted_training_exits_130(monkeypatch, tmp_path):
    from pangu_cli.training import trainer

    def stopped_by_ctrl_c(config, run_dir, log=print, **options):  # what train() returns after SIGINT
        log("starting step 0")
        return {"step": 5, "first_step": 0, "reason": "SIGINT", "last_loss": float("nan"),
                "samples": {"structure": 10}, "elapsed_s": 1.0}

    monkeypatch.setattr(trainer, "train", stopped_by_ctrl_c)
    result = run_cli("train", "run", "--run", tmp_path / "run", "--json")
    assert result.code == 130, result
    summary = result.records()[-1]
    assert summary["reason"] == "SIGINT" and summary["last_loss"] is None
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "SIGINT" in lines[0] and "resume" in lines[0], result


def test_unknown_preset_is_one_line_naming_the_presets(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "run", "--run", run_dir, "--config", "pangu-maxi", "--steps", 1)
    assert_error(result, 2, "pangu-maxi", "pangu-mini", "single", "ediff")
    assert not run_dir.exists()


@pytest.mark.parametrize("command", ["status", "export"])
def test_missing_run_folder_is_one_line(command, tmp_path):
    result = run_cli("train", command, "--run", tmp_path / "nowhere")
    assert_error(result, 2, "nowhere", "pangu train run")
