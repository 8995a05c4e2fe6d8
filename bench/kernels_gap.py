"""Per-kernel speed at pangu-mini's shapes: MindSpore (plain ops and pangu's fast kernels) beside PyTorch.

    python bench/kernels_gap.py                       # batch 8, threads as pangu sets them
    python bench/kernels_gap.py --batch 32 --threads 1 --reps 15

Kernels: GroupNorm, GroupNorm+SiLU, SiLU, 3x3 convolution, Dense (matmul) and attention BatchMatMul,
each forward and forward+backward (gradients of input and parameters, via `value_and_grad`, so the
forward runs too). MindSpore variants run compiled (`ms.jit`), as the trainer and the sampler run them,
and plain ops also in PyNative. All variants of one kernel are timed interleaved, one call each per
round; the table gives the median wall time, its min-max, the median process CPU time (robust on
oversubscribed shared cores) and the ratio of medians to PyTorch.
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both frameworks (MindSpore runtime_num_threads, OpenMP, torch)")
    p.add_argument("--only", default="", help="comma-separated kernel name prefixes to run")
    return p.parse_args(argv)


def timed(fns: dict, reps: int) -> dict:
    for fn in fns.values():  # compile + warm up
        fn()
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (wall[k], cpu[k]) for k in fns}


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from pangu_cli import runtime

    info = runtime.setup("CPU", threads=a.threads)
    import mindspore as ms
    import torch
    from mindspore import nn, ops

    from pangu_cli.models import fast_ops
    from pangu_cli.models.layers import Dense, GroupNorm, SiLU, conv2d
    from pangu_cli.models.unet import CrossAttention

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    b = a.batch

    def array(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def ms_cells(make):
        """(plain cell, fast cell or None) built with the fast kernels off and on."""
        with fast_ops.kernels(False):
            plain = make()
        fast = None
        if info.fast_kernels:
            with fast_ops.kernels(True):
                fast = make()
        return plain, fast

    def ms_variants(make, x_np, method=None):
        plain, fast = ms_cells(make)
        x = ms.Tensor(x_np)
        out = {}
        for label, cell in (("plain", plain), ("fast", fast)):
            if cell is None or (label == "fast" and not any(
                    getattr(c, "use_fast", False) for _, c in cell.cells_and_names())):
                continue  # no fast kernel for this op: the plain row is what the networks run
            fn = getattr(cell, method) if method else cell

            def make_loss(fn):  # a closure: ms.jit cannot compile default arguments
                def loss(a):
                    return fn(a).sum()  # as PyTorch's y.sum().backward()
                return loss

            loss = make_loss(fn)

            fwd_jit = ms.jit(fn)
            step = ms.jit(ms.value_and_grad(loss, 0, cell.trainable_params()))
            if label == "plain":
                out["ms pynative"] = (lambda fn=fn: fn(x).asnumpy(),
                                      lambda g=ms.value_and_grad(loss, 0, cell.trainable_params()): g(x)[0].asnumpy())
            out[f"ms {label} jit"] = (lambda f=fwd_jit: f(x).asnumpy(), lambda s=step: s(x)[0].asnumpy())
        return out

    def torch_variant(module, x_np, post=None):
        x = torch.from_numpy(x_np)

        def fwd():
            with torch.no_grad():
                y = module(x)
                return post(y) if post else y

        def fwd_bwd():
            xi = x.clone().requires_grad_()
            for p in getattr(module, "parameters", lambda: [])():
                p.grad = None
            y = module(xi)
            y = post(y) if post else y
            y.sum().backward()

        return {"torch": (fwd, fwd_bwd)}

    class Fn(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def construct(self, x):
            return self.fn(x)

    silu_t = torch.nn.functional.silu
    cases = []
    for c, s in ((64, 32), (128, 16)):
        x = array(b, c, s, s)
        shape = f"{b}x{c}x{s}x{s}"
        cases.append((f"groupnorm {shape}", ms_variants(lambda c=c: GroupNorm(32, c), x),
                      torch_variant(torch.nn.GroupNorm(32, c), x)))
        cases.append((f"groupnorm+silu {shape}", ms_variants(lambda c=c: GroupNorm(32, c), x, "forward_silu"),
                      torch_variant(torch.nn.GroupNorm(32, c), x, silu_t)))
        cases.append((f"silu {shape}", ms_variants(SiLU, x), torch_variant(torch.nn.SiLU(), x)))
        cases.append((f"conv3x3 {shape}", ms_variants(lambda c=c: conv2d(c, c, 3, padding=1), x),
                      torch_variant(torch.nn.Conv2d(c, c, 3, padding=1), x)))
    tokens, width = 256, 128
    x = array(b, tokens, width)
    for out in (width, 8 * width):  # attention projections; GEGLU's input projection
        cases.append((f"dense {b}x{tokens}x{width}->{out}", ms_variants(lambda out=out: Dense(width, out), x),
                      torch_variant(torch.nn.Linear(width, out), x)))
    heads, d = 4, 32
    q, k = array(b * heads, tokens, d), array(b * heads, tokens, d)
    kt = torch.from_numpy(k)

    class Scores(nn.Cell):  # attention scores q.kT, as unet.attention computes them
        def __init__(self):
            super().__init__()
            self.bmm = ops.BatchMatMul(transpose_b=True)
            self.k = ms.Tensor(k)

        def construct(self, a):
            return self.bmm(a, self.k)

    cases.append((f"attention q.kT {b * heads}x{tokens}x{d}", ms_variants(Scores, q),
                  torch_variant(lambda a: a @ kt.transpose(1, 2), q)))

    heads, tokens, width = 4, 256, 128

    class TorchSelfAttention(torch.nn.Module):  # diffusers' Attention without the extras
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(width, width, bias=False) for _ in range(3))
            self.out = torch.nn.Linear(width, width)

        def forward(self, h):
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
            o = torch.nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
            return self.out(o.transpose(1, 2).reshape(h.shape))

    x = array(b, tokens, width)
    cases.append((f"self-attention {b}x{tokens}x{width} {heads} heads",
                  ms_variants(lambda: CrossAttention(width, heads, width // heads), x),
                  torch_variant(TorchSelfAttention(), x)))

    only = [p.strip() for p in a.only.split(",") if p.strip()]
    print(f"# MindSpore {info.mindspore_version}, DNNL_MAX_CPU_ISA={info.cpu_isa}, runtime_num_threads="
          f"{info.threads or 'default'}, fast kernels {'on' if info.fast_kernels else 'off'}; torch "
          f"{torch.__version__} threads {torch.get_num_threads()}; {a.reps} interleaved reps")
    print(f"{'kernel':34s} {'pass':8s} {'variant':16s} {'wall ms':>8s} {'min-max':>15s} {'cpu ms':>8s} "
          f"{'x torch':>8s}")
    for name, ms_fns, torch_fns in cases:
        if only and not any(name.startswith(p) for p in only):
            continue
        variants = {**ms_fns, **torch_fns}
        for pass_index, pass_name in enumerate(("fwd", "fwd+bwd")):
            results = timed({k: v[pass_index] for k, v in variants.items()}, a.reps)
            ref = statistics.median(results["torch"][0])
            for variant, (wall, cpu) in results.items():
                med = statistics.median(wall)
                print(f"{name:34s} {pass_name:8s} {variant:16s} {med * 1e3:8.2f} "
                      f"{min(wall) * 1e3:7.2f}-{max(wall) * 1e3:<7.2f} {statistics.median(cpu) * 1e3:8.2f} "
                      f"{med / ref:8.2f}", flush=True)


if __name__ == "__main__":
    main()
