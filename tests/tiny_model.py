"""A tiny random model folder in the reference layout, for tests and benchmarks of the plumbing.

Its weights are random: it proves loading, conditioning, sampling and file handling, not image
quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ZH_CHARS = "一只红色的圆形在蓝色背景上猫狗海边少年黄昏天空星月山水花草树木大小左右上下中義饅霙"
EN_WORDS = ["a", "red", "blue", "circle", "on", "the", "cat", "dog", "sea", "sky", "background"]
MERGES = [("c", "a"), ("ca", "t</w>"), ("r", "e"), ("re", "d</w>"), ("o", "n</w>"), ("t", "h"), ("th", "e</w>")]

TINY_MANIFEST = {
    "name": "tiny",
    "description": "random tiny test model",
    "checkpoints": {"texture": "texture.safetensors", "structure": "structure.safetensors"},
    "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
             "num_res_blocks": 1, "attention_resolutions": [2], "transformer_depth": [1, 1],
             "num_head_channels": 16, "context_dim": 64, "adm_in_channels": 48,
             "num_classes": "sequential", "use_linear_in_transformer": True,
             "use_spatial_transformer": True},
    "vae": {"embed_dim": 4, "scale_factor": 0.5,
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                         "dropout": 0.0}},
    "text_encoders": [
        {"kind": "hf_clip", "layer": "last", "language": "zh",
         "config": {"vocab_size": 0, "hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64,
                    "eos_token_id": 3},
         "tokenizer": {"kind": "wordpiece", "path": "tokenizers/zh"}},
        {"kind": "openclip", "layer": "penultimate", "pooled": True, "language": "en",
         "config": {"vocab_size": 0, "width": 32, "layers": 2, "heads": 2, "proj_dim": 32},
         "tokenizer": {"kind": "clip", "path": "tokenizers/en"}},
    ],
    "size_embedding": {"dim": 16},
    "buckets": [[32, 32], [40, 24], [24, 40], [48, 24], [24, 48]],
    "sampling": {"steps": 6, "guidance": 6.0, "sampler": "euler", "switch_t": 500, "switch_lag": True,
                 "styles": {"art": 4.0}, "negative": ""},
    "style_prefixes": {"art": "義 ", "anime": "饅 ", "photo": "霙 "},
}


def _byte_table() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def write_tokenizers(folder: Path) -> tuple[int, int]:
    """Write a WordPiece (zh) and a CLIP BPE (en) vocabulary; return their sizes."""
    zh = folder / "tokenizers" / "zh"
    zh.mkdir(parents=True, exist_ok=True)
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(ZH_CHARS), *EN_WORDS, ",", ".", "，", "。"]
    (zh / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    en = folder / "tokenizers" / "en"
    en.mkdir(parents=True, exist_ok=True)
    base = list(_byte_table().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    (en / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                   encoding="utf-8")
    (en / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n",
                                   encoding="utf-8")
    return len(pieces), len(tokens)


def _randomise(cell, rng: np.random.Generator) -> None:
    """Give every parameter small random values, so zero-initialised layers matter too."""
    import mindspore as ms

    for _, param in cell.parameters_and_names():
        values = rng.normal(0.0, 0.05, param.shape).astype(np.float32)
        param.set_data(ms.Tensor(values.reshape(param.shape)))


def pixel_space_overrides() -> dict:
    """make_tiny_model(**these): a pixel-space model (no autoencoder, 3-channel UNet), another latent space."""
    unet = {**TINY_MANIFEST["unet"], "in_channels": 3, "out_channels": 3}
    return {"name": "tinypix", "vae": None, "unet": unet, "buckets": [[16, 16], [20, 12], [12, 20]]}


def make_tiny_model(folder: Path, seed: int = 0, two_stage: bool = True, **overrides) -> Path:
    """Create the model folder (manifest, tokenizers, random checkpoints); return it."""
    from pangu_cli.models.checkpoint import cell_state, save_state
    from pangu_cli.models.loader import CONDITIONER_PREFIX, UNET_PREFIX, VAE_PREFIX, build_conditioner, build_vae
    from pangu_cli.models.registry import ModelSpec
    from pangu_cli.models.unet import UNetModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    zh_size, en_size = write_tokenizers(folder)
    manifest = json.loads(json.dumps(TINY_MANIFEST))
    manifest["text_encoders"][0]["config"]["vocab_size"] = zh_size
    manifest["text_encoders"][1]["config"]["vocab_size"] = en_size
    if not two_stage:
        del manifest["checkpoints"]["structure"]
    manifest.update(overrides)
    (folder / "model.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")

    spec = ModelSpec(manifest["name"], folder, manifest, "path")
    rng = np.random.default_rng(seed)
    cells = {UNET_PREFIX: UNetModel(**manifest["unet"]), CONDITIONER_PREFIX: build_conditioner(spec),
             VAE_PREFIX: build_vae(spec)}
    texture = {}
    for prefix, cell in cells.items():
        if cell is None:  # a pixel-space model has no autoencoder
            continue
        _randomise(cell, rng)
        texture.update(cell_state(cell, prefix))
    save_state(texture, folder / "texture.safetensors")
    if two_stage:
        structure = UNetModel(**manifest["unet"])
        _randomise(structure, rng)
        save_state(cell_state(structure, UNET_PREFIX), folder / "structure.safetensors")
    return folder
