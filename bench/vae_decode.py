"""Autoencoder decode speed: our MindSpore KL autoencoder beside diffusers' `AutoencoderKL` holding the same
random weights (the parity test's renaming), PyNative and compiled, interleaved rounds.

    python bench/vae_decode.py                         # 2 levels of 64/128 channels, latent 32x32 -> 128x128
    python bench/vae_decode.py --ch 128 --mult 1,2,4,4 --latent 32 --repeats 3   # SDXL layout at small width

Outputs are checked to agree (max abs error ≤ 1e-3 relative) before anything is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the diffusers -> reference renaming lives with the VAE tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ch", type=int, default=64)
    parser.add_argument("--mult", default="1,2")
    parser.add_argument("--latent", type=int, default=32, help="latent side (pixels = latent x 2**(levels-1))")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args()
    mult = [int(m) for m in args.mult.split(",")]

    from pangu_cli import runtime

    info = runtime.setup("CPU")
    import mindspore as ms
    import torch
    from diffusers import AutoencoderKL as DiffusersVAE

    from pangu_cli.models.checkpoint import load_into
    from pangu_cli.models.vae import AutoencoderKL
    from test_vae import diffusers_vae_to_reference

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    resolution = args.latent * 2 ** (len(mult) - 1)
    ref = DiffusersVAE(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(mult),
                       up_block_types=("UpDecoderBlock2D",) * len(mult),
                       block_out_channels=tuple(args.ch * m for m in mult), layers_per_block=2,
                       latent_channels=4, norm_num_groups=32, sample_size=resolution).eval()
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": resolution, "in_channels": 3, "out_ch": 3,
                "ch": args.ch, "ch_mult": mult, "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "attn_type": "vanilla"}
    ours = AutoencoderKL(4, ddconfig)
    load_into(ours, diffusers_vae_to_reference(ref.state_dict(), len(mult)))
    ours.set_train(False)
    compiled = ms.jit(ours.decode)

    z = np.random.default_rng(0).standard_normal((1, 4, args.latent, args.latent)).astype(np.float32)
    backends = {
        "diffusers": lambda: ref.decode(torch.from_numpy(z)).sample.numpy(),
        "MindSpore PyNative": lambda: ours.decode(ms.Tensor(z)).asnumpy(),
        "MindSpore jit": lambda: compiled(ms.Tensor(z)).asnumpy(),
    }
    with torch.no_grad():
        expected = backends["diffusers"]()
        for name in ("MindSpore PyNative", "MindSpore jit"):
            got = backends[name]()
            err = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
            if err > 1e-3:
                sys.exit(f"{name} disagrees with diffusers (relative error {err:.1e}): not timing it")
            print(f"agreement with diffusers: {name} max relative error {err:.1e}")
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeats):  # interleaved: load changes hit every backend alike
            for name, fn in backends.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    print(f"\nMindSpore {ms.__version__} (CPU ISA {info.cpu_isa or 'native'}), torch {torch.__version__} "
          f"({args.torch_threads} threads); decoder ch {args.ch} x {mult}, 2 res blocks per level, mid attention; "
          f"latent 4x{args.latent}x{args.latent} -> 3x{resolution}x{resolution}, batch 1; median of {args.repeats}")
    print("| backend | ms/decode | ratio |\n|---|---|---|")
    base = times["diffusers"]
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, base))
        print(f"| {name} | {statistics.median(values) * 1e3:.0f} [{min(values) * 1e3:.0f}–{max(values) * 1e3:.0f}]"
              f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
