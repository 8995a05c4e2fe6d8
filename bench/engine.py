"""Engine speed: our MindSpore UNet beside diffusers' `UNet2DConditionModel` holding the same weights.

Measures, in one run on this machine, (a) one UNet evaluation and (b) one full Euler sampling with
classifier-free guidance (uncond + cond = batch 2), for
- MindSpore PyNative and MindSpore with `UNetModel.enable_jit()` (compile time reported apart), with
  the oneDNN ISA that `runtime.setup` chooses (native with pangu's CPU kernels, an AVX2 cap without);
- MindSpore PyNative with the native ISA (`PANGU_CPU_ISA=default`, a subprocess: oneDNN reads it once;
  without pangu's kernels its evaluations take minutes, so by default one is timed and the sampling is
  estimated as steps x eval; `--default-isa-repeats 0` skips it);
- optionally MindSpore PyNative with `mindspore.runtime.launch_blocking()` (synchronous dispatch, a subprocess);
- diffusers on PyTorch (2 threads).
Outputs are checked to agree before anything is timed. The backends take turns inside every round, so a
change in the load from other processes hits all of them alike; the ratios are taken per round.
With `--profile`, MindSpore's profiler and PyTorch's split one evaluation by operator type.

    python bench/engine.py                              # the table (+ the default-ISA subprocess)
    python bench/engine.py --profile                    # and where the time goes
    python bench/engine.py --blocking-repeats 5         # and PyNative with synchronous dispatch
    python bench/engine.py --channel-mult 1,2,4 --repeats 7 --json /tmp/engine.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the diffusers -> reference renaming lives with the UNet tests

CONTEXT_TOKENS, CONTEXT_DIM, ADM = 77, 64, 64
GUIDANCE = 6.0


# --------------------------------------------------------------------------------------------------
# The network, in both libraries


def our_config(channel_mult: list[int]) -> dict:
    return dict(in_channels=4, out_channels=4, model_channels=64, channel_mult=channel_mult, num_res_blocks=2,
                attention_resolutions=[2 ** level for level in range(1, len(channel_mult))],
                transformer_depth=1, num_head_channels=32, context_dim=CONTEXT_DIM, adm_in_channels=ADM,
                num_classes="sequential", use_spatial_transformer=True, use_linear_in_transformer=True,
                legacy=False)


def diffusers_unet(channel_mult: list[int], seed: int):
    """The same architecture in diffusers, with random non-trivial weights (norms and biases included)."""
    import torch
    from diffusers import UNet2DConditionModel
    from test_unet import _randomise

    widths = tuple(64 * m for m in channel_mult)
    levels = len(widths)
    model = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=CONTEXT_DIM,
        class_embed_type="projection", projection_class_embeddings_input_dim=ADM, norm_num_groups=32,
        block_out_channels=widths, layers_per_block=2,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        transformer_layers_per_block=1,
        attention_head_dim=tuple(w // 32 for w in widths),  # diffusers' name for the number of heads
        use_linear_projection=True).eval()
    _randomise(torch, model, seed)
    return model


def reference_state(model) -> dict[str, np.ndarray]:
    from test_unet import diffusers_to_reference

    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return diffusers_to_reference(state, layers_per_block=2)


def our_unet(channel_mult: list[int], state: dict[str, np.ndarray], jit: bool = False, plain: bool = False):
    """Our UNet with `state`; `plain`: built with MindSpore's own kernels instead of pangu's CPU kernels."""
    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.unet import UNetModel

    with _plain_kernels() if plain else contextlib.nullcontext():
        unet = UNetModel(**our_config(channel_mult))
    load_into(unet, state)
    unet.set_train(False)
    return unet.enable_jit() if jit else unet


def _plain_kernels():
    from pangu_cli.models import fast_ops

    return fast_ops.kernels(False)


def kernel_state() -> str:
    """Which of pangu's CPU kernels (`pangu_cli.models.fast_ops`) networks built now use."""
    try:
        from pangu_cli.models import fast_ops
    except ImportError:
        return "MindSpore's kernels (this checkout has no pangu CPU kernels)"
    kinds = fast_ops.enabled_kinds()
    return f"pangu CPU kernels for {', '.join(kinds)}" if kinds else "MindSpore's plain kernels"


def make_inputs(latent: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 4, latent, latent), dtype=np.float32),
            "t": np.array([999, 500], np.int32),
            "context": rng.standard_normal((2, CONTEXT_TOKENS, CONTEXT_DIM), dtype=np.float32),
            "y": rng.standard_normal((2, ADM), dtype=np.float32)}


# --------------------------------------------------------------------------------------------------
# Evaluation and sampling as plain callables (numpy in, numpy out), so both libraries run the same loop


def ms_eps(unet):
    from pangu_cli.sampling.pipeline import unet_eps_model

    return unet_eps_model(unet)


def torch_eps(model):
    import torch

    def eps(x_in, t, cond):
        with torch.no_grad():
            return model(torch.from_numpy(x_in), torch.from_numpy(t), torch.from_numpy(cond["context"]),
                         class_labels=torch.from_numpy(cond["y"])).sample.numpy()

    return eps


def evaluate(eps, inputs) -> np.ndarray:
    return eps(inputs["x"], inputs["t"], {"context": inputs["context"], "y": inputs["y"]})


def sample(eps, inputs, steps: int, seed: int = 0) -> np.ndarray:
    """Euler, `steps` steps of the reference schedule, CFG 6 over [uncond, cond] in one batch-2 call."""
    from pangu_cli.sampling import DiscreteEpsDenoiser, Guidance, GuidedDenoiser, initial_noise, reference_sigmas
    from pangu_cli.sampling import sample_euler

    sigmas = reference_sigmas(steps)
    x = initial_noise(seed, (1,) + inputs["x"].shape[1:], sigmas[0])
    cond = {"context": inputs["context"], "y": inputs["y"]}  # row 0 plays the uncond, row 1 the cond branch
    return sample_euler(GuidedDenoiser(DiscreteEpsDenoiser(eps), cond, Guidance(GUIDANCE)), x, sigmas)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measured(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): on a shared machine the CPU time moves
    less with other processes' load than the wall time does."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def max_error(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs error, the same relative to max(1, max |expected|))."""
    error = float(np.abs(got - expected).max())
    return error, error / max(1.0, float(np.abs(expected).max()))


# --------------------------------------------------------------------------------------------------
# Profiles: kernel time per operator group for one evaluation

GROUPS = [  # (group, substrings of MindSpore op types / PyTorch aten op names), first match wins
    ("attention (fused)", ("scaled_dot_product", "flash_attention", "custom:crossattention")),
    ("GEGLU (fused)", ("custom:geglu",)),
    ("conv", ("conv",)),
    ("GroupNorm", ("group_norm", "groupnorm")),
    ("LayerNorm", ("layer_norm", "layernorm")),
    ("matmul", ("matmul", "addmm", "aten::mm", "bmm", "linear", "dense")),
    ("softmax", ("softmax",)),
    ("data movement", ("transpose", "reshape", "concat", "aten::cat", "split", "slice", "tile", "repeat",
                       "gather", "copy", "contiguous", "clone", "permute", "view", "upsample", "chunk",
                       "expand", "stack", "select", "unsqueeze", "squeeze", "index", "resize", "empty", "strided")),
    ("elementwise", ("add", "mul", "sub", "div", "sigmoid", "silu", "gelu", "erf", "exp", "cos", "sin",
                     "cast", "neg", "sqrt", "pow", "tanh", "aten::to", "arange", "fill", "zeros", "ones")),
]
UNSCOPED_CUSTOM = "pangu kernels (PyNative: no cell scope)"


def group_of(op: str) -> str:
    name = op.lower()
    if name == "aten::t":  # the weight transpose of a Linear (a substring would catch aten::tanh)
        return "data movement"
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return UNSCOPED_CUSTOM if name.startswith("custom") else "other"


def profile_mindspore(unet, inputs, evals: int, folder: Path) -> dict:
    """Kernel time per op type from MindSpore's profiler (CPU: FRAMEWORK/cpu_op_detail_info_0.csv).

    pangu's own kernels all have the op type `Custom`; a compiled graph names the cell each one runs in
    (`.../2-Conv2d/Custom-op0`), so there they are attributed as `Custom:Conv2d`; PyNative gives no scope.
    """
    import csv

    import mindspore as ms

    profiler = ms.Profiler(output_path=str(folder))
    eps = ms_eps(unet)
    wall = timed(lambda: [evaluate(eps, inputs) for _ in range(evals)]) / evals
    profiler.stop()
    profiler.analyse()
    files = sorted(folder.rglob("cpu_op_detail_info_*.csv"))
    if not files:
        raise RuntimeError(f"MindSpore's profiler wrote no cpu_op_detail_info in {folder}")
    ops: dict[str, float] = {}
    with open(files[-1], newline="") as fh:
        for row in csv.DictReader(fh):
            key = row["op_type"]
            scope = row["full_op_name"].split("/")
            if key == "Custom" and len(scope) > 1:
                key = "Custom:" + scope[-2].split("-", 1)[-1]  # "2-Conv2d" -> Conv2d
            ops[key] = ops.get(key, 0.0) + float(row["op_total_time(ms)"]) / evals
    return {"wall_ms": wall * 1e3, "ops_ms": ops}


def profile_torch(model, inputs, evals: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    eps = torch_eps(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed(lambda: [evaluate(eps, inputs) for _ in range(evals)]) / evals
    ops = {e.key: e.self_cpu_time_total / 1e3 / evals for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return {"wall_ms": wall * 1e3, "ops_ms": ops}


def grouped(ops_ms: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for op, ms_ in ops_ms.items():
        out[group_of(op)] = out.get(group_of(op), 0.0) + ms_
    return out


# --------------------------------------------------------------------------------------------------
# The default-ISA worker (a subprocess: oneDNN reads its ISA setting once per process)


def worker(args) -> None:
    from pangu_cli import runtime

    info = runtime.setup("CPU")
    if args.launch_blocking:
        import mindspore as ms

        ms.runtime.launch_blocking()
    from safetensors.numpy import load_file

    folder = Path(args.worker)
    state = load_file(str(folder / "weights.safetensors"))
    data = dict(np.load(folder / "inputs.npz"))
    expected = data.pop("expected")
    channel_mult = json.loads((folder / "config.json").read_text())["channel_mult"]
    unet = our_unet(channel_mult, state)
    eps = ms_eps(unet)
    result = {"isa": info.cpu_isa or "default (oneDNN's choice)", "kernels": kernel_state(), "eval_s": [], "eval_cpu_s": [],
              "sampling_s": [], "load_average": [os.getloadavg()[0]]}
    warmup_s = timed(lambda: result.__setitem__("error", max_error(evaluate(eps, data), expected)))
    result["warmup_s"] = warmup_s
    for _ in range(args.repeats):
        wall, cpu = measured(lambda: evaluate(eps, data))
        result["eval_s"].append(wall)
        result["eval_cpu_s"].append(cpu)
    for _ in range(args.sampling_repeats):
        result["sampling_s"].append(timed(lambda: sample(eps, data, args.steps)))
    result["load_average"].append(os.getloadavg()[0])
    (folder / "result.json").write_text(json.dumps(result))


def run_worker(folder: Path, args, isa: str, repeats: int, samplings: int, blocking: bool = False) -> dict:
    """MindSpore PyNative in a fresh process with `PANGU_CPU_ISA=isa` (and `launch_blocking`)."""
    env = dict(os.environ, PANGU_CPU_ISA=isa)
    env.pop("DNNL_MAX_CPU_ISA", None)
    command = [sys.executable, __file__, "--worker", str(folder), "--repeats", str(repeats),
               "--sampling-repeats", str(samplings), "--steps", str(args.steps)]
    subprocess.run(command + (["--launch-blocking"] if blocking else []), env=env, check=True)
    return json.loads((folder / "result.json").read_text())


# --------------------------------------------------------------------------------------------------
# Main


def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    """median [min–max] of the values times `scale`."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}–{max(v):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel-mult", default="1,2", help="UNet levels, e.g. 1,2 or 1,2,4 (default 1,2)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (default 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timed evaluations and samplings per backend")
    parser.add_argument("--warmup", type=int, default=1, help="untimed evaluations per backend first")
    parser.add_argument("--sampling-repeats", type=int, default=None, help="default: --repeats")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--default-isa-repeats", type=int, default=1,
                        help="timed evaluations without the ISA cap (0 skips the subprocess; each takes minutes)")
    parser.add_argument("--default-isa-sampling", type=int, default=0,
                        help="timed samplings without the ISA cap (default 0: estimated as steps x eval)")
    parser.add_argument("--blocking-repeats", type=int, default=0,
                        help="also time PyNative with mindspore.runtime.launch_blocking() (AVX2 cap, a subprocess): "
                             "this many evaluations, and --blocking-sampling samplings (default 0: skipped)")
    parser.add_argument("--blocking-sampling", type=int, default=1)
    parser.add_argument("--launch-blocking", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-kernels", action="store_true",
                        help="also time PyNative and jit UNets built with MindSpore's own kernels (no pangu kernels)")
    parser.add_argument("--no-jit", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also split one evaluation by operator type")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sampling_repeats is None:
        args.sampling_repeats = args.repeats
    if args.worker:
        worker(args)
        return

    from pangu_cli import runtime

    info = runtime.setup("CPU")  # before MindSpore loads: applies the ISA cap
    import mindspore as ms
    import torch

    torch.set_num_threads(args.torch_threads)
    channel_mult = [int(m) for m in args.channel_mult.split(",")]
    inputs = make_inputs(args.latent)
    reference = diffusers_unet(channel_mult, seed=1)
    state = reference_state(reference)

    from torch.utils.flop_counter import FlopCounterMode

    backends = {"diffusers": torch_eps(reference)}
    with FlopCounterMode(display=False) as counter:
        expected = evaluate(backends["diffusers"], inputs)
    gflop = counter.get_total_flops() / 1e9

    threads = getattr(info, "threads", None) or "MindSpore's default"
    print(f"MindSpore {ms.__version__} (CPU ISA {info.cpu_isa}, {info.cpu_isa_source}; {threads} threads; "
          f"{kernel_state()}), torch {torch.__version__} ({args.torch_threads} threads), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    config = our_config(channel_mult)
    print(f"UNet: model_channels 64, channel_mult {channel_mult}, num_res_blocks 2, attention at levels "
          f"{config['attention_resolutions']}, transformer_depth 1, head width 32, context {CONTEXT_TOKENS}x"
          f"{CONTEXT_DIM}, adm {ADM}; latent {args.latent}x{args.latent}, batch 2: {gflop:.1f} GFLOP/eval, "
          f"{sum(v.size for v in state.values()) / 1e6:.1f} M parameters")

    ours = our_unet(channel_mult, state)
    backends["MindSpore PyNative"] = ms_eps(ours)
    results: dict = {"isa": info.cpu_isa, "config": config, "latent": args.latent, "gflop": gflop, "errors": {}, "eval_s": {},
                     "eval_cpu_s": {}, "sampling_s": {}, "load_average": [os.getloadavg()[0]]}
    check = {"MindSpore PyNative": evaluate(backends["MindSpore PyNative"], inputs)}
    if not args.no_jit:
        jitted = our_unet(channel_mult, state, jit=True)
        backends["MindSpore jit"] = ms_eps(jitted)
        start = time.perf_counter()
        check["MindSpore jit"] = evaluate(backends["MindSpore jit"], inputs)
        results["jit_first_call_s"] = time.perf_counter() - start
    if args.plain_kernels:
        backends["MindSpore PyNative, plain kernels"] = ms_eps(our_unet(channel_mult, state, plain=True))
        check["MindSpore PyNative, plain kernels"] = evaluate(backends["MindSpore PyNative, plain kernels"], inputs)
        if not args.no_jit:
            plain_jit = our_unet(channel_mult, state, jit=True, plain=True)
            backends["MindSpore jit, plain kernels"] = ms_eps(plain_jit)
            check["MindSpore jit, plain kernels"] = evaluate(backends["MindSpore jit, plain kernels"], inputs)
    for name, got in check.items():
        results["errors"][name] = max_error(got, expected)
    worst = max(rel for _, rel in results["errors"].values())
    print("agreement with diffusers, one evaluation: " + ", ".join(
        f"{name} max abs err {err:.2e} (rel {rel:.1e})" for name, (err, rel) in results["errors"].items()))
    if worst > 1e-3:
        sys.exit(f"outputs disagree (relative error {worst:.1e} > 1e-3): not timing a different function")

    # Rounds: every backend once per round, so that load changes hit all alike.
    names = list(backends)
    for name in names:
        results["eval_s"][name], results["eval_cpu_s"][name], results["sampling_s"][name] = [], [], []
    for r in range(args.warmup + args.repeats):
        for name in names:
            wall, cpu = measured(lambda: evaluate(backends[name], inputs))
            if r >= args.warmup:
                results["eval_s"][name].append(wall)
                results["eval_cpu_s"][name].append(cpu)
    results["load_average"].append(os.getloadavg()[0])
    latents = {}
    for r in range(args.sampling_repeats):
        for name in names:
            start = time.perf_counter()
            latents[name] = sample(backends[name], inputs, args.steps)
            results["sampling_s"][name].append(time.perf_counter() - start)
        results["load_average"].append(os.getloadavg()[0])
    if latents:
        results["sampling_errors"] = {name: max_error(latents[name], latents["diffusers"])
                                      for name in names if name != "diffusers"}
        print(f"agreement with diffusers, {args.steps}-step sampling (final latent): " + ", ".join(
            f"{name} max abs err {err:.2e} (rel {rel:.1e})" for name, (err, rel) in results["sampling_errors"].items()))

    workers = []  # (label, ISA, evaluations, samplings, launch_blocking)
    if args.blocking_repeats > 0:
        workers.append(("MindSpore PyNative + launch_blocking (AVX2 cap, subprocess)", "AVX2",
                        args.blocking_repeats, args.blocking_sampling, True))
    if args.default_isa_repeats > 0:
        workers.append(("MindSpore PyNative (no ISA cap, subprocess)", "default",
                        args.default_isa_repeats, args.default_isa_sampling, False))
    if workers:
        from safetensors.numpy import save_file

        results["subprocesses"] = {}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_file(state, str(folder / "weights.safetensors"))
            np.savez(folder / "inputs.npz", expected=expected, **inputs)
            (folder / "config.json").write_text(json.dumps({"channel_mult": channel_mult}))
            for label, isa, repeats, samplings, blocking in workers:
                results["subprocesses"][label] = run_worker(folder, args, isa, repeats, samplings, blocking)

    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            results["profile"] = {"MindSpore PyNative": profile_mindspore(ours, inputs, 2, Path(tmp) / "pynative")}
            if not args.no_jit:
                results["profile"]["MindSpore jit"] = profile_mindspore(jitted, inputs, 2, Path(tmp) / "jit")
                if args.plain_kernels:
                    results["profile"]["MindSpore jit, plain kernels"] = profile_mindspore(
                        plain_jit, inputs, 2, Path(tmp) / "plain_jit")
            results["profile"]["diffusers"] = profile_torch(reference, inputs, 2)

    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(results: dict, args) -> None:
    gflop, steps = results["gflop"], args.steps
    diffusers_eval = results["eval_s"]["diffusers"]
    diffusers_sampling = results["sampling_s"]["diffusers"]
    print(f"\nmedian [min–max] of {args.repeats} evaluations / {args.sampling_repeats} samplings after {args.warmup} "
          f"warm-up evaluation(s); ratio = time / diffusers' time, median over rounds; load average "
          f"{' → '.join(f'{v:.1f}' for v in results['load_average'])}")
    header = (f"| backend | ms/eval | CPU ms/eval | GFLOP/s | ratio (eval) | s/{steps}-step sampling "
              f"| ratio (sampling) |\n|---|---|---|---|---|---|---|")
    print(header)
    for name, evals in results["eval_s"].items():
        samplings = results["sampling_s"][name]
        eval_ratio = statistics.median(a / b for a, b in zip(evals, diffusers_eval))
        isa = f"ISA {results['isa']}" if results["isa"] else "native ISA"
        row = f"| {name}{f' ({isa})' if name.startswith('MindSpore') else f' (torch {args.torch_threads} threads)'}"
        row += (f" | {spread(evals, 1e3)} | {statistics.median(results['eval_cpu_s'][name]) * 1e3:.0f}"
                f" | {gflop / statistics.median(evals):.1f} | {eval_ratio:.1f}")
        if samplings:
            sampling_ratio = statistics.median(a / b for a, b in zip(samplings, diffusers_sampling))
            row += f" | {spread(samplings, 1, 1)} | {sampling_ratio:.1f} |"
        else:
            row += " | – | – |"
        print(row)
    for label, d in results.get("subprocesses", {}).items():
        median = statistics.median(d["eval_s"])
        sampling = (spread(d["sampling_s"], 1, 1) if d["sampling_s"]
                    else f"≈ {steps * median:.0f} (est. {steps} × eval)")
        sampling_s = statistics.median(d["sampling_s"]) if d["sampling_s"] else steps * median
        print(f"| {label} | {spread(d['eval_s'], 1e3)} | {statistics.median(d['eval_cpu_s']) * 1e3:.0f} | "
              f"{gflop / median:.2f} | {median / statistics.median(diffusers_eval):.1f} | {sampling} | "
              f"{sampling_s / statistics.median(diffusers_sampling):.1f} |")
    for label, d in results.get("subprocesses", {}).items():
        print(f"  ({label}: {d.get('kernels', '')}; warm-up evaluation {d['warmup_s']:.1f} s, "
              f"max abs err vs diffusers {d['error'][0]:.2e}; "
              f"its ratios are against the medians of the in-process rounds, measured at another time; load average "
              f"{' → '.join(f'{v:.1f}' for v in d['load_average'])})")
    if "jit_first_call_s" in results:
        jit_eval = statistics.median(results["eval_s"]["MindSpore jit"])
        print(f"MindSpore jit: first call {results['jit_first_call_s']:.1f} s, so compilation ≈ "
              f"{results['jit_first_call_s'] - jit_eval:.1f} s (once per input shape)")
    if "profile" in results:
        print_profile(results["profile"])


def print_profile(profile: dict) -> None:
    names = list(profile)
    groups = {name: grouped(profile[name]["ops_ms"]) for name in names}
    kernels = {name: sum(groups[name].values()) for name in names}
    print("\nprofile of one evaluation: kernel time per operator group, ms (share of all kernels); the wall time "
          "under the profilers: " + ", ".join(f"{name} {profile[name]['wall_ms']:.0f} ms" for name in names))
    print("| group | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    first = names[0]
    for group in sorted(set().union(*groups.values()), key=lambda g: -groups[first].get(g, 0.0)):
        cells = [f"{groups[n].get(group, 0.0):.1f} ({groups[n].get(group, 0.0) / kernels[n]:.0%})" for n in names]
        print(f"| {group} | " + " | ".join(cells) + " |")
    print("| all kernels | " + " | ".join(f"{kernels[n]:.1f}" for n in names) + " |")
    print("| wall − kernels (dispatch, Python, copies) | "
          + " | ".join(f"{profile[n]['wall_ms'] - kernels[n]:.1f}" for n in names) + " |")
    for name in names:
        top = sorted(profile[name]["ops_ms"].items(), key=lambda kv: -kv[1])[:14]
        print(f"{name} ops (ms/eval): " + ", ".join(f"{op} {t:.1f}" for op, t in top))


if __name__ == "__main__":
    main()
