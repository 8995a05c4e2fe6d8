"""The time-decoupled trainer of pangu-mini (PanGu-Draw §2 at small scale), and its export.

    train("pangu_cli/configs/pangu-mini.toml", "runs/pangu-mini")   # resumes if the run dir has a checkpoint
    export("runs/pangu-mini", "pangu_cli/assets/pangu-mini")        # EMA weights → model folder

What a step does: draw the batch of this step (the phase's role pattern says which generator trains and
how its data is made, see `config`), encode the captions with the two text towers, noise the images
at t ∈ [t_min, t_max) with the reference's DDPM table, and fit ε with MSE; AdamW on the UNet and on
the text towers (shared by both generators), gradient clipping, EMA.

Determinism: the batch of step n is a pure function of (config, n), made in a separate process ahead
of time; the model, optimizer moments, EMA and counters are checkpointed together, so a run stopped at
any point resumes with the same next-step loss as if it had never stopped.

The module imports MindSpore only inside the functions that need it: the data process does not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pangu_cli.errors import ModelError, UsageError
from pangu_cli.training.attributes import LABELS, attribute_targets
from pangu_cli.training.captions import LANGS, caption
from pangu_cli.training.config import PhaseConfig, TrainConfig, config_to_dict, load_config
from pangu_cli.training.scenes import render, render_low_quality, sample_scene
from pangu_cli.training.tokenizer_build import write_tokenizers

UNET_PREFIX = "model.diffusion_model."
CONDITIONER_PREFIX = "conditioner."
CHECKPOINT_META = "checkpoint.json"
LOG_FILE = "log.jsonl"
SQUARE = (64, 64)
PROBE_STEP = 10**9  # held batches for `Trainer.text_probe`: a step number training never reaches


# ================================================================================================ schedule
@dataclass(frozen=True)
class StepPlan:
    """What global step n trains: the phase, the role (how the batch is made) and the UNet."""

    step: int
    phase_index: int
    phase_start: int
    role: str
    unet: str


def plan_step(config: TrainConfig, step: int) -> StepPlan | None:
    """The plan of `step`, or None once every phase is done."""
    start = 0
    for index, phase in enumerate(config.phases):
        if phase.steps <= 0 or step < start + phase.steps:
            role = phase.pattern[(step - start) % len(phase.pattern)]
            return StepPlan(step, index, start, role, phase.unet_for(role))
        start += phase.steps
    return None


def alphas_cumprod(config: TrainConfig) -> np.ndarray:
    """ᾱ_t of the run's noise schedule: the reference table with its SNR divided by `snr_shift`."""
    from pangu_cli.sampling.schedules import ddpm_alphas_cumprod, shift_snr

    table = ddpm_alphas_cumprod()
    return table if config.snr_shift == 1.0 else shift_snr(table, config.snr_shift)


# ==================================================================================================== data
def model_manifest(config: TrainConfig, vocab_sizes: dict[str, int], two_stage: bool = True) -> dict[str, Any]:
    """model.json of the exported model (checkpoint names, networks, buckets, sampling defaults)."""
    sampling = dataclasses.asdict(config.sampling)
    sampling.update(negative="", structure_scale=config.structure_scale if two_stage else 1.0)
    checkpoints = {"texture": "texture.safetensors"}
    if two_stage:
        checkpoints["structure"] = "structure.safetensors"
    return {
        "name": config.name,
        "description": config.description,
        "family": "pangu",
        "checkpoints": checkpoints,
        "unet": config.unet_params(),
        "vae": None,
        "prediction": config.prediction,
        "schedule": {"snr_shift": config.snr_shift},
        "text_encoders": config.text.encoders(vocab_sizes),
        "conditioning": {"routing": "language", "concat": "sequence"},
        "size_embedding": {"dim": config.text.size_embed_dim},
        "buckets": [list(b) for b in config.buckets()],
        "sampling": sampling,
        "style_prefixes": dict(config.style_prefixes),
    }


def ensure_tokenizers(config: TrainConfig, folder: Path) -> dict[str, int]:
    """Build the tokenizer files under `folder/tokenizers` once; return the vocabulary sizes."""
    zh, en = folder / "tokenizers" / "zh" / "vocab.txt", folder / "tokenizers" / "en" / "vocab.json"
    if not (zh.is_file() and en.is_file()):
        write_tokenizers(folder, config.tokenizer)
    zh_size = len(zh.read_text(encoding="utf-8").splitlines())
    en_size = len(json.loads(en.read_text(encoding="utf-8")))
    return {"zh": zh_size, "en": en_size}


class TextTokenizer:
    """Routes captions to the two encoders and tokenizes them, exactly as the conditioner does at
    inference (`Conditioner.routed_texts` + `tokenize`), without MindSpore."""

    def __init__(self, manifest: dict, root: Path):
        from pangu_cli.models.tokenizers import load_clip_tokenizer, load_jieba_tokenizer

        loaders = {"jieba": load_jieba_tokenizer, "clip": load_clip_tokenizer}
        self.specs = manifest["text_encoders"]
        self.tokenizers = [loaders[s["tokenizer"]["kind"]](root / s["tokenizer"]["path"]) for s in self.specs]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, ...]:
        from pangu_cli.language import detect
        from pangu_cli.models.tokenizers import encode

        detections = [detect(t) if t.strip() else None for t in texts]
        arrays = []
        for spec, tokenizer in zip(self.specs, self.tokenizers):
            routed = [d.joined(spec["language"]) if d else "" for d in detections]
            batch = encode(tokenizer, routed, max_length=int(spec["max_length"]), kind=spec["tokenizer"]["kind"])
            arrays += [batch.ids, batch.attention_mask]
        return tuple(arrays)


def _bucket_index(config: TrainConfig, rng: np.random.Generator) -> int:
    buckets = config.buckets()
    square = buckets.index(SQUARE) if SQUARE in buckets else len(buckets) // 2
    if rng.random() < config.data.square_prob:
        return square
    others = [i for i in range(len(buckets)) if i != square]
    return others[int(rng.integers(len(others)))]


def captions_for(config: TrainConfig, scene, rng: np.random.Generator) -> str:
    """A training caption: language by weight, train templates, style trigger prefix, condition drop."""
    weights = np.array([config.data.lang_weights.get(lang, 0.0) for lang in LANGS], np.float64)
    lang = LANGS[int(rng.choice(len(LANGS), p=weights / weights.sum()))]
    text = caption(scene, lang, rng, split=config.data.split, style_prob=config.data.caption_style_prob)
    prefix = config.style_prefixes.get(scene.style)
    if prefix and rng.random() < config.data.style_prefix_prob:
        text = prefix + text
    if rng.random() < config.data.cond_drop:
        text = ""
    return text


def make_batch(config: TrainConfig, tokenizer: TextTokenizer, step: int, role_name: str) -> dict[str, Any]:
    """The batch of global step `step` (a pure function of config, step and role), as numpy arrays."""
    rng = np.random.default_rng([config.seed, step])
    role = config.roles[role_name]
    index = _bucket_index(config, rng)
    width, height = config.buckets()[index]
    w, h = config.input_size(role, width, height)
    images = np.empty((config.batch_size, h, w, 3), np.uint8)
    texts, scenes = [], []
    for i in range(config.batch_size):
        scene = sample_scene(rng, max_objects=config.data.max_objects)
        scenes.append(scene)
        texts.append(captions_for(config, scene, rng))
        if role.data == "low":
            if rng.random() < role.low_quality_prob:
                factor = float(rng.uniform(*role.low_quality_factor))
                images[i] = render_low_quality(scene, w, h, factor, rng)
            else:
                images[i] = render(scene, w, h, rng)
        elif role.data == "crop":
            full = render(scene, width, height, rng)
            left, top = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
            images[i] = full[top:top + h, left:left + w]
        else:
            images[i] = render(scene, w, h, rng)
    x0 = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    t = rng.integers(role.t_min, role.t_max, config.batch_size).astype(np.int32)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)
    ac = alphas_cumprod(config)[t].astype(np.float32)
    batch = {
        "step": step, "role": role_name, "texts": texts, "bucket_index": index,
        "x0": x0, "noise": noise, "t": t,
        "signal": np.sqrt(ac).reshape(-1, 1, 1, 1), "sigma": np.sqrt(1.0 - ac).reshape(-1, 1, 1, 1),
        "tokens": tokenizer(texts),
        "bucket": np.full((config.batch_size,), index, np.float32),
    }
    if config.text_aux_weight > 0:
        batch["attributes"] = np.stack([attribute_targets(scene) for scene in scenes])
    return batch


def _data_process(config_dict: dict, root: str, start: int, out: Any, stop: Any) -> None:
    """Producer loop of the data process: the batches of steps start, start + 1, … in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer decides when to stop
    config = load_config(config_dict)
    manifest = model_manifest(config, ensure_tokenizers(config, Path(root)))
    tokenizer = TextTokenizer(manifest, Path(root))
    step = start
    while not stop.is_set():
        plan = plan_step(config, step)
        if plan is None:
            out.put(None)
            return
        batch = make_batch(config, tokenizer, step, plan.role)
        while not stop.is_set():
            try:
                out.put(batch, timeout=0.5)
                break
            except queue.Full:
                continue
        step += 1


class BatchSource:
    """Batches in step order: from a separate process (training) or made inline (tests, debugging)."""

    def __init__(self, config: TrainConfig, root: Path, start: int, process: bool = True):
        self.config, self.root, self.next_step = config, root, start
        self.process = None
        if process:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            self.queue = ctx.Queue(maxsize=max(1, config.data.prefetch))
            self.stop_event = ctx.Event()
            self.process = ctx.Process(target=_data_process, daemon=True,
                                       args=(config_to_dict(config), str(root), start, self.queue, self.stop_event))
            self.process.start()
        else:
            manifest = model_manifest(config, ensure_tokenizers(config, root))
            self.tokenizer = TextTokenizer(manifest, root)

    def get(self, plan: StepPlan) -> dict[str, Any]:
        if plan.step != self.next_step:
            raise RuntimeError(f"batch source is at step {self.next_step}, asked for {plan.step}")
        self.next_step += 1
        if self.process is None:
            return make_batch(self.config, self.tokenizer, plan.step, plan.role)
        while True:
            try:
                batch = self.queue.get(timeout=5.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"the data process died (exit code {self.process.exitcode})")
        if batch is None or batch["step"] != plan.step:
            raise RuntimeError(f"data process out of step: expected {plan.step}")
        return batch

    def close(self) -> None:
        if self.process is not None:
            self.stop_event.set()
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.terminate()
            self.process = None


# ================================================================================================== model
def _set_seed(seed: int) -> None:
    import mindspore as ms

    ms.set_seed(seed % (2**31))
    np.random.seed(seed % (2**32))


def _named_params(cell) -> list[tuple[str, Any]]:
    return [(name, p) for name, p in cell.parameters_and_names() if p.requires_grad]


def _decays(name: str) -> bool:
    """Weight decay on matrices and convolutions only (not on biases, norms, embeddings, positions)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf not in ("bias", "gamma", "beta", "embedding_table", "positional_embedding", "in_proj_bias")


def _make_optimizer(cell, lr: float, config: TrainConfig, key: str):
    import mindspore as ms
    from mindspore import nn, ops

    class WarmupLR(nn.learning_rate_schedule.LearningRateSchedule):
        """lr · min(1, (step + 1) / warmup): linear warm-up (MindSpore's AdamW has no bias correction)."""

        def __init__(self, base: float, warmup: int):
            super().__init__()
            self.base, self.warmup = base, float(max(1, warmup))

        def construct(self, global_step):
            ramp = (global_step.astype(ms.float32) + 1.0) / self.warmup
            return self.base * ops.minimum(ramp, ms.Tensor(1.0, ms.float32))

    named = _named_params(cell)
    decay = [p for n, p in named if _decays(n)]
    no_decay = [p for n, p in named if not _decays(n)]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"order_params": [p for _, p in named]}]
    opt = nn.AdamWeightDecay(groups, learning_rate=WarmupLR(lr, config.optim.warmup_steps),
                             beta1=config.optim.beta1, beta2=config.optim.beta2, eps=config.optim.eps)
    # The UNet's and the text towers' optimizers run in one compiled step: their counters need distinct names.
    opt.global_step.name = f"{key}.global_step"
    return opt


class EMA:
    """Exponential moving averages of named parameters, in numpy (updated every k steps with decay**k)."""

    def __init__(self, cell=None, values: dict[str, np.ndarray] | None = None, updates: int = 0):
        self.values = values if values is not None else {n: np.array(p.asnumpy(), np.float32, copy=True)
                                                         for n, p in _named_params(cell)}
        self.updates = updates

    def update(self, cell, decay: float, steps: int) -> None:
        # Warm-up (1 + u)/(10 + u): early averages do not drag in the random initialisation for long.
        d = min(decay, (1.0 + self.updates) / (10.0 + self.updates)) ** steps
        for name, param in _named_params(cell):
            value = self.values[name]
            value *= d
            value += (1.0 - d) * param.asnumpy()
        self.updates += 1


class Trainer:
    """The networks, optimizers, EMA and counters of one run directory; `run` trains, `save` checkpoints."""

    def __init__(self, config: TrainConfig, run_dir: Path, log: Callable[[str], None] | None = None,
                 rank: Any = None):
        from pangu_cli import runtime

        runtime.setup("CPU" if not os.environ.get("PANGU_TRAIN_DEVICE") else os.environ["PANGU_TRAIN_DEVICE"],
                      threads=config.threads)
        import mindspore as ms

        from pangu_cli.models.conditioner import Conditioner

        self.ms = ms
        # Data parallel under msrun (`distributed.Rank`): every rank makes the same global batch, trains on
        # its rows [rank::size], and the gradients are averaged across ranks before clipping.
        self.rank = rank if rank is not None and rank.size > 1 else None
        if self.rank is not None:
            if config.batch_size % self.rank.size:
                raise UsageError(f"batch_size {config.batch_size} does not split over {self.rank.size} workers",
                                 "give a batch size that the number of workers divides")
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                         device_num=self.rank.size)
        self.config, self.run_dir = config, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say = log or (lambda message: None)
        self.vocab_sizes = ensure_tokenizers(config, self.run_dir)
        self.manifest = model_manifest(config, self.vocab_sizes)
        _set_seed(config.seed)
        self.conditioner = Conditioner(self.manifest["text_encoders"], config.text.size_embed_dim,
                                       routing="language", concat="sequence")
        self.conditioner.set_train(True)
        self.text_optimizer = _make_optimizer(self.conditioner, config.optim.text_lr, config, "conditioner")
        # The auxiliary attribute head on the pooled text features (training only; see attributes.py).
        self.text_head, self.head_optimizer = None, None
        if config.text_aux_weight > 0:
            from mindspore import nn

            self.text_head = nn.Dense(config.text.pooled_dim, len(LABELS))
            self.head_optimizer = _make_optimizer(self.text_head, config.optim.text_lr, config, "text_head")
        self.last_text_aux: float | None = None
        self.unets: dict[str, Any] = {}
        self.optimizers: dict[str, Any] = {}
        self.emas: dict[str, EMA] = {"conditioner": EMA(self.conditioner)}
        self.steps: dict[str, Callable] = {}
        self.step = 0
        self.samples: Counter[str] = Counter()  # per role
        self.unet_steps: Counter[str] = Counter()
        self.pending_ema: Counter[str] = Counter()  # steps since the last EMA update, per EMA
        self.phase_inits: list[str] = []  # phases whose `init` copies were done
        self.elapsed = 0.0  # training seconds over all sessions
        self.loaded_from: int | None = None
        self._load_checkpoint()

    # ------------------------------------------------------------------------------------------ networks
    def _new_unet(self, name: str):
        from pangu_cli.models.unet import UNetModel

        _set_seed(self.config.seed * 1000 + sum(map(ord, name)))
        unet = UNetModel(**self.config.unet_params())
        unet.set_train(True)
        self.unets[name] = unet
        self.optimizers[name] = _make_optimizer(unet, self.config.optim.lr, self.config, "unet." + name)
        self.steps.pop(name, None)
        return unet

    def unet(self, name: str):
        if name not in self.unets:
            self._new_unet(name)
            self.emas["unet." + name] = EMA(self.unets[name])
        return self.unets[name]

    def _init_phase(self, plan: StepPlan) -> None:
        phase = self.config.phases[plan.phase_index]
        if phase.name in self.phase_inits:
            return
        for target, source in phase.init.items():
            if source not in self.unets:
                raise UsageError(f"phase '{phase.name}' initialises '{target}' from '{source}', "
                                 "which was never trained")
            unet = self._new_unet(target)
            src = dict(_named_params(self.unets[source]))
            for n, p in _named_params(unet):
                p.set_data(self.ms.Tensor(src[n].asnumpy().copy()))
            ema = self.emas["unet." + source]
            self.emas["unet." + target] = EMA(values={k: v.copy() for k, v in ema.values.items()}, updates=ema.updates)
            self.unet_steps[target] = 0
            self.say(f"phase '{phase.name}': UNet '{target}' starts from '{source}'")
        self.phase_inits.append(phase.name)

    def _step_fn(self, name: str) -> Callable:
        """One optimizer step of UNet `name` + the text towers; returns the loss Tensor."""
        if name in self.steps:
            return self.steps[name]
        import mindspore as ms
        from mindspore import ops

        unet, conditioner, head = self.unet(name), self.conditioner, self.text_head
        unet_opt, text_opt, head_opt = self.optimizers[name], self.text_optimizer, self.head_optimizer
        params = ms.ParameterTuple(list(unet_opt.parameters) + list(text_opt.parameters)
                                   + (list(head_opt.parameters) if head is not None else []))
        n_unet, n_text = len(unet_opt.parameters), len(text_opt.parameters)
        clip = float(self.config.optim.grad_clip)
        v_target = self.config.prediction == "v"
        aux_weight = float(self.config.text_aux_weight)
        text_dims = self.config.text.pooled_dim

        def loss_fn(x0, noise, signal_, sigma, t, ids0, mask0, ids1, mask1, bucket, *attributes):
            context, y = conditioner((ids0, mask0, ids1, mask1), bucket)
            noisy = signal_ * x0 + sigma * noise
            target = signal_ * noise - sigma * x0 if v_target else noise
            loss = ops.mse_loss(unet(noisy, t, context, y), target)
            if head is None:
                return loss
            # Binary cross-entropy with logits, summed over the labels (stable form: no exp overflow).
            logits = head(y[:, :text_dims])
            labels = attributes[0]
            aux = (ops.relu(logits) - logits * labels + ops.log(1.0 + ops.exp(-ops.abs(logits)))).sum(-1).mean()
            return loss + aux_weight * aux, loss, aux

        grad_fn = ms.value_and_grad(loss_fn, None, params, has_aux=head is not None)
        if self.rank is not None:
            from mindspore import nn

            reducer = nn.DistributedGradReducer(params, mean=True, degree=self.rank.size)
            all_reduce = ops.AllReduce()
            size = float(self.rank.size)
            local_grad_fn = grad_fn

            def grad_fn(*inputs):
                loss, grads = local_grad_fn(*inputs)
                if isinstance(loss, tuple):
                    return tuple(all_reduce(part) / size for part in loss), reducer(grads)
                return all_reduce(loss) / size, reducer(grads)

        def clipped(grads):
            if clip <= 0:
                return grads
            if head is None:
                return ops.clip_by_global_norm(grads, clip)
            # Per network: the head's large early gradients must not shrink the UNet's step.
            return ops.clip_by_global_norm(grads[:n_unet], clip) + ops.clip_by_global_norm(grads[n_unet:], clip)

        def apply(grads):
            unet_opt(grads[:n_unet])
            text_opt(grads[n_unet:n_unet + n_text])
            if head is not None:
                head_opt(grads[n_unet + n_text:])

        def result(loss):
            # (denoising loss, attribute loss) with the head; the loss alone without it
            return loss if head is None else (loss[1], loss[2])

        if self.config.jit:
            # bench/PERF.md: compiling the whole step (forward, backward, clipping, AdamW) is the fastest
            # MindSpore step on CPU. One graph per input shape: structure one per bucket, texture one.
            def step(*inputs):
                loss, grads = grad_fn(*inputs)
                apply(clipped(grads))
                return result(loss)

            step = ms.jit(step)
        else:
            # compiled: uncompiled clipping is ~3 small ops per gradient (measured 2–3 s a step for 250
            # gradients on a loaded machine; compiled 0.05 s)
            clip_fn = ms.jit(clipped) if clip > 0 else clipped

            def step(*inputs):
                loss, grads = grad_fn(*inputs)
                apply(clip_fn(grads))
                return result(loss)

        self.steps[name] = step
        return step

    def step_inputs(self, batch: dict[str, Any]) -> list:
        """The Tensors a step function takes from `batch`: this rank's rows."""
        Tensor = self.ms.Tensor
        rows = slice(None) if self.rank is None else slice(self.rank.rank, None, self.rank.size)
        inputs = [Tensor(batch[k][rows]) for k in ("x0", "noise", "signal", "sigma", "t")]
        inputs += [Tensor(a[rows]) for a in batch["tokens"]] + [Tensor(batch["bucket"][rows])]
        if self.text_head is not None:
            inputs.append(Tensor(batch["attributes"][rows]))
        return inputs

    def train_step(self, plan: StepPlan, batch: dict[str, Any]) -> float:
        """Run one step; returns its loss."""
        if plan.step == plan.phase_start or self.config.phases[plan.phase_index].name not in self.phase_inits:
            self._init_phase(plan)
        out = self._step_fn(plan.unet)(*self.step_inputs(batch))
        if self.text_head is not None:
            out, aux = out
            self.last_text_aux = float(aux.asnumpy())
        loss = float(out.asnumpy())
        self.step = plan.step + 1
        self.samples[plan.role] += len(batch["t"])
        self.unet_steps[plan.unet] += 1
        self.pending_ema["unet." + plan.unet] += 1
        self.pending_ema["conditioner"] += 1
        if self.step % self.config.optim.ema_every == 0:
            self._update_ema()
        return loss

    def _update_ema(self) -> None:
        for key, n in list(self.pending_ema.items()):
            if n:
                cell = self.conditioner if key == "conditioner" else self.unets[key[len("unet."):]]
                self.emas[key].update(cell, self.config.optim.ema_decay, n)
                self.pending_ema[key] = 0

    # --------------------------------------------------------------------------------------- checkpoints
    def _optimizer_state(self, key: str, opt) -> dict[str, np.ndarray]:
        state = {f"opt.{key}.step": opt.global_step.asnumpy().copy()}
        for i, (m, v) in enumerate(zip(opt.moments1, opt.moments2)):
            state[f"opt.{key}.m.{i}"] = m.asnumpy().copy()
            state[f"opt.{key}.v.{i}"] = v.asnumpy().copy()
        return state

    def _load_optimizer(self, key: str, opt, state: dict[str, np.ndarray]) -> None:
        Tensor = self.ms.Tensor
        opt.global_step.set_data(Tensor(state[f"opt.{key}.step"]))
        for i, (m, v) in enumerate(zip(opt.moments1, opt.moments2)):
            m.set_data(Tensor(state[f"opt.{key}.m.{i}"]))
            v.set_data(Tensor(state[f"opt.{key}.v.{i}"]))

    def save(self) -> Path:
        """Write the full training state atomically; keep only the newest checkpoint."""
        from pangu_cli.models.checkpoint import cell_state, save_state

        if self.rank is not None and not self.rank.main:
            # Ranks share the run folder: a second writer would race rank 0 (and fail the msrun tests).
            raise RuntimeError(f"rank {self.rank.rank} tried to write a checkpoint; only rank 0 does")

        state: dict[str, np.ndarray] = {}
        state.update(cell_state(self.conditioner, "net.conditioner."))
        state.update(self._optimizer_state("conditioner", self.text_optimizer))
        if self.text_head is not None:
            state.update(cell_state(self.text_head, "net.text_head."))
            state.update(self._optimizer_state("text_head", self.head_optimizer))
        for name, unet in self.unets.items():
            state.update(cell_state(unet, f"net.unet.{name}."))
            state.update(self._optimizer_state("unet." + name, self.optimizers[name]))
        for key, ema in self.emas.items():
            state.update({f"ema.{key}.{n}": v for n, v in ema.values.items()})
        file = self.run_dir / f"checkpoint-{self.step:08d}.safetensors"
        save_state(state, file)
        meta = {
            "step": self.step, "file": file.name, "elapsed_s": self.elapsed,
            "samples": dict(self.samples), "unet_steps": dict(self.unet_steps),
            "pending_ema": dict(self.pending_ema), "ema_updates": {k: e.updates for k, e in self.emas.items()},
            "unets": sorted(self.unets), "phase_inits": self.phase_inits,
            "vocab_sizes": self.vocab_sizes, "architecture": self.config.architecture(),
            "config": config_to_dict(self.config), "saved_at": time.time(),
        }
        tmp = self.run_dir / (CHECKPOINT_META + ".tmp")
        tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, self.run_dir / CHECKPOINT_META)
        for old in self.run_dir.glob("checkpoint-*.safetensors"):
            if old != file:
                old.unlink(missing_ok=True)
        return file

    def _load_checkpoint(self) -> None:
        meta = read_checkpoint_meta(self.run_dir)
        if meta is None:
            return
        if meta["architecture"] != json.loads(json.dumps(self.config.architecture())):
            raise UsageError(f"the checkpoint in {self.run_dir} was trained with another architecture",
                             "use the run's own config (checkpoint.json) or a new run directory")
        from pangu_cli.models.checkpoint import load_into, load_state

        state = load_state(self.run_dir / meta["file"])
        load_into(self.conditioner, state, "net.conditioner.")
        self._load_optimizer("conditioner", self.text_optimizer, state)
        if self.text_head is not None and "opt.text_head.step" in state:  # else: the head starts now
            load_into(self.text_head, state, "net.text_head.")
            self._load_optimizer("text_head", self.head_optimizer, state)
        for name in meta["unets"]:
            unet = self._new_unet(name)
            load_into(unet, state, f"net.unet.{name}.")
            self._load_optimizer("unet." + name, self.optimizers[name], state)
        for key, updates in meta["ema_updates"].items():
            prefix = f"ema.{key}."
            values = {k[len(prefix):]: v.copy() for k, v in state.items() if k.startswith(prefix)}
            self.emas[key] = EMA(values=values, updates=updates)
        self.step = meta["step"]
        self.samples = Counter(meta["samples"])
        self.unet_steps = Counter(meta["unet_steps"])
        self.pending_ema = Counter(meta["pending_ema"])
        self.phase_inits = list(meta["phase_inits"])
        self.elapsed = float(meta["elapsed_s"])
        self.loaded_from = self.step

    def text_probe(self, role: str, unet_name: str, batches: int = 2) -> dict[str, float]:
        """How much the captions help UNet `unet_name` on `role` batches: mean v-/ε-MSE on held batches
        (steps that training never reaches) with their own captions and with the captions rotated by one.
        Uses the live weights."""
        ms = self.ms
        if not hasattr(self, "_probe_tokenizer"):
            self._probe_tokenizer = TextTokenizer(self.manifest, self.run_dir)
        unet, cond = self.unet(unet_name), self.conditioner
        v_target = self.config.prediction == "v"
        totals = {"right": 0.0, "rotated": 0.0}
        unet.set_train(False)
        cond.set_train(False)
        try:
            for k in range(batches):
                batch = make_batch(self.config, self._probe_tokenizer, PROBE_STEP + k, role)
                x0, noise, a, s = batch["x0"], batch["noise"], batch["signal"], batch["sigma"]
                target = a * noise - s * x0 if v_target else noise
                rotated = self._probe_tokenizer(batch["texts"][1:] + batch["texts"][:1])
                for key, tokens in (("right", batch["tokens"]), ("rotated", rotated)):
                    context, y = cond(tuple(ms.Tensor(t) for t in tokens), ms.Tensor(batch["bucket"]))
                    out = unet(ms.Tensor(a * x0 + s * noise), ms.Tensor(batch["t"]), context, y).asnumpy()
                    totals[key] += float(np.mean((out - target) ** 2)) / batches
        finally:
            unet.set_train(True)
            cond.set_train(True)
        return {"mse_right": round(totals["right"], 5), "mse_rotated": round(totals["rotated"], 5),
                "text_gain": round(1.0 - totals["right"] / totals["rotated"], 4)}

    def current_lr(self, name: str) -> float:
        opt = self.optimizers[name]
        return float(opt.learning_rate(opt.global_step).asnumpy())


def _any_rank(flag: bool) -> bool:
    """Whether any rank raised `flag`."""
    from pangu_cli.distributed import all_reduce_sum

    return all_reduce_sum(1.0 if flag else 0.0) > 0


def read_checkpoint_meta(run_dir: Path) -> dict | None:
    file = Path(run_dir) / CHECKPOINT_META
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


# ================================================================================================= train
def _log_line(run_dir: Path, record: dict) -> None:
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def saved_config(data: dict) -> TrainConfig:
    """A run's saved config. Runs saved before the noise schedule could be shifted trained on the
    reference table: a missing `snr_shift` means 1, not today's default; runs from before the attribute
    head have none (`text_aux_weight` 0)."""
    return load_config({"snr_shift": 1.0, "text_aux_weight": 0.0, **data})


def _resolve_config(config: str | Path | dict | TrainConfig | None, run_dir: Path) -> TrainConfig:
    """The config given, else the run's own (saved with its checkpoint or at its start), else pangu-mini's."""
    if config is not None:
        return load_config(config)
    meta = read_checkpoint_meta(run_dir)
    if meta is not None:
        return saved_config(meta["config"])
    saved = run_dir / "config.json"
    if saved.is_file():
        return saved_config(json.loads(saved.read_text(encoding="utf-8")))
    return load_config(None)


def train(config: str | Path | dict | TrainConfig | None, run_dir: str | Path, max_steps: int | None = None,
          max_seconds: float | None = None, data_process: bool = True,
          log: Callable[[str], None] | None = print, rank: Any = None) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir` until its phases end, `max_steps` more steps, `max_seconds`,
    or SIGINT/SIGTERM; checkpoint every `checkpoint_every_s` and at the end. Returns a summary.

    `rank` (a `distributed.Rank`, under msrun): data-parallel over the ranks; rank 0 alone writes the
    checkpoints and the log, and a stop on any rank stops every rank at the same step."""
    from pangu_cli import distributed

    run_dir = Path(run_dir)
    main = rank is None or rank.main
    say = (log or (lambda message: None)) if main else (lambda message: None)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = _resolve_config(config, run_dir)
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(config_to_dict(cfg), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, run_dir / "config.json")
    if rank is not None:
        distributed.check_shared_folder(run_dir, rank)  # also: rank 0 has written the config
    if not main:
        cfg = _resolve_config(config, run_dir)
        distributed.barrier()  # until rank 0's Trainer has made the tokenizers
    trainer = Trainer(cfg, run_dir, say, rank=rank)
    if rank is not None:
        if main:
            distributed.barrier()
        if distributed.all_reduce_sum(trainer.step) != rank.size * trainer.step:
            raise UsageError(f"rank {rank.rank} would start at step {trainer.step}, another rank elsewhere",
                             "give every rank the same run folder (shared storage)")
    log_line = _log_line if main else (lambda folder, record: None)
    first = trainer.step
    say(f"{'resuming at' if trainer.loaded_from is not None else 'starting'} step {first} in {run_dir}")
    log_line(run_dir, {"event": "resume" if trainer.loaded_from is not None else "start", "step": first,
                       "time": time.time(), "pid": os.getpid(), **({"ranks": rank.size} if rank else {})})
    stop = {"reason": None}

    def on_signal(signum, _frame):
        stop["reason"] = signal.Signals(signum).name

    from pangu_cli import runtime

    # through runtime: MindSpore would otherwise turn a Ctrl-C into a SIGTERM during the steps
    previous = runtime.handle_interrupts(on_signal)
    source = BatchSource(cfg, run_dir, first, process=data_process)
    losses: dict[str, list[float]] = defaultdict(list)
    window = {"start": time.perf_counter(), "samples": 0, "wait": 0.0, "steps": 0}
    last_save = time.perf_counter()
    session_start = time.perf_counter()
    last_loss = float("nan")
    try:
        while True:
            if max_steps is not None and trainer.step - first >= max_steps:
                stop["reason"] = stop["reason"] or "max_steps"
            if max_seconds is not None and time.perf_counter() - session_start >= max_seconds:
                stop["reason"] = stop["reason"] or "max_seconds"
            plan = plan_step(cfg, trainer.step)
            if plan is None:
                stop["reason"] = stop["reason"] or "done"
            if trainer.rank is not None and _any_rank(bool(stop["reason"])):
                stop["reason"] = stop["reason"] or "another rank stopped"
            if stop["reason"]:
                break
            t0 = time.perf_counter()
            batch = source.get(plan)
            t1 = time.perf_counter()
            last_loss = trainer.train_step(plan, batch)
            t2 = time.perf_counter()
            trainer.elapsed += t2 - t0
            if not math.isfinite(last_loss):
                raise RuntimeError(f"loss is {last_loss} at step {plan.step}; not checkpointing")
            losses[plan.role].append(last_loss)
            if trainer.last_text_aux is not None:
                losses["text_aux"].append(trainer.last_text_aux)
            window["samples"] += len(batch["t"])
            window["wait"] += t1 - t0
            window["steps"] += 1
            if trainer.step % cfg.log_every == 0:
                now = time.perf_counter()
                span = now - window["start"]
                record = {
                    "step": trainer.step, "phase": cfg.phases[plan.phase_index].name,
                    "elapsed_s": round(trainer.elapsed, 1),
                    "loss": {role: round(float(np.mean(v)), 5) for role, v in losses.items() if role != "text_aux"},
                    "samples": dict(trainer.samples),
                    "samples_per_s": round(window["samples"] / span, 2),
                    "step_s": round(span / window["steps"], 3),
                    "data_wait_s": round(window["wait"] / window["steps"], 4),
                    "lr": round(trainer.current_lr(plan.unet), 8),
                }
                if losses.get("text_aux"):
                    record["text_aux"] = round(float(np.mean(losses["text_aux"])), 4)
                if trainer.rank is not None:
                    record["rank_batch"] = cfg.batch_size // trainer.rank.size  # rows each rank trains on
                log_line(run_dir, record)
                say(json.dumps(record, ensure_ascii=False))
                losses.clear()
                window = {"start": now, "samples": 0, "wait": 0.0, "steps": 0}
            if main and cfg.probe_every and trainer.step % cfg.probe_every == 0:
                phase, probe_start = cfg.phases[plan.phase_index], time.perf_counter()
                for role in sorted(r for r in set(phase.pattern) if phase.unet_for(r) in trainer.unets):
                    record = {"event": "probe", "step": trainer.step, "role": role,
                              **trainer.text_probe(role, phase.unet_for(role))}
                    log_line(run_dir, record)
                    say(json.dumps(record, ensure_ascii=False))
                window["start"] += time.perf_counter() - probe_start  # keep samples/s about training
            if main and time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                trainer.save()
                last_save = time.perf_counter()
                log_line(run_dir, {"event": "checkpoint", "step": trainer.step, "time": time.time()})
    finally:
        source.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if main and (trainer.step != first or trainer.loaded_from is None):
        trainer.save()
    log_line(run_dir, {"event": "stop", "step": trainer.step, "reason": stop["reason"], "time": time.time()})
    say(f"stopped at step {trainer.step} ({stop['reason']}); checkpoint in {run_dir}")
    return {"step": trainer.step, "first_step": first, "reason": stop["reason"], "last_loss": last_loss,
            "samples": dict(trainer.samples), "elapsed_s": trainer.elapsed}


# ================================================================================================ export
def export(run_dir: str | Path, out_dir: str | Path, ema: bool = True, dtype: str = "float16",
           sampling: dict | None = None) -> Path:
    """Write the model folder of a run: model.json, tokenizers, texture.safetensors (UNet + text
    towers), structure.safetensors (UNet). Needs no MindSpore: the checkpoint holds numpy arrays.

    Which UNets: "structure" and "texture" when the run has them; a run with one UNet (the shared
    model before its split, or the single-model baseline) gives a single-UNet model."""
    import shutil

    from pangu_cli.models.checkpoint import load_state, save_state

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta = read_checkpoint_meta(run_dir)
    if meta is None:
        raise ModelError(f"no checkpoint in {run_dir}", "train first: python -m pangu_cli.training train")
    config = saved_config(meta["config"])
    state = load_state(run_dir / meta["file"])
    cast = np.float16 if dtype == "float16" else np.float32

    def weights(kind: str, prefix_out: str) -> dict[str, np.ndarray]:
        prefix = (f"ema.{kind}." if ema else f"net.{kind}.")
        out = {prefix_out + k[len(prefix):]: v.astype(cast) for k, v in state.items() if k.startswith(prefix)}
        if not out:
            raise ModelError(f"the checkpoint has no '{kind}' weights")
        return out

    unets = meta["unets"]
    structure = "structure" if "structure" in unets else None
    texture = "texture" if "texture" in unets else (unets[0] if len(unets) == 1 else None)
    if texture is None:
        raise ModelError(f"cannot tell which UNet to export from {unets}")
    two_stage = structure is not None
    manifest = model_manifest(config, meta["vocab_sizes"], two_stage=two_stage)
    if sampling:
        manifest["sampling"].update(sampling)
    manifest["training"] = {"step": meta["step"], "samples": meta["samples"], "unet_steps": meta["unet_steps"],
                            "elapsed_s": round(meta["elapsed_s"], 1), "ema": ema,
                            "unets": {"texture": texture, **({"structure": structure} if two_stage else {})}}
    tmp = out_dir.with_name(out_dir.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(run_dir / "tokenizers", tmp / "tokenizers")
    tex = weights("unet." + texture, UNET_PREFIX)
    tex.update(weights("conditioner", CONDITIONER_PREFIX))
    save_state(tex, tmp / "texture.safetensors")
    if two_stage:
        save_state(weights("unet." + structure, UNET_PREFIX), tmp / "structure.safetensors")
    (tmp / "model.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def status(run_dir: str | Path) -> dict[str, Any]:
    """Where a run stands: checkpoint step, samples, time, the last log record and each role's last
    text probe."""
    run_dir = Path(run_dir)
    meta = read_checkpoint_meta(run_dir)
    last, probes = None, {}
    for record in iter_log(run_dir):
        if "loss" in record:
            last = record
        elif record.get("event") == "probe":
            probes[record["role"]] = record
    if meta is None:
        return {"run_dir": str(run_dir), "checkpoint": None, "last_log": last, "last_probes": probes}
    return {"run_dir": str(run_dir), "checkpoint": meta["file"], "step": meta["step"],
            "samples": meta["samples"], "unet_steps": meta["unet_steps"],
            "elapsed_h": round(meta["elapsed_s"] / 3600, 3), "unets": meta["unets"], "last_log": last,
            "last_probes": probes}


def iter_log(run_dir: str | Path) -> Iterator[dict]:
    file = Path(run_dir) / LOG_FILE
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            yield json.loads(line)


__all__ = ["BatchSource", "EMA", "PhaseConfig", "StepPlan", "TextTokenizer", "Trainer", "export", "make_batch",
           "model_manifest", "plan_step", "read_checkpoint_meta", "status", "train"]
