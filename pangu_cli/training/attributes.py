"""Scene attributes as a multi-hot vector: the target of the text towers' auxiliary head.

Trained only through the denoising loss, pangu-mini's text towers learnt the background colour first
and, after 65 k structure samples, still carried nothing a linear probe could read about an object's
shape or position (held-out captions: shape 12%, position 11%, chance 9% and 11%), so the UNets had
nothing to draw objects from. Pretrained encoders (CLIP, the paper's Chinese encoder) come with such
knowledge; these tiny towers are trained from scratch, so a linear head on their pooled features
predicts the scene's attributes from the caption, and its loss is added to the denoising loss.

The labels bind colours: objects in a scene have distinct colours, so "red circle" is the label
`red:circle` and "red one at the top left" is `red@top-left`, whatever order the caption names them in.
Attributes a caption leaves unsaid still get their true label; the head can only learn their base rate
there, which costs nothing but a constant in the loss.
"""

from __future__ import annotations

import numpy as np

from pangu_cli.training.scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene


def _labels() -> tuple[str, ...]:
    colours = tuple(COLOURS)
    return (tuple(f"bg:{c}" for c in colours)
            + tuple(f"{c}:{s}" for c in colours for s in SHAPES)
            + tuple(f"{c}@{p}" for c in colours for p in POSITIONS)
            + tuple(f"{c}:{z}" for c in colours for z in SIZES)
            + ("count:1", "count:2"))


LABELS: tuple[str, ...] = _labels()
INDEX: dict[str, int] = {label: i for i, label in enumerate(LABELS)}


def scene_labels(scene: Scene) -> list[str]:
    """The labels that are true of `scene`."""
    labels = [f"bg:{scene.background}", f"count:{len(scene.objects)}"]
    for obj in scene.objects:
        labels += [f"{obj.colour}:{obj.shape}", f"{obj.colour}@{obj.region}", f"{obj.colour}:{obj.size}"]
    return labels


def attribute_targets(scene: Scene) -> np.ndarray:
    """(len(LABELS),) float32: 1 for the labels true of `scene`, 0 elsewhere."""
    out = np.zeros(len(LABELS), np.float32)
    out[[INDEX[label] for label in scene_labels(scene)]] = 1.0
    return out
