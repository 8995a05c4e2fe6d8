"""One pangu-mini training step: MindSpore variants beside the same network in PyTorch, in one run.

    python bench/train_step.py                         # pixel UNet 64/128/128, batch 32, 32x32
    python bench/train_step.py --res 64 --batch 16     # texture-sized inputs
    python bench/train_step.py --variants pynative,jit,torch --rounds 8
    PANGU_CPU_ISA=default python bench/train_step.py  # MindSpore without the oneDNN ISA cap

The step is the trainer's: epsilon-prediction MSE of the UNet (`pangu_cli.models.unet.UNetModel`) on
noised inputs, gradients of all parameters, one AdamW update. PyTorch runs diffusers'
`UNet2DConditionModel` with the same configuration (same layers, same FLOPs). Variants are timed
interleaved, one step each per round, so that load from other processes on these shared cores hits
them alike; the table gives the median, the spread (min-max) and the ratio to PyTorch's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MS_VARIANTS = ("pynative", "jit", "graph", "train_cell")
ALL_VARIANTS = MS_VARIANTS + ("torch",)
# A MindSpore variant may name the fast kernels its network is built with: "jit" (as runtime.setup chose),
# "jit_plain" (none: MindSpore's own ops), "jit+conv+group_norm" (only those kinds).


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=64, help="model_channels")
    p.add_argument("--mult", default="1,2,2", help="channel_mult")
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--res", type=int, default=32, help="input height = width")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context-dim", type=int, default=128)
    p.add_argument("--context-len", type=int, default=32)
    p.add_argument("--adm", type=int, default=128, help="adm_in_channels (vector conditioning)")
    p.add_argument("--variants", default="pynative,jit,torch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="MindSpore runtime_num_threads (pangu default if unset)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def unet_config(a) -> dict:
    mult = [int(m) for m in a.mult.split(",")]
    levels = len(mult)
    # attention at the two lowest-resolution levels, as in the pangu-mini recipe
    attention_resolutions = [2 ** lvl for lvl in range(max(0, levels - 2), levels)]
    return dict(in_channels=3, out_channels=3, model_channels=a.channels, channel_mult=mult,
                num_res_blocks=a.res_blocks, attention_resolutions=attention_resolutions,
                transformer_depth=1, num_head_channels=32, context_dim=a.context_dim,
                adm_in_channels=a.adm, num_classes="sequential", use_spatial_transformer=True,
                use_linear_in_transformer=True, legacy=False)


def diffusers_kwargs(cfg: dict) -> dict:
    widths = [cfg["model_channels"] * m for m in cfg["channel_mult"]]
    levels = len(widths)
    attn = {lvl for lvl in range(levels) if 2 ** lvl in cfg["attention_resolutions"]}
    down = tuple("CrossAttnDownBlock2D" if lvl in attn else "DownBlock2D" for lvl in range(levels))
    up = tuple("CrossAttnUpBlock2D" if lvl in attn else "UpBlock2D" for lvl in reversed(range(levels)))
    return dict(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], block_out_channels=tuple(widths),
                layers_per_block=cfg["num_res_blocks"], down_block_types=down, up_block_types=up,
                cross_attention_dim=cfg["context_dim"], attention_head_dim=tuple(w // 32 for w in widths),
                use_linear_projection=True, class_embed_type="projection",
                projection_class_embeddings_input_dim=cfg["adm_in_channels"], norm_num_groups=32)


def make_batch(a, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((a.batch, 3, a.res, a.res), dtype=np.float32),
        "noise": rng.standard_normal((a.batch, 3, a.res, a.res), dtype=np.float32),
        "t": rng.integers(0, 1000, a.batch).astype(np.int32),
        "context": rng.standard_normal((a.batch, a.context_len, a.context_dim), dtype=np.float32),
        "y": rng.standard_normal((a.batch, a.adm), dtype=np.float32),
    }


# --------------------------------------------------------------------------------------------------
# MindSpore


def split_variant(variant: str) -> tuple[str, bool | tuple[str, ...]]:
    """'jit+conv+softmax' -> ('jit', ('conv', 'softmax')); 'jit_plain' -> ('jit', False); 'jit' -> ('jit', True)."""
    if variant.endswith("_plain"):
        return variant[: -len("_plain")], False
    kind, *kinds = variant.split("+")
    return kind, tuple(kinds) if kinds else True


def mindspore_step(kind: str, cfg: dict, batch: dict, lr=5e-4, weight_decay=0.01, kernels=True):
    """A zero-argument callable running one training step of `kind`; returns the loss as a float."""
    import mindspore as ms
    from mindspore import nn, ops

    from pangu_cli.models import fast_ops
    from pangu_cli.models.unet import UNetModel

    if kernels is not False and not fast_ops.enabled():
        kernels = False  # fast kernels unavailable or switched off for this process
    with fast_ops.kernels(kernels):
        model = UNetModel(**cfg)
    model.set_train(True)
    opt = nn.AdamWeightDecay(model.trainable_params(), learning_rate=lr, weight_decay=weight_decay)
    x, noise, t, ctx, y = (ms.Tensor(batch[k]) for k in ("x", "noise", "t", "context", "y"))
    # Noising stands in for the scheduler's q_sample; it is part of the step's cost in the trainer.
    alpha = ms.Tensor(np.cos(batch["t"] / 1000 * np.pi / 2).astype(np.float32)[:, None, None, None])

    def loss_fn(x, noise, t, ctx, y):
        noisy = alpha * x + ops.sqrt(1 - alpha * alpha) * noise
        return ops.mse_loss(model(noisy, t, ctx, y), noise)

    if kind in ("pynative", "jit"):
        grad_fn = ms.value_and_grad(loss_fn, None, opt.parameters)

        def step(x, noise, t, ctx, y):
            loss, grads = grad_fn(x, noise, t, ctx, y)
            opt(grads)
            return loss

        if kind == "jit":
            step = ms.jit(step)
        return lambda: float(step(x, noise, t, ctx, y).asnumpy())

    class WithLoss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.model = model

        def construct(self, x, noise, t, ctx, y):
            noisy = alpha * x + ops.sqrt(1 - alpha * alpha) * noise
            return ops.mse_loss(self.model(noisy, t, ctx, y), noise)

    cell = nn.TrainOneStepCell(WithLoss(), opt)
    cell.set_train(True)
    if kind == "train_cell":  # TrainOneStepCell with its construct compiled by ms.jit, PyNative context
        cell.construct = ms.jit(cell.construct)
        return lambda: float(cell(x, noise, t, ctx, y).asnumpy())

    def graph_step():  # GRAPH_MODE for this call only; the rest of the process stays PyNative
        ms.set_context(mode=ms.GRAPH_MODE)
        try:
            return float(cell(x, noise, t, ctx, y).asnumpy())
        finally:
            ms.set_context(mode=ms.PYNATIVE_MODE)

    return graph_step


# --------------------------------------------------------------------------------------------------
# PyTorch


def torch_step(cfg: dict, batch: dict, threads: int, lr=5e-4, weight_decay=0.01):
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    model = UNet2DConditionModel(sample_size=batch["x"].shape[-1], **diffusers_kwargs(cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    x, noise, ctx, y = (torch.from_numpy(batch[k]) for k in ("x", "noise", "context", "y"))
    t = torch.from_numpy(batch["t"]).long()
    alpha = torch.from_numpy(np.cos(batch["t"] / 1000 * np.pi / 2).astype(np.float32)[:, None, None, None])

    def step():
        opt.zero_grad(set_to_none=True)
        noisy = alpha * x + (1 - alpha * alpha).sqrt() * noise
        loss = torch.nn.functional.mse_loss(model(noisy, t, ctx, class_labels=y).sample, noise)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------


def interleaved(steps: dict, rounds: int, warmup: int = 2) -> tuple[dict, dict]:
    """Run each step `warmup` times (compiles), then `rounds` rounds of one timed call each.

    Returns wall-clock and process CPU seconds per call. On shared, oversubscribed cores the CPU
    time (all threads of this process) tracks the work done far better than the wall clock, which
    mostly measures how long the scheduler kept us waiting; compare both.
    """
    compile_s = {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        compile_s[name] = time.perf_counter() - t0
        print(f"  warm-up {name}: {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for r in range(rounds):
        for name, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def report(wall: dict[str, list[float]], cpu: dict[str, list[float]], batch: int, reference: str = "torch") -> None:
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    cmed = {name: statistics.median(ts) for name, ts in cpu.items()}
    ref, cref = med.get(reference), cmed.get(reference)
    print(f"{'variant':24s} {'wall ms':>9s} {'min-max':>15s} {'samples/s':>10s} {'x torch':>8s} "
          f"{'cpu ms':>9s} {'x torch':>8s}")
    for name, ts in wall.items():
        ratio = f"{med[name] / ref:8.2f}" if ref else ""
        cratio = f"{cmed[name] / cref:8.2f}" if cref else ""
        print(f"{name:24s} {med[name] * 1e3:9.0f} {min(ts) * 1e3:7.0f}-{max(ts) * 1e3:<7.0f} "
              f"{batch / med[name]:10.1f} {ratio} {cmed[name] * 1e3:9.0f} {cratio}")


def main(argv=None):
    a = parse_args(argv)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = {split_variant(v)[0] for v in variants} - set(ALL_VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {ALL_VARIANTS}")
    from pangu_cli import runtime

    info = runtime.setup("CPU", threads=a.threads)
    cfg = unet_config(a)
    batch = make_batch(a)
    steps = {}
    for v in variants:
        if v == "torch":
            steps[v], n_params = torch_step(cfg, batch, a.torch_threads)
        else:
            kind, kernels = split_variant(v)
            steps[v] = mindspore_step(kind, cfg, batch, kernels=kernels)
    print(f"# pangu-mini training step: batch {a.batch}, {a.res}x{a.res}, channels {a.channels}x[{a.mult}], "
          f"{a.res_blocks} res block(s)/level, context {a.context_len}x{a.context_dim}, adm {a.adm}")
    print(f"# MindSpore {info.mindspore_version}, DNNL_MAX_CPU_ISA={info.cpu_isa}, runtime_num_threads="
          f"{info.threads or 'default'}, fast kernels {'on' if info.fast_kernels else 'off'}; "
          f"torch threads {a.torch_threads}; {a.rounds} interleaved rounds")
    wall, cpu = interleaved(steps, a.rounds)
    report(wall, cpu, a.batch)


if __name__ == "__main__":
    main()
