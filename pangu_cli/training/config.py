"""pangu-mini's architecture and training recipe as plain data, and a TOML loader.

The defaults ARE pangu-mini: `TrainConfig()` is the recipe the embedded model is trained with. A TOML
file (or a dict) overrides fields by section, e.g.

    batch_size = 32
    [unet]
    model_channels = 64
    [optim]
    lr = 5e-4
    [[phases]]
    name = "split"
    pattern = ["structure", "structure", "texture"]

Time-decoupled training (PanGu-Draw §2) is spelled out by `roles` and `phases`:
- a role says how one kind of batch is made: its timestep range, and its data (`low`: the scene
  rendered at `structure_scale` × the bucket size, low-quality upscaled renders mixed in; `crop`: a
  crop of the full-size render; `full`: the full-size render);
- a phase trains UNets by cycling through its `pattern` of roles; `unets` maps a role to the UNet it
  trains (default: the UNet named like the role) and `init` copies UNets when the phase starts
  (eDiff-I: a shared model trained on all timesteps, then split into experts).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pangu_cli.errors import UsageError
from pangu_cli.training.tokenizer_build import TokenizerBuild

DATA_KINDS = ("low", "crop", "full")
LANG_NAMES = ("en", "zh", "mixed")


@dataclass
class UNetConfig:
    # Sized by measured step time (see the trainer report): 32/64/64 channels, one res block per level,
    # cross-attention at the 8x8 level and in the middle block. 1.5 M parameters per UNet.
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) that get a transformer
    transformer_depth: int = 1
    num_head_channels: int = 32
    # 8 groups: 4 channels per group at 32 channels. With the reference's 32 groups every group is one
    # channel, GroupNorm erases the per-channel embedding the ResBlocks add, and the model never learns
    # to use the time step, the size or the text (measured: a gradient of 1e-11 on those layers).
    norm_num_groups: int = 8

    def params(self, context_dim: int, adm_in_channels: int) -> dict[str, Any]:
        """MindONE `network_config.params` keys, as `UNetModel(**params)` and model.json take them."""
        return {
            "in_channels": 3, "out_channels": 3, "model_channels": self.model_channels,
            "channel_mult": list(self.channel_mult), "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": [2 ** level for level in self.attention_levels],
            "transformer_depth": self.transformer_depth, "num_head_channels": self.num_head_channels,
            "norm_num_groups": self.norm_num_groups,
            "context_dim": context_dim, "adm_in_channels": adm_in_channels, "num_classes": "sequential",
            "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
        }


@dataclass
class TextConfig:
    """Two small text towers trained with the UNets: BERT over jieba words (zh), OpenCLIP over BPE (en)."""

    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    zh_max_length: int = 32
    en_max_length: int = 48
    size_embed_dim: int = 64

    @property
    def context_dim(self) -> int:
        return self.width  # sequence concatenation: both towers have this width

    @property
    def pooled_dim(self) -> int:
        return 2 * self.width  # pooled zh + pooled en: the text part of y

    @property
    def adm_in_channels(self) -> int:
        return self.pooled_dim + self.size_embed_dim  # pooled text, then the size embedding

    def encoders(self, vocab_sizes: dict[str, int]) -> list[dict[str, Any]]:
        """The `text_encoders` entries of model.json (manifest order = conditioner order)."""
        hidden = self.width * self.mlp_ratio
        return [
            {"kind": "bert", "language": "zh", "pooled": True, "max_length": self.zh_max_length,
             "config": {"vocab_size": vocab_sizes["zh"], "hidden_size": self.width, "layers": self.layers,
                        "heads": self.heads, "intermediate_size": hidden,
                        "max_position_embeddings": self.zh_max_length, "type_vocab_size": 1},
             "tokenizer": {"kind": "jieba", "path": "tokenizers/zh"}},
            {"kind": "openclip", "language": "en", "pooled": True, "layer": "last",
             "max_length": self.en_max_length,
             "config": {"vocab_size": vocab_sizes["en"], "width": self.width, "layers": self.layers,
                        "heads": self.heads, "context_length": self.en_max_length,
                        "mlp_ratio": self.mlp_ratio},
             "tokenizer": {"kind": "clip", "path": "tokenizers/en"}},
        ]


@dataclass
class RoleConfig:
    """How the batches of one generator are made: timesteps t ∈ [t_min, t_max) and data."""

    t_min: int
    t_max: int
    data: str  # "low" | "crop" | "full" (see the module docstring)
    low_quality_prob: float = 0.0  # share of "low" items rendered small and bicubic-upscaled
    low_quality_factor: tuple[float, float] = (1.5, 3.0)  # render at 1/factor of the size (uniform)
    crop_scale: float = 0.5  # "crop": crop sides = this × the full size (when crop_size is not set)
    # "crop": one fixed (width, height) for every bucket. Low-noise denoising is local, so the crop need
    # not have the bucket's aspect; one input shape means one compiled graph for the texture step.
    crop_size: tuple[int, int] | None = (32, 32)


def default_roles() -> dict[str, RoleConfig]:
    # Where the generators meet: under pangu-mini's shifted schedule (snr_shift 16) t = 500 is σ = 6.5,
    # where the objects of a 32×32 image are still undecided (an 8×8 object's mean is buried in noise of
    # std 0.8); at t = 200 (σ = 2.3, std 0.3) layout, colours and shapes are settled. So the structure
    # generator owns t >= 200 (trained from 150, so the switch never lands at the edge of its range) and
    # the texture generator, which only adds detail at full size, t < 200 (trained to 250).
    return {
        # Structure generator: large-noise range, low resolution, all data (low-quality renders included).
        "structure": RoleConfig(150, 1000, "low", low_quality_prob=0.3),
        # Texture generator: small-noise range, crops of full-resolution high-quality renders only.
        "texture": RoleConfig(0, 250, "crop", crop_size=(32, 32)),
        # The single-model baseline: all timesteps, full-resolution high-quality renders.
        "full": RoleConfig(0, 1000, "full"),
    }


@dataclass
class PhaseConfig:
    name: str
    steps: int = 0  # optimizer steps in this phase; 0 = until training is stopped (last phase only)
    pattern: tuple[str, ...] = ("structure", "texture")  # roles, cycled step by step
    unets: dict[str, str] = field(default_factory=dict)  # role -> UNet name (default: the role's name)
    init: dict[str, str] = field(default_factory=dict)  # UNet -> UNet it is copied from at phase start

    def unet_for(self, role: str) -> str:
        return self.unets.get(role, role)


def default_phases() -> list[PhaseConfig]:
    # Structure gets three steps for each texture step: it owns 85% of the timesteps, and layout, colour
    # and shape are decided there.
    return [PhaseConfig("split", 0, ("structure", "structure", "structure", "texture"))]


@dataclass
class DataConfig:
    lang_weights: dict[str, float] = field(default_factory=lambda: {"en": 1.0, "zh": 1.0, "mixed": 1.0})
    split: str = "train"  # caption templates; the held-out ones are for evaluation
    caption_style_prob: float = 0.4  # the caption names the style in words
    style_prefix_prob: float = 0.8  # a styled image gets its trigger prefix (義/饅/霙)
    cond_drop: float = 0.1  # the caption becomes "" (the sampler's unconditional branch)
    square_prob: float = 0.3  # share of batches in the 1:1 bucket; the rest spread over the others
    max_objects: int = 2
    prefetch: int = 6  # batches the data process keeps ready


@dataclass
class OptimConfig:
    lr: float = 5e-4
    text_lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99  # AdamWeightDecay has no bias correction: a short-memory v is right sooner
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_every: int = 4  # EMA update every k steps with decay**k (cheaper, same average)


@dataclass
class SamplingConfig:
    """Defaults written into model.json (`pangu draw` uses them unless overridden)."""

    steps: int = 20
    sampler: str = "euler"
    guidance: float = 3.0
    switch_t: int = 200  # see default_roles
    switch_lag: bool = False  # clean t >= 500 rule: each generator only sees its training range
    styles: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    name: str = "pangu-mini"
    description: str = ("pangu-mini: a small bilingual (zh/en/mixed) time-decoupled pixel-space model trained "
                        "on synthetic scenes (shapes, colours, positions, styles); embedded default")
    seed: int = 0
    batch_size: int = 32
    bucket_scale: float = 1 / 4  # output buckets = the reference list × this (1:1 → 128×128)
    # Structure steps run at this fraction of the output size (1:1: 32×32): layout, colour and shape are
    # decided at large noise, where detail is invisible anyway; it makes a structure sample 16× cheaper
    # than one at the output size, and the texture generator brings it up (Coop-Diffusion's one-stage SR).
    structure_scale: float = 0.25
    # v-prediction: an ε target carries almost no signal at the large-noise steps the structure
    # generator owns (ε ≈ x_t there), so the v target is what makes its training samples count.
    prediction: str = "v"
    # The reference DDPM table is made for 128×128 latents; at the 32×32 structure resolution it leaves the
    # image's colours visible through the noise at t = T−1, so the sampler's starting noise decides them
    # and the prompt cannot (measured: background colours followed the seed). SNR ÷ (128/32)² restores
    # the destruction the table has at its design size. model.json carries it as schedule.snr_shift.
    snr_shift: float = 16.0
    # Weight of the text towers' auxiliary loss: a linear head on the pooled text features predicts the
    # scene's attributes (attributes.py; binary cross-entropy summed over the labels). 0 = no head.
    text_aux_weight: float = 0.01
    style_prefixes: dict[str, str] = field(default_factory=lambda: {"art": "義 ", "anime": "饅 ", "photo": "霙 "})
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    roles: dict[str, RoleConfig] = field(default_factory=default_roles)
    phases: list[PhaseConfig] = field(default_factory=default_phases)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    tokenizer: TokenizerBuild = field(default_factory=TokenizerBuild)
    checkpoint_every_s: float = 300.0
    log_every: int = 10
    # Every this many steps, log how much the captions help: v-MSE on held batches with their own captions
    # against the same batches with the captions rotated by one (0 = never).
    probe_every: int = 200
    jit: bool = True  # compile the whole training step with ms.jit (bench/PERF.md: fastest on CPU)
    threads: int | None = None  # MindSpore runtime_num_threads

    def buckets(self) -> list[tuple[int, int]]:
        from pangu_cli.ratios import BASE_SIZE_LIST, scale_buckets

        return [(b.width, b.height) for b in scale_buckets(BASE_SIZE_LIST, self.bucket_scale)]

    def unet_params(self) -> dict[str, Any]:
        return self.unet.params(self.text.context_dim, self.text.adm_in_channels)

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint depends on: changing any of it makes old checkpoints unusable."""
        return {"unet": dataclasses.asdict(self.unet), "text": dataclasses.asdict(self.text),
                "tokenizer": dataclasses.asdict(self.tokenizer), "bucket_scale": self.bucket_scale}

    def validate(self) -> TrainConfig:
        if self.prediction not in ("eps", "v"):
            raise UsageError(f"prediction must be \"eps\" or \"v\", not {self.prediction!r}")
        if not self.text_aux_weight >= 0:
            raise UsageError(f"text_aux_weight must be 0 or more, not {self.text_aux_weight!r}")
        if not self.snr_shift > 0:
            raise UsageError(f"snr_shift must be positive, not {self.snr_shift!r}")
        for name, role in self.roles.items():
            if role.data not in DATA_KINDS:
                raise UsageError(f"role '{name}': data must be one of {', '.join(DATA_KINDS)}")
            if not 0 <= role.t_min < role.t_max <= 1000:
                raise UsageError(f"role '{name}': need 0 <= t_min < t_max <= 1000")
        if not self.phases:
            raise UsageError("the config has no training phases")
        for i, phase in enumerate(self.phases):
            unknown = [r for r in phase.pattern if r not in self.roles]
            if unknown or not phase.pattern:
                raise UsageError(f"phase '{phase.name}': unknown or no roles in its pattern ({unknown})")
            if phase.steps <= 0 and i != len(self.phases) - 1:
                raise UsageError(f"phase '{phase.name}': only the last phase may run without a step count")
        if set(self.data.lang_weights) - set(LANG_NAMES):
            raise UsageError(f"data.lang_weights: languages are {', '.join(LANG_NAMES)}")
        mult = 2 ** (len(self.unet.channel_mult) - 1)
        for width, height in self.buckets():
            for name, role in self.roles.items():
                w, h = self.input_size(role, width, height)
                if w % mult or h % mult or w > width or h > height:
                    raise UsageError(f"role '{name}': input {w}x{h} for bucket {width}x{height} is larger than "
                                     f"the bucket or not a multiple of {mult} (UNet levels)")
        return self

    def input_size(self, role: RoleConfig, width: int, height: int) -> tuple[int, int]:
        """(w, h) of a role's training inputs for the bucket (width, height)."""
        if role.data == "low":
            from pangu_cli.ratios import scale_size

            return scale_size(width, height, self.structure_scale, 2 ** (len(self.unet.channel_mult) - 1))
        if role.data == "crop":
            if role.crop_size is not None:
                return tuple(role.crop_size)
            return round(width * role.crop_scale), round(height * role.crop_scale)
        return width, height


def single_model_config() -> TrainConfig:
    """The comparison the paper's claim needs: ONE UNet on all timesteps at the full output resolution,
    high-quality renders only; give it the same training time as the two-generator run."""
    return TrainConfig(name="pangu-mini-single", phases=[PhaseConfig("single", 0, ("full",))])


def ediff_config(shared_steps: int = 2000) -> TrainConfig:
    """eDiff-I style: one shared UNet on both halves' batches first, then split into the two experts."""
    return TrainConfig(phases=[
        PhaseConfig("shared", shared_steps, ("structure", "structure", "structure", "texture"),
                    unets={"structure": "shared", "texture": "shared"}),
        PhaseConfig("split", 0, ("structure", "structure", "structure", "texture"),
                    init={"structure": "shared", "texture": "shared"}),
    ])


PRESETS = {"pangu-mini": TrainConfig, "single": single_model_config, "ediff": ediff_config}


# ----------------------------------------------------------------------------------------------- loading
def _build(cls, data: Any, where: str):
    """Dataclass `cls` from a dict, recursively; unknown keys are errors."""
    if not dataclasses.is_dataclass(cls):
        return data
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise UsageError(f"config: {where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"config: unknown key(s) in {where}: {', '.join(unknown)}")
    kwargs = {}
    nested = {"unet": UNetConfig, "text": TextConfig, "data": DataConfig, "optim": OptimConfig,
              "sampling": SamplingConfig, "tokenizer": TokenizerBuild}
    for key, value in data.items():
        if key in nested and cls is TrainConfig:
            value = _build(nested[key], value, key)
        elif key == "roles" and cls is TrainConfig:
            roles = default_roles()
            for name, spec in value.items():
                base = dataclasses.asdict(roles[name]) if name in roles else {}
                roles[name] = _build(RoleConfig, {**base, **spec}, f"roles.{name}")
            value = roles
        elif key == "phases" and cls is TrainConfig:
            value = [_build(PhaseConfig, p, f"phases[{i}]") for i, p in enumerate(value)]
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UsageError(f"config: {where}: {exc}") from exc


def load_config(source: str | Path | dict | TrainConfig | None = None) -> TrainConfig:
    """The pangu-mini config, overridden by a TOML file path, a dict, or returned as is; a name from
    PRESETS ("pangu-mini", "single", "ediff") gives that preset."""
    if source is None:
        return TrainConfig().validate()
    if isinstance(source, str) and source in PRESETS:
        return PRESETS[source]().validate()
    if isinstance(source, TrainConfig):
        return source.validate()
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read config {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config {path}: {exc}") from exc
    else:
        data = dict(source)
    return _build(TrainConfig, data, "config").validate()


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able data that `load_config` turns back into the same config."""
    return dataclasses.asdict(config)
