"""What a pangu-mini model has learnt from its captions, without drawing a single image:

1. Linear probes on the text conditioning: can a linear classifier read the background colour, the
   object's colour, shape and position from the pooled text features `y` (held-out phrasings)?
2. Object against background: the structure UNet's x̂0 error on object pixels and on background pixels at
   a few noise levels, with each scene's own caption and with the captions rotated by one. A model that
   draws objects from the text has a lower object error with the right captions.

    python bench/mini_probe.py --model runs/snapshots/step-04020 --model pangu_cli/assets/pangu-mini

The probes need PyTorch (a test dependency) for the logistic regressions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pangu_cli import runtime  # noqa: E402
from pangu_cli.training.captions import LANGS, caption  # noqa: E402
from pangu_cli.training.scenes import object_masks, render, sample_scene  # noqa: E402

SIGMAS = (2.0, 3.0, 5.0, 8.0, 15.0)


def _one_object_set(model, seed: int, n: int, split: str):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, max_objects=1) for _ in range(n)]
    texts = [caption(s, LANGS[i % len(LANGS)], rng, split=split) for i, s in enumerate(scenes)]
    size_dims = model.spec.manifest.get("size_embedding", {}).get("dim", 0)  # y = pooled text, then size
    y = np.concatenate([model.conditioner.encode(texts[i:i + 100], 0).y for i in range(0, n, 100)])
    pooled = y[:, :y.shape[1] - size_dims]
    labels = {"background": [s.background for s in scenes], "colour": [s.objects[0].colour for s in scenes],
              "shape": [s.objects[0].shape for s in scenes], "position": [s.objects[0].region for s in scenes]}
    return pooled, labels


def _probe_accuracy(x_train, y_train, x_test, y_test, iterations: int = 300) -> tuple[float, float]:
    """Held-out accuracy of a logistic regression, and chance (1 / classes)."""
    import torch

    torch.manual_seed(0)
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    a = torch.tensor(x_train, dtype=torch.float32)
    b = torch.tensor([index[c] for c in y_train])
    mean, std = a.mean(0), a.std(0) + 1e-6
    linear = torch.nn.Linear(a.shape[1], len(classes))
    opt = torch.optim.Adam(linear.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(iterations):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear((a - mean) / std), b).backward()
        opt.step()
    keep = [i for i, c in enumerate(y_test) if c in index]
    with torch.no_grad():
        pred = linear((torch.tensor(x_test, dtype=torch.float32) - mean) / std).argmax(1).numpy()
    return float(np.mean([pred[i] == index[y_test[i]] for i in keep])), 1.0 / len(classes)


def text_probes(model, n_train: int, n_test: int) -> dict[str, tuple[float, float]]:
    x_train, l_train = _one_object_set(model, 1, n_train, "train")
    x_test, l_test = _one_object_set(model, 2, n_test, "heldout")
    return {k: _probe_accuracy(x_train, l_train[k], x_test, l_test[k]) for k in l_train}


def object_errors(model, n: int) -> list[tuple[float, float, float, float, float]]:
    """Per sigma: (sigma, object error right, object error rotated, background right, background rotated)."""
    from pangu_cli.sampling import DiscreteEpsDenoiser
    from pangu_cli.sampling.pipeline import unet_eps_model

    spec = model.spec
    unet = dict(model.experts).get("structure") or dict(model.experts)["texture"]
    denoiser = DiscreteEpsDenoiser(unet_eps_model(unet), spec.sigma_table(), prediction=spec.prediction)
    rng = np.random.default_rng(123)
    scenes = [sample_scene(rng) for _ in range(n)]
    x0 = np.stack([render(s, 32, 32, rng) for s in scenes]).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    masks = np.stack([object_masks(s, 32, 32).sum(0).clip(0, 1) for s in scenes])[:, None] > 0.5
    texts = [caption(s, LANGS[i % len(LANGS)], rng, split="heldout") for i, s in enumerate(scenes)]
    square = spec.buckets.index((128, 128)) if (128, 128) in spec.buckets else 0
    conds = [model.conditioner.encode(t, square).as_cond() for t in (texts, texts[1:] + texts[:1])]
    noise = np.random.default_rng(7).standard_normal(x0.shape).astype(np.float32)
    rows = []
    for sigma in SIGMAS:
        row = [sigma]
        for cond in conds:
            err = (denoiser(x0 + sigma * noise, sigma, cond) - x0) ** 2
            row += [float((err * masks).sum() / (masks.sum() * 3)), float((err * ~masks).sum() / ((~masks).sum() * 3))]
        rows.append((row[0], row[1], row[3], row[2], row[4]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--train", type=int, default=2000, help="captions the probes are fitted on")
    parser.add_argument("--test", type=int, default=600, help="held-out captions the probes are scored on")
    parser.add_argument("--scenes", type=int, default=48, help="scenes for the object/background errors")
    args = parser.parse_args()
    runtime.setup("CPU")
    from pangu_cli.models.loader import load_model
    from pangu_cli.models.registry import resolve

    for name in args.model:
        model = load_model(resolve(name))
        print(f"\n## {name}\n")
        probes = text_probes(model, args.train, args.test)
        print("linear probe on pooled text features (held-out phrasings, one-object scenes): accuracy (chance)")
        print("| " + " | ".join(probes) + " |\n|" + "---|" * len(probes))
        print("| " + " | ".join(f"{acc:.0%} ({chance:.0%})" for acc, chance in probes.values()) + " |")
        print("\nstructure UNet x̂0 MSE, own captions vs captions rotated by one (lower = better)")
        print("| σ | object, own | object, rotated | background, own | background, rotated |\n|---|---|---|---|---|")
        for sigma, obj, obj_rot, bg, bg_rot in object_errors(model, args.scenes):
            print(f"| {sigma:g} | {obj:.4f} | {obj_rot:.4f} | {bg:.4f} | {bg_rot:.4f} |")


if __name__ == "__main__":
    main()
