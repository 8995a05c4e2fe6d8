"""`pangu batch` under MindSpore's launcher msrun: really launched with 2 CPU workers on loopback (unique
ports, bounded time): every prompt drawn exactly once into one folder, per-rank manifest parts, a worker
killed mid-run and the command re-run; and the one-line errors of --workers / --port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pangu_cli import distributed
from test_cli import (  # noqa: F401  (fixtures)
    assert_error, isolated_config, pngs, run_cli, subprocess_env, tiny_model, tiny_model_folder)
from test_cli_train import TINY_TOML

FAST = ("--steps", "1", "--style-scale", "0")


def prompts(tmp_path: Path, n: int = 20) -> Path:
    source = tmp_path / "prompts.txt"
    source.write_text("".join(f"a red cat number {i}\n" for i in range(n)), encoding="utf-8")
    return source


def batch_command(source: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pangu_cli", "batch", str(source), "--out", str(out), "--model", str(model),
            "--workers", "2", *FAST, *extra]


def manifest_records(out: Path) -> list[dict]:
    records = []
    for part in sorted((out / ".pangu").glob("manifest*.jsonl")):
        records += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
    return records


def test_helpers():
    assert distributed.Rank(1, 4, 1).shard == "2/4" and distributed.Rank(0, 2, 0).main
    assert distributed.under_msrun({"MS_ROLE": "MS_WORKER"}) and not distributed.under_msrun({})
    assert distributed.under_scheduler({"MS_ROLE": "MS_SCHED"})
    from pangu_cli.cli import _without_options

    assert _without_options(["batch", "f", "--workers", "2", "--port=99", "--out", "o"], {"--workers", "--port"}) \
        == ["batch", "f", "--out", "o"]


@pytest.mark.slow
def test_two_workers_draw_every_prompt_once(tiny_model_folder, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(batch_command(prompts(tmp_path), out, tiny_model_folder, "--json"), capture_output=True,
                          timeout=420, env=subprocess_env(tmp_path / ".config"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    images = pngs(out)
    assert len(images) == 20 and not any(".tmp" in p.name for p in images)
    records = manifest_records(out)
    assert len(records) == 20 and len({r["key"] for r in records}) == 20
    parts = sorted(p.name for p in (out / ".pangu").glob("manifest*.jsonl"))
    assert parts == ["manifest-1of2.jsonl", "manifest-2of2.jsonl"]  # one part per rank, no shared writer
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert sorted(Path(r["path"]).name for r in lines) == sorted(p.name for p in images)  # each once


def _worker_pids(entry: Path, rank: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(entry).encode() in cmdline and b"MS_ROLE=MS_WORKER" in environ and f"RANK_ID={rank}".encode() in environ:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_a_killed_worker_is_finished_by_running_again(tiny_model_folder, tmp_path):
    out = tmp_path / "out"
    source = prompts(tmp_path)
    env = subprocess_env(tmp_path / ".config")
    run = subprocess.Popen(batch_command(source, out, tiny_model_folder), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    entry = out / ".pangu" / "msrun" / "entry.py"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(manifest_records(out) if out.is_dir() else []) < 3:
        time.sleep(0.5)
    victims = _worker_pids(entry, 1)
    assert victims, "rank 1 was not found running"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode != 0  # a worker died: images are missing, and the error says how to finish
    assert "run the same command again" in stderr.decode()
    made_before = {r["key"] for r in manifest_records(out)}
    assert 0 < len(made_before) < 20

    again = subprocess.run(batch_command(source, out, tiny_model_folder), capture_output=True, timeout=420,
                           env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    records = manifest_records(out)
    keys = [r["key"] for r in records]
    assert len(set(keys)) == 20 and len(keys) == len(set(keys))  # nothing made twice
    assert len(pngs(out)) == 20


def test_bad_workers_and_port(tiny_model, tmp_path):
    source = prompts(tmp_path, 2)
    assert_error(run_cli("batch", source, "--model", tiny_model, "--out", tmp_path / "o", "--workers", "0"), 2,
                 "--workers 0 is out of range")
    assert_error(run_cli("batch", source, "--model", tiny_model, "--out", tmp_path / "o", "--port", "9999"), 2,
                 "--port needs --workers")
    assert_error(run_cli("batch", source, "--model", tiny_model, "--out", tmp_path / "o", "--workers", "2",
                         "--shard", "1/2"), 2, "--shard and --workers both given")
    assert_error(run_cli("batch", "-", "--model", tiny_model, "--out", tmp_path / "o", "--workers", "2",
                         input="a cat\n"), 2, "--workers cannot read prompts from stdin")
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert_error(run_cli("batch", source, "--model", tiny_model, "--out", tmp_path / "o", "--workers", "2",
                             "--port", str(taken)), 2, f"port {taken} is in use")
    assert not (tmp_path / "o").exists() or not pngs(tmp_path / "o")


# test_cli_train.py's tiny config with a global batch that two ranks split into 2 rows each.
assert "batch_size = 2\n" in TINY_TOML
TRAIN_TOML = TINY_TOML.replace("batch_size = 2\n", "batch_size = 4\n")


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return [next(iter(r["loss"].values())) for r in records if "loss" in r]


@pytest.mark.slow
def test_two_workers_train_like_one_with_the_same_global_batch(tmp_path):
    """Data parallel: each of 2 ranks takes half of the same global batch and the gradients are averaged,
    so the loss curve equals a single process's (float sums in another order: within 1e-3 relative)."""
    config = tmp_path / "tiny.toml"
    config.write_text(TRAIN_TOML, encoding="utf-8")
    env = subprocess_env(tmp_path / ".config")
    single = subprocess.run([sys.executable, "-m", "pangu_cli", "train", "run", "--run", str(tmp_path / "one"),
                             "--config", str(config), "--steps", "4", "--inline-data", "--json"],
                            capture_output=True, timeout=300, env=env, cwd=tmp_path)
    assert single.returncode == 0, single.stderr.decode()
    logs = tmp_path / "msrun-logs"
    entry = tmp_path / "entry.py"
    entry.write_text(distributed.ENTRY, encoding="utf-8")
    command = distributed.msrun_command(2, distributed.free_port(), logs, entry,
                                       ["train", "run", "--run", str(tmp_path / "two"), "--config", str(config),
                                        "--steps", "4", "--inline-data", "--json"])
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    double = subprocess.run(command, capture_output=True, timeout=420, env=env, cwd=tmp_path)
    assert double.returncode == 0, (double.stdout.decode()[-3000:], [p.read_text()[-2000:] for p in logs.glob("*.log")])
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    np.testing.assert_allclose(two, one, rtol=1e-3)
    # rank 0 alone saves: Trainer.save raises on any other rank, which would have failed the run above
    assert len(list((tmp_path / "two").glob("checkpoint-*.safetensors"))) == 1
    events = [json.loads(line).get("event") for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("stop") == 1  # one log, from rank 0
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert {r.get("rank_batch") for r in records if "loss" in r} == {2}  # each rank trains half the batch
    assert next(r for r in records if r.get("event") == "start")["ranks"] == 2
