"""PanGu-Draw 3.0's official checkpoints: full-size parameter names against the reference list, the streaming
checkpoint index, `models add` / `models verify`, and loading + generating with a tiny model in the official
layout (MindSpore .ckpt files in the reference's naming, hashed file names, stored buffers, bookkeeping keys),
including separate text-encoder / VAE files, offload, lazy texture loading and fp16 weights."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
PROMPT = "一只红色的猫 on the sea"
# The reference list's one typo (README of ../shared/reference): this is the CLIP-L token embedding.
REFERENCE_TYPO = {"conditioner.embedders.1.model.token_embedding..embedding_table":
                  "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.embedding_table"}
FULL_UNET_PARAMS = 2_565_825_284  # SDXL base's 2,567,463,684 minus (2816 - 1536) * 1280


def _reference_shapes() -> dict[str, tuple]:
    shapes = {}
    for line in (DATA / "sdxl_base_mindspore_keys.txt").read_text().splitlines():
        name, shape = line.strip().rsplit(":", 1)
        shapes[REFERENCE_TYPO.get(name, name)] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return shapes


# --------------------------------------------------------------------------------------------------
# Full size


def test_full_size_parameters_equal_the_reference_list(ms):
    """UNet, autoencoder and bigG from pangu_draw_v3.json against MindONE's SDXL-base list, built without
    allocating weights. PanGu's Chinese tower has SDXL's CLIP-L layout (`embedders.0.transformer.text_model`)
    with a vocabulary and depth read from the checkpoint, so it is compared at CLIP-L size (49408 × 12)."""
    from pangu_cli.models.conditioner import Conditioner
    from pangu_cli.models.loader import _shapes, without_init
    from pangu_cli.models.official import official_manifest
    from pangu_cli.models.unet import UNetModel
    from pangu_cli.models.vae import AutoencoderKL

    manifest = official_manifest()
    with without_init():
        ours = {"model.diffusion_model." + k: v for k, v in _shapes(UNetModel(**manifest["unet"])).items()}
        ours.update({"first_stage_model." + k: v for k, v in _shapes(AutoencoderKL(**manifest["vae"])).items()})
        conditioner = Conditioner(manifest["text_encoders"], manifest["size_embedding"]["dim"])
        ours.update({"conditioner." + k: v for k, v in _shapes(conditioner).items()})
    reference = _reference_shapes()
    missing = sorted(set(reference) - set(ours))
    extra = sorted(set(ours) - set(reference))
    shapes = {k: (ours[k], reference[k]) for k in sorted(set(ours) & set(reference)) if ours[k] != reference[k]}
    report = f"missing {missing[:10]}, extra {extra[:10]}, shapes {dict(list(shapes.items())[:10])}"
    assert not missing and not extra, report
    # The one documented difference: PanGu's vector is bigG pooled 1280 + 256-d size index = 1536 (SDXL 2816).
    assert shapes == {"model.diffusion_model.label_emb.0.0.weight": ((1280, 1536), (1280, 2816))}, report
    unet = sum(int(np.prod(v)) for k, v in ours.items() if k.startswith("model.diffusion_model."))
    assert unet == FULL_UNET_PARAMS
    assert len(ours) == len(reference) == 2514


def test_official_config_holds_the_reference_defaults():
    from pangu_cli.models.official import check_dimensions, official_manifest
    from pangu_cli.ratios import HIGH_SOLUTION_BASE_SIZE_LIST

    m = official_manifest()
    unet = m["unet"]
    assert (unet["model_channels"], unet["channel_mult"], unet["transformer_depth"], unet["context_dim"],
            unet["adm_in_channels"], unet["num_head_channels"], unet["use_linear_in_transformer"]) == \
           (320, [1, 2, 4], [1, 2, 10], 2048, 1536, 64, True)
    assert m["vae"]["scale_factor"] == 0.13025 and m["vae"]["ddconfig"]["ch_mult"] == [1, 2, 4, 4]
    zh, en = m["text_encoders"]
    assert (zh["kind"], zh["layer"], zh["config"]["hidden_size"], zh["tokenizer"]["kind"]) == \
           ("hf_clip", "last", 768, "wordpiece")
    assert (en["kind"], en["layer"], en["pooled"], en["config"]["width"], en["config"]["layers"],
            en["config"]["act"]) == ("openclip", "penultimate", True, 1280, 32, "gelu_tanh")
    assert m["size_embedding"]["dim"] == 256 and m["size_embedding"]["trained_buckets"] == 11
    assert [tuple(b) for b in m["buckets"]] == list(HIGH_SOLUTION_BASE_SIZE_LIST)
    assert m["sampling"] == {"steps": 40, "guidance": 6.0, "sampler": "euler", "switch_t": 500, "switch_lag": True,
                             "styles": {"art": 4.0}, "negative": ""}
    assert m["style_prefixes"] == {"art": "義 ", "anime": "饅 ", "photo": "霙 "}
    assert m["checkpoints"] == {"texture": "pangu_low_timestamp-127da122.ckpt",
                                "structure": "pangu_high_timestamp-c6344411.ckpt"}
    check_dimensions(m)  # 768 + 1280 = 2048 context, 1280 + 256 = 1536 vector


# --------------------------------------------------------------------------------------------------
# The checkpoint index


def test_ckpt_index_reads_what_mindspore_wrote(ms, tmp_path, monkeypatch):
    """Every dtype, a 0-d tensor, a tensor MindSpore splits into slices, a string entry and the CRC trailer."""
    import mindspore.train.serialization as serialization

    from pangu_cli.models.loader import index_checkpoint, read_tensors

    rng = np.random.default_rng(0)
    state = {"big": rng.standard_normal((150, 5)).astype(np.float32),
             "half": rng.standard_normal((3, 2)).astype(np.float16),
             "scalar": np.array(4.6052, np.float32), "ids": np.arange(77, dtype=np.int32)[None],
             "step": np.array([7], np.int64)}
    monkeypatch.setattr(serialization, "SLICE_SIZE", 1)  # KB: "big" (3000 B) is written in 3 records
    entries = [{"name": k, "data": ms.Tensor(v)} for k, v in state.items()]
    entries.append({"name": "bf", "data": ms.Tensor(state["big"][:4], ms.bfloat16)})
    ms.save_checkpoint(entries, str(tmp_path / "a.ckpt"), crc_check=True, append_dict={"note": "text"})
    index = index_checkpoint(tmp_path / "a.ckpt")
    assert len(index["big"].chunks) == 3 and "note" not in index
    loaded = dict(read_tensors(index))
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    expected_bf = ms.Tensor(state["big"][:4], ms.bfloat16).astype(ms.float32).asnumpy()
    np.testing.assert_array_equal(loaded["bf"], expected_bf)


def test_safetensors_index_and_unreadable_files(ms, tmp_path):
    from safetensors.numpy import save_file

    from pangu_cli.errors import ModelError
    from pangu_cli.models.loader import index_checkpoint, read_tensors

    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.ones(2, np.float16)}
    save_file(state, str(tmp_path / "a.safetensors"))
    loaded = dict(read_tensors(index_checkpoint(tmp_path / "a.safetensors")))
    np.testing.assert_array_equal(loaded["w"], state["w"])
    assert loaded["h"].dtype == np.float16
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    (tmp_path / "junk.ckpt").write_bytes(b"\xff" * 64)
    for name in ("cut.safetensors", "junk.ckpt"):
        with pytest.raises(ModelError, match=f"cannot read checkpoint {name}"):
            index_checkpoint(tmp_path / name)


# --------------------------------------------------------------------------------------------------
# A tiny model in the official layout

TINY_WIDTH = 32
SIZE_DIM = 16


def _tiny_manifest(zh_vocab: int, en_vocab: int) -> dict:
    """pangu_draw_v3.json with every width shrunk: same embedders, prefixes, three UNet levels, f8 VAE."""
    from pangu_cli.models.official import official_manifest

    m = official_manifest()
    m["unet"].update(model_channels=32, num_res_blocks=1, transformer_depth=[1, 1, 2], num_head_channels=16,
                     context_dim=2 * TINY_WIDTH, adm_in_channels=TINY_WIDTH + SIZE_DIM)
    m["vae"]["ddconfig"].update(ch=32, ch_mult=[1, 2, 2, 2], num_res_blocks=1)
    zh, en = m["text_encoders"]
    zh["config"].update(vocab_size=zh_vocab, hidden_size=TINY_WIDTH, layers=2, heads=2, intermediate_size=64)
    en["config"].update(vocab_size=en_vocab, width=TINY_WIDTH, layers=3, heads=2, proj_dim=TINY_WIDTH)
    m["size_embedding"]["dim"] = SIZE_DIM
    m["buckets"] = [[64, 64], [64, 128], [128, 64]]
    m["sampling"]["steps"] = 4
    return m


def _write_official_tokenizers(folder: Path) -> tuple[int, int]:
    """vocab_zh.txt and bpe_simple_vocab_16e6.txt.gz, the files the reference ships."""
    from tiny_model import MERGES, write_tokenizers

    zh_size, _ = write_tokenizers(folder / "tmp")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(folder / "tmp" / "tokenizers" / "zh" / "vocab.txt", folder / "vocab_zh.txt")
    shutil.rmtree(folder / "tmp")
    lines = ["#version: 0.2"] + [" ".join(m) for m in MERGES]
    (folder / "bpe_simple_vocab_16e6.txt.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    return zh_size, 512 + len(MERGES) + 2


def _randomised(cell, rng) -> dict[str, np.ndarray]:
    from pangu_cli.models.checkpoint import cell_state
    from tiny_model import _randomise

    _randomise(cell, rng)
    return cell_state(cell)


def _save_hashed(state: dict, folder: Path, stem: str) -> Path:
    """Write a MindSpore .ckpt and name it `<stem>-<first 8 hex of its SHA-256>.ckpt`, as the official files."""
    from pangu_cli.models.checkpoint import save_state

    tmp = save_state(state, folder / f"{stem}.ckpt")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"{stem}-{digest}.ckpt")


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """The user's download: two hashed .ckpt files (texture = UNet + text towers + VAE, with MindONE's stored
    position_ids / attn_mask and a global_step; structure = UNet + the conditioner it was trained with) and the
    reference's tokenizer files. Returns (folder, manifest, pieces) with the pieces for split-file tests."""
    from pangu_cli import runtime

    runtime.setup("CPU")
    from pangu_cli.models.conditioner import Conditioner
    from pangu_cli.models.unet import UNetModel
    from pangu_cli.models.vae import AutoencoderKL

    folder = tmp_path_factory.mktemp("official")
    zh_vocab, en_vocab = _write_official_tokenizers(folder / "tokenizer")
    manifest = _tiny_manifest(zh_vocab, en_vocab)
    rng = np.random.default_rng(3)
    conditioner = _randomised(Conditioner(manifest["text_encoders"], SIZE_DIM), rng)
    conditioner["embedders.0.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int32)[None]
    conditioner["embedders.1.model.attn_mask"] = np.triu(np.full((77, 77), -np.inf, np.float32), k=1)
    vae = _randomised(AutoencoderKL(**manifest["vae"]), rng)
    texture_unet = _randomised(UNetModel(**manifest["unet"]), rng)
    structure_unet = _randomised(UNetModel(**manifest["unet"]), rng)
    pieces = {"unet.texture": texture_unet, "unet.structure": structure_unet, "conditioner": conditioner, "vae": vae}
    texture = {**{"model.diffusion_model." + k: v for k, v in texture_unet.items()},
               **{"conditioner." + k: v for k, v in conditioner.items()},
               **{"first_stage_model." + k: v for k, v in vae.items()}, "global_step": np.array([1000], np.int32)}
    structure = {**{"model.diffusion_model." + k: v for k, v in structure_unet.items()},
                 **{"conditioner." + k: v for k, v in conditioner.items()}}
    _save_hashed(texture, folder, "pangu_low_timestamp")
    _save_hashed(structure, folder, "pangu_high_timestamp")
    return folder, manifest, pieces


def _files(folder: Path) -> dict[str, Path]:
    return {"texture": next(folder.glob("pangu_low_timestamp-*.ckpt")),
            "structure": next(folder.glob("pangu_high_timestamp-*.ckpt"))}


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "pangu"


def _add(name, official_files, monkeypatch, **kwargs):
    """models add, with the tiny widths in place of the full-size template."""
    from pangu_cli.models import official

    folder, manifest, _ = official_files
    template = json.loads(json.dumps(manifest))
    monkeypatch.setattr(official, "official_manifest", lambda: json.loads(json.dumps(template)))
    files = _files(folder)
    kwargs.setdefault("texture", files["texture"])
    kwargs.setdefault("structure", files["structure"])
    kwargs.setdefault("tokenizers", folder / "tokenizer")
    return official.add_model(name, **kwargs)


def _settings(**changes):
    from pangu_cli.settings import ImageSettings

    # Two steps without the reference's one-step lag: one structure step (t 999), one texture step (t 499).
    # The machines running the tests are shared and slow, so every generation counts.
    base = dict(prompt=PROMPT, seed=5, steps=2, guidance=6.0, sampler="euler", width=64, height=64,
                bucket_index=0, model="tiny", styles={}, switch_lag=False)
    return ImageSettings(**{**base, **changes})


def _generate(model, **changes):
    from pangu_cli.sampling.pipeline import Generator

    return Generator(model).generate(_settings(**changes))


@pytest.fixture(scope="module")
def reference_run(official_files, tmp_path_factory):
    """The model registered from the official-style files, loaded in the default mode, and one image."""
    import os

    from pangu_cli.models import official, registry
    from pangu_cli.models.loader import load_model

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(home)
    try:
        folder, manifest, _ = official_files
        saved = official.official_manifest
        official.official_manifest = lambda: json.loads(json.dumps(manifest))
        try:
            files = _files(folder)
            official.add_model("tiny-v3", texture=files["texture"], structure=files["structure"],
                               tokenizers=folder / "tokenizer")
        finally:
            official.official_manifest = saved
        spec = registry.resolve("tiny-v3")
        model = load_model(spec)
        return spec, model, _generate(model)
    finally:
        if old is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = old


def test_add_infers_the_encoders_and_registers(ms, official_files, config_home, monkeypatch):
    from pangu_cli.models import registry

    result = _add("pangu-v3", official_files, monkeypatch)
    spec = registry.resolve("pangu-v3")
    assert spec.source == "user" and spec.root == result.folder
    assert result.folder == (config_home / "models" / "pangu-v3").resolve()
    zh, en = spec.manifest["text_encoders"]
    # Read from the checkpoint shapes, not from the template (which the test shrank to other values on purpose).
    assert (zh["config"]["layers"], zh["config"]["hidden_size"], zh["config"]["intermediate_size"]) == (2, 32, 64)
    assert (en["config"]["layers"], en["config"]["width"], en["config"]["proj_dim"]) == (3, 32, 32)
    assert zh["tokenizer"]["path"].endswith("vocab_zh.txt")
    assert en["tokenizer"]["path"].endswith("bpe_simple_vocab_16e6.txt.gz")
    assert any("text encoder 0 (hf_clip): 2 layers" in note for note in result.notes)
    assert 'path = "' in (config_home / "models.toml").read_text()


def test_add_reads_the_encoder_depth_from_the_checkpoint(ms, official_files, config_home, monkeypatch):
    from pangu_cli.models import official

    folder, manifest, _ = official_files
    wrong = json.loads(json.dumps(manifest))
    wrong["text_encoders"][0]["config"].update(layers=12, intermediate_size=3072, vocab_size=49408)
    monkeypatch.setattr(official, "official_manifest", lambda: json.loads(json.dumps(wrong)))
    files = _files(folder)
    result = official.add_model("x", texture=files["texture"], structure=files["structure"],
                                tokenizers=folder / "tokenizer")
    cfg = json.loads((result.folder / "model.json").read_text())["text_encoders"][0]["config"]
    assert (cfg["layers"], cfg["intermediate_size"], cfg["vocab_size"]) == (2, 64, manifest["text_encoders"][0][
        "config"]["vocab_size"])


def test_add_errors(ms, official_files, config_home, monkeypatch, tmp_path):
    from pangu_cli.errors import CheckpointError, UsageError
    from pangu_cli.models.checkpoint import save_state

    folder, _, _ = official_files
    with pytest.raises(UsageError, match="needs both UNet checkpoints: --structure"):
        _add("a", official_files, monkeypatch, structure=None)
    with pytest.raises(UsageError, match="invalid model name"):
        _add("../x", official_files, monkeypatch)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no vocab_zh.txt or vocab.txt"):
        _add("a", official_files, monkeypatch, tokenizers=tmp_path / "empty")
    _add("a", official_files, monkeypatch)
    vae = save_state(official_files[2]["vae"], tmp_path / "vae.safetensors")
    with pytest.raises(UsageError, match="already exists"):
        _add("a", official_files, monkeypatch, vae=vae)
    assert _add("a", official_files, monkeypatch, vae=vae, force=True).name == "a"
    with pytest.raises(CheckpointError, match=r"pangu_low_timestamp-\w+\.ckpt: \d+ unexpected keys outside "
                                              r"first_stage_model\."):
        _add("b", official_files, monkeypatch, vae=_files(folder)["texture"])  # not an autoencoder-only file


def test_verify_passes_with_hashes_and_progress(ms, official_files, config_home, monkeypatch):
    from pangu_cli.models import registry
    from pangu_cli.models.official import verify_model

    _add("v", official_files, monkeypatch)
    seen = {}

    def progress(label, total):
        seen[label] = [total, 0]
        return lambda n: seen[label].__setitem__(1, seen[label][1] + n)

    report = verify_model(registry.resolve("v"), progress=progress)
    assert report.ok, report.to_dict()
    names = [c.name for c in report.checks]
    assert names[0] == "files" and "keys texture" in names and "keys structure" in names
    assert sum(n.startswith("sha256 pangu_") for n in names) == 2
    assert all(total == done > 0 for total, done in seen.values()) and len(seen) == 2
    assert any("ignored" in note and "structure" in note for note in report.notes)


def test_verify_names_a_bad_hash_and_bad_keys(ms, official_files, config_home, monkeypatch, tmp_path):
    from pangu_cli.models import registry
    from pangu_cli.models.checkpoint import load_state, save_state
    from pangu_cli.models.official import verify_model

    folder, _, _ = official_files
    files = _files(folder)
    texture = load_state(files["texture"])
    del texture["model.diffusion_model.middle_block.1.proj_in.weight"]
    texture["conditioner.embedders.1.model.extra_head.weight"] = np.zeros(2, np.float32)
    broken = save_state(texture, tmp_path / "pangu_low_timestamp-00000000.ckpt")
    _add("bad", official_files, monkeypatch, texture=broken)
    report = verify_model(registry.resolve("bad"))
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert set(failed) == {"sha256 pangu_low_timestamp-00000000.ckpt", "keys texture"}, failed
    assert "does not start with 00000000" in failed["sha256 pangu_low_timestamp-00000000.ckpt"]
    # The first offending group: the UNet's missing key (the text encoders' stray key comes after).
    assert "texture UNet" in failed["keys texture"] and "middle_block.1.proj_in.weight" in failed["keys texture"]


def test_official_layout_loads_and_generates(ms, reference_run, official_files):
    from pangu_cli.models.checkpoint import cell_state

    spec, model, result = reference_run
    _, _, pieces = official_files
    assert [role for role, _ in model.experts] == ["structure", "texture"]
    for role in ("texture", "structure"):
        state = cell_state(model.unets[role])
        for key in ("out.2.weight", "label_emb.0.0.weight", "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight"):
            np.testing.assert_array_equal(state[key], pieces[f"unet.{role}"][key])
    assert result.pixels.shape == (64, 64, 3) and result.pixels.std() > 0
    assert np.isfinite(result.latent).all()
    assert result.expert_steps == ["structure", "texture"]


def test_missing_or_extra_key_fails_to_load_with_the_name(ms, official_files, tmp_path):
    from pangu_cli.errors import CheckpointError
    from pangu_cli.models.checkpoint import load_state, save_state
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import ModelSpec

    folder, manifest, _ = official_files
    files = _files(folder)
    state = load_state(files["texture"])
    tokenizers = {0: str(folder / "tokenizer" / "vocab_zh.txt"), 1: str(folder / "tokenizer" /
                                                                        "bpe_simple_vocab_16e6.txt.gz")}

    def spec_for(texture_state):
        path = save_state(texture_state, tmp_path / "t.ckpt")
        m = json.loads(json.dumps(manifest))
        m["checkpoints"] = {"texture": str(path), "structure": str(files["structure"])}
        for i, enc in enumerate(m["text_encoders"]):
            enc["tokenizer"]["path"] = tokenizers[i]
        return ModelSpec("t", tmp_path, m, "path")

    missing = dict(state)
    del missing["conditioner.embedders.1.model.transformer.resblocks.2.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match=r"text encoders \(t\.ckpt\).*1 missing \(e\.g\. "
                                              r"embedders\.1\.model\.transformer\.resblocks\.2\.mlp\.c_fc\.bias\)"):
        load_model(spec_for(missing))
    extra = {**state, "first_stage_model.decoder.up.9.block.0.conv1.weight": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointError, match=r"autoencoder \(t\.ckpt\).*1 unexpected \(e\.g\. "
                                              r"decoder\.up\.9\.block\.0\.conv1\.weight\)"):
        load_model(spec_for(extra))
    stray = {**state, "model_ema.decay": np.array(0.99, np.float32)}
    with pytest.raises(CheckpointError, match=r"t\.ckpt: 1 unexpected keys outside .*model_ema\.decay"):
        load_model(spec_for(stray))
    bad_mask = {**state, "conditioner.embedders.1.model.attn_mask": np.zeros((77, 77), np.float32)}
    with pytest.raises(CheckpointError, match="attn_mask is not a causal mask"):
        load_model(spec_for(bad_mask))


def test_separate_text_encoder_and_vae_files_load_the_same_weights(ms, reference_run, official_files, tmp_path):
    """UNet-only texture file + text encoders by tower (`transformer.*`, `model.*`) + a VAE without prefix."""
    from pangu_cli.models.checkpoint import cell_state, save_state
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import ModelSpec

    spec, reference, _ = reference_run
    _, _, pieces = official_files
    cond = pieces["conditioner"]
    texture = save_state({"model.diffusion_model." + k: v for k, v in pieces["unet.texture"].items()},
                         tmp_path / "unet.safetensors")
    zh = save_state({k.split(".", 2)[2]: v for k, v in cond.items() if k.startswith("embedders.0.")},
                    tmp_path / "zh.ckpt")
    en = save_state({k.split(".", 2)[2]: v for k, v in cond.items() if k.startswith("embedders.1.")},
                    tmp_path / "en.safetensors")
    vae = save_state(pieces["vae"], tmp_path / "vae.ckpt")
    manifest = json.loads(json.dumps(spec.manifest))
    manifest["checkpoints"].update(texture=str(texture), text_encoders=[str(zh), str(en)], vae=str(vae))
    model = load_model(ModelSpec("split", tmp_path, manifest, "path"))
    for name in ("conditioner", "vae"):
        got, want = cell_state(getattr(model, name)), cell_state(getattr(reference, name))
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key, value in cell_state(model.unets["texture"]).items():
        np.testing.assert_array_equal(value, pieces["unet.texture"][key], err_msg=key)


def _with_options(monkeypatch, **changes):
    from pangu_cli.models import loader

    real = loader.device_options
    monkeypatch.setattr(loader, "device_options",
                        lambda *a, **k: loader.DeviceOptions(**{**real(*a, **k).__dict__, **changes}))
    return loader


def test_offload_keeps_one_unet_and_gives_the_same_image(ms, reference_run, monkeypatch):
    """CPU: the idle expert waits in its file and is read again at each switch."""
    from pangu_cli.models.checkpoint import cell_state

    loader = _with_options(monkeypatch, offload_cache="disk")
    spec, _, expected = reference_run
    model = loader.load_model(spec, offload=True)
    bank = model.bank
    assert bank.reads == ["structure"] and list(model.unets) == ["structure"]  # texture not read yet (lazy)
    np.testing.assert_array_equal(_generate(model).pixels, expected.pixels)
    assert bank.reads == ["structure", "texture"] and list(model.unets) == ["texture"]
    bank.get("structure")  # the next image starts with the structure model again
    assert bank.reads == ["structure", "texture", "structure"] and len(bank._cells) == 1  # one UNet Cell, ever
    np.testing.assert_array_equal(cell_state(model.unets["structure"])["out.2.weight"],
                                  cell_state(reference_run[1].unets["structure"])["out.2.weight"])


def test_offload_to_host_memory_swaps_without_reading_files_again(ms, reference_run, monkeypatch):
    """Beside an accelerator the idle expert waits in host RAM: after the first read, swaps use that copy."""
    from pangu_cli.models import unet_bank
    from pangu_cli.models.checkpoint import cell_state

    loader = _with_options(monkeypatch, offload_cache="host")
    spec, reference, _ = reference_run
    model = loader.load_model(spec, offload=True)
    bank = model.bank
    for role in ("texture", "structure", "texture"):
        bank.get(role)
    assert sorted(bank._host) == ["structure", "texture"] and len(bank._cells) == 1
    monkeypatch.setattr(unet_bank, "read_tensors", lambda refs: pytest.fail("read the file again"))
    unet = bank.get("structure")
    for key, value in cell_state(reference.unets["structure"]).items():
        np.testing.assert_array_equal(cell_state(unet)[key], value, err_msg=key)


def test_lazy_texture_reads_it_at_its_first_call(ms, reference_run, monkeypatch):
    import mindspore as ms_

    from pangu_cli.models.checkpoint import cell_state
    from pangu_cli.models.loader import load_model

    spec, reference, _ = reference_run
    monkeypatch.setenv("PANGU_OFFLOAD", "0")
    model = load_model(spec, lazy_texture=True)
    assert list(model.unets) == ["structure"] and model.bank.reads == ["structure"]
    texture = dict(model.experts)["texture"]
    rng = np.random.default_rng(0)
    out = texture(ms_.Tensor(rng.standard_normal((1, 4, 8, 8)).astype(np.float32)), ms_.Tensor([10], ms_.int32),
                  ms_.Tensor(rng.standard_normal((1, 77, 2 * TINY_WIDTH)).astype(np.float32)),
                  ms_.Tensor(rng.standard_normal((1, TINY_WIDTH + SIZE_DIM)).astype(np.float32)))
    assert out.shape == (1, 4, 8, 8)
    assert sorted(model.unets) == ["structure", "texture"] and model.bank.reads == ["structure", "texture"]
    np.testing.assert_array_equal(cell_state(model.unets["texture"])["out.2.weight"],
                                  cell_state(reference.unets["texture"])["out.2.weight"])


def test_fp16_weights_run_on_cpu_close_to_fp32(ms, reference_run, monkeypatch):
    """Half-precision storage for UNets and text towers (norms fp32, VAE fp32) at AMP O2; the flash-attention
    route is taken where the reference takes it (self-attention over a multiple of 16 tokens, never the 77-token
    cross-attention), here with a stand-in kernel because MindSpore has flash attention on Ascend only."""
    import mindspore as ms_
    from mindspore import ops

    from pangu_cli.models import loader
    from pangu_cli.models import unet as unet_module

    spec, _, expected = reference_run
    calls = []

    def fake_flash(q, k, v, heads, scalar_value=1.0, input_layout="BSH"):
        calls.append((q.shape[1], k.shape[1], q.dtype))
        return unet_module.attention(q, k, v, heads, scalar_value)

    monkeypatch.setattr(ops, "flash_attention_score", fake_flash, raising=False)
    real = loader.device_options
    monkeypatch.setattr(loader, "device_options", lambda *a, **k: loader.DeviceOptions(
        **{**real(*a, **k).__dict__, "flash_attention": True}))
    model = loader.load_model(spec, precision="fp16")
    unet = model.unets["texture"]
    dtypes = {p.name: p.dtype for p in unet.get_parameters()}  # names as in the checkpoint (AMP wraps norms)
    assert dtypes["input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"] == ms_.float16
    assert dtypes["out.2.weight"] == ms_.float16  # zero-initialised at build: still stored in half
    assert dtypes["out.0.gamma"] == ms_.float32 and dtypes["input_blocks.3.1.norm.gamma"] == ms_.float32
    tower = model.conditioner.embedders[1].tower
    assert tower.token_embedding.embedding_table.dtype == ms_.float16
    assert {p.dtype for p in model.vae.get_parameters()} == {ms_.float32}
    result = _generate(model)
    scale = np.abs(expected.latent).max()
    assert np.abs(result.latent - expected.latent).max() <= 2e-2 * scale
    # 64x64 px → 8x8 latent: 16 tokens at level 1 (self-attention: fused), 77 context tokens (vanilla).
    assert calls and all(q == k == 16 and dtype == ms_.float16 for q, k, dtype in calls)


def test_cli_add_and_verify(ms, official_files, config_home, monkeypatch, capsys):
    from pangu_cli import cli
    from pangu_cli.models import official

    folder, manifest, _ = official_files
    monkeypatch.setattr(official, "official_manifest", lambda: json.loads(json.dumps(manifest)))
    with pytest.raises(SystemExit) as code:
        cli.main(["models", "add", "cli-v3", str(folder), "--tokenizers", str(folder / "tokenizer"), "--json"])
    assert code.value.code == 0
    added = json.loads(capsys.readouterr().out)
    assert added["name"] == "cli-v3" and Path(added["folder"], "model.json").is_file()
    with pytest.raises(SystemExit) as code:
        cli.main(["models", "verify", "cli-v3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code.value.code == 0 and report["ok"], report
    # A folder with model.json registers as is; a damaged file then fails verify with exit code 3.
    copy = shutil.copytree(Path(added["folder"]), config_home.parent / "copy")
    manifest_copy = json.loads((copy / "model.json").read_text())
    bad = shutil.copy(_files(folder)["structure"], copy / "pangu_high_timestamp-ffffffff.ckpt")
    manifest_copy["checkpoints"]["structure"] = str(bad)
    (copy / "model.json").write_text(json.dumps(manifest_copy))
    with pytest.raises(SystemExit) as code:
        cli.main(["models", "add", "copy", str(copy)])
    assert code.value.code == 0
    with pytest.raises(SystemExit) as code:
        cli.main(["models", "verify", "copy"])
    assert code.value.code == 3
    assert "does not start with ffffffff" in capsys.readouterr().out


def test_register_model_keeps_other_entries(config_home, tmp_path):
    import tomllib

    from pangu_cli.errors import UsageError
    from pangu_cli.models import registry
    from tiny_model import TINY_MANIFEST

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(json.dumps({**TINY_MANIFEST, "name": name}))
    config_home.mkdir(parents=True)
    (config_home / "models.toml").write_text('[models.old]\npath = "/somewhere"\nnote = "kept"\n')
    registry.register_model("a", tmp_path / "a")
    registry.register_model("b", tmp_path / "b")
    data = tomllib.loads((config_home / "models.toml").read_text())
    assert data["models"]["old"] == {"path": "/somewhere", "note": "kept"}
    assert data["models"]["a"]["path"] == str((tmp_path / "a").resolve())
    with pytest.raises(UsageError, match="already registered"):
        registry.register_model("a", tmp_path / "b")
    registry.register_model("a", tmp_path / "b", force=True)
    assert registry.resolve("a").root == (tmp_path / "b").resolve()
    assert not list(config_home.glob(".models.toml.*"))  # no temporary file left


def test_bf16_on_cpu_is_refused_before_loading(ms, reference_run):
    from pangu_cli.errors import DeviceError
    from pangu_cli.models.loader import load_model

    with pytest.raises(DeviceError, match="no bfloat16 CPU kernels"):
        load_model(reference_run[0], precision="bf16", device="CPU")


@pytest.mark.slow
def test_compiled_unet_sees_offload_swaps(ms, reference_run, monkeypatch):
    """On Ascend / GPU the UNet runs as an ms.jit graph: swapped weights must reach the compiled graph
    (they are copied in place; a replaced tensor would be ignored and the texture steps would use structure
    weights). Slow: the first call compiles."""
    try:  # pangu's CPU-only custom kernels are not what runs on an accelerator (and fail inside ms.jit on CPU)
        from pangu_cli.models import fast_ops

        monkeypatch.setattr(fast_ops, "enabled", lambda *names: False)
    except ImportError:
        pass
    loader = _with_options(monkeypatch, jit=True)
    spec, _, expected = reference_run
    model = loader.load_model(spec, offload=True)
    for _ in range(2):
        np.testing.assert_array_equal(_generate(model).pixels, expected.pixels)
    assert model.bank.reads == ["structure", "texture", "structure", "texture"]
