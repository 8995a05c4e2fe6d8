"""Checkpoint I/O and strict loading: round trips, atomic writes, errors that name what is wrong."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal

import numpy as np
import pytest

FORMATS = (".ckpt", ".safetensors")


def _state() -> dict[str, np.ndarray]:
    """Every kind of entry a real checkpoint holds, with values that would expose reordering or casts."""
    rng = np.random.default_rng(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "model.diffusion_model.out.2.bias": rng.standard_normal(4).astype(np.float32),
        "conditioner.embedders.0.model.logit_scale": np.array(4.6052, np.float32),  # a 0-d parameter
        "conditioner.embedders.0.model.text_projection": rng.standard_normal((6, 5)).astype(np.float32).T,  # strided
        "first_stage_model.decoder.conv_in.weight": rng.standard_normal((3, 2)).astype(np.float16),
        "first_stage_model.decoder.conv_in.bias": np.array([1e-3, -65504.0, 0.5], np.float16),
        "step": np.array([123456789], np.int64),
        "position_ids": np.arange(77, dtype=np.int32)[None],
    }


def _assert_same_state(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_values_dtypes_and_shapes(ms, tmp_path, fmt):
    from pangu_cli.models.checkpoint import load_state, save_state

    state = _state()
    path = save_state(state, tmp_path / "nested" / f"model{fmt}")
    assert path == tmp_path / "nested" / f"model{fmt}"
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    _assert_same_state(load_state(path), state)


@pytest.mark.parametrize("fmt", FORMATS)
def test_prefix_selects_and_strips(ms, tmp_path, fmt):
    from pangu_cli.models.checkpoint import load_state, save_state

    state = _state()
    path = save_state(state, tmp_path / f"model{fmt}")
    vae = load_state(path, prefix="first_stage_model.")
    assert sorted(vae) == ["decoder.conv_in.bias", "decoder.conv_in.weight"]
    np.testing.assert_array_equal(vae["decoder.conv_in.bias"], state["first_stage_model.decoder.conv_in.bias"])
    assert load_state(path, prefix="no_such_prefix.") == {}


def test_overwrites_an_existing_checkpoint(ms, tmp_path):
    from pangu_cli.models.checkpoint import load_state, save_state

    for fmt in FORMATS:
        path = tmp_path / f"model{fmt}"
        save_state({"a": np.zeros(3, np.float32)}, path)
        save_state({"b": np.ones(2, np.float32)}, path)
        _assert_same_state(load_state(path), {"b": np.ones(2, np.float32)})
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt", "model.safetensors"]


def test_cell_state_round_trips_through_load_into(ms, tmp_path):
    """A Cell with a 0-d parameter (OpenCLIP's logit_scale) saves and loads back exactly."""
    from pangu_cli.models.checkpoint import cell_state, load_into, load_state, save_state
    from pangu_cli.models.text_encoders import OpenCLIPTextEncoder

    config = dict(vocab_size=50, width=32, layers=1, heads=2, context_length=8, proj_dim=16)
    source, target = OpenCLIPTextEncoder(**config), OpenCLIPTextEncoder(**config)
    source.logit_scale.set_data(ms.Tensor(np.array(2.5, np.float32)))
    state = cell_state(source)
    assert state["logit_scale"].shape == ()
    for fmt in FORMATS:
        path = save_state(state, tmp_path / f"openclip{fmt}")
        load_into(target, load_state(path))
        _assert_same_state(cell_state(target), state)


# --------------------------------------------------------------------------------------------------
# Atomic save


@contextlib.contextmanager
def _disk_full(limit: int = 64 * 1024):
    """Let files grow to `limit` bytes only: writes beyond fail with EFBIG, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_save_leaves_no_temp_and_keeps_the_old_file(ms, tmp_path, fmt):
    """A write that fails half-way (disk full) removes every temporary file, MindSpore's own included."""
    from pangu_cli.models.checkpoint import load_state, save_state

    path = tmp_path / f"model{fmt}"
    old = {"w": np.arange(4, dtype=np.float32)}
    save_state(old, path)
    big = {f"w{i}": np.ones((128, 128), np.float32) for i in range(4)}  # 256 KiB
    with pytest.raises(Exception, match="(?i)too large"):
        with _disk_full():
            save_state(big, path)
    assert os.listdir(tmp_path) == [path.name]
    _assert_same_state(load_state(path), old)


def test_unwritable_value_leaves_no_temp(ms, tmp_path):
    from pangu_cli.models.checkpoint import save_state

    for fmt in FORMATS:
        with pytest.raises(Exception):
            save_state({"ok": np.zeros(2, np.float32), "bad": np.array(["text"], dtype=object)}, tmp_path / f"m{fmt}")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# Unreadable files


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", ["truncated", "tail cut", "garbage", "empty"])
def test_corrupt_file_is_a_model_error(ms, tmp_path, fmt, damage):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.checkpoint import load_state, save_state

    rng = np.random.default_rng(1)
    path = save_state({f"w{i}": rng.standard_normal((32, 32)).astype(np.float32) for i in range(3)},
                      tmp_path / f"model{fmt}")
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 2 + 7], "tail cut": data[:-3],
           "garbage": b"\x00\x13not a checkpoint\xff" * 50, "empty": b""}[damage]
    path.chmod(0o600)  # MindSpore writes checkpoints read-only
    path.write_bytes(bad)
    with pytest.raises(ModelError) as error:
        load_state(path)
    message = error.value.one_line()
    assert path.name in message and "corrupt" in message
    reason = message.split(": ", 1)[1]
    assert not reason.startswith(("'", '"')), message  # the cause's text, not its repr
    if damage == "empty":
        assert "the file is empty" in message


def test_ckpt_cut_between_records_fails_at_the_key_check(ms, tmp_path):
    """A .ckpt is a run of independent records: cut exactly between two it still parses, with fewer
    keys. Loading is strict, so the loss surfaces as a CheckpointError naming what is missing."""
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import load_into, load_state, save_state

    state = _full_state()
    path = save_state(state, tmp_path / "net.ckpt")
    data = path.read_bytes()
    first_record = len(save_state({k: state[k] for k in list(state)[:1]}, tmp_path / "one.ckpt").read_bytes())
    path.chmod(0o600)
    path.write_bytes(data[:first_record])
    assert sorted(load_state(path)) == [list(state)[0]]
    with pytest.raises(CheckpointError, match=r"5 missing \(e\.g\. blocks\.0\.weight, blocks\.1\.weight"):
        load_into(_net(ms), load_state(path))


def test_unsupported_or_missing_file_is_a_model_error(ms, tmp_path):
    from pangu_cli.errors import ModelError
    from pangu_cli.models.checkpoint import load_state, save_state

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"whatever")
    with pytest.raises(ModelError, match=r"unsupported checkpoint format 'model\.pt'"):
        load_state(weights)
    with pytest.raises(ModelError, match="unsupported checkpoint format"):
        save_state({"a": np.zeros(1, np.float32)}, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_state(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------------------------------
# Strict loading into a Cell


def _net(ms):
    from mindspore import nn

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(4, 3)
            self.norm = nn.LayerNorm((3,))
            self.blocks = nn.CellList([nn.Dense(3, 3, has_bias=False) for _ in range(2)])

    return Net()


def _full_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"proj.weight": rng.standard_normal((3, 4)).astype(np.float32),
            "proj.bias": rng.standard_normal(3).astype(np.float32),
            "norm.gamma": rng.standard_normal(3).astype(np.float32),
            "norm.beta": rng.standard_normal(3).astype(np.float32),
            "blocks.0.weight": rng.standard_normal((3, 3)).astype(np.float32),
            "blocks.1.weight": rng.standard_normal((3, 3)).astype(np.float32)}


def test_load_into_copies_every_parameter(ms):
    from pangu_cli.models.checkpoint import cell_state, load_into

    net, state = _net(ms), _full_state()
    load_into(net, {k: v.astype(np.float64) for k, v in state.items()})  # cast to the parameter dtype
    got = cell_state(net)
    assert all(v.dtype == np.float32 for v in got.values())
    _assert_same_state(got, state)


def test_load_into_selects_a_prefix(ms):
    from pangu_cli.models.checkpoint import cell_state, load_into

    net, state = _net(ms), _full_state()
    mixed = {f"first_stage_model.{k}": v for k, v in state.items()}
    mixed.update({f"model.diffusion_model.{k}": v + 1 for k, v in state.items()})
    load_into(net, mixed, prefix="first_stage_model.")
    _assert_same_state(cell_state(net), state)


@pytest.mark.parametrize("change, expected", [
    (lambda s: s.pop("blocks.1.weight"), r"1 missing \(e\.g\. blocks\.1\.weight\)"),
    (lambda s: [s.pop(k) for k in ("norm.beta", "proj.bias")], r"2 missing \(e\.g\. norm\.beta, proj\.bias\)"),
    (lambda s: s.update({"blocks.2.weight": np.zeros((3, 3), np.float32)}),
     r"1 unexpected \(e\.g\. blocks\.2\.weight\)"),
    (lambda s: s.update({"proj.weight": np.zeros((4, 3), np.float32)}),
     r"1 with wrong shape \(proj\.weight \(4, 3\) != \(3, 4\)\)"),
])
def test_load_into_names_offenders_and_counts(ms, change, expected):
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import cell_state, load_into

    net, state = _net(ms), _full_state()
    before = cell_state(net)
    change(state)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_into(net, state, what="test net")
    assert "does not match the test net" in str(error.value)
    _assert_same_state(cell_state(net), before)  # nothing half-loaded


def test_load_into_reports_every_kind_of_problem_at_once(ms):
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import load_into

    net, state = _net(ms), _full_state()
    del state["norm.gamma"]
    state["extra.a"] = state["extra.b"] = np.zeros(1, np.float32)
    state["blocks.0.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(CheckpointError) as error:
        load_into(net, {f"p.{k}": v for k, v in state.items()}, prefix="p.")
    message = str(error.value)
    assert "Net (prefix 'p.')" in message
    assert re.search(r"1 missing \(e\.g\. norm\.gamma\); 2 unexpected \(e\.g\. extra\.a, extra\.b\); "
                     r"1 with wrong shape \(blocks\.0\.weight \(3,\) != \(3, 3\)\)", message), message


def test_load_into_shows_at_most_five_names(ms):
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import load_into

    state = _full_state()
    state.update({f"stray.{i}": np.zeros(1, np.float32) for i in range(8)})
    with pytest.raises(CheckpointError, match=r"8 unexpected \(e\.g\. stray\.0, stray\.1, stray\.2, stray\.3, "
                                              r"stray\.4\)"):
        load_into(_net(ms), state)


# --------------------------------------------------------------------------------------------------
# A whole model folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from pangu_cli import runtime
    from tiny_model import make_tiny_model

    runtime.setup("CPU")
    return make_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny")


def _spec(folder):
    from pangu_cli.models.registry import resolve

    return resolve(str(folder))


def test_load_model_fills_every_network_from_the_files(ms, tiny_folder):
    from pangu_cli.models.checkpoint import cell_state, load_state
    from pangu_cli.models.loader import load_model

    model = load_model(_spec(tiny_folder))
    assert [role for role, _ in model.experts] == ["structure", "texture"]
    texture = load_state(tiny_folder / "texture.safetensors")
    structure = load_state(tiny_folder / "structure.safetensors")
    loaded = {**cell_state(model.unets["texture"], "model.diffusion_model."),
              **cell_state(model.conditioner, "conditioner."),
              **cell_state(model.vae, "first_stage_model.")}
    _assert_same_state(loaded, texture)
    _assert_same_state(cell_state(model.unets["structure"], "model.diffusion_model."), structure)
    assert not np.array_equal(texture["model.diffusion_model.out.2.weight"],
                              structure["model.diffusion_model.out.2.weight"])
    assert model.conditioner.tokenizers and model.timings["load"] > 0


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    for file in dst.glob("*.safetensors"):
        file.chmod(0o600)
    return dst


def _stray_key(state):
    state["model_ema.decay"] = np.array(0.9999, np.float32)


def _missing_key(state):
    del state["model.diffusion_model.middle_block.1.proj_in.weight"]


def _wrong_shape(state):
    state["first_stage_model.decoder.conv_out.weight"] = np.zeros((3, 64, 3, 3), np.float32)


@pytest.mark.parametrize("file, corrupt, expected", [
    ("texture", _stray_key, [r"texture\.safetensors", r"model_ema\.decay", r"\b1 unexpected"]),
    ("structure", _missing_key, [r"structure", r"middle_block\.1\.proj_in\.weight", r"\b1 missing"]),
    ("texture", _wrong_shape, [r"texture\.safetensors",
                               r"\b1 with wrong shape \(.*decoder\.conv_out\.weight \(3, 64, 3, 3\) != \(3, 32, 3, 3\)"]),
], ids=["stray key", "missing key", "wrong shape"])
def test_load_model_rejects_a_checkpoint_that_does_not_fit(ms, tiny_folder, tmp_path, file, corrupt, expected):
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import load_state, save_state
    from pangu_cli.models.loader import load_model

    folder = _copy_folder(tiny_folder, tmp_path / "tiny")
    state = load_state(folder / f"{file}.safetensors")
    corrupt(state)
    save_state(state, folder / f"{file}.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_model(_spec(folder))
    for pattern in expected:
        assert re.search(pattern, str(error.value)), (pattern, str(error.value))
